"""3D MIP / MinIP by shear-warp (render/projection.py) against the CPU ray caster, the quick
preview before the ray caster's first full frame, and the crop box's draggable faces."""

from __future__ import annotations

import numpy as np
import pytest
from renderhelpers import bright_centroid, rotation, sphere_volume

from osirix_py.render import VolumeRenderer
from osirix_py.render.projection import ParallelView, Projector, crop_index_ranges

SIZE = (160, 120)


def test_projection_along_a_volume_axis_is_the_numpy_maximum():
    rng = np.random.default_rng(3)
    arr = rng.integers(-1000, 3000, size=(20, 30, 40), dtype=np.int16)
    aff = np.eye(4)
    p = Projector(arr, aff)
    # looking along +slice, up = -row: pixel (x, y) = voxel (column x, row y)
    view = ParallelView((19.5, 14.5, 5.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0), 15.0, 40, 30)
    mip, hit = p.project(view, "mip")
    assert hit.all()
    assert np.array_equal(mip, arr.max(axis=0).astype(np.float32))
    minip, _ = p.project(view, "minip")
    assert np.array_equal(minip, arr.min(axis=0).astype(np.float32))
    # along the column axis (a transposed copy is made once): pixel (x, y) = (slice x, row y)
    view = ParallelView((9.5, 14.5, 9.5), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0), 15.0, 20, 30)
    mip, hit = p.project(view, "mip")
    # right = direction x up = (1,0,0) x (0,-1,0) = (0,0,-1): x runs towards lower slices
    assert hit.all() and np.array_equal(mip, arr.max(axis=2).T[:, ::-1].astype(np.float32))
    # a crop keeps only its voxels; rays outside it miss
    crop = ((5, 9), (0, 29), (2, 11))
    mip, hit = p.project(view, "mip", crop=crop)
    want = arr[2:12, :, 5:10].max(axis=2).T[:, ::-1]
    assert np.array_equal(mip[:, 20 - 12:20 - 2], want.astype(np.float32))
    assert hit[:, 8:18].all() and not hit[:, :8].any() and not hit[:, 18:].any()
    assert crop_index_ranges((0.25, 0.5, 0.0, 1.0, 0.1, 0.9), (41, 30, 20)) == ((10, 20), (0, 29), (2, 17))
    p.close()


def _raycast(r: VolumeRenderer) -> np.ndarray:
    r.fast_projection = False
    try:
        return r.render()
    finally:
        r.fast_projection = True


@pytest.mark.parametrize("direction,turn", [(None, (0, 0)), (None, (37, 21)),
                                            (rotation((1, -2, 0.5), 40.0), (-25, 48))])
def test_shear_warp_mip_matches_the_ray_casters(direction, turn):
    target = np.array([14.0, -6.0, 9.0])
    vol = sphere_volume(direction=direction, center_lps=target, radius=4.0, value=2500)
    r = VolumeRenderer(vol, size=SIZE, preset="mip")
    try:
        if r.mapper_kind != "cpu":
            pytest.fail("these tests run on a software OpenGL (the CPU path)")
        r.rotate(*turn)
        fast = r.render()
        assert r.last_frame_kind == "projection" and r.uses_projection()
        slow = _raycast(r)
        assert r.last_frame_kind == "raycast"
        # the bright sphere on the same pixel, where the geometry says
        ex, ey = r.world_to_pixel(target)
        for img in (fast, slow):
            cx, cy = bright_centroid(img)
            assert cx == pytest.approx(ex, abs=1.5) and cy == pytest.approx(ey, abs=1.5)
        f, s = fast.astype(float).mean(axis=2), slow.astype(float).mean(axis=2)
        # the same picture: silhouette, grey levels (differences only on edges, a pixel wide)
        assert np.abs(f - s).mean() < 4.0
        assert np.corrcoef(f.ravel(), s.ravel())[0, 1] > 0.97
        assert ((f > 5) == (s > 5)).mean() > 0.97
        # MinIP too, inside a crop box
        r.set_crop_box((0.32, 0.68, 0.32, 0.68, 0.32, 0.68))  # inside the soft-tissue ball
        r.set_crop_enabled(True)
        r.set_blend("minip")
        fast = r.render().astype(float)
        slow = _raycast(r).astype(float)
        grey = (np.ptp(fast, axis=2) < 10) & (np.ptp(slow, axis=2) < 10)  # not the orange outline
        f, s = fast.mean(axis=2)[grey], slow.mean(axis=2)[grey]
        lit = (s > 5) | (f > 5)
        assert (s > 5).sum() > 300
        assert ((f > 5) == (s > 5))[lit].mean() > 0.9
        assert np.abs(f - s)[lit].mean() < 10.0
    finally:
        r.close()


