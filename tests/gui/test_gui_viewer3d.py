"""The 3D / MPR window: linked crosshairs, oblique rotation, W/L per view, slabs, the 3D view's mouse.

Run as a script to save the screenshots of docs/screenshots/viewer3d*.png::

    QT_QPA_PLATFORM=offscreen .venv/bin/python tests/gui/test_gui_viewer3d.py [folder]
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guihelpers import R, drag, mouse, series_uid, wheel  # noqa: E402
from PySide6.QtCore import QPointF, Qt  # noqa: E402

from osirix_py.dicom.pixels import apply_window  # noqa: E402
from osirix_py.dicom.synthetic import hu_at, make_ct_series  # noqa: E402
from osirix_py.gui.imageview import wl_sensitivity  # noqa: E402
from osirix_py.gui.viewer3d import Viewer3DWindow  # noqa: E402
from osirix_py.imaging.reslice import reslice  # noqa: E402
from osirix_py.imaging.volume import load_volume  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def phantom_volume(n=96, slices=30):
    return load_volume(make_ct_series(rows=n, columns=n, pixel_spacing=(256 / n, 256 / n), slices=slices,
                                      slice_spacing=150 / slices, series_description="Phantom CT"))


@pytest.fixture(scope="module")
def volume():
    return phantom_volume()


@pytest.fixture
def win(qtbot, volume):
    w = Viewer3DWindow(volume, title="Phantom CT")
    qtbot.addWidget(w)
    w.resize(900, 760)
    w.show()
    qtbot.waitExposed(w)
    qtbot.waitUntil(lambda: w.vr.frames >= 1, timeout=20000)
    w.vr.render_now()  # nothing left in flight
    return w


def _wait_render(qtbot, w, frames):
    qtbot.waitUntil(lambda: w.vr.frames > frames, timeout=20000)
    w.vr.render_now()


def test_opens_from_the_2d_viewer_on_its_series(qtbot, ctx):
    from osirix_py.gui.viewer import ViewerWindow

    uid = series_uid(ctx.archive, "CT")
    v = ViewerWindow(ctx, uid)
    qtbot.addWidget(v)
    v.show()
    qtbot.waitExposed(v)
    assert v.viewer3d_action.text().startswith("3D / MPR")
    assert v.viewer3d_action.shortcut().toString() == "Ctrl+3"
    v.viewer3d_action.trigger()
    w = v.viewer3d
    assert w is not None and w.isVisible()
    assert w.series_uid == uid
    assert w.volume.shape[0] == len(v.view.stack)
    assert w.windowTitle().startswith("3D / MPR")
    qtbot.waitUntil(lambda: w.vr.frames >= 1, timeout=10000)
    assert w.vr.image is not None and w.vr.image.max() > 0
    w.close()


def test_a_series_that_is_no_volume_is_explained(ctx, dialogs):
    from osirix_py.gui.viewer3d import open_viewer3d

    assert open_viewer3d(ctx, "1.2.826.0.1.3680043.99999") is None
    assert len(dialogs.boxes) == 1
    _icon, title, text = dialogs.boxes[0]
    assert title == "Cannot open the 3D viewer" and "no images" in text


def test_mpr_views_show_the_volume_with_letters_and_window(win, volume):
    ax = win.panels["axial"]
    assert ax.orientation_letters() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert win.panels["coronal"].orientation_letters() == {"left": "R", "right": "L", "top": "H", "bottom": "F"}
    assert win.panels["sagittal"].orientation_letters() == {"left": "A", "right": "P", "top": "H", "bottom": "F"}
    assert (ax.window.center, ax.window.width) == (40.0, 400.0)
    img = win.engine.image("axial")
    assert np.array_equal(ax.rendered(), apply_window(img, ax.window))
    # the bone rod (x = +50 mm) is drawn white where the geometry puts it (off the crosshair lines)
    point = (50.0, 8.0, 0.0)
    col, row = win.engine.to_pixel("axial", point)
    assert img[int(round(row)), int(round(col))] == pytest.approx(hu_at(np.array([point]))[0], abs=1)
    p = ax.image_to_widget(col, row)
    shot = ax.grab().toImage()
    assert shot.pixelColor(int(p.x()), int(p.y())).red() == 255
    assert ax.frames_painted >= 1


def test_dragging_the_crosshair_moves_the_other_planes(qtbot, win, volume):
    ax = win.panels["axial"]
    c = ax.crosshair_widget()
    target = c + QPointF(40, -30)
    mouse(ax, "press", c)
    assert win.engine.interactive  # nearest-neighbour planes while the button is down
    mouse(ax, "move", c + QPointF(20, -15), buttons=Qt.MouseButton.LeftButton)
    mouse(ax, "move", target, buttons=Qt.MouseButton.LeftButton)
    mouse(ax, "release", target)
    assert not win.engine.interactive  # trilinear again at rest
    col, row = ax.widget_to_image(target)
    want = win.engine.plane("axial").pixel_to_patient(col, row)[0]
    assert np.allclose(win.engine.crosshair, want, atol=1e-6)
    q = ax.crosshair_widget()
    assert abs(q.x() - target.x()) < 1e-6 and abs(q.y() - target.y()) < 1e-6
    # the coronal plane now passes through the new y, the sagittal one through the new x
    cor, sag = win.engine.plane("coronal"), win.engine.plane("sagittal")
    assert cor.position[1] == pytest.approx(want[1]) and sag.position[0] == pytest.approx(want[0])
    assert want[0] > volume.center[0] and want[1] < volume.center[1]  # moved to the left, anterior
    ref = reslice(volume, cor)
    img = win.engine.image("coronal")
    inside = ref != volume.fill_value
    assert np.abs(img - ref)[inside].max() <= 1.0
    # the other views follow: their crosshair is at the same patient point
    for name in ("coronal", "sagittal"):
        x, y = win.engine.crosshair_pixel(name)
        assert np.allclose(win.engine.to_patient(name, x, y), want, atol=1e-6)
    # the wheel moves the axial plane along its normal by a pixel spacing
    z0 = win.engine.crosshair[2]
    wheel(ax, QPointF(20, 20), delta=120)
    assert win.engine.crosshair[2] == pytest.approx(z0 - win.engine.pixel_spacing)


def test_dragging_a_line_moves_only_that_plane(win):
    ax = win.panels["axial"]
    c = ax.crosshair_widget()
    before = win.engine.crosshair.copy()
    # the sagittal line is vertical in the axial view; grab it 60 px above the centre, drag right
    start = c + QPointF(0, -60)
    drag(ax, start, start + QPointF(25, 10))
    moved = win.engine.crosshair - before
    assert moved[0] == pytest.approx(25 / ax.scale * win.engine.pixel_spacing, rel=1e-6)
    assert moved[1] == pytest.approx(0.0, abs=1e-9) and moved[2] == pytest.approx(0.0, abs=1e-9)


def test_rotating_the_crosshair_gives_oblique_planes(win):
    ax = win.panels["axial"]
    handles = ax.handles()
    h = handles["coronal"][0]  # on the horizontal (coronal) line, right of the centre
    c = ax.crosshair_widget()
    r = math.hypot(h.x() - c.x(), h.y() - c.y())
    # drag the handle a quarter of the way around the circle, clockwise on screen (down)
    pts = [QPointF(c.x() + r * math.cos(math.radians(a)), c.y() + r * math.sin(math.radians(a)))
           for a in range(0, 31, 5)]
    mouse(ax, "press", pts[0])
    for p in pts[1:]:
        mouse(ax, "move", p, buttons=Qt.MouseButton.LeftButton)
    mouse(ax, "release", pts[-1])
    assert win.engine.line_angle("axial", "coronal") % 180 == pytest.approx(30.0, abs=0.5)
    assert win.engine.is_oblique("coronal") and win.engine.is_oblique("sagittal")
    assert not win.engine.is_oblique("axial")
    n = win.engine.normal("coronal")
    assert n == pytest.approx([-math.sin(math.radians(30)), math.cos(math.radians(30)), 0.0], abs=0.01)
    assert win.panels["coronal"].overlay_text()["tl"][0] == "Coronal (oblique)"
    win.actions["reset_mpr"].trigger()
    assert not win.engine.is_oblique("coronal")


def test_window_level_is_per_view(win):
    ax, cor = win.panels["axial"], win.panels["coronal"]
    c0, w0 = ax.window.center, ax.window.width
    centre = QPointF(ax.width() / 2, ax.height() / 2)
    drag(ax, centre, centre + QPointF(50, -20), button=R)
    k = wl_sensitivity(w0)
    assert ax.window.center == pytest.approx(c0 - 20 * k) and ax.window.width == pytest.approx(w0 + 50 * k)
    assert (cor.window.center, cor.window.width) == (c0, w0)
    assert ax.overlay_text()["bl"][0] == f"WL: {ax.window.center:.0f} WW: {ax.window.width:.0f}"


def test_slab_controls(win):
    win.slab_mode.setCurrentIndex(win.slab_mode.findData("minip"))
    win.slab_spin.setValue(12.0)
    for v in ("axial", "coronal", "sagittal"):
        assert win.engine.slab_thickness[v] == 12.0 and win.engine.slab_mode[v] == "minip"
    assert win.panels["axial"].overlay_text()["tl"][1] == "MinIP slab 12.0 mm"
    # 20 mm above the contrast sphere's centre: a 30 mm MIP slab reaches into its wider part
    win.engine.set_crosshair((0.0, 0.0, 20.0))
    win.set_slab(0.0)
    thin = win.engine.image("axial").copy()
    win.set_slab(30.0, "mip")
    thick = win.engine.image("axial")
    assert thick.shape == thin.shape and (thick >= thin - 1).all() and thick.mean() > thin.mean()


def test_3d_view_mouse_rotates_zooms_pans_and_windows(qtbot, win):
    vr, r = win.vr, win.renderer
    assert r.size == (vr.width(), vr.height())
    centre = QPointF(vr.width() / 2, vr.height() / 2)
    dop0 = np.array(r.camera.GetDirectionOfProjection())
    # No frame in flight (the full-quality frame that follows the opening
    # preview may still be drawing on a loaded machine): state changes made
    # during a frame wait for its end, by design (see the queued-op test below).
    qtbot.waitUntil(lambda: not vr.busy, timeout=20000)
    frames = vr.frames
    mouse(vr, "press", centre)
    assert r.interacting
    mouse(vr, "move", centre + QPointF(40, 0), buttons=Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: vr.frames > frames, timeout=10000)
    vr.render_now()
    assert r.interacting  # drawn at interactive quality while the button is down
    mouse(vr, "release", centre + QPointF(40, 0))
    frames = vr.frames
    _wait_render(qtbot, win, frames)  # the full-quality frame after the release
    assert not r.interacting
    assert not np.allclose(r.camera.GetDirectionOfProjection(), dop0)
    # right-drag: window/level of the transfer function
    c0, w0 = r.tf_window
    drag(vr, centre, centre + QPointF(100, 50), button=R)
    vr.render_now()
    c1, w1 = r.tf_window
    assert w1 > w0 and c1 > c0
    # the wheel zooms, Shift+drag pans
    s0 = r.camera.GetParallelScale()
    wheel(vr, centre, delta=120)
    vr.render_now()
    assert r.camera.GetParallelScale() == pytest.approx(s0 / 1.1)
    f0 = np.array(r.camera.GetFocalPoint())
    mouse(vr, "press", centre, modifiers=Qt.KeyboardModifier.ShiftModifier)
    mouse(vr, "move", centre + QPointF(30, 0), buttons=Qt.MouseButton.LeftButton,
          modifiers=Qt.KeyboardModifier.ShiftModifier)
    mouse(vr, "release", centre + QPointF(30, 0))
    vr.render_now()
    assert np.linalg.norm(np.array(r.camera.GetFocalPoint()) - f0) > 0
    win.actions["reset_camera"].trigger()
    vr.render_now()
    assert np.allclose(r.camera.GetDirectionOfProjection(), (0, 1, 0))


def test_presets_blend_modes_crop_and_snapshot(qtbot, win, tmp_path):
    vr, r = win.vr, win.renderer
    ids = [win.preset_combo.itemData(i) for i in range(win.preset_combo.count())]
    assert ids[:4] == ["ct-bone", "ct-soft-tissue", "ct-lung", "ct-angio"] and "mip" in ids
    for pid in ids:
        frames = vr.frames
        if win.preset_combo.currentIndex() == ids.index(pid):
            win.set_preset(pid)  # already chosen: the combo box would not signal
        else:
            win.preset_combo.setCurrentIndex(ids.index(pid))
        _wait_render(qtbot, win, frames)
        assert r.preset.id == pid
        assert win.actions[f"preset_{pid}"].isChecked()
        assert (vr.image.max(axis=2) > 20).mean() > 0.01, pid
    assert r.blend == "mip" and win.actions["blend_mip"].isChecked()
    win.actions["blend_minip"].trigger()
    vr.render_now()
    assert r.blend == "minip"
    win.actions["blend_composite"].trigger()
    vr.render_now()
    # the MIP preset has no composite transfer function: the modality's first preset comes back
    assert r.blend == "composite" and r.preset.id == "ct-bone"
    assert win.preset_combo.currentData() == "ct-bone" and win.actions["preset_ct-bone"].isChecked()
    win.actions["crop"].trigger()
    vr.render_now()
    assert r.crop_enabled and win.crop_bar.isVisible()
    win.crop_spins[1].setValue(50)
    vr.render_now()
    assert r.crop_box[1] == 0.5
    win.actions["crop"].trigger()
    vr.render_now()
    assert not r.crop_enabled and not win.crop_bar.isVisible()
    path = win.snapshot(tmp_path / "vr.png")
    from PIL import Image

    assert Image.open(path).size == r.size


def test_a_big_volume_shows_a_preview_first_then_the_full_frame(qtbot, volume, monkeypatch):
    from osirix_py.render import VolumeRenderer

    monkeypatch.setattr(VolumeRenderer, "preview_voxels", 40_000)  # the phantom counts as big
    w = Viewer3DWindow(volume, title="Phantom CT")
    qtbot.addWidget(w)
    w.resize(900, 760)
    kinds, prep_threads = [], []
    w.vr.rendered.connect(lambda: kinds.append((w.vr.preview, w.renderer.last_frame_kind)))
    prepare = w.renderer.prepare_full

    import threading

    go = threading.Event()

    def slow_prepare():
        prep_threads.append(threading.current_thread().name)
        go.wait(20)  # a big volume's tables take seconds: the view stays usable meanwhile
        prepare()

    w.renderer.prepare_full = slow_prepare
    w.show()
    qtbot.waitUntil(lambda: len(kinds) >= 1, timeout=20000)
    assert kinds[0] == (True, "preview")
    qtbot.waitUntil(lambda: w.vr.preparing, timeout=5000)
    # while the tables are built on the spare thread, a drag still draws (previews)
    vr = w.vr
    centre = QPointF(vr.width() / 2, vr.height() / 2)
    drag(vr, centre, centre + QPointF(30, 0))
    vr.render_now()
    assert vr.preview and w.renderer.last_frame_kind == "preview" and not w.renderer.full_ready
    assert vr.frames >= 2
    go.set()
    # then the full-quality frame follows without being asked
    qtbot.waitUntil(lambda: not vr.preview, timeout=20000)
    assert w.renderer.full_ready and kinds[-1] == (False, "raycast")
    assert prep_threads and prep_threads[0].startswith("osirix-vr-prep")
    w.vr.wait_full_quality()
    assert w.vr.image is not None and (w.vr.image.max(axis=2) > 20).mean() > 0.02
    w.close()


def test_dragging_a_crop_face_handle_moves_that_cropping_plane(qtbot, win):
    vr, r = win.vr, win.renderer
    win.set_blend("mip")
    win.actions["crop"].trigger()
    vr.render_now()
    assert r.crop_enabled and vr.view is not None
    handles = dict(vr.crop_handle_points())
    # from the front: the column (x) and slice (z) faces; the row faces point at the eye
    assert set(handles) == {0, 1, 4, 5}
    x1 = handles[1]
    assert vr.crop_handle_at(x1 + QPointF(3, -2)) == 1
    assert vr.crop_handle_at(QPointF(x1.x() - 60, x1.y() + 60)) is None
    span = {f: sp for f, _x, _y, sp in r.crop_handles(vr.view)}[1] * vr.width() / vr.view.width
    planes0 = r.mapper.GetCroppingRegionPlanes()
    frames = vr.frames
    before = vr.image.copy()
    # drag the patient-left face (on the right of the screen) 30 % of the way to the left
    drag(vr, x1, x1 - QPointF(0.3 * span, 0), steps=6)
    assert win.crop_spins[1].value() == 70  # at once, while the renderer takes it after its frame
    vr.render_now()
    assert r.crop_box[1] == pytest.approx(0.7, abs=1e-6)
    assert r.crop_box[0] == 0.0 and r.crop_box[2:] == (0.0, 1.0, 0.0, 1.0)
    assert win.crop_spins[1].value() == 70 and win.crop_spins[0].value() == 0
    planes = r.mapper.GetCroppingRegionPlanes()
    assert planes[1] == pytest.approx(0.7 * planes0[1]) and planes[0] == planes0[0]
    assert vr.frames > frames and not r.interacting
    # the handle is drawn where the face now is; the picture lost the cropped strip
    moved = dict(vr.crop_handle_points())[1]
    assert moved.x() == pytest.approx(x1.x() - 0.3 * span, abs=1.0)
    sx = vr.view.width / vr.width()
    col = int((moved.x() + 8) * sx)

    def lit_grey(img):  # volume pixels (grey), not the orange outline nor the handles
        part = img[:, col:].astype(int)
        return int((part.max(axis=2)[np.ptp(part, axis=2) < 10] > 5).sum())

    assert lit_grey(before) > 500 and lit_grey(vr.image) == 0
    # the slice faces: drag the superior face (top) down by 25 %
    z1 = dict(vr.crop_handle_points())[5]
    span_z = {f: sp for f, _x, _y, sp in r.crop_handles(vr.view)}[5] * vr.height() / vr.view.height
    drag(vr, z1, z1 + QPointF(0, 0.25 * span_z))
    vr.render_now()
    assert r.crop_box[5] == pytest.approx(0.75, abs=1e-6) and win.crop_spins[5].value() == 75
    # the spin boxes still drive the box; the handles follow
    win.crop_spins[1].setValue(90)
    vr.render_now()
    assert r.crop_box[1] == pytest.approx(0.9)


def test_3d_frames_render_off_the_gui_thread(qtbot, win, monkeypatch):
    import threading
    import time

    r, vr = win.renderer, win.vr
    slow = r.render
    threads = []

    def slow_render():
        threads.append(threading.current_thread())
        time.sleep(0.6)
        return slow()

    monkeypatch.setattr(r, "render", slow_render)
    frames = vr.frames
    vr.request_render()
    qtbot.waitUntil(lambda: vr.busy, timeout=5000)
    # meanwhile the GUI works: the MPR crosshair moves, and a blend change waits for the frame
    ax = win.panels["axial"]
    c = ax.crosshair_widget()
    before = win.engine.crosshair.copy()
    drag(ax, c, c + QPointF(15, 0))
    assert not np.allclose(win.engine.crosshair, before)
    win.set_blend("mip")
    assert vr.busy and r.blend == "composite"  # queued, not applied under the render
    vr.render_now()
    assert r.blend == "mip" and win.actions["blend_mip"].isChecked()
    assert vr.frames >= frames + 2
    assert threads and all(t is not threading.main_thread() for t in threads)


# --------------------------------------------------------------------------- screenshots
def save_screenshots(folder: Path) -> list[Path]:
    """The 3D window in two states, and the 3D renderings of each preset (docs/screenshots)."""
    import time

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    folder.mkdir(parents=True, exist_ok=True)
    vol = load_volume(make_ct_series(rows=192, columns=192, pixel_spacing=(1.4, 1.4), slices=64, slice_spacing=3.0,
                                     noise=8.0, series_description="Phantom CT"))

    def spin(seconds=0.3):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents()
            time.sleep(0.01)

    out = []
    w = Viewer3DWindow(vol, title="Phantom CT")
    w.resize(1200, 940)
    w.show()
    spin()
    w.set_preset("ct-soft-tissue")
    w.vr.apply(lambda: w.renderer.rotate(-90, 40))
    w.vr.render_now()
    spin()
    p = folder / "viewer3d.png"
    w.grab().save(str(p))
    out.append(p)
    w.engine.set_crosshair((20.0, 25.0, 10.0))
    w.engine.rotate("axial", 30.0)
    w.set_slab(15.0, "mip")
    w.set_preset("ct-bone")
    w.set_crop(True)
    w.set_crop_box((0.0, 1.0, 0.0, 0.6, 0.1, 0.9))
    w.vr.apply(lambda: (w.renderer.reset_camera(), w.renderer.rotate(100, 50), w.renderer.zoom(0.7)))
    w.vr.render_now()
    w.refresh_mpr()
    spin()
    p = folder / "viewer3d-oblique-slab.png"
    w.grab().save(str(p))
    out.append(p)
    w.close()

    from osirix_py.render import VolumeRenderer, load_vr_presets

    r = VolumeRenderer(vol, size=(320, 320))
    tiles = []
    for pr in load_vr_presets():
        r.set_preset(pr)
        r.reset_camera()
        r.rotate(-60, 35)
        tiles.append(r.render())
    r.close()
    from PIL import Image

    grid = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:6], axis=1)], axis=0)
    p = folder / "viewer3d-presets.png"
    Image.fromarray(grid).save(p)
    out.append(p)
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
    for f in save_screenshots(target):
        print(f)
