"""Import workers: header parsing and store copies in a pool of processes.

Parsing a header is pure Python (pydicom) and holds the GIL, so threads of
one process cannot parse faster than one core.  A large import therefore
sends its files, in chunks, to worker PROCESSES that read each file, parse
its header (:func:`~osirix_py.dicom.header.read_header`), compute its
checksum and write it to a temporary file beside its final name in the store
(no fsync: the index writer syncs the file system once per batch).  They
return compact records -- the attribute-table values, not pydicom datasets --
and the archive, in the importing process, renames each staged file into
place under its per-UID lock and batches the index inserts.

The pool uses the ``forkserver`` start method (``spawn`` where there is no
fork server): the GUI embeds the archive, and a process with Qt and threads
must never ``fork``.  The fork server preloads this module (pydicom
included), so a pool starts in milliseconds after the first one.  An
:class:`ImportPool` is kept by its archive and reused across imports.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import zipfile
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..dicom.header import MEDIA_STORAGE_DIRECTORY, DicomFileError, read_header
from ..storage.base import StorageError, StorageFullError, checksum, key_for_uid
from ..storage.filestore import FileStore

#: Imports of fewer files than this run in the importing process: starting
#: worker processes would cost more than it saves.
POOL_MIN_FILES = 64
#: Files per task sent to a worker process (small IPC, few round trips).
CHUNK_FILES = 32


# ---------------------------------------------------------------------- sources
@dataclass
class Source:
    """One file to import: a path, or a member of a ZIP archive."""

    label: str
    path: Path | None = None
    zip_path: Path | None = None
    member: str | None = None

    def read(self) -> bytes:
        if self.path is not None:
            try:
                return self.path.read_bytes()
            except OSError as exc:
                raise DicomFileError(f"{self.label}: cannot read ({exc.strerror})", kind="unreadable") from exc
        try:
            with zipfile.ZipFile(self.zip_path) as zf:
                return zf.read(self.member)
        except (zipfile.BadZipFile, OSError, KeyError, RuntimeError) as exc:
            raise DicomFileError(f"{self.label}: cannot extract ({exc})", kind="unreadable") from exc


# ---------------------------------------------------------------------- records
@dataclass
class Staged:
    """What a worker process made of one file (pickled back to the archive).

    *tmp_key* is the staged temporary file in the store (None when nothing was
    written: an in-place import, or *existed*, i.e. the final key was already
    there under the "keep" policy -- the archive then asks the index)."""

    index: int
    values: dict
    character_set: str | None
    transfer_syntax_uid: str
    warnings: list
    size: int
    digest: str
    key: str | None = None
    tmp_key: str | None = None
    existed: bool = False


@dataclass
class Rejected:
    """A file a worker could not take: ``kind`` as :class:`DicomFileError`'s,
    or "disk-full" / "io"."""

    index: int
    reason: str
    kind: str


# ---------------------------------------------------------------------- worker side
_stores: dict[str, FileStore] = {}


def _store(root: str) -> FileStore:
    st = _stores.get(root)
    if st is None:
        st = _stores[root] = FileStore(Path(root))
    return st


def prepare_one(index: int, src: Source, store_root: str | None, keep_existing: bool,
                in_place: bool) -> Staged | Rejected:
    """Read, parse, checksum and stage one file (not a file indexed *in_place*,
    nor anything when there is no *store_root*)."""
    in_place = in_place and src.path is not None  # (ZIP members are always copied)
    try:
        fd = None
        if src.path is not None and store_root is not None and not in_place:
            # Keep the source open: its bytes are copied in the kernel below.
            try:
                fd = os.open(src.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                with os.fdopen(os.dup(fd), "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                if fd is not None:
                    os.close(fd)
                raise DicomFileError(f"{src.label}: cannot read ({exc.strerror})",
                                     kind="unreadable") from exc
        else:
            data = src.read()
        try:
            hdr = read_header(data, name=src.label)
            v = hdr.values
            if v.get("SOPClassUID") == MEDIA_STORAGE_DIRECTORY:
                raise DicomFileError(f"{src.label}: a DICOMDIR index, not an image", kind="not-dicom")
            if in_place or store_root is None:
                return Staged(index, v, hdr.character_set, hdr.transfer_syntax_uid, hdr.warnings,
                              len(data), checksum(data))
            key = key_for_uid(hdr.sop_instance_uid)
            st = _store(store_root)
            size, digest = len(hdr.data), checksum(hdr.data)
            if keep_existing and st.exists(key):
                return Staged(index, v, hdr.character_set, hdr.transfer_syntax_uid, hdr.warnings,
                              size, digest, key=key, existed=True)
            if fd is not None and hdr.data is data:
                tmp = st.stage(key, src_fd=fd)
            else:
                tmp = st.stage(key, hdr.data)
            return Staged(index, v, hdr.character_set, hdr.transfer_syntax_uid, hdr.warnings,
                          size, digest, key=key, tmp_key=tmp)
        finally:
            if fd is not None:
                os.close(fd)
    except DicomFileError as exc:
        return Rejected(index, exc.reason, exc.kind)
    except StorageFullError as exc:
        return Rejected(index, f"{src.label}: {exc.strerror or exc}", "disk-full")
    except (StorageError, OSError) as exc:
        return Rejected(index, f"{src.label}: {exc}", "io")
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the batch
        return Rejected(index, f"{src.label}: {exc.__class__.__name__}: {exc}", "invalid")


def prepare_chunk(items: list[tuple[int, Source]], store_root: str | None, keep_existing: bool,
                  in_place: bool) -> list[Staged | Rejected]:
    """The task a worker process runs: :func:`prepare_one` for each file."""
    return [prepare_one(i, src, store_root, keep_existing, in_place) for i, src in items]


def _warm(_: object = None) -> int:
    return os.getpid()


# ---------------------------------------------------------------------- the pool
def mp_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` where available (preloading this module), else ``spawn``;
    never ``fork`` (the importing process may run Qt and many threads)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Only takes effect if the fork server is not running yet.
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def default_processes() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    # One more than the CPUs: a worker blocked in the file system (creating
    # files and shard folders) leaves its CPU to another.
    return max(2, min(n + 1, 8))


class ImportPool:
    """A lazily started, reusable pool of import worker processes."""

    def __init__(self, processes: int | None = None):
        self.processes = processes or default_processes()
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    @property
    def started(self) -> bool:
        return self._pool is not None

    def executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the import pool is shut down")
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=mp_context())
            return self._pool

    def submit_chunk(self, items: list[tuple[int, Source]], *, store_root: str | None,
                     keep_existing: bool, in_place: bool) -> Future:
        return self.executor().submit(prepare_chunk, items, store_root, keep_existing, in_place)

    def discard(self) -> None:
        """Drop a broken pool (a worker died); the next import starts a new one."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
