"""The 2D image view: QWidget + QPainter (no OpenGL, so it works offscreen and over X).

One ``ImageView`` shows one slice of a :class:`~osirix_py.gui.series.SeriesStack`
with its own window/level, zoom, pan, rotation, flips and inversion, the
corner overlays, orientation letters, a scale bar, the value under the
cursor and the ROIs of the slice.  Pixels go through the imaging core only:
``DisplayPipeline.render`` (modality LUT + window -> 8 bit) for the image,
``ImagePlane`` for geometry, ``osirix_py.imaging.roi`` for ROIs.

Mouse: left = current tool (W/L by default), right-drag = W/L, middle-drag =
pan, wheel = slices, Ctrl+wheel = zoom around the cursor.

Paint path (scrolling and W/L drags run at well over 60 frames a second on
512x512 slices): the pipeline's cached 8-bit LUT is composed once per window
with a grey -> RGB32 table, so a frame is one ``np.take`` of the stored
values into a reused 32-bit buffer that a QImage wraps without a copy (Qt
scales RGB32 about twice as fast as Grayscale8).  The 8-bit image that tests
and exports compare with the imaging core (:meth:`ImageView.rendered`) is
made only when asked for.  Overlay lines that depend only on the series, and
the orientation letters, are cached.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QFontMetricsF,
    QImage,
    QPainter,
    QPainterPath,
    QPen,
    QPolygonF,
    QTransform,
)
from PySide6.QtWidgets import QInputDialog, QSizePolicy, QWidget

from ..dicom.geometry import direction_letters
from ..dicom.pixels import Window
from ..dicom.tags import find_attribute
from ..imaging.roi import ImageReference
from .browser_model import format_person_name, format_value
from .notify import is_server_mode
from .presets import initial_window, preset_window
from .qimage import wrap_qimage
from .roi_items import (
    DEFAULT_COLOR,
    ROI_TOOLS,
    SELECTED_COLOR,
    RoiItem,
    build_roi,
    distance_to_polyline,
    point_in_polygon,
)
from .series import Decoded, SeriesStack

log = logging.getLogger(__name__)

TOOLS = ("wl", "pan", "zoom", "select", *ROI_TOOLS)
HIT_PX = 6.0
MIN_ZOOM, MAX_ZOOM = 0.05, 40.0

#: Grey level -> opaque RGB32 pixel.
_GREY32 = (np.uint32(0xFF000000) | (np.arange(256, dtype=np.uint32) * np.uint32(0x010101))).astype(np.uint32)
_UNSIGNED_VIEW = {np.dtype(np.int16): np.uint16, np.dtype(np.uint16): np.uint16,
                  np.dtype(np.int8): np.uint8, np.dtype(np.uint8): np.uint8}


#: Zoom factor per wheel notch (Ctrl+wheel) in every image view.
WHEEL_ZOOM = 1.15


def init_image_widget(view: QWidget, object_name: str, minimum: int) -> None:
    """The widget settings every image view shares: its object name (tests and
    style sheets find it by that), mouse tracking for the cursor read-out,
    keyboard focus, growing with its layout, and an opaque paint."""
    view.setObjectName(object_name)
    view.setMouseTracking(True)
    view.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    view.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
    view.setMinimumSize(minimum, minimum)
    view.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)


def wheel_zoom_or_step(view, e) -> None:
    """Ctrl+wheel zooms *view* about the cursor; the wheel alone steps through
    its slices (``view.step(+-1)``)."""
    dy = e.angleDelta().y()
    if dy == 0:
        return
    if e.modifiers() & Qt.KeyboardModifier.ControlModifier:
        view.set_zoom(view.zoom * (WHEEL_ZOOM ** (dy / 120.0)), around=e.position())
    else:
        view.step(-1 if dy > 0 else 1)
    e.accept()


def zoom_about(view, zoom: float, around: QPointF | None = None) -> None:
    """Set ``view.zoom`` keeping the image point under *around* (widget coordinates) in place.

    For the image views here: each has ``zoom``, ``pan``, ``fit_mode`` and the
    ``widget_to_image`` / ``image_to_widget`` pair; the caller clamps and repaints.
    """
    if around is not None:
        x, y = view.widget_to_image(around)
        view.zoom = zoom
        view.pan += QPointF(around) - view.image_to_widget(x, y)
    else:
        view.zoom = zoom
    view.fit_mode = False


class ImageView(QWidget):
    """Shows one slice of a series; emits ``sliceChanged(index)`` when it moves."""

    sliceChanged = Signal(int)
    viewChanged = Signal()  # W/L, zoom, rotation ... (for the window's controls)
    activated = Signal()  # the user clicked into this view
    cursorInfo = Signal(str)
    roisChanged = Signal()

    def __init__(self, ctx, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        init_image_widget(self, "imageView", 160)
        self.stack: SeriesStack | None = None
        self.index = 0
        self.window: Window | None = None
        self.invert = False
        self.zoom = 1.0
        self.pan = QPointF(0, 0)
        self.rotation = 0  # degrees clockwise, multiple of 90
        self.flip_h = False
        self.flip_v = False
        self.fit_mode = True
        self.tool = "wl"
        self.overlays = True
        self.active = False
        self._qimage: QImage | None = None
        self._qimage_key = None
        self._rendered: np.ndarray | None = None
        self._rendered_key = None
        self._buf32: np.ndarray | None = None
        self._lut32: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._static_overlay: tuple[int, list[str], list[str]] | None = None
        self._letters_cache: dict[tuple, dict[str, str]] = {}
        self._study_rois: dict[str, list] | None = None
        self._error = ""
        self._drag: dict | None = None
        self._draft: dict | None = None
        self._cursor_img: tuple[float, float] | None = None
        self._rois: dict[tuple[str, int], list[RoiItem]] = {}
        self.selected: RoiItem | None = None
        #: Paint events that drew an image (benchmarks and tests watch it).
        self.frames_painted = 0
        self._font = QFont(self.font())
        self._font.setPointSizeF(max(8.0, self._font.pointSizeF()))

    # ================================================================ state
    def set_stack(self, stack: SeriesStack, index: int = 0) -> None:
        self.stack = stack
        self.window = None
        self._static_overlay = None
        self._lut32.clear()
        self._study_rois = self._fetch_study_rois(stack)
        self._rois.clear()
        self.selected = None
        self._draft = None
        self.index = -1
        self.set_index(index, force=True)
        self.fit()

    def current(self) -> Decoded | None:
        if self.stack is None or not len(self.stack):
            return None
        try:
            dec = self.stack.get(self.index)
            self._error = ""
            return dec
        except Exception as exc:  # noqa: BLE001 - shown in the view
            self._error = f"Cannot display this image: {exc}"
            return None

    def current_slice(self):
        return self.stack.slices[self.index] if self.stack is not None else None

    def set_index(self, index: int, *, force: bool = False) -> None:
        if self.stack is None or not len(self.stack):
            return
        index = max(0, min(int(index), len(self.stack) - 1))
        if index == self.index and not force:
            return
        self.index = index
        self.stack.want(index)
        if self._draft is not None:
            self._draft = None
        dec = self.current()
        if dec is not None and self.window is None and not dec.is_color:
            self.window = initial_window(dec)
        self._load_rois()
        self.update()
        self.sliceChanged.emit(index)
        if self._cursor_img is not None:
            self.cursorInfo.emit(" \u2022 ".join(self.overlay_text()["br"]))

    def step(self, delta: int) -> None:
        self.set_index(self.index + delta)

    def remap_after_reorder(self, key) -> None:
        """The stack sorted its slices: keep showing the same image."""
        if self.stack is None:
            return
        self.index = self.stack.index_of(key)
        self.update()
        self.sliceChanged.emit(self.index)

    def set_window(self, center: float, width: float) -> None:
        self.window = Window(center, max(1.0, width))
        self.update()
        self.viewChanged.emit()

    def default_window(self) -> None:
        dec = self.current()
        if dec is None:
            return
        self.window = initial_window(dec) if not dec.is_color else None
        self.update()
        self.viewChanged.emit()

    def apply_preset(self, preset) -> bool:
        """Apply an imaging-core window preset to the slice on screen."""
        dec = self.current()
        if dec is None or dec.is_color:
            return False
        try:
            w = preset_window(preset, dec)
        except Exception as exc:  # noqa: BLE001 - e.g. an SUV preset on a PET without SUV data
            self.cursorInfo.emit(f"{preset.name}: {exc}")
            return False
        self.window = w
        self.update()
        self.viewChanged.emit()
        return True

    def full_window(self) -> None:
        dec = self.current()
        if dec is None or dec.is_color:
            return
        v = dec.modality_values()
        self.window = Window.from_range(float(v.min()), float(v.max()), "LINEAR")
        self.update()
        self.viewChanged.emit()

    def set_invert(self, on: bool) -> None:
        self.invert = bool(on)
        self.update()
        self.viewChanged.emit()

    def rotate(self, degrees: int) -> None:
        self.rotation = (self.rotation + degrees) % 360
        if self.fit_mode:
            self.fit()
        self.update()
        self.viewChanged.emit()

    def flip(self, horizontal: bool) -> None:
        # Flips act on the screen axes (after rotation), as the user sees them.
        if (self.rotation % 180 == 0) == horizontal:
            self.flip_h = not self.flip_h
        else:
            self.flip_v = not self.flip_v
        self.update()
        self.viewChanged.emit()

    def reset_view(self) -> None:
        self.rotation, self.flip_h, self.flip_v, self.invert = 0, False, False, False
        self.default_window()
        self.fit()

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown tool {tool!r}")
        self.tool = tool
        self._draft = None
        cursors = {"wl": Qt.CursorShape.SizeAllCursor, "pan": Qt.CursorShape.OpenHandCursor,
                   "zoom": Qt.CursorShape.SizeVerCursor, "select": Qt.CursorShape.ArrowCursor}
        self.setCursor(cursors.get(tool, Qt.CursorShape.CrossCursor))
        self.update()

    # ============================================================ geometry
    def _image_size(self) -> tuple[int, int]:
        dec = self.stack.cached(self.index) if self.stack is not None else None
        if dec is not None:
            h, w = dec.stored.shape[:2]
            return w, h
        s = self.current_slice()
        if s is not None:
            return int(s.row.get("Columns") or 512), int(s.row.get("Rows") or 512)
        return 512, 512

    def _aspect(self) -> float:
        """Displayed height of a pixel relative to its width (row / column spacing)."""
        dec = self.stack.cached(self.index) if self.stack is not None else None
        if dec is None:
            return 1.0
        dr, dc = dec.plane.pixel_spacing
        return dr / dc if dc > 0 else 1.0

    def transform(self) -> QTransform:
        """Image coordinates -> widget coordinates."""
        w, h = self._image_size()
        t = QTransform()
        t.translate(self.width() / 2 + self.pan.x(), self.height() / 2 + self.pan.y())
        t.rotate(self.rotation)
        t.scale(self.zoom * (-1 if self.flip_h else 1), self.zoom * self._aspect() * (-1 if self.flip_v else 1))
        t.translate(-w / 2, -h / 2)
        if math.isclose(self.zoom, 1.0) and math.isclose(self._aspect(), 1.0):
            # Actual pixels: keep image pixels on screen pixels (no resampling).
            t = QTransform(t.m11(), t.m12(), t.m21(), t.m22(), round(t.dx()), round(t.dy()))
        return t

    def widget_to_image(self, p: QPointF) -> tuple[float, float]:
        inv, ok = self.transform().inverted()
        q = inv.map(QPointF(p))
        return q.x(), q.y()

    def image_to_widget(self, x: float, y: float) -> QPointF:
        return self.transform().map(QPointF(x, y))

    def fit_zoom(self) -> float:
        w, h = self._image_size()
        a = self._aspect()
        dw, dh = (w, h * a) if self.rotation % 180 == 0 else (h * a, w)
        if dw <= 0 or dh <= 0:
            return 1.0
        return max(MIN_ZOOM, min(self.width() / dw, self.height() / dh))

    def fit(self) -> None:
        self.fit_mode = True
        self.zoom = self.fit_zoom()
        self.pan = QPointF(0, 0)
        self.update()
        self.viewChanged.emit()

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def set_zoom(self, zoom: float, around: QPointF | None = None) -> None:
        zoom_about(self, max(MIN_ZOOM, min(MAX_ZOOM, zoom)), around)
        self.update()
        self.viewChanged.emit()

    def resizeEvent(self, event):  # noqa: N802
        if self.fit_mode:
            self.zoom = self.fit_zoom()
        super().resizeEvent(event)

    def screen_direction(self, dx: float, dy: float) -> np.ndarray | None:
        """Patient (LPS) direction of a screen direction, or None without geometry."""
        dec = self.stack.cached(self.index) if self.stack is not None else None
        s = self.current_slice()
        if dec is None or s is None or not dec.has_geometry:
            return None
        inv, _ = self.transform().inverted()
        o = inv.map(QPointF(0, 0))
        p = inv.map(QPointF(dx, dy))
        dcol, drow = p.x() - o.x(), p.y() - o.y()
        pl = dec.plane
        return dcol * pl.pixel_spacing[1] * pl.row_cosine + drow * pl.pixel_spacing[0] * pl.col_cosine

    def orientation_letters(self) -> dict[str, str]:
        """Letters for the four screen edges (after rotation and flips)."""
        dec = self.stack.cached(self.index) if self.stack is not None else None
        if dec is None or not dec.has_geometry:
            return {"left": "", "right": "", "top": "", "bottom": ""}
        pl = dec.plane
        key = (pl.row_cosine.tobytes(), pl.col_cosine.tobytes(), pl.pixel_spacing, self.rotation,
               self.flip_h, self.flip_v)
        hit = self._letters_cache.get(key)
        if hit is None:
            if len(self._letters_cache) > 64:
                self._letters_cache.clear()
            hit = self._letters_cache[key] = self._compute_letters()
        return dict(hit)

    def _compute_letters(self) -> dict[str, str]:
        out = {}
        for edge, (dx, dy) in {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}.items():
            v = self.screen_direction(dx, dy)
            out[edge] = direction_letters(v) if v is not None else ""
        return out

    def mm_per_screen_pixel(self) -> float | None:
        v = self.screen_direction(1, 0)
        return float(np.linalg.norm(v)) if v is not None else None

    # ============================================================ rendering
    def rendered(self) -> np.ndarray | None:
        """The 8-bit image of the current slice as the view shows it (before zoom)."""
        dec = self.current()
        if dec is None:
            return None
        key = (self.stack.series_uid, self.index, id(dec), self.window, self.invert)
        if key != self._rendered_key or self._rendered is None:
            try:
                self._rendered = self._render8(dec)
            except Exception as exc:  # noqa: BLE001 - shown in the view
                self._error = f"Cannot display this image: {exc}"
                return None
            self._rendered_key = key
        return self._rendered

    def _render8(self, dec: Decoded) -> np.ndarray:
        img8 = dec.pipeline.render(dec.stored, None if dec.is_color else self.window)
        if self.invert:
            img8 = 255 - img8
        return np.ascontiguousarray(img8, dtype=np.uint8)

    def _grey_lut32(self, dec: Decoded) -> tuple[np.ndarray, np.ndarray] | None:
        """(stored viewed as unsigned, RGB32 LUT of the whole chain), or None for the generic path."""
        arr = dec.stored
        view = _UNSIGNED_VIEW.get(arr.dtype)
        if dec.is_color or arr.ndim != 2 or view is None or not arr.flags.c_contiguous:
            return None
        pipe = dec.pipeline
        w = self.window
        if w is None and not pipe.windows and not pipe.voi_luts:
            w = pipe.default_window(arr)  # what DisplayPipeline.render does for such a frame
        lut8 = pipe.lut(arr.dtype, w)  # cached by the (shared) pipeline
        k = (id(lut8), self.invert)
        hit = self._lut32.get(k)
        if hit is None or hit[0] is not lut8:
            if len(self._lut32) > 8:
                self._lut32.clear()
            hit = self._lut32[k] = (lut8, np.take(_GREY32, (255 - lut8) if self.invert else lut8))
        return arr.view(view), hit[1]

    def _ensure_image(self) -> QImage | None:
        dec = self.current()
        if dec is None:
            self._qimage = None
            return None
        key = (self.stack.series_uid, self.index, id(dec), self.window, self.invert)
        if key != self._qimage_key or self._qimage is None:
            try:
                fast = self._grey_lut32(dec)
                if fast is not None:
                    idx, lut32 = fast
                    h, w = idx.shape
                    if self._buf32 is None or self._buf32.shape != (h, w):
                        self._buf32 = np.empty((h, w), np.uint32)
                    np.take(lut32, idx, out=self._buf32)
                    self._qimage = QImage(self._buf32.data, w, h, w * 4, QImage.Format.Format_RGB32)
                else:
                    img8 = self._render8(dec)
                    self._rendered, self._rendered_key = img8, key
                    self._qimage = wrap_qimage(img8)
            except Exception as exc:  # noqa: BLE001 - shown in the view
                self._error = f"Cannot display this image: {exc}"
                self._qimage = None
                return None
            self._qimage_key = key
        return self._qimage

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.GlobalColor.black)
        img = self._ensure_image()
        if img is not None:
            p.save()
            t = self.transform()
            p.setTransform(t)
            smooth = not math.isclose(self.zoom, 1.0) or self.rotation % 90 != 0
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
            p.drawImage(QPointF(0, 0), img)
            p.restore()
            self.frames_painted += 1
            self.stack.start_loading()  # the rest of the series loads once an image shows (cheap)
            self._paint_rois(p)
        if self._error:
            p.setPen(QColor(255, 120, 120))
            p.drawText(self.rect().adjusted(10, 10, -10, -10), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       self._error)
        if self.overlays and self.stack is not None:
            self._paint_overlays(p)
        if self.active:
            p.setPen(QPen(QColor(255, 170, 0), 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(self.rect().adjusted(1, 1, -1, -1))
        p.end()

    # -- overlays ------------------------------------------------------------
    def overlay_text(self) -> dict[str, list[str]]:
        """The four corners' lines (also what tests read)."""
        st = self.stack
        s = self.current_slice()
        dec = self.stack.cached(self.index) if st is not None else None
        tl, tr = self._series_lines()
        bl = []
        if st is not None and s is not None:
            inst = s.row.get("InstanceNumber")
            frame = f" fr {s.frame + 1}/{s.frames}" if s.frames > 1 else ""
            bl.append(f"Im: {self.index + 1}/{len(st)}" + (f" (#{inst}{frame})" if inst is not None else ""))
            if dec is not None and dec.has_geometry:
                loc = float(dec.plane.position @ dec.plane.normal)
                th = dec.plane.thickness
                bl.append(f"Pos: {loc:.2f} mm" + (f"  Thick: {th:g} mm" if th else ""))
        if self.window is not None:
            bl.append(f"WL: {self.window.center:.0f}  WW: {self.window.width:.0f}"
                      + ("  (inverted)" if self.invert else ""))
        view = f"Zoom: {self.zoom * 100:.0f}%"
        if self.rotation:
            view += f"  Rot: {self.rotation}\u00b0"
        if self.flip_h or self.flip_v:
            view += "  Flip: " + "".join(x for x, on in (("H", self.flip_h), ("V", self.flip_v)) if on)
        bl.append(view)
        br = []
        if self._cursor_img is not None and dec is not None:
            c, r = int(math.floor(self._cursor_img[0])), int(math.floor(self._cursor_img[1]))
            v = dec.value_at(c, r)
            if v is not None:
                units = dec.pipeline.modality.units
                br.append(f"X: {c}  Y: {r} px")
                value = f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"
                br.append(f"Value: {value} {units}".rstrip())
        return {"tl": list(tl), "tr": list(tr), "bl": bl, "br": br}

    def _series_lines(self) -> tuple[list[str], list[str]]:
        """The top corners: patient and study lines (they change only with the series)."""
        st = self.stack
        if self._static_overlay is not None and self._static_overlay[0] == id(st):
            return self._static_overlay[1], self._static_overlay[2]
        info = st.info if st is not None else {}
        name = format_person_name(str(info.get("PatientName") or ""))
        tl = [name or "(no name)", f"ID: {info.get('PatientID') or ''}"]
        dob = format_value(find_attribute("PatientBirthDate"), info.get("PatientBirthDate"))
        if dob or info.get("PatientSex"):
            tl.append(f"{dob} {info.get('PatientSex') or ''}".strip())
        study_date = format_value(find_attribute("StudyDate"), info.get("StudyDate"))
        study_time = format_value(find_attribute("StudyTime"), info.get("StudyTime"))
        tr = [str(info.get("StudyDescription") or ""), f"{study_date} {study_time}".strip(),
              f"Se: {info.get('SeriesNumber') or ''} {info.get('SeriesDescription') or ''}".strip(),
              str(info.get("InstitutionName") or "")]
        tr = [x for x in tr if x]
        self._static_overlay = (id(st), tl, tr)
        return tl, tr

    def _paint_overlays(self, p: QPainter) -> None:
        p.setFont(self._font)
        fm = QFontMetricsF(self._font)
        lh = fm.height()
        m = 6.0
        ov = self.overlay_text()
        W, H = self.width(), self.height()
        for i, line in enumerate(ov["tl"]):
            _shadow_text(p, QPointF(m, m + fm.ascent() + i * lh), line)
        for i, line in enumerate(ov["tr"]):
            _shadow_text(p, QPointF(W - m - fm.horizontalAdvance(line), m + fm.ascent() + i * lh), line)
        n = len(ov["bl"])
        for i, line in enumerate(ov["bl"]):
            _shadow_text(p, QPointF(m, H - m - (n - 1 - i) * lh - fm.descent()), line)
        n = len(ov["br"])
        bar_space = 22.0
        for i, line in enumerate(ov["br"]):
            y = H - m - bar_space - (n - 1 - i) * lh - fm.descent()
            _shadow_text(p, QPointF(W - m - fm.horizontalAdvance(line), y), line)
        letters = self.orientation_letters()
        big = QFont(self._font)
        big.setPointSizeF(self._font.pointSizeF() * 1.3)
        big.setBold(True)
        p.setFont(big)
        bfm = QFontMetricsF(big)
        if letters.get("top"):
            t = letters["top"]
            _shadow_text(p, QPointF(W / 2 - bfm.horizontalAdvance(t) / 2, m + bfm.ascent() + 2 * lh + 4), t,
                         QColor(255, 235, 120))
        if letters.get("bottom"):
            t = letters["bottom"]
            _shadow_text(p, QPointF(W / 2 - bfm.horizontalAdvance(t) / 2, H - m - bfm.descent() - bar_space), t,
                         QColor(255, 235, 120))
        if letters.get("left"):
            _shadow_text(p, QPointF(m, H / 2 + bfm.ascent() / 2), letters["left"], QColor(255, 235, 120))
        if letters.get("right"):
            t = letters["right"]
            _shadow_text(p, QPointF(W - m - bfm.horizontalAdvance(t), H / 2 + bfm.ascent() / 2), t,
                         QColor(255, 235, 120))
        p.setFont(self._font)
        self._paint_scale_bar(p)

    def scale_bar(self) -> tuple[float, float] | None:
        """(length in mm, length in screen pixels) of the scale bar, or None."""
        mmpp = self.mm_per_screen_pixel()
        if not mmpp or mmpp <= 0:
            return None
        target = self.width() / 5 * mmpp
        nice = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
        length = max([n for n in nice if n <= target] or [nice[0]])
        return float(length), length / mmpp

    def _paint_scale_bar(self, p: QPainter) -> None:
        sb = self.scale_bar()
        if sb is None:
            return
        mm, px = sb
        W, H = self.width(), self.height()
        x1 = W - 10.0
        x0 = x1 - px
        y = H - 10.0
        pen = QPen(QColor(255, 255, 255), 1.5)
        p.setPen(pen)
        p.drawLine(QPointF(x0, y), QPointF(x1, y))
        for k in range(11 if mm >= 10 else 2):
            xx = x0 + px * k / (10 if mm >= 10 else 1)
            p.drawLine(QPointF(xx, y), QPointF(xx, y - (6 if k in (0, 5, 10) or mm < 10 else 3)))
        label = f"{mm / 10:g} cm" if mm >= 10 else f"{mm:g} mm"
        fm = QFontMetricsF(self._font)
        _shadow_text(p, QPointF(x0 - fm.horizontalAdvance(label) - 6, y), label)

    # -- ROIs ----------------------------------------------------------------
    def _paint_rois(self, p: QPainter) -> None:
        dec = self.stack.cached(self.index) if self.stack is not None else None
        if dec is None:
            return
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setFont(self._font)
        for item in self.roi_items():
            self._paint_roi(p, item, dec, selected=item is self.selected)
        if self._draft is not None:
            self._paint_draft(p, dec)

    def _paint_roi(self, p: QPainter, item: RoiItem, dec: Decoded, *, selected: bool) -> None:
        color = QColor(*(SELECTED_COLOR if selected else (item.roi.color or DEFAULT_COLOR)))
        pts = [self.image_to_widget(x, y) for x, y in item.image_points(dec.plane)]
        p.setPen(QPen(color, 2 if selected else 1.5))
        p.setBrush(Qt.BrushStyle.NoBrush)
        kind = item.roi.kind
        if kind == "point":
            c = pts[0]
            if item.is_text:
                p.setBrush(QBrush(color))
                p.drawEllipse(c, 2.5, 2.5)
            else:
                p.drawLine(c + QPointF(-6, 0), c + QPointF(6, 0))
                p.drawLine(c + QPointF(0, -6), c + QPointF(0, 6))
        elif item.closed:
            p.drawPolygon(QPolygonF(pts))
        else:
            p.drawPolyline(QPolygonF(pts))
        if selected:
            p.setBrush(QBrush(color))
            for q in [self.image_to_widget(x, y) for x, y in item.image_points(dec.plane, outline=False)]:
                p.drawRect(QRectF(q.x() - 3, q.y() - 3, 6, 6))
        lines = item.label_lines()
        if lines:
            xs = [q.x() for q in pts]
            ys = [q.y() for q in pts]
            anchor = QPointF(max(xs) + 8, min(ys))
            _label_box(p, anchor, lines, self._font, color, self.rect())

    def _paint_draft(self, p: QPainter, dec: Decoded) -> None:
        d = self._draft
        pts = d["points"] + ([d["hover"]] if d.get("hover") is not None else [])
        if not pts:
            return
        item = d.get("item")
        if item is not None:
            self._paint_roi(p, item, dec, selected=False)
            return
        p.setPen(QPen(QColor(*DEFAULT_COLOR), 1.5, Qt.PenStyle.DashLine))
        wp = [self.image_to_widget(x, y) for x, y in pts]
        p.drawPolyline(QPolygonF(wp))

    def roi_items(self) -> list[RoiItem]:
        s = self.current_slice()
        if s is None:
            return []
        return self._rois.get(s.key, [])

    def _load_rois(self) -> None:
        s = self.current_slice()
        if s is None or s.key in self._rois:
            self._measure_all()
            return
        items = []
        if self._study_rois is not None:
            # One query per series (set_stack), not one per slice scrolled through.
            stored = self._study_rois.get(s.sop_instance_uid, [])
        else:
            try:
                stored = self.ctx.rois.for_instance(s.sop_instance_uid)
            except Exception as exc:  # noqa: BLE001 - the image is still shown
                log.warning("cannot load ROIs of %s: %s", s.sop_instance_uid, exc)
                stored = []
        for r in stored:
            if r.frame != s.frame:
                continue
            try:
                items.append(RoiItem.from_record(r.data, r.id))
            except Exception as exc:  # noqa: BLE001 - an unreadable ROI is skipped
                log.warning("ROI %s unreadable: %s", r.id, exc)
        self._rois[s.key] = items
        self._measure_all()

    def _fetch_study_rois(self, stack: SeriesStack) -> dict[str, list] | None:
        """The saved ROIs of the stack's study by SOP Instance UID (None: ask per slice)."""
        study = str(stack.info.get("StudyInstanceUID") or "")
        if not study:
            return None
        try:
            out: dict[str, list] = {}
            for r in self.ctx.rois.for_study(study):
                out.setdefault(r.sop_instance_uid, []).append(r)
            return out
        except Exception as exc:  # noqa: BLE001 - fall back to one query per slice
            log.warning("cannot load the ROIs of study %s: %s", study, exc)
            return None

    def _measure_all(self) -> None:
        dec = self.current()
        s = self.current_slice()
        if dec is None or s is None:
            return
        items = self._rois.get(s.key, [])
        if not items:
            return
        img = dec.planar_image(s.sop_instance_uid, s.frame)
        for it in items:
            if not it.is_text:
                it.measure(img)

    def _reference(self) -> ImageReference:
        s = self.current_slice()
        dec = self.current()
        h = dec.header if dec is not None else None
        return ImageReference(
            sop_instance_uid=s.sop_instance_uid, frame=s.frame if s.frames > 1 else None,
            series_instance_uid=self.stack.series_uid,
            study_instance_uid=str(self.stack.info.get("StudyInstanceUID") or ""),
            frame_of_reference_uid=str(h.get("FrameOfReferenceUID", "") or "") if h is not None else "")

    def add_roi(self, item: RoiItem) -> RoiItem:
        """Add an ROI to the current slice, measure it and save it with the study."""
        s = self.current_slice()
        self._rois.setdefault(s.key, []).append(item)
        dec = self.current()
        if dec is not None and not item.is_text:
            item.measure(dec.planar_image(s.sop_instance_uid, s.frame))
        self._save(item)
        self.selected = item
        self.update()
        self.roisChanged.emit()
        return item

    def _save(self, item: RoiItem) -> None:
        s = self.current_slice()
        try:
            item.db_id = self.ctx.rois.save(s.sop_instance_uid, item.to_record(), frame=s.frame,
                                            name=item.roi.name or None, roi_id=item.db_id)
        except Exception as exc:  # noqa: BLE001 - the ROI stays on screen; the user is told
            from .notify import WARNING, notify

            notify(WARNING, "ROI not saved", f"The ROI could not be saved with the study: {exc}", parent=self)

    def delete_selected_roi(self) -> bool:
        item = self.selected
        s = self.current_slice()
        if item is None or s is None:
            return False
        items = self._rois.get(s.key, [])
        if item in items:
            items.remove(item)
        if item.db_id is not None:
            try:
                self.ctx.rois.delete(item.db_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("ROI %s not deleted: %s", item.db_id, exc)
        self.selected = None
        self.update()
        self.roisChanged.emit()
        return True

    def cancel(self) -> None:
        if self._draft is not None:
            self._draft = None
        else:
            self.selected = None
        self.update()

    def hit_roi(self, pos: QPointF) -> RoiItem | None:
        dec = self.stack.cached(self.index) if self.stack is not None else None
        if dec is None:
            return None
        p = np.array([pos.x(), pos.y()])
        for item in reversed(self.roi_items()):
            pts = np.array([[q.x(), q.y()] for q in
                            (self.image_to_widget(x, y) for x, y in item.image_points(dec.plane))])
            if item.roi.kind == "point":
                if np.hypot(*(pts[0] - p)) <= HIT_PX + 2:
                    return item
                continue
            if distance_to_polyline(p, pts, item.closed) <= HIT_PX:
                return item
            if item.closed and point_in_polygon(p, pts):
                return item
        return None

    # =============================================================== mouse
    def mousePressEvent(self, e):  # noqa: N802
        self.activated.emit()
        self.setFocus()
        pos = e.position()
        btn = e.button()
        img = self.widget_to_image(pos)
        if btn == Qt.MouseButton.RightButton:
            self._start_drag("wl", pos)
            return
        if btn == Qt.MouseButton.MiddleButton:
            self._start_drag("pan", pos)
            return
        if btn != Qt.MouseButton.LeftButton:
            return
        tool = self.tool
        if tool in ("wl", "pan", "zoom"):
            self._start_drag(tool, pos)
            return
        if self._draft is None and (tool == "select" or tool in ROI_TOOLS):
            hit = self.hit_roi(pos)
            if hit is not None or tool == "select":
                self.selected = hit
                if hit is not None:
                    self._drag = {"mode": "move", "start": img, "item": hit, "roi0": hit.roi}
                self.update()
                return
        if tool not in ROI_TOOLS or self.current() is None:
            return
        self.selected = None
        if tool in ("point", "text"):
            text = ""
            if tool == "text":
                text = self._ask_text()
                if not text:
                    return
            roi = build_roi(tool, [img], self.current().plane, reference=self._reference(), text=text)
            if roi is not None:
                self.add_roi(RoiItem(roi, is_text=tool == "text"))
            return
        if tool in ("angle", "polygon"):
            if self._draft is None:
                self._draft = {"tool": tool, "points": [img], "hover": img}
            else:
                self._draft["points"].append(img)
                if tool == "angle" and len(self._draft["points"]) >= 3:
                    self._finish_draft()
            self._update_draft_item()
            self.update()
            return
        # drag tools: length, rectangle, ellipse, freehand
        self._draft = {"tool": tool, "points": [img], "hover": img, "drag": True}
        self._update_draft_item()
        self.update()

    def _ask_text(self) -> str:
        if is_server_mode():
            return ""
        text, ok = QInputDialog.getText(self, "Text Annotation", "Text:")
        return text.strip() if ok else ""

    def _start_drag(self, mode: str, pos: QPointF) -> None:
        w = self.window
        self._drag = {"mode": mode, "pos": QPointF(pos), "pan": QPointF(self.pan), "zoom": self.zoom,
                      "window": (w.center, w.width) if w is not None else None}

    def mouseMoveEvent(self, e):  # noqa: N802
        pos = e.position()
        img = self.widget_to_image(pos)
        self._cursor_img = img
        d = self._drag
        if d is not None:
            if self.stack is not None:
                self.stack.interacting()
            mode = d["mode"]
            if mode == "wl" and d["window"] is not None:
                dx, dy = pos.x() - d["pos"].x(), pos.y() - d["pos"].y()
                c0, w0 = d["window"]
                k = wl_sensitivity(w0)
                self.set_window(c0 + dy * k, max(1.0, w0 + dx * k))
            elif mode == "pan":
                self.pan = d["pan"] + (pos - d["pos"])
                self.fit_mode = False
                self.update()
                self.viewChanged.emit()
            elif mode == "zoom":
                dy = pos.y() - d["pos"].y()
                self.zoom = max(MIN_ZOOM, min(MAX_ZOOM, d["zoom"] * math.exp(-dy / 150.0)))
                self.fit_mode = False
                self.update()
                self.viewChanged.emit()
            elif mode == "move":
                self._move_roi(d, img)
        elif self._draft is not None:
            dr = self._draft
            if dr.get("drag") and dr["tool"] == "freehand" and e.buttons() & Qt.MouseButton.LeftButton:
                last = dr["points"][-1]
                if math.hypot(img[0] - last[0], img[1] - last[1]) * self.zoom >= 2.0:
                    dr["points"].append(img)
            dr["hover"] = img
            self._update_draft_item()
        self.cursorInfo.emit(" \u2022 ".join(self.overlay_text()["br"]))
        self.update()

    def _move_roi(self, d: dict, img) -> None:
        dec = self.current()
        if dec is None:
            return
        x0, y0 = d["start"]
        pl = dec.plane
        delta = (pl.pixel_to_patient(img[0] - 0.5, img[1] - 0.5)[0]
                 - pl.pixel_to_patient(x0 - 0.5, y0 - 0.5)[0])
        item: RoiItem = d["item"]
        item.roi = d["roi0"].translated(delta)
        d["moved"] = True
        if not item.is_text:
            s = self.current_slice()
            item.measure(dec.planar_image(s.sop_instance_uid, s.frame))

    def mouseReleaseEvent(self, e):  # noqa: N802
        d, self._drag = self._drag, None
        if d is not None:
            if d["mode"] == "move" and d.get("moved"):
                self._save(d["item"])
                self.roisChanged.emit()
            return
        dr = self._draft
        if dr is not None and dr.get("drag") and e.button() == Qt.MouseButton.LeftButton:
            dr["points"].append(self.widget_to_image(e.position()))
            self._finish_draft()
            self.update()

    def mouseDoubleClickEvent(self, e):  # noqa: N802
        if self._draft is not None and self._draft["tool"] == "polygon":
            self._finish_draft()
            self.update()
            return
        super().mouseDoubleClickEvent(e)

    def keyPressEvent(self, e):  # noqa: N802
        if e.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._draft is not None:
            self._finish_draft()
            self.update()
            return
        super().keyPressEvent(e)

    def leaveEvent(self, e):  # noqa: N802
        self._cursor_img = None
        self.update()
        super().leaveEvent(e)

    def wheelEvent(self, e):  # noqa: N802
        wheel_zoom_or_step(self, e)

    # -- drafts ----------------------------------------------------------------
    def _draft_points(self) -> list:
        d = self._draft
        pts = list(d["points"])
        if d.get("hover") is not None and d["tool"] != "freehand":
            pts.append(d["hover"])
        return pts

    def _update_draft_item(self) -> None:
        d = self._draft
        dec = self.current()
        if d is None or dec is None:
            return
        roi = build_roi(d["tool"], self._draft_points(), dec.plane)
        if roi is None:
            d["item"] = None
            return
        item = RoiItem(roi)
        s = self.current_slice()
        item.measure(dec.planar_image(s.sop_instance_uid, s.frame))
        d["item"] = item

    def _finish_draft(self) -> None:
        d, self._draft = self._draft, None
        dec = self.current()
        if d is None or dec is None:
            return
        pts = list(d["points"])
        if d["tool"] == "polygon" and len(pts) >= 2 and pts[-1] == pts[-2]:
            pts.pop()  # a double-click adds the last point twice
        roi = build_roi(d["tool"], pts, dec.plane, reference=self._reference())
        if roi is not None:
            self.add_roi(RoiItem(roi))


def wl_sensitivity(width: float) -> float:
    """Modality units per screen pixel of a W/L drag (proportional to the width)."""
    return max(abs(width), 10.0) / 200.0


def _shadow_text(p: QPainter, pos: QPointF, text: str, color: QColor | None = None) -> None:
    p.setPen(QColor(0, 0, 0))
    p.drawText(pos + QPointF(1, 1), text)
    p.setPen(color or QColor(255, 255, 255))
    p.drawText(pos, text)


def _label_box(p: QPainter, anchor: QPointF, lines: list[str], font: QFont, color: QColor, bounds) -> None:
    fm = QFontMetricsF(font)
    w = max(fm.horizontalAdvance(t) for t in lines) + 8
    h = fm.height() * len(lines) + 6
    x = min(anchor.x(), bounds.width() - w - 2)
    y = max(2.0, min(anchor.y(), bounds.height() - h - 2))
    path = QPainterPath()
    path.addRoundedRect(QRectF(x, y, w, h), 3, 3)
    p.fillPath(path, QColor(0, 0, 0, 160))
    p.setPen(color)
    for i, t in enumerate(lines):
        p.drawText(QPointF(x + 4, y + 3 + fm.ascent() + i * fm.height()), t)
