"""The 2D viewer window: one to four image panes, MPR, tools, presets, cine, export.

Slices arrive progressively (:mod:`.series` loads them in a background thread
after the first one is shown); each pane's slider shows how much is loaded.
The "MPR" layout replaces the panes by the axial, coronal and sagittal views
of the active pane's series (:mod:`.mpr`), built off the GUI thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QRectF, QSignalBlocker, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QColor, QGuiApplication, QKeySequence, QPainter
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..dicom.tags import Level
from .imageview import ImageView
from .mpr import MprWidget
from .notify import ERROR, WARNING, is_server_mode, notify
from .presets import presets_for_modality
from .series import SeriesStack
from .shortcuts import VIEWER_COMMANDS, ShortcutsDialog

log = logging.getLogger(__name__)

LAYOUTS = {"layout_1x1": (1, 1), "layout_1x2": (1, 2), "layout_2x2": (2, 2)}
MPR_LAYOUT = "layout_mpr"


class LoadSlider(QSlider):
    """A slice slider whose groove fills as the series' slices are decoded."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(Qt.Orientation.Horizontal, parent)
        self.loaded = 1.0  # fraction of slices decoded

    def set_loaded(self, fraction: float) -> None:
        fraction = max(0.0, min(1.0, fraction))
        if abs(fraction - self.loaded) >= 0.005 or (fraction == 1.0) != (self.loaded == 1.0):
            self.loaded = fraction
            self.setToolTip("" if fraction >= 1.0 else f"Loading: {fraction * 100:.0f}% of the images")
            self.update()

    def paintEvent(self, event):  # noqa: N802
        super().paintEvent(event)
        if self.loaded >= 1.0:
            return
        p = QPainter(self)
        h = 3.0
        r = QRectF(2, self.height() - h - 1, (self.width() - 4) * self.loaded, h)
        p.fillRect(QRectF(2, r.y(), self.width() - 4, h), QColor(90, 90, 90, 120))
        p.fillRect(r, QColor(60, 140, 230))
        p.end()


