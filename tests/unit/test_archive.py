"""The archive core end to end: import, duplicates, bad input, disk full, crash repair, delete."""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from pathlib import Path

import pydicom
import pytest

from osirix_py.db.engine import open_database
from osirix_py.dicom import synthetic
from osirix_py.services.archive import Archive, ArchiveError
from osirix_py.storage import FileStore, MemoryStore, key_for_uid


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sample")
    synthetic.generate_archive(d, patients=3, studies_per_patient=2, series_per_study=2,
                               slices=4, rows=32, columns=32, seed=7)
    return d


@pytest.fixture
def archive(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/db.sqlite")
    a = Archive(db, FileStore(tmp_path / "store"))
    yield a
    a.close()
    db.dispose()


def sample_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*.dcm"))


def test_import_folder_builds_the_hierarchy(archive, sample_dir):
    files = sample_files(sample_dir)
    rep = archive.import_paths([sample_dir])
    assert (rep.imported, rep.failed, rep.skipped) == (len(files), 0, 0)
    s = archive.stats()
    assert s["instances"] == len(files) == 3 * 2 * 2 * 4
    assert (s["patients"], s["studies"], s["series"]) == (3, 6, 12)
    for study in archive.find("study"):
        assert study["NumberOfStudyRelatedSeries"] == 2
        assert study["NumberOfStudyRelatedInstances"] == 8
        assert study["ModalitiesInStudy"]
    # Every file is stored under its sharded key and reads back identical.
    for row in archive.find("instance"):
        assert row["_file_path"] == key_for_uid(row["SOPInstanceUID"])
        ds = pydicom.dcmread(io.BytesIO(archive.read_instance(row)))
        assert ds.SOPInstanceUID == row["SOPInstanceUID"]


def test_reimport_counts_duplicates_and_never_adds_rows(archive, sample_dir):
    archive.import_paths([sample_dir])
    rep = archive.import_paths([sample_dir])
    assert rep.imported == 0
    assert rep.duplicates == len(sample_files(sample_dir))
    assert archive.stats()["instances"] == len(sample_files(sample_dir))


def test_replace_policy_replaces_the_file_and_keeps_one_row(tmp_path, sample_dir):
    db = open_database(f"sqlite:///{tmp_path}/db.sqlite")
    a = Archive(db, FileStore(tmp_path / "store"), duplicate_policy="replace")
    try:
        f = sample_files(sample_dir)[0]
        a.store_file(f)
        ds = pydicom.dcmread(f)
        ds.SeriesDescription = "corrected"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out = a.store_bytes(buf.getvalue(), origin="test")
        assert out.status == "replaced"
        rows = a.find("instance", {"SOPInstanceUID": ds.SOPInstanceUID})
        assert len(rows) == 1
        again = pydicom.dcmread(io.BytesIO(a.read_instance(rows[0])))
        assert again.SeriesDescription == "corrected"
    finally:
        a.close()
        db.dispose()


def _broken_files(sample_dir: Path, tmp: Path) -> dict[str, Path]:
    src = sample_files(sample_dir)[0]
    data = src.read_bytes()
    out = {}
    out["text"] = tmp / "notes.txt"
    out["text"].write_text("not an image\n")
    out["truncated"] = tmp / "truncated.dcm"
    out["truncated"].write_bytes(data[:300])
    ds = pydicom.dcmread(src)
    del ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    out["no_uid"] = tmp / "no_uid.dcm"
    ds.save_as(out["no_uid"], enforce_file_format=True)
    return out


def test_bad_files_are_reported_and_the_batch_goes_on(archive, sample_dir, tmp_path):
    bad_dir = tmp_path / "mixed"
    bad_dir.mkdir()
    broken = _broken_files(sample_dir, bad_dir)
    good = sample_files(sample_dir)[:5]
    for i, g in enumerate(good):
        (bad_dir / f"good{i}.dcm").write_bytes(g.read_bytes())
    rep = archive.import_paths([bad_dir])
    assert rep.imported == 5
    assert rep.skipped == 1 and str(broken["text"]) in rep.skipped_files[0].reason
    reasons = {Path(f.source).name: f.reason for f in rep.failures}
    assert set(reasons) == {"truncated.dcm", "no_uid.dcm"}
    assert "truncated" in reasons["truncated.dcm"] or "corrupt" in reasons["truncated.dcm"]
    assert "(0008,0018) SOPInstanceUID" in reasons["no_uid.dcm"]
    assert str(broken["no_uid"]) in reasons["no_uid.dcm"]
    assert archive.stats()["instances"] == 5


def test_missing_paths_and_unreadable_folders_are_reported(archive, sample_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "sub").mkdir()
    os.chmod(locked / "sub", 0)
    try:
        rep = archive.import_paths([tmp_path / "nope", locked])
    finally:
        os.chmod(locked / "sub", 0o755)
    texts = " ".join(f.reason for f in rep.failures)
    assert "no such file" in texts
    if os.geteuid() != 0:  # root reads everything
        assert "cannot read folder" in texts


def test_zip_archives_import(archive, sample_dir, tmp_path):
    z = tmp_path / "study.zip"
    files = sample_files(sample_dir)[:6]
    with zipfile.ZipFile(z, "w") as zf:
        for i, f in enumerate(files):
            zf.write(f, arcname=f"DICOM/{i:03d}.dcm")
        zf.writestr("README.txt", "hello")
    rep = archive.import_paths([z])
    assert rep.imported == 6 and rep.skipped == 1 and rep.failed == 0


def test_dicomdir_imports_the_files_it_references(archive):
    root = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
    dd = pydicom.dcmread(root / "DICOMDIR")
    referenced = {tuple(r.ReferencedFileID) for r in dd.DirectoryRecordSequence if "ReferencedFileID" in r}
    rep = archive.import_paths([root / "DICOMDIR"])
    assert rep.failed == 0
    assert rep.imported == len(referenced) > 0


def test_disk_full_fails_cleanly_and_keeps_what_was_stored(tmp_path, sample_dir):
    files = sample_files(sample_dir)
    size = len(files[0].read_bytes())
    db = open_database(f"sqlite:///{tmp_path}/db.sqlite")
    store = MemoryStore(capacity=int(size * 3.5))
    a = Archive(db, store)
    try:
        rep = a.import_paths(files[:6], workers=1)
        assert rep.imported == 3
        assert rep.failed == 3
        assert all(f.kind == "disk-full" and "disk full" in f.reason for f in rep.failures)
        assert a.stats()["instances"] == 3
        for row in a.find("instance"):
            assert pydicom.dcmread(io.BytesIO(a.read_instance(row))).SOPInstanceUID == row["SOPInstanceUID"]
        assert a.check().clean
    finally:
        a.close()
        db.dispose()


def test_check_repairs_a_crash_in_either_direction(archive, sample_dir):
    files = sample_files(sample_dir)[:4]
    archive.import_paths(files)
    rows = archive.find("instance")
    # 1. a row whose file vanished (crash during delete)
    gone = rows[0]
    archive.store.delete(gone["_file_path"])
    # 2. a file whose row never committed (crash after rename, before commit)
    extra = sample_files(sample_dir)[10]
    ds = pydicom.dcmread(extra)
    archive.store.put(key_for_uid(ds.SOPInstanceUID), extra.read_bytes())
    # 3. a temporary file of an interrupted write
    tmp = archive.store.root / "ab" / "cd"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "x.dcm.123.tmp").write_bytes(b"partial")
    rep = archive.check()
    assert rep.rows_without_file == [gone["SOPInstanceUID"]]
    assert rep.files_reindexed == [key_for_uid(ds.SOPInstanceUID)]
    assert rep.temporary_removed == 1
    uids = {r["SOPInstanceUID"] for r in archive.find("instance")}
    assert gone["SOPInstanceUID"] not in uids and ds.SOPInstanceUID in uids
    assert archive.check().clean