def test_projection_is_much_faster_than_the_ray_caster():
    import time

    from osirix_py.imaging.volume import Volume

    # a 256x256x160 CT-like block (a body cylinder, one bright ball) in a 384x384 view
    s, n = 160, 256
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    slab = np.where(xx ** 2 + yy ** 2 < 110 ** 2, 40, -1000).astype(np.int16)
    arr = np.repeat(slab[None], s, axis=0)
    zz = np.arange(s)[:, None, None] - s / 2
    arr[(zz ** 2 + (yy - 20) ** 2 + (xx + 30) ** 2) < 12 ** 2] = 1500
    vol = Volume(arr, np.diag([0.8, 0.8, 1.0, 1.0]), modality="CT")
    r = VolumeRenderer(vol, size=(384, 384), preset="mip")
    try:
        r.rotate(30, 20)
        r.render()
        r.projector.prepare()  # the transposed stacks a spare thread makes after the first frame
        _raycast(r)

        def best(fn, n=3):
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        still = best(r.render)  # fractional shear, planes between slices
        slow = best(lambda: _raycast(r))
        r.begin_interaction()
        moving = best(r.render)  # rounded shear
        r.end_interaction()
        print(f"projection {still * 1e3:.0f} ms at rest, {moving * 1e3:.0f} ms moving; "
              f"ray caster {slow * 1e3:.0f} ms")
        assert still < slow and moving < slow / 3, (still, moving, slow)
    finally:
        r.close()


def test_preview_first_then_the_full_quality_frame():
    vol = sphere_volume(shape=(40, 48, 56), center_lps=(0, 0, 0), radius=6, value=1500)
    r = VolumeRenderer(vol, size=SIZE, preset="ct-bone")
    try:
        r.preview_voxels = 20_000  # this small volume counts as big
        assert r.preview_factor() == 2
        first = r.render()
        assert r.last_frame_kind == "preview" and r.needs_refine and not r.full_ready
        full = r.render()
        assert r.last_frame_kind == "raycast" and not r.needs_refine and r.full_ready
        # the preview shows the same thing, coarser
        lit_p, lit_f = first.max(axis=2) > 20, full.max(axis=2) > 20
        assert lit_f.mean() > 0.01
        assert (lit_p == lit_f).mean() > 0.97
        assert bright_centroid(first) == pytest.approx(bright_centroid(full), abs=2.0)
        # once the full tables exist, no more previews (dragging included)
        r.begin_interaction()
        r.rotate(10, 0)
        r.render()
        assert r.last_frame_kind == "raycast"
        r.end_interaction()
        # a small volume never previews
        r.preview_voxels = 10_000_000
        assert r.preview_factor() == 1
    finally:
        r.close()


def test_crop_face_handles_and_dragging_them():
    vol = sphere_volume(shape=(30, 30, 30), spacing=(2.0, 2.0, 2.0), center_lps=(0, 0, 0), radius=5)
    r = VolumeRenderer(vol, size=(200, 200), preset="mip")
    try:
        r.set_crop_enabled(True)
        r.render()
        view = r.last_view
        assert view is not None
        handles = {face: (x, y, span) for face, x, y, span in r.crop_handles()}
        # from the front: column (x) and slice (z) faces can be dragged; the row faces point at the eye
        assert set(handles) == {0, 1, 4, 5}
        centres = r.crop_face_centres()
        for face, (x, y, _span) in handles.items():
            assert (x, y) == pytest.approx(r.world_to_pixel(centres[face]), abs=0.6)  # VTK: half-pixel
        # patient left (+x, the x1 face) is on the right of the screen, superior (z1) at the top
        assert handles[1][0] > handles[0][0] and handles[5][1] < handles[4][1]
        span = handles[1][2]  # pixels from x = 0 to x = 1
        assert span == pytest.approx(29 * 2.0 / view.per_pixel, rel=1e-6)
        box = r.dragged_crop_box(1, -0.25 * span, 7.0)  # drag the x1 face a quarter to the left
        assert box[1] == pytest.approx(0.75) and box[0] == 0.0 and box[2:] == (0.0, 1.0, 0.0, 1.0)
        box = r.dragged_crop_box(5, 3.0, 0.3 * span)  # z1 face down by 30 %
        assert box[5] == pytest.approx(0.7)
        assert r.dragged_crop_box(0, 5 * span, 0)[0] == pytest.approx(1.0 - 0.02)  # stops before x1
        assert r.dragged_crop_box(0, -span, 0)[0] == 0.0
        assert r.dragged_crop_box(2, 50, 50) == r.crop_box  # a face along the view: no move
        r.set_crop_box(box)
        planes = r.mapper.GetCroppingRegionPlanes()
        assert planes[5] == pytest.approx(0.7 * 29 * 2.0)
    finally:
        r.close()
