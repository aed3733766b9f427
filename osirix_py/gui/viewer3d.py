"""The 3D viewer window: linked MPR views (VTK reslice) and volume rendering, OsiriX-style.

Four views of one :class:`~osirix_py.imaging.volume.Volume`: axial, coronal and
sagittal MPR (:class:`~osirix_py.render.mpr.MprEngine`) and the 3D view
(:class:`~osirix_py.render.volume_render.VolumeRenderer`).  Every view is a
plain ``QWidget`` painted with ``QPainter`` from numpy images (the MPR images
through the imaging core's window/level and :func:`.qimage.to_qimage`, like
the 2D viewer; the 3D picture as VTK renders it offscreen), so the window
works on any Qt platform, ``offscreen`` included, and ``QWidget.grab()``
captures all of it.

MPR views -- left-drag the crosshair centre (or click anywhere) to move the
crosshair: the other planes follow (sampled nearest-neighbour while the
mouse drags, trilinear when it stops); drag one line to move only that plane;
drag a round handle to rotate the crosshair (the other two planes become
oblique); right-drag = window/level of that view; wheel = move the view's
plane; Ctrl+wheel = zoom; middle-drag = pan.  Slab thickness and mode (MIP,
MinIP, mean) are in the toolbar.

3D view -- left-drag rotates, Shift+left or middle-drag pans, Ctrl+left-drag
or the wheel zooms, right-drag (or Alt+left) is the window/level of the
transfer function.  While the mouse drags, the renderer favours speed; the
full-quality picture follows the release.  With the crop box on, the centres
of its faces carry square handles (red: columns, green: rows, blue: slices;
the two faces that point at the eye have none): drag one to move that
cropping plane; the percentage spin boxes follow.  A big volume shows a
subsampled preview first (in about a second) while the ray caster prepares
the full-quality frame on the render thread.

VTK is imported only when a window opens (the 2D viewer imports this module
for its menu action).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QColor, QFont, QImage, QKeySequence, QPainter, QPen
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QSizePolicy,
    QSpinBox,
    QToolBar,
    QWidget,
)

from ..dicom.geometry import direction_letters
from ..dicom.pixels import Window, apply_window
from ..imaging.volume import Volume
from .imageview import (MAX_ZOOM, MIN_ZOOM, WHEEL_ZOOM, init_image_widget, wl_sensitivity,
                        zoom_about)
from .mpr import COLORS as MPR_COLORS
from .mpr import TITLES as MPR_TITLES
from .notify import WARNING, is_server_mode, notify
from .presets import presets_for_modality
from .qimage import to_qimage

log = logging.getLogger(__name__)

VIEW_COLORS = {name: QColor(*rgb) for name, rgb in MPR_COLORS.items()}  # as in the 2D viewer's MPR
VIEW_TITLES = MPR_TITLES
SLAB_LABELS = {"mip": "MIP", "minip": "MinIP", "mean": "Mean"}
BLEND_LABELS = {"composite": "Volume Rendering", "mip": "3D MIP", "minip": "3D MinIP"}
HANDLE_PX = 7.0
CROP_HANDLE_PX = 9.0
CROP_AXIS_COLORS = (QColor(255, 110, 100), QColor(110, 230, 110), QColor(110, 160, 255))  # column, row, slice
GAP_PX = 10.0


def _shadow_text(p: QPainter, pos: QPointF, text: str, color: QColor | None = None) -> None:
    p.setPen(QColor(0, 0, 0))
    p.drawText(pos + QPointF(1, 1), text)
    p.setPen(color or QColor(255, 255, 255))
    p.drawText(pos, text)


def initial_window(volume: Volume) -> Window:
    """The MPR window of a volume: its file's window, else the modality's first fixed preset,
    else its robust value range."""
    if volume.window is not None:
        return volume.window
    for pr in presets_for_modality(volume.modality or ""):
        if not pr.is_auto and pr.center is not None and pr.width is not None and not pr.units:
            return Window(pr.center, pr.width)
    a = volume.array
    step = max(1, int(round((a.size / 1_000_000) ** (1 / 3))))
    sample = a[::step, ::step, ::step]
    lo, hi = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    return Window((lo + hi) / 2.0, max(1.0, hi - lo))


# ====================================================================== MPR view
class MprPanel(QWidget):
    """One MPR view: the engine's image of ``name`` with the crosshair of the other two."""

    crosshairChanged = Signal()  # the crosshair moved or turned (every view repaints)
    activated = Signal()
    windowChanged = Signal()

    def __init__(self, engine, name: str, window: Window, parent: QWidget | None = None):
        super().__init__(parent)
        self.engine = engine
        self.name = name
        init_image_widget(self, f"mpr_{name}", 160)
        self.window = window
        self.zoom = 1.0
        self.pan = QPointF(0, 0)
        self.fit_mode = True
        self.active = False
        self._drag: dict | None = None
        self._qimage: QImage | None = None
        self._key = None
        self.frames_painted = 0
        pl = engine.plane(name)
        self._ref_size = (pl.columns, pl.rows)
        self._font = QFont(self.font())
        self._font.setPointSizeF(max(8.0, self._font.pointSizeF()))

    # ------------------------------------------------------------ geometry
    def fit_scale(self) -> float:
        cols, rows = self._ref_size
        return max(1e-3, min(self.width() / max(cols, 1), self.height() / max(rows, 1)))

    @property
    def scale(self) -> float:
        return self.fit_scale() * self.zoom

    def _origin(self) -> tuple[QPointF, tuple[float, float]]:
        pl = self.engine.plane(self.name)
        return (QPointF(self.width() / 2 + self.pan.x(), self.height() / 2 + self.pan.y()),
                ((pl.columns - 1) / 2.0, (pl.rows - 1) / 2.0))

    def image_to_widget(self, col: float, row: float) -> QPointF:
        c, (cx, cy) = self._origin()
        s = self.scale
        return QPointF(c.x() + (col - cx) * s, c.y() + (row - cy) * s)

    def widget_to_image(self, p: QPointF) -> tuple[float, float]:
        c, (cx, cy) = self._origin()
        s = self.scale
        return (p.x() - c.x()) / s + cx, (p.y() - c.y()) / s + cy

    def crosshair_widget(self) -> QPointF:
        return self.image_to_widget(*self.engine.crosshair_pixel(self.name))

    def set_zoom(self, zoom: float, around: QPointF | None = None) -> None:
        zoom_about(self, max(MIN_ZOOM, min(MAX_ZOOM, zoom)), around)
        self.update()

    def fit(self) -> None:
        self.zoom, self.pan, self.fit_mode = 1.0, QPointF(0, 0), True
        self.update()

    def set_window(self, center: float, width: float) -> None:
        self.window = Window(center, max(1.0, width))
        self.update()
        self.windowChanged.emit()

    # ----------------------------------------------------------- rendering
    def rendered(self) -> np.ndarray:
        """The 8-bit picture of the current plane (before zoom), as painted."""
        img = self.engine.image(self.name)
        return apply_window(img, self.window)

    def _ensure_image(self) -> QImage | None:
        img = self.engine.image(self.name)  # the same array object until the plane changes
        if self._qimage is None or self._key is None or self._key[0] is not img or self._key[1] != self.window:
            self._qimage = to_qimage(apply_window(img, self.window))
            self._key = (img, self.window)
        return self._qimage

    def handles(self) -> dict[str, list[QPointF]]:
        """Rotation handles (widget coordinates) on each other view's line."""
        out: dict[str, list[QPointF]] = {}
        c = self.crosshair_widget()
        r = 0.36 * min(self.width(), self.height())
        for w, (_, (dx, dy)) in self.engine.lines(self.name).items():
            out[w] = [QPointF(c.x() + dx * r, c.y() + dy * r), QPointF(c.x() - dx * r, c.y() - dy * r)]
        return out

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.GlobalColor.black)
        try:
            img = self._ensure_image()
        except Exception as exc:  # noqa: BLE001 - shown in the view
            img = None
            p.setPen(QColor(255, 120, 120))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, f"Cannot reslice: {exc}")
        if img is not None:
            tl = self.image_to_widget(-0.5, -0.5)
            s = self.scale
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawImage(QRectF(tl.x(), tl.y(), img.width() * s, img.height() * s), img)
            self.frames_painted += 1
            self._paint_crosshair(p)
        self._paint_overlays(p)
        if self.active:
            p.setPen(QPen(QColor(255, 170, 0), 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(self.rect().adjusted(1, 1, -1, -1))
        else:
            p.setPen(QPen(VIEW_COLORS[self.name], 1))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(self.rect().adjusted(0, 0, -1, -1))
        p.end()

    def _paint_crosshair(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        c = self.crosshair_widget()
        far = 4.0 * (self.width() + self.height())
        lines = self.engine.lines(self.name)
        handles = self.handles()
        for w, (_, (dx, dy)) in lines.items():
            col = VIEW_COLORS[w]
            p.setPen(QPen(col, 1.2))
            for sgn in (1, -1):
                a = QPointF(c.x() + sgn * dx * GAP_PX, c.y() + sgn * dy * GAP_PX)
                b = QPointF(c.x() + sgn * dx * far, c.y() + sgn * dy * far)
                p.drawLine(a, b)
            th = self.engine.slab_thickness[w]
            if th > 0:
                # the other view's slab: two dashed lines th/2 mm either side
                off = th / 2.0 / self.engine.pixel_spacing * self.scale
                nx, ny = -dy, dx
                pen = QPen(col, 1, Qt.PenStyle.DashLine)
                p.setPen(pen)
                for sgn in (1, -1):
                    o = QPointF(c.x() + sgn * nx * off, c.y() + sgn * ny * off)
                    p.drawLine(QPointF(o.x() - dx * far, o.y() - dy * far), QPointF(o.x() + dx * far, o.y() + dy * far))
            p.setPen(QPen(col, 1.5))
            p.setBrush(QColor(col.red(), col.green(), col.blue(), 90))
            for h in handles.get(w, []):
                p.drawEllipse(h, HANDLE_PX, HANDLE_PX)
            p.setBrush(Qt.BrushStyle.NoBrush)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)

    def overlay_text(self) -> dict[str, list[str]]:
        e = self.engine
        title = VIEW_TITLES[self.name] + (" (oblique)" if e.is_oblique(self.name) else "")
        tl = [title]
        th = e.slab_thickness[self.name]
        if th > 0:
            tl.append(f"{SLAB_LABELS[e.slab_mode[self.name]]} slab {th:.1f} mm")
        x, y, z = e.crosshair
        bl = [f"WL: {self.window.center:.0f} WW: {self.window.width:.0f}",
              f"Pos: {x:.1f}, {y:.1f}, {z:.1f} mm"]
        return {"tl": tl, "bl": bl}

    def orientation_letters(self) -> dict[str, str]:
        pl = self.engine.plane(self.name)
        return {"right": direction_letters(pl.row_cosine), "left": direction_letters(-pl.row_cosine),
                "bottom": direction_letters(pl.col_cosine), "top": direction_letters(-pl.col_cosine)}

    def _paint_overlays(self, p: QPainter) -> None:
        p.setFont(self._font)
        fm = p.fontMetrics()
        lh = fm.height()
        text = self.overlay_text()
        for i, t in enumerate(text["tl"]):
            _shadow_text(p, QPointF(6, 4 + lh * (i + 1) - fm.descent()), t,
                         VIEW_COLORS[self.name] if i == 0 else None)
        for i, t in enumerate(reversed(text["bl"])):
            _shadow_text(p, QPointF(6, self.height() - 6 - lh * i - fm.descent()), t)
        let = self.orientation_letters()
        w, h = self.width(), self.height()
        col = QColor(255, 220, 120)
        _shadow_text(p, QPointF(w / 2 - fm.horizontalAdvance(let["top"]) / 2, lh + 2), let["top"], col)
        _shadow_text(p, QPointF(w / 2 - fm.horizontalAdvance(let["bottom"]) / 2, h - 6 - fm.descent()),
                     let["bottom"], col)
        _shadow_text(p, QPointF(6, h / 2 + lh / 2), let["left"], col)
        _shadow_text(p, QPointF(w - 6 - fm.horizontalAdvance(let["right"]), h / 2 + lh / 2), let["right"], col)

    # --------------------------------------------------------------- mouse
    def _hit(self, pos: QPointF) -> tuple[str, str | None]:
        """("rotate", view) on a handle, ("line", view) on a line, ("center", None) near the centre."""
        for w, hs in self.handles().items():
            for h in hs:
                if math.hypot(pos.x() - h.x(), pos.y() - h.y()) <= HANDLE_PX + 4:
                    return "rotate", w
        c = self.crosshair_widget()
        if math.hypot(pos.x() - c.x(), pos.y() - c.y()) <= GAP_PX + 6:
            return "center", None
        for w, (_, (dx, dy)) in self.engine.lines(self.name).items():
            rx, ry = pos.x() - c.x(), pos.y() - c.y()
            if abs(rx * -dy + ry * dx) <= 5.0:
                return "line", w
        return "center", None

    def mousePressEvent(self, e):  # noqa: N802
        self.activated.emit()
        pos = e.position()
        if e.button() == Qt.MouseButton.LeftButton:
            kind, w = self._hit(pos)
            self.engine.set_interactive(True)  # nearest-neighbour planes while dragging
            if kind == "center":
                self._move_crosshair_to(pos)
            self._drag = {"mode": kind, "view": w, "pos": pos}
        elif e.button() == Qt.MouseButton.RightButton:
            self._drag = {"mode": "wl", "pos": pos, "window": self.window}
        elif e.button() == Qt.MouseButton.MiddleButton:
            self._drag = {"mode": "pan", "pos": pos, "pan": QPointF(self.pan)}
        e.accept()

    def _move_crosshair_to(self, pos: QPointF) -> None:
        col, row = self.widget_to_image(pos)
        self.engine.set_crosshair_from_view(self.name, col, row)
        self.crosshairChanged.emit()

    def mouseMoveEvent(self, e):  # noqa: N802
        d = self._drag
        if d is None:
            kind, _ = self._hit(e.position())
            shape = {"rotate": Qt.CursorShape.OpenHandCursor, "line": Qt.CursorShape.SizeAllCursor}
            self.setCursor(shape.get(kind, Qt.CursorShape.CrossCursor))
            return
        pos = e.position()
        mode = d["mode"]
        if mode == "center":
            self._move_crosshair_to(pos)
        elif mode == "line":
            # move only the other view's plane: along the normal of its line in this view
            lines = self.engine.lines(self.name)
            if d["view"] in lines:
                (_, (dx, dy)) = lines[d["view"]]
                nx, ny = -dy, dx
                step = ((pos.x() - d["pos"].x()) * nx + (pos.y() - d["pos"].y()) * ny) / self.scale
                pl = self.engine.plane(self.name)
                delta = step * self.engine.pixel_spacing * (nx * pl.row_cosine + ny * pl.col_cosine)
                self.engine.set_crosshair(self.engine.crosshair + delta)
                d["pos"] = pos
                self.crosshairChanged.emit()
        elif mode == "rotate":
            c = self.crosshair_widget()
            a0 = math.atan2(d["pos"].y() - c.y(), d["pos"].x() - c.x())
            a1 = math.atan2(pos.y() - c.y(), pos.x() - c.x())
            delta = math.degrees(a1 - a0)
            if delta > 180:
                delta -= 360
            elif delta < -180:
                delta += 360
            self.engine.rotate(self.name, delta)
            d["pos"] = pos
            self.crosshairChanged.emit()
        elif mode == "wl":
            w0: Window = d["window"]
            k = wl_sensitivity(w0.width)
            dx, dy = pos.x() - d["pos"].x(), pos.y() - d["pos"].y()
            self.set_window(w0.center + dy * k, max(1.0, w0.width + dx * k))
        elif mode == "pan":
            self.pan = d["pan"] + (pos - d["pos"])
            self.fit_mode = False
            self.update()

    def mouseReleaseEvent(self, e):  # noqa: N802
        self._drag = None
        if self.engine.interactive:
            self.engine.set_interactive(False)
            self.crosshairChanged.emit()  # repaint every view at full quality

    def wheelEvent(self, e):  # noqa: N802
        steps = e.angleDelta().y() / 120.0
        if e.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.set_zoom(self.zoom * (WHEEL_ZOOM ** steps), e.position())
        else:
            n = self.engine.normal(self.name)
            self.engine.set_crosshair(self.engine.crosshair - steps * self.engine.pixel_spacing * n)
            self.crosshairChanged.emit()
        e.accept()

    def keyPressEvent(self, e):  # noqa: N802
        k = e.key()
        delta = {Qt.Key.Key_Up: -1, Qt.Key.Key_Down: 1, Qt.Key.Key_PageUp: -10, Qt.Key.Key_PageDown: 10}.get(k)
        if delta is None:
            super().keyPressEvent(e)
            return
        n = self.engine.normal(self.name)
        self.engine.set_crosshair(self.engine.crosshair + delta * self.engine.pixel_spacing * n)
        self.crosshairChanged.emit()


# ====================================================================== 3D view
class VolumePanel(QWidget):
    """Shows :meth:`VolumeRenderer.render` and turns mouse drags into camera / TF changes.

    All VTK rendering runs on one worker thread (VTK releases the GIL, so the
    window stays responsive: the MPR views can be used while a big volume's
    first 3D frame is prepared).  The renderer is created on that thread too,
    so its GL context never changes threads.  Changes to the renderer's state
    (camera, transfer function, crop ...) go through :meth:`apply`: at once
    when no frame is being drawn, else queued until it is done; moves made
    during a frame are merged into the next one.
    """

    rendered = Signal()
    cropDragged = Signal(object)  # the crop box (6 fractions) while a face handle is dragged
    _frameReady = Signal(object, float, int)  # (image or None, view), ms, the request it served
    _prepared = Signal()  # the ray caster's full-quality tables are built (on the spare thread)

    def __init__(self, make_renderer, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("volumeView")
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osirix-vr")
        # a spare thread builds the ray caster's per-voxel tables while previews are drawn
        self._prep_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osirix-vr-prep")
        self._prep_future = None
        self.renderer = self._executor.submit(make_renderer).result()
        self.image: np.ndarray | None = None
        self.view = None  # the renderer's camera (numbers) for the image shown
        self.preview = False  # the image shown is the quick preview; the full one is on its way
        self._qimage: QImage | None = None
        self._drag: dict | None = None
        self._future = None
        self._ops: list = []
        self._requested = 0  # render requests made
        self._served = 0  # the newest request a delivered frame served
        self._scheduled = False
        self.frames = 0
        self.last_ms = 0.0
        self.error = ""
        self._font = QFont(self.font())
        self._font.setPointSizeF(max(8.0, self._font.pointSizeF()))
        self._frameReady.connect(self._on_frame)
        self._prepared.connect(self.request_render)
        self._resize_timer = QTimer(self)
        self._resize_timer.setSingleShot(True)
        self._resize_timer.setInterval(60)
        self._resize_timer.timeout.connect(self.request_render)

    # ---------------------------------------------------------- the worker
    @property
    def busy(self) -> bool:
        return self._future is not None

    def apply(self, fn) -> None:
        """Change the renderer's state with ``fn()`` (now, or after the frame being drawn) and redraw."""
        if self._future is None:
            fn()
        else:
            self._ops.append(fn)
        self.request_render()

    def call(self, fn):
        """Run ``fn()`` on the render thread after the frame being drawn; its result."""
        return self._executor.submit(fn).result()

    def request_render(self) -> None:
        """Draw a new frame soon (requests made while one is drawn are merged)."""
        self._requested += 1
        if self._future is None and not self._scheduled:
            self._scheduled = True
            QTimer.singleShot(0, self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._future is not None or self.renderer.closed:
            return
        ops, self._ops = self._ops, []
        for fn in ops:
            fn()
        if self._served >= self._requested:
            return
        w, h = self.width(), self.height()
        self._future = self._executor.submit(self._work, w, h, self._requested)

    def _work(self, width: int, height: int, request: int) -> None:  # the render thread
        import time

        t0 = time.perf_counter()
        view, preview = None, False
        try:
            self.renderer.resize(width, height)
            img = self.renderer.render()
            view, preview = self.renderer.last_view, self.renderer.needs_refine
        except Exception as exc:  # noqa: BLE001 - shown in the view
            log.exception("volume rendering failed")
            self.error = str(exc)
            img = None
        self._frameReady.emit((img, view, preview), (time.perf_counter() - t0) * 1e3, request)

    def _on_frame(self, frame, ms: float, request: int) -> None:
        img, view, preview = frame
        self._future = None
        self._served = max(self._served, request)
        if img is not None:
            self.image = img
            self.view = view
            self.preview = preview
            self._qimage = to_qimage(img)
            self.last_ms = ms
            self.frames += 1
        self.update()
        self.rendered.emit()
        if preview and self._prep_future is None:
            # the quick first picture is up: the full-quality tables are built on the spare thread
            # (previews go on meanwhile: the view stays usable), then the full frame is drawn
            self.renderer.will_prepare()
            self._prep_future = self._prep_executor.submit(self._prepare)
        if self._ops or self._served < self._requested:
            self._start()

    def _prepare(self) -> None:  # the spare thread
        try:
            self.renderer.prepare_full()
        except Exception:  # noqa: BLE001 - the render thread then builds them in its next frame
            log.exception("preparing the full-quality 3D view")
        self._prepared.emit()

    @property
    def preparing(self) -> bool:
        f = self._prep_future
        return f is not None and not f.done()

    def render_now(self, timeout: float = 120.0) -> None:
        """Draw a frame with everything asked so far and wait for it (tests, screenshots)."""
        import time

        self.request_render()
        want = self._requested
        end = time.monotonic() + timeout
        app = QApplication.instance()
        while self._served < want and not self.renderer.closed:
            if time.monotonic() > end:
                raise TimeoutError("the 3D view did not render in time")
            app.processEvents()
            time.sleep(0.002)

    def wait_full_quality(self, timeout: float = 120.0) -> None:
        """:meth:`render_now`, then wait until the frame shown is no preview."""
        import time

        self.render_now(timeout)
        end = time.monotonic() + timeout
        app = QApplication.instance()
        while self.preview and not self.renderer.closed:
            if time.monotonic() > end:
                raise TimeoutError("the 3D view did not reach full quality in time")
            if self.preparing:
                app.processEvents()
                time.sleep(0.01)
            else:
                self.render_now(timeout)

    def shutdown(self) -> None:
        """Finish the frame being drawn, free the GL context on its thread, stop the thread."""
        self._prep_executor.shutdown(wait=True)  # the tables being built use the renderer's mapper
        if not self.renderer.closed:
            try:
                self.call(self.renderer.close)
            except Exception:  # noqa: BLE001
                log.exception("closing the volume renderer")
        self._executor.shutdown(wait=True)

    def resizeEvent(self, event):  # noqa: N802
        super().resizeEvent(event)
        self._resize_timer.start()

    def paintEvent(self, event):  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), Qt.GlobalColor.black)
        p.setFont(self._font)
        fm = p.fontMetrics()
        if self._qimage is not None:
            p.drawImage(QRectF(0, 0, self.width(), self.height()), self._qimage)
        else:
            # the first frame of a big volume takes a while (the ray caster's gradient tables)
            p.setPen(QColor(170, 170, 170))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Preparing the 3D view\u2026")
        r = self.renderer
        c, w = r.tf_window
        lines = [BLEND_LABELS[r.blend] + ("" if r.blend != "composite" else f": {r.preset.name}"),
                 f"WL: {c:.0f} WW: {w:.0f}"]
        if r.crop_enabled:
            lines.append("Cropped")
        for i, t in enumerate(lines):
            _shadow_text(p, QPointF(6, 4 + fm.height() * (i + 1) - fm.descent()), t,
                         QColor(120, 180, 255) if i == 0 else None)
        if r.crop_enabled and self.view is not None and self._qimage is not None:
            self._paint_crop_handles(p)
        if self.preview:
            status = "preview \u2014 full quality on its way\u2026"
        else:
            status = "interactive" if r.interacting else f"{self.last_ms:.0f} ms"
        _shadow_text(p, QPointF(self.width() - 6 - fm.horizontalAdvance(status), self.height() - 6), status,
                     QColor(170, 170, 170))
        p.setPen(QPen(QColor(120, 180, 255), 1))
        p.drawRect(self.rect().adjusted(0, 0, -1, -1))
        p.end()

    # ------------------------------------------------------------ crop box
    def _image_scale(self) -> tuple[float, float]:
        v = self.view
        return self.width() / max(1, v.width), self.height() / max(1, v.height)

    def crop_handle_points(self) -> list[tuple[int, QPointF]]:
        """Widget positions of the crop box's draggable face handles (as painted)."""
        r, v = self.renderer, self.view
        if not r.crop_enabled or v is None:
            return []
        sx, sy = self._image_scale()
        box = self._drag["box"] if self._drag and self._drag.get("mode") == "crop" else r.crop_box
        return [(face, QPointF((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5))
                for face, x, y, _span in r.crop_handles(v, box)]

    def crop_handle_at(self, pos: QPointF) -> int | None:
        best, best_d = None, CROP_HANDLE_PX + 4.0
        for face, pt in self.crop_handle_points():
            d = math.hypot(pos.x() - pt.x(), pos.y() - pt.y())
            if d <= best_d:
                best, best_d = face, d
        return best

    def _paint_crop_handles(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        active = self._drag.get("face") if self._drag and self._drag.get("mode") == "crop" else None
        for face, pt in self.crop_handle_points():
            col = CROP_AXIS_COLORS[face // 2]
            p.setPen(QPen(QColor(255, 255, 255) if face == active else QColor(20, 20, 20), 1.5))
            p.setBrush(col)
            p.drawRect(QRectF(pt.x() - CROP_HANDLE_PX / 2 - 1, pt.y() - CROP_HANDLE_PX / 2 - 1,
                              CROP_HANDLE_PX + 2, CROP_HANDLE_PX + 2))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)

    def mousePressEvent(self, e):  # noqa: N802
        mods = e.modifiers()
        b = e.button()
        if (b == Qt.MouseButton.LeftButton and mods == Qt.KeyboardModifier.NoModifier
                and self.renderer.crop_enabled):
            face = self.crop_handle_at(e.position())
            if face is not None:
                # drag a face of the crop box: the camera of the picture shown maps the mouse
                self._drag = {"mode": "crop", "face": face, "start": e.position(),
                              "box0": tuple(self.renderer.crop_box), "box": tuple(self.renderer.crop_box),
                              "view": self.view}
                sx, sy = self._image_scale()
                self._drag["scale"] = (sx, sy)
                self.apply(self.renderer.begin_interaction)
                e.accept()
                return
        if b == Qt.MouseButton.RightButton or (b == Qt.MouseButton.LeftButton
                                               and mods & Qt.KeyboardModifier.AltModifier):
            mode = "wl"
        elif b == Qt.MouseButton.MiddleButton or (b == Qt.MouseButton.LeftButton
                                                  and mods & Qt.KeyboardModifier.ShiftModifier):
            mode = "pan"
        elif b == Qt.MouseButton.LeftButton and mods & Qt.KeyboardModifier.ControlModifier:
            mode = "zoom"
        elif b == Qt.MouseButton.LeftButton:
            mode = "rotate"
        else:
            return
        self._drag = {"mode": mode, "pos": e.position()}
        self.apply(self.renderer.begin_interaction)
        e.accept()

    def mouseMoveEvent(self, e):  # noqa: N802
        d = self._drag
        if d is None:
            if self.renderer.crop_enabled:
                over = self.crop_handle_at(e.position()) is not None
                self.setCursor(Qt.CursorShape.SizeAllCursor if over else Qt.CursorShape.ArrowCursor)
            return
        pos = e.position()
        r = self.renderer
        if d["mode"] == "crop":
            sx, sy = d["scale"]
            dx, dy = (pos.x() - d["start"].x()) / sx, (pos.y() - d["start"].y()) / sy
            d["box"] = r.dragged_crop_box(d["face"], dx, dy, box=d["box0"], view=d["view"])
            self.cropDragged.emit(d["box"])
            self.update()
            return
        dx, dy = pos.x() - d["pos"].x(), pos.y() - d["pos"].y()
        d["pos"] = pos
        op = {"rotate": lambda: r.rotate(dx, dy), "pan": lambda: r.pan(dx, dy),
              "zoom": lambda: r.zoom(1.01 ** (-dy)), "wl": lambda: r.adjust_window(dx, dy)}[d["mode"]]
        self.apply(op)

    def mouseReleaseEvent(self, e):  # noqa: N802
        if self._drag is None:
            return
        self._drag = None
        self.apply(self.renderer.end_interaction)

    def wheelEvent(self, e):  # noqa: N802
        factor = 1.1 ** (e.angleDelta().y() / 120.0)
        self.apply(lambda: self.renderer.zoom(factor))
        e.accept()


# ====================================================================== window
class Viewer3DWindow(QMainWindow):
    """MPR + 3D of one volume (see the module docstring)."""

    def __init__(self, volume: Volume, *, title: str = "", parent: QWidget | None = None,
                 mapper: str = "auto", vr_size: tuple[int, int] = (400, 400)):
        super().__init__(parent)
        if parent is not None:
            self.setWindowFlag(Qt.WindowType.Window, True)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.setObjectName("viewer3dWindow")
        from ..render import MprEngine, VolumeRenderer, volume_to_vtk

        self.volume = volume
        self.series_uid = volume.series_instance_uid
        self.vtk = volume_to_vtk(volume)
        self.engine = MprEngine(volume, vtk_volume=self.vtk)
        # the renderer lives on the 3D view's render thread (its GL context is made there)
        self.vr = VolumePanel(lambda: VolumeRenderer(volume, vtk_volume=self.vtk, size=vr_size, mapper=mapper))
        self.renderer = self.vr.renderer
        self.vr.rendered.connect(self._sync_3d_controls)
        self.vr.cropDragged.connect(self._crop_dragged)
        self.setWindowTitle(f"3D / MPR \u2014 {title or volume.description or volume.modality or 'Volume'}")
        win = initial_window(volume)
        self.panels: dict[str, MprPanel] = {}
        for name in ("axial", "coronal", "sagittal"):
            panel = MprPanel(self.engine, name, win)
            panel.crosshairChanged.connect(self.refresh_mpr)
            panel.activated.connect(lambda panel=panel: self._activate(panel))
            self.panels[name] = panel
        self.active: MprPanel = self.panels["axial"]
        host = QWidget()
        grid = QGridLayout(host)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        grid.addWidget(self.panels["axial"], 0, 0)
        grid.addWidget(self.panels["coronal"], 0, 1)
        grid.addWidget(self.panels["sagittal"], 1, 0)
        grid.addWidget(self.vr, 1, 1)
        host.setStyleSheet("background: #111;")
        self.setCentralWidget(host)
        self.actions: dict[str, QAction] = {}
        self._build_toolbar()
        self._build_menus()
        self._build_crop_bar()
        self.statusBar().showMessage(
            f"{self.renderer.describe()} \u2022 MPR: drag the crosshair, its handles rotate \u2022 "
            "3D: drag rotates, right-drag W/L, wheel zooms", 15000)
        self.resize(1100, 900)
        self._activate(self.panels["axial"])
        # the first 3D frame is drawn on the render thread; meanwhile the view says "preparing"
        self.vr.request_render()

    # ------------------------------------------------------------- building
    def _act(self, key: str, text: str, slot, shortcut: str | None = None, checkable: bool = False) -> QAction:
        a = QAction(text, self)
        if shortcut:
            a.setShortcut(QKeySequence(shortcut))
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        a.setCheckable(checkable)
        a.triggered.connect(slot)
        self.addAction(a)
        self.actions[key] = a
        return a

    def _build_toolbar(self) -> None:
        tb = QToolBar("3D")
        tb.setObjectName("viewer3dToolBar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(tb)
        tb.addWidget(QLabel(" Preset "))
        self.preset_combo = QComboBox()
        self.preset_combo.setObjectName("vrPreset")
        self.preset_combo.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        for p in self.renderer.presets():
            self.preset_combo.addItem(p.name, p.id)
        self.preset_combo.setCurrentIndex(max(0, self.preset_combo.findData(self.renderer.preset.id)))
        self.preset_combo.currentIndexChanged.connect(
            lambda i: self.set_preset(self.preset_combo.itemData(i)))
        tb.addWidget(self.preset_combo)
        self.blend_group = QActionGroup(self)
        for key, text, sc in (("composite", "VR", "Ctrl+Shift+V"), ("mip", "MIP", "Ctrl+Shift+M"),
                              ("minip", "MinIP", "Ctrl+Shift+N")):
            a = self._act(f"blend_{key}", text, lambda _=False, k=key: self.set_blend(k), sc, True)
            a.setToolTip(BLEND_LABELS[key])
            self.blend_group.addAction(a)
            tb.addAction(a)
        self.actions[f"blend_{self.renderer.blend}"].setChecked(True)
        tb.addSeparator()
        tb.addAction(self._act("crop", "Crop", self.set_crop, "Ctrl+Shift+C", True))
        tb.addAction(self._act("reset_camera", "Reset 3D", self.reset_camera, "Ctrl+Shift+R"))
        tb.addAction(self._act("snapshot", "Snapshot", self.snapshot_dialog, "Ctrl+Shift+S"))
        tb.addSeparator()
        tb.addWidget(QLabel(" Slab "))
        self.slab_spin = QDoubleSpinBox()
        self.slab_spin.setObjectName("slabThickness")
        self.slab_spin.setRange(0.0, 200.0)
        self.slab_spin.setDecimals(1)
        self.slab_spin.setSingleStep(1.0)
        self.slab_spin.setSuffix(" mm")
        self.slab_spin.setToolTip("Slab thickness (0 = a thin plane)")
        self.slab_spin.valueChanged.connect(lambda _v: self._slab_changed())
        tb.addWidget(self.slab_spin)
        self.slab_mode = QComboBox()
        self.slab_mode.setObjectName("slabMode")
        self.slab_mode.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        for k, label in SLAB_LABELS.items():
            self.slab_mode.addItem(label, k)
        self.slab_mode.currentIndexChanged.connect(lambda _i: self._slab_changed())
        tb.addWidget(self.slab_mode)
        tb.addAction(self._act("reset_mpr", "Reset MPR", self.reset_mpr, "Ctrl+Shift+0"))

    def _build_menus(self) -> None:
        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addAction(self.actions["snapshot"])
        m.addAction(self._act("close", "Close", self.close, "Ctrl+W"))
        m = mb.addMenu("&3D")
        self.preset_menu = m.addMenu("Presets")
        group = QActionGroup(self)
        for p in self.renderer.presets():
            a = QAction(p.name, self)
            a.setCheckable(True)
            a.setChecked(p.id == self.renderer.preset.id)
            a.triggered.connect(lambda _=False, pid=p.id: self.set_preset(pid))
            group.addAction(a)
            self.preset_menu.addAction(a)
            self.actions[f"preset_{p.id}"] = a
        m.addSeparator()
        for key in ("composite", "mip", "minip"):
            self.actions[f"blend_{key}"].setText(BLEND_LABELS[key])
            m.addAction(self.actions[f"blend_{key}"])
        m.addSeparator()
        m.addAction(self.actions["crop"])
        cube = self._act("cube", "Orientation Cube", lambda on: self._cube(on), None, True)
        cube.setChecked(True)
        m.addAction(cube)
        m.addAction(self.actions["reset_camera"])
        for key in ("composite", "mip", "minip"):
            self.actions[f"blend_{key}"].setIconText({"composite": "VR", "mip": "MIP", "minip": "MinIP"}[key])
        m = mb.addMenu("&MPR")
        wl = m.addMenu("Window/Level (active view)")
        for pr in presets_for_modality(self.volume.modality or ""):
            if pr.is_auto or pr.center is None or pr.width is None or pr.units:
                continue
            a = wl.addAction(f"{pr.name} ({pr.center:g} / {pr.width:g})")
            a.triggered.connect(lambda _=False, pr=pr: self.active.set_window(pr.center, pr.width))
        m.addAction(self.actions["reset_mpr"])

    def _build_crop_bar(self) -> None:
        """Six spin boxes (percent of each axis), shown while cropping."""
        tb = QToolBar("Crop box")
        tb.setObjectName("cropToolBar")
        self.addToolBarBreak()
        self.addToolBar(tb)
        self.crop_bar = tb
        self.crop_spins: list[QSpinBox] = []
        box = QWidget()
        lay = QHBoxLayout(box)
        lay.setContentsMargins(4, 0, 4, 0)
        for i, axis in enumerate(("Columns", "Rows", "Slices")):
            lay.addWidget(QLabel(f"{axis} %"))
            for j in range(2):
                s = QSpinBox()
                s.setRange(0, 100)
                s.setValue(0 if j == 0 else 100)
                s.setObjectName(f"crop{i * 2 + j}")
                s.valueChanged.connect(lambda _v: self._crop_changed())
                lay.addWidget(s)
                self.crop_spins.append(s)
        tb.addWidget(box)
        tb.setVisible(False)

    # ---------------------------------------------------------------- MPR
    def _activate(self, panel: MprPanel) -> None:
        self.active = panel
        for p in self.panels.values():
            p.active = p is panel
            p.update()

    def refresh_mpr(self) -> None:
        for p in self.panels.values():
            p.update()

    def _slab_changed(self) -> None:
        self.engine.set_slab(self.slab_spin.value(), self.slab_mode.currentData())
        self.refresh_mpr()

    def set_slab(self, thickness: float, mode: str = "mip") -> None:
        self.slab_mode.setCurrentIndex(self.slab_mode.findData(mode))
        self.slab_spin.setValue(thickness)
        self._slab_changed()

    def reset_mpr(self) -> None:
        self.engine.reset()
        self.slab_spin.setValue(0.0)
        for p in self.panels.values():
            p.fit()
        self.refresh_mpr()

    # ----------------------------------------------------------------- 3D
    def set_preset(self, preset_id: str) -> None:
        if preset_id is None:
            return
        self.vr.apply(lambda: self.renderer.set_preset(preset_id))
        self._sync_3d_controls()

    def _sync_3d_controls(self) -> None:
        """The preset box, the preset menu and the blend buttons show the renderer's state."""
        pid = self.renderer.preset.id
        i = self.preset_combo.findData(pid)
        if i >= 0 and i != self.preset_combo.currentIndex():
            self.preset_combo.blockSignals(True)
            self.preset_combo.setCurrentIndex(i)
            self.preset_combo.blockSignals(False)
        a = self.actions.get(f"preset_{pid}")
        if a is not None:
            a.setChecked(True)
        self.actions[f"blend_{self.renderer.blend}"].setChecked(True)
        self.actions["crop"].setChecked(self.renderer.crop_enabled)

    def set_blend(self, blend: str) -> None:
        self.vr.apply(lambda: self.renderer.set_blend(blend))
        self._sync_3d_controls()

    def set_crop(self, on: bool) -> None:
        self.actions["crop"].setChecked(bool(on))
        self.crop_bar.setVisible(bool(on))
        self.vr.apply(lambda: self.renderer.set_crop_enabled(bool(on)))

    def set_crop_box(self, box) -> None:
        for s, v in zip(self.crop_spins, box):
            s.blockSignals(True)
            s.setValue(int(round(v * 100)))
            s.blockSignals(False)
        self._crop_changed()

    def _crop_dragged(self, box) -> None:
        """A face handle of the 3D view moved: the spin boxes show it, the renderer takes it."""
        for s, v in zip(self.crop_spins, box):
            s.blockSignals(True)
            s.setValue(int(round(v * 100)))
            s.blockSignals(False)
        self.vr.apply(lambda: self.renderer.set_crop_box(box))

    def _crop_changed(self) -> None:
        box = [s.value() / 100.0 for s in self.crop_spins]
        self.vr.apply(lambda: self.renderer.set_crop_box(box))

    def _cube(self, on: bool) -> None:
        self.vr.apply(lambda: self.renderer.set_orientation_cube(on))

    def reset_camera(self) -> None:
        self.vr.apply(self.renderer.reset_camera)

    def snapshot(self, path: str | Path) -> Path:
        """The 3D view at full quality as a PNG (written on the render thread)."""
        self.vr.render_now()  # every change asked for so far is in
        return self.vr.call(lambda: self.renderer.snapshot(path))

    def snapshot_dialog(self) -> None:
        if is_server_mode():
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save 3D Snapshot", str(Path.home() / "snapshot3d.png"),
                                              "PNG image (*.png)")
        if path:
            if not path.lower().endswith(".png"):
                path += ".png"
            self.snapshot(path)
            self.statusBar().showMessage(f"Saved {path}", 5000)

    def shows(self, level: str, uid: str) -> bool:
        return level == "SERIES" and uid == self.series_uid

    def closeEvent(self, event):  # noqa: N802
        self.vr.shutdown()
        super().closeEvent(event)


# ====================================================================== opening
def load_series_volume(archive, series_uid: str) -> Volume:
    """The largest volume the images of a series form (raises VolumeError / LookupError)."""
    import io

    import pydicom

    from ..dicom.tags import Level
    from ..imaging.volume import VolumeError, load_volumes

    rows = archive.find(Level.IMAGE, {"SeriesInstanceUID": series_uid})
    if not rows:
        raise LookupError(f"series {series_uid} has no images in the database")
    sources: list[Any] = []
    for r in rows:
        f = archive.instance_file(r) if hasattr(archive, "instance_file") else None
        if f is not None and Path(f).is_file():
            sources.append(str(f))
        else:
            sources.append(pydicom.dcmread(io.BytesIO(archive.read_instance(r)), force=True))
    vols = load_volumes(sources)
    if not vols:
        raise VolumeError("the series forms no volume", code="empty")
    return max(vols, key=lambda v: v.shape[0] * v.shape[1] * v.shape[2])


def open_viewer3d(ctx, series_uid: str, parent: QWidget | None = None, *, title: str = "") -> Viewer3DWindow | None:
    """Open the 3D / MPR window on a series (a message tells why when the series is no volume)."""
    app = QApplication.instance()
    if app is not None:
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
    try:
        volume = load_series_volume(ctx.archive, series_uid)
        if volume.shape[0] < 2:
            raise ValueError("a 3D view needs a series of at least two slices")
        win = Viewer3DWindow(volume, title=title, parent=parent)
    except Exception as exc:  # noqa: BLE001 - told to the user
        log.warning("3D viewer for %s: %s", series_uid, exc)
        if app is not None:
            QApplication.restoreOverrideCursor()
        notify(WARNING, "Cannot open the 3D viewer", str(exc), parent=parent)
        return None
    if app is not None:
        QApplication.restoreOverrideCursor()
    if not is_server_mode():
        win.show()
    return win


def add_viewer3d_action(viewer, menu) -> QAction:
    """The "3D / MPR…" action of a 2D viewer window: opens the active pane's series."""
    a = QAction("3D / MPR\u2026", viewer)
    a.setShortcut(QKeySequence("Ctrl+3"))
    a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)

    def trigger() -> None:
        stack = viewer.view.stack
        if stack is None:
            return
        viewer.viewer3d = open_viewer3d(viewer.ctx, stack.series_uid, parent=viewer,
                                        title=stack.description)

    a.triggered.connect(trigger)
    viewer.addAction(a)
    menu.addAction(a)
    return a
