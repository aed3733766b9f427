"""Regions of interest: geometry in patient space, statistics in modality units, JSON.

Every ROI is defined by points in patient coordinates (LPS, mm), so it stays
valid on any image that contains it: the acquired slice it was drawn on, an
MPR reslice through the same plane, or a fused series in the same frame of
reference.  :meth:`ROI.measure` projects the ROI onto a
:class:`~osirix_py.imaging.volume.PlanarImage`, rasterises it (a pixel belongs
to the ROI when its centre does; for polygons and rectangles the boundary
follows the half-open "top-left" rule of scan conversion, so that an
axis-aligned rectangle of 10 x 6 pixel steps holds exactly 60 pixels, and
shapes that tile the plane share no pixel; an ellipse includes its boundary) and returns
:class:`ROIStatistics` in the image's modality units: pixel count, area in
mm², mean, standard deviation, minimum, maximum, median, and body-weight SUV
for PET when the image carries the factor (see
:func:`osirix_py.dicom.pixels.suv_bw_factor`).  Pixel padding values are left
out.

Kinds: ``point``, ``line`` (length in mm, statistics along the line),
``angle`` (degrees), ``rectangle``, ``ellipse``, ``polygon``, ``freehand``.

Serialisation: ``roi.to_json()`` / ``ROI.from_json(text)`` with a schema
name, a version and the kind, e.g.::

    {"schema": "osirix-py/roi", "version": 1, "kind": "ellipse",
     "uid": "...", "name": "liver", "color": [255, 0, 0],
     "reference": {"sop_instance_uid": "...", "frame": null, ...},
     "geometry": {"center": [x, y, z], "axis_a": [...], "axis_b": [...]}}
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..dicom.geometry import ImagePlane
from .volume import PlanarImage

__all__ = [
    "AngleROI",
    "EllipseROI",
    "FreehandROI",
    "ImageReference",
    "LineROI",
    "PointROI",
    "PolygonROI",
    "ROI",
    "ROIError",
    "ROIStatistics",
    "RectangleROI",
    "ROI_SCHEMA",
    "ROI_SCHEMA_VERSION",
    "roi_from_dict",
    "roi_from_json",
]

ROI_SCHEMA = "osirix-py/roi"
ROI_SCHEMA_VERSION = 1


class ROIError(ValueError):
    """An ROI that is invalid, cannot be read, or does not lie on the image measured."""


def _vec(v: Any, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ROIError(f"{name} must be three finite coordinates, got {v!r}")
    return a


def _points(v: Any, name: str, minimum: int) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < minimum or not np.all(np.isfinite(a)):
        raise ROIError(f"{name} must be at least {minimum} points of three finite coordinates")
    return a


def _list(a: np.ndarray) -> list:
    return np.asarray(a, dtype=np.float64).round(9).tolist()


@dataclass(frozen=True)
class ImageReference:
    """The image an ROI was drawn on (for the database and the viewers).

    (0008,0018) SOP Instance UID, 0-based frame of a multi-frame object,
    (0020,000E) Series and (0020,000D) Study Instance UIDs, (0020,0052) Frame
    of Reference UID.  All optional.
    """

    sop_instance_uid: str = ""
    frame: int | None = None
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "frame": self.frame,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ImageReference | None:
        if not d:
            return None
        frame = d.get("frame")
        return cls(
            str(d.get("sop_instance_uid") or ""),
            None if frame is None else int(frame),
            str(d.get("series_instance_uid") or ""),
            str(d.get("study_instance_uid") or ""),
            str(d.get("frame_of_reference_uid") or ""),
        )


@dataclass(frozen=True)
class ROIStatistics:
    """Statistics of the pixels of an ROI, in the image's modality units.

    ``area_mm2`` is the exact geometric area of the shape (area ROIs only);
    ``pixel_area_mm2`` is ``count`` times the pixel area.  ``std`` is the
    sample standard deviation (n - 1); NaN when fewer than two pixels.
    ``suv`` holds mean/std/min/max/median in body-weight SUV (g/ml) for PET
    images with a known factor.
    """

    count: int
    mean: float
    std: float
    min: float
    max: float
    median: float
    sum: float
    units: str = ""
    area_mm2: float | None = None
    pixel_area_mm2: float | None = None
    perimeter_mm: float | None = None
    length_mm: float | None = None
    angle_deg: float | None = None
    suv: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in ("count", "mean", "std", "min", "max", "median", "sum", "units", "area_mm2",
                  "pixel_area_mm2", "perimeter_mm", "length_mm", "angle_deg"):
            v = getattr(self, k)
            out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        out["suv"] = None if self.suv is None else {
            k: (None if not math.isfinite(v) else v) for k, v in self.suv.items()
        }
        return out


def _stats(values: np.ndarray, units: str, suv_factor: float | None, **extra: Any) -> ROIStatistics:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        return ROIStatistics(0, nan, nan, nan, nan, nan, 0.0, units, **extra)
    suv = None
    if suv_factor:
        s = v * suv_factor
        suv = {
            "mean": float(s.mean()),
            "std": float(s.std(ddof=1)) if n > 1 else float("nan"),
            "min": float(s.min()),
            "max": float(s.max()),
            "median": float(np.median(s)),
        }
    return ROIStatistics(
        n, float(v.mean()), float(v.std(ddof=1)) if n > 1 else float("nan"), float(v.min()),
        float(v.max()), float(np.median(v)), float(v.sum()), units, suv=suv, **extra,
    )


def _units(image: PlanarImage) -> str:
    if image.units:
        return image.units
    return "HU" if image.modality.upper() == "CT" else ""


def _valid_mask(image: PlanarImage, mask: np.ndarray) -> np.ndarray:
    if image.padding is not None:
        lo, hi = image.padding
        arr = image.array
        mask = mask & ~((arr >= lo) & (arr <= hi))
    return mask


# ---------------------------------------------------------------------------
# Base class


_REGISTRY: dict[str, type[ROI]] = {}


@dataclass(eq=False)
class ROI:
    """Base of all ROIs: identity, display name/colour and the image reference.

    Subclasses define their geometry in LPS mm and implement :meth:`points`,
    :meth:`_geometry`, :meth:`_from_geometry` and :meth:`measure`.
    """

    kind: ClassVar[str] = ""

    name: str = field(default="", kw_only=True)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex, kw_only=True)
    color: tuple[int, int, int] | None = field(default=None, kw_only=True)
    reference: ImageReference | None = field(default=None, kw_only=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _REGISTRY[cls.kind] = cls

    # -- geometry ------------------------------------------------------------

    def points(self) -> np.ndarray:
        """The defining points (N x 3, LPS mm)."""
        raise NotImplementedError

    def outline(self, segments: int = 64) -> np.ndarray:
        """Points to draw the ROI (closed shapes are not repeated at the end)."""
        return self.points()

    def _geometry(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_geometry(cls, g: dict[str, Any], **common: Any) -> ROI:
        raise NotImplementedError

    def translated(self, delta: Sequence[float]) -> ROI:
        """A copy moved by ``delta`` (mm), same uid."""
        d = _vec(delta, "delta")
        g = self._geometry()
        moved = {}
        for k, v in g.items():
            a = np.asarray(v, dtype=np.float64)
            if k in ("axis_a", "axis_b", "edge_u", "edge_v"):
                moved[k] = v
            elif a.ndim == 1 and a.shape == (3,):
                moved[k] = _list(a + d)
            elif a.ndim == 2:
                moved[k] = _list(a + d[None, :])
            else:
                moved[k] = v
        return type(self)._from_geometry(moved, **self._common())

    def _common(self) -> dict[str, Any]:
        return {"name": self.name, "uid": self.uid, "color": self.color, "reference": self.reference}

    # -- serialisation ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ROI_SCHEMA,
            "version": ROI_SCHEMA_VERSION,
            "kind": self.kind,
            "uid": self.uid,
            "name": self.name,
            "color": list(self.color) if self.color is not None else None,
            "reference": self.reference.to_dict() if self.reference else None,
            "geometry": self._geometry(),
        }

    def to_json(self, **kwargs: Any) -> str:
        """JSON text (see the module docstring); ``kwargs`` go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), **kwargs)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ROI:
        return roi_from_dict(d)

    @staticmethod
    def from_json(text: str | bytes) -> ROI:
        return roi_from_json(text)

    # -- measurement -------------------------------------------------------------

    def _projected(self, image: PlanarImage, tolerance: float | None) -> np.ndarray:
        """ROI points as in-plane (u, v) mm coordinates of ``image``; checks they lie on it."""
        plane = image.plane
        pts = self.points()
        rel = pts - plane.position[None, :]
        dist = rel @ plane.normal
        tol = tolerance
        if tol is None:
            tol = max(0.5 * (plane.thickness or 0.0), 0.5 * min(plane.pixel_spacing), 1e-3)
        worst = float(np.max(np.abs(dist))) if dist.size else 0.0
        if worst > tol:
            raise ROIError(f"the {self.kind} ROI lies {worst:.3g} mm from the image plane "
                           f"(tolerance {tol:.3g} mm)")
        u = rel @ plane.row_cosine
        v = rel @ plane.col_cosine
        return np.stack([u, v], axis=1)

    def mask(self, image: PlanarImage, *, tolerance: float | None = None) -> np.ndarray:
        """Boolean (rows, columns) mask of the pixels whose centres lie inside."""
        raise NotImplementedError

    def measure(self, image: PlanarImage, *, tolerance: float | None = None) -> ROIStatistics:
        """Statistics of the ROI's pixels on ``image`` (see :class:`ROIStatistics`).

        ``tolerance`` is the largest distance (mm) of the ROI from the image
        plane; by default half the slice thickness or half a pixel.  Raises
        :class:`ROIError` when the ROI is not on the image.
        """
        m = _valid_mask(image, self.mask(image, tolerance=tolerance))
        dr, dc = image.plane.pixel_spacing
        return _stats(image.array[m], _units(image), image.suv_factor,
                      **self._shape_measures(), pixel_area_mm2=float(m.sum()) * dr * dc)

    def _shape_measures(self) -> dict[str, Any]:
        return {}


