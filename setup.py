"""Build hook: ship the top-level ``resources/`` folder inside the wheel.

Everything else about the package is in ``pyproject.toml``.  The data files
(window presets, volume-rendering presets, the web viewer's pages) live in
``resources/`` at the top of the repository, outside the ``osirix_py`` package,
so ``package-data`` cannot reach them; this copies them to
``osirix_py/resources`` in the built package, where
:func:`osirix_py.resource_files.resources_dir` looks when there is no source
checkout next to the package.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_with_resources(build_py):
    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent / "resources"
        if src.is_dir() and not self.editable_mode:
            self.copy_tree(str(src), str(Path(self.build_lib) / "osirix_py" / "resources"))


setup(cmdclass={"build_py": build_py_with_resources})
