"""What every window of the desktop application shares: one object, passed around.

``AppContext`` holds the settings, the archive (and the embedded
:class:`~osirix_py.server.runtime.Runtime` when there is one), the GUI
thread's dispatcher, the change-feed bridge, the job list, the thumbnail
cache and a small thread pool for background reads.  Tests build one over a
temporary archive without starting any listener.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QObject

from ..config import Settings
from ..services.nodes import NodeRepository
from ..services.rois import RoiRepository
from .bridge import Dispatcher, FeedBridge
from .jobs import JobModel
from .thumbnails import ThumbnailCache

log = logging.getLogger(__name__)


class AppContext(QObject):
    def __init__(self, settings: Settings, archive, *, runtime=None, refresh_ms: int = 500,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings
        self.archive = archive
        self.runtime = runtime
        self.dispatcher = Dispatcher(self)
        self.bridge = FeedBridge(archive.feed, interval_ms=refresh_ms, parent=self)
        self.jobs = JobModel(self.dispatcher, self)
        self.rois = RoiRepository(archive.db)
        self.nodes = runtime.nodes if runtime is not None else NodeRepository(archive.db)
        # Background reads (queries, thumbnails, slices); 2 cores here, more elsewhere.
        self.pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)),
                                       thread_name_prefix="gui-bg")
        self._closed = False
        self.thumbnails = ThumbnailCache(self)
        #: Viewer windows open now (the browser keeps them alive).
        self.viewers: list = []

    @property
    def cache_dir(self) -> Path:
        return self.settings.data_dir / "cache"

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> Future | None:
        """Run ``fn()`` on the background pool; ``on_done(result)`` / ``on_error(exc)``
        run on the GUI thread."""
        if self._closed:
            return None

        def finished(f: Future):
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                if on_error is not None:
                    self.dispatcher.post(lambda: on_error(exc))
                else:
                    log.error("background task failed: %s", exc, exc_info=exc)
            elif on_done is not None:
                res = f.result()
                self.dispatcher.post(lambda: on_done(res))

        try:
            fut = self.pool.submit(fn)
        except RuntimeError:  # pool shut down
            return None
        fut.add_done_callback(finished)
        return fut

    def close(self) -> None:
        """Stop background work (imports are cancelled and joined); the runtime is the app's."""
        if self._closed:
            return
        self._closed = True
        self.jobs.cancel_all()
        self.jobs.wait_all(timeout=30.0)
        self.bridge.close()
        self.dispatcher.close()
        self.pool.shutdown(wait=True, cancel_futures=True)
