"""Volume -> vtkImageData: no voxel copy, and the same LPS positions as the imaging core."""

from __future__ import annotations

import numpy as np
import pytest
from renderhelpers import affine, rotation

from osirix_py.dicom.synthetic import make_ct_series
from osirix_py.imaging.volume import Volume, load_volume
from osirix_py.render import image_to_numpy, supports_direction, volume_to_vtk


def _physical(image, i, j, k):
    out = [0.0, 0.0, 0.0]
    image.TransformIndexToPhysicalPoint(i, j, k, out)
    return np.array(out)


def test_voxels_are_shared_not_copied():
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    vol = Volume(arr, affine(np.eye(3), (0.5, 0.6, 2.0), (1, 2, 3)))
    vv = volume_to_vtk(vol)
    assert vv.shares_memory
    assert vv.image.GetDimensions() == (6, 5, 4)
    # a change to the numpy volume is seen by VTK: same memory
    vol.array[3, 4, 5] = 1234
    assert vv.image.GetScalarComponentAsDouble(5, 4, 3, 0) == 1234
    assert vv.local.GetScalarComponentAsDouble(5, 4, 3, 0) == 1234
    assert np.array_equal(image_to_numpy(vv.image), vol.array)


def test_other_dtypes_are_converted():
    vol = Volume(np.ones((3, 4, 5), dtype=np.float16), np.eye(4))
    vv = volume_to_vtk(vol)
    assert not vv.shares_memory
    assert vv.image.GetScalarComponentAsDouble(1, 1, 1, 0) == 1.0


@pytest.mark.parametrize("direction", [np.eye(3), rotation((1, 2, 3), 35.0),
                                       np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)])
def test_physical_points_match_the_affine(direction):
    vol = Volume(np.zeros((7, 8, 9), np.int16), affine(direction, (0.7, 0.8, 2.5), (-100, 20, 35)))
    vv = volume_to_vtk(vol)
    assert supports_direction()
    for ijk in [(0, 0, 0), (8, 0, 0), (0, 7, 0), (0, 0, 6), (3, 5, 2), (8, 7, 6)]:
        want = vol.index_to_patient(ijk)[0]
        assert np.allclose(_physical(vv.image, *ijk), want, atol=1e-6)
        local = np.array(ijk) * np.array(vv.spacing)
        assert np.allclose(vv.local_to_patient(local)[0], want, atol=1e-6)
        assert np.allclose(vv.patient_to_local(want)[0], local, atol=1e-6)


def test_sagittal_acquisition_from_dicom():
    # slices acquired sagittally: rows along -z, columns along +y, stacked along x
    ds = make_ct_series(rows=24, columns=32, slices=6, pixel_spacing=(2.0, 1.5), slice_spacing=3.0,
                        orientation=(0, 1, 0, 0, 0, -1))
    vol = load_volume(ds)
    vv = volume_to_vtk(vol)
    d = vv.matrix[:3, :3]
    assert np.allclose(d[:, 0], (0, 1, 0)) and np.allclose(d[:, 1], (0, 0, -1))
    assert np.allclose(abs(d[:, 2]), (1, 0, 0))
    for ijk in [(0, 0, 0), (31, 23, 5), (10, 3, 2)]:
        assert np.allclose(_physical(vv.image, *ijk), vol.index_to_patient(ijk)[0], atol=1e-4)
