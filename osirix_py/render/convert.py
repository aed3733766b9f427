"""A :class:`~osirix_py.imaging.volume.Volume` as VTK image data, voxels shared, geometry in LPS.

Two views of the same voxels are made (neither copies them: the VTK scalars
wrap the numpy buffer through ``numpy_support`` and the numpy array is kept
referenced by the :class:`VtkVolume`):

* :attr:`VtkVolume.image` -- the *physical* image: spacing, origin and (VTK
  >= 9) direction matrix from the volume's affine, so that VTK's
  ``TransformIndexToPhysicalPoint`` gives the same LPS millimetres as
  :meth:`Volume.index_to_patient`.  This is what a VTK user of the volume
  expects (and what a writer would save).
* :attr:`VtkVolume.local` -- the same scalars with spacing only (origin 0,
  identity direction), plus :attr:`VtkVolume.matrix`, the 4x4 matrix from
  that local frame to LPS.  The renderers use this one: the matrix goes into
  the volume prop (``vtkVolume.SetUserMatrix``) and into the reslice axes, so
  any affine (rotated, sagittal-acquired, or sheared by a gantry tilt) is
  drawn exactly, whatever direction-matrix support a mapper has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from ..imaging.volume import Volume

__all__ = [
    "VtkVolume",
    "image_to_numpy",
    "matrix_from_numpy",
    "matrix_to_numpy",
    "supports_direction",
    "volume_to_vtk",
]

#: numpy dtypes VTK image data takes as they are (others are converted, which copies).
_NATIVE = {np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                  np.float32, np.float64)}


def supports_direction() -> bool:
    """Whether the installed VTK's image data has a direction matrix (VTK >= 9)."""
    return hasattr(vtkImageData, "SetDirectionMatrix")


def matrix_from_numpy(m: Any) -> vtkMatrix4x4:
    """A ``vtkMatrix4x4`` of a 4x4 array."""
    a = np.asarray(m, dtype=np.float64).reshape(4, 4)
    out = vtkMatrix4x4()
    out.DeepCopy(a.ravel().tolist())
    return out


def matrix_to_numpy(m: vtkMatrix4x4) -> np.ndarray:
    """The 4x4 array of a ``vtkMatrix4x4``."""
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=np.float64)


def _scalars(array: np.ndarray):
    a = array
    if a.dtype not in _NATIVE:
        a = a.astype(np.float32)
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    a = np.ascontiguousarray(a)  # a view when already C-contiguous (the usual case)
    flat = a.reshape(-1)
    vtk_arr = numpy_support.numpy_to_vtk(flat, deep=False)
    vtk_arr.SetName("values")
    return a, vtk_arr


@dataclass(eq=False)
class VtkVolume:
    """The VTK side of a :class:`Volume` (see the module docstring)."""

    volume: Volume
    array: np.ndarray  # the numpy buffer the VTK scalars wrap (kept alive here)
    image: vtkImageData
    local: vtkImageData
    matrix: np.ndarray  # local (mm, origin 0, identity direction) -> LPS
    spacing: tuple[float, float, float]  # (x=column, y=row, z=slice) mm along the index axes
    _keep: list = field(default_factory=list, repr=False)

    @property
    def shares_memory(self) -> bool:
        """True when VTK reads the volume's own buffer (no copy was made)."""
        return bool(np.shares_memory(self.array, self.volume.array))

    @property
    def dimensions(self) -> tuple[int, int, int]:
        s, r, c = self.array.shape
        return (c, r, s)

    @property
    def inverse(self) -> np.ndarray:
        return np.linalg.inv(self.matrix)

    def local_to_patient(self, xyz: Any) -> np.ndarray:
        p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        return p @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def patient_to_local(self, xyz: Any) -> np.ndarray:
        inv = self.inverse
        p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        return p @ inv[:3, :3].T + inv[:3, 3]

    def value_range(self) -> tuple[float, float]:
        """(minimum, maximum) of the voxels (numpy: ~10x faster than VTK's ``GetScalarRange``)."""
        if self.array.size == 0:
            return 0.0, 0.0
        return float(self.array.min()), float(self.array.max())


def volume_to_vtk(volume: Volume) -> VtkVolume:
    """Wrap ``volume`` for VTK without copying its voxels (when its dtype is one VTK takes)."""
    arr, vtk_arr = _scalars(volume.array)
    s, r, c = arr.shape
    aff = volume.affine
    norms = np.linalg.norm(aff[:3, :3], axis=0)  # mm per column, row, slice step
    spacing = (float(norms[0]), float(norms[1]), float(norms[2]))
    direction = aff[:3, :3] / norms

    image = vtkImageData()
    image.SetDimensions(c, r, s)
    image.SetSpacing(*spacing)
    image.SetOrigin(*[float(v) for v in aff[:3, 3]])
    if supports_direction():
        image.SetDirectionMatrix(direction.ravel().tolist())
    image.GetPointData().SetScalars(vtk_arr)

    local = vtkImageData()
    local.SetDimensions(c, r, s)
    local.SetSpacing(*spacing)
    local.SetOrigin(0.0, 0.0, 0.0)
    local.GetPointData().SetScalars(vtk_arr)

    matrix = np.eye(4)
    matrix[:3, :3] = direction
    matrix[:3, 3] = aff[:3, 3]
    return VtkVolume(volume, arr, image, local, matrix, spacing, [vtk_arr])


def image_to_numpy(image: vtkImageData, *, copy: bool = True) -> np.ndarray:
    """The scalars of a 2D or 3D VTK image as ``(rows, columns)`` / ``(slices, rows, columns)``.

    Row 0 is VTK's y = 0 (no flip); multi-component scalars get a last axis.
    """
    nx, ny, nz = image.GetDimensions()
    sc = image.GetPointData().GetScalars()
    a = numpy_support.vtk_to_numpy(sc)
    comps = sc.GetNumberOfComponents()
    shape: tuple[int, ...] = (ny, nx) if nz == 1 else (nz, ny, nx)
    if comps > 1:
        shape = (*shape, comps)
    a = a.reshape(shape)
    return a.copy() if copy else a
