"""A series as the 2D viewer sees it: slices loaded lazily, the current one first.

``SeriesStack(ctx, series_uid)`` lists the series' instances from the
database at once (ordered by (0020,0013) Instance Number, frames expanded)
so the viewer can show the first image immediately.  A background thread
then reads every header, sorts the slices along the normal by
(0020,0032)·N (:func:`osirix_py.dicom.geometry.sort_along_normal`) when they
form one stack, and decodes the remaining slices nearest to the one shown
first.  A slice that is asked for before the thread reached it is decoded
on the spot.  Nothing here touches a widget: the viewer hears about
progress through the context's dispatcher (``on_changed``).

The background thread waits until the viewer has painted its first image
(:meth:`SeriesStack.start_loading`, or ``start_delay`` seconds at most), so
that it does not compete with the GUI thread for the interpreter while the
window opens, and it pauses while the user interacts (:meth:`SeriesStack.interacting`,
called on every slice change, W/L drag or MPR move): reading headers is pure
Python, and a thread holding the GIL makes every Qt call of the GUI thread
wait its turn, which would cost the scrolling its frame rate.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pydicom

from ..dicom import pixels
from ..dicom.geometry import GeometryError, ImagePlane, pixel_spacing_of, sort_along_normal
from ..dicom.tags import Level
from ..imaging.volume import PlanarImage

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Slice:
    """One displayable frame: an instance (row from ``archive.find``) and a frame number."""

    row: dict
    frame: int
    frames: int
    header: Any = None  # pydicom Dataset without pixel data, once read
    plane: ImagePlane | None = None
    has_geometry: bool = False

    @property
    def sop_instance_uid(self) -> str:
        return self.row["SOPInstanceUID"]

    @property
    def key(self) -> tuple[str, int]:
        return (self.sop_instance_uid, self.frame)

    @property
    def position(self) -> np.ndarray | None:
        return self.plane.position if self.has_geometry and self.plane is not None else None


@dataclass(eq=False)
class Decoded:
    """A decoded slice: stored values, the display pipeline and the plane."""

    stored: np.ndarray
    pipeline: pixels.DisplayPipeline
    plane: ImagePlane
    has_geometry: bool
    header: Any
    _modality: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_color(self) -> bool:
        return self.pipeline.is_color or self.stored.ndim == 3

    def modality_values(self) -> np.ndarray:
        """Values in modality units (HU for CT), float64 (computed once)."""
        if self._modality is None:
            if self.is_color:
                self._modality = np.asarray(self.stored, dtype=np.float64).mean(axis=-1)
            else:
                self._modality = self.pipeline.modality.apply(self.stored, np.float64)
        return self._modality

    def value_at(self, column: int, row: int) -> float | None:
        if self.is_color:
            return None
        h, w = self.stored.shape[:2]
        if not (0 <= row < h and 0 <= column < w):
            return None
        return float(self.pipeline.modality.apply(self.stored[row:row + 1, column:column + 1])[0, 0])

    def planar_image(self, sop_instance_uid: str, frame: int) -> PlanarImage:
        """What ROIs are measured on (modality units, the slice's plane)."""
        pad = self.pipeline.padding
        pad_mod = self.pipeline.modality.output_range(*pad) if pad is not None else None
        return PlanarImage(self.modality_values(), self.plane, units=self.pipeline.modality.units,
                           modality=str(self.header.get("Modality", "") or ""), padding=pad_mod,
                           sop_instance_uid=sop_instance_uid, frame=frame)


_NATIVE_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit / implicit VR little endian


def fast_stored(ds, frame: int = 0) -> np.ndarray | None:
    """Stored values of an uncompressed little-endian greyscale frame, straight from the bytes.

    The same values as :func:`osirix_py.dicom.pixels.decode_frame` (Bits Stored
    < Bits Allocated masked and sign-extended), without pydicom's generic
    decoder: the on-demand decode of a slice that the user scrolled to before
    the loader got there stays well inside one frame.  None when the frame is
    anything else (the caller decodes it the general way).
    """
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _NATIVE_SYNTAXES:
        return None
    try:
        if int(ds.get("SamplesPerPixel") or 1) != 1 or not str(ds.get("PhotometricInterpretation", "")).startswith(
                "MONOCHROME"):
            return None
        bits_alloc = int(ds.BitsAllocated)
        bits_stored = int(ds.get("BitsStored") or bits_alloc)
        high = ds.get("HighBit")
        high = int(high) if high is not None else bits_stored - 1
        rows, cols = int(ds.Rows), int(ds.Columns)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        data = ds.PixelData
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if bits_alloc not in (8, 16) or high != bits_stored - 1 or bits_stored > bits_alloc or not isinstance(data, bytes):
        return None
    dtype = np.dtype(("<i" if signed else "<u") + str(bits_alloc // 8))
    count = rows * cols
    nbytes = count * dtype.itemsize
    if len(data) < (frame + 1) * nbytes:
        return None
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=frame * nbytes).reshape(rows, cols)
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    if bits_stored < bits_alloc:
        shift = bits_alloc - bits_stored
        arr = (arr << shift) >> shift if signed else arr & ((1 << bits_stored) - 1)
    return arr


def _fallback_plane(ds, frame: int | None) -> ImagePlane:
    """A plane for images without (0020,0032)/(0020,0037): pixel spacing or 1 mm."""
    sp = pixel_spacing_of(ds, frame)
    spacing = (sp[0], sp[1]) if sp else (1.0, 1.0)
    return ImagePlane.from_vectors((0, 0, 0), (1, 0, 0), (0, 1, 0), spacing,
                                   int(ds.get("Rows") or 1), int(ds.get("Columns") or 1))


def plane_of(ds, frame: int, frames: int) -> tuple[ImagePlane, bool]:
    try:
        return ImagePlane.from_dataset(ds, frame if frames > 1 else None), True
    except (GeometryError, ValueError, TypeError):
        return _fallback_plane(ds, frame if frames > 1 else None), False


class SeriesStack:
    """The slices of one series, decoded lazily; thread-safe."""

    def __init__(self, ctx, series_uid: str, *, prefetch: bool = True, start_delay: float = 0.5):
        self.ctx = ctx
        self.archive = ctx.archive
        self.series_uid = series_uid
        rows = self.archive.find(Level.IMAGE, {"SeriesInstanceUID": series_uid})
        if not rows:
            raise LookupError(f"series {series_uid} has no images in the database")
        rows.sort(key=lambda r: (r.get("InstanceNumber") is None, r.get("InstanceNumber") or 0,
                                 r["SOPInstanceUID"]))
        self.slices: list[Slice] = []
        for r in rows:
            n = int(r.get("NumberOfFrames") or 1)
            self.slices.extend(Slice(r, f, n) for f in range(n))
        first = rows[0]
        self.info = {k: v for k, v in first.items() if not k.startswith("_")}
        self.sorted_by_position = False
        self._cache: dict[tuple[str, int], Decoded] = {}
        self._pipelines: dict[tuple, pixels.DisplayPipeline] = {}
        self._lock = threading.RLock()
        self._wanted = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._go = threading.Event()
        self.start_delay = start_delay
        self._quiet_until = 0.0
        self._headers_read = 0
        self._done = False
        self.on_changed: Callable[[str], None] | None = None  # "headers" / "order" / "decoded" / "done"
        self.errors: dict[tuple[str, int], str] = {}
        self._thread: threading.Thread | None = None
        if prefetch:
            self._thread = threading.Thread(target=self._background, daemon=True,
                                            name=f"series-{series_uid[-8:]}")
            self._thread.start()

    # -------------------------------------------------------------- public
    def __len__(self) -> int:
        return len(self.slices)

    @property
    def description(self) -> str:
        i = self.info
        return f"{i.get('SeriesNumber') or ''} {i.get('SeriesDescription') or ''}".strip()

    def index_of(self, key: tuple[str, int]) -> int:
        with self._lock:
            for i, s in enumerate(self.slices):
                if s.key == key:
                    return i
        return 0

    #: Seconds the loader stays paused after the last sign of interaction.
    INTERACTION_PAUSE = 0.25

    def want(self, index: int) -> None:
        """Tell the background loader where the user is (it decodes around it first)."""
        self._wanted = index
        self.interacting()
        self._wake.set()

    def interacting(self) -> None:
        """The user is scrolling or dragging: the loader yields the interpreter for a moment."""
        self._quiet_until = time.monotonic() + self.INTERACTION_PAUSE

    def _yield_to_user(self) -> None:
        while not self._stop.is_set():
            left = self._quiet_until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def get(self, index: int) -> Decoded:
        """The decoded slice ``index`` (decoded now if the loader has not got there yet).

        Raises :class:`~osirix_py.dicom.pixels.PixelDataError` (or an
        ``OSError``) when the image cannot be shown; the message says why.
        """
        with self._lock:
            s = self.slices[index]
            hit = self._cache.get(s.key)
        if hit is not None:
            return hit
        return self._decode(s)

    def decoded_count(self) -> int:
        """How many slices are decoded so far."""
        return len(self._cache)

    def progress(self) -> float:
        """The loader's progress, 0..1: headers read (sorting) count for half, decoded slices for half."""
        n = max(1, len(self.slices))
        if self._done:
            return 1.0
        return min(1.0, 0.5 * min(self._headers_read, n) / n + 0.5 * len(self._cache) / n)

    def cached(self, index: int) -> Decoded | None:
        with self._lock:
            return self._cache.get(self.slices[index].key)

    def start_loading(self) -> None:
        """Let the background loader start now (the first image is on screen)."""
        self._go.set()

    def close(self) -> None:
        self._stop.set()
        self._go.set()
        self._wake.set()
        self.on_changed = None

    # ------------------------------------------------------------ loading
    def _read(self, s: Slice, pixels_too: bool):
        path = self.archive.instance_file(s.row) if not pixels_too else None
        if path is not None:
            # A header read from the file stops before the pixel data (not the whole 0.5 MB).
            return pydicom.dcmread(str(path), force=True, stop_before_pixels=True)
        data = self.archive.read_instance(s.row)
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not pixels_too)

    def _decode(self, s: Slice) -> Decoded:
        ds = self._read(s, True)
        stored = fast_stored(ds, s.frame)
        if stored is None:
            stored = pixels.decode_frame(ds, s.frame)
        pipeline = self._shared(pixels.DisplayPipeline.from_dataset(ds, s.frame if s.frames > 1 else None))
        with self._lock:
            known = (s.plane, s.has_geometry) if s.header is not None and s.plane is not None else None
        plane, geo = known if known is not None else plane_of(ds, s.frame, s.frames)
        if "PixelData" in ds:
            del ds.PixelData  # keep the header only
        dec = Decoded(stored, pipeline, plane, geo, ds)
        with self._lock:
            if s.header is None:
                s.header, s.plane, s.has_geometry = ds, plane, geo
            self._cache[s.key] = dec
        return dec

    def _shared(self, pipe: pixels.DisplayPipeline) -> pixels.DisplayPipeline:
        """One pipeline object for slices whose display chain is the same.

        The pipeline caches its lookup tables; sharing it means that scrolling
        through a series at one window builds the table once, not per slice.
        Chains with a LUT (modality, VOI or palette) are not shared.
        """
        m = pipe.modality
        if m.lut is not None or pipe.voi_luts or pipe.palette is not None:
            return pipe
        key = (pipe.photometric, pipe.bits_stored, pipe.signed, m.slope, m.intercept, m.units,
               tuple(pipe.windows), pipe.presentation_inverse, pipe.padding)
        try:
            with self._lock:
                return self._pipelines.setdefault(key, pipe)
        except TypeError:  # an unhashable attribute: do not share
            return pipe

    def _notify(self, what: str) -> None:
        cb = self.on_changed
        if cb is not None:
            self.ctx.dispatcher.post(lambda: cb(what) if self.on_changed is not None else None)

    def _background(self) -> None:
        self._go.wait(self.start_delay)
        try:
            self._read_headers()
            if self._stop.is_set():
                return
            self._sort()
            self._notify("order")
            self._prefetch()
            self._done = not self._stop.is_set()
            self._notify("done")
        except Exception:  # noqa: BLE001 - the viewer still decodes on demand
            log.exception("background loading of series %s failed", self.series_uid)
            self._done = True  # nothing more will arrive in the background
            self._notify("done")

    def _read_headers(self) -> None:
        seen: dict[str, Any] = {}
        for s in list(self.slices):
            if self._stop.is_set():
                return
            if s.header is not None:
                continue
            self._yield_to_user()
            ds = seen.get(s.sop_instance_uid)
            if ds is None:
                try:
                    ds = self._read(s, False)
                except Exception as exc:  # noqa: BLE001 - shown when the slice is displayed
                    self.errors[s.key] = str(exc)
                    continue
                seen[s.sop_instance_uid] = ds
            plane, geo = plane_of(ds, s.frame, s.frames)
            with self._lock:
                if s.header is None:
                    s.header, s.plane, s.has_geometry = ds, plane, geo
            self._headers_read += 1
            if self._headers_read % 16 == 0:
                self._notify("headers")
        self._headers_read = len(self.slices)
        self._wake.set()

    def _sort(self) -> None:
        """Sort along the normal when every slice has a plane of one orientation."""
        with self._lock:
            sl = self.slices
            if len(sl) < 2 or not all(s.has_geometry for s in sl):
                return
            ref = sl[0].plane
            if not all(ref.is_parallel(s.plane, 1e-3) for s in sl):
                return
            order, _ = sort_along_normal([s.plane.position for s in sl], ref.normal)
            self.slices = [sl[i] for i in order]
            self.sorted_by_position = True

    def _prefetch(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                n = len(self.slices)
                center = min(max(self._wanted, 0), n - 1)
                todo = None
                for d in range(n):
                    for i in (center + d, center - d):
                        if 0 <= i < n:
                            s = self.slices[i]
                            if s.key not in self._cache and s.key not in self.errors:
                                todo = s
                                break
                    if todo is not None:
                        break
            if todo is None:
                return
            self._yield_to_user()
            if todo.key in self._cache:
                continue  # decoded on demand meanwhile
            try:
                self._decode(todo)
            except Exception as exc:  # noqa: BLE001 - shown when the slice is displayed
                self.errors[todo.key] = str(exc)
            self._notify("decoded")

    # ----------------------------------------------------------- geometry
    def nearest_to(self, point: np.ndarray) -> int | None:
        """Index of the slice whose plane is nearest to a patient point (None without geometry)."""
        best, best_d = None, None
        with self._lock:
            for i, s in enumerate(self.slices):
                if not s.has_geometry or s.plane is None:
                    continue
                d = abs(float((np.asarray(point) - s.plane.position) @ s.plane.normal))
                if best_d is None or d < best_d:
                    best, best_d = i, d
        return best