class Pane(QWidget):
    """An image view with its slider and series chooser."""

    def __init__(self, ctx, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.view = ImageView(ctx)
        self.slider = LoadSlider()
        self.slider.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.slider.setObjectName("sliceSlider")
        self.series_combo = QComboBox()
        self.series_combo.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.series_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.index_label = QLabel()
        self.index_label.setMinimumWidth(70)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(4, 0, 4, 0)
        bottom.addWidget(self.series_combo)
        bottom.addWidget(self.slider, 1)
        bottom.addWidget(self.index_label)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(1, 1, 1, 1)
        lay.setSpacing(2)
        lay.addWidget(self.view, 1)
        lay.addLayout(bottom)
        self.stack: SeriesStack | None = None
        self.slider.valueChanged.connect(self.view.set_index)
        self.view.sliceChanged.connect(self._slice_changed)

    def set_stack(self, stack: SeriesStack, index: int = 0) -> None:
        self.stack = stack
        with QSignalBlocker(self.slider):
            self.slider.setRange(0, max(0, len(stack) - 1))
        self.slider.set_loaded(stack.progress())
        self.view.set_stack(stack, index)

    def stack_changed(self, what: str) -> None:
        """The stack's loader progressed (GUI thread)."""
        if self.stack is None:
            return
        self.slider.set_loaded(self.stack.progress())
        if what == "order":
            s = self.view.current_slice()
            if s is not None:
                self.view.remap_after_reorder(s.key)
        if what not in ("decoded", "headers"):  # the slice on screen was decoded on demand: nothing new
            self.view.update()

    def _slice_changed(self, index: int) -> None:
        with QSignalBlocker(self.slider):
            self.slider.setValue(index)
        n = len(self.stack) if self.stack is not None else 0
        self.index_label.setText(f"{index + 1} / {n}")


class ViewerWindow(QMainWindow):
    def __init__(self, ctx, series_uid: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setObjectName("viewerWindow")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.series_uid = series_uid
        self._stacks: dict[str, SeriesStack] = {}
        first = self._stack(series_uid)
        info = first.info
        self.study_uid = str(info.get("StudyInstanceUID") or "")
        self.study_series = self._study_series()
        self.panes: list[Pane] = []
        self.active_pane: Pane | None = None
        self.layout_id = "layout_1x1"
        self.mpr: MprWidget | None = None
        self._syncing = False
        self.actions: dict[str, QAction] = {}
        from .browser_model import format_person_name

        self.setWindowTitle(f"{format_person_name(str(info.get('PatientName') or ''))} \u2014 "
                            f"{first.description or 'Series'}")
        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(2)
        self.central = QStackedWidget()
        self.central.addWidget(self.grid_host)
        self.setCentralWidget(self.central)
        self.cine_timer = QTimer(self)
        self.cine_timer.timeout.connect(self._cine_tick)
        self.fps = QSpinBox()
        self.fps.setRange(1, 60)
        self.fps.setValue(10)
        self.fps.setSuffix(" fps")
        self.fps.setToolTip("Cine frame rate")
        self.fps.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.fps.valueChanged.connect(self._fps_changed)
        self._build_actions()
        self._build_menus_and_toolbar()
        self.set_layout("layout_1x1")
        self.resize(1000, 860)
        self.statusBar().showMessage("Right-drag: window/level \u2022 wheel: images \u2022 Ctrl+wheel: zoom", 8000)
        ctx.viewers.append(self)

    # ------------------------------------------------------------ series
    def _stack(self, series_uid: str) -> SeriesStack:
        st = self._stacks.get(series_uid)
        if st is None:
            st = self._stacks[series_uid] = SeriesStack(self.ctx, series_uid)
            st.on_changed = lambda what, st=st: self._stack_changed(st, what)
        return st

    def _stack_changed(self, stack: SeriesStack, what: str) -> None:
        for p in self.panes:
            if p.stack is stack:
                p.stack_changed(what)
        if what == "order":
            self._synchronise(self.active_pane)

    def _study_series(self) -> list[dict]:
        rows = self.ctx.archive.find(Level.SERIES, {"StudyInstanceUID": self.study_uid}) if self.study_uid else []
        rows.sort(key=lambda r: (int(r.get("SeriesNumber") or 0), r["SeriesInstanceUID"]))
        return rows or [{"SeriesInstanceUID": self.series_uid, **self._stacks[self.series_uid].info}]

    def _series_label(self, r: dict) -> str:
        return f"#{r.get('SeriesNumber') or '?'} {r.get('SeriesDescription') or ''} ({r.get('Modality') or '?'})"

    # ------------------------------------------------------------ actions
    def _build_actions(self) -> None:
        handlers = {
            "prev_slice": lambda: self.view.step(-1), "next_slice": lambda: self.view.step(1),
            "page_up": lambda: self.view.step(-10), "page_down": lambda: self.view.step(10),
            "first_slice": lambda: self.view.set_index(0),
            "last_slice": lambda: self.view.set_index(10 ** 9),
            "prev_series": lambda: self.switch_series(-1), "next_series": lambda: self.switch_series(1),
            "cine": self.toggle_cine, "sync": lambda on: None,
            "delete_roi": lambda: self.view.delete_selected_roi(), "cancel": lambda: self.view.cancel(),
            "wl_default": lambda: self.mpr.default_window() if self.mpr_active else self.view.default_window(),
            "wl_full": lambda: self.view.full_window(),
            "invert": lambda on: self.mpr.set_invert(on) if self.mpr_active else self.view.set_invert(on),
            "rotate_cw": lambda: self.view.rotate(90), "rotate_ccw": lambda: self.view.rotate(-90),
            "flip_h": lambda: self.view.flip(True), "flip_v": lambda: self.view.flip(False),
            "fit": lambda: self.mpr.fit() if self.mpr_active else self.view.fit(),
            "actual_size": lambda: self.view.actual_size(),
            "zoom_in": lambda: self.view.set_zoom(self.view.zoom * 1.25),
            "zoom_out": lambda: self.view.set_zoom(self.view.zoom / 1.25),
            "reset": lambda: self.view.reset_view(),
            "export": self.export_dialog, "copy": self.copy_view, "close": self.close,
        }
        self.tool_group = QActionGroup(self)
        self.layout_group = QActionGroup(self)
        for c in VIEWER_COMMANDS:
            a = QAction(c.text, self)
            a.setShortcuts([QKeySequence(k) for k in c.keys])
            a.setCheckable(c.checkable)
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            if c.id.startswith("tool_"):
                tool = c.id[5:]
                a.triggered.connect(lambda _=False, t=tool: self.set_tool(t))
                self.tool_group.addAction(a)
            elif c.id in LAYOUTS or c.id == MPR_LAYOUT:
                a.triggered.connect(lambda _=False, lid=c.id: self.set_layout(lid))
                self.layout_group.addAction(a)
            else:
                a.triggered.connect(handlers[c.id])
            self.addAction(a)
            self.actions[c.id] = a
        self.actions["tool_wl"].setChecked(True)
        self.actions["sync"].setChecked(True)
        self.preset_actions: list[QAction] = []
        self.preset_modality: str | None = None

    def _build_menus_and_toolbar(self) -> None:
        mb = self.menuBar()
        groups: dict[str, QMenu] = {}
        titles = {"File": "&File", "Browse": "&Series", "Window": "&Window/Level", "Image": "&Image",
                  "Tools": "&Tools", "Layout": "&Layout"}
        for name in ("File", "Browse", "Window", "Image", "Tools", "Layout"):
            groups[name] = mb.addMenu(titles[name])
        for c in VIEWER_COMMANDS:
            groups[c.group].addAction(self.actions[c.id])
        wl = groups["Window"]
        self.window_menu = wl
        wl.addSeparator()
        fps_menu = groups["Browse"].addMenu("Cine Frame Rate")
        for f in (2, 5, 10, 15, 20, 30):
            a = fps_menu.addAction(f"{f} fps")
            a.triggered.connect(lambda _=False, f=f: self.fps.setValue(f))
        from .viewer3d import add_viewer3d_action  # the 3D / MPR window (VTK loads when it opens)

        self.viewer3d_action = add_viewer3d_action(self, groups["Image"])
        help_menu = mb.addMenu("&Help")
        act = help_menu.addAction("&Keyboard Shortcuts...")
        act.triggered.connect(self.show_shortcuts)

        tb = self.addToolBar("Tools")
        tb.setObjectName("toolsToolBar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        short = {"tool_wl": "W/L", "tool_pan": "Pan", "tool_zoom": "Zoom", "tool_select": "Select",
                 "tool_length": "Length", "tool_angle": "Angle", "tool_rectangle": "Rect",
                 "tool_ellipse": "Ellipse", "tool_polygon": "Polygon", "tool_freehand": "Freehand",
                 "tool_point": "Point", "tool_text": "Text"}
        for cid, label in short.items():
            a = self.actions[cid]
            a.setIconText(label)
            tb.addAction(a)
        self.addToolBarBreak()
        tb = self.addToolBar("View")
        tb.setObjectName("viewToolBar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        presets_btn = QToolButton()
        presets_btn.setText("Presets")
        presets_btn.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        presets_btn.setMenu(wl)
        tb.addWidget(presets_btn)
        for cid, label in (("invert", "Invert"), ("rotate_cw", "Rotate"), ("flip_h", "Flip H"),
                           ("fit", "Fit"), ("actual_size", "1:1")):
            self.actions[cid].setIconText(label)
            tb.addAction(self.actions[cid])
        tb.addSeparator()
        for cid, label in (("layout_1x1", "1\u00d71"), ("layout_1x2", "1\u00d72"), ("layout_2x2", "2\u00d72"),
                           (MPR_LAYOUT, "MPR"), ("sync", "Sync")):
            self.actions[cid].setIconText(label)
            tb.addAction(self.actions[cid])
        tb.addSeparator()
        self.actions["cine"].setIconText("Play")
        tb.addAction(self.actions["cine"])
        tb.addWidget(self.fps)
        tb.addSeparator()
        self.actions["export"].setIconText("Export")
        tb.addAction(self.actions["export"])

    # -------------------------------------------------------------- panes
    @property
    def view(self) -> ImageView:
        return (self.active_pane or self.panes[0]).view

    def set_layout(self, layout_id: str) -> None:
        if layout_id == MPR_LAYOUT:
            self.show_mpr()
            return
        self.central.setCurrentWidget(self.grid_host)
        rows, cols = LAYOUTS[layout_id]
        n = rows * cols
        self.layout_id = layout_id
        self.actions[layout_id].setChecked(True)
        while len(self.panes) < n:
            self._add_pane(len(self.panes))
        for i, pane in enumerate(self.panes):
            self.grid.removeWidget(pane)
            if i < n:
                self.grid.addWidget(pane, i // cols, i % cols)
                pane.show()
            else:
                pane.hide()
        for r in range(2):
            self.grid.setRowStretch(r, 1 if r < rows else 0)
        for c in range(2):
            self.grid.setColumnStretch(c, 1 if c < cols else 0)
        if self.active_pane is None or self.panes.index(self.active_pane) >= n:
            self._activate(self.panes[0])
        self._show_active()
        QTimer.singleShot(0, self._refit_visible)

    # ---------------------------------------------------------------- MPR
    @property
    def mpr_active(self) -> bool:
        return self.mpr is not None and self.central.currentWidget() is self.mpr

    def show_mpr(self) -> MprWidget:
        """Axial, coronal and sagittal views of the active pane's series, at its slice and window."""
        self.actions[MPR_LAYOUT].setChecked(True)
        if self.mpr is None:
            self.mpr = MprWidget(self.ctx)
            self.mpr.cursorInfo.connect(lambda text: self.statusBar().showMessage(text))
            self.central.addWidget(self.mpr)
        self.central.setCurrentWidget(self.mpr)
        v = self.view
        dec = v.stack.cached(v.index) if v.stack is not None else None
        cursor = dec.plane.center if dec is not None and dec.has_geometry else None
        self.mpr.show_series(v.stack, cursor=cursor, window=v.window)
        self.mpr.set_invert(v.invert)
        self.mpr.views["axial"].setFocus()
        return self.mpr

    def _apply_preset(self, preset) -> None:
        if not self.mpr_active:
            self.view.apply_preset(preset)
            return
        vals = self.mpr.active_view.values()
        try:
            w = preset.window(vals if preset.is_auto else None)
        except Exception as exc:  # noqa: BLE001 - e.g. an SUV preset without SUV data
            self.statusBar().showMessage(f"{preset.name}: {exc}", 5000)
            return
        self.mpr.set_window(w)

    def visible_panes(self) -> list[Pane]:
        rows, cols = LAYOUTS[self.layout_id]
        return self.panes[: rows * cols]

    def _refit_visible(self) -> None:
        for p in self.visible_panes():
            if p.view.fit_mode:
                p.view.fit()

    def _add_pane(self, i: int) -> None:
        pane = Pane(self.ctx, self.grid_host)
        self.panes.append(pane)
        with QSignalBlocker(pane.series_combo):
            for r in self.study_series:
                pane.series_combo.addItem(self._series_label(r), r["SeriesInstanceUID"])
        uids = [r["SeriesInstanceUID"] for r in self.study_series]
        start = uids.index(self.series_uid) if self.series_uid in uids else 0
        uid = uids[(start + i) % len(uids)] if uids else self.series_uid
        self._show_series(pane, uid)
        pane.series_combo.currentIndexChanged.connect(
            lambda idx, pane=pane: self._show_series(pane, pane.series_combo.itemData(idx)))
        pane.view.activated.connect(lambda pane=pane: self._activate(pane))
        pane.view.sliceChanged.connect(lambda idx, pane=pane: self._synchronise(pane))
        pane.view.cursorInfo.connect(lambda text: self.statusBar().showMessage(text))
        pane.view.set_tool(self._current_tool())

    def _show_series(self, pane: Pane, series_uid: str) -> None:
        try:
            stack = self._stack(series_uid)
        except Exception as exc:  # noqa: BLE001 - deleted meanwhile, unreadable
            notify(WARNING, "Cannot open series", str(exc), parent=self)
            return
        idx = pane.series_combo.findData(series_uid)
        if idx >= 0 and pane.series_combo.currentIndex() != idx:
            with QSignalBlocker(pane.series_combo):
                pane.series_combo.setCurrentIndex(idx)
        pane.set_stack(stack, 0)
        if pane is self.active_pane:
            self._rebuild_presets()
            if self.mpr_active:
                self.show_mpr()
        self._synchronise(self.active_pane or pane, only=pane)

    def switch_series(self, delta: int) -> None:
        pane = self.active_pane or self.panes[0]
        combo = pane.series_combo
        if combo.count() <= 1:
            return
        combo.setCurrentIndex((combo.currentIndex() + delta) % combo.count())

    def _activate(self, pane: Pane) -> None:
        if self.active_pane is pane:
            return
        self.active_pane = pane
        self._show_active()
        self._rebuild_presets()
        with QSignalBlocker(self.actions["invert"]):
            self.actions["invert"].setChecked(pane.view.invert)
        with QSignalBlocker(self.actions["invert"]):
            self.actions["invert"].setChecked(pane.view.invert)

    def _rebuild_presets(self) -> None:
        """The Window/Level menu lists the presets of the active pane's modality (keys 1-9)."""
        stack = self.view.stack
        modality = str(stack.info.get("Modality") or "") if stack is not None else ""
        if modality == self.preset_modality:
            return
        self.preset_modality = modality
        for a in self.preset_actions:
            self.window_menu.removeAction(a)
            self.removeAction(a)
            a.deleteLater()
        self.preset_actions = []
        for i, pr in enumerate(presets_for_modality(modality)):
            label = pr.name if pr.is_auto else f"{pr.name} ({pr.center:g} / {pr.width:g}{' SUV' if pr.units else ''})"
            a = QAction(label, self)
            if i < 9:
                a.setShortcut(QKeySequence(str(i + 1)))
            a.triggered.connect(lambda _=False, pr=pr: self._apply_preset(pr))
            self.addAction(a)
            self.window_menu.addAction(a)
            self.preset_actions.append(a)

    def _show_active(self) -> None:
        """Frame the active pane when more than one is visible."""
        many = len(self.visible_panes()) > 1
        for p in self.panes:
            p.view.active = many and p is self.active_pane
            p.view.update()

    def _current_tool(self) -> str:
        a = self.tool_group.checkedAction()
        for cid, act in self.actions.items():
            if act is a and cid.startswith("tool_"):
                return cid[5:]
        return "wl"

    def set_tool(self, tool: str) -> None:
        self.actions[f"tool_{tool}"].setChecked(True)
        for p in self.panes:
            p.view.set_tool(tool)

    def _synchronise(self, source: Pane, only: Pane | None = None) -> None:
        """Move the other panes to the slice nearest to the source's position."""
        if self._syncing or not self.actions["sync"].isChecked() or source is None:
            return
        dec = source.view.stack.cached(source.view.index) if source.view.stack is not None else None
        if dec is None or not dec.has_geometry:
            return
        point = dec.plane.center
        self._syncing = True
        try:
            for p in self.visible_panes():
                if p is source or p.stack is None or (only is not None and p is not only):
                    continue
                k = p.stack.nearest_to(point)
                if k is not None:
                    p.view.set_index(k)
        finally:
            self._syncing = False

    # --------------------------------------------------------------- cine
    def toggle_cine(self, on: bool | None = None) -> None:
        """Start or stop cine (``on`` None: toggle)."""
        if on is None:
            on = not self.cine_timer.isActive()
        if on:
            self.cine_timer.start(int(1000 / self.fps.value()))
            self.actions["cine"].setIconText("Stop")
        else:
            self.cine_timer.stop()
            self.actions["cine"].setIconText("Play")
        with QSignalBlocker(self.actions["cine"]):
            self.actions["cine"].setChecked(on)

    def _fps_changed(self, fps: int) -> None:
        if self.cine_timer.isActive():
            self.cine_timer.setInterval(int(1000 / fps))

    def _cine_tick(self) -> None:
        v = self.view
        if v.stack is None or len(v.stack) < 2:
            return
        v.set_index((v.index + 1) % len(v.stack))

    # ------------------------------------------------------------- export
    def grab_view(self):
        return self.view.grab()

    def export_view(self, path: str | Path) -> bool:
        path = Path(path)
        fmt = "JPG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            path = path.with_suffix(".png")
        ok = self.grab_view().save(str(path), fmt, 95)
        if not ok:
            notify(ERROR, "Export failed", f"The image could not be written to {path}.", parent=self)
        return ok

    def export_dialog(self) -> None:
        if is_server_mode():
            return
        info = self.view.stack.info if self.view.stack is not None else {}
        name = f"{info.get('PatientID') or 'image'}-se{info.get('SeriesNumber') or ''}-im{self.view.index + 1}.png"
        path, _ = QFileDialog.getSaveFileName(self, "Export View", str(Path.home() / name),
                                              "PNG image (*.png);;JPEG image (*.jpg *.jpeg)")
        if path:
            if self.export_view(path):
                self.statusBar().showMessage(f"Saved {path}", 5000)

    def copy_view(self) -> None:
        QGuiApplication.clipboard().setPixmap(self.grab_view())
        self.statusBar().showMessage("View copied to the clipboard", 3000)

    def show_shortcuts(self) -> None:
        if not is_server_mode():
            ShortcutsDialog(self).exec()

    def shows(self, level: str, uid: str) -> bool:
        """Whether this window shows the patient (Patient ID), study, series or instance ``uid``."""
        info = self._stacks[self.series_uid].info
        if level == "PATIENT":
            return info.get("PatientID") == uid
        if level == "STUDY":
            return self.study_uid == uid
        if level == "SERIES":
            return uid in self._stacks
        return False

    # ---------------------------------------------------------------- close
    def closeEvent(self, event):  # noqa: N802
        self.cine_timer.stop()
        if self.mpr is not None:
            self.mpr.cancel()
        for st in self._stacks.values():
            st.close()
        if self in self.ctx.viewers:
            self.ctx.viewers.remove(self)
        super().closeEvent(event)
