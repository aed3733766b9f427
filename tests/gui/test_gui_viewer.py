"""The 2D viewer: W/L by drag, scrolling, overlays, ROIs (stats and persistence), layouts, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
from guihelpers import R, dataset_of, drag, key, mouse, series_uid, wheel
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QImage

from osirix_py.dicom import pixels
from osirix_py.dicom.synthetic import hu_at
from osirix_py.gui.imageview import wl_sensitivity
from osirix_py.gui.viewer import ViewerWindow
from osirix_py.imaging.roi import EllipseROI
from osirix_py.imaging.volume import PlanarImage


@pytest.fixture
def viewer(qtbot, ctx):
    v = ViewerWindow(ctx, series_uid(ctx.archive, "CT"))
    qtbot.addWidget(v)
    v.resize(900, 800)
    v.show()
    qtbot.waitExposed(v)
    return v


def _grey(view, x, y) -> int:
    img = view.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    return img.pixelColor(int(x), int(y)).red()


def test_first_image_overlays_orientation_and_scale(viewer):
    v = viewer.view
    assert v.index == 0 and len(v.stack) == 60
    ov = v.overlay_text()
    assert ov["tl"][0] == "Demo, Patient" and ov["tl"][1] == "ID: DEMO-001"
    assert "Demo phantom study" in ov["tr"] and "2024-03-01 10:15:00" in ov["tr"]
    assert any(t.startswith("Se: 1 CT phantom 1.5 mm") for t in ov["tr"])
    assert ov["bl"][0].startswith("Im: 1/60")
    assert "WL: 40  WW: 400" in ov["bl"]
    assert v.orientation_letters() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    mm, px = v.scale_bar()
    assert mm in (10, 20, 50, 100) and math.isclose(px, mm / (0.7 / v.zoom), rel_tol=1e-6)


def test_window_level_drag_renders_what_the_imaging_core_predicts(qtbot, viewer):
    v = viewer.view
    v.set_index(30)
    v.actual_size()
    qtbot.wait(10)
    before = v.rendered().copy()
    c0, w0 = v.window.center, v.window.width
    centre = QPointF(v.width() / 2, v.height() / 2)
    drag(v, centre, centre + QPointF(60, -40), button=R)
    k = wl_sensitivity(w0)
    assert v.window.center == pytest.approx(c0 - 40 * k)
    assert v.window.width == pytest.approx(w0 + 60 * k)
    # The core, on its own: decode the file and render through the same window.
    s = v.current_slice()
    ds = dataset_of(viewer.ctx.archive, s.sop_instance_uid)
    expected = pixels.DisplayPipeline.from_dataset(ds).render(pixels.decode_frame(ds, 0),
                                                              pixels.Window(v.window.center, v.window.width))
    assert np.array_equal(v.rendered(), expected)
    assert not np.array_equal(before, expected)
    # And the screen shows those values (1:1, nearest pixel).
    for dx, dy in ((0, 0), (35, 10), (-50, 45), (20, -60)):
        x, y = v.width() // 2 + dx, v.height() // 2 + dy
        col, row = (int(math.floor(t)) for t in v.widget_to_image(QPointF(x + 0.5, y + 0.5)))
        assert _grey(v, x, y) == expected[row, col]
    assert f"WL: {v.window.center:.0f}  WW: {v.window.width:.0f}" in v.overlay_text()["bl"]


def test_scrolling_changes_slice_and_overlay(qtbot, viewer):
    v = viewer.view
    pane = viewer.panes[0]
    pos0 = v.overlay_text()["bl"][1]
    wheel(v, QPointF(100, 100), delta=-120)
    assert v.index == 1 and v.overlay_text()["bl"][0].startswith("Im: 2/60")
    assert v.overlay_text()["bl"][1] != pos0 and pane.slider.value() == 1
    v.setFocus()
    key(qtbot, viewer, Qt.Key.Key_End)
    assert v.index == 59 and pane.index_label.text() == "60 / 60"
    key(qtbot, viewer, Qt.Key.Key_PageUp)
    assert v.index == 49
    key(qtbot, viewer, Qt.Key.Key_Up)
    assert v.index == 48
    key(qtbot, viewer, Qt.Key.Key_Home)
    assert v.index == 0
    pane.slider.setValue(12)
    assert v.index == 12
    # The positions follow the geometry: 1.5 mm apart, sorted along the normal.
    qtbot.waitUntil(lambda: v.stack.sorted_by_position, timeout=10000)
    locs = [float(s.plane.position @ s.plane.normal) for s in v.stack.slices]
    assert np.allclose(np.diff(locs), 1.5)


def _draw_ellipse_in_water(v, qtbot):
    """An ellipse of radius ~20 mm centred 40 mm anterior-right... in the water only."""
    dec = v.stack.get(v.index)
    plane = dec.plane
    centre_lps = np.array([-20.0, -40.0, float(plane.position[2])])  # water, away from the inserts
    col, row, _ = plane.patient_to_pixel(centre_lps)[0]
    r = 20.0 / plane.pixel_spacing[1]
    a = v.image_to_widget(col + 0.5 - r, row + 0.5 - r)
    b = v.image_to_widget(col + 0.5 + r, row + 0.5 + r)
    v.parent().window().set_tool("ellipse")
    drag(v, a, b)
    qtbot.wait(10)
    return v.roi_items()[-1]


def test_ellipse_roi_statistics_match_the_imaging_core_and_the_phantom(qtbot, viewer):
    v = viewer.view
    v.set_index(30)
    item = _draw_ellipse_in_water(v, qtbot)
    assert item.roi.kind == "ellipse" and item.db_id is not None
    s = v.current_slice()
    ds = dataset_of(viewer.ctx.archive, s.sop_instance_uid)
    direct = item.roi.measure(PlanarImage.from_dataset(ds))
    st = item.stats
    assert st.count == direct.count > 1000
    assert st.mean == pytest.approx(direct.mean) and st.std == pytest.approx(direct.std)
    assert (st.min, st.max) == (direct.min, direct.max)
    # Water is 0 HU; the demo CT has 10 HU noise.
    assert abs(st.mean) < 2.0 and 7 < st.std < 13 and st.units == "HU"
    pts = item.roi.outline(32)
    assert np.all(hu_at(pts) == 0)
    assert any(line.startswith("Mean: ") for line in item.label_lines())
    assert isinstance(item.roi, EllipseROI)


def test_roi_is_saved_with_the_study_and_reloaded(qtbot, ctx):
    uid = series_uid(ctx.archive, "CT")
    v1 = ViewerWindow(ctx, uid)
    qtbot.addWidget(v1)
    v1.show()
    v1.view.set_index(20)
    item = _draw_ellipse_in_water(v1.view, qtbot)
    sop = v1.view.current_slice().sop_instance_uid
    geometry, mean = item.roi.to_dict()["geometry"], item.stats.mean
    v1.close()
    assert [r.kind for r in ctx.rois.for_instance(sop)] == ["ellipse"]
    v2 = ViewerWindow(ctx, uid)
    qtbot.addWidget(v2)
    v2.show()
    v2.view.set_index(v2.view.stack.index_of((sop, 0)))
    (again,) = v2.view.roi_items()
    assert again.roi.to_dict()["geometry"] == geometry
    assert again.stats.mean == pytest.approx(mean)
    # Other slices have no ROI.
    v2.view.step(1)
    assert v2.view.roi_items() == []
    v2.close()


def test_select_move_and_delete_an_roi(qtbot, viewer):
    v = viewer.view
    v.set_index(30)
    item = _draw_ellipse_in_water(v, qtbot)
    c0 = item.roi.center.copy()
    viewer.set_tool("select")
    dec = v.stack.get(v.index)
    col, row, _ = dec.plane.patient_to_pixel(c0)[0]
    p = v.image_to_widget(col + 0.5, row + 0.5)
    drag(v, p, p + QPointF(30, 0))
    moved = v.roi_items()[0]
    assert moved is item and v.selected is item
    assert moved.roi.center[0] > c0[0] + 5  # moved towards the patient's left (screen right)
    assert ctx_roi(viewer, item)["geometry"]["center"][0] == pytest.approx(moved.roi.center[0])
    key(qtbot, viewer, Qt.Key.Key_Delete)
    assert v.roi_items() == []
    assert viewer.ctx.rois.for_instance(v.current_slice().sop_instance_uid) == []


def ctx_roi(viewer, item):
    (stored,) = [r for r in viewer.ctx.rois.for_instance(viewer.view.current_slice().sop_instance_uid)
                 if r.id == item.db_id]
    return stored.data


@pytest.mark.parametrize("tool,clicks", [("length", 2), ("angle", 3), ("rectangle", 2),
                                         ("polygon", 4), ("freehand", 2), ("point", 1)])
def test_every_roi_tool_draws(qtbot, viewer, tool, clicks):
    v = viewer.view
    v.set_index(30)
    viewer.set_tool(tool)
    cx, cy = v.width() / 2, v.height() / 2
    pts = [QPointF(cx - 60, cy - 40), QPointF(cx + 50, cy - 30), QPointF(cx + 40, cy + 50),
           QPointF(cx - 50, cy + 40)]
    if tool in ("length", "rectangle", "freehand"):
        if tool == "freehand":
            mouse(v, "press", pts[0])
            for q in pts[1:] + [pts[0] + QPointF(3, 3)]:
                mouse(v, "move", q, buttons=Qt.MouseButton.LeftButton)
            mouse(v, "release", pts[0] + QPointF(3, 3))
        else:
            drag(v, pts[0], pts[2])
    else:
        for q in pts[:clicks]:
            mouse(v, "press", q)
            mouse(v, "release", q)
        if tool == "polygon":
            mouse(v, "double", pts[clicks - 1])
    (item,) = v.roi_items()
    kind = {"length": "line"}.get(tool, tool)
    assert item.roi.kind == kind and item.db_id is not None
    lines = item.label_lines()
    assert lines, tool
    if tool == "angle":
        assert lines[0].startswith("Angle: ")
    if tool == "length":
        assert lines[0].startswith("Length: ")


def test_text_annotation(qtbot, viewer, monkeypatch):
    from PySide6.QtWidgets import QInputDialog

    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("kidney cyst", True))
    v = viewer.view
    viewer.set_tool("text")
    mouse(v, "press", QPointF(200, 200))
    (item,) = v.roi_items()
    assert item.is_text and item.label_lines() == ["kidney cyst"]
    stored = viewer.ctx.rois.for_instance(v.current_slice().sop_instance_uid)[0]
    assert stored.data["display"] == "text" and stored.name == "kidney cyst"


def test_layout_1x2_scrolls_in_sync_by_position(qtbot, viewer):
    viewer.set_layout("layout_1x2")
    ct, mr = viewer.panes[0], viewer.panes[1]
    assert mr.isVisible() and mr.stack.info["Modality"] == "MR"
    qtbot.waitUntil(lambda: ct.stack.sorted_by_position and mr.stack.sorted_by_position, timeout=10000)
    for k in (5, 30, 55):
        ct.view.set_index(k)
        z_ct = float(ct.stack.slices[k].plane.position[2])
        z_mr = float(mr.stack.slices[mr.view.index].plane.position[2])
        assert abs(z_ct - z_mr) <= 2.0 + 1e-6  # MR slices are 4 mm apart
    viewer.actions["sync"].setChecked(False)
    before = mr.view.index
    ct.view.set_index(0)
    assert mr.view.index == before
    viewer.set_layout("layout_2x2")
    assert sum(p.isVisible() for p in viewer.panes) == 4
    viewer.set_layout("layout_1x1")
    assert sum(p.isVisible() for p in viewer.panes) == 1


def test_invert_rotate_flip_zoom_and_presets(qtbot, viewer):
    v = viewer.view
    v.set_index(30)
    a = v.rendered().copy()
    viewer.actions["invert"].trigger()
    assert v.invert and np.array_equal(v.rendered(), 255 - a)
    viewer.actions["rotate_cw"].trigger()
    assert v.rotation == 90
    assert v.orientation_letters() == {"left": "P", "right": "A", "top": "R", "bottom": "L"}
    viewer.actions["flip_h"].trigger()
    assert v.orientation_letters()["left"] == "A"
    viewer.actions["reset"].trigger()
    assert v.rotation == 0 and not v.invert and v.orientation_letters()["left"] == "R"
    viewer.actions["actual_size"].trigger()
    assert v.zoom == 1.0
    wheel(v, QPointF(300, 300), delta=120, modifiers=Qt.KeyboardModifier.ControlModifier)
    assert v.zoom > 1.0
    viewer.actions["fit"].trigger()
    assert v.zoom == pytest.approx(v.fit_zoom())
    lung = next(a for a in viewer.preset_actions if a.text().startswith("Lung"))
    lung.trigger()
    assert (v.window.center, v.window.width) == (-600, 1500)
    key(qtbot, viewer, Qt.Key.Key_0)
    assert (v.window.center, v.window.width) == (40, 400)


def test_cine_plays_at_the_chosen_rate(qtbot, viewer):
    v = viewer.view
    viewer.fps.setValue(50)
    viewer.actions["cine"].trigger()
    assert viewer.cine_timer.isActive() and viewer.cine_timer.interval() == 20
    qtbot.waitUntil(lambda: v.index >= 3, timeout=5000)
    viewer.actions["cine"].trigger()
    assert not viewer.cine_timer.isActive()


def test_value_under_cursor_in_hu(qtbot, viewer):
    v = viewer.view
    v.set_index(30)
    dec = v.stack.get(30)
    # The bone insert: +1000 HU at (50, 0, z).
    col, row, _ = dec.plane.patient_to_pixel(np.array([50.0, 0.0, float(dec.plane.position[2])]))[0]
    mouse(v, "move", v.image_to_widget(col + 0.5, row + 0.5), buttons=Qt.MouseButton.NoButton)
    br = v.overlay_text()["br"]
    assert br[1].startswith("Value: ") and br[1].endswith("HU")
    assert abs(float(br[1].split()[1]) - 1000) < 50


def test_export_png_and_jpeg(viewer, tmp_path):
    assert viewer.export_view(tmp_path / "a.png")
    assert viewer.export_view(tmp_path / "b.jpg")
    for name in ("a.png", "b.jpg"):
        img = QImage(str(tmp_path / name))
        assert not img.isNull() and img.width() == viewer.view.width()


def test_mr_series_and_switching_series(qtbot, viewer):
    from osirix_py.imaging.presets import presets_for

    ct_presets = [a.text() for a in viewer.preset_actions]
    assert any(t.startswith("Lung") for t in ct_presets)
    viewer.actions["next_series"].trigger()
    v = viewer.view
    assert v.stack.info["Modality"] == "MR" and len(v.stack) == 24
    # The MR presets of the imaging core replace the CT ones (keys 1-9).
    mr = presets_for("MR")
    assert [a.text() for a in viewer.preset_actions][0].startswith(mr[0].name)
    assert viewer.preset_actions[0].shortcut().toString() == "1"
    dec = v.stack.get(v.index)
    if not dec.pipeline.windows:  # no window in the file: the modality's first preset
        assert v.window == mr[0].window(dec.modality_values())
    viewer.preset_actions[1].trigger()
    assert v.window == mr[1].window(dec.modality_values())
    assert v.rendered().max() > 0


def test_shortcuts_dialog_lists_the_viewer_commands(qapp):
    from osirix_py.gui.shortcuts import VIEWER_COMMANDS, ShortcutsDialog

    d = ShortcutsDialog()
    texts = {d.table.item(r, 2).text() for r in range(d.table.rowCount())}
    assert {c.text for c in VIEWER_COMMANDS} <= texts
    d.deleteLater()


def test_every_viewer_menu_action_works(qtbot, viewer, monkeypatch, tmp_path):
    """Trigger every menu item once (file dialogs answered), nothing raises."""
    from PySide6.QtWidgets import QDialog, QFileDialog

    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / "x.png"), ""))
    monkeypatch.setattr(QDialog, "exec", lambda self: 0)
    for m in viewer.menuBar().actions():
        for a in m.menu().actions():
            if a.isSeparator() or a.menu() is not None or a is viewer.actions["close"]:
                continue
            a.trigger()
    assert (tmp_path / "x.png").is_file()
    viewer.actions["cine"].setChecked(False)
    viewer.toggle_cine(False)


def test_first_image_is_decoded_alone_then_the_rest_in_the_background(qtbot, ctx):
    from osirix_py.gui.series import SeriesStack

    uid = series_uid(ctx.archive, "CT")
    lazy = SeriesStack(ctx, uid, prefetch=False)
    assert len(lazy) == 60 and lazy.cached(0) is None
    dec = lazy.get(0)
    assert dec.stored.shape == (512, 512)
    assert sum(lazy.cached(i) is not None for i in range(60)) == 1
    stack = SeriesStack(ctx, uid)
    stack.want(40)
    qtbot.waitUntil(lambda: all(stack.cached(i) is not None for i in range(60)), timeout=20000)
    assert stack.sorted_by_position
    stack.close()
    lazy.close()


def test_first_image_is_painted_while_the_series_is_still_loading(qtbot, ctx, monkeypatch):
    """A throttled loader: the first image is on screen long before the last slice arrives,
    the slider shows the progress, a slice not loaded yet is shown on demand, and once
    everything has arrived the last slice is reachable."""
    import threading
    import time

    from osirix_py.gui.series import SeriesStack

    real_read = SeriesStack._read
    main = threading.main_thread()

    def slow_read(self, s, pixels_too):
        if threading.current_thread() is not main:
            time.sleep(0.01)  # about 1.2 s for the 60 headers and 60 slices
        return real_read(self, s, pixels_too)

    monkeypatch.setattr(SeriesStack, "_read", slow_read)
    t0 = time.perf_counter()
    viewer = ViewerWindow(ctx, series_uid(ctx.archive, "CT"))
    qtbot.addWidget(viewer)
    viewer.show()
    v, pane = viewer.view, viewer.panes[0]
    qtbot.waitUntil(lambda: v.repaint() or v.frames_painted >= 1, timeout=5000)
    first = time.perf_counter() - t0
    assert v.frames_painted >= 1 and v.rendered() is not None
    n = len(v.stack)
    assert v.stack.decoded_count() < n, "the whole series was loaded before the first image"
    assert first < 2.0
    assert pane.slider.maximum() == n - 1 and pane.slider.loaded < 1.0
    assert "Loading" in pane.slider.toolTip()
    # A slice the loader has not reached yet is decoded on demand.
    far = next(i for i in range(n - 1, 0, -1) if v.stack.cached(i) is None)
    pane.slider.setValue(far)
    assert v.index == far and v.stack.cached(far) is not None and v.rendered() is not None
    qtbot.waitUntil(lambda: v.stack.decoded_count() == n and pane.slider.loaded == 1.0, timeout=30000)
    assert pane.slider.toolTip() == ""
    key(qtbot, viewer, Qt.Key.Key_End)
    assert v.index == n - 1 and pane.index_label.text() == f"{n} / {n}"
    s = v.current_slice()
    ds = dataset_of(ctx.archive, s.sop_instance_uid)
    assert np.array_equal(v.rendered(), pixels.DisplayPipeline.from_dataset(ds).render(
        pixels.decode_frame(ds, 0), v.window))
    # Sorted along the normal once the headers were read: the last slice is the highest.
    z = [float(x.plane.position[2]) for x in v.stack.slices]
    assert z == sorted(z) and float(s.plane.position[2]) == max(z)


def test_painting_for_a_long_session_does_not_exhaust_none(qtbot, viewer):
    """PySide6 6.12 on CPython 3.11 drops a reference to None per void call; the GUI guards it."""
    import sys

    from osirix_py.gui.qimage import guard_none_refcount

    assert guard_none_refcount()
    if sys.version_info < (3, 12):
        assert sys.getrefcount(None) > 1 << 39
    v = viewer.view
    for i in range(20000):  # far more void calls than None had references before the guard
        v.update()
    for i in range(50):
        v.step(1 if i < 25 else -1)
        v.repaint()
    assert v.index == 0


def test_fast_decode_of_native_slices_equals_the_imaging_core(ctx):
    import io

    import pydicom

    from osirix_py.dicom.synthetic import make_ct_series
    from osirix_py.dicom.tags import Level
    from osirix_py.gui.series import fast_stored

    for modality in ("CT", "MR"):
        rows = ctx.archive.find(Level.IMAGE, {"Modality": modality})[:3]
        for r in rows:
            ds = dataset_of(ctx.archive, r["SOPInstanceUID"])
            fast = fast_stored(ds)
            assert fast is not None, modality
            ref = pixels.decode_frame(ds, 0)
            assert fast.dtype == ref.dtype and np.array_equal(fast, ref)
    # 12 of 16 bits, unsigned and signed: masked and sign-extended like the core.
    for unsigned in (True, False):
        ds = make_ct_series(slices=1, rows=16, columns=16, unsigned=unsigned, bits_stored=12)[0]
        ds = pydicom.dcmread(io.BytesIO(_to_bytes(ds)))
        fast = fast_stored(ds)
        assert fast is not None and np.array_equal(fast, pixels.decode_frame(ds, 0))
    # A compressed or colour frame is left to the general decoder.
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"
    assert fast_stored(ds) is None


def _to_bytes(ds) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
