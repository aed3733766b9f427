"""ROIs in the 2D viewer: the imaging core's ROI objects plus what the view needs.

Geometry and statistics are :mod:`osirix_py.imaging.roi`'s; this module adds
the database id, the cached statistics, the text shown next to the ROI and
the tool -> ROI construction from points in image pixel coordinates.

Coordinates: the view works in *image coordinates* where pixel (column c,
row r) covers ``[c, c+1) x [r, r+1)``; the imaging core's ``from_pixels``
takes pixel *centres* (``c``, ``r``), i.e. image coordinates minus 0.5.

A text annotation is a :class:`~osirix_py.imaging.roi.PointROI` whose name is
the text, stored with ``"display": "text"`` (the core ignores the key).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ..dicom.geometry import ImagePlane
from ..imaging.roi import (
    ROI,
    AngleROI,
    EllipseROI,
    FreehandROI,
    ImageReference,
    LineROI,
    PointROI,
    PolygonROI,
    RectangleROI,
    ROIError,
    ROIStatistics,
    roi_from_dict,
)

log = logging.getLogger(__name__)

#: Tool name -> (ROI kind, clicks needed: 0 = drag, -1 = open-ended).
ROI_TOOLS = {
    "length": "line",
    "angle": "angle",
    "rectangle": "rectangle",
    "ellipse": "ellipse",
    "polygon": "polygon",
    "freehand": "freehand",
    "point": "point",
    "text": "text",
}

DEFAULT_COLOR = (255, 220, 0)
SELECTED_COLOR = (0, 255, 255)


def _px(p) -> tuple[float, float]:
    """Image coordinates -> pixel-centre coordinates of the core."""
    return (float(p[0]) - 0.5, float(p[1]) - 0.5)


def build_roi(tool: str, points: list[tuple[float, float]], plane: ImagePlane, *,
              reference: ImageReference | None = None, text: str = "") -> ROI | None:
    """The ROI a tool makes from points in image coordinates (None if degenerate)."""
    pts = [_px(p) for p in points]
    common = {"reference": reference}
    try:
        if tool == "length" and len(pts) >= 2:
            if pts[0] == pts[-1]:
                return None
            return LineROI.from_pixels(plane, pts[0], pts[-1], **common)
        if tool == "angle" and len(pts) >= 3:
            return AngleROI.from_pixels(plane, pts[0], pts[1], pts[2], **common)
        if tool == "rectangle" and len(pts) >= 2:
            (c0, r0), (c1, r1) = pts[0], pts[-1]
            if abs(c1 - c0) < 1e-6 or abs(r1 - r0) < 1e-6:
                return None
            return RectangleROI.from_pixels(plane, (min(c0, c1), min(r0, r1)), (max(c0, c1), max(r0, r1)),
                                            **common)
        if tool == "ellipse" and len(pts) >= 2:
            (c0, r0), (c1, r1) = pts[0], pts[-1]
            rx, ry = abs(c1 - c0) / 2, abs(r1 - r0) / 2
            if rx < 1e-6 or ry < 1e-6:
                return None
            return EllipseROI.from_pixels(plane, ((c0 + c1) / 2, (r0 + r1) / 2), (rx, ry), **common)
        if tool in ("polygon", "freehand") and len(pts) >= 3:
            cls = PolygonROI if tool == "polygon" else FreehandROI
            return cls.from_pixels(plane, pts, **common)
        if tool in ("point", "text") and pts:
            return PointROI.from_pixels(plane, pts[0][0], pts[0][1], name=text, **common)
    except ROIError as exc:
        log.debug("no ROI from %s %s: %s", tool, points, exc)
    return None


@dataclass(eq=False)
class RoiItem:
    roi: ROI
    db_id: int | None = None
    is_text: bool = False
    stats: ROIStatistics | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)

    # ---------------------------------------------------------- storage
    def to_record(self) -> dict:
        d = self.roi.to_dict()
        if self.is_text:
            d["display"] = "text"
        return d

    @classmethod
    def from_record(cls, data: dict, db_id: int | None = None) -> "RoiItem":
        roi = roi_from_dict(data)
        return cls(roi, db_id=db_id, is_text=data.get("display") == "text")

    # ---------------------------------------------------------- geometry
    def image_points(self, plane: ImagePlane, outline: bool = True) -> np.ndarray:
        """(N, 2) image coordinates of the outline (or defining points)."""
        pts = self.roi.outline(96) if outline else self.roi.points()
        cr = plane.patient_to_pixel(pts)
        return cr[:, :2] + 0.5

    @property
    def closed(self) -> bool:
        return self.roi.kind in ("rectangle", "ellipse", "polygon", "freehand")

    def measure(self, image) -> None:
        try:
            self.stats = self.roi.measure(image)
            self.error = ""
        except ROIError as exc:
            self.stats, self.error = None, str(exc)

    def label_lines(self) -> list[str]:
        """What is written next to the ROI."""
        if self.is_text:
            return [self.roi.name or "(text)"]
        s = self.stats
        if s is None:
            return [self.error] if self.error else []
        u = f" {s.units}" if s.units else ""
        lines = []
        if self.roi.name:
            lines.append(self.roi.name)
        kind = self.roi.kind
        if kind == "line":
            lines.append(f"Length: {_mm(s.length_mm)}")
        elif kind == "angle":
            lines.append(f"Angle: {s.angle_deg:.1f}\u00b0" if s.angle_deg is not None and math.isfinite(s.angle_deg)
                         else "Angle: -")
            return lines
        elif kind == "point":
            lines.append(f"Value: {_num(s.mean)}{u}")
            pos = self.roi.points()[0]
            lines.append(f"({pos[0]:.1f}, {pos[1]:.1f}, {pos[2]:.1f}) mm")
            return lines
        if kind != "line" and s.area_mm2 is not None:
            lines.append(f"Area: {_area(s.area_mm2)}")
        if s.count:
            lines.append(f"Mean: {_num(s.mean)}{u}  SD: {_num(s.std)}")
            lines.append(f"Min: {_num(s.min)}  Max: {_num(s.max)}  n={s.count}")
        return lines


def _num(v) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.1f}" if abs(v) < 10000 else f"{v:.4g}"


def _mm(v) -> str:
    if v is None:
        return "-"
    return f"{v / 10:.2f} cm" if v >= 100 else f"{v:.1f} mm"


def _area(v) -> str:
    return f"{v / 100:.2f} cm\u00b2" if v >= 100 else f"{v:.1f} mm\u00b2"


def distance_to_polyline(p: np.ndarray, pts: np.ndarray, closed: bool) -> float:
    """Shortest distance from point p (2,) to the polyline pts (N, 2)."""
    if len(pts) == 0:
        return math.inf
    if len(pts) == 1:
        return float(np.hypot(*(p - pts[0])))
    a = pts
    b = np.roll(pts, -1, axis=0) if closed else pts[1:]
    a = a if closed else pts[:-1]
    ab = b - a
    denom = np.einsum("ij,ij->i", ab, ab)
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.where(denom == 0, 1, denom), 0, 1)
    proj = a + t[:, None] * ab
    return float(np.min(np.hypot(*(proj - p).T)))


def point_in_polygon(p: np.ndarray, pts: np.ndarray) -> bool:
    x, y = p
    inside = False
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        if (y1 > y) != (y2 > y):
            xin = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < xin:
                inside = not inside
    return inside
