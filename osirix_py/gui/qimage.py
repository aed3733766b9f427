"""numpy uint8 arrays <-> QImage (safe to call on any thread: QImage is not a widget)."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QImage


def to_qimage(arr: np.ndarray) -> QImage:
    """A deep-copied QImage of an (H, W) grey or (H, W, 3) RGB uint8 array."""
    a = np.ascontiguousarray(arr, dtype=np.uint8)
    if a.ndim == 2:
        h, w = a.shape
        img = QImage(a.data, w, h, a.strides[0], QImage.Format.Format_Grayscale8)
    elif a.ndim == 3 and a.shape[2] >= 3:
        a = np.ascontiguousarray(a[..., :3])
        h, w, _ = a.shape
        img = QImage(a.data, w, h, a.strides[0], QImage.Format.Format_RGB888)
    else:
        raise ValueError(f"cannot show an array of shape {a.shape}")
    return img.copy()


def from_qimage(img: QImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a QImage (any format)."""
    rgb = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h = rgb.width(), rgb.height()
    ptr = rgb.constBits()
    arr = np.frombuffer(ptr, dtype=np.uint8, count=rgb.bytesPerLine() * h).reshape(h, rgb.bytesPerLine())
    return arr[:, : w * 3].reshape(h, w, 3).copy()
