"""MPR in the 2D viewer: axial, coronal and sagittal views of one series, from the imaging core.

The volume is built off the GUI thread by :func:`osirix_py.imaging.volume.load_volumes`
(from the series' files, or their bytes for a memory store); every view shows
:func:`osirix_py.imaging.reslice.reslice` of its plane (numpy only, no VTK).
The three views share one :class:`MprModel`: a cursor point in patient space
(LPS mm, snapped to voxel centres), the window and the inversion.  Each view
draws the lines where the other two planes cut it, in their colours, with a
gap around the cursor.

Mouse, in any view: left click or drag moves the cursor (the other two planes
follow), right drag = window/level (shared), wheel = next/previous plane,
Ctrl+wheel = zoom, middle drag = pan.  Keys: Up/Down and Page Up/Down move the
plane of the view with the focus.

Pixels are shown with their true aspect (the planes sample the volume on its
own voxel grid, e.g. 0.7 mm across and 2.5 mm between slices, and the view
scales rows and columns by their spacing); orientation letters on the four
edges come from the plane's direction cosines.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QEvent, QLineF, QObject, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPen, QTransform
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QWidget

from ..dicom.geometry import ImagePlane, direction_letters
from ..dicom.pixels import Window, apply_window
from ..imaging.reslice import axial_plane, coronal_plane, reslice, sagittal_plane
from ..imaging.volume import Volume, VolumeError, load_volumes
from .imageview import MAX_ZOOM, MIN_ZOOM, init_image_widget, wheel_zoom_or_step, zoom_about
from .qimage import wrap_qimage

log = logging.getLogger(__name__)

VIEWS = ("axial", "coronal", "sagittal")
TITLES = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal"}
#: Colours of the views' frames and of their reference lines in the other views.
COLORS = {"axial": (235, 90, 80), "coronal": (90, 200, 90), "sagittal": (240, 200, 60)}
_PLANES = {"axial": axial_plane, "coronal": coronal_plane, "sagittal": sagittal_plane}
CURSOR_GAP_PX = 12.0


# ----------------------------------------------------------------- building the volume
def series_sources(archive, rows: list[dict]) -> list[Any]:
    """What :func:`load_volumes` reads for IMAGE rows: file paths, or datasets for a memory store."""
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r["SOPInstanceUID"] not in seen:
            seen.add(r["SOPInstanceUID"])
            unique.append(r)
    paths = [archive.instance_file(r) for r in unique]
    if all(p is not None and p.is_file() for p in paths):
        return [str(p) for p in paths]
    import io

    import pydicom

    return [pydicom.dcmread(io.BytesIO(archive.read_instance(r)), force=True) for r in unique]


def build_volume(archive, rows: list[dict]) -> Volume:
    """The largest volume the series' images form (worker thread; raises VolumeError)."""
    vols = load_volumes(series_sources(archive, rows))
    if not vols:
        raise VolumeError("the series forms no volume", code="empty")
    return max(vols, key=lambda v: v.shape[0] * v.shape[1] * v.shape[2])


def _native_spacing(volume: Volume, direction: np.ndarray) -> float:
    """Voxel size along the volume axis closest to ``direction`` (mm)."""
    d = volume.direction  # columns: column, row, slice axes
    sizes = (volume.spacing[2], volume.spacing[1], volume.spacing[0])
    k = int(np.argmax(np.abs(d.T @ direction)))
    return float(sizes[k])


def _axis_count(volume: Volume, direction: np.ndarray) -> tuple[int, float]:
    """(number of voxels, step in mm) along the volume axis closest to ``direction``."""
    d = volume.direction
    k = int(np.argmax(np.abs(d.T @ direction)))
    n = (volume.shape[2], volume.shape[1], volume.shape[0])[k]
    return n, _native_spacing(volume, direction)


