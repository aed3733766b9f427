"""Rendered images (JPEG / PNG) of any frame, with an LRU cache.

Decoding, the modality LUT and the window come from
:mod:`osirix_py.dicom.pixels`; Pillow only resizes and encodes.  Keys of the
cache include the instance's checksum, so a replaced instance is re-rendered.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pydicom

from ..dicom import pixels
from .common import HttpProblem

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}


@dataclass(frozen=True)
class RenderRequest:
    frame: int = 0  # 0-based
    window: tuple[float, float] | None = None  # (center, width) in modality units
    size: tuple[int | None, int | None] = (None, None)  # (rows, columns) box, aspect kept
    media_type: str = "image/jpeg"
    quality: int = 90


class _LRU:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key, value: bytes) -> None:
        with self._lock:
            if key in self._d:
                return
            self._d[key] = value
            self.bytes += len(value)
            while self.bytes > self.max_bytes and self._d:
                _, old = self._d.popitem(last=False)
                self.bytes -= len(old)


class Renderer:
    """Renders instances of an archive; thread-safe."""

    def __init__(self, archive, *, cache_bytes: int = 64 << 20):
        self.archive = archive
        self.cache = _LRU(cache_bytes)

    def render(self, row: dict, req: RenderRequest) -> bytes:
        key = (row["SOPInstanceUID"], row.get("_checksum"), req)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        ds = pydicom.dcmread(io.BytesIO(self.archive.read_instance(row)), force=True)
        out = render_dataset(ds, req)
        self.cache.put(key, out)
        return out


def render_dataset(ds, req: RenderRequest) -> bytes:
    from PIL import Image

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise HttpProblem(406, "this instance has no pixel data to render")
    n = pixels.frame_count(ds)
    if not 0 <= req.frame < n:
        raise HttpProblem(404, f"frame {req.frame + 1} does not exist (the instance has {n})")
    try:
        stored = _decode_frame(ds, req.frame)
        img8 = pixels.DisplayPipeline.from_dataset(ds, req.frame).render(stored, req.window)
    except pixels.PixelDataError as exc:
        raise HttpProblem(406, f"cannot decode the pixel data: {exc}") from None
    img8 = np.ascontiguousarray(img8, dtype=np.uint8)
    im = Image.fromarray(img8, "L" if img8.ndim == 2 else "RGB")
    rows, cols = req.size
    if rows or cols:
        h, w = img8.shape[:2]
        scale = min((rows / h) if rows else float("inf"), (cols / w) if cols else float("inf"))
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        if new != (w, h):
            im = im.resize(new, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX)
    buf = io.BytesIO()
    fmt = FORMATS[req.media_type]
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=req.quality)
    else:
        im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _decode_frame(ds, index: int) -> np.ndarray:
    """:func:`pixels.decode_frame`, with a zero-copy path for the commonest case.

    Native little-endian greyscale with (0028,0101) Bits Stored equal to
    (0028,0100) Bits Allocated (8 or 16) is a view of the pixel data; anything
    else goes through the full decoder.
    """
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    bits = ds.get("BitsAllocated")
    if (ts in _NATIVE_LE and bits in (8, 16) and ds.get("BitsStored") == bits
            and ds.get("SamplesPerPixel", 1) == 1 and "PixelData" in ds):
        rows, cols = int(ds.Rows), int(ds.Columns)
        signed = ds.get("PixelRepresentation", 0) == 1
        dtype = np.dtype(("<i" if signed else "<u") + str(bits // 8))
        n = rows * cols
        data = ds.PixelData
        if isinstance(data, (bytes, bytearray)) and len(data) >= (index + 1) * n * dtype.itemsize:
            return np.frombuffer(data, dtype, count=n, offset=index * n * dtype.itemsize) \
                .reshape(rows, cols)
    return pixels.decode_frame(ds, index)


def parse_window(center: str | None, width: str | None) -> tuple[float, float] | None:
    if center in (None, "") and width in (None, ""):
        return None
    if center in (None, "") or width in (None, ""):
        raise HttpProblem(400, "give both windowCenter and windowWidth, or neither")
    try:
        c, w = float(center), float(width)
    except ValueError:
        raise HttpProblem(400, f"window {center!r}/{width!r} is not numeric") from None
    if not (np.isfinite(c) and np.isfinite(w)) or w <= 0:
        raise HttpProblem(400, "windowWidth must be a positive number")
    return c, w


def choose_media_type(candidates: str | None, default: str = "image/jpeg",
                      allowed=tuple(FORMATS)) -> str | None:
    """First of a comma-separated list (contentType / Accept) that we render; None if none."""
    if not candidates:
        return default
    for part in candidates.split(","):
        mt = part.split(";")[0].strip().lower()
        if mt in allowed:
            return mt
        if mt in ("*/*", "image/*"):
            return default
    return None
