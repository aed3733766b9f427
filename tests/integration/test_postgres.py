"""The archive on a real PostgreSQL server (the `postgres` extra), started by the test.

A throw-away cluster (initdb) listens on a free loopback port and a private
socket folder; the same archive operations as on SQLite run against it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from osirix_py.db.engine import open_database
from osirix_py.dicom import synthetic
from osirix_py.services.archive import Archive
from osirix_py.storage import FileStore

pytestmark = pytest.mark.peers


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries are missing: run scripts/setup.sh")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str], **kw):
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory):
    import psycopg  # noqa: F401 - the test extra installs the postgres driver
    binr = _pg_bin()
    # pytest's own temp root is private to root; the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="osirix-py-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    _as_postgres([str(binr / "initdb"), "-D", str(data), "-A", "trust", "-U", "osirix", "-E", "UTF8",
                  "--locale=C"])
    port = _free_port()
    log = base / "pg.log"
    _as_postgres([str(binr / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                  f"-p {port} -c listen_addresses=127.0.0.1 -k {sock} -c fsync=on", "start"])
    try:
        _as_postgres([str(binr / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "osirix",
                      "osirixpy"])
        yield f"postgresql+psycopg://osirix@127.0.0.1:{port}/osirixpy"
    finally:
        _as_postgres([str(binr / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


def test_archive_on_postgresql(pg_url, tmp_path):
    src = tmp_path / "src"
    synthetic.generate_archive(src, patients=3, studies_per_patient=2, series_per_study=1,
                               slices=3, rows=16, columns=16, seed=11)
    db = open_database(pg_url)
    a = Archive(db, FileStore(tmp_path / "store"))
    try:
        rep = a.import_paths([src])
        assert (rep.imported, rep.failed) == (18, 0)
        assert a.import_paths([src]).duplicates == 18
        assert a.stats()["studies"] == 6
        names = {r["PatientName"] for r in a.find("study", {"PatientName": "müller*"})}
        assert names == {"Müller^Jürgen"}
        assert len(a.find("study", {"StudyDate": "20240101-20240131"})) >= 1
        study = a.find("study")[0]
        a.delete("study", study["StudyInstanceUID"])
        assert a.stats()["studies"] == 5
        assert a.check().clean
    finally:
        a.close()
        db.dispose()
    # The schema version record survives a reopen.
    db = open_database(pg_url)
    assert db.schema_version() >= 1
    db.dispose()
