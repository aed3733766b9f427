"""The archive: store, import, find, delete and check -- the core every front end calls.

``Archive(db, store)`` is built once per runtime (or per test, with a temp
SQLite file and a :class:`~osirix_py.storage.MemoryStore`).  It is thread-safe:
C-STORE handlers on many association threads, an import and a C-FIND can all
use it at once.  Every database write goes through one
:class:`~osirix_py.services.indexer.IndexWriter` (group commit).

Durability: ``store_bytes`` returns only after the file is fsynced under its
final name AND the row that indexes it is committed.  Ordering makes a crash
at any moment recoverable by :meth:`Archive.check`: a file without a row is
re-indexed; a row without a file is reported and removed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zipfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from sqlalchemy import select

from ..db import repository as repo
from ..db.engine import Database
from ..db.schema import instances
from ..dicom.header import MEDIA_STORAGE_DIRECTORY, DicomFileError, Header, read_header
from ..dicom.tags import Level
from ..storage.base import StorageError, StorageFullError, checksum, key_for_uid
from ..storage.filestore import FileStore, IncomingFile
from .feed import ChangeEvent, ChangeFeed
from .importer import CHUNK_FILES, POOL_MIN_FILES, ImportPool, Rejected, Source, Staged
from .indexer import IndexWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Received:
    """A file written as it was received (:class:`IncomingFile`), staged
    like an import worker's file: what ``_submit_locked`` needs of it."""

    tmp_key: str
    size: int
    digest: str  # (hashed as it arrived: see IncomingFile)


#: Imported files whose index commit may be outstanding at once.
PENDING_COMMITS = 1024


