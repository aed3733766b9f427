"""The osirix-py command end to end against a temporary data dir (in-process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from osirix_py.cli import main
from osirix_py.dicom import synthetic


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OSIRIX_PY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_import_find_delete_stats(home, tmp_path, capsys):
    code, out, _ = run(capsys, "demo")
    assert code == 0 and "sample study added" in out
    code, out, _ = run(capsys, "find", "--level", "series", "--json")
    series = json.loads(out)
    assert {s["Modality"] for s in series} >= {"CT", "MR"}
    assert all(s["PatientName"] == "Demo^Patient" for s in series)
    # demo on a non-empty database adds nothing
    code, out, _ = run(capsys, "demo")
    assert "not empty" in out

    src = tmp_path / "in"
    synthetic.generate_archive(src, patients=2, studies_per_patient=1, series_per_study=1,
                               slices=3, rows=16, columns=16, seed=3)
    (src / "junk.txt").write_text("hello")
    code, out, err = run(capsys, "import", "-q", str(src))
    assert code == 0
    assert "6 imported" in out and "1 skipped" in out and "0 failed" in out

    code, out, _ = run(capsys, "find", "--json", "StudyDate=19000101-21001231")
    studies = json.loads(out)
    assert len(studies) == 3
    assert all(not k.startswith("_") for s in studies for k in s)
    target = next(s for s in studies if s["PatientName"] != "Demo^Patient")
    code, out, _ = run(capsys, "find", "--level", "instance", "--json",
                       f"StudyInstanceUID={target['StudyInstanceUID']}")
    assert len(json.loads(out)) == 3

    code, out, _ = run(capsys, "delete", "--study", target["StudyInstanceUID"])
    assert code == 0 and "3 instance(s)" in out
    code, out, _ = run(capsys, "stats", "--json")
    st = json.loads(out)
    assert st["studies"] == 2
    code, out, _ = run(capsys, "check")
    assert "database and files agree" in out


def test_import_with_a_failure_exits_1_and_names_the_file(home, tmp_path, capsys):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + b"\xff\xff")
    code, out, err = run(capsys, "import", "-q", str(bad))
    assert code == 1
    assert str(bad) in err and "1 failed" in out


def test_bad_query_and_unknown_key_are_usage_errors(home, capsys):
    code, _, err = run(capsys, "find", "Foo=bar")
    assert code == 2 and "unknown query key" in err
    code, _, err = run(capsys, "find", "StudyDate=yesterday-today")
    assert code == 2 and "StudyDate" in err
    code, _, err = run(capsys, "delete", "--study", "1.2.3")
    assert code == 3 and "no study" in err


def test_config_show_and_data_dir_option(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OSIRIX_PY_HOME", raising=False)
    code, out, _ = run(capsys, "--data-dir", str(tmp_path / "x"), "config", "show", "--json")
    cfg = json.loads(out)
    assert cfg["data_dir"] == str(tmp_path / "x")
    assert cfg["listener"]["ae_title"] == "OSIRIXPY"
    code, out, _ = run(capsys, "--data-dir", str(tmp_path / "x"), "config", "show")
    assert '[listener]' in out and 'ae_title = "OSIRIXPY"' in out


def test_nodes_add_list_remove(home, capsys):
    assert run(capsys, "nodes", "add", "pacs", "--aet", "PACS", "--host", "127.0.0.1", "--port", "104")[0] == 0
    code, _, err = run(capsys, "nodes", "add", "pacs", "--aet", "PACS", "--host", "h", "--port", "104")
    assert code == 2 and "exists" in err
    code, _, err = run(capsys, "nodes", "add", "x", "--aet", "A" * 17, "--host", "h", "--port", "104")
    assert code == 2 and "AE title" in err
    code, out, _ = run(capsys, "nodes", "list", "--json")
    assert json.loads(out) == [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                                "retrieve_method": "move", "tls": False, "description": ""}]
    assert run(capsys, "nodes", "remove", "pacs")[0] == 0
    code, _, err = run(capsys, "nodes", "remove", "pacs")
    assert code == 2 and "no node" in err


def test_console_script_runs_as_a_module(home):
    r = subprocess.run([sys.executable, "-m", "osirix_py", "--version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "osirix-py" in r.stdout