def voxel_grid_slice(volume: Volume, plane: ImagePlane, tol: float = 1e-6) -> np.ndarray | None:
    """The voxels of ``plane`` by plain array slicing, when it samples the voxel grid exactly.

    That is the case of the MPR planes of an orthogonal acquisition (axis
    directions, native spacing, cursor on voxel centres): then
    :func:`reslice` would interpolate with weights 0 and give these very
    values, at several times the cost.  Returns a view ``(rows, columns)``, or
    None when the plane is oblique, off-grid or leaves the volume (then the
    caller reslices).
    """
    m = np.linalg.inv(volume.affine) @ plane.affine  # (col, row, slice) index of output (c, r)
    p0, du, dv = m[:3, 3], m[:3, 0], m[:3, 1]
    nz_u = np.flatnonzero(np.abs(du) > tol)
    nz_v = np.flatnonzero(np.abs(dv) > tol)
    if len(nz_u) != 1 or len(nz_v) != 1 or nz_u[0] == nz_v[0]:
        return None
    au, av = int(nz_u[0]), int(nz_v[0])
    su, sv = du[au], dv[av]
    if abs(abs(su) - 1) > tol or abs(abs(sv) - 1) > tol or np.any(np.abs(p0 - np.rint(p0)) > tol):
        return None
    f = 3 - au - av
    start = np.rint(p0).astype(int)
    sizes = (volume.shape[2], volume.shape[1], volume.shape[0])  # along col, row, slice
    rows, cols = plane.rows, plane.columns

    def span(axis: int, n: int, step: float) -> slice | None:
        a, b = start[axis], start[axis] + (n - 1) * int(np.sign(step))
        if min(a, b) < 0 or max(a, b) >= sizes[axis]:
            return None
        if step > 0:
            return slice(a, b + 1)
        return slice(a, b - 1 if b > 0 else None, -1)

    s_u, s_v = span(au, cols, su), span(av, rows, sv)
    if s_u is None or s_v is None or not (0 <= start[f] < sizes[f]):
        return None
    index: list[Any] = [None, None, None]
    index[2 - f], index[2 - au], index[2 - av] = int(start[f]), s_u, s_v
    sub = volume.array[tuple(index)]
    return sub if (2 - av) < (2 - au) else sub.T


@dataclass
class ViewGeometry:
    """The fixed part of one view's plane: direction, grid, extent (only the offset moves)."""

    name: str
    base: ImagePlane  # through the volume centre
    count: int  # planes along the normal
    step: float  # mm between planes
    normal: np.ndarray = None  # type: ignore[assignment]
    center: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.normal = self.base.normal
        self.center = self.base.center

    @classmethod
    def of(cls, volume: Volume, name: str) -> ViewGeometry:
        probe = _PLANES[name](volume, volume.center, size=(2, 2), spacing=1.0)
        su = _native_spacing(volume, probe.row_cosine)
        sv = _native_spacing(volume, probe.col_cosine)
        base = _PLANES[name](volume, volume.center, spacing=(sv, su))
        count, step = _axis_count(volume, probe.normal)
        return cls(name, base, count, step)

    def plane_at(self, point: np.ndarray) -> ImagePlane:
        """The plane of this view through ``point`` (LPS)."""
        b = self.base
        n = self.normal
        d = float((np.asarray(point, float) - self.center) @ n)
        return ImagePlane(b.position + d * n, b.row_cosine, b.col_cosine, b.pixel_spacing, b.rows, b.columns,
                          self.step)


