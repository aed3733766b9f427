"""Large imports through the pool of worker processes (services/importer.py).

The pool path must give exactly what the in-process path gives: the same rows,
the same store files, the same report -- bad files named, duplicates per
policy, cancel honoured -- and its processes are never forked from this
(threaded) process.
"""

from __future__ import annotations

import io
import shutil
import threading
from pathlib import Path

import pydicom
import pytest

from osirix_py.db.engine import open_database
from osirix_py.dicom import synthetic
from osirix_py.services import importer
from osirix_py.services.archive import Archive
from osirix_py.storage import FileStore

N_FILES = 2 * 2 * 2 * 30  # well above importer.POOL_MIN_FILES


@pytest.fixture(scope="module")
def many_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("many")
    synthetic.generate_archive(d, patients=2, studies_per_patient=2, series_per_study=2,
                               slices=30, rows=16, columns=16, seed=11)
    return d


def files_of(d: Path) -> list[Path]:
    return sorted(d.rglob("*.dcm"))


def open_archive(root: Path, **kw) -> Archive:
    db = open_database(f"sqlite:///{root}/db.sqlite")
    return Archive(db, FileStore(root / "store"), **kw)


def close(a: Archive) -> None:
    a.close()
    a.db.dispose()


def rows_of(a: Archive) -> dict[str, dict]:
    out = {}
    for r in a.find("instance"):
        out[r["SOPInstanceUID"]] = {k: v for k, v in r.items()
                                    if k not in ("_received_at", "_origin", "_pk", "_id")
                                    and not k.endswith("_pk")}
    return out


def tmp_files(a: Archive) -> list[Path]:
    return list(Path(a.store.root).rglob("*.tmp"))


def test_pool_import_matches_the_in_process_import(tmp_path, many_dir):
    assert len(files_of(many_dir)) == N_FILES >= importer.POOL_MIN_FILES
    a = open_archive(tmp_path / "a", import_processes=0)
    b = open_archive(tmp_path / "b", import_processes=2)
    try:
        ra = a.import_paths([many_dir])
        rb = b.import_paths([many_dir])
        assert a._import_pool is None
        assert b._import_pool is not None and b._import_pool.started
        for r in (ra, rb):
            assert (r.imported, r.failed, r.skipped, r.duplicates) == (N_FILES, 0, 0, 0)
        assert ra.studies == rb.studies and ra.bytes == rb.bytes
        assert rows_of(a) == rows_of(b)
        for level in ("patient", "study", "series"):
            assert sorted(map(sorted_items, a.find(level))) == sorted(map(sorted_items, b.find(level)))
        assert sorted(a.store.keys()) == sorted(b.store.keys())
        for key in a.store.keys():
            assert a.store.get(key) == b.store.get(key)
        assert not tmp_files(b)
        assert b.check().clean
    finally:
        close(a)
        close(b)


def sorted_items(row: dict) -> list:
    return sorted((k, str(v)) for k, v in row.items()
                  if not k.startswith("_") and not k.endswith("At"))


def test_pool_is_reused_and_duplicates_follow_the_policy(tmp_path, many_dir):
    a = open_archive(tmp_path, import_processes=2)
    try:
        a.import_paths([many_dir])
        pool = a._import_pool._pool
        rep = a.import_paths([many_dir])
        assert a._import_pool._pool is pool  # the same processes, no new start
        assert (rep.imported, rep.duplicates) == (0, N_FILES)
        assert a.stats()["instances"] == N_FILES
        assert not tmp_files(a)
    finally:
        close(a)
    b = open_archive(tmp_path / "r", import_processes=2, duplicate_policy="replace")
    try:
        b.import_paths([many_dir])
        rep = b.import_paths([many_dir])
        assert (rep.imported, rep.replaced, rep.duplicates) == (0, N_FILES, 0)
        assert b.stats()["instances"] == N_FILES
        assert not tmp_files(b) and b.check().clean
    finally:
        close(b)


