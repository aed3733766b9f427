"""The index writer: one thread that owns every write to the database.

Callers (C-STORE handlers on their association threads, import workers,
deletes) submit a function of a ``Connection``; the writer runs whatever is
queued in ONE transaction and commits once (group commit), then resolves each
caller's future.  A C-STORE handler waits on its future, so the success status
goes out only after the commit that holds its row is durable.

If a batch fails, it is rolled back and each operation is re-run in its own
transaction, so one bad operation never costs the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from ..db import repository as repo
from ..db.engine import Database

log = logging.getLogger(__name__)

Op = Callable[[Connection], object]


@dataclass(frozen=True)
class AddOp:
    """Index one stored instance; consecutive AddOps of a batch are indexed together."""

    record: repo.InstanceRecord
    replace: bool = False
    #: The instance's file write, done on another thread beside the insert:
    #: the transaction commits (and the batch's sync runs) only once it has
    #: succeeded -- its error fails the op -- so no row ever points at a
    #: file that is not there.
    written: Future | None = None


class WriterClosed(RuntimeError):
    pass


class IndexWriter:
    def __init__(self, db: Database, *, max_batch: int = 512,
                 sync_files: Callable[[], None] | None = None, sync_covers_db: bool = False):
        self.db = db
        self.max_batch = max_batch
        #: Called once per batch that indexes new files, so that one
        #: file-system sync makes every file of the batch durable before any
        #: caller is told that it is stored.
        self.sync_files = sync_files
        #: *sync_files* also makes the SQLite database durable (its file, WAL
        #: included, is on the synced file system): such a batch commits
        #: without SQLite's own fsync and is durable after ONE sync, taken
        #: after the commit -- one flush per batch instead of two.  A crash
        #: before that sync completes may leave rows whose file did not reach
        #: the disk; nobody was told they were stored, and the startup check
        #: (:meth:`Archive.check`: size differs -> row removed) repairs them.
        self.sync_covers_db = sync_covers_db and db.is_sqlite
        self._lazy_conn = None  # the writer thread's own connection (see _commit_lazily)
        #: (op, future, sync files, deadline of its window or 0) per submitted op
        self._q: queue.Queue[tuple[Op, Future, bool, float] | None] = queue.Queue()
        self._closed = False
        #: Set when a batch waiting out its window must commit now: an op
        #: that someone waits for (or a flush, a close) or a full batch.
        #: Ops with a window do not wake the writer one by one (measured:
        #: ~100 wake-ups of this thread per 100-instance retrieve).
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._thread.start()
        self.commits = 0
        self.ops = 0

    def submit(self, op: Op, *, sync_files: bool = False, window: float = 0.0) -> Future:
        """Queue *op*; its future resolves after the commit of its batch.

        *window* (seconds): nobody waits for this op right now (a retrieve
        acknowledges on write and settles at the end), so its batch may wait
        that long for more ops -- one commit and one sync for a whole run of
        received instances instead of one per instance.  A batch that holds
        any op without a window (a C-STORE waiting to answer) never waits.
        The window runs from the submit (time spent queued behind the
        previous batch's commit and sync counts), so a steady stream of ops
        is committed batch after batch without idle gaps.
        """
        if self._closed:
            raise WriterClosed("the archive is shutting down")
        fut: Future = Future()
        self._q.put((op, fut, sync_files, time.monotonic() + window if window > 0 else 0.0))
        if window <= 0 or self._q.qsize() >= self.max_batch - 1:  # (+ the one it holds)
            self._wake.set()
        return fut

    def submit_add(self, record: repo.InstanceRecord, *, replace: bool = False,
                   sync_files: bool = False, window: float = 0.0,
                   written: Future | None = None) -> Future:
        """Index one instance (``Future[AddResult]``), batched with its neighbours.

        *written*: the future of the instance's file write, running
        elsewhere; the row is inserted meanwhile and committed after it."""
        return self.submit(AddOp(record, replace, written),  # type: ignore[arg-type]
                           sync_files=sync_files, window=window)

    def flush(self) -> Future:
        """Commit what is queued now: a batch waiting out its window for more
        ops (see :meth:`submit`) stops waiting.  The caller that knows no
        more are coming (a retrieve that got its final response) saves the
        rest of the window."""
        return self.submit(_no_op)

    def run(self, op: Op, timeout: float | None = None):
        """Submit *op* and wait for its committed result (re-raises its error)."""
        return self.submit(op).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._wake.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._drop_lazy_conn()

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            batch = [item]
            deadline = item[3]  # 0: someone waits for this op (see submit)
            if deadline:
                left = deadline - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
            self._wake.clear()
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            self._execute(batch)

    def _execute(self, batch: list[tuple[Op, Future, bool, float]]) -> None:
        live = [(op, f) for op, f, _, _ in batch if f.set_running_or_notify_cancel()]
        if not live:
            return
        needs_sync = self.sync_files is not None and any(sync for _, _, sync, _ in batch)
        deferred = needs_sync and self.sync_covers_db
        ops = [op for op, _ in live]
        if needs_sync and not deferred:
            # Files first, then the rows that point at them (two flushes):
            # files still being written beside the insert must be done first.
            _wait_written(ops, raise_error=False)
            try:
                self.sync_files()
            except OSError as exc:
                for _, fut in live:
                    fut.set_exception(exc)
                return
        outcomes: list[tuple[Future, object, BaseException | None]] = []
        try:
            results = self._with_retry(lambda conn: _run_all(conn, ops),
                                       lazy_sync=deferred)
            outcomes = [(fut, res, None) for (_, fut), res in zip(live, results)]
        except Exception as exc:
            if len(live) == 1:
                outcomes = [(live[0][1], None, exc)]
            else:
                log.debug("batch of %d failed (%s); retrying one by one", len(live), exc)
                for op, fut in live:
                    try:
                        res = self._with_retry(
                            lambda conn, op=op: _run_all(conn, [op])[0],
                            lazy_sync=deferred)
                        outcomes.append((fut, res, None))
                    except Exception as e:  # noqa: BLE001 - handed to the caller
                        outcomes.append((fut, None, e))
        # Whatever happened, no caller hears back before its file write has
        # ended (a failed row's caller removes the file: it must be there).
        _wait_written(ops, raise_error=False)
        if deferred and any(e is None for _, _, e in outcomes):
            # One flush makes the files AND the commit above durable; only
            # then is anyone told.
            try:
                self.sync_files()  # type: ignore[misc]
            except OSError as exc:
                log.error("file-system sync failed after a commit: %s (the startup check "
                          "will remove rows whose file is missing)", exc)
                outcomes = [(fut, None, exc) for fut, _, _ in outcomes]
        for fut, res, exc in outcomes:
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(res)

    def _with_retry(self, fn: Op, attempts: int = 20, *, lazy_sync: bool = False):
        delay = 0.05
        for i in range(attempts):
            try:
                if lazy_sync:
                    out = self._commit_lazily(fn)
                else:
                    with self.db.engine.begin() as conn:
                        out = fn(conn)
                self.commits += 1
                self.ops += 1
                return out
            except OperationalError as exc:
                # Another process (a CLI import beside the server) holds the
                # SQLite write lock past busy_timeout: wait and try again.
                if "locked" not in str(exc).lower() or i == attempts - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise RuntimeError("unreachable")

    def _commit_lazily(self, fn: Op):
        """Run *fn* in a transaction whose commit skips SQLite's fsync
        (``synchronous=NORMAL``, WAL); the caller syncs the file system next.

        It runs on the writer's own connection, kept open with that setting
        (never returned to the pool, whose connections keep
        ``synchronous=FULL`` for every other writer); after an error it is
        dropped and a fresh one is opened for the next batch."""
        conn = self._lazy_conn
        if conn is None:
            conn = self.db.engine.connect()
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            conn.commit()  # (ends SQLAlchemy's autobegun transaction; the pragma needs none)
            self._lazy_conn = conn
        try:
            with conn.begin():
                return fn(conn)
        except BaseException:
            self._drop_lazy_conn()
            raise

    def _drop_lazy_conn(self) -> None:
        conn, self._lazy_conn = self._lazy_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


def _no_op(conn: Connection) -> None:
    return None


def _wait_written(ops: list, *, raise_error: bool) -> None:
    """Wait for the file writes of *ops*' AddOps; re-raise the first error."""
    for op in ops:
        w = getattr(op, "written", None)
        if w is not None:
            exc = w.exception()
            if exc is not None and raise_error:
                raise exc


def _run_all(conn: Connection, ops: list) -> list:
    """Run *ops* in order in one transaction (runs of AddOps through one bulk
    call), then wait for the AddOps' file writes before the caller commits: a
    failed write fails the transaction."""
    results: list = []
    i = 0
    while i < len(ops):
        if isinstance(ops[i], AddOp):
            j = i
            while j < len(ops) and isinstance(ops[j], AddOp) and ops[j].replace == ops[i].replace:
                j += 1
            results.extend(repo.add_instances(conn, [o.record for o in ops[i:j]],
                                              replace=ops[i].replace))
            i = j
        else:
            results.append(ops[i](conn))
            i += 1
    _wait_written(ops, raise_error=True)
    return results