# ----------------------------------------------------------------------- shared state
class MprModel(QObject):
    """Volume, cursor, window and inversion shared by the three views."""

    changed = Signal(str)  # "volume", "cursor", "window"

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.volume: Volume | None = None
        self.geometry: dict[str, ViewGeometry] = {}
        self.cursor: np.ndarray | None = None
        self.window: Window | None = None
        self.invert = False

    def set_volume(self, volume: Volume, cursor: Any = None, window: Window | None = None) -> None:
        self.volume = volume
        self.geometry = {name: ViewGeometry.of(volume, name) for name in VIEWS}
        self.cursor = None
        self.set_cursor(volume.center if cursor is None else cursor, emit=False)
        if window is not None:
            self.window = window
        elif self.window is None:
            self.window = volume.window or _auto_window(volume)
        self.changed.emit("volume")

    def snap(self, point: Any) -> np.ndarray:
        """``point`` moved to the nearest voxel centre inside the volume."""
        v = self.volume
        ijk = v.patient_to_index(np.asarray(point, float))[0]
        s, r, c = v.shape
        ijk = np.clip(np.rint(ijk), 0, [c - 1, r - 1, s - 1])
        return v.index_to_patient(ijk)[0]

    def set_cursor(self, point: Any, *, emit: bool = True) -> None:
        if self.volume is None:
            return
        p = self.snap(point)
        if self.cursor is not None and np.allclose(p, self.cursor):
            return
        self.cursor = p
        if emit:
            self.changed.emit("cursor")

    def move(self, name: str, steps: int) -> None:
        """Move the cursor ``steps`` planes along the normal of view ``name``."""
        g = self.geometry.get(name)
        if g is None or self.cursor is None:
            return
        self.set_cursor(self.cursor + steps * g.step * g.base.normal)

    def set_window(self, center: float, width: float) -> None:
        self.window = Window(center, max(1.0, width))
        self.changed.emit("window")

    def set_invert(self, on: bool) -> None:
        self.invert = bool(on)
        self.changed.emit("window")

    def value_at(self, point: Any) -> float | None:
        """Voxel value (modality units) nearest to ``point``, None outside."""
        v = self.volume
        if v is None:
            return None
        ijk = np.rint(v.patient_to_index(np.asarray(point, float))[0]).astype(int)
        s, r, c = v.shape
        if not (0 <= ijk[0] < c and 0 <= ijk[1] < r and 0 <= ijk[2] < s):
            return None
        return float(v.array[ijk[2], ijk[1], ijk[0]])


