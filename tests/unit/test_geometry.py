"""Geometry: orientation, labels, planes, sorting, spacing, tilt and the affine."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset

from osirix_py.dicom import geometry as g


def _rot(axis, deg):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


# ---------------------------------------------------------------------------
# orientation


def test_iop_vectors_axial():
    row, col, n = g.iop_vectors([1, 0, 0, 0, 1, 0])
    assert np.allclose(row, [1, 0, 0]) and np.allclose(col, [0, 1, 0]) and np.allclose(n, [0, 0, 1])


def test_iop_vectors_renormalises_rounded_values():
    # cosines rounded to 4 decimals, as many scanners write them
    row, col, n = g.iop_vectors([0.7071, 0.7071, 0, 0, 0, -1])
    assert abs(np.linalg.norm(row) - 1) < 1e-12 and abs(row @ col) < 1e-12
    assert np.allclose(n, np.cross(row, col))


@pytest.mark.parametrize("iop", [[1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0], [1, 0, 0, 0.5, 0.866, 0], "junk", None,
                                 [2, 0, 0, 0, 1, 0]])
def test_iop_vectors_rejects_invalid(iop):
    with pytest.raises(g.GeometryError) as exc:
        g.iop_vectors(iop)
    assert exc.value.tag == "(0020,0037) Image Orientation (Patient)"


def test_to_floats():
    assert g.to_floats("1.5\\2\\-3", 3) == [1.5, 2.0, -3.0]
    assert g.to_floats([1, 2], 3) is None
    assert g.to_floats("", 1) is None
    assert g.to_floats("nan", 1) is None
    assert g.to_floats(4.0) == [4.0]


@pytest.mark.parametrize(
    "vector, letters",
    [
        ((1, 0, 0), "L"), ((-1, 0, 0), "R"), ((0, 1, 0), "P"), ((0, -1, 0), "A"),
        ((0, 0, 1), "H"), ((0, 0, -1), "F"), ((1, -1, 0), "LA"), ((0.2, 0.9, -0.4), "PF"),
        ((0.1, 0.1, 1), "H"), ((0, 0, 0), ""),
    ],
)
def test_direction_letters(vector, letters):
    assert g.direction_letters(vector) == letters


def test_orientation_labels_standard_planes():
    assert g.orientation_labels([1, 0, 0, 0, 1, 0]) == ("A", "P", "R", "L")
    assert g.orientation_labels([1, 0, 0, 0, 0, -1]) == ("H", "F", "R", "L")  # coronal
    assert g.orientation_labels([0, 1, 0, 0, 0, -1]) == ("H", "F", "A", "P")  # sagittal
    # axial seen from above (row towards the patient's right): left/right swap
    assert g.orientation_labels([-1, 0, 0, 0, 1, 0]) == ("A", "P", "L", "R")


def test_orientation_labels_oblique():
    r = _rot([0, 0, 1], 30)
    iop = list(r[:, 0]) + list(r[:, 1])
    labels = g.orientation_labels(iop)
    assert labels.right == "LP" and labels.left == "RA" and labels.top == "AL" and labels.bottom == "PR"


def test_plane_name():
    assert g.plane_name([1, 0, 0, 0, 1, 0]) == "AXIAL"
    assert g.plane_name([1, 0, 0, 0, 0, -1]) == "CORONAL"
    assert g.plane_name([0, 1, 0, 0, 0, -1]) == "SAGITTAL"
    r = _rot([1, 0, 0], 30)
    assert g.plane_name(list(r[:, 0]) + list(r[:, 1])) == "OBLIQUE"
    r = _rot([1, 0, 0], 5)
    assert g.plane_name(list(r[:, 0]) + list(r[:, 1])) == "AXIAL"


# ---------------------------------------------------------------------------
# planes


def _ds(ipp, iop, spacing=(0.5, 0.7), rows=4, cols=6):
    ds = Dataset()
    ds.ImagePositionPatient = list(ipp)
    ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = rows, cols
    ds.SliceThickness = 2.0
    return ds


def test_image_plane_from_dataset_and_mapping():
    r = _rot([1, 2, 3], 25)
    iop = [round(float(v), 12) for v in (*r[:, 0], *r[:, 1])]
    plane = g.ImagePlane.from_dataset(_ds([10, -20, 30], iop))
    assert plane.rows == 4 and plane.columns == 6 and plane.thickness == 2.0
    # C.7.6.2.1.1: P = IPP + c * dc * X + r * dr * Y
    p = plane.pixel_to_patient(5, 3)[0]
    expected = np.array([10, -20, 30]) + 5 * 0.7 * plane.row_cosine + 3 * 0.5 * plane.col_cosine
    assert np.allclose(p, expected, atol=1e-12)
    back = plane.patient_to_pixel(p + 2.5 * plane.normal)[0]
    assert np.allclose(back, [5, 3, 2.5], atol=1e-12)
    aff = plane.affine
    assert np.allclose(aff @ [5, 3, 0, 1], [*expected, 1])
    assert np.allclose(plane.corners()[2], plane.pixel_to_patient(5, 3)[0])


def test_image_plane_missing_attributes_name_the_tag():
    ds = _ds([0, 0, 0], [1, 0, 0, 0, 1, 0])
    del ds.PixelSpacing
    with pytest.raises(g.GeometryError, match=r"\(0028,0030\)"):
        g.ImagePlane.from_dataset(ds)
    ds = _ds([0, 0, 0], [1, 0, 0, 0, 1, 0])
    del ds.ImagePositionPatient
    with pytest.raises(g.GeometryError, match=r"\(0020,0032\)"):
        g.ImagePlane.from_dataset(ds)


def test_pixel_spacing_fallbacks():
    ds = Dataset()
    ds.ImagerPixelSpacing = [0.2, 0.3]
    assert g.pixel_spacing_of(ds) == (0.2, 0.3, "ImagerPixelSpacing")
    ds.PixelSpacing = [0.1, 0.1]
    assert g.pixel_spacing_of(ds)[2] == "PixelSpacing"
    assert g.pixel_spacing_of(Dataset()) is None


def _enhanced(n=3):
    ds = Dataset()
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = 8, 8
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    pm = Dataset()
    pm.PixelSpacing = [0.5, 0.25]
    pm.SliceThickness = 1.0
    shared.PlaneOrientationSequence = [po]
    shared.PixelMeasuresSequence = [pm]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(n):
        f = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [0, 10.0 - 2 * k, 5]
        f.PlanePositionSequence = [pp]
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = frames
    return ds


def test_functional_groups_per_frame_then_shared():
    ds = _enhanced()
    assert list(g.functional_value(ds, 2, "PlanePositionSequence", "ImagePositionPatient")) == [0, 6.0, 5]
    assert list(g.functional_value(ds, 1, "PixelMeasuresSequence", "PixelSpacing")) == [0.5, 0.25]
    plane = g.ImagePlane.from_dataset(ds, 2)
    assert np.allclose(plane.position, [0, 6, 5]) and plane.pixel_spacing == (0.5, 0.25)
    assert np.allclose(plane.normal, [0, 1, 0])
    pos = g.frame_positions(ds)
    assert np.allclose(pos[1], [0, 8, 5])


def test_frame_positions_grid_offsets_and_spacing():
    ds = _ds([1, 2, 3], [1, 0, 0, 0, 1, 0])
    ds.NumberOfFrames = 3
    ds.GridFrameOffsetVector = [0, 2.5, 5]
    assert np.allclose(g.frame_positions(ds)[2], [1, 2, 8])
    ds.GridFrameOffsetVector = [3, 5.5, 8]  # absolute form: same positions
    assert np.allclose(g.frame_positions(ds)[2], [1, 2, 8])
    del ds.GridFrameOffsetVector
    assert g.frame_positions(ds) is None
    ds.SpacingBetweenSlices = 1.5
    assert np.allclose(g.frame_positions(ds)[2], [1, 2, 6])


# ---------------------------------------------------------------------------
# stacks


def test_sort_along_normal_ignores_input_order():
    n = np.array([0, 0.6, 0.8])
    positions = [n * d + [3, 0.8, -0.6] for d in (5.0, -2.0, 0.0, 12.5)]  # offset is in-plane
    order, dist = g.sort_along_normal(positions, n)
    assert list(order) == [1, 2, 0, 3]
    assert np.allclose(dist, [-2, 0, 5, 12.5])


def test_analyze_spacing_uniform_missing_irregular_duplicate():
    a = g.analyze_spacing([0, 2.5, 5, 7.5])
    assert a.uniform and a.spacing == 2.5
    a = g.analyze_spacing([0, 2.5, 5, 10, 12.5, 20])
    assert not a.uniform and a.missing == [(2, 1), (4, 2)] and a.missing_count == 3 and not a.irregular
    a = g.analyze_spacing([0, 2, 4, 7, 9])
    assert a.irregular == [2] and not a.missing
    # positions rounded to 0.1 mm: jitter, not irregular
    a = g.analyze_spacing([0, 2.5, 5.0, 7.6, 10.0, 12.5])
    assert a.jitter == [2, 3] and a.nearly_uniform and not a.uniform
    assert a.max_deviation == pytest.approx(0.1)
    a = g.analyze_spacing([0, 2, 2, 4])
    assert a.duplicates == [2] and not a.uniform
    assert g.analyze_spacing([1.0]).uniform


def test_gantry_tilt():
    iop = [1, 0, 0, 0, 1, 0]
    assert g.gantry_tilt_deg(iop, [0, 0, 2.5]) == pytest.approx(0.0)
    t = math.radians(12)
    # image plane tilted about the row (x) axis, slices advance along the table (z)
    col = np.array([0, math.cos(t), -math.sin(t)])
    iop_t = [1, 0, 0, *col]
    assert g.gantry_tilt_deg(iop_t, [0, 0, 3.0]) == pytest.approx(12.0)
    assert g.gantry_tilt_deg(iop_t, [0, 0, -3.0]) == pytest.approx(12.0)
    col = np.array([0, math.cos(t), math.sin(t)])
    assert g.gantry_tilt_deg([1, 0, 0, *col], [0, 0, 3.0]) == pytest.approx(-12.0)


def test_affine_from_geometry_exact():
    r = _rot([0.3, -1, 0.2], 40)
    iop = list(r[:, 0]) + list(r[:, 1])
    step = r[:, 2] * 3.0 + r[:, 1] * 0.4
    aff = g.affine_from_geometry(iop, [1, 2, 3], (0.5, 0.8), step)
    # (column, row, slice) -> IPP_k + c * dc * X + r * dr * Y
    p = aff @ [4, 7, 2, 1]
    expected = np.array([1, 2, 3]) + 2 * step + 4 * 0.8 * r[:, 0] + 7 * 0.5 * r[:, 1]
    assert np.allclose(p[:3], expected, atol=1e-12)
    scalar = g.affine_from_geometry(iop, [0, 0, 0], (1, 1), 2.0)
    assert np.allclose(scalar[:3, 2], 2.0 * r[:, 2])


def test_lps_to_ras():
    aff = np.eye(4)
    aff[:3, 3] = [1, 2, 3]
    ras = g.lps_to_ras(aff)
    assert np.allclose(ras @ [0, 0, 0, 1], [-1, -2, 3, 1])