def _pixel_grid(plane: ImagePlane, u_range: tuple[float, float], v_range: tuple[float, float]
                ) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Pixel index ranges covering an in-plane box (mm), and the centres' u, v (mm)."""
    dr, dc = plane.pixel_spacing
    c0 = max(0, int(math.floor(u_range[0] / dc)) - 1)
    c1 = min(plane.columns - 1, int(math.ceil(u_range[1] / dc)) + 1)
    r0 = max(0, int(math.floor(v_range[0] / dr)) - 1)
    r1 = min(plane.rows - 1, int(math.ceil(v_range[1] / dr)) + 1)
    if c1 < c0 or r1 < r0:
        return slice(0, 0), slice(0, 0), np.zeros(0), np.zeros(0)
    u = np.arange(c0, c1 + 1) * dc
    v = np.arange(r0, r1 + 1) * dr
    return slice(r0, r1 + 1), slice(c0, c1 + 1), u, v


_EPS = 1e-9


# ---------------------------------------------------------------------------
# Point, line, angle


@dataclass(eq=False)
class PointROI(ROI):
    """A point; its statistics are those of the pixel that contains it."""

    kind: ClassVar[str] = "point"
    position: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        self.position = _vec(self.position, "position")

    def points(self) -> np.ndarray:
        return self.position[None, :]

    def _geometry(self) -> dict[str, Any]:
        return {"position": _list(self.position)}

    @classmethod
    def _from_geometry(cls, g: dict[str, Any], **common: Any) -> PointROI:
        return cls(position=g["position"], **common)

    @classmethod
    def from_pixels(cls, plane: ImagePlane, column: float, row: float, **common: Any) -> PointROI:
        return cls(position=plane.pixel_to_patient(column, row)[0], **common)

    def mask(self, image: PlanarImage, *, tolerance: float | None = None) -> np.ndarray:
        uv = self._projected(image, tolerance)[0]
        dr, dc = image.plane.pixel_spacing
        c, r = int(math.floor(uv[0] / dc + 0.5)), int(math.floor(uv[1] / dr + 0.5))
        m = np.zeros(image.array.shape, bool)
        if 0 <= r < m.shape[0] and 0 <= c < m.shape[1]:
            m[r, c] = True
        return m


