"""Group commit with one flush: durability order of the index writer.

When the SQLite database lives on the file system that the store syncs, a
batch commits without SQLite's fsync and ONE ``syncfs`` afterwards makes the
files and the commit durable; nobody is told "stored" before that sync has
returned.  Otherwise (another file system, a memory store) the files are synced
first and the commit is SQLite's own durable commit, as before.
"""

from __future__ import annotations

import io
import threading

import pytest
from sqlalchemy import create_engine, text

from osirix_py.db.engine import open_database
from osirix_py.dicom import synthetic
from osirix_py.services.archive import Archive
from osirix_py.storage import FileStore, MemoryStore


def _instance_bytes(seed: int = 0) -> tuple[bytes, str]:
    ds = synthetic.make_ct_series(slices=1, rows=32, columns=32, seed=seed,
                                  patient_id=f"SYNC{seed}")[0]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), str(ds.SOPInstanceUID)


def _rows_seen_by_another_connection(db_path, sop: str) -> int:
    eng = create_engine(f"sqlite:///{db_path}")
    try:
        with eng.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM instances WHERE sop_instance_uid = :u"),
                                {"u": sop}).scalar_one()
    finally:
        eng.dispose()


def test_one_sync_after_the_commit_and_the_ack_after_the_sync(tmp_path):
    db_path = tmp_path / "index.sqlite"
    archive = Archive(open_database(f"sqlite:///{db_path}"), FileStore(tmp_path / "store"))
    try:
        assert archive.writer.sync_covers_db
        data, sop = _instance_bytes()
        seen: dict[str, object] = {}
        release = threading.Event()
        original = archive.writer.sync_files

        def sync():
            seen["rows_at_sync"] = _rows_seen_by_another_connection(db_path, sop)
            seen["file_at_sync"] = archive.store.exists(next(iter(archive.store.keys())))
            release.wait(5)
            original()
            seen["syncs"] = int(seen.get("syncs", 0)) + 1

        archive.writer.sync_files = sync
        fut = archive.submit_bytes(data, origin="test")
        # The commit is done (another connection sees the row) but the sync
        # has not returned: the caller is not told yet.
        with pytest.raises(TimeoutError):
            fut.result(0.3)
        release.set()
        out = fut.result(5)
        assert out.status == "stored"
        assert seen == {"rows_at_sync": 1, "file_at_sync": True, "syncs": 1}
        # The pooled connections are back to SQLite's own durable commits.
        with archive.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        archive.close()


def test_a_store_on_another_file_system_syncs_files_before_the_commit(tmp_path):
    db_path = tmp_path / "index.sqlite"
    archive = Archive(open_database(f"sqlite:///{db_path}"), MemoryStore())
    try:
        assert not archive.writer.sync_covers_db
        data, sop = _instance_bytes(1)
        seen = {}
        original = archive.writer.sync_files

        def sync():
            seen["rows_at_sync"] = _rows_seen_by_another_connection(db_path, sop)
            original()

        archive.writer.sync_files = sync
        assert archive.store_bytes(data, origin="test").status == "stored"
        assert seen == {"rows_at_sync": 0}
    finally:
        archive.close()


def test_a_failed_sync_after_the_commit_fails_the_store_and_check_repairs(tmp_path):
    db_path = tmp_path / "index.sqlite"
    archive = Archive(open_database(f"sqlite:///{db_path}"), FileStore(tmp_path / "store"))
    try:
        data, sop = _instance_bytes(2)

        def broken_sync():
            raise OSError(5, "Input/output error")

        archive.writer.sync_files = broken_sync
        with pytest.raises(OSError):
            archive.store_bytes(data, origin="test")
        # The file is gone; the committed row is a "row without file" for the check.
        rep = archive.check()
        assert rep.rows_without_file == [sop]
        assert archive.count("instance") == 0
    finally:
        archive.close()
