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
import time

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


def test_a_window_groups_unwaited_stores_into_one_sync_and_a_waiting_store_cuts_it_short(tmp_path):
    """Retrieved instances (nobody waits on each) share one commit and one
    sync within their window; a store whose sender waits for its answer
    joins the batch and ends the wait at once."""
    archive = Archive(open_database(f"sqlite:///{tmp_path / 'index.sqlite'}"),
                      FileStore(tmp_path / "store"))
    try:
        syncs = []
        original = archive.writer.sync_files

        def sync():
            syncs.append(1)
            original()

        archive.writer.sync_files = sync
        futs = [archive.submit_bytes(_instance_bytes(seed)[0], origin="retrieve", window=2.0)
                for seed in range(5)]
        t0 = time.monotonic()
        # A waiting store (window 0) arrives: the batch commits now, not in 2 s.
        out = archive.store_bytes(_instance_bytes(99)[0], origin="push")
        assert out.status == "stored" and time.monotonic() - t0 < 1.5
        assert [f.result(5).status for f in futs] == ["stored"] * 5
        assert len(syncs) == 1  # one commit, one sync for all six
        assert archive.count("image") == 6
        # Alone, windowed stores still commit (after their window).
        t0 = time.monotonic()
        f = archive.submit_bytes(_instance_bytes(7)[0], origin="retrieve", window=0.2)
        assert f.result(5).status == "stored" and 0.15 < time.monotonic() - t0 < 3
    finally:
        archive.close()


class _SlowStore(FileStore):
    """A file store whose writes take a while (a slow disk)."""

    def stage(self, *a, **k):
        time.sleep(0.3)
        return super().stage(*a, **k)


def test_files_written_beside_the_insert_are_in_place_before_a_files_first_sync(tmp_path):
    """Where the sync does not cover the database (files first, then the
    commit), a file still being written beside its index insert is waited
    for before that sync: the sync must find it in place."""
    db_path = tmp_path / "index.sqlite"
    archive = Archive(open_database(f"sqlite:///{db_path}"), _SlowStore(tmp_path / "store"))
    try:
        archive.writer.sync_covers_db = False  # as with the database on another file system
        data, sop = _instance_bytes(3)
        seen = {}
        original = archive.writer.sync_files

        def sync():
            seen["files_at_sync"] = len(list(archive.store.keys()))
            seen["rows_at_sync"] = _rows_seen_by_another_connection(db_path, sop)
            original()

        archive.writer.sync_files = sync
        assert archive.store_bytes(data, origin="test").status == "stored"
        assert seen == {"files_at_sync": 1, "rows_at_sync": 0}
        assert _rows_seen_by_another_connection(db_path, sop) == 1
    finally:
        archive.close()


def test_flush_ends_a_window_at_once(tmp_path):
    """A retrieve that got its final response flushes: the grouped commit of
    its last instances does not wait out the rest of the window."""
    archive = Archive(open_database(f"sqlite:///{tmp_path / 'index.sqlite'}"),
                      FileStore(tmp_path / "store"))
    try:
        futs = [archive.submit_bytes(_instance_bytes(seed)[0], origin="retrieve", window=5.0)
                for seed in range(3)]
        time.sleep(0.1)
        assert not any(f.done() for f in futs)  # waiting for more within the window
        t0 = time.monotonic()
        archive.writer.flush().result(5)
        assert [f.result(5).status for f in futs] == ["stored"] * 3
        assert time.monotonic() - t0 < 2.0
        assert archive.count("image") == 3
    finally:
        archive.close()


def test_a_window_counts_the_time_spent_queued_behind_another_commit(tmp_path):
    """Instances received while the previous group commits and syncs have
    waited already: once that group is done they commit at once if their
    window has run out meanwhile, instead of waiting a whole window more."""
    archive = Archive(open_database(f"sqlite:///{tmp_path / 'index.sqlite'}"),
                      FileStore(tmp_path / "store"))
    try:
        started = threading.Event()

        def slow_commit(conn):  # a long group commit (a slow disk's sync)
            started.set()
            time.sleep(1.5)

        blocker = archive.writer.submit(slow_commit)
        assert started.wait(5)
        fut = archive.submit_bytes(_instance_bytes(1)[0], origin="retrieve", window=1.0)
        blocker.result(5)
        # Its 1 s window ran out while it was queued: committed right after
        # the blocker (before, it waited 1 s more: ~2.5 s in all).
        assert fut.result(0.8).status == "stored"
        assert archive.count("image") == 1
    finally:
        archive.close()


def test_a_full_batch_commits_without_waiting_out_its_window(tmp_path):
    """Ops with a window do not wake the writer one by one, but a batch that
    is full commits at once; the ops beyond it wait for their own window."""
    from osirix_py.services.indexer import IndexWriter

    db = open_database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    writer = IndexWriter(db, max_batch=4)
    try:
        t0 = time.monotonic()
        first = [writer.submit(lambda conn: 0, window=5.0)]
        time.sleep(0.1)  # (the writer holds the first op, waiting for more)
        first += [writer.submit(lambda conn, i=i: i, window=5.0) for i in range(1, 4)]
        assert [f.result(2.0) for f in first] == [0, 1, 2, 3]
        assert time.monotonic() - t0 < 2.0
        late = writer.submit(lambda conn: "late", window=0.3)
        time.sleep(0.1)
        assert not late.done()  # alone in its batch: waits out its window
        assert late.result(2.0) == "late"
        assert writer.commits == 2
    finally:
        writer.close()
