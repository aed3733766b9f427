"""Multi-planar reformatting with ``vtkImageReslice``: three linked planes through a crosshair.

:class:`MprEngine` keeps a crosshair point (LPS mm) and, for each of the
three views ("axial", "coronal", "sagittal"), an orthonormal frame (row
cosine, column cosine, normal).  Every plane passes through the crosshair,
so moving it moves the planes it does not lie in; rotating the crosshair
in one view turns the *other two* planes about that view's normal, which
gives oblique (double-oblique after a second rotation) planes that stay
mutually perpendicular, as in OsiriX's 3D MPR.

Each view's image is an :class:`~osirix_py.dicom.geometry.ImagePlane`
sampled by its own ``vtkImageReslice`` (trilinear by default), optionally
as a thick slab (maximum, minimum or mean over ``SetSlabNumberOfSlices``
parallel planes).  The result is a numpy array in modality units, the
same thing :func:`osirix_py.imaging.reslice.reslice` gives for the same
plane, so a GUI paints it through its usual 2D path.

The planes are centred on the projection of the volume centre (not on the
crosshair), so a view's image stays put on screen while the crosshair
moves; their size covers the whole volume in the current orientation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from vtkmodules.vtkImagingCore import vtkImageReslice

from ..dicom.geometry import ImagePlane
from ..imaging.volume import Volume
from .convert import VtkVolume, image_to_numpy, matrix_from_numpy, volume_to_vtk

__all__ = ["MprEngine", "SLAB_MODES", "VIEWS", "rotation_matrix"]

VIEWS = ("axial", "coronal", "sagittal")
SLAB_MODES = ("mip", "minip", "mean")

# (row cosine, column cosine) of the standard views, as imaging.reslice writes them.
_STANDARD = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def rotation_matrix(axis: Sequence[float], angle_rad: float) -> np.ndarray:
    """3x3 rotation by ``angle_rad`` about ``axis`` (right hand)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    x, y, z = a
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    C = 1 - c
    return np.array([
        [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
        [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
        [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
    ])


def _standard_frame(view: str) -> np.ndarray:
    row, col = (np.array(v) for v in _STANDARD[view])
    return np.column_stack([row, col, np.cross(row, col)])


class MprEngine:
    """Three linked reslice planes of one volume (see the module docstring).

    ``spacing``: output pixel size in mm (default: the finest voxel size);
    ``interpolation``: "linear" (default), "nearest" or "cubic";
    ``max_size``: the largest output side in pixels (the pixel size grows
    for bigger volumes, which keeps an update fast).
    """

    def __init__(self, volume: Volume, *, spacing: float | None = None, interpolation: str = "linear",
                 max_size: int = 1024, vtk_volume: VtkVolume | None = None, threads: int | None = None):
        self.volume = volume
        self.vtk = vtk_volume if vtk_volume is not None else volume_to_vtk(volume)
        self.fill = float(volume.fill_value)
        finest = min(self.vtk.spacing[0], self.vtk.spacing[1], volume.slice_spacing or self.vtk.spacing[2])
        self.pixel_spacing = float(spacing) if spacing else float(finest)
        corners = volume.corners()
        self._corners = corners
        self._center = volume.center
        diag = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0)))
        if diag / self.pixel_spacing + 1 > max_size:
            self.pixel_spacing = diag / (max_size - 1)
        self.interpolation = interpolation
        #: While True (the mouse drags), planes are sampled nearest-neighbour: about twice as fast.
        self.interactive = False
        self.frames: dict[str, np.ndarray] = {}
        self.slab_thickness: dict[str, float] = {}
        self.slab_mode: dict[str, str] = {}
        self.crosshair = np.asarray(self._center, dtype=np.float64).copy()
        self._reslice: dict[str, vtkImageReslice] = {}
        self._cache: dict[str, tuple[Any, np.ndarray]] = {}
        for v in VIEWS:
            r = vtkImageReslice()
            r.SetInputData(self.vtk.local)
            r.SetOutputDimensionality(2)
            r.SetBackgroundLevel(self.fill)
            r.SetOutputOrigin(0.0, 0.0, 0.0)
            r.AutoCropOutputOff()
            r.SetSlabTrapezoidIntegration(0)
            if threads is not None:
                r.SetNumberOfThreads(int(threads))
            self._reslice[v] = r
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Standard axial/coronal/sagittal planes through the volume centre, no slab."""
        self.crosshair = np.asarray(self._center, dtype=np.float64).copy()
        for v in VIEWS:
            self.frames[v] = _standard_frame(v)
            self.slab_thickness[v] = 0.0
            self.slab_mode[v] = "mip"
        self._cache.clear()

    def set_crosshair(self, point: Sequence[float]) -> None:
        """Move the crosshair to an LPS point (clamped to the volume's bounding box)."""
        p = np.asarray(point, dtype=np.float64).reshape(3)
        lo, hi = self._corners.min(axis=0), self._corners.max(axis=0)
        self.crosshair = np.clip(p, lo, hi)

    def set_crosshair_from_view(self, view: str, column: float, row: float) -> None:
        """Move the crosshair to pixel ``(column, row)`` of ``view`` (it stays in that plane)."""
        self.set_crosshair(self.plane(view).pixel_to_patient(column, row)[0])

    def rotate(self, view: str, angle_deg: float) -> None:
        """Turn the crosshair in ``view`` by ``angle_deg`` (clockwise on screen).

        The other two planes turn about ``view``'s normal through the crosshair;
        ``view`` itself is unchanged.
        """
        n = self.frames[view][:, 2]
        rot = rotation_matrix(n, math.radians(angle_deg))
        for w in VIEWS:
            if w != view:
                self.frames[w] = rot @ self.frames[w]

    def set_frame(self, view: str, row_cosine: Sequence[float], col_cosine: Sequence[float]) -> None:
        """Set one view's orientation directly (the others are left as they are)."""
        row = np.asarray(row_cosine, dtype=np.float64)
        row = row / np.linalg.norm(row)
        col = np.asarray(col_cosine, dtype=np.float64)
        col = col - (col @ row) * row
        col = col / np.linalg.norm(col)
        self.frames[view] = np.column_stack([row, col, np.cross(row, col)])

    def set_slab(self, thickness: float, mode: str = "mip", view: str | None = None) -> None:
        """Thick slab of ``thickness`` mm ("mip", "minip" or "mean"); 0 = a thin plane.

        ``view`` None sets all three views.
        """
        mode = mode.lower()
        if mode not in SLAB_MODES:
            raise ValueError(f"slab mode must be one of {SLAB_MODES}")
        for v in (VIEWS if view is None else (view,)):
            self.slab_thickness[v] = max(0.0, float(thickness))
            self.slab_mode[v] = mode

    def normal(self, view: str) -> np.ndarray:
        return self.frames[view][:, 2].copy()

    def is_oblique(self, view: str) -> bool:
        return not np.allclose(self.frames[view], _standard_frame(view), atol=1e-9)

    # --------------------------------------------------------------- planes
    def plane(self, view: str) -> ImagePlane:
        """The :class:`ImagePlane` that ``view`` shows now."""
        f = self.frames[view]
        row, col, n = f[:, 0], f[:, 1], f[:, 2]
        c = self._center + float((self.crosshair - self._center) @ n) * n
        rel = self._corners - c
        sp = self.pixel_spacing
        half_u = float(np.max(np.abs(rel @ row)))
        half_v = float(np.max(np.abs(rel @ col)))
        cols = int(math.floor(2 * half_u / sp + 1e-6)) + 1
        rows = int(math.floor(2 * half_v / sp + 1e-6)) + 1
        origin = c - (cols - 1) / 2.0 * sp * row - (rows - 1) / 2.0 * sp * col
        th = self.slab_thickness[view]
        return ImagePlane(origin, row, col, (sp, sp), rows, cols, th if th > 0 else None)

    def slab_slices(self, view: str) -> int:
        th = self.slab_thickness[view]
        if th <= 0:
            return 1
        step = min(self.vtk.spacing)
        return max(1, int(math.ceil(th / step - 1e-9)))

    def image(self, view: str) -> np.ndarray:
        """The view's image, ``(rows, columns)``, in modality units (cached until a change)."""
        plane = self.plane(view)
        key = (plane.position.tobytes(), plane.row_cosine.tobytes(), plane.col_cosine.tobytes(),
               plane.rows, plane.columns, self.slab_thickness[view], self.slab_mode[view],
               self.current_interpolation)
        hit = self._cache.get(view)
        if hit is not None and hit[0] == key:
            return hit[1]
        out = self._run(view, plane)
        self._cache[view] = (key, out)
        return out

    @property
    def current_interpolation(self) -> str:
        return "nearest" if self.interactive else self.interpolation

    def set_interactive(self, on: bool) -> None:
        """Nearest-neighbour sampling while the user drags (True), full quality again (False)."""
        self.interactive = bool(on)

    def images(self) -> dict[str, np.ndarray]:
        return {v: self.image(v) for v in VIEWS}

    def _run(self, view: str, plane: ImagePlane) -> np.ndarray:
        r = self._reslice[view]
        p = np.eye(4)
        p[:3, 0] = plane.row_cosine
        p[:3, 1] = plane.col_cosine
        p[:3, 2] = plane.normal
        p[:3, 3] = plane.position
        axes = self.vtk.inverse @ p  # output (mm along row, col, normal) -> local input mm
        r.SetResliceAxes(matrix_from_numpy(axes))
        n = self.slab_slices(view)
        th = self.slab_thickness[view]
        step = th / n if n > 1 else 1.0
        r.SetOutputSpacing(plane.pixel_spacing[1], plane.pixel_spacing[0], step)
        r.SetOutputExtent(0, plane.columns - 1, 0, plane.rows - 1, 0, 0)
        interpolation = self.current_interpolation
        if interpolation == "nearest":
            r.SetInterpolationModeToNearestNeighbor()
        elif interpolation == "cubic":
            r.SetInterpolationModeToCubic()
        else:
            r.SetInterpolationModeToLinear()
        r.SetSlabNumberOfSlices(n)
        mode = self.slab_mode[view]
        if mode == "minip":
            r.SetSlabModeToMin()
        elif mode == "mean":
            r.SetSlabModeToMean()
        else:
            r.SetSlabModeToMax()
        if n > 1 and mode == "mean":
            r.SetOutputScalarType(10)  # VTK_FLOAT: keep the mean's fractions
        else:
            r.SetOutputScalarType(-1)  # the input's type
        r.Update()
        return image_to_numpy(r.GetOutput(), copy=True)

    # ---------------------------------------------------------- crosshairs
    def to_pixel(self, view: str, point: Sequence[float]) -> tuple[float, float]:
        """``(column, row)`` of an LPS point in ``view`` (projected onto the plane)."""
        c, r, _ = self.plane(view).patient_to_pixel(point)[0]
        return float(c), float(r)

    def to_patient(self, view: str, column: float, row: float) -> np.ndarray:
        return self.plane(view).pixel_to_patient(column, row)[0]

    def crosshair_pixel(self, view: str) -> tuple[float, float]:
        return self.to_pixel(view, self.crosshair)

    def lines(self, view: str) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
        """For each other view, its intersection line with ``view``: (point, unit direction) in pixels.

        The point is the crosshair; the direction is in (column, row) pixel units.
        """
        out = {}
        plane = self.plane(view)
        nv = self.frames[view][:, 2]
        cx, cy = self.crosshair_pixel(view)
        for w in VIEWS:
            if w == view:
                continue
            d = np.cross(self.frames[w][:, 2], nv)
            if np.linalg.norm(d) < 1e-9:
                continue
            dx = float(d @ plane.row_cosine)
            dy = float(d @ plane.col_cosine)
            norm = math.hypot(dx, dy)
            out[w] = ((cx, cy), (dx / norm, dy / norm))
        return out

    def line_angle(self, view: str, other: str) -> float:
        """Screen angle (degrees, clockwise from +x) of ``other``'s line in ``view``."""
        (_, _), (dx, dy) = self.lines(view)[other]
        return math.degrees(math.atan2(dy, dx))