@dataclass(eq=False)
class LineROI(ROI):
    """A segment; :attr:`length_mm`, and statistics of values sampled along it."""

    kind: ClassVar[str] = "line"
    start: np.ndarray = field(default_factory=lambda: np.zeros(3))
    end: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        self.start = _vec(self.start, "start")
        self.end = _vec(self.end, "end")

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(self.end - self.start))

    def points(self) -> np.ndarray:
        return np.stack([self.start, self.end])

    def _geometry(self) -> dict[str, Any]:
        return {"start": _list(self.start), "end": _list(self.end)}

    @classmethod
    def _from_geometry(cls, g: dict[str, Any], **common: Any) -> LineROI:
        return cls(start=g["start"], end=g["end"], **common)

    @classmethod
    def from_pixels(cls, plane: ImagePlane, p0: Sequence[float], p1: Sequence[float], **common: Any) -> LineROI:
        pts = plane.pixel_to_patient([p0[0], p1[0]], [p0[1], p1[1]])
        return cls(start=pts[0], end=pts[1], **common)

    def profile(self, image: PlanarImage, samples: int | None = None, *,
                tolerance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distance_mm, value)`` sampled along the line by bilinear interpolation.

        ``samples`` defaults to one per half pixel.  Samples outside the image
        are NaN.
        """
        uv = self._projected(image, tolerance)
        dr, dc = image.plane.pixel_spacing
        length = self.length_mm
        n = samples if samples is not None else max(2, int(math.ceil(length / (0.5 * min(dr, dc)))) + 1)
        t = np.linspace(0.0, 1.0, n)
        u = uv[0, 0] + t * (uv[1, 0] - uv[0, 0])
        v = uv[0, 1] + t * (uv[1, 1] - uv[0, 1])
        return t * length, _bilinear(image.array, v / dr, u / dc)

    def mask(self, image: PlanarImage, *, tolerance: float | None = None) -> np.ndarray:
        """Pixels the segment passes through (nearest pixel per half-pixel sample)."""
        uv = self._projected(image, tolerance)
        dr, dc = image.plane.pixel_spacing
        n = max(2, int(math.ceil(self.length_mm / (0.5 * min(dr, dc)))) + 1)
        t = np.linspace(0.0, 1.0, n)
        c = np.floor((uv[0, 0] + t * (uv[1, 0] - uv[0, 0])) / dc + 0.5).astype(int)
        r = np.floor((uv[0, 1] + t * (uv[1, 1] - uv[0, 1])) / dr + 0.5).astype(int)
        ok = (r >= 0) & (r < image.array.shape[0]) & (c >= 0) & (c < image.array.shape[1])
        m = np.zeros(image.array.shape, bool)
        m[r[ok], c[ok]] = True
        return m

    def measure(self, image: PlanarImage, *, tolerance: float | None = None) -> ROIStatistics:
        _, values = self.profile(image, tolerance=tolerance)
        if image.padding is not None:
            lo, hi = image.padding
            values = values[~((values >= lo) & (values <= hi))]
        return _stats(values, _units(image), image.suv_factor, length_mm=self.length_mm)


def _bilinear(arr: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    rows, cols = arr.shape
    out = np.full(r.shape, np.nan)
    ok = (r >= -1e-6) & (r <= rows - 1 + 1e-6) & (c >= -1e-6) & (c <= cols - 1 + 1e-6)
    if not ok.any():
        return out
    rr = np.clip(r[ok], 0, rows - 1)
    cc = np.clip(c[ok], 0, cols - 1)
    r0 = np.minimum(np.floor(rr).astype(int), max(rows - 2, 0))
    c0 = np.minimum(np.floor(cc).astype(int), max(cols - 2, 0))
    r1 = np.minimum(r0 + 1, rows - 1)
    c1 = np.minimum(c0 + 1, cols - 1)
    fr = rr - r0
    fc = cc - c0
    a = arr.astype(np.float64, copy=False)
    top = a[r0, c0] * (1 - fc) + a[r0, c1] * fc
    bottom = a[r1, c0] * (1 - fc) + a[r1, c1] * fc
    out[ok] = top * (1 - fr) + bottom * fr
    return out


@dataclass(eq=False)
class AngleROI(ROI):
    """Three points, the angle at ``vertex`` between the arms to ``first`` and ``second``."""

    kind: ClassVar[str] = "angle"
    first: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    vertex: np.ndarray = field(default_factory=lambda: np.zeros(3))
    second: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))

    def __post_init__(self) -> None:
        self.first = _vec(self.first, "first")
        self.vertex = _vec(self.vertex, "vertex")
        self.second = _vec(self.second, "second")

    @property
    def angle_deg(self) -> float:
        a = self.first - self.vertex
        b = self.second - self.vertex
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 or nb == 0:
            return float("nan")
        # atan2 of |a x b| and a.b is accurate for all angles
        return float(math.degrees(math.atan2(float(np.linalg.norm(np.cross(a, b))), float(a @ b))))

    def points(self) -> np.ndarray:
        return np.stack([self.first, self.vertex, self.second])

    def _geometry(self) -> dict[str, Any]:
        return {"first": _list(self.first), "vertex": _list(self.vertex), "second": _list(self.second)}

    @classmethod
    def _from_geometry(cls, g: dict[str, Any], **common: Any) -> AngleROI:
        return cls(first=g["first"], vertex=g["vertex"], second=g["second"], **common)

    @classmethod
    def from_pixels(cls, plane: ImagePlane, first: Sequence[float], vertex: Sequence[float],
                    second: Sequence[float], **common: Any) -> AngleROI:
        pts = plane.pixel_to_patient([first[0], vertex[0], second[0]], [first[1], vertex[1], second[1]])
        return cls(first=pts[0], vertex=pts[1], second=pts[2], **common)

    def mask(self, image: PlanarImage, *, tolerance: float | None = None) -> np.ndarray:
        self._projected(image, tolerance)
        return np.zeros(image.array.shape, bool)

    def measure(self, image: PlanarImage, *, tolerance: float | None = None) -> ROIStatistics:
        self._projected(image, tolerance)
        return _stats(np.zeros(0), _units(image), None, angle_deg=self.angle_deg,
                      length_mm=float(np.linalg.norm(self.first - self.vertex) + np.linalg.norm(self.second - self.vertex)))


# ---------------------------------------------------------------------------
# Area ROIs


def _rasterize_polygon(poly_uv: np.ndarray, plane: ImagePlane) -> np.ndarray:
    """Even-odd fill of a polygon given in-plane mm coordinates; pixel centres on edges count."""
    rows, cols = plane.rows, plane.columns
    mask = np.zeros((rows, cols), bool)
    if len(poly_uv) < 3:
        return mask
    dr, dc = plane.pixel_spacing
    rs, cs, u, v = _pixel_grid(plane, (poly_uv[:, 0].min(), poly_uv[:, 0].max()),
                               (poly_uv[:, 1].min(), poly_uv[:, 1].max()))
    if u.size == 0 or v.size == 0:
        return mask
    x0, y0 = poly_uv[:, 0], poly_uv[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # crossings of every scanline (row centre v) with every edge, half-open rule
    vv = v[:, None]
    cond = ((y0[None, :] <= vv) & (y1[None, :] > vv)) | ((y1[None, :] <= vv) & (y0[None, :] > vv))
    # Horizontal edges give inf/nan here; `cond` excludes them below.
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (vv - y0[None, :]) / (y1 - y0)[None, :]
        xs = np.where(cond, x0[None, :] + t * (x1 - x0)[None, :], np.nan)
    xs.sort(axis=1)
    sub = np.zeros((v.size, u.size), bool)
    counts = np.sum(cond, axis=1)
    tol = 1e-7 * max(dc, dr)
    for i in range(v.size):
        k = int(counts[i])
        if k < 2:
            continue
        row_x = xs[i, :k]
        for j in range(0, k - 1, 2):
            # half-open span [a, b): shapes that tile the plane share no pixel
            lo = int(np.searchsorted(u, row_x[j] - tol, side="left"))
            hi = int(np.searchsorted(u, row_x[j + 1] - tol, side="left"))
            sub[i, lo:hi] = True
    mask[rs, cs] = sub
    return mask


def _shoelace(uv: np.ndarray) -> float:
    x, y = uv[:, 0], uv[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _plane_area(points: np.ndarray) -> float:
    """Area of a planar polygon in 3D (Newell's method)."""
    p = np.asarray(points, dtype=np.float64)
    q = np.roll(p, -1, axis=0)
    return 0.5 * float(np.linalg.norm(np.cross(p, q).sum(axis=0)))


def _perimeter(points: np.ndarray) -> float:
    p = np.asarray(points, dtype=np.float64)
    return float(np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1).sum())


