"""Background jobs: retrieves and sends run in a worker pool, persisted in ``jobs``.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``.
A job that was queued or running when the process stopped is marked failed
with the error "interrupted" by :meth:`JobManager.recover` (called when the
runtime starts).  Subscribers (callbacks, like the change feed) get a
:class:`Job` snapshot on every state change and on progress (at most ~5 per s).
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from sqlalchemy import select, update

from ..db.schema import jobs as jobs_table
from ..dicom.tags import Level

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL = (DONE, FAILED, CANCELLED)
INTERRUPTED = "interrupted (the program stopped while the job was queued or running)"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass
class Job:
    id: str
    kind: str
    description: str
    state: str = QUEUED
    total: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    bytes: int = 0
    rate: float | None = None
    byte_rate: float | None = None
    error: str | None = None
    details: dict = field(default_factory=dict)
    created_at: _dt.datetime = field(default_factory=_now)
    started_at: _dt.datetime | None = None
    finished_at: _dt.datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    def to_dict(self) -> dict:
        return asdict(self)


Subscriber = Callable[[Job], None]


class JobManager:
    """Runs retrieves and sends in a pool of *workers* threads.

    The network operations are injected (*retrieve* and *send*, with the
    signatures of :func:`osirix_py.net.client.retrieve` / ``send``): services
    sit below net in the layers, so the runtime (or the CLI) wires them in.
    """

    def __init__(self, archive, *, calling_ae: str, timeout: float = 10.0, workers: int = 2,
                 listener_host: str | None = None, listener_port: Callable[[], int | None] | None = None,
                 send_retries: int = 1, retrieve: Callable | None = None, send: Callable | None = None):
        self.archive = archive
        self._retrieve_fn = retrieve
        self._send_fn = send
        self.db = archive.db
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.send_retries = send_retries
        self.listener_host = listener_host
        self._listener_port = listener_port or (lambda: None)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._jobs: dict[str, Job] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._done: dict[str, threading.Event] = {}
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------- feed
    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subs.append(fn)

        def unsubscribe():
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)

        return unsubscribe

    def _publish(self, job: Job) -> None:
        snap = replace(job, details=dict(job.details))
        for fn in list(self._subs):
            try:
                fn(snap)
            except Exception:  # a subscriber must never break a job
                log.exception("job subscriber %r failed", fn)

    # ------------------------------------------------------------- persistence
    def _insert(self, job: Job) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(jobs_table.insert().values(
                id=job.id, kind=job.kind, description=job.description, state=job.state,
                total=job.total, completed=job.completed, failed=job.failed, warning=job.warning,
                bytes=job.bytes, rate=job.rate, error=job.error, details=job.details,
                created_at=job.created_at))

    def _save(self, job: Job) -> None:
        try:
            with self.db.engine.begin() as conn:
                conn.execute(update(jobs_table).where(jobs_table.c.id == job.id).values(
                    state=job.state, total=job.total, completed=job.completed, failed=job.failed,
                    warning=job.warning, bytes=job.bytes, rate=job.rate, error=job.error,
                    details=job.details, started_at=job.started_at, finished_at=job.finished_at))
        except Exception:  # noqa: BLE001 - the job goes on; the table catches up later
            log.exception("cannot save job %s", job.id)

    def recover(self) -> int:
        """Mark jobs left queued/running by a previous process as failed (interrupted)."""
        with self.db.engine.begin() as conn:
            n = conn.execute(update(jobs_table)
                             .where(jobs_table.c.state.in_((QUEUED, RUNNING)))
                             .values(state=FAILED, error=INTERRUPTED, finished_at=_now())).rowcount
        if n:
            log.warning("%d job(s) interrupted by the last shutdown marked failed", n)
        return n

    def history(self, limit: int = 100) -> list[dict]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(jobs_table).order_by(jobs_table.c.created_at.desc())
                                .limit(limit)).mappings().all()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------- API
    def get(self, job_id: str) -> Job:
        return self._jobs[job_id]

    def list(self) -> list[Job]:
        return list(self._jobs.values())

    def cancel(self, job_id: str) -> None:
        ev = self._cancel.get(job_id)
        if ev is not None:
            ev.set()

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        self._done[job_id].wait(timeout)
        return self._jobs[job_id]

    def submit_retrieve(self, node, *, study_uid: str, series_uid: str | None = None,
                        instance_uid: str | None = None, method: str | None = None) -> Job:
        method = method or node.retrieve_method
        what = (f"instance {instance_uid}" if instance_uid else f"series {series_uid}"
                if series_uid else f"study {study_uid}")
        details = {"node": node.name, "method": method, "study": study_uid, "series": series_uid,
                   "instance": instance_uid}
        return self._submit("retrieve", f"retrieve {what} from {node} by C-{method.upper()}",
                            details, lambda job, cancel: self._run_retrieve(job, cancel, node, details))

    def submit_send(self, node, *, study_uid: str | None = None, series_uid: str | None = None,
                    instance_uid: str | None = None, retries: int | None = None) -> Job:
        query = {}
        if study_uid:
            query["StudyInstanceUID"] = study_uid
        if series_uid:
            query["SeriesInstanceUID"] = series_uid
        if instance_uid:
            query["SOPInstanceUID"] = instance_uid
        if not query:
            raise ValueError("send needs a study, series or instance UID")
        what = (f"instance {instance_uid}" if instance_uid else f"series {series_uid}"
                if series_uid else f"study {study_uid}")
        details = {"node": node.name, **{k: v for k, v in query.items()}}
        retries = self.send_retries if retries is None else retries
        return self._submit("send", f"send {what} to {node}", details,
                            lambda job, cancel: self._run_send(job, cancel, node, query, retries))

    def shutdown(self, wait: bool = True) -> None:
        """Cancel what runs; queued jobs stay queued in the table (-> interrupted)."""
        self._closed = True
        for ev in self._cancel.values():
            ev.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # ------------------------------------------------------------- running
    def _submit(self, kind: str, description: str, details: dict, work) -> Job:
        if self._closed:
            raise RuntimeError("the job manager is shut down")
        job = Job(id=str(uuid.uuid4()), kind=kind, description=description, details=details)
        self._jobs[job.id] = job
        self._cancel[job.id] = threading.Event()
        self._done[job.id] = threading.Event()
        self._insert(job)
        self._publish(job)
        self._pool.submit(self._run, job, work)
        return job

    def _progress_fn(self, job: Job):
        last = [0.0]

        def on_progress(p) -> None:
            job.total, job.completed, job.failed, job.warning = p.total, p.completed, p.failed, p.warning
            job.bytes, job.rate, job.byte_rate = p.bytes, p.rate, p.byte_rate
            now = time.monotonic()
            if now - last[0] >= 0.2:
                last[0] = now
                self._publish(job)
                self._save(job)

        return on_progress

    def _run(self, job: Job, work) -> None:
        cancel = self._cancel[job.id]
        try:
            if cancel.is_set():
                job.state = CANCELLED
                return
            job.state, job.started_at = RUNNING, _now()
            self._save(job)
            self._publish(job)
            prog = work(job, cancel)
            if prog is None:
                job.state = CANCELLED if cancel.is_set() else DONE
                return
            self._progress_fn(job)(prog)
            if prog.failures:
                job.details["failures"] = dict(list(prog.failures.items())[:1000])
            if prog.cancelled or cancel.is_set():
                job.state = CANCELLED
            elif prog.error or (prog.failed and not prog.completed):
                job.state = FAILED
                job.error = prog.error or f"{prog.failed} instance(s) failed"
            else:
                job.state = DONE
                if prog.failed:
                    job.error = f"{prog.failed} instance(s) failed"
        except (RuntimeError, ValueError, OSError) as exc:  # ScuError, ArchiveError ...
            log.info("job %s failed: %s", job.id, exc)
            job.state, job.error = FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - the job records it
            log.exception("job %s failed", job.id)
            job.state, job.error = FAILED, f"{exc.__class__.__name__}: {exc}"
        finally:
            job.finished_at = _now()
            self._save(job)
            self._publish(job)
            self._done[job.id].set()

    def _run_retrieve(self, job: Job, cancel, node, d: dict):
        if self._retrieve_fn is None:
            raise RuntimeError("no retrieve operation wired into this job manager")
        return self._retrieve_fn(node, self.archive, study_uid=d["study"], series_uid=d["series"],
                        instance_uid=d["instance"], method=d["method"], calling_ae=self.calling_ae,
                        listener_host=self.listener_host, listener_port=self._listener_port(),
                        timeout=self.timeout, progress=self._progress_fn(job), cancel=cancel)

    def _run_send(self, job: Job, cancel, node, query: dict, retries: int):
        if self._send_fn is None:
            raise RuntimeError("no send operation wired into this job manager")
        send = self._send_fn
        rows = self.archive.find(Level.IMAGE, query)
        job.total = len(rows)
        if not rows:
            raise ValueError(f"nothing to send: no local instance matches {query}")
        return send(node, self.archive, rows, calling_ae=self.calling_ae, timeout=self.timeout,
                    retries=retries, progress=self._progress_fn(job), cancel=cancel)