_POOLS: dict[str, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def helper_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """The process-wide helper thread pool *name*, started on first use."""
    pool = _POOLS.get(name)
    if pool is None:
        with _POOLS_LOCK:
            pool = _POOLS.get(name)
            if pool is None:
                pool = _POOLS[name] = ThreadPoolExecutor(workers, thread_name_prefix=name)
    return pool


#: Threads that write single stored instances (C-STORE, STOW) beside their
#: index insert: one per association storing at once.
_STORE_WRITERS = 16


def _writer_pool() -> ThreadPoolExecutor:
    return helper_pool("store-write", _STORE_WRITERS)


class ArchiveError(RuntimeError):
    """An archive operation failed; the message is meant for the user."""


@dataclass
class StoreOutcome:
    status: str  # "stored", "duplicate", "replaced"
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    file_path: str
    size: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class ImportFailure:
    source: str
    reason: str
    kind: str = "invalid"


@dataclass
class ImportReport:
    total: int = 0
    imported: int = 0
    duplicates: int = 0
    replaced: int = 0
    skipped: int = 0  # not DICOM (or a DICOMDIR index file)
    failed: int = 0
    bytes: int = 0
    cancelled: bool = False
    seconds: float = 0.0
    failures: list[ImportFailure] = field(default_factory=list)
    skipped_files: list[ImportFailure] = field(default_factory=list)
    #: Stored, but with something the user should know (unknown character set).
    warnings: list[ImportFailure] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    @property
    def done(self) -> int:
        return self.imported + self.duplicates + self.replaced + self.skipped + self.failed

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        s = (f"{self.imported} imported, {self.duplicates} duplicate(s), "
             f"{self.skipped} skipped (not DICOM), {self.failed} failed")
        if self.replaced:
            s += f", {self.replaced} replaced"
        if self.cancelled:
            s += " -- cancelled"
        return s


@dataclass
class CheckReport:
    rows_without_file: list[str] = field(default_factory=list)  # SOP UIDs removed
    files_reindexed: list[str] = field(default_factory=list)  # store keys
    files_unreadable: list[str] = field(default_factory=list)
    temporary_removed: int = 0
    rows_checked: int = 0
    files_checked: int = 0

    @property
    def clean(self) -> bool:
        return not (self.rows_without_file or self.files_reindexed or self.files_unreadable)


@dataclass
class DeleteReport:
    instances: int
    files_removed: int
    errors: list[str] = field(default_factory=list)


ProgressFn = Callable[[ImportReport], None]


class Archive:
    def __init__(
        self,
        db: Database,
        store,
        *,
        duplicate_policy: str = "keep",
        feed: ChangeFeed | None = None,
        durable: bool = True,
        import_processes: int | None = None,
    ):
        """*import_processes*: worker processes that parse and copy the files
        of large imports (default: one per CPU; 0: import in this process
        only).  The pool starts with the first large import and is reused
        until :meth:`close`."""
        if duplicate_policy not in ("keep", "replace"):
            raise ValueError("duplicate_policy must be 'keep' or 'replace'")
        self.db = db
        self.store = store
        self.duplicate_policy = duplicate_policy
        self.feed = feed or ChangeFeed()
        self.durable = durable
        self.writer = IndexWriter(db, sync_files=store.sync,
                                  sync_covers_db=_sync_covers_db(db, store))
        self._closed = False
        self._pending: dict[str, Future] = {}
        # Stores of one SOP Instance UID are serialised (striped locks), so that
        # two associations sending the same instance at once cannot interleave
        # the existence check, the file write and the index commit.
        self._uid_locks = [threading.Lock() for _ in range(64)]
        #: A single store's file is written beside its index insert (see
        #: _submit_locked) where a write blocks on the disk, not the GIL.
        self._write_beside = isinstance(store, FileStore)
        self._import_pool = ImportPool(import_processes) if import_processes != 0 else None

    # ------------------------------------------------------------------ store
    def receive_file(self, sop_instance_uid: str) -> IncomingFile | None:
        """A file to write the instance *sop_instance_uid* into while its
        bytes arrive (a C-STORE data set, written PDU by PDU: the write and
        the disk's write-back overlap the reception), then handed to
        :meth:`store_bytes` / :meth:`submit_bytes` as *received*.  None when
        the store cannot (not a file store) or the file cannot be made --
        the bytes are then stored the usual way, which reports the error."""
        if not self._write_beside:
            return None
        try:
            return self.store.open_staged(key_for_uid(sop_instance_uid))
        except (StorageError, OSError) as exc:
            log.debug("no file to receive %s into: %s", sop_instance_uid, exc)
            return None

    def store_bytes(
        self,
        data: bytes,
        *,
        origin: str,
        name: str | None = None,
        in_place_path: Path | None = None,
        header: Header | None = None,
        timeout: float | None = None,
        received: IncomingFile | None = None,
    ) -> StoreOutcome:
        """Store one instance given as the bytes of a DICOM file; wait until durable.

        Returns once the file is on disk (synced) and its row is committed.
        Raises :class:`DicomFileError` (bad data), :class:`StorageFullError`
        (disk full: nothing partial is left) or :class:`StorageError`.
        *received*: the same bytes already written as they arrived (see
        :meth:`receive_file`); that file is committed instead of writing
        *data* again.
        """
        return self.submit_bytes(data, origin=origin, name=name, in_place_path=in_place_path,
                                 header=header, received=received).result(timeout)

    def submit_bytes(
        self,
        data: bytes,
        *,
        origin: str,
        name: str | None = None,
        in_place_path: Path | None = None,
        header: Header | None = None,
        window: float = 0.0,
        received: IncomingFile | None = None,
    ) -> Future:
        """Like :meth:`store_bytes` but returns a ``Future[StoreOutcome]`` at once.

        Header errors and storage errors of the file write are raised here,
        synchronously; the future completes when the index commit (group
        commit, preceded by one file-system sync for the whole batch) is done.
        *window*: how long that commit may wait to group more instances
        (for callers that do not wait on each future, see
        :meth:`IndexWriter.submit`).
        """
        if received is not None:
            received = received.claim()
        try:
            hdr = header or read_header(data, name=name or origin)
            v = hdr.values
            if v.get("SOPClassUID") == MEDIA_STORAGE_DIRECTORY:
                raise DicomFileError(f"{name or origin}: a DICOMDIR index, not an image",
                                     kind="not-dicom")
            staged = None
            if received is not None:
                done, received = received.finish(), None
                if (done is not None and in_place_path is None and hdr.data is data
                        and done[1] == len(data)):
                    staged = _Received(*done)  # (its digest: hashed as it arrived)
                elif done is not None:
                    self.store.discard_staged(done[0])  # not these bytes after all
        finally:
            if received is not None:  # claimed, never finished: an error above
                done = received.finish()
                if done is not None:
                    self.store.discard_staged(done[0])
        return self._submit_header(hdr, origin, in_place_path, data, staged, window=window)

    def _submit_header(self, hdr: Header, origin: str, in_place_path: Path | None, data: bytes,
                       staged: Staged | _Received | None = None,
                       reread: Callable[[], bytes] | None = None,
                       *, window: float = 0.0) -> Future:
        sop = hdr.sop_instance_uid
        lock = self._uid_locks[hash(sop) % len(self._uid_locks)]
        while True:
            with lock:
                pending = self._pending.get(sop)
                if pending is None:
                    fut = self._submit_locked(hdr, origin, in_place_path, data, staged, reread,
                                              window=window)
                    if not fut.done():
                        self._pending[sop] = fut
                        fut.add_done_callback(lambda f, sop=sop: self._pending.pop(sop, None))
                    return fut
            # The same instance is being stored right now (two associations,
            # or twice in one import): wait for it, then decide again.
            try:
                pending.result()
            except Exception:  # noqa: BLE001 - its own caller reports it
                pass

    def _submit_locked(self, hdr: Header, origin: str, in_place_path: Path | None,
                       data: bytes, staged: Staged | _Received | None = None,
                       reread: Callable[[], bytes] | None = None, *, window: float = 0.0) -> Future:
        """Store (or commit the *staged* file of) one parsed instance; the
        caller holds the UID's lock.  *reread* gives the bytes to store when a
        worker staged nothing because the key already existed."""
        # Nobody waits for this one (a retrieve's, stored on its own writing
        # thread): written and hashed here, below.
        stage_here = staged is None and window > 0 and in_place_path is None and self._write_beside
        if hdr.pieces is not None and not stage_here:
            # (Only that staging writes received pieces as they are.)
            hdr = hdr.whole()
            data = hdr.data
        v = hdr.values
        sop = hdr.sop_instance_uid
        key = key_for_uid(sop)  # (the file's, unless stored in place)
        replace = self.duplicate_policy == "replace"
        out: Future = Future()
        out.set_running_or_notify_cancel()

        def outcome(status: str, path: str, size: int) -> StoreOutcome:
            return StoreOutcome(status, sop, hdr.study_instance_uid, hdr.series_instance_uid,
                                str(v["SOPClassUID"]), path, size, hdr.warnings)

        if stage_here:
            # Under a temporary name that the rename below moves in place --
            # a rename that refuses to replace answers "new instance?"
            # without a stat.
            d = hdr.data if hdr.pieces is None else hdr.pieces  # (written without a join)
            staged = _Received(self.store.stage(key, d), hdr.size, checksum(d))
        staged_tmp = staged.tmp_key if staged is not None and in_place_path is None else None
        written: Future | None = None
        if not replace and (in_place_path is not None or (
                staged_tmp is None and self.store.exists(key))):
            # (A stat of the sharded key answers "new instance" without a
            # query; in-place rows have no key, so ask the index for those.)
            existing = self._existing(sop)
            if existing is not None:
                if staged is not None and staged.tmp_key is not None:
                    self.store.discard_staged(staged.tmp_key)
                out.set_result(outcome("duplicate", existing, 0))
                return out
        if in_place_path is not None:
            file_path, in_place = str(Path(in_place_path).resolve()), True
            if staged is not None:
                size, digest = staged.size, staged.digest
            else:
                size = len(data)
                digest = checksum(data)
        else:
            file_path, in_place = key, False
            # No fsync per file: the index writer syncs the file system once
            # per batch, before the commit that makes these files visible.
            if staged_tmp is not None:
                # Keep policy: the rename itself says whether the key is new
                # (no stat first); a taken key is a duplicate if indexed.
                if not self.store.commit_staged(staged_tmp, file_path, replace=replace):
                    existing = self._existing(sop)
                    if existing is not None:
                        self.store.discard_staged(staged_tmp)
                        out.set_result(outcome("duplicate", existing, 0))
                        return out
                    self.store.commit_staged(staged_tmp, file_path)  # a crash's leftover
                size, digest = staged.size, staged.digest
            else:
                if staged is not None:
                    # The worker found the key taken, but no row is left
                    # (a crash's leftover): store the file here after all.
                    data = read_header(reread(), name=origin).data if reread else hdr.data
                else:
                    data = hdr.data
                size = len(data)
                digest = checksum(data)
                if self._write_beside and window <= 0:
                    # Someone waits for this one instance (a C-STORE): its
                    # file is written on a helper thread while the index
                    # writer looks up its series and builds its row; the
                    # writer commits once the write is done, then syncs (one
                    # flush for the file, its name and the row).
                    written = _writer_pool().submit(self.store.put, file_path, data, durable=False)
                else:
                    self.store.put(file_path, data, durable=False)
        rec = repo.InstanceRecord(values=v, file_path=file_path, in_place=in_place, file_size=size,
                                  checksum=digest, origin=origin, character_set=hdr.character_set)

        def done(f: Future) -> None:
            exc = f.exception()
            if exc is not None:
                # The row did not commit: the file must not stay behind.
                if not in_place and not replace:
                    self._delete_file_quietly(file_path)
                out.set_exception(exc)
                return
            res: repo.AddResult = f.result()
            if res.status == "duplicate":
                # Another process stored it in between (in-process stores of
                # one UID are serialised above).
                winner = self._existing(sop)
                if not in_place and winner != file_path:
                    self._delete_file_quietly(file_path)
                out.set_result(outcome("duplicate", winner or file_path, 0))
                return
            if res.status == "replaced" and res.old_file_path and not res.old_in_place:
                self._delete_file_quietly(res.old_file_path)
            try:
                self._publish(res, hdr)
            finally:
                out.set_result(outcome(res.status, file_path, size))

        self.writer.submit_add(rec, replace=replace, window=window, written=written,
                               sync_files=not in_place and self.durable).add_done_callback(done)
        return out

    def store_file(self, path: Path, *, origin: str | None = None, in_place: bool = False) -> StoreOutcome:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise DicomFileError(f"{p}: cannot read ({exc.strerror})", kind="unreadable") from exc
        return self.store_bytes(data, origin=origin or f"path:{p}", name=str(p),
                                in_place_path=p if in_place else None)

    def _existing(self, sop: str) -> str | None:
        with self.db.engine.connect() as conn:
            return conn.execute(select(instances.c.file_path)
                                .where(instances.c.sop_instance_uid == sop)).scalar()

    def _delete_file_quietly(self, key: str) -> None:
        try:
            self.store.delete(key)
        except OSError as exc:
            log.warning("could not remove %s: %s", key, exc)

    def _publish(self, res: repo.AddResult, hdr: Header) -> None:
        v = hdr.values
        st, se = hdr.study_instance_uid, hdr.series_instance_uid
        if res.new_patient:
            self.feed.publish(ChangeEvent("new-patient", "PATIENT", str(v.get("PatientID") or ""),
                                          study_uid=st, info={"PatientName": v.get("PatientName")}))
        if res.new_study:
            self.feed.publish(ChangeEvent("new-study", "STUDY", st, study_uid=st))
        if res.new_series:
            self.feed.publish(ChangeEvent("new-series", "SERIES", se, study_uid=st, series_uid=se,
                                          info={"Modality": v.get("Modality")}))
        kind = "replaced-instance" if res.status == "replaced" else "new-instance"
        self.feed.publish(ChangeEvent(kind, "IMAGE", hdr.sop_instance_uid, study_uid=st, series_uid=se))

    # ----------------------------------------------------------------- import
    def import_paths(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        in_place: bool = False,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        workers: int | None = None,
    ) -> ImportReport:
        """Import files, folders (recursively), ZIP archives and DICOMDIRs.

        Non-DICOM files are skipped; malformed ones are reported with their
        reason; neither stops the batch.  *progress* is called (from worker
        threads, at most ~20 times a second plus once at the end) with the
        running report; setting *cancel* stops the import after the files in
        flight.

        An import of :data:`~osirix_py.services.importer.POOL_MIN_FILES` files
        or more (copied into a :class:`FileStore`, or in place) reads, parses
        and stages its files in worker processes (see
        :mod:`~osirix_py.services.importer`) and only renames and indexes
        them here; ``workers=1`` keeps everything in this process.  (As with
        any process pool, a script that imports must guard its top level
        with ``if __name__ == "__main__":``.)
        """
        report = ImportReport()
        start = time.perf_counter()
        sources, listing_failures = self._expand(paths, in_place)
        report.total = len(sources) + len(listing_failures)
        for f in listing_failures:
            report.failed += 1
            report.failures.append(f)
        lock = threading.Lock()
        last_progress = [0.0]
        nworkers = workers or min(8, (os.cpu_count() or 2) * 2)

        # Commits still pending are bounded too, so memory stays flat however
        # many files come.
        pending_commits = threading.BoundedSemaphore(PENDING_COMMITS)

        def failed(src: "_Source", reason: str, kind: str) -> None:
            with lock:
                report.failed += 1
                report.failures.append(ImportFailure(src.label, reason, kind))

        def tick() -> None:
            if progress is not None:
                now = time.perf_counter()
                if now - last_progress[0] >= 0.05:
                    last_progress[0] = now
                    report.seconds = now - start
                    progress(report)

        def committed(src: "_Source", fut: Future) -> None:
            try:
                count_commit(src, fut)
            finally:
                pending_commits.release()

        def count_commit(src: "_Source", fut: Future) -> None:
            exc = fut.exception()
            if exc is not None:
                if isinstance(exc, StorageFullError):
                    failed(src, f"{src.label}: {exc.strerror or exc}", "disk-full")
                else:
                    failed(src, f"{src.label}: {exc.__class__.__name__}: {exc}", "io")
            else:
                out = fut.result()
                with lock:
                    report.warnings.extend(ImportFailure(src.label, w, "warning") for w in out.warnings)
                    if out.status == "stored":
                        report.imported += 1
                        report.bytes += out.size
                        report.studies.add(out.study_instance_uid)
                    elif out.status == "replaced":
                        report.replaced += 1
                        report.studies.add(out.study_instance_uid)
                    else:
                        report.duplicates += 1
            tick()

        def rejected(src: "_Source", reason: str, kind: str) -> None:
            if kind in ("not-dicom", "dicomdir"):
                with lock:
                    report.skipped += 1
                    report.skipped_files.append(ImportFailure(src.label, reason, kind))
                tick()
            else:
                failed(src, reason, kind)

        def submitted(src: "_Source", submit: Callable[[], Future]) -> None:
            pending_commits.acquire()
            try:
                fut = submit()
            except DicomFileError as exc:
                pending_commits.release()
                rejected(src, exc.reason, exc.kind)
            except StorageFullError as exc:
                pending_commits.release()
                failed(src, f"{src.label}: {exc.strerror or exc}", "disk-full")
            except (StorageError, OSError) as exc:
                pending_commits.release()
                failed(src, f"{src.label}: {exc}", "io")
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the batch
                pending_commits.release()
                log.exception("unexpected error importing %s", src.label)
                failed(src, f"{src.label}: {exc.__class__.__name__}: {exc}", "invalid")
            else:
                fut.add_done_callback(lambda f, src=src: committed(src, f))

        def in_place_path(src: "_Source") -> Path | None:
            return src.path if (in_place and src.path) else None

        def one(src: "_Source") -> None:
            submitted(src, lambda: self.submit_bytes(src.read(), origin=f"path:{src.label}",
                                                     name=src.label, in_place_path=in_place_path(src)))

        def one_staged(src: "_Source", st: Staged | Rejected) -> None:
            if isinstance(st, Rejected):
                rejected(src, st.reason, st.kind)
                return
            hdr = Header(values=st.values, transfer_syntax_uid=st.transfer_syntax_uid,
                         character_set=st.character_set, data=b"", warnings=st.warnings)
            submitted(src, lambda: self._submit_header(hdr, f"path:{src.label}", in_place_path(src),
                                                       b"", st, src.read))

        remaining = sources
        pool_procs = self._pool_processes(len(sources), in_place, workers)
        if pool_procs:
            remaining = self._import_in_pool(sources, pool_procs, in_place, cancel, one_staged, report)
        if remaining:
            with ThreadPoolExecutor(max_workers=nworkers, thread_name_prefix="import") as pool:
                inflight: set[Future] = set()
                for src in remaining:
                    if cancel is not None and cancel.is_set():
                        report.cancelled = True
                        break
                    if len(inflight) >= nworkers * 2:
                        done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                    inflight.add(pool.submit(one, src))
                wait(inflight)
        # Every commit has been counted once all permits are back.
        for _ in range(PENDING_COMMITS):
            pending_commits.acquire()
        if cancel is not None and cancel.is_set():
            report.cancelled = True
        report.seconds = time.perf_counter() - start
        if progress is not None:
            progress(report)
        return report

    def _pool_processes(self, n_files: int, in_place: bool, workers: int | None) -> int:
        """How many worker processes an import of *n_files* uses (0: none)."""
        if self._import_pool is None or n_files < POOL_MIN_FILES or workers == 1:
            return 0
        if not in_place and not isinstance(self.store, FileStore):
            return 0  # (a memory store cannot be written from another process)
        return self._import_pool.processes

    def _import_in_pool(self, sources: list["_Source"], processes: int, in_place: bool,
                        cancel: threading.Event | None,
                        handle: Callable[["_Source", Staged | Rejected], None],
                        report: ImportReport) -> list["_Source"]:
        """Parse and stage *sources* in the worker processes, chunk by chunk,
        handing each result to *handle* (in this thread) as chunks come back.

        Returns the sources still to import in this process: all of them if
        the pool cannot start, the rest if a worker dies."""
        pool = self._import_pool
        assert pool is not None
        store_root = str(self.store.root) if isinstance(self.store, FileStore) else None
        keep = self.duplicate_policy == "keep"
        numbered = list(enumerate(sources))
        # Chunks of up to CHUNK_FILES, smaller when there are few files, so
        # that every worker gets several and none idles at the end.
        size = max(4, min(CHUNK_FILES, len(numbered) // (processes * 8)))
        chunks = [numbered[i:i + size] for i in range(0, len(numbered), size)]
        chunks.reverse()  # popped from the end, in order
        inflight: dict[Future, list[tuple[int, _Source]]] = {}
        leftover: list[list[tuple[int, _Source]]] = []
        broken = False
        max_inflight = processes * 3
        while True:
            while chunks and not broken and len(inflight) < max_inflight:
                if cancel is not None and cancel.is_set():
                    report.cancelled = True
                    chunks.clear()
                    break
                chunk = chunks.pop()
                try:
                    fut = pool.submit_chunk(chunk, store_root=store_root, keep_existing=keep,
                                            in_place=in_place)
                except Exception as exc:  # noqa: BLE001 - e.g. processes cannot start here
                    log.warning("import workers unavailable (%s); importing in this process", exc)
                    leftover.append(chunk)
                    broken = True
                    break
                inflight[fut] = chunk
            if not inflight:
                break
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            if cancel is not None and cancel.is_set():
                report.cancelled = True
                chunks.clear()
                for fut in list(inflight):
                    if fut not in done and fut.cancel():
                        del inflight[fut]  # never started: nothing was staged
            for fut in done:
                chunk = inflight.pop(fut)
                try:
                    results = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (BrokenProcessPool)
                    if not broken:
                        log.warning("an import worker failed (%s); importing the rest in this "
                                    "process", exc)
                        pool.discard()
                        broken = True
                    leftover.append(chunk)
                    continue
                for st in results:
                    handle(sources[st.index], st)
        if broken:
            leftover.extend(reversed(chunks))
        return [src for chunk in leftover for _, src in chunk]

    def _expand(self, paths, in_place: bool) -> tuple[list["_Source"], list[ImportFailure]]:
        out: list[_Source] = []
        failures: list[ImportFailure] = []
        for raw in paths:
            p = Path(raw)
            if not p.exists():
                failures.append(ImportFailure(str(p), f"{p}: no such file or folder", "unreadable"))
            elif p.is_dir():
                def onerror(exc: OSError, _p=p):
                    failures.append(ImportFailure(str(exc.filename),
                                                  f"{exc.filename}: cannot read folder ({exc.strerror})",
                                                  "unreadable"))
                for dirpath, dirnames, filenames in os.walk(p, onerror=onerror):
                    dirnames.sort()
                    for fn in sorted(filenames):
                        fp = Path(dirpath) / fn
                        if fn.upper() == "DICOMDIR":
                            continue  # its referenced files are in this tree anyway
                        out.extend(self._sources_for_file(fp, failures))
            else:
                if p.name.upper() == "DICOMDIR":
                    out.extend(_dicomdir_sources(p, failures))
                else:
                    out.extend(self._sources_for_file(p, failures))
        return out, failures

    def _sources_for_file(self, fp: Path, failures: list[ImportFailure]) -> list["_Source"]:
        if fp.suffix.lower() == ".zip" or (fp.suffix == "" and _is_zip(fp)):
            try:
                zf = zipfile.ZipFile(fp)
                names = [i for i in zf.infolist() if not i.is_dir()]
            except (zipfile.BadZipFile, OSError) as exc:
                failures.append(ImportFailure(str(fp), f"{fp}: unreadable ZIP archive ({exc})"))
                return []
            return [_Source(label=f"{fp}!{i.filename}", zip_path=fp, member=i.filename) for i in names
                    if Path(i.filename).name.upper() != "DICOMDIR"]
        return [_Source(label=str(fp), path=fp)]

    # ------------------------------------------------------------------ query
    def find(self, level: Level | str, query: Mapping[str, object] | None = None, *,
             limit: int | None = None, offset: int = 0, fuzzy_names: bool = True) -> list[dict]:
        lv = Level.parse(level) if isinstance(level, str) else level
        with self.db.engine.connect() as conn:
            return repo.find(conn, lv, query or {}, limit=limit, offset=offset, fuzzy_names=fuzzy_names)

    def retrieve_rows(self, query: Mapping[str, object], *, fuzzy_names: bool = True) -> list[dict]:
        """The instances a C-MOVE / C-GET of *query* sends: rows with only
        what that needs (see :func:`~osirix_py.db.repository.retrieve_rows`),
        each good for :meth:`read_instance`."""
        with self.db.engine.connect() as conn:
            return repo.retrieve_rows(conn, query, fuzzy_names=fuzzy_names)

    def iter_find(self, level: Level | str, query: Mapping[str, object] | None = None, *,
                  fuzzy_names: bool = True) -> Iterator[dict]:
        lv = Level.parse(level) if isinstance(level, str) else level
        with self.db.engine.connect() as conn:
            yield from repo.iter_find(conn, lv, query or {}, fuzzy_names=fuzzy_names)

    def count(self, level: Level | str, query: Mapping[str, object] | None = None) -> int:
        lv = Level.parse(level) if isinstance(level, str) else level
        with self.db.engine.connect() as conn:
            return repo.count(conn, lv, query or {})

    def stats(self) -> dict:
        with self.db.engine.connect() as conn:
            s = repo.stats(conn)
        s["free_bytes"] = self.store.free_bytes()
        return s

    def instance_file(self, row: Mapping) -> Path | None:
        """Filesystem path of an IMAGE-level row from :meth:`find` (None for memory stores)."""
        fp = row["_file_path"]
        if row.get("_in_place"):
            return Path(fp)
        return self.store.path(fp)

    def read_instance(self, row: Mapping) -> bytes:
        """The bytes of an IMAGE-level row's file."""
        fp = row["_file_path"]
        if row.get("_in_place"):
            return Path(fp).read_bytes()
        return self.store.get(fp)

    # ----------------------------------------------------------------- delete
    def delete(self, level: Level | str, uid: str) -> DeleteReport:
        """Delete a patient (by Patient ID), study, series or instance.

        Files go first, then rows: a crash in between leaves rows without
        files, which the startup check removes (the other order would let the
        check resurrect deleted images).  Files imported in place are never
        deleted from their original location.
        """
        lv = Level.parse(level) if isinstance(level, str) else level
        with self.db.engine.connect() as conn:
            files = repo.instance_files(conn, lv, uid)
        if not files:
            raise ArchiveError(f"no {lv.cli_name} with UID {uid} in the database")
        errors = []
        removed = 0
        for fp, in_place in files:
            if in_place:
                continue
            try:
                self.store.delete(fp)
                removed += 1
            except OSError as exc:
                errors.append(f"{fp}: {exc}")
        n, _ = self.writer.run(lambda conn: repo.delete_object(conn, lv, uid))
        self.feed.publish(ChangeEvent("deleted", lv.value, uid))
        return DeleteReport(instances=n, files_removed=removed, errors=errors)

    # ------------------------------------------------------------------ check
    def check(self, *, repair: bool = True, progress: Callable[[str], None] | None = None) -> CheckReport:
        """Make database and store agree after a crash.

        Files without rows are re-indexed; rows whose file is missing are
        reported and (with *repair*) removed; leftover temporary files of
        interrupted writes are deleted.
        """
        rep = CheckReport()
        rep.temporary_removed = len(self.store.clean_temporary()) if repair else 0
        known_keys: set[str] = set()
        missing_pks: list[int] = []
        with self.db.engine.connect() as conn:
            for pk, sop, fp, in_place, size in repo.all_instance_files(conn):
                rep.rows_checked += 1
                if in_place:
                    ok = Path(fp).is_file()
                else:
                    known_keys.add(fp)
                    try:
                        ok = self.store.size(fp) == size
                    except (FileNotFoundError, OSError):
                        ok = False
                    if not ok and self.store.exists(fp):
                        # A replace interrupted between rename and commit:
                        # the file is the newer one; re-index it below.
                        known_keys.discard(fp)
                        missing_pks.append(pk)
                        continue
                if not ok:
                    rep.rows_without_file.append(sop)
                    missing_pks.append(pk)
        if repair and missing_pks:
            self.writer.run(lambda conn: repo.delete_instance_pks(conn, missing_pks))
        for key in self.store.keys():
            rep.files_checked += 1
            if key in known_keys:
                continue
            if not repair:
                rep.files_reindexed.append(key)
                continue
            try:
                data = self.store.get(key)
                hdr = read_header(data, name=key)
                rec = repo.InstanceRecord(values=hdr.values, file_path=key, in_place=False,
                                          file_size=len(data), checksum=checksum(data),
                                          origin="check:reindexed", character_set=hdr.character_set)
                res = self.writer.run(lambda conn, rec=rec: repo.add_instance(conn, rec, replace=True))
                rep.files_reindexed.append(key)
                self._publish(res, hdr)
            except (DicomFileError, OSError) as exc:
                rep.files_unreadable.append(f"{key}: {exc}")
        if rep.rows_without_file:
            log.warning("startup check: %d row(s) without file removed", len(rep.rows_without_file))
        if rep.files_reindexed:
            log.warning("startup check: %d file(s) without row re-indexed", len(rep.files_reindexed))
        return rep

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._import_pool is not None:
                self._import_pool.close()
            self.writer.close()
            self.feed.close()


def _sync_covers_db(db: Database, store) -> bool:
    """True when the store's ``sync()`` also flushes the SQLite database file:
    a file-system-wide sync (:class:`FileStore`) of the file system that
    holds the database (its WAL beside it)."""
    root = getattr(store, "root", None)
    if root is None or not getattr(store, "SYNC_IS_FILESYSTEM_WIDE", False) or not db.is_sqlite:
        return False
    try:
        path = db.engine.url.database
        if not path or path == ":memory:":
            return False
        return os.stat(Path(path).resolve().parent).st_dev == os.stat(root).st_dev
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------- sources
_Source = Source


def _is_zip(fp: Path) -> bool:
    try:
        with open(fp, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _dicomdir_sources(p: Path, failures: list[ImportFailure]) -> list[_Source]:
    """The image files a DICOMDIR references (ReferencedFileID, relative to it)."""
    import pydicom

    try:
        dd = pydicom.dcmread(p)
        records = dd.DirectoryRecordSequence
    except Exception as exc:  # noqa: BLE001
        failures.append(ImportFailure(str(p), f"{p}: unreadable DICOMDIR ({exc})"))
        return []
    out = []
    root = p.parent
    for rec in records:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        if any(x in ("..", "") or "/" in x or "\\" in x for x in parts):
            failures.append(ImportFailure(str(p), f"{p}: unsafe file reference {parts!r} ignored"))
            continue
        fp = root.joinpath(*parts)
        if not fp.exists():
            # Media written on Windows/CD often differ in case.
            alt = _case_insensitive(root, parts)
            fp = alt or fp
        out.append(_Source(label=str(fp), path=fp))
    return out


def _case_insensitive(root: Path, parts: list[str]) -> Path | None:
    cur = root
    for part in parts:
        try:
            match = next((e for e in cur.iterdir() if e.name.upper() == part.upper()), None)
        except OSError:
            return None
        if match is None:
            return None
        cur = match
    return cur