@dataclass(eq=False)
class RectangleROI(ROI):
    """A rectangle: ``corner`` and the two edge vectors ``edge_u``, ``edge_v`` (mm, orthogonal)."""

    kind: ClassVar[str] = "rectangle"
    corner: np.ndarray = field(default_factory=lambda: np.zeros(3))
    edge_u: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    edge_v: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))

    def __post_init__(self) -> None:
        self.corner = _vec(self.corner, "corner")
        self.edge_u = _vec(self.edge_u, "edge_u")
        self.edge_v = _vec(self.edge_v, "edge_v")
        nu, nv = np.linalg.norm(self.edge_u), np.linalg.norm(self.edge_v)
        if nu > 0 and nv > 0 and abs(float(self.edge_u @ self.edge_v)) > 1e-6 * nu * nv:
            raise ROIError("rectangle edges must be orthogonal")

    @classmethod
    def from_corners(cls, plane: ImagePlane, p0: Sequence[float], p1: Sequence[float], **common: Any) -> RectangleROI:
        """The image-aligned rectangle with opposite corners ``p0``, ``p1`` (LPS mm) on ``plane``."""
        a, b = _vec(p0, "p0"), _vec(p1, "p1")
        d = b - a
        du = (d @ plane.row_cosine) * plane.row_cosine
        dv = (d @ plane.col_cosine) * plane.col_cosine
        return cls(corner=a, edge_u=du, edge_v=dv, **common)

    @classmethod
    def from_pixels(cls, plane: ImagePlane, p0: Sequence[float], p1: Sequence[float], **common: Any) -> RectangleROI:
        pts = plane.pixel_to_patient([p0[0], p1[0]], [p0[1], p1[1]])
        return cls.from_corners(plane, pts[0], pts[1], **common)

    @property
    def area_mm2(self) -> float:
        return float(np.linalg.norm(np.cross(self.edge_u, self.edge_v)))

    def points(self) -> np.ndarray:
        c, u, v = self.corner, self.edge_u, self.edge_v
        return np.stack([c, c + u, c + u + v, c + v])

    def _geometry(self) -> dict[str, Any]:
        return {"corner": _list(self.corner), "edge_u": _list(self.edge_u), "edge_v": _list(self.edge_v)}

    @classmethod
    def _from_geometry(cls, g: dict[str, Any], **common: Any) -> RectangleROI:
        return cls(corner=g["corner"], edge_u=g["edge_u"], edge_v=g["edge_v"], **common)

    def mask(self, image: PlanarImage, *, tolerance: float | None = None) -> np.ndarray:
        uv = self._projected(image, tolerance)
        plane = image.plane
        out = np.zeros(image.array.shape, bool)
        rs, cs, u, v = _pixel_grid(plane, (uv[:, 0].min(), uv[:, 0].max()), (uv[:, 1].min(), uv[:, 1].max()))
        if u.size == 0 or v.size == 0:
            return out
        o = uv[0]
        e1 = uv[1] - uv[0]
        e2 = uv[3] - uv[0]
        det = e1[0] * e2[1] - e1[1] * e2[0]
        if abs(det) < _EPS:
            return out
        du = u[None, :] - o[0]
        dv = v[:, None] - o[1]
        s = (du * e2[1] - dv * e2[0]) / det
        t = (dv * e1[0] - du * e1[1]) / det
        eps = 1e-9
        # half-open in both directions, like the polygon scan conversion
        out[rs, cs] = (s >= -eps) & (s < 1 - eps) & (t >= -eps) & (t < 1 - eps)
        return out

    def _shape_measures(self) -> dict[str, Any]:
        return {"area_mm2": self.area_mm2, "perimeter_mm": 2 * float(np.linalg.norm(self.edge_u) + np.linalg.norm(self.edge_v))}


