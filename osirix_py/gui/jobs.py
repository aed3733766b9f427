"""Background jobs the Activity panel lists: imports now; query/retrieve and send later.

A :class:`Job` is a plain, thread-safe record that a worker thread updates
(``progress``, ``fail`` ...).  The :class:`JobModel` (a Qt table model on the
GUI thread) shows the jobs; workers never touch it: they call
``job.update(...)`` and the model hears about it through the dispatcher.

Other features add jobs with :meth:`JobModel.start` and a function
``work(job)`` that runs on a worker thread and reports through the job.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, Qt, Signal

from .bridge import Dispatcher

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)

_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """One unit of background work.  Fields are written by the worker under ``lock``."""

    kind: str  # "import", "retrieve", "send" ...
    title: str
    id: int = field(default_factory=lambda: next(_ids))
    state: str = QUEUED
    total: int = 0
    done: int = 0
    #: Items per second (from the worker, or computed from done/elapsed).
    rate: float = 0.0
    status: str = ""
    errors: list[str] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _listener: Callable[["Job"], None] | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- worker
    def update(self, *, done: int | None = None, total: int | None = None, rate: float | None = None,
               status: str | None = None) -> None:
        with self.lock:
            if done is not None:
                self.done = done
            if total is not None:
                self.total = total
            if rate is not None:
                self.rate = rate
            elif self.started and done is not None:
                elapsed = time.monotonic() - self.started
                self.rate = self.done / elapsed if elapsed > 0 else 0.0
            if status is not None:
                self.status = status
        self._changed()

    def add_error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)
        self._changed()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        self.cancel_event.set()
        self._changed()

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED

    @property
    def fraction(self) -> float | None:
        """0..1, or None while the total is unknown."""
        if self.state == DONE:
            return 1.0
        if self.total <= 0:
            return None
        return min(1.0, self.done / self.total)

    def _set_state(self, state: str) -> None:
        with self.lock:
            self.state = state
            now = time.monotonic()
            if state == RUNNING:
                self.started = now
            elif state in FINISHED:
                self.finished = now
        self._changed()

    def _changed(self) -> None:
        if self._listener is not None:
            self._listener(self)


class JobModel(QAbstractTableModel):
    """The jobs, newest first: title, state, progress, rate, errors."""

    COLUMNS = ("Job", "State", "Progress", "Rate", "Problems")
    PROGRESS_COLUMN = 2

    #: Emitted on the GUI thread when a job finishes (done, failed or cancelled).
    finished = Signal(object)

    def __init__(self, dispatcher: Dispatcher, parent: QObject | None = None):
        super().__init__(parent)
        self._dispatcher = dispatcher
        self._jobs: list[Job] = []
        self._threads: dict[int, threading.Thread] = {}
        self._dirty: set[int] = set()
        self._dirty_lock = threading.Lock()
        self._flush_posted = False

    # ------------------------------------------------------------- running
    def start(self, job: Job, work: Callable[[Job], Any],
              on_done: Callable[[Job], None] | None = None) -> Job:
        """Add ``job`` and run ``work(job)`` on a new thread.

        ``work`` returns the job's result; an exception fails the job (its
        message becomes an error).  ``on_done(job)`` runs on the GUI thread
        once the job has finished, whatever the outcome.
        """
        self.add(job)

        def run():
            job._set_state(RUNNING)
            try:
                job.result = work(job)
            except Exception as exc:  # noqa: BLE001 - reported through the job
                log.exception("job %s failed", job.title)
                job.add_error(f"{exc.__class__.__name__}: {exc}" if not str(exc) else str(exc))
                job._set_state(FAILED)
            else:
                job._set_state(CANCELLED if job.cancelled else DONE)
            finally:
                self._dispatcher.post(lambda: self._finish(job, on_done))

        t = threading.Thread(target=run, name=f"job-{job.id}-{job.kind}", daemon=True)
        self._threads[job.id] = t
        t.start()
        return job

    def _finish(self, job: Job, on_done) -> None:
        self._threads.pop(job.id, None)
        self._refresh(job)
        self.finished.emit(job)
        if on_done is not None:
            on_done(job)

    def wait_all(self, timeout: float = 30.0) -> bool:
        """Join the worker threads (used on quit and by tests)."""
        deadline = time.monotonic() + timeout
        for t in list(self._threads.values()):
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads.values())

    def cancel_all(self) -> None:
        for j in self._jobs:
            if not j.is_finished:
                j.cancel()

    # ------------------------------------------------------------------ list
    def add(self, job: Job) -> None:
        job._listener = self._job_changed
        self.beginInsertRows(QModelIndex(), 0, 0)
        self._jobs.insert(0, job)
        self.endInsertRows()

    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def job(self, row: int) -> Job | None:
        return self._jobs[row] if 0 <= row < len(self._jobs) else None

    def active(self) -> list[Job]:
        return [j for j in self._jobs if not j.is_finished]

    def clear_finished(self) -> None:
        keep = [j for j in self._jobs if not j.is_finished]
        if len(keep) != len(self._jobs):
            self.beginResetModel()
            self._jobs = keep
            self.endResetModel()

    def _job_changed(self, job: Job) -> None:
        # Any thread: collect, and let the GUI thread repaint once per batch.
        with self._dirty_lock:
            self._dirty.add(job.id)
            if self._flush_posted:
                return
            self._flush_posted = True
        self._dispatcher.post(self._flush)

    def _flush(self) -> None:
        with self._dirty_lock:
            ids, self._dirty = self._dirty, set()
            self._flush_posted = False
        for j in self._jobs:
            if j.id in ids:
                self._refresh(j)

    def _refresh(self, job: Job) -> None:
        try:
            row = self._jobs.index(job)
        except ValueError:
            return
        self.dataChanged.emit(self.index(row, 0), self.index(row, len(self.COLUMNS) - 1))

    # ------------------------------------------------------------ Qt model
    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self._jobs)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        job = self._jobs[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.UserRole:
            return job
        if role == Qt.ItemDataRole.ToolTipRole:
            return "\n".join([job.title, job.status] + job.errors[:20]).strip()
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        with job.lock:
            if col == 0:
                return job.title
            if col == 1:
                return "cancelling" if job.cancelled and job.state == RUNNING else job.state
            if col == 2:
                return f"{job.done}/{job.total}" if job.total else str(job.done)
            if col == 3:
                return f"{job.rate:.1f}/s" if job.rate else ""
            if col == 4:
                return str(len(job.errors)) if job.errors else ""
        return None
