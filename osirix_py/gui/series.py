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
"""

from __future__ import annotations

import io
import logging
import threading
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

    def __init__(self, ctx, series_uid: str, *, prefetch: bool = True):
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
        self._lock = threading.RLock()
        self._wanted = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.on_changed: Callable[[str], None] | None = None  # "order" / "decoded" / "done"
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

    def want(self, index: int) -> None:
        """Tell the background loader where the user is (it decodes around it first)."""
        self._wanted = index
        self._wake.set()

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

    def cached(self, index: int) -> Decoded | None:
        with self._lock:
            return self._cache.get(self.slices[index].key)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self.on_changed = None

    # ------------------------------------------------------------ loading
    def _read(self, s: Slice, pixels_too: bool):
        data = self.archive.read_instance(s.row)
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not pixels_too)

    def _decode(self, s: Slice) -> Decoded:
        ds = self._read(s, True)
        stored = pixels.decode_frame(ds, s.frame)
        pipeline = pixels.DisplayPipeline.from_dataset(ds, s.frame if s.frames > 1 else None)
        plane, geo = plane_of(ds, s.frame, s.frames)
        if "PixelData" in ds:
            del ds.PixelData  # keep the header only
        dec = Decoded(stored, pipeline, plane, geo, ds)
        with self._lock:
            if s.header is None:
                s.header, s.plane, s.has_geometry = ds, plane, geo
            self._cache[s.key] = dec
        return dec

    def _notify(self, what: str) -> None:
        cb = self.on_changed
        if cb is not None:
            self.ctx.dispatcher.post(lambda: cb(what) if self.on_changed is not None else None)

    def _background(self) -> None:
        try:
            self._read_headers()
            if self._stop.is_set():
                return
            self._sort()
            self._notify("order")
            self._prefetch()
            self._notify("done")
        except Exception:  # noqa: BLE001 - the viewer still decodes on demand
            log.exception("background loading of series %s failed", self.series_uid)

    def _read_headers(self) -> None:
        seen: dict[str, Any] = {}
        for s in list(self.slices):
            if self._stop.is_set():
                return
            if s.header is not None:
                continue
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
