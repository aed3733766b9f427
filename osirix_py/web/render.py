"""Rendered images (JPEG / PNG) of any frame, with an LRU cache.

Decoding, the modality LUT and the window come from
:mod:`osirix_py.dicom.pixels`; Pillow resizes, simplejpeg (or Pillow) encodes.
Keys of the caches include the instance's checksum, so a replaced instance is
re-rendered.  :meth:`Renderer.frame` also feeds the HTML5 viewer's raw pixels
(``/api/instances/{uid}/pixels``), which it windows itself.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pydicom

from ..dicom import pixels, quickheader
from .common import HttpProblem

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}

#: Display pipelines kept for the quick path (one per distinct set of display attributes).
RECIPES = 256

#: Attributes of group 0028 that the display pipeline does not read and that differ
#: from slice to slice: left out of the key under which pipelines are shared.
#: (0028,0106)/(0028,0107) Smallest/Largest Image Pixel Value, (0028,0108)/(0028,0109)
#: Smallest/Largest Pixel Value in Series.
_NOT_DISPLAY = frozenset({0x00280106, 0x00280107, 0x00280108, 0x00280109})


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


def to_display(frame: Frame, window=None, out: np.ndarray | None = None) -> np.ndarray:
    """8-bit grey (rows, columns) or RGB (rows, columns, 3) of a frame.

    *out* (uint8, the frame's shape) receives the image when the shared-LUT path
    applies; the result may be another array otherwise."""
    p, stored = frame.pipeline, frame.stored
    w = _effective_window(p, window)
    kind = stored.dtype.kind + str(stored.dtype.itemsize)
    if w is not None and kind in ("i2", "u2", "i1", "u1") and stored.ndim == 2 \
            and stored.dtype.byteorder in ("=", "<", "|"):
        lut = _shared_lut(p, stored.dtype, w)
        if lut is not None:
            return _apply_lut(lut, stored.view(np.uint16 if stored.itemsize == 2 else np.uint8),
                              out)
    return p.render(stored, window)


#: LUTs are applied in pieces of this many pixels, through a reused index buffer:
#: ``np.take`` converts its indices to intp (8 bytes a pixel), and a piece's
#: indices (256 KB) stay in the CPU cache where a whole 512x512 frame's (2 MB) do not.
LUT_PIECE = 1 << 15
_SCRATCH: list[np.ndarray] = []
_SCRATCH_LOCK = threading.Lock()


def _take_scratch() -> np.ndarray:
    with _SCRATCH_LOCK:
        if _SCRATCH:
            return _SCRATCH.pop()
    return np.empty(LUT_PIECE, np.intp)


def _give_scratch(buf: np.ndarray) -> None:
    with _SCRATCH_LOCK:
        if len(_SCRATCH) < 4:
            _SCRATCH.append(buf)


def _take_mode(lut: np.ndarray, idx: np.ndarray) -> str:
    """"wrap" (no bounds check per pixel, ~30 % faster) when every value of *idx*'s
    unsigned dtype is an index of *lut*, as for the full LUTs of
    :meth:`DisplayPipeline.lut`; "raise" otherwise."""
    return "wrap" if lut.shape[0] >= 1 << (8 * idx.dtype.itemsize) else "raise"


def _apply_lut(lut: np.ndarray, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.take(lut, idx)`` for unsigned *idx*, piece by piece through a reused intp
    buffer (no new 8-byte-per-pixel array per call)."""
    if out is None:
        out = np.empty(idx.shape, lut.dtype)
    elif not out.flags.c_contiguous:
        return np.take(lut, idx, out=out)
    src = idx.reshape(-1)
    dst = out.reshape(-1)
    mode = _take_mode(lut, idx)
    buf = _take_scratch()
    try:
        for k in range(0, src.size, LUT_PIECE):
            piece = src[k:k + LUT_PIECE]
            view = buf[:piece.size]
            np.copyto(view, piece)
            np.take(lut, view, out=dst[k:k + piece.size], mode=mode)
    finally:
        _give_scratch(buf)
    return out


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


#: Files up to this size are rendered in the event loop (:func:`render_async`): a
#: native single-frame image costs ~1 ms of CPU that holds the GIL anyway, and a
#: hop to a worker thread and back costs two thread wake-ups (slow on a busy
#: machine).  Bigger files (multi-frame, compressed) are decoded in a worker thread.
INLINE_RENDER_BYTES = 2 << 20


async def render_async(renderer: "Renderer", row: dict, req: RenderRequest) -> bytes:
    """:meth:`Renderer.render` for async endpoints: a cache hit or a small file in the
    event loop, anything bigger in the thread pool."""
    data = renderer.cached(row, req)
    if data is not None:
        return data
    if (row.get("_file_size") or 1 << 62) <= INLINE_RENDER_BYTES:
        return renderer.render(row, req)
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(renderer.render, row, req)


class _BufferPool:
    """A few reused bytearrays: memory that is already mapped, so that reading a file or
    writing an image into it costs no page faults (a fresh 0.5 MB buffer costs ~130)."""

    def __init__(self, keep: int = 2, minimum: int = 1 << 20):
        self.keep = keep
        self.minimum = minimum
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, n: int) -> bytearray:
        with self._lock:
            for i, b in enumerate(self._free):
                if len(b) >= n:
                    return self._free.pop(i)
        return bytearray(max(n, self.minimum))

    def give(self, buf: bytearray) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)


