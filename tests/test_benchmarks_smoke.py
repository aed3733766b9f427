"""Smoke test of the benchmark harness: ``python -m benchmarks --quick --only find`` runs
and prints its table row with a number (the local find needs no peers and no files)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmarks_quick_find_prints_a_row(tmp_path):
    out_json = tmp_path / "results.json"
    env = dict(os.environ)
    env.pop("OSIRIX_PY_HOME", None)
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "find", "--repeat", "1",
         "--cache-dir", str(tmp_path / "cache"), "--tmp-dir", str(tmp_path / "tmp"),
         "--json", str(out_json)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("find ")]
    assert len(rows) == 2, res.stdout
    for line in rows:
        m = re.search(r"\s(\d+(?:\.\d+)?) ms\s+n/a\s+n/a\s+< 50 ms\s+(yes|NO)$", line)
        assert m, line
        assert float(m.group(1)) > 0
    data = json.loads(out_json.read_text())
    assert data["quick"] is True
    assert data["machine"]["nproc"] >= 1
    assert [r["benchmark"] for r in data["rows"]] == ["find", "find"]
    assert all(r["ours"] > 0 and not r["error"] for r in data["rows"])


def test_benchmarks_list_and_unknown_name():
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    names = [line.split()[0] for line in res.stdout.splitlines() if line and not line.startswith("(")]
    for name in ("import", "find", "storescu", "cfind", "cmove", "cget"):
        assert name in names
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nosuch"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "unknown benchmark" in res.stderr
