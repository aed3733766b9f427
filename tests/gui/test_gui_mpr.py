"""MPR in the 2D viewer: the views show the imaging core's reslice, stay linked, keep their aspect.

Set ``OSIRIX_PY_SAVE_SCREENSHOTS=1`` to also write ``docs/screenshots/viewer-mpr.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from guihelpers import NOB, R, drag, mouse, series_uid, wheel
from PySide6.QtCore import QPointF
from PySide6.QtGui import QImage

from osirix_py.dicom.pixels import Window, apply_window
from osirix_py.gui.viewer import ViewerWindow
from osirix_py.imaging.reslice import reslice
from osirix_py.imaging.volume import load_volume

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def viewer(qtbot, ctx):
    v = ViewerWindow(ctx, series_uid(ctx.archive, "CT"))
    qtbot.addWidget(v)
    v.resize(1000, 860)
    v.show()
    qtbot.waitExposed(v)
    return v


def _open_mpr(qtbot, viewer):
    mpr = viewer.show_mpr()
    qtbot.waitUntil(lambda: mpr.model.volume is not None, timeout=30000)
    qtbot.wait(10)
    return mpr


def _core_volume(ctx, uid):
    from osirix_py.dicom.tags import Level as L

    rows = ctx.archive.find(L.IMAGE, {"SeriesInstanceUID": uid})
    return load_volume([str(ctx.archive.instance_file(r)) for r in rows])


def test_mpr_views_show_the_reslice_of_the_imaging_core(qtbot, viewer):
    v2d = viewer.view
    v2d.set_index(30)
    dec = v2d.stack.get(30)
    mpr = _open_mpr(qtbot, viewer)
    assert viewer.mpr_active and viewer.actions["layout_mpr"].isChecked()
    assert not viewer.grid_host.isVisible()
    vol = _core_volume(viewer.ctx, v2d.stack.series_uid)
    assert np.array_equal(mpr.model.volume.array, vol.array)
    # The cross starts on the slice that was on screen, with its window.
    assert np.allclose(mpr.model.cursor @ dec.plane.normal, dec.plane.center @ dec.plane.normal)
    assert mpr.model.window == v2d.window
    for name, view in mpr.views.items():
        plane = view.plane()
        expected = reslice(vol, plane, dtype=np.int16)
        assert np.array_equal(view.values(), expected), name
        assert np.array_equal(view.rendered(), apply_window(expected, mpr.model.window)), name
        assert view.frames_painted > 0
    # The axial view is the acquired slice itself (same grid, modality units).
    ax = mpr.views["axial"]
    assert ax.values().shape == (512, 512)
    assert np.array_equal(ax.values(), dec.modality_values().astype(np.int16))
    # True aspect: 0.7 mm pixels across, 1.5 mm between slices.
    cor = mpr.views["coronal"]
    assert cor.plane().pixel_spacing == pytest.approx((1.5, 0.7))
    t = cor.transform()
    assert t.m22() / t.m11() == pytest.approx(1.5 / 0.7)
    assert mpr.views["axial"].orientation_letters() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert cor.orientation_letters() == {"left": "R", "right": "L", "top": "H", "bottom": "F"}
    assert mpr.views["sagittal"].orientation_letters() == {"left": "A", "right": "P", "top": "H", "bottom": "F"}
    # What is on screen is that image (a pixel near the cross, nearest-pixel colour within smoothing).
    img = ax.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    assert img.width() == ax.width() and img.pixelColor(ax.width() // 4, ax.height() // 2).red() >= 0


def test_clicking_in_the_axial_view_moves_the_coronal_and_sagittal_planes(qtbot, viewer):
    mpr = _open_mpr(qtbot, viewer)
    ax, cor, sag = (mpr.views[n] for n in ("axial", "coronal", "sagittal"))
    z0 = float(mpr.model.cursor[2])
    cor_before = cor.values().copy()
    target = QPointF(ax.width() * 0.35, ax.height() * 0.6)
    want = mpr.model.snap(ax.widget_to_patient(target))
    mouse(ax, "press", target)
    mouse(ax, "release", target)
    cur = mpr.model.cursor
    assert np.allclose(cur[:2], want[:2]) and cur[2] == pytest.approx(z0)  # axial plane unchanged
    for view in (cor, sag):
        pl = view.plane()
        assert abs(float((cur - pl.position) @ pl.normal)) < 1e-6
        assert np.array_equal(view.values(), reslice(mpr.model.volume, pl, dtype=np.int16))
    assert not np.array_equal(cor.values(), cor_before)
    # The reference lines in the axial view cross where the user clicked.
    lines = ax.reference_lines()
    assert set(lines) == {"coronal", "sagittal"}
    for a, _b in lines.values():
        assert abs(a.x() - target.x()) < 2 * ax.zoom * 0.7 and abs(a.y() - target.y()) < 2 * ax.zoom * 0.7
    # Dragging in the coronal view moves the axial plane (and keeps y).
    y0 = float(cur[1])
    a = QPointF(cor.width() / 2, cor.height() / 2)
    drag(cor, a, a + QPointF(0, 40))
    assert float(mpr.model.cursor[1]) == pytest.approx(y0)
    assert float(mpr.model.cursor[2]) != pytest.approx(z0)
    pl = ax.plane()
    assert abs(float((mpr.model.cursor - pl.position) @ pl.normal)) < 1e-6


def test_wheel_scrolls_each_view_and_window_level_is_shared(qtbot, viewer):
    viewer.view.set_index(30)
    mpr = _open_mpr(qtbot, viewer)
    cor, sag, ax = mpr.views["coronal"], mpr.views["sagittal"], mpr.views["axial"]
    y0, k0 = float(mpr.model.cursor[1]), cor.plane_index()
    wheel(cor, QPointF(50, 50), delta=-120)
    assert float(mpr.model.cursor[1]) == pytest.approx(y0 + 0.7)
    assert cor.plane_index() == k0 + 1
    z0 = float(mpr.model.cursor[2])
    wheel(ax, QPointF(50, 50), delta=120)
    assert float(mpr.model.cursor[2]) == pytest.approx(z0 - 1.5)
    for _ in range(200):  # the cursor stays inside the volume
        wheel(ax, QPointF(50, 50), delta=120)
    assert ax.plane_index() == 0
    w0 = mpr.model.window
    c = QPointF(sag.width() / 2, sag.height() / 2)
    drag(sag, c, c + QPointF(50, -30), button=R)
    w1 = mpr.model.window
    assert (w1.center, w1.width) != (w0.center, w0.width)
    for view in (ax, cor, sag):
        assert np.array_equal(view.rendered(), apply_window(view.values(), w1))
    lung = next(a for a in viewer.preset_actions if a.text().startswith("Lung"))
    lung.trigger()
    assert mpr.model.window == Window(-600, 1500)
    viewer.actions["invert"].trigger()
    assert mpr.model.invert and np.array_equal(ax.rendered(), apply_window(ax.values(), Window(-600, 1500),
                                                                          invert=True))
    viewer.actions["wl_default"].trigger()  # key 0: the series' own window
    assert (mpr.model.window.center, mpr.model.window.width) == (40, 400)
    viewer.set_layout("layout_1x1")
    assert not viewer.mpr_active and viewer.panes[0].isVisible()


def test_mpr_of_a_series_without_a_volume_says_why(qtbot, ctx, monkeypatch):
    from osirix_py.gui import mpr as mpr_mod
    from osirix_py.imaging.volume import VolumeError

    def fail(archive, rows):
        raise VolumeError("the images have no common orientation", code="mixed-orientation")

    monkeypatch.setattr(mpr_mod, "build_volume", fail)
    v = ViewerWindow(ctx, series_uid(ctx.archive, "CT"))
    qtbot.addWidget(v)
    v.show()
    m = v.show_mpr()
    qtbot.waitUntil(lambda: not m.loading, timeout=10000)
    assert "no common orientation" in m.error
    assert all("no common orientation" in view.message for view in m.views.values())


def test_mpr_screenshot(qtbot, viewer, tmp_path):
    viewer.view.set_index(30)
    mpr = _open_mpr(qtbot, viewer)
    ax = mpr.views["axial"]
    mouse(ax, "press", QPointF(ax.width() * 0.62, ax.height() * 0.5))
    mouse(ax, "release", QPointF(ax.width() * 0.62, ax.height() * 0.5))
    mouse(ax, "move", QPointF(ax.width() * 0.62, ax.height() * 0.5), buttons=NOB)
    cur = mpr.model.cursor
    # The information panel follows the cross (updated at most ten times a second).
    qtbot.waitUntil(lambda: f"{cur[0]:.1f}, {cur[1]:.1f}, {cur[2]:.1f}" in mpr.info.text(), timeout=2000)
    img = viewer.grab()
    assert img.width() > 0 and img.save(str(tmp_path / "viewer-mpr.png"))
    if os.environ.get("OSIRIX_PY_SCREENSHOTS"):  # the folder to save the docs' screenshots in
        out = Path(os.environ["OSIRIX_PY_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        assert img.save(str(out / "viewer-mpr.png"))


def test_voxel_grid_fast_path_equals_the_reslice_and_steps_aside_for_oblique_planes():
    from osirix_py.gui.mpr import ViewGeometry, voxel_grid_slice
    from osirix_py.imaging.reslice import oblique_plane
    from osirix_py.imaging.volume import Volume

    rng = np.random.default_rng(1)
    aff = np.diag([0.8, 0.6, 2.0, 1.0])
    aff[:3, 3] = (-20.0, -15.0, 30.0)
    vol = Volume(rng.integers(-1000, 2000, size=(12, 40, 50), dtype=np.int16), aff, modality="CT", units="HU")
    for name in ("axial", "coronal", "sagittal"):
        g = ViewGeometry.of(vol, name)
        for k in (0, 3, g.count - 1):
            point = vol.index_to_patient([[7, 11, 5]])[0]
            point = point + (k - (g.count - 1) / 2 - float((point - g.center) @ g.normal) / g.step) * g.step * g.normal
            plane = g.plane_at(point)
            fast = voxel_grid_slice(vol, plane)
            assert fast is not None, (name, k)
            assert np.array_equal(fast, reslice(vol, plane, dtype=np.int16)), (name, k)
    # Oblique, off-grid or outside: the caller reslices.
    assert voxel_grid_slice(vol, oblique_plane(vol, vol.center, (1, 1, 1))) is None
    g = ViewGeometry.of(vol, "axial")
    assert voxel_grid_slice(vol, g.plane_at(vol.center + [0, 0, 0.5])) is None
    assert voxel_grid_slice(vol, g.plane_at(vol.center + [0, 0, 100.0])) is None
