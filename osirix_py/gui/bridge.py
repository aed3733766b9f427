"""Threads to the GUI thread: a dispatcher for callables and the change-feed bridge.

Widgets are touched on the GUI thread only.  Work done elsewhere (imports,
thumbnail rendering, slice decoding, database queries, the change feed's
dispatch thread) hands its results over through queued signals:

* :class:`Dispatcher` runs a callable on the GUI thread (``post(fn)`` from
  any thread);
* :class:`FeedBridge` is the ONE subscriber of the archive's change feed in
  the GUI.  It re-emits every event as a queued signal and, for refreshes,
  coalesces bursts: ``changed(events)`` fires at most once per
  ``interval_ms`` (500 ms), with every event received in between.  Nothing
  polls the database on a timer: a refresh happens only after an event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot

from ..services.feed import ChangeEvent

log = logging.getLogger(__name__)


class Dispatcher(QObject):
    """``post(fn)`` from any thread runs ``fn()`` on the thread this object lives in."""

    _call = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._call.connect(self._run, Qt.ConnectionType.QueuedConnection)
        self._closed = False

    def post(self, fn: Callable[[], None]) -> None:
        if self._closed:
            return
        try:
            self._call.emit(fn)
        except RuntimeError:  # the C++ object is gone: the application is quitting
            pass

    @Slot(object)
    def _run(self, fn) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - one failing callback must not break the loop
            log.exception("GUI callback %r failed", fn)

    def close(self) -> None:
        self._closed = True


class FeedBridge(QObject):
    """Change feed -> queued Qt signals on the GUI thread, bursts coalesced."""

    #: Every event, one by one, on the GUI thread.
    event = Signal(object)
    #: The events of the last ``interval_ms`` (at most one emission per interval).
    changed = Signal(list)

    _incoming = Signal(object)

    def __init__(self, feed, interval_ms: int = 500, parent: QObject | None = None):
        super().__init__(parent)
        self._pending: list[ChangeEvent] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._flush)
        self._incoming.connect(self._on_event, Qt.ConnectionType.QueuedConnection)
        self._closed = False
        self._unsubscribe = feed.subscribe(self._from_feed) if feed is not None else None

    # called on the feed's dispatch thread
    def _from_feed(self, ev: ChangeEvent) -> None:
        if self._closed:
            return
        try:
            self._incoming.emit(ev)
        except RuntimeError:
            pass

    @Slot(object)
    def _on_event(self, ev: ChangeEvent) -> None:
        if self._closed:
            return
        self.event.emit(ev)
        self._pending.append(ev)
        if not self._timer.isActive():
            self._timer.start()

    @Slot()
    def _flush(self) -> None:
        events, self._pending = self._pending, []
        if events and not self._closed:
            self.changed.emit(events)

    def close(self) -> None:
        self._closed = True
        self._timer.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