@dataclass(eq=False)
class EllipseROI(ROI):
    """An ellipse: ``center`` and two orthogonal semi-axis vectors ``axis_a``, ``axis_b`` (mm)."""

    kind: ClassVar[str] = "ellipse"
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    axis_a: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    axis_b: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))

    def __post_init__(self) -> None:
        self.center = _vec(self.center, "center")
        self.axis_a = _vec(self.axis_a, "axis_a")
        self.axis_b = _vec(self.axis_b, "axis_b")
        na, nb = np.linalg.norm(self.axis_a), np.linalg.norm(self.axis_b)
        if na == 0 or nb == 0:
            raise ROIError("ellipse semi-axes must not be zero")
        if abs(float(self.axis_a @ self.axis_b)) > 1e-6 * na * nb:
            raise ROIError("ellipse semi-axes must be orthogonal")

    @classmethod
    def from_center_radii(cls, plane: ImagePlane, center: Sequence[float], radius_u: float,
                          radius_v: float, **common: Any) -> EllipseROI:
        """An ellipse on ``plane`` with radii (mm) along the image's row and column directions."""
        return cls(center=center, axis_a=plane.row_cosine * float(radius_u),
                   axis_b=plane.col_cosine * float(radius_v), **common)

    @classmethod
    def from_pixels(cls, plane: ImagePlane, center: Sequence[float], radii: Sequence[float], **common: Any) -> EllipseROI:
        """Centre (column, row) and radii (columns, rows) in pixels on ``plane``."""
        c = plane.pixel_to_patient(center[0], center[1])[0]
        return cls.from_center_radii(plane, c, radii[0] * plane.pixel_spacing[1],
                                     radii[1] * plane.pixel_spacing[0], **common)

    @property
    def area_mm2(self) -> float:
        return math.pi * float(np.linalg.norm(self.axis_a) * np.linalg.norm(self.axis_b))

    @property
    def perimeter_mm(self) -> float:
        """Ramanujan's second approximation (relative error < 1e-9 for moderate eccentricity)."""
        a, b = float(np.linalg.norm(self.axis_a)), float(np.linalg.norm(self.axis_b))
        h = ((a - b) / (a + b)) ** 2
        return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))

    def points(self) -> np.ndarray:
        c = self.center
        return np.stack([c, c + self.axis_a, c + self.axis_b, c - self.axis_a, c - self.axis_b])

    def outline(self, segments: int = 64) -> np.ndarray:
        t = np.linspace(0, 2 * math.pi, segments, endpoint=False)
        return self.center[None, :] + np.cos(t)[:, None] * self.axis_a + np.sin(t)[:, None] * self.axis_b

    def _geometry(self) -> dict[str, Any]:
        return {"center": _list(self.center), "axis_a": _list(self.axis_a), "axis_b": _list(self.axis_b)}

    @classmethod
    def _from_geometry(cls, g: dict[str, Any], **common: Any) -> EllipseROI:
        return cls(center=g["center"], axis_a=g["axis_a"], axis_b=g["axis_b"], **common)

    def mask(self, image: PlanarImage, *, tolerance: float | None = None) -> np.ndarray:
        uv = self._projected(image, tolerance)
        plane = image.plane
        out = np.zeros(image.array.shape, bool)
        c = uv[0]
        a = uv[1] - c
        b = uv[2] - c
        ra, rb = float(np.hypot(*a)), float(np.hypot(*b))
        if ra < _EPS or rb < _EPS:
            return out
        ext_u = math.hypot(a[0], b[0])
        ext_v = math.hypot(a[1], b[1])
        rs, cs, u, v = _pixel_grid(plane, (c[0] - ext_u, c[0] + ext_u), (c[1] - ext_v, c[1] + ext_v))
        if u.size == 0 or v.size == 0:
            return out
        du = u[None, :] - c[0]
        dv = v[:, None] - c[1]
        pa = (du * a[0] + dv * a[1]) / (ra * ra)
        pb = (du * b[0] + dv * b[1]) / (rb * rb)
        out[rs, cs] = pa * pa + pb * pb <= 1.0 + 1e-9
        return out

    def _shape_measures(self) -> dict[str, Any]:
        return {"area_mm2": self.area_mm2, "perimeter_mm": self.perimeter_mm}