def _auto_window(volume: Volume) -> Window:
    if volume.units.upper() == "HU" or volume.modality == "CT":
        return Window(40.0, 400.0)
    sub = volume.array[:: max(1, volume.shape[0] // 16), ::4, ::4]
    lo, hi = (float(x) for x in np.percentile(sub, (1, 99)))
    return Window.from_range(lo, hi if hi > lo else lo + 1)


# ----------------------------------------------------------------------------- a view
class MprView(QWidget):
    """One plane (axial, coronal or sagittal) of the shared volume."""

    activated = Signal()
    cursorInfo = Signal(str)

    def __init__(self, model: MprModel, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = model
        self.name = name
        init_image_widget(self, f"mprView_{name}", 120)
        self.zoom = 1.0  # screen pixels per mm
        self.pan = QPointF(0, 0)
        self.fit_mode = True
        self.message = ""
        self.frames_painted = 0
        self._values: np.ndarray | None = None
        self._plane: ImagePlane | None = None
        self._plane_key = None
        self._plane_normal: np.ndarray | None = None
        self._cuts: dict[str, tuple[float, float]] = {}
        self._cuts_key = None
        self._values_key = None
        self._rendered: np.ndarray | None = None
        self._qimage: QImage | None = None
        self._image_key = None
        self._drag: dict | None = None
        self._mouse: QPointF | None = None
        self._font = QFont(self.font())
        self._font.setPointSizeF(max(8.0, self._font.pointSizeF()))
        self._title_font = QFont(self._font)
        self._title_font.setBold(True)
        self._letter_font = QFont(self._font)
        self._letter_font.setPointSizeF(self._font.pointSizeF() * 1.3)
        self._letter_font.setBold(True)
        self.color = QColor(*COLORS[name])
        model.changed.connect(self._model_changed)

    # -- geometry -------------------------------------------------------------
    @property
    def geometry_(self) -> ViewGeometry | None:
        return self.model.geometry.get(self.name)

    def plane(self) -> ImagePlane | None:
        g = self.geometry_
        cur = self.model.cursor
        if g is None or cur is None:
            return None
        key = (id(g), float((cur - g.center) @ g.normal))
        if self._plane_key != key:
            self._plane = g.plane_at(cur)
            self._plane_normal = g.normal
            self._plane_key = key
        return self._plane

    def plane_index(self) -> int:
        """0-based index of the plane along the normal (what the wheel steps through)."""
        g = self.geometry_
        if g is None or self.model.cursor is None:
            return 0
        d = float((self.model.cursor - g.center) @ g.normal)
        return int(round(d / g.step + (g.count - 1) / 2.0))

    def _spacing(self) -> tuple[float, float]:
        g = self.geometry_
        return g.base.pixel_spacing if g is not None else (1.0, 1.0)

    def fit_zoom(self) -> float:
        g = self.geometry_
        if g is None:
            return 1.0
        sr, sc = g.base.pixel_spacing
        dw, dh = g.base.columns * sc, g.base.rows * sr
        return max(1e-3, min(self.width() / dw, self.height() / dh))

    def fit(self) -> None:
        self.fit_mode = True
        self.zoom = self.fit_zoom()
        self.pan = QPointF(0, 0)
        self.update()

    def set_zoom(self, zoom: float, around: QPointF | None = None) -> None:
        fz = self.fit_zoom()
        zoom_about(self, max(fz * MIN_ZOOM, min(fz * MAX_ZOOM, zoom)), around)
        self.update()

    def transform(self) -> QTransform:
        """Image coordinates (pixel (c, r) covers [c, c+1) x [r, r+1)) -> widget coordinates."""
        g = self.geometry_
        t = QTransform()
        if g is None:
            return t
        sr, sc = g.base.pixel_spacing
        t.translate(self.width() / 2 + self.pan.x(), self.height() / 2 + self.pan.y())
        t.scale(self.zoom * sc, self.zoom * sr)
        t.translate(-g.base.columns / 2, -g.base.rows / 2)
        return t

    def widget_to_image(self, p: QPointF) -> tuple[float, float]:
        inv, _ = self.transform().inverted()
        q = inv.map(QPointF(p))
        return q.x(), q.y()

    def image_to_widget(self, x: float, y: float) -> QPointF:
        return self.transform().map(QPointF(x, y))

    def widget_to_patient(self, p: QPointF) -> np.ndarray | None:
        plane = self.plane()
        if plane is None:
            return None
        x, y = self.widget_to_image(p)
        return plane.pixel_to_patient(x - 0.5, y - 0.5)[0]

    def patient_to_widget(self, point: Any) -> QPointF | None:
        plane = self.plane()
        if plane is None:
            return None
        c, r, _ = plane.patient_to_pixel(np.asarray(point, float))[0]
        return self.image_to_widget(c + 0.5, r + 0.5)

    def orientation_letters(self) -> dict[str, str]:
        g = self.geometry_
        if g is None:
            return {}
        u, v = g.base.row_cosine, g.base.col_cosine
        return {"left": direction_letters(-u), "right": direction_letters(u),
                "top": direction_letters(-v), "bottom": direction_letters(v)}

    def resizeEvent(self, event):  # noqa: N802
        if self.fit_mode:
            self.zoom = self.fit_zoom()
        super().resizeEvent(event)

    # -- pixels ---------------------------------------------------------------
    def values(self) -> np.ndarray | None:
        """The resliced plane in modality units (what :func:`reslice` gives for :meth:`plane`)."""
        plane = self.plane()
        vol = self.model.volume
        if plane is None or vol is None:
            return None
        key = (id(vol), self._plane_key)
        if key != self._values_key:
            dtype = vol.array.dtype if vol.array.dtype == np.int16 else np.float32
            native = voxel_grid_slice(vol, plane)
            if native is not None:
                self._values = np.ascontiguousarray(native, dtype=dtype)
            else:
                self._values = reslice(vol, plane, dtype=dtype)
            self._values_key = key
        return self._values

    def rendered(self) -> np.ndarray | None:
        """The 8-bit image on screen (before scaling)."""
        self._ensure_image()
        return self._rendered

    def _ensure_image(self) -> QImage | None:
        vals = self.values()
        w = self.model.window
        if vals is None or w is None:
            self._qimage = None
            return None
        key = (self._values_key, w, self.model.invert)
        if key != self._image_key or self._qimage is None:
            img8 = apply_window(vals, w, invert=self.model.invert)
            self._rendered = np.ascontiguousarray(img8, dtype=np.uint8)
            self._qimage = wrap_qimage(self._rendered)
            self._image_key = key
        return self._qimage

    # -- model ----------------------------------------------------------------
    def _model_changed(self, what: str) -> None:
        if what == "volume":
            self._values_key = self._image_key = None
            self.message = ""
            self.fit()
        self.update()

    # -- painting -------------------------------------------------------------
    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.GlobalColor.black)
        img = self._ensure_image()
        if img is not None:
            p.save()
            p.setTransform(self.transform())
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawImage(QPointF(0, 0), img)
            p.restore()
            self._paint_reference_lines(p)
            self._paint_overlays(p)
            self.frames_painted += 1
        elif self.message:
            p.setPen(QColor(200, 200, 200))
            p.setFont(self._font)
            p.drawText(self.rect().adjusted(10, 10, -10, -10),
                       Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.message)
        pen = QPen(self.color, 3 if self.hasFocus() else 1.5)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(QRectF(self.rect()).adjusted(1, 1, -1, -1))
        p.end()

    def _cut_directions(self) -> dict[str, tuple[float, float]]:
        """For each other view, the direction (image pixels) of the line where its plane cuts this one."""
        g = self.geometry_
        if g is None:
            return {}
        key = id(self.model.geometry)
        if self._cuts_key != key:
            sr, sc = g.base.pixel_spacing
            cuts = {}
            for other, og in self.model.geometry.items():
                d = np.cross(g.normal, og.normal)
                if other == self.name or np.linalg.norm(d) < 1e-6:
                    continue  # parallel planes do not cut
                cuts[other] = (float(d @ g.base.row_cosine) / sc, float(d @ g.base.col_cosine) / sr)
            self._cuts, self._cuts_key = cuts, key
        return self._cuts

    def reference_lines(self) -> dict[str, tuple[QPointF, QPointF]]:
        """For each other view: two widget points on the line where its plane cuts this one."""
        plane = self.plane()
        cursor = self.model.cursor
        out: dict[str, tuple[QPointF, QPointF]] = {}
        if plane is None or cursor is None:
            return out
        col, row, _ = plane.patient_to_pixel(cursor)[0]
        t = self.transform()
        x, y = float(col) + 0.5, float(row) + 0.5
        c = t.map(QPointF(x, y))
        for other, (dx, dy) in self._cut_directions().items():
            out[other] = (c, t.map(QPointF(x + 10.0 * dx, y + 10.0 * dy)))
        return out

    def _paint_reference_lines(self, p: QPainter) -> None:
        lines = self.reference_lines()
        if not lines:
            return
        W, H = float(self.width()), float(self.height())
        span = math.hypot(W, H)
        for other, (c, q) in lines.items():
            dx, dy = q.x() - c.x(), q.y() - c.y()
            n = math.hypot(dx, dy)
            if n == 0:
                continue
            ux, uy = dx / n, dy / n
            pen = QPen(QColor(*COLORS[other]), 1)
            pen.setCosmetic(True)
            p.setPen(pen)
            # Not antialiased: the lines of orthogonal views are axis-aligned (and far cheaper so).
            for sgn in (1, -1):
                a = QPointF(c.x() + sgn * ux * CURSOR_GAP_PX, c.y() + sgn * uy * CURSOR_GAP_PX)
                b = QPointF(c.x() + sgn * ux * span, c.y() + sgn * uy * span)
                p.drawLine(_clip(a, b, W, H))

    def overlay_text(self) -> dict[str, list[str]]:
        g = self.geometry_
        cur = self.model.cursor
        tl, bl, br = [TITLES[self.name]], [], []
        if g is not None and cur is not None:
            k = int(np.argmax(np.abs(g.base.normal)))
            loc = float(cur[k])  # the patient coordinate the plane fixes (x, y or z)
            tl.append(f"Im: {self.plane_index() + 1}/{g.count}  {'xyz'[k]}: {loc:.1f} mm")
            sr, sc = g.base.pixel_spacing
            tl.append(f"{g.base.columns}\u00d7{g.base.rows}  {sc:g}\u00d7{sr:g} mm")
        w = self.model.window
        if w is not None:
            bl.append(f"WL: {w.center:.0f}  WW: {w.width:.0f}" + ("  (inverted)" if self.model.invert else ""))
        bl.append(f"Zoom: {self.zoom * 100 * min(self._spacing()):.0f}%")
        if self._mouse is not None:
            pt = self.widget_to_patient(self._mouse)
            val = self.model.value_at(pt) if pt is not None else None
            if val is not None:
                units = self.model.volume.units if self.model.volume is not None else ""
                br.append(f"Value: {val:.0f} {units}".rstrip())
        return {"tl": tl, "bl": bl, "br": br}

    def _paint_overlays(self, p: QPainter) -> None:
        fm = QFontMetricsF(self._font)
        lh, m = fm.height(), 8.0
        W, H = self.width(), self.height()
        ov = self.overlay_text()
        for i, line in enumerate(ov["tl"]):
            p.setFont(self._title_font if i == 0 else self._font)
            _shadow(p, QPointF(m, m + fm.ascent() + i * lh), line, self.color if i == 0 else None)
        p.setFont(self._font)
        n = len(ov["bl"])
        for i, line in enumerate(ov["bl"]):
            _shadow(p, QPointF(m, H - m - (n - 1 - i) * lh - fm.descent()), line)
        n = len(ov["br"])
        for i, line in enumerate(ov["br"]):
            _shadow(p, QPointF(W - m - fm.horizontalAdvance(line), H - m - (n - 1 - i) * lh - fm.descent()), line)
        letters = self.orientation_letters()
        p.setFont(self._letter_font)
        bfm = QFontMetricsF(self._letter_font)
        yellow = QColor(255, 235, 120)
        if letters.get("top"):
            t = letters["top"]
            _shadow(p, QPointF(W / 2 - bfm.horizontalAdvance(t) / 2, m + bfm.ascent()), t, yellow)
        if letters.get("bottom"):
            t = letters["bottom"]
            _shadow(p, QPointF(W / 2 - bfm.horizontalAdvance(t) / 2, H - m - bfm.descent()), t, yellow)
        if letters.get("left"):
            _shadow(p, QPointF(m, H / 2 + bfm.ascent() / 2), letters["left"], yellow)
        if letters.get("right"):
            t = letters["right"]
            _shadow(p, QPointF(W - m - bfm.horizontalAdvance(t), H / 2 + bfm.ascent() / 2), t, yellow)

    # -- input ----------------------------------------------------------------
    def mousePressEvent(self, e):  # noqa: N802
        self.activated.emit()
        self.setFocus()
        pos = e.position()
        btn = e.button()
        if btn == Qt.MouseButton.LeftButton and not (e.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            self._drag = {"mode": "cursor"}
            self._move_cursor_to(pos)
        elif btn == Qt.MouseButton.RightButton or btn == Qt.MouseButton.LeftButton:
            w = self.model.window
            self._drag = {"mode": "wl", "pos": QPointF(pos), "window": (w.center, w.width) if w else None}
        elif btn == Qt.MouseButton.MiddleButton:
            self._drag = {"mode": "pan", "pos": QPointF(pos), "pan": QPointF(self.pan)}

    def _move_cursor_to(self, pos: QPointF) -> None:
        pt = self.widget_to_patient(pos)
        if pt is None or self.model.cursor is None:
            return
        # Keep the cursor's depth along this view's normal: only the other two planes move.
        n = self.plane().normal
        pt = pt + float((self.model.cursor - pt) @ n) * n
        self.model.set_cursor(pt)

    def mouseMoveEvent(self, e):  # noqa: N802
        pos = e.position()
        self._mouse = QPointF(pos)
        d = self._drag
        if d is not None:
            if d["mode"] == "cursor":
                self._move_cursor_to(pos)
            elif d["mode"] == "wl" and d["window"] is not None:
                from .imageview import wl_sensitivity

                c0, w0 = d["window"]
                k = wl_sensitivity(w0)
                self.model.set_window(c0 + (pos.y() - d["pos"].y()) * k,
                                      max(1.0, w0 + (pos.x() - d["pos"].x()) * k))
            elif d["mode"] == "pan":
                self.pan = d["pan"] + (pos - d["pos"])
                self.fit_mode = False
        self.cursorInfo.emit(" \u2022 ".join(self.overlay_text()["br"]))
        self.update()

    def mouseReleaseEvent(self, e):  # noqa: N802
        self._drag = None

    def leaveEvent(self, e):  # noqa: N802
        self._mouse = None
        self.update()
        super().leaveEvent(e)

    def wheelEvent(self, e):  # noqa: N802
        wheel_zoom_or_step(self, e)

    def step(self, delta: int) -> None:
        self.model.move(self.name, delta)

    _KEY_STEPS = {Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1, Qt.Key.Key_PageUp: -10, Qt.Key.Key_PageDown: 10}

    def event(self, e):
        # The viewer's window shortcuts use these keys for the 2D panes; in MPR they move this plane.
        if e.type() == QEvent.Type.ShortcutOverride and e.key() in self._KEY_STEPS \
                and e.modifiers() == Qt.KeyboardModifier.NoModifier:
            e.accept()
            return True
        return super().event(e)

    def keyPressEvent(self, e):  # noqa: N802
        steps = self._KEY_STEPS.get(e.key())
        if steps is not None:
            self.step(steps)
            return
        super().keyPressEvent(e)


def _clip(a: QPointF, b: QPointF, w: float, h: float) -> QLineF:
    """The part of segment a-b inside [0, w] x [0, h] (Liang-Barsky); a point when outside."""
    x0, y0, dx, dy = a.x(), a.y(), b.x() - a.x(), b.y() - a.y()
    t0, t1 = 0.0, 1.0
    for pk, qk in ((-dx, x0), (dx, w - x0), (-dy, y0), (dy, h - y0)):
        if pk == 0:
            if qk < 0:
                return QLineF(a, a)
            continue
        t = qk / pk
        if pk < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
    if t0 > t1:
        return QLineF(a, a)
    return QLineF(x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy)


def _shadow(p: QPainter, pos: QPointF, text: str, color: QColor | None = None) -> None:
    p.setPen(QColor(0, 0, 0))
    p.drawText(pos + QPointF(1, 1), text)
    p.setPen(color or QColor(255, 255, 255))
    p.drawText(pos, text)


# ---------------------------------------------------------------------------- the panel
class MprWidget(QWidget):
    """Axial | coronal over sagittal | information, around one :class:`MprModel`.

    :meth:`show_series` builds the volume of a :class:`~osirix_py.gui.series.SeriesStack`
    in the background (``ctx.submit``); ``volumeReady`` fires when it is shown.
    """

    volumeReady = Signal()
    cursorInfo = Signal(str)

    def __init__(self, ctx, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setObjectName("mprWidget")
        self.model = MprModel(self)
        self.views = {name: MprView(self.model, name) for name in VIEWS}
        self.info = QLabel()
        self.info.setObjectName("mprInfo")
        self.info.setTextFormat(Qt.TextFormat.RichText)
        self.info.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.info.setWordWrap(True)
        self.info.setMargin(12)
        self.info.setStyleSheet("QLabel#mprInfo { background: #111; color: #ddd; }")
        self.info.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        grid.addWidget(self.views["axial"], 0, 0)
        grid.addWidget(self.views["coronal"], 0, 1)
        grid.addWidget(self.views["sagittal"], 1, 0)
        grid.addWidget(self.info, 1, 1)
        for r in range(2):
            grid.setRowStretch(r, 1)
            grid.setColumnStretch(r, 1)
        for v in self.views.values():
            v.cursorInfo.connect(self.cursorInfo)
            v.activated.connect(lambda v=v: setattr(self, "active_name", v.name))
        self.active_name = "axial"
        self.stack = None
        self.error = ""
        self._pending: Any = None
        self._series_key = None
        self._info_timer = QTimer(self)
        self._info_timer.setSingleShot(True)
        self._info_timer.setInterval(100)
        self._info_timer.timeout.connect(self._update_info)
        self.model.changed.connect(self._model_changed)

    @property
    def active_view(self) -> MprView:
        return self.views[self.active_name]

    @property
    def loading(self) -> bool:
        return self._pending is not None

    def show_series(self, stack, cursor: Any = None, window: Window | None = None,
                    on_ready: Callable[[], None] | None = None) -> None:
        """Show the series of ``stack`` (a no-op when it is already shown)."""
        key = stack.series_uid
        if key == self._series_key and (self.model.volume is not None or self._pending is not None):
            if cursor is not None and self.model.volume is not None:
                self.model.set_cursor(cursor)
            return
        self._series_key = key
        self.stack = stack
        self.error = ""
        with stack._lock:
            rows = [s.row for s in stack.slices]
        token = object()
        self._pending = token
        self._set_message(f"Building the volume of {len(rows)} images\u2026")
        archive = self.ctx.archive

        def done(volume):
            if self._pending is not token:
                return
            self._pending = None
            self.model.set_volume(volume, cursor=cursor, window=window)
            self.volumeReady.emit()
            if on_ready is not None:
                on_ready()

        def failed(exc):
            if self._pending is not token:
                return
            self._pending = None
            self.error = f"No MPR for this series: {getattr(exc, 'reason', None) or exc}"
            log.info("MPR of %s: %s", key, exc)
            self._set_message(self.error)

        fut = self.ctx.submit(lambda: build_volume(archive, rows), done, failed)
        if fut is None:
            failed(RuntimeError("the application is closing"))

    def cancel(self) -> None:
        """Forget a volume still being built (the window closes): its result is dropped."""
        self._pending = None

    def _set_message(self, text: str) -> None:
        for v in self.views.values():
            v.message = text
            v.update()
        self.info.setText(f"<p>{text}</p>")

    def _model_changed(self, what: str) -> None:
        if what == "volume":
            self._update_info()
            return
        if self.stack is not None:
            self.stack.interacting()  # the 2D loader yields while the cross or the window moves
        if not self._info_timer.isActive():  # rich text layout: at most 10 times a second
            self._info_timer.start()

    def _update_info(self) -> None:
        vol = self.model.volume
        if vol is None:
            return
        s, r, c = vol.shape
        sp = vol.spacing
        cur = self.model.cursor
        val = self.model.value_at(cur) if cur is not None else None
        info = self.stack.info if self.stack is not None else {}
        desc = f"{info.get('SeriesNumber') or ''} {info.get('SeriesDescription') or ''}".strip()
        lines = [f"<b>MPR</b> \u2014 {desc or vol.description or 'series'} ({vol.modality})",
                 f"Volume: {c} \u00d7 {r} \u00d7 {s} voxels",
                 f"Voxel: {sp[2]:g} \u00d7 {sp[1]:g} \u00d7 {sp[0]:g} mm"]
        if cur is not None:
            lines.append(f"Cursor (LPS): {cur[0]:.1f}, {cur[1]:.1f}, {cur[2]:.1f} mm")
        if val is not None:
            lines.append(f"Value at cursor: {val:.0f} {vol.units}".rstrip())
        w = self.model.window
        if w is not None:
            lines.append(f"WL: {w.center:.0f}  WW: {w.width:.0f}")
        issues = [i.message for i in vol.report.issues if i.severity != "info"]
        if issues:
            lines.append("<span style='color:#fb6'>" + "<br>".join(issues[:3]) + "</span>")
        lines.append("<br><span style='color:#999'>Left click/drag: move the cross \u2022 "
                     "right drag: window/level \u2022 wheel or \u2191\u2193: planes \u2022 "
                     "Ctrl+wheel: zoom \u2022 middle drag: pan</span>")
        self.info.setText("<br>".join(lines))

    def set_window(self, window: Window | None) -> None:
        if window is not None:
            self.model.set_window(window.center, window.width)

    def set_invert(self, on: bool) -> None:
        self.model.set_invert(on)

    def default_window(self) -> None:
        """The series' own window (else the modality's default)."""
        vol = self.model.volume
        if vol is not None:
            self.set_window(vol.window or _auto_window(vol))

    def fit(self) -> None:
        for v in self.views.values():
            v.fit()