#: Files up to this size are rendered straight from their file by :meth:`Renderer.render`
#: when the quick path applies (native greyscale, see :mod:`~osirix_py.dicom.quickheader`),
#: through pooled buffers.
POOLED_FILE_BYTES = 4 << 20
_FILE_BUFFERS = _BufferPool()
_IMAGE_BUFFERS = _BufferPool()


#: The first read of a file rendered by :meth:`Renderer._render_pooled`: the header of
#: nearly every image ends within it (the rest is read when it does not).
HEAD_BYTES = 16 << 10
_PIECE_BUFFERS = _BufferPool(keep=4, minimum=2 * LUT_PIECE)


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Reads ``len(view)`` bytes at *offset* into *view*; the count read (less at EOF)."""
    n = 0
    size = len(view)
    while n < size:
        k = os.preadv(fd, [view[n:]], offset + n)
        if not k:
            break
        n += k
    return n


def _stream_lut(fd: int, offset: int, nbytes: int, idx_dtype: np.dtype, lut: np.ndarray,
                out: np.ndarray) -> bool:
    """Reads *nbytes* of pixel data at *offset* piece by piece and writes ``lut[value]``
    into *out* (flat, uint8): the frame passes through the CPU cache once, and is
    never held whole in memory.  False if the file ends early."""
    item = idx_dtype.itemsize
    piece_bytes = LUT_PIECE * item
    raw = _PIECE_BUFFERS.take(piece_bytes)
    scratch = _take_scratch()
    try:
        mode = _take_mode(lut, np.empty(0, idx_dtype))
        view = memoryview(raw)
        dst = out.reshape(-1)
        done = 0
        while done < nbytes:
            m = min(piece_bytes, nbytes - done)
            if _pread_full(fd, view[:m], offset + done) != m:
                return False
            k = m // item
            idx = scratch[:k]
            np.copyto(idx, np.frombuffer(raw, idx_dtype, count=k))
            np.take(lut, idx, out=dst[done // item:done // item + k], mode=mode)
            done += m
        return True
    finally:
        _give_scratch(scratch)
        _PIECE_BUFFERS.give(raw)


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
        #: display attributes (raw bytes) -> (DisplayPipeline, pixel spacing), for
        #: :meth:`_quick_frame`; bounded by entry count.
        self.recipes = _LRU(RECIPES, size=lambda v: 1)

    def frame(self, row: dict, index: int) -> Frame:
        """The decoded frame *index* (0-based) of an instance row (404/406 on errors)."""
        key = (row["SOPInstanceUID"], row.get("_checksum"), index)
        hit = self.frames.get(key)
        if hit is not None:
            return hit
        raw = self.archive.read_instance(row)
        f = self._quick_frame(raw, index)
        if f is None:
            fast = _read_native_frame(raw, index)
            if fast is not None:
                f = decode_dataset_frame(fast[0], index, stored=fast[1])
            else:
                f = decode_dataset_frame(pydicom.dcmread(io.BytesIO(raw), force=True), index)
        self.frames.put(key, f)
        return f

    def _quick_frame(self, raw, index: int, *, keep: bool = True,
                     img: quickheader.NativeImage | None = None) -> Frame | None:
        """The frame of a native greyscale file by :mod:`~osirix_py.dicom.quickheader`
        (no pydicom parse of the file), or None when that does not apply.

        The display pipeline is shared by all instances whose display attributes
        have the same bytes (the slices of a series, as a rule): built once from a
        small dataset of those attributes with :meth:`DisplayPipeline.from_dataset`,
        exactly as for a full read.  With *keep* False the frame may be a view of
        *raw* whatever its size (it is not cached).  *img*: ``read_native(raw)``
        when the caller has it already.
        """
        if img is None:
            img = quickheader.read_native(raw)
            if img is None:
                return None
        recipe = self._recipe(img, index)
        if recipe is None:
            return None
        pipeline, spacing = recipe
        stored = np.frombuffer(raw, _stored_dtype(img), count=img.rows * img.columns,
                               offset=img.frame_offset(index)).reshape(img.rows, img.columns)
        if img.bits_stored < img.bits_allocated:
            # pydicom's correction of the unused high bits: masked (unsigned) or
            # sign-extended from (0028,0101) Bits Stored (signed).
            shift = img.bits_allocated - img.bits_stored
            stored = np.right_shift(np.left_shift(stored, shift), shift)
            stored.setflags(write=False)
        elif keep and len(raw) > 2 * stored.nbytes + 65536:
            # A view would keep the whole (multi-frame) file alive in the frame cache.
            stored = stored.copy()
            stored.setflags(write=False)
        return Frame(stored, pipeline, img.frames, spacing)

    def _recipe(self, img: quickheader.NativeImage, index: int):
        """(DisplayPipeline, spacing) of a quick-path image, shared by all images with
        the same display attributes; None when the full read should judge; 404 for a
        frame that does not exist, 406 for pixel data that cannot be displayed."""
        if not 0 <= index < img.frames:
            raise HttpProblem(404, f"frame {index + 1} does not exist (the instance has "
                                   f"{img.frames})")
        recipe_key = (img.implicit, tuple(e for e in img.elements if e[0] not in _NOT_DISPLAY))
        recipe = self.recipes.get(recipe_key)
        if recipe is None:
            try:
                ds = img.dataset()
                recipe = (pixels.DisplayPipeline.from_dataset(ds, index), _spacing(ds))
            except pixels.PixelDataError as exc:
                raise HttpProblem(406, f"cannot decode the pixel data: {exc}") from None
            except Exception:  # noqa: BLE001 - odd values: the full read reports them properly
                return None
            self.recipes.put(recipe_key, recipe)
        return recipe

    def cached(self, row: dict, req: RenderRequest) -> bytes | None:
        """The rendered image if it is in the cache (cheap: no I/O)."""
        return self.cache.get((row["SOPInstanceUID"], row.get("_checksum"), req))

    def render(self, row: dict, req: RenderRequest) -> bytes:
        key = (row["SOPInstanceUID"], row.get("_checksum"), req)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        out = None
        if self.frames.get((row["SOPInstanceUID"], row.get("_checksum"), req.frame)) is None:
            out = self._render_pooled(row, req)
        if out is None:
            out = render_frame(self.frame(row, req.frame), req)
        self.cache.put(key, out)
        return out

    def _render_pooled(self, row: dict, req: RenderRequest) -> bytes | None:
        """The image of a native greyscale file read straight from its file, or None
        (not such a file, or unreadable: the caller takes the ordinary path).

        The header is read first (:data:`HEAD_BYTES`).  When the display is a LUT
        (a window, no VOI LUT table; see :func:`to_display`) the frame's pixel data
        is then streamed through the LUT piece by piece (:func:`_stream_lut`) into a
        pooled 8-bit image; otherwise the file is read whole into a pooled buffer
        and rendered from a view of it.  Either way the frame is not kept in the
        frame cache: a native file is re-read and re-parsed in ~0.2 ms, which costs
        less than the page faults of a fresh 0.5 MB buffer per image.
        """
        instance_file = getattr(self.archive, "instance_file", None)
        path = instance_file(row) if instance_file is not None else None
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None  # the ordinary path reports it
        try:
            size = os.fstat(fd).st_size
            if size > POOLED_FILE_BYTES:
                return None
            buf = _FILE_BUFFERS.take(size)
            try:
                return self._render_fd(fd, memoryview(buf)[:size], req)
            finally:
                _FILE_BUFFERS.give(buf)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _render_fd(self, fd: int, view: memoryview, req: RenderRequest) -> bytes | None:
        size = len(view)
        got = _pread_full(fd, view[:min(HEAD_BYTES, size)], 0)
        # The walk reads the file's bytes in order up to the pixel data's value, so a
        # header that ends within what was read is exact; anything else (a longer
        # header, or the walk misled by the rest of the buffer, which holds bytes of
        # an earlier file) is decided on the whole file.
        img = quickheader.read_native(view)
        if img is None or img.pixel_offset > got:
            if got < size:
                got += _pread_full(fd, view[got:], got)
                if got != size:
                    return None
                img = quickheader.read_native(view)
            if img is None:
                return None
        pipeline_spacing = self._recipe(img, req.frame)
        if pipeline_spacing is None:
            return None
        pipeline = pipeline_spacing[0]
        dtype = _stored_dtype(img)
        window = _effective_window(pipeline, req.window)
        lut = None
        if window is not None and img.bits_stored == img.bits_allocated:
            lut = _shared_lut(pipeline, dtype, window)
        if lut is None:
            if got < size and _pread_full(fd, view[got:], got) != size - got:
                return None
            frame = self._quick_frame(view, req.frame, keep=False, img=img)
            if frame is None:
                return None
            try:
                return render_frame(frame, req, pooled=True)
            finally:
                frame = None
        shape = (img.rows, img.columns)
        out_buf = _IMAGE_BUFFERS.take(img.rows * img.columns)
        try:
            img8 = np.frombuffer(out_buf, np.uint8, count=img.rows * img.columns).reshape(shape)
            if not _stream_lut(fd, img.frame_offset(req.frame), img.frame_bytes,
                               np.dtype(f"<u{dtype.itemsize}"), lut, img8):
                return None
            return _finish(img8, req)
        finally:
            img8 = None
            _IMAGE_BUFFERS.give(out_buf)


def _stored_dtype(img: quickheader.NativeImage) -> np.dtype:
    return np.dtype(("<i" if img.signed else "<u") + str(img.bits_allocated // 8))


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
    if len(raw) > 2 * arr.nbytes + 65536:  # do not keep a multi-frame file alive in the cache
        arr = arr.copy()
        arr.setflags(write=False)
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
    spacing = _spacing(ds)
    return Frame(stored, pipeline, n, spacing)


def _spacing(ds) -> tuple[float, float] | None:
    """(row, column) spacing in mm from (0028,0030) Pixel Spacing or (0018,1164) Imager
    Pixel Spacing, for the aspect ratio; None if neither is usable."""
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(kw)
        try:
            if v is not None and len(v) >= 2 and float(v[0]) > 0 and float(v[1]) > 0:
                return (float(v[0]), float(v[1]))
        except (TypeError, ValueError):
            continue
    return None


def render_frame(frame: Frame, req: RenderRequest, *, pooled: bool = False) -> bytes:
    """The encoded image of a frame; *pooled*: the 8-bit image goes to a reused buffer
    (released before returning) when it is encoded at its own size."""
    shape = frame.stored.shape
    buf = None
    if pooled and frame.stored.ndim == 2 and not any(req.size):
        buf = _IMAGE_BUFFERS.take(shape[0] * shape[1])
    try:
        return _render_frame(frame, req, None if buf is None else
                             np.frombuffer(buf, np.uint8, count=shape[0] * shape[1])
                             .reshape(shape))
    finally:
        if buf is not None:
            _IMAGE_BUFFERS.give(buf)


def _render_frame(frame: Frame, req: RenderRequest, out: np.ndarray | None) -> bytes:
    try:
        img8 = to_display(frame, req.window, out)
    except pixels.PixelDataError as exc:
        raise HttpProblem(406, f"cannot decode the pixel data: {exc}") from None
    return _finish(img8, req)


def _finish(img8: np.ndarray, req: RenderRequest) -> bytes:
    """The 8-bit image resized to ``req.size`` (aspect kept) and encoded."""
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