@dataclass(eq=False)
class PolygonROI(ROI):
    """A closed polygon through ``vertices`` (N x 3, N >= 3, coplanar)."""

    kind: ClassVar[str] = "polygon"
    vertices: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))

    def __post_init__(self) -> None:
        self.vertices = _points(self.vertices, "vertices", 3)

    @classmethod
    def from_pixels(cls, plane: ImagePlane, points: Sequence[Sequence[float]], **common: Any) -> PolygonROI:
        p = np.asarray(points, dtype=np.float64)
        return cls(vertices=plane.pixel_to_patient(p[:, 0], p[:, 1]), **common)

    @property
    def area_mm2(self) -> float:
        return _plane_area(self.vertices)

    @property
    def perimeter_mm(self) -> float:
        return _perimeter(self.vertices)

    def points(self) -> np.ndarray:
        return self.vertices

    def _geometry(self) -> dict[str, Any]:
        return {"vertices": _list(self.vertices)}

    @classmethod
    def _from_geometry(cls, g: dict[str, Any], **common: Any) -> PolygonROI:
        return cls(vertices=g["vertices"], **common)

    def mask(self, image: PlanarImage, *, tolerance: float | None = None) -> np.ndarray:
        uv = self._projected(image, tolerance)
        return _rasterize_polygon(uv, image.plane)

    def _shape_measures(self) -> dict[str, Any]:
        return {"area_mm2": self.area_mm2, "perimeter_mm": self.perimeter_mm}


