"""Series thumbnails: the middle image, rendered off the GUI thread, cached in memory and on disk.

``ThumbnailCache.get(series_uid, count)`` answers at once with a cached
``QImage`` or ``None``; in the ``None`` case the image is computed on the
background pool and ``ready(series_uid)`` is emitted on the GUI thread when
it is there.  The key includes the series' instance count, so a series that
grows gets a new thumbnail (its middle image changed).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage

from ..dicom.tags import Level
from .qimage import to_qimage

log = logging.getLogger(__name__)

SIZE = 128


def middle_instance(rows: list[dict]) -> tuple[dict, int]:
    """The IMAGE row in the middle of a series (by Instance Number) and its middle frame."""
    ordered = sorted(rows, key=lambda r: (r.get("InstanceNumber") is None, r.get("InstanceNumber") or 0,
                                          r["SOPInstanceUID"]))
    row = ordered[len(ordered) // 2]
    frames = int(row.get("NumberOfFrames") or 1)
    return row, frames // 2


def render_thumbnail(archive, series_uid: str, size: int = SIZE) -> QImage:
    """Render the middle image of a series as a QImage at most ``size`` pixels wide/high."""
    import pydicom

    from ..dicom import pixels

    rows = archive.find(Level.IMAGE, {"SeriesInstanceUID": series_uid})
    if not rows:
        raise LookupError(f"series {series_uid} has no images")
    row, frame = middle_instance(rows)
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(row)), force=True)
    img8 = pixels.render(ds, frame=frame)
    h, w = img8.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / (size * 2))))  # cheap decimation, then smooth scaling
    img = to_qimage(img8[::step, ::step])
    return img.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                      Qt.TransformationMode.SmoothTransformation)


class ThumbnailCache(QObject):
    ready = Signal(str)

    def __init__(self, ctx, parent: QObject | None = None):
        super().__init__(parent or ctx)
        self._ctx = ctx
        self._mem: dict[str, tuple[int, QImage]] = {}
        self._failed: dict[str, int] = {}
        self._pending: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def _disk_path(self, uid: str, count: int) -> Path:
        h = hashlib.sha1(uid.encode()).hexdigest()
        return self._ctx.cache_dir / "thumbnails" / f"{h}-{count}.png"

    def get(self, series_uid: str, count: int) -> QImage | None:
        hit = self._mem.get(series_uid)
        if hit is not None and hit[0] == count:
            return hit[1]
        if self._failed.get(series_uid) == count:
            return None
        key = (series_uid, count)
        if key in self._pending:
            return hit[1] if hit else None
        self._pending.add(key)
        ctx = self._ctx
        path = self._disk_path(series_uid, count)

        def work() -> QImage:
            if path.is_file():
                img = QImage(str(path))
                if not img.isNull():
                    return img
            img = render_thumbnail(ctx.archive, series_uid)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.png")
                if img.save(str(tmp), "PNG"):
                    tmp.replace(path)
            except OSError as exc:
                log.debug("thumbnail cache not written: %s", exc)
            return img

        def done(img: QImage) -> None:
            self._pending.discard(key)
            self._mem[series_uid] = (count, img)
            self.ready.emit(series_uid)

        def failed(exc: BaseException) -> None:
            self._pending.discard(key)
            self._failed[series_uid] = count
            log.info("no thumbnail for series %s: %s", series_uid, exc)

        ctx.submit(work, done, failed)
        return hit[1] if hit else None

    def forget(self, series_uid: str) -> None:
        self._mem.pop(series_uid, None)
        self._failed.pop(series_uid, None)
