"""The built wheel carries the resources folder and the installed package finds it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_ships_resources_and_finds_them(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, timeout=240, cwd=tmp_path)
    wheels = list(out.glob("osirix_py-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
        for rel in ("window_presets.json", "web/index.html"):
            assert f"osirix_py/resources/{rel}" in names, f"{rel} missing from the wheel"
        site = tmp_path / "site"
        zf.extractall(site)
    # Run from the unpacked wheel, away from the source tree: presets and web pages load.
    env = {k: v for k, v in os.environ.items() if k not in ("OSIRIX_PY_RESOURCES", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    code = ("import osirix_py.imaging.presets as p, osirix_py.resource_files as r;"
            "print(p.resources_dir()); print(len(p.load_presets()['CT']));"
            "print(r.resource_path('web', 'index.html'))")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    where, n_ct, index = res.stdout.split()
    assert Path(where) == site / "osirix_py" / "resources"
    assert int(n_ct) >= 3
    assert Path(index).is_file()


def test_missing_resources_name_the_places_searched(tmp_path: Path, monkeypatch) -> None:
    from osirix_py import resource_files

    monkeypatch.setenv("OSIRIX_PY_RESOURCES", str(tmp_path))
    assert resource_files.resources_dir() != tmp_path  # empty folder is not taken
    with pytest.raises(resource_files.ResourceNotFound) as err:
        resource_files.resource_path("no-such-file.json")
    assert "no-such-file.json" in str(err.value)