@dataclass(eq=False)
class FreehandROI(PolygonROI):
    """A closed freehand contour (many vertices); measured like a polygon."""

    kind: ClassVar[str] = "freehand"


# ---------------------------------------------------------------------------
# Reading


def roi_from_dict(d: dict[str, Any]) -> ROI:
    """An ROI from :meth:`ROI.to_dict` output; raises :class:`ROIError` on bad input."""
    if not isinstance(d, dict):
        raise ROIError("an ROI must be a JSON object")
    schema = d.get("schema", ROI_SCHEMA)
    if schema != ROI_SCHEMA:
        raise ROIError(f"unknown ROI schema {schema!r}")
    version = d.get("version")
    if not isinstance(version, int) or version < 1:
        raise ROIError(f"ROI schema version must be a positive integer, got {version!r}")
    if version > ROI_SCHEMA_VERSION:
        raise ROIError(f"ROI schema version {version} is newer than this program's ({ROI_SCHEMA_VERSION})")
    kind = d.get("kind")
    cls = _REGISTRY.get(str(kind))
    if cls is None:
        raise ROIError(f"unknown ROI kind {kind!r} (known: {', '.join(sorted(_REGISTRY))})")
    geometry = d.get("geometry")
    if not isinstance(geometry, dict):
        raise ROIError("ROI has no geometry")
    color = d.get("color")
    common: dict[str, Any] = {
        "name": str(d.get("name") or ""),
        "color": tuple(int(c) for c in color) if color else None,
        "reference": ImageReference.from_dict(d.get("reference")),
    }
    if d.get("uid"):
        common["uid"] = str(d["uid"])
    try:
        return cls._from_geometry(geometry, **common)
    except ROIError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ROIError(f"invalid {kind} ROI geometry: {exc!r}") from exc


def roi_from_json(text: str | bytes) -> ROI:
    """An ROI from :meth:`ROI.to_json` text."""
    try:
        d = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ROIError(f"ROI JSON cannot be parsed: {exc}") from exc
    return roi_from_dict(d)
