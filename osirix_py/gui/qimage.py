"""numpy uint8 arrays <-> QImage (safe to call on any thread: QImage is not a widget).

Also home of :func:`guard_none_refcount`, run when this module is imported
(every window that shows an image imports it): PySide6 6.12 on CPython 3.11
drops one reference to ``None`` on every call of a method that returns
nothing (``QPainter.setPen``, ``QWidget.update`` ...), so a viewer that
paints for a few seconds brings ``None``'s count to zero and the
interpreter aborts with "none_dealloc: deallocating None".  CPython 3.12
made ``None`` immortal; on 3.11 the guard gives it a count no session can
exhaust.
"""

from __future__ import annotations

import sys

import numpy as np
from PySide6.QtGui import QImage

#: Added once to the reference count of ``None`` on CPython < 3.12.
NONE_REFCOUNT_MARGIN = 1 << 40


def guard_none_refcount() -> bool:
    """Make ``None`` effectively immortal on CPython < 3.12; True when the guard is in place."""
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return True
    import ctypes

    ref = ctypes.c_ssize_t.from_address(id(None))
    if ref.value >= NONE_REFCOUNT_MARGIN:
        return True
    # ob_refcnt is the first field of a release build's PyObject; check before writing.
    if abs(ref.value - (sys.getrefcount(None) - 1)) > 1000:
        return False
    ref.value += NONE_REFCOUNT_MARGIN
    return True


guard_none_refcount()


def to_qimage(arr: np.ndarray) -> QImage:
    """A deep-copied QImage of an (H, W) grey or (H, W, 3) RGB uint8 array."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] > 3:
        a = a[..., :3]
    return wrap_qimage(np.ascontiguousarray(a, dtype=np.uint8)).copy()


def wrap_qimage(a: np.ndarray) -> QImage:
    """A QImage that *shares* the memory of a C-contiguous uint8 array (no copy).

    The caller keeps ``a`` alive (and unchanged) for as long as the image is used.
    """
    if a.dtype != np.uint8 or not a.flags.c_contiguous:
        raise ValueError("wrap_qimage needs a C-contiguous uint8 array")
    if a.ndim == 2:
        h, w = a.shape
        return QImage(a.data, w, h, a.strides[0], QImage.Format.Format_Grayscale8)
    if a.ndim == 3 and a.shape[2] == 3:
        h, w, _ = a.shape
        return QImage(a.data, w, h, a.strides[0], QImage.Format.Format_RGB888)
    raise ValueError(f"cannot show an array of shape {a.shape}")


def from_qimage(img: QImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a QImage (any format)."""
    rgb = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h = rgb.width(), rgb.height()
    ptr = rgb.constBits()
    arr = np.frombuffer(ptr, dtype=np.uint8, count=rgb.bytesPerLine() * h).reshape(h, rgb.bytesPerLine())
    return arr[:, : w * 3].reshape(h, w, 3).copy()
