"""Rendered images (JPEG / PNG) of any frame, with an LRU cache.

Decoding, the modality LUT and the window come from
:mod:`osirix_py.dicom.pixels`; Pillow resizes, simplejpeg (or Pillow) encodes.
Keys of the caches include the instance's checksum, so a replaced instance is
re-rendered.  :meth:`Renderer.frame` also feeds the HTML5 viewer's raw pixels
(``/api/instances/{uid}/pixels``), which it windows itself.
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
    """A thread-safe LRU bounded by the summed size of its values (``size(value)``)."""

    def __init__(self, max_bytes: int, size=len):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key, value) -> None:
        n = self._size(value)
        if n > self.max_bytes:
            return
        with self._lock:
            if key in self._d:
                return
            self._d[key] = value
            self.bytes += n
            while self.bytes > self.max_bytes and self._d:
                _, old = self._d.popitem(last=False)
                self.bytes -= self._size(old)


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame of an instance, with what displaying it needs."""

    stored: np.ndarray  # stored values as decoded (read-only)
    pipeline: pixels.DisplayPipeline
    frames: int  # frames in the instance
    spacing: tuple[float, float] | None  # (row, column) spacing in mm, for the aspect ratio

    @property
    def nbytes(self) -> int:
        return int(self.stored.nbytes) + 1024


#: Pipelines that stand for all pipelines with the same LUT-relevant parameters,
#: so that a 64 K-entry LUT is computed once per (rescale, window, ...) and not
#: once per instance.  Small and bounded.
_SHARED: OrderedDict = OrderedDict()
_SHARED_LOCK = threading.Lock()


def _shared_lut(p: pixels.DisplayPipeline, dtype, window: pixels.Window) -> np.ndarray | None:
    """The uint8 LUT of *p* with *window* for *dtype*, shared across instances; None
    when *p* has parts (VOI LUT, palette, modality LUT table, colour) that the
    shortcut does not cover."""
    m = p.modality
    if m.lut is not None or p.voi_luts or p.palette is not None or p.is_color:
        return None
    key = (m.slope, m.intercept, p.invert, p.padding)
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = p
            while len(_SHARED) > 32:
                _SHARED.popitem(last=False)
        else:
            _SHARED.move_to_end(key)
    return shared.lut(dtype, window)


def _effective_window(p: pixels.DisplayPipeline, window) -> pixels.Window | None:
    if window is not None:
        return window if isinstance(window, pixels.Window) else pixels.Window(*window)
    if p.windows and not p.voi_luts:
        return p.windows[0]
    return None


def to_display(frame: Frame, window=None) -> np.ndarray:
    """8-bit grey (rows, columns) or RGB (rows, columns, 3) of a frame."""
    p, stored = frame.pipeline, frame.stored
    w = _effective_window(p, window)
    kind = stored.dtype.kind + str(stored.dtype.itemsize)
    if w is not None and kind in ("i2", "u2", "i1", "u1") and stored.ndim == 2 \
            and stored.dtype.byteorder in ("=", "<", "|"):
        lut = _shared_lut(p, stored.dtype, w)
        if lut is not None:
            return np.take(lut, stored.view(np.uint16 if stored.itemsize == 2 else np.uint8))
    return p.render(stored, window)


def encode(img8: np.ndarray, media_type: str, quality: int = 90) -> bytes:
    """JPEG (libjpeg-turbo through simplejpeg when installed, else Pillow) or PNG."""
    img8 = np.ascontiguousarray(img8, dtype=np.uint8)
    if media_type == "image/jpeg" and _simplejpeg is not None:
        if img8.ndim == 2:
            return _simplejpeg.encode_jpeg(img8[:, :, None], quality=quality, colorspace="GRAY")
        return _simplejpeg.encode_jpeg(img8, quality=quality, colorspace="RGB",
                                       colorsubsampling="420")
    from PIL import Image

    im = Image.fromarray(img8, "L" if img8.ndim == 2 else "RGB")
    buf = io.BytesIO()
    if media_type == "image/jpeg":
        im.save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


try:  # optional: ~30 % faster JPEG encoding than Pillow's
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - depends on the installation
    _simplejpeg = None


