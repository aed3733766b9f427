"""Offscreen volume rendering checked by numbers: MIP geometry, presets, blend modes, crop, camera."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from renderhelpers import bright_centroid, rotation, sphere_volume

from osirix_py.dicom.synthetic import make_ct_series, make_mr_series
from osirix_py.imaging.volume import load_volume
from osirix_py.render import VolumeRenderer, is_software_gl, load_vr_presets, vr_presets_for
from osirix_py.render.presets import PresetError, TransferFunction, get_vr_preset, parse_presets

SIZE = (160, 120)


@pytest.fixture(scope="module")
def ct_phantom():
    return load_volume(make_ct_series(rows=64, columns=64, pixel_spacing=(4.0, 4.0), slices=24,
                                      slice_spacing=9.0))


def _expected_pixel(r: VolumeRenderer, point, right, up):
    """Where a parallel projection puts ``point``: computed from the camera's numbers, not VTK's."""
    cam = r.camera
    w, h = r.size
    f = np.array(cam.GetFocalPoint())
    per_px = 2.0 * cam.GetParallelScale() / h
    rel = np.asarray(point) - f
    return (w / 2.0 - 0.5 + rel @ np.asarray(right) / per_px,
            h / 2.0 - 0.5 - rel @ np.asarray(up) / per_px)


@pytest.mark.parametrize("direction", [None, rotation((1, -2, 0.5), 40.0),
                                       np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)])
def test_mip_shows_the_sphere_where_the_geometry_says(direction):
    target = np.array([14.0, -6.0, 9.0])  # LPS: 14 mm left, 6 mm anterior, 9 mm superior
    vol = sphere_volume(direction=direction, center_lps=target, radius=4.0, value=2500)
    r = VolumeRenderer(vol, size=SIZE, preset="mip")
    try:
        assert r.blend == "mip"
        img = r.render()
        assert img.shape == (SIZE[1], SIZE[0], 3)
        # from the front (anterior), head up: patient left (+x) is on the right, superior (+z) up
        ex, ey = _expected_pixel(r, target, right=(1, 0, 0), up=(0, 0, 1))
        cx, cy = bright_centroid(img)
        assert cx == pytest.approx(ex, abs=1.5) and cy == pytest.approx(ey, abs=1.5)
        assert r.world_to_pixel(target) == pytest.approx((ex, ey), abs=0.6)
        assert cx > SIZE[0] / 2 and cy < SIZE[1] / 2
        # turning the volume 90 degrees (drag to the left) shows it from the patient's left side:
        # posterior (+y) is then on the right
        r.rotate(-90.0 * SIZE[0] / 200.0, 0)
        img = r.render()
        assert np.allclose(r.camera.GetDirectionOfProjection(), (-1, 0, 0), atol=1e-6)
        ex, ey = _expected_pixel(r, target, right=(0, 1, 0), up=(0, 0, 1))
        cx, cy = bright_centroid(img)
        assert cx == pytest.approx(ex, abs=1.5) and cy == pytest.approx(ey, abs=1.5)
        assert cx < SIZE[0] / 2
    finally:
        r.close()


def test_every_preset_renders_a_picture(ct_phantom):
    r = VolumeRenderer(ct_phantom, size=SIZE)
    try:
        names = []
        for p in load_vr_presets():
            r.set_preset(p)
            img = r.render()
            lit = (img.max(axis=2) > 20).mean()
            assert lit > 0.02, (p.name, lit)  # something is drawn
            assert lit < 0.95, (p.name, lit)  # on the black background
            assert img.std() > 5, p.name
            names.append(p.name)
        assert {"CT Bone", "CT Soft Tissue", "CT Lung", "CT Angio", "MR Default", "MIP"} <= set(names)
    finally:
        r.close()


def test_mr_default_preset_on_an_mr_volume():
    vol = load_volume(make_mr_series(rows=48, columns=48, pixel_spacing=(5.0, 5.0), slices=16, slice_spacing=12.0))
    r = VolumeRenderer(vol, size=SIZE)
    try:
        assert r.preset.id == "mr-default"
        assert [p.id for p in vr_presets_for("MR")][0] == "mr-default"
        img = r.render()
        assert (img.max(axis=2) > 20).mean() > 0.05
    finally:
        r.close()


def test_mip_minip_and_window_of_the_transfer_function(ct_phantom):
    r = VolumeRenderer(ct_phantom, size=SIZE, preset="ct-soft-tissue")
    try:
        r.set_blend("mip")
        mip = r.render().astype(float).mean(axis=2)
        # crop to the inside of the water cylinder so MinIP does not just see the air around it
        r.set_crop_box((0.25, 0.75, 0.25, 0.75, 0.0, 1.0))
        r.set_crop_enabled(True)
        r.set_blend("minip")
        shot = r.render().astype(int)
        minip = shot.mean(axis=2)
        grey = np.ptp(shot, axis=2) < 10  # not the crop box's orange outline
        inside = (mip > 60) & (minip > 0) & grey  # rays through the water cylinder (not its edges)
        assert inside.mean() > 0.05
        assert np.all(minip[inside] <= mip[inside] + 1)
        assert minip[inside].mean() < mip[inside].mean() - 20
        # W/L drag: right widens the window, down raises the level; a wider window greys the MIP
        r.set_crop_enabled(False)
        r.set_blend("mip")
        c0, w0 = r.tf_window
        bright = r.render().astype(float)
        r.adjust_window(200, 100)
        c1, w1 = r.tf_window
        assert w1 == pytest.approx(2 * w0) and c1 == pytest.approx(c0 + w0 / 2)
        darker = r.render().astype(float)
        assert darker.mean() < bright.mean()
    finally:
        r.close()


def test_transfer_function_shift_and_scale():
    p = get_vr_preset("CT Bone")
    tf = TransferFunction.from_preset(p, (-1000, 2000))
    assert tf.window == tuple(p.window)
    assert [x for x, *_ in tf.opacity_points()] == [x for x, _ in p.opacity]
    tf2 = tf.with_window(p.window[0] + 100, p.window[1] * 2)
    for (x0, _), (x1, _) in zip(p.opacity, tf2.opacity_points()):
        assert x1 == pytest.approx(p.window[0] + 100 + (x0 - p.window[0]) * 2)
    rel = TransferFunction.from_preset(get_vr_preset("mr-default"), (0.0, 1000.0))
    assert rel.window == pytest.approx((500.0, 1000.0))
    assert rel.opacity_points()[-1][0] == pytest.approx(1000.0)


def test_crop_box_hides_the_cropped_half():
    vol = sphere_volume(shape=(30, 30, 30), spacing=(2.0, 2.0, 2.0), center_lps=(0, 0, 0), radius=5, body=500,
                        body_radius=25)
    r = VolumeRenderer(vol, size=SIZE, preset="mip")
    try:
        full = r.render().max(axis=2)
        r.set_crop_box((0.0, 0.5, 0.0, 1.0, 0.0, 1.0))  # keep the patient's right half (x < 0)
        r.set_crop_enabled(True)
        img = r.render()
        cropped = img.max(axis=2)
        cx, cy = (int(round(v)) for v in r.world_to_pixel((0, 0, 0)))
        right = int(round(r.world_to_pixel((20, 0, 0))[0]))  # inside the 25 mm ball, patient left
        left = int(round(r.world_to_pixel((-20, 0, 0))[0]))
        rows = slice(cy - 10, cy + 11)
        assert full[rows, cx + 3:right].min() > 50 and full[rows, left:cx - 3].min() > 50
        # the patient's left half is gone; the crop box outline (orange) may cross the strip
        grey = np.ptp(img.astype(int), axis=2) < 10
        strip = cropped[rows, cx + 3:right][grey[rows, cx + 3:right]]
        assert strip.size > 100 and strip.max() < 5
        assert cropped[rows, left:cx - 3].min() > 50
        assert r.outline_actor.GetVisibility() == 1
        r.set_crop_enabled(False)
        assert r.outline_actor.GetVisibility() == 0
        assert r.render().max(axis=2)[rows, cx + 3:right].min() > 50
    finally:
        r.close()


def test_interaction_switches_quality_and_the_camera_moves(ct_phantom):
    r = VolumeRenderer(ct_phantom, size=SIZE, preset="ct-bone")
    try:
        assert is_software_gl(r.gl.get("renderer", "")) == r.software_gl
        if r.software_gl:
            assert r.mapper_kind == "cpu" and r.mapper.GetClassName() == "vtkFixedPointVolumeRayCastMapper"
        still = r.render()
        r.begin_interaction()
        assert r.interacting and r.window.GetDesiredUpdateRate() == pytest.approx(r.interactive_rate)
        if r.mapper_kind == "cpu":
            # fewer samples per ray and fewer rays than at rest
            assert r.mapper.GetSampleDistance() == pytest.approx(2 * r.full_sample_distance)
            assert r.mapper.GetImageSampleDistance() >= 1.0
            # the ray step adapts to the frame time: slow frames -> coarser, fast frames -> finer
            r.image_sample_distance = 2.0
            r._adapt(4.0 / r.interactive_rate)
            assert r.image_sample_distance > 2.0
            assert r.mapper.GetImageSampleDistance() == pytest.approx(r.image_sample_distance, rel=1e-6)
            r._adapt(0.1 / r.interactive_rate)
            r._adapt(0.1 / r.interactive_rate)
            assert r.image_sample_distance < 2.0
        dop0 = np.array(r.camera.GetDirectionOfProjection())
        r.rotate(30, 0)
        moving = r.render()
        assert not np.allclose(r.camera.GetDirectionOfProjection(), dop0)
        r.end_interaction()
        assert not r.interacting and r.mapper.GetAutoAdjustSampleDistances() == 0
        assert r.window.GetDesiredUpdateRate() < 0.01
        if r.mapper_kind == "cpu":
            assert r.mapper.GetImageSampleDistance() == 1.0
            assert r.mapper.GetSampleDistance() == pytest.approx(r.full_sample_distance)
        assert moving.shape == still.shape
        scale = r.camera.GetParallelScale()
        r.zoom(2.0)
        assert r.camera.GetParallelScale() == pytest.approx(scale / 2)
        f0 = np.array(r.camera.GetFocalPoint())
        r.pan(10, 0)
        assert np.linalg.norm(np.array(r.camera.GetFocalPoint()) - f0) == pytest.approx(10 * scale / SIZE[1], rel=1e-6)
        r.reset_camera()
        assert np.allclose(r.camera.GetDirectionOfProjection(), (0, 1, 0))
        assert np.allclose(r.camera.GetViewUp(), (0, 0, 1))
    finally:
        r.close()


def test_snapshot_png_and_orientation_cube(tmp_path, ct_phantom):
    r = VolumeRenderer(ct_phantom, size=SIZE, preset="ct-soft-tissue")
    try:
        img = r.render()
        path = r.snapshot(tmp_path / "shot.png")
        saved = np.asarray(Image.open(path).convert("RGB"))
        assert saved.shape == img.shape
        assert np.abs(saved.astype(int) - img.astype(int)).max() <= 1
        # the orientation cube sits in the lower-left corner (the "A" face, from the front)
        corner = img[-int(SIZE[1] * 0.2):, : int(SIZE[0] * 0.2)]
        assert (corner.max(axis=2) > 40).mean() > 0.1
        r.set_orientation_cube(False)
        corner = r.render()[-int(SIZE[1] * 0.2):, : int(SIZE[0] * 0.2)]
        assert (corner.max(axis=2) > 40).mean() < 0.01
    finally:
        r.close()


def test_gpu_mapper_can_be_forced(ct_phantom):
    r = VolumeRenderer(ct_phantom, size=(64, 64), mapper="gpu", preset="mip")
    try:
        assert r.mapper_kind == "gpu"
        assert (r.render().max(axis=2) > 20).mean() > 0.05
    finally:
        r.close()


def test_presets_file_is_data_and_is_validated():
    presets = load_vr_presets()
    assert [p.id for p in presets] == ["ct-bone", "ct-soft-tissue", "ct-lung", "ct-angio", "mr-default", "mip"]
    assert get_vr_preset("mip").blend == "mip"
    assert all(p.shading.ambient >= 0 for p in presets)
    with pytest.raises(PresetError):
        parse_presets({"schema": "something-else"})
    bad = {"schema": "osirix-py/vr-presets", "presets": [
        {"name": "x", "color": [[0, 0, 0, 0]], "opacity": [[10, 0], [0, 1]]}]}
    with pytest.raises(PresetError, match="increasing"):
        parse_presets(bad)
    with pytest.raises(PresetError):
        get_vr_preset("no such preset")
    json.dumps([p.name for p in presets])
