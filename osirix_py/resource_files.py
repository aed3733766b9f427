"""Where the data files of ``resources/`` are (presets, web pages, transfer functions).

One lookup for every layer: the ``OSIRIX_PY_RESOURCES`` environment variable,
else the ``resources`` folder of a source checkout (next to the ``osirix_py``
package, which an editable install also uses), else ``osirix_py/resources``
inside an installed wheel (``setup.py`` copies the folder there at build time).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ResourceNotFound", "resources_dir", "resource_path"]

#: A file every complete resources folder has; used to tell a real one from an empty dir.
_MARKER = "window_presets.json"


class ResourceNotFound(FileNotFoundError):
    """A resource file is missing; the message names every place that was searched."""


def _candidates() -> list[Path]:
    here = Path(__file__).resolve().parent
    found = []
    env = os.environ.get("OSIRIX_PY_RESOURCES")
    if env:
        found.append(Path(env))
    found.append(here.parent / "resources")  # source checkout / editable install
    found.append(here / "resources")  # wheel
    return found


def resources_dir() -> Path:
    """The folder holding the resource files."""
    candidates = _candidates()
    for c in candidates:
        if (c / _MARKER).is_file():
            return c
    raise ResourceNotFound(
        f"the resources folder was not found (looked in {', '.join(str(c) for c in candidates)}); "
        "set OSIRIX_PY_RESOURCES to the resources folder"
    )


def resource_path(*parts: str) -> Path:
    """The path of one resource (``resource_path("web", "index.html")``); it must exist."""
    p = resources_dir().joinpath(*parts)
    if not p.exists():
        raise ResourceNotFound(f"resource {'/'.join(parts)} is missing from {p.parent}")
    return p