def test_pool_reports_bad_files_and_imports_the_rest(tmp_path, many_dir):
    src = tmp_path / "mixed"
    good = files_of(many_dir)[:100]
    for i, f in enumerate(good):
        (src / f"{i:03d}").mkdir(parents=True)
        shutil.copy(f, src / f"{i:03d}" / f.name)
    # In the middle of the walk: a text file, a truncated file, one without a UID.
    (src / "050" / "notes.txt").write_text("not an image")
    (src / "051" / "truncated.dcm").write_bytes(good[0].read_bytes()[:400])
    ds = pydicom.dcmread(good[1])
    del ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    (src / "052" / "no_uid.dcm").write_bytes(buf.getvalue())
    a = open_archive(tmp_path / "db", import_processes=2)
    try:
        rep = a.import_paths([src])
        assert a._import_pool.started
        assert rep.imported == 100
        assert rep.skipped == 1 and "notes.txt" in rep.skipped_files[0].reason
        reasons = {Path(f.source).name: f.reason for f in rep.failures}
        assert set(reasons) == {"truncated.dcm", "no_uid.dcm"}
        assert str(src / "052" / "no_uid.dcm") in reasons["no_uid.dcm"]
        assert "(0008,0018) SOPInstanceUID" in reasons["no_uid.dcm"]
        assert a.stats()["instances"] == 100
        assert not tmp_files(a)
    finally:
        close(a)


def test_pool_import_can_be_cancelled(tmp_path, many_dir, monkeypatch):
    from osirix_py.services import archive as archive_mod

    # Small chunks and one process: few files in flight when the cancel comes.
    monkeypatch.setattr(archive_mod, "CHUNK_FILES", 8)
    a = open_archive(tmp_path, import_processes=1)
    cancel = threading.Event()

    def progress(rep):
        if rep.done >= 1:
            cancel.set()

    try:
        rep = a.import_paths([many_dir], progress=progress, cancel=cancel)
        assert a._import_pool.started
        assert rep.cancelled
        assert 1 <= rep.imported < N_FILES
        # What was reported imported is indexed and stored; nothing half-done.
        assert a.stats()["instances"] == rep.imported
        assert len(list(a.store.keys())) == rep.imported
        assert not tmp_files(a)
        assert a.check().clean
    finally:
        close(a)


def test_pool_processes_are_never_forked(tmp_path, many_dir):
    a = open_archive(tmp_path, import_processes=2)
    try:
        assert threading.active_count() > 1  # (the index writer at least)
        a.import_paths(files_of(many_dir)[:importer.POOL_MIN_FILES])
        ex = a._import_pool._pool
        assert ex is not None
        assert ex._mp_context.get_start_method() in ("forkserver", "spawn")
        pids = set(ex.map(importer._warm, range(8)))
        assert pids and threading.get_ident() not in pids
    finally:
        close(a)
    assert importer.mp_context().get_start_method() != "fork"


def test_small_imports_and_memory_stores_stay_in_process(tmp_path, many_dir):
    a = open_archive(tmp_path, import_processes=2)
    try:
        rep = a.import_paths(files_of(many_dir)[:importer.POOL_MIN_FILES - 1])
        assert rep.imported == importer.POOL_MIN_FILES - 1
        assert not a._import_pool.started
    finally:
        close(a)


def test_in_place_import_through_the_pool(tmp_path, many_dir):
    a = open_archive(tmp_path, import_processes=2)
    try:
        rep = a.import_paths([many_dir], in_place=True)
        assert a._import_pool.started
        assert rep.imported == N_FILES
        assert list(a.store.keys()) == []
        row = a.find("instance")[0]
        assert Path(row["_file_path"]).is_relative_to(many_dir.resolve())
        assert a.check().clean
    finally:
        close(a)


@pytest.mark.parametrize("in_place", [False, True])
def test_zip_members_through_the_pool_are_copied(tmp_path, many_dir, in_place):
    import zipfile

    z = tmp_path / "series.zip"
    files = files_of(many_dir)[:100]
    with zipfile.ZipFile(z, "w") as zf:
        for i, f in enumerate(files):
            zf.write(f, arcname=f"DICOM/{i:03d}.dcm")
        zf.writestr("README.txt", "hello")
    a = open_archive(tmp_path / "db", import_processes=2)
    try:
        rep = a.import_paths([z], in_place=in_place)
        assert a._import_pool.started
        assert (rep.imported, rep.skipped, rep.failed) == (100, 1, 0)
        assert len(list(a.store.keys())) == 100  # members cannot be indexed in place
        assert not tmp_files(a) and a.check().clean
    finally:
        close(a)