def test_delete_study_series_instance(archive, sample_dir):
    archive.import_paths([sample_dir])
    study = archive.find("study")[0]
    series = archive.find("series", {"StudyInstanceUID": study["StudyInstanceUID"]})
    inst = archive.find("instance", {"SeriesInstanceUID": series[0]["SeriesInstanceUID"]})
    rep = archive.delete("instance", inst[0]["SOPInstanceUID"])
    assert rep.instances == 1 and rep.files_removed == 1
    assert not archive.store.exists(inst[0]["_file_path"])
    (st,) = archive.find("study", {"StudyInstanceUID": study["StudyInstanceUID"]})
    assert st["NumberOfStudyRelatedInstances"] == study["NumberOfStudyRelatedInstances"] - 1
    archive.delete("series", series[0]["SeriesInstanceUID"])
    (st,) = archive.find("study", {"StudyInstanceUID": study["StudyInstanceUID"]})
    assert st["NumberOfStudyRelatedSeries"] == 1
    before = archive.stats()["studies"]
    archive.delete("study", study["StudyInstanceUID"])
    assert archive.stats()["studies"] == before - 1
    with pytest.raises(ArchiveError, match="no study"):
        archive.delete("study", study["StudyInstanceUID"])
    assert archive.check().clean


def test_in_place_import_indexes_without_copying(archive, sample_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, f in enumerate(sample_files(sample_dir)[:3]):
        (src / f"in{i}.dcm").write_bytes(f.read_bytes())
    rep = archive.import_paths([src], in_place=True)
    assert rep.imported == 3
    assert list(archive.store.keys()) == []
    row = archive.find("instance")[0]
    assert Path(row["_file_path"]).parent == src.resolve()
    archive.delete("instance", row["SOPInstanceUID"])
    assert Path(row["_file_path"]).exists()  # originals are never deleted


def test_cancel_stops_an_import(archive, sample_dir, monkeypatch):
    cancel = threading.Event()
    # A slow disk (20 ms a file), so that the import is still running when the
    # user sees the first progress reports (at most ~20 a second) and cancels.
    original = archive.submit_bytes

    def slow_submit(*args, **kwargs):
        time.sleep(0.02)
        return original(*args, **kwargs)

    monkeypatch.setattr(archive, "submit_bytes", slow_submit)

    def progress(rep):
        if rep.done >= 2:
            cancel.set()

    rep = archive.import_paths([sample_dir], progress=progress, cancel=cancel, workers=1)
    assert rep.cancelled
    assert rep.imported < len(sample_files(sample_dir))


CHARSET_FILES = ["chrH31.dcm", "chrX1.dcm", "chrFren.dcm", "chrGerm.dcm", "chrRuss.dcm",
                 "chrGreek.dcm", "chrArab.dcm", "chrHbrw.dcm", "chrKoreanMulti.dcm",
                 "chrX2.dcm", "chrI2.dcm", "chrJapMultiExplicitIR6.dcm"]


def test_names_are_decoded_with_the_files_character_set(archive):
    root = Path(pydicom.data.__file__).parent / "charset_files"
    present = [root / n for n in CHARSET_FILES if (root / n).exists()]
    assert len(present) >= 8
    rep = archive.import_paths(present)
    expected = {}
    for p in present:
        ds = pydicom.dcmread(p)
        if "SOPInstanceUID" in ds and "PatientName" in ds:
            expected[ds.SOPInstanceUID] = str(ds.PatientName)
    assert rep.failed == 0, rep.failures
    for sop, name in expected.items():
        (row,) = archive.find("instance", {"SOPInstanceUID": sop})
        assert row["PatientName"] == name
        assert not any(ord(c) == 0x1B for c in row["PatientName"])  # no raw escape sequences
    # Japanese name matches case-insensitively on the alphabetic group.
    jap = pydicom.dcmread(root / "chrH31.dcm")
    assert archive.find("patient", {"PatientName": str(jap.PatientName).split("=")[0].upper() + "*"})


def _encoded(n: int = 2, patient_id: str = "BESIDE", size: int = 32, seed: int = 11) -> list[bytes]:
    out = []
    for ds in synthetic.make_ct_series(slices=n, rows=size, columns=size, patient_id=patient_id,
                                       seed=seed):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


class _GatedStore(FileStore):
    """A file store whose writes wait for a gate (a slow disk)."""

    def __init__(self, root):
        super().__init__(root)
        self.gate = threading.Event()
        self.writing = threading.Event()

    def stage(self, *a, **k):
        self.writing.set()
        assert self.gate.wait(10)
        return super().stage(*a, **k)


def test_a_stored_row_commits_only_after_its_file_is_written(tmp_path):
    """A single store writes its file beside the index insert: the row must
    not become visible before the file is in place, and the row's checksum
    is the file's XXH3-128."""
    import xxhash

    db = open_database(f"sqlite:///{tmp_path}/db.sqlite")
    store = _GatedStore(tmp_path / "store")
    a = Archive(db, store)
    try:
        first, second = _encoded(2)
        store.gate.set()
        assert a.store_bytes(first, origin="test").status == "stored"  # the series is known now
        store.gate.clear()
        store.writing.clear()
        out: list = []
        t = threading.Thread(target=lambda: out.append(a.store_bytes(second, origin="test")))
        t.start()
        assert store.writing.wait(10)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # the insert is done by now; the commit must wait
            assert a.count("instance") == 1
            time.sleep(0.02)
        store.gate.set()
        t.join(10)
        assert out and out[0].status == "stored"
        rows = {r["SOPInstanceUID"]: r for r in a.find("instance")}
        assert len(rows) == 2
        for r in rows.values():
            data = a.read_instance(r)
            assert r["_checksum"] == xxhash.xxh3_128_hexdigest(data)
        assert a.check().clean
    finally:
        a.close()
        db.dispose()


def test_grouped_stores_of_a_retrieve_commit_each_files_own_checksum(archive):
    """A retrieve's stores (submitted with a grouping window, nobody waiting
    on each, committed in groups by the index writer): each row carries its
    own file's XXH3-128, small and large files alike, and nothing commits
    before its file is there."""
    import xxhash

    small = _encoded(2, patient_id="SMALL")
    large = _encoded(3, patient_id="LARGE", size=320, seed=5)
    assert all(len(d) >= 128 * 1024 for d in large) and all(len(d) < 128 * 1024 for d in small)
    futures = [archive.submit_bytes(d, origin="test", window=0.05) for d in small + large]
    archive.writer.flush()
    assert [f.result(10).status for f in futures] == ["stored"] * 5
    rows = archive.find("instance")
    assert len(rows) == 5
    by_size = sorted(rows, key=lambda r: r["_file_size"])
    for r, data in zip(by_size, sorted(small + large, key=len)):
        on_disk = archive.read_instance(r)
        assert on_disk == data
        assert r["_checksum"] == xxhash.xxh3_128_hexdigest(data)
    assert archive.check().clean


def test_a_retrieves_store_given_as_received_pieces_is_the_same_file(archive, tmp_path):
    """A retrieve's store whose header was read from the first part of its
    received pieces (no join): the file is the pieces' bytes and its row the
    checksum of those bytes, as for the same instance given whole; a store
    that is not grouped (someone waits on it) joins them first, the same."""
    import xxhash

    from osirix_py.dicom.header import read_header_prefix

    datas = _encoded(3, patient_id="PIECES", size=320, seed=9)
    headers = []
    for d in datas:
        view = memoryview(d)
        hdr = read_header_prefix([d[:300], view[300:70000], view[70000:]], name="t")
        assert hdr is not None and hdr.pieces is not None and len(hdr.data) < len(d)
        headers.append(hdr)
    futures = [archive.submit_bytes(h.data, origin="test", header=h, window=0.05)
               for h in headers[:2]]
    archive.writer.flush()
    assert [f.result(10).status for f in futures] == ["stored"] * 2
    out = archive.store_bytes(headers[2].data, origin="test", header=headers[2])
    assert out.status == "stored"
    rows = {r["SOPInstanceUID"]: r for r in archive.find("instance")}
    for d, h in zip(datas, headers):
        r = rows[h.sop_instance_uid]
        assert archive.read_instance(r) == d
        assert r["_checksum"] == xxhash.xxh3_128_hexdigest(d) and r["_file_size"] == len(d)
    assert archive.check().clean


class _FullStore(FileStore):
    """A file store on a disk that fills up after *room* files."""

    def __init__(self, root, room: int):
        super().__init__(root)
        self.room = room

    def stage(self, key, data=None, **k):
        if self.room <= 0:
            from osirix_py.storage.base import StorageFullError

            raise StorageFullError(28, f"disk full while writing {self.path(key)}")
        self.room -= 1
        return super().stage(key, data, **k)


def test_a_single_store_on_a_full_disk_raises_and_leaves_no_row_or_file(tmp_path):
    from osirix_py.storage.base import StorageFullError

    db = open_database(f"sqlite:///{tmp_path}/db.sqlite")
    store = _FullStore(tmp_path / "store", room=1)
    a = Archive(db, store)
    try:
        first, second = _encoded(2, patient_id="FULLDISK")
        assert a.store_bytes(first, origin="test").status == "stored"
        with pytest.raises(StorageFullError):
            a.store_bytes(second, origin="test")
        assert a.count("instance") == 1
        assert len(list(store.keys())) == 1
        assert not [p for p in (tmp_path / "store").rglob("*") if p.name.endswith(".tmp")]
        assert a.check().clean
        store.room = 1  # space again: the same instance stores fine
        assert a.store_bytes(second, origin="test").status == "stored"
        assert a.count("instance") == 2
    finally:
        a.close()
        db.dispose()


def test_a_durable_put_syncs_the_folders_it_made(tmp_path, monkeypatch):
    """A new shard folder's name lives in its parent: a durable put that made
    folders fsyncs each parent too, not only the file's own folder."""
    import osirix_py.storage.filestore as fs

    synced: list[Path] = []
    monkeypatch.setattr(fs, "_fsync_dir", lambda p: synced.append(Path(p)))
    store = FileStore(tmp_path / "store")
    key = key_for_uid("1.2.3.4")
    store.put(key, b"x" * 10, durable=True)
    leaf = (tmp_path / "store" / key).parent
    assert synced == [leaf, leaf.parent, leaf.parent.parent]
    synced.clear()
    other = "1.2.3.5"
    while key_for_uid(other)[:2] != key[:2] or key_for_uid(other)[:5] == key[:5]:
        other += "1"
    store.put(key_for_uid(other), b"y", durable=True)  # first level exists: one new folder
    leaf2 = (tmp_path / "store" / key_for_uid(other)).parent
    assert synced == [leaf2, leaf2.parent]
    synced.clear()
    store.put(key_for_uid(other).replace(".dcm", "b.dcm"), b"z", durable=True)
    assert synced == [leaf2]
    assert store.get(key) == b"x" * 10


def test_retrieve_rows_list_what_find_lists_with_what_a_retrieve_needs(archive, sample_dir):
    """The rows a C-MOVE / C-GET sends: for a study, a series, a list of
    instances and a patient-name wildcard, the same instances as an
    IMAGE-level find, with the same UIDs, numbers, transfer syntax and file,
    and each readable as the instance."""
    from osirix_py.db.repository import RETRIEVE_KEYS

    archive.import_paths([sample_dir])
    image = archive.find("image")
    study, series = image[0]["StudyInstanceUID"], image[-1]["SeriesInstanceUID"]
    picked = [r["SOPInstanceUID"] for r in image[::5]]
    queries = [{"StudyInstanceUID": study}, {"SeriesInstanceUID": series},
               {"SOPInstanceUID": "\\".join(picked)},
               {"PatientName": image[0]["PatientName"][:3] + "*"}]
    keys = RETRIEVE_KEYS + ("_file_path", "_in_place", "_file_size")
    for q in queries:
        expected = sorted(({k: r[k] for k in keys} for r in archive.find("image", q,
                                                                       fuzzy_names=False)),
                          key=lambda r: r["SOPInstanceUID"])
        got = sorted(archive.retrieve_rows(q, fuzzy_names=False),
                     key=lambda r: r["SOPInstanceUID"])
        assert got == expected and len(got) >= 3
    row = archive.retrieve_rows({"SOPInstanceUID": picked[0]})[0]
    assert pydicom.dcmread(io.BytesIO(archive.read_instance(row))).SOPInstanceUID == picked[0]


def test_staging_pieces_writes_them_in_order(tmp_path):
    """FileStore.stage of a list of pieces (more than one writev takes, views
    and bytes mixed) writes exactly their bytes, joined."""
    import random

    rng = random.Random(3)
    pieces = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(2500)]
    pieces = [memoryview(p) if i % 3 == 0 else p for i, p in enumerate(pieces)]
    store = FileStore(tmp_path / "store")
    tmp_key = store.stage("ab/cd/x.dcm", pieces)
    assert store.commit_staged(tmp_key, "ab/cd/x.dcm")
    assert (tmp_path / "store" / "ab/cd/x.dcm").read_bytes() == b"".join(bytes(p) for p in pieces)
