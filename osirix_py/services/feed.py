"""The change feed: new patient / study / series / instance, deletions, stable studies.

Subscribers are plain callables called on a dedicated dispatch thread (never
the thread that stored the instance, so a slow subscriber cannot slow down a
C-STORE).  The GUI's Qt bridge re-emits events as queued signals; auto-routing
and plugins subscribe the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangeEvent:
    """kind: new-patient, new-study, new-series, new-instance, replaced-instance,
    deleted, stable-study."""

    kind: str
    level: str
    uid: str
    study_uid: str = ""
    series_uid: str = ""
    info: dict = field(default_factory=dict)
    at: float = field(default_factory=time.time)


Subscriber = Callable[[ChangeEvent], None]


class ChangeFeed:
    def __init__(self, stable_after: float = 60.0):
        self._subs: list[Subscriber] = []
        self._lock = threading.Lock()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._stable_after = stable_after
        self._pending_studies: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Register *fn*; returns a function that unsubscribes it."""
        with self._lock:
            self._subs.append(fn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)
                self._thread.start()

        def unsubscribe():
            with self._lock:
                if fn in self._subs:
                    self._subs.remove(fn)

        return unsubscribe

    def publish(self, event: ChangeEvent) -> None:
        if event.kind in ("new-instance", "replaced-instance") and event.study_uid:
            self._pending_studies[event.study_uid] = time.monotonic()
        if self._subs:
            self._q.put(event)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ev = self._q.get(timeout=min(1.0, self._stable_after))
            except queue.Empty:
                ev = None
            if ev is not None:
                self._deliver(ev)
            self._check_stable()

    def _check_stable(self) -> None:
        now = time.monotonic()
        for uid, last in list(self._pending_studies.items()):
            if now - last >= self._stable_after:
                self._pending_studies.pop(uid, None)
                self._deliver(ChangeEvent("stable-study", "STUDY", uid, study_uid=uid))

    def _deliver(self, ev: ChangeEvent) -> None:
        with self._lock:
            subs = list(self._subs)
        for fn in subs:
            try:
                fn(ev)
            except Exception:  # a subscriber must never break the feed
                log.exception("change-feed subscriber %r failed on %s", fn, ev.kind)

    def close(self) -> None:
        self._stop.set()
