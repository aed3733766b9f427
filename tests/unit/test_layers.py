"""The core runs without Qt and VTK: the layering contracts are checked for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CORE_MODULES = [
    "osirix_py.cli", "osirix_py.config", "osirix_py.dicom.tags", "osirix_py.dicom.header",
    "osirix_py.db.engine", "osirix_py.db.repository", "osirix_py.storage",
    "osirix_py.services.archive", "osirix_py.services.factory", "osirix_py.services.nodes",
]


def test_import_linter_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_core_imports_neither_qt_nor_vtk():
    optional = ["osirix_py.net.scp", "osirix_py.server.runtime", "osirix_py.imaging"]
    code = (
        "import importlib, sys\n"
        f"for m in {CORE_MODULES!r}: importlib.import_module(m)\n"
        f"for m in {optional!r}:\n"
        "    try: importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if not e.name.startswith('osirix_py'): raise\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('PySide6', 'shiboken6', 'vtk', 'vtkmodules'))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
