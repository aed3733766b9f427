"""VTK MPR (vtkImageReslice) against the imaging core's numpy reslice, and the crosshair geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from renderhelpers import rotation, smooth_volume, sphere_volume

from osirix_py.dicom.synthetic import hu_at, make_ct_series
from osirix_py.imaging.reslice import reslice, slab
from osirix_py.imaging.volume import load_volume
from osirix_py.render import VIEWS, MprEngine


def _compare(engine, volume, view, tol=1.0):
    img = engine.image(view)
    plane = engine.plane(view)
    ref = reslice(volume, plane)
    assert img.shape == ref.shape == (plane.rows, plane.columns)
    inside = (ref != volume.fill_value) & (img != volume.fill_value)
    assert inside.mean() > 0.3  # most of the plane is in the volume
    diff = np.abs(img.astype(np.float64) - ref)[inside]
    assert diff.max() <= tol, (view, diff.max())
    return img, ref


@pytest.mark.parametrize("direction", [None, rotation((1, 1, 0), 25.0)])
def test_orthogonal_planes_equal_the_numpy_reslice(direction):
    vol = smooth_volume(direction=direction)
    eng = MprEngine(vol)
    eng.set_crosshair(vol.center + np.array([3.3, -2.1, 4.7]))
    for view in VIEWS:
        _compare(eng, vol, view)


def test_oblique_planes_equal_the_numpy_reslice():
    vol = smooth_volume(direction=rotation((0, 0, 1), 10.0))
    eng = MprEngine(vol)
    eng.rotate("axial", 30.0)
    eng.rotate("coronal", -20.0)
    for view in VIEWS:
        _compare(eng, vol, view)
    # the three planes stay perpendicular to each other and pass through the crosshair
    n = [eng.normal(v) for v in VIEWS]
    assert abs(n[0] @ n[1]) < 1e-9 and abs(n[0] @ n[2]) < 1e-9 and abs(n[1] @ n[2]) < 1e-9
    for v in VIEWS:
        assert abs(eng.plane(v).patient_to_pixel(eng.crosshair)[0][2]) < 1e-9


def test_moving_the_crosshair_moves_the_other_planes_only():
    vol = smooth_volume()
    eng = MprEngine(vol)
    before = {v: eng.plane(v) for v in VIEWS}
    col, row = eng.crosshair_pixel("axial")
    eng.set_crosshair_from_view("axial", col + 5, row - 3)
    after = {v: eng.plane(v) for v in VIEWS}
    # the axial plane is the same; coronal moved along y (rows), sagittal along x (columns)
    assert np.allclose(after["axial"].position, before["axial"].position)
    sp = eng.pixel_spacing
    assert np.allclose(after["coronal"].position - before["coronal"].position, (0, -3 * sp, 0))
    assert np.allclose(after["sagittal"].position - before["sagittal"].position, (5 * sp, 0, 0))
    assert eng.crosshair_pixel("axial") == pytest.approx((col + 5, row - 3))
    # and what the moved planes show is the numpy reslice of the new planes
    for view in VIEWS:
        _compare(eng, vol, view)


def test_oblique_plane_follows_the_rotation_of_the_crosshair():
    # a sphere 30 mm right-and-back of the centre along the 45 degree diagonal (in the axial plane)
    target = np.array([30.0, 30.0, 0.0])
    vol = sphere_volume(shape=(30, 80, 80), spacing=(1.0, 1.0, 2.0), center_lps=target, radius=6.0,
                        value=2000, body=None)
    eng = MprEngine(vol)
    eng.set_crosshair((0, 0, 0))
    assert eng.image("coronal").max() < 0  # the coronal plane y = 0 misses the sphere
    eng.rotate("axial", 45.0)  # clockwise on screen: the coronal line turns towards the sphere
    # the coronal line in the axial view now runs along the diagonal, through the sphere
    assert eng.line_angle("axial", "coronal") % 180.0 == pytest.approx(45.0, abs=1e-6)
    assert np.allclose(eng.normal("coronal"), (-math.sqrt(0.5), math.sqrt(0.5), 0.0))
    assert eng.is_oblique("coronal") and eng.is_oblique("sagittal") and not eng.is_oblique("axial")
    col, row = eng.to_pixel("coronal", target)
    img = eng.image("coronal")
    assert img[int(round(row)), int(round(col))] == 2000
    ys, xs = np.nonzero(img == 2000)
    assert xs.mean() == pytest.approx(col, abs=0.6) and ys.mean() == pytest.approx(row, abs=0.6)
    # turning back gives the standard planes again
    eng.rotate("axial", -45.0)
    assert not eng.is_oblique("coronal")
    assert eng.image("coronal").max() < 0


def test_thick_slab_mip_minip_mean():
    vol = sphere_volume(shape=(40, 40, 40), spacing=(1.0, 1.0, 1.0), center_lps=(0, 0, 8), radius=3.0,
                        value=1500, body=0, body_radius=100)
    eng = MprEngine(vol)
    eng.set_crosshair((0, 0, 0))
    assert eng.image("axial").max() == 0  # a thin plane 8 mm from the sphere
    eng.set_slab(24.0, "mip", view="axial")
    mip = eng.image("axial")
    col, row = eng.to_pixel("axial", (0, 0, 8))
    assert mip[int(round(row)), int(round(col))] == 1500
    ref = slab(vol, eng.plane("axial"), 24.0, "mip")
    assert np.array_equal(mip > 750, ref > 750)
    eng.set_slab(24.0, "minip", view="axial")
    assert eng.image("axial").max() == 0
    eng.set_slab(24.0, "mean", view="axial")
    mean = eng.image("axial")
    assert mean.dtype == np.float32
    centre_value = mean[int(round(row)), int(round(col))]
    # 24 samples 1 mm apart at z = -11.5 ... 11.5 (on voxel centres): the six at z = 5.5 ... 10.5
    # lie in the 3 mm-radius sphere around z = 8, the others are 0
    assert centre_value == pytest.approx(1500 * 6 / 24, abs=1.0)
    assert eng.plane("axial").thickness == 24.0


def test_oblique_mean_slab_matches_the_numpy_slab():
    vol = smooth_volume()
    eng = MprEngine(vol)
    eng.rotate("axial", 20.0)
    eng.set_slab(6.0, "mean")
    img = eng.image("coronal")
    ref = slab(vol, eng.plane("coronal"), 6.0, "mean")
    inside = (ref != vol.fill_value) & (img != vol.fill_value)
    # the field is nearly linear: the means agree closely away from the edges
    assert np.percentile(np.abs(img - ref)[inside], 90) < 3.0


def test_sagittal_acquisition_puts_the_phantom_where_it_is():
    # sagittal slices (a non-identity direction): the axial MPR still shows the bone rod at x = +50 mm
    ds = make_ct_series(rows=80, columns=80, slices=45, pixel_spacing=(3.0, 3.0), slice_spacing=3.0,
                        orientation=(0, 1, 0, 0, 0, -1))
    vol = load_volume(ds)
    assert not np.allclose(vol.direction, np.eye(3))
    eng = MprEngine(vol)
    eng.set_crosshair((0, 0, 0))
    img = eng.image("axial")
    _compare(eng, vol, "axial")
    for point in [(50.0, 0.0, 0.0), (-50.0, 0.0, 0.0), (0.0, 50.0, 0.0), (0.0, -60.0, 0.0)]:
        col, row = eng.to_pixel("axial", point)
        assert img[int(round(row)), int(round(col))] == pytest.approx(hu_at(np.array([point]))[0], abs=1)
    # the axial view is the standard one: patient left on the right, posterior down
    pl = eng.plane("axial")
    assert np.allclose(pl.row_cosine, (1, 0, 0)) and np.allclose(pl.col_cosine, (0, 1, 0))


def test_interactive_sampling_is_nearest_then_trilinear_again():
    vol = smooth_volume()
    eng = MprEngine(vol)
    eng.set_crosshair(vol.center + np.array([0.31, 0.27, 0.41]))  # not half-way between voxels (ties)
    eng.rotate("axial", 25.0)
    fine = eng.image("coronal").copy()
    eng.set_interactive(True)
    coarse = eng.image("coronal")
    plane = eng.plane("coronal")
    ref = reslice(vol, plane, order=0)
    inside = (coarse != vol.fill_value) & (ref != vol.fill_value)
    diff = np.abs(coarse.astype(float) - ref)[inside]
    assert (diff <= 1.0).mean() > 0.95  # the same voxels, but for rounding ties (samples half-way)
    assert not np.array_equal(coarse, fine)
    eng.set_interactive(False)
    assert np.array_equal(eng.image("coronal"), fine)


def test_crosshair_is_clamped_and_reset():
    vol = smooth_volume()
    eng = MprEngine(vol)
    eng.set_crosshair((1e4, -1e4, 0))
    lo, hi = vol.corners().min(axis=0), vol.corners().max(axis=0)
    assert np.all(eng.crosshair >= lo - 1e-9) and np.all(eng.crosshair <= hi + 1e-9)
    eng.rotate("sagittal", 33)
    eng.set_slab(5, "mean")
    eng.reset()
    assert np.allclose(eng.crosshair, vol.center)
    assert not any(eng.is_oblique(v) for v in VIEWS)
    assert all(eng.slab_thickness[v] == 0 for v in VIEWS)
    with pytest.raises(ValueError):
        eng.set_slab(3, "median")


def test_mpr_benchmark_runs_quick():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.bench_render import bench_mpr
    from benchmarks.harness import Context

    rows = bench_mpr(Context(quick=True, repeat=1))
    assert [r.benchmark for r in rows] == ["render-mpr"] * 3
    assert all(r.ours > 0 and r.peer > 0 and r.unit == "ms" for r in rows)