class Renderer:
    """Renders instances of an archive; thread-safe.

    Two caches: the encoded images (``cache_bytes``), and the decoded frames
    (``frame_cache_bytes``), keyed by SOP Instance UID + checksum + frame so
    that a new window or size of a frame seen before costs neither a file read
    nor a parse nor a decode, and a replaced instance is never served stale.
    """

    def __init__(self, archive, *, cache_bytes: int = 64 << 20,
                 frame_cache_bytes: int = 256 << 20):
        self.archive = archive
        self.cache = _LRU(cache_bytes)
        self.frames = _LRU(frame_cache_bytes, size=lambda f: f.nbytes)

    def frame(self, row: dict, index: int) -> Frame:
        """The decoded frame *index* (0-based) of an instance row (404/406 on errors)."""
        key = (row["SOPInstanceUID"], row.get("_checksum"), index)
        hit = self.frames.get(key)
        if hit is not None:
            return hit
        raw = self.archive.read_instance(row)
        fast = _read_native_frame(raw, index)
        if fast is not None:
            f = decode_dataset_frame(fast[0], index, stored=fast[1])
        else:
            f = decode_dataset_frame(pydicom.dcmread(io.BytesIO(raw), force=True), index)
        self.frames.put(key, f)
        return f

    def cached(self, row: dict, req: RenderRequest) -> bytes | None:
        """The rendered image if it is in the cache (cheap: no I/O)."""
        return self.cache.get((row["SOPInstanceUID"], row.get("_checksum"), req))

    def render(self, row: dict, req: RenderRequest) -> bytes:
        key = (row["SOPInstanceUID"], row.get("_checksum"), req)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        out = render_frame(self.frame(row, req.frame), req)
        self.cache.put(key, out)
        return out


def _read_native_frame(raw: bytes, index: int):
    """(header dataset, frame view) of a native little-endian greyscale file, or None.

    The header is parsed without the pixel data (pydicom's
    ``stop_before_pixels``), and the frame is a zero-copy view of *raw* at the
    offset of (7FE0,0010) Pixel Data: no 0.5 MB copy per image.  Anything
    unusual (compressed, big endian, Bits Stored < Bits Allocated, colour,
    a length that does not add up) returns None: the caller decodes fully.
    """
    fp = io.BytesIO(raw)
    try:
        ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the full read reports it properly
        return None
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _NATIVE_LE:
        return None
    try:
        bits, stored_bits = int(ds.get("BitsAllocated") or 0), int(ds.get("BitsStored") or 0)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        spp = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError):
        return None
    if bits not in (8, 16) or stored_bits != bits or spp != 1 or rows <= 0 or cols <= 0:
        return None
    pos = fp.tell()
    head = raw[pos:pos + 12]
    if head[:4] != b"\xe0\x7f\x10\x00":
        return None
    if ts == "1.2.840.10008.1.2":  # implicit VR
        length, start = int.from_bytes(head[4:8], "little"), pos + 8
    else:
        if head[4:6] not in (b"OW", b"OB"):
            return None
        length, start = int.from_bytes(head[8:12], "little"), pos + 12
    n_frames = pixels.frame_count(ds)
    itemsize = bits // 8
    frame_bytes = rows * cols * itemsize
    if length == 0xFFFFFFFF or length < n_frames * frame_bytes or start + length > len(raw) \
            or not 0 <= index < n_frames:
        return None
    signed = ds.get("PixelRepresentation", 0) == 1
    dtype = np.dtype(("<i" if signed else "<u") + str(itemsize))
    arr = np.frombuffer(raw, dtype, count=rows * cols, offset=start + index * frame_bytes)
    return ds, arr.reshape(rows, cols)


def decode_dataset_frame(ds, index: int, stored: np.ndarray | None = None) -> Frame:
    if stored is None and "PixelData" not in ds and "FloatPixelData" not in ds \
            and "DoubleFloatPixelData" not in ds:
        raise HttpProblem(406, "this instance has no pixel data to render")
    n = pixels.frame_count(ds)
    if not 0 <= index < n:
        raise HttpProblem(404, f"frame {index + 1} does not exist (the instance has {n})")
    try:
        if stored is None:
            stored = _decode_frame(ds, index)
        pipeline = pixels.DisplayPipeline.from_dataset(ds, index)
    except pixels.PixelDataError as exc:
        raise HttpProblem(406, f"cannot decode the pixel data: {exc}") from None
    stored = np.asarray(stored)
    if stored.flags.writeable:
        stored.setflags(write=False)
    spacing = None
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        try:
            if v is not None and len(v) >= 2 and float(v[0]) > 0 and float(v[1]) > 0:
                spacing = (float(v[0]), float(v[1]))
                break
        except (TypeError, ValueError):
            continue
    return Frame(stored, pipeline, n, spacing)


def render_frame(frame: Frame, req: RenderRequest) -> bytes:
    try:
        img8 = to_display(frame, req.window)
    except pixels.PixelDataError as exc:
        raise HttpProblem(406, f"cannot decode the pixel data: {exc}") from None
    rows, cols = req.size
    if rows or cols:
        h, w = img8.shape[:2]
        scale = min((rows / h) if rows else float("inf"), (cols / w) if cols else float("inf"))
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        if new != (w, h):
            from PIL import Image

            im = Image.fromarray(np.ascontiguousarray(img8, dtype=np.uint8),
                                 "L" if img8.ndim == 2 else "RGB")
            im = im.resize(new, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX)
            img8 = np.asarray(im)
    return encode(img8, req.media_type, req.quality)


def render_dataset(ds, req: RenderRequest) -> bytes:
    """Render one frame of a dataset (no caching)."""
    return render_frame(decode_dataset_frame(ds, req.frame), req)


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
