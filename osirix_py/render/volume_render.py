"""Volume rendering in an offscreen VTK window: presets, MIP/MinIP, crop box, orientation cube.

:class:`VolumeRenderer` owns an offscreen ``vtkRenderWindow`` (OSMesa, EGL or
X, as ``VTK_DEFAULT_OPENGL_WINDOW`` picks) and gives back RGB numpy images:
no Qt, no interactor.  A GUI shows :meth:`VolumeRenderer.render` and turns
mouse drags into :meth:`rotate`, :meth:`zoom`, :meth:`pan` and
:meth:`adjust_window`, bracketed by :meth:`begin_interaction` /
:meth:`end_interaction`.

World coordinates are patient LPS millimetres: the voxels go in as the
spacing-only image of :class:`~osirix_py.render.convert.VtkVolume` and the
volume prop carries the matrix to LPS, so the orientation cube's letters
and the camera directions are patient directions.

Speed on any machine (the "adaptive mapper"): with a real GPU the GPU ray
caster is used; on a software OpenGL (Mesa llvmpipe / softpipe / swrast)
the GPU ray caster runs on the CPU and is slow, so the CPU ray caster
(``vtkFixedPointVolumeRayCastMapper``) is used instead, with automatic
sample distances and a desired update rate while the mouse drags (coarser
rays, interactive frame rates) and full quality (one ray per pixel, a
sample per voxel) when it stops.  On that CPU path, 3D MIP / MinIP in the
(parallel) camera is computed by numpy shear-warp (:mod:`.projection`, tens
of milliseconds instead of seconds, the same picture), and the first
composite frame of a big volume comes from a subsampled copy (the ray
caster's per-voxel gradient tables take 7-15 s for 512x512x300; the full
frame follows on the next :meth:`VolumeRenderer.render`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (OpenGL factory overrides)
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401  (GPU volume mapper override)
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPiecewiseFunction
from vtkmodules.vtkFiltersSources import vtkOutlineSource
from vtkmodules.vtkRenderingAnnotation import vtkAnnotatedCubeActor
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkColorTransferFunction,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkRenderWindow,
    vtkVolume,
    vtkVolumeProperty,
    vtkWindowToImageFilter,
)
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper, vtkGPUVolumeRayCastMapper

from ..imaging.volume import Volume
from .convert import VtkVolume, matrix_from_numpy, volume_to_vtk
from .presets import BLENDS, TransferFunction, VRPreset, get_vr_preset, robust_range, vr_presets_for
from .projection import ParallelView, Projector, crop_index_ranges

__all__ = ["SOFTWARE_GL_MARKERS", "VolumeRenderer", "gl_info", "is_software_gl", "prefer_offscreen_window"]

log = logging.getLogger(__name__)

#: Substrings of the OpenGL renderer string that mean "no GPU".
SOFTWARE_GL_MARKERS = ("llvmpipe", "softpipe", "swrast", "software rasterizer", "lavapipe",
                       "microsoft basic render", "gdi generic", "swiftshader")


def gl_info(window: vtkRenderWindow) -> dict[str, str]:
    """Vendor / renderer / version strings of a render window that has rendered once."""
    out = {}
    try:
        text = window.ReportCapabilities() or ""
    except Exception:  # noqa: BLE001 - some windows cannot report
        text = ""
    for line in text.splitlines():
        for key in ("vendor", "renderer", "version"):
            tag = f"OpenGL {key} string:"
            if line.strip().startswith(tag):
                out[key] = line.split(":", 1)[1].strip()
    return out


def prefer_offscreen_window() -> None:
    """With no display and no choice made, use VTK's EGL window (else VTK tries X first and warns).

    ``VTK_DEFAULT_OPENGL_WINDOW`` set by the user (e.g. ``vtkOSOpenGLRenderWindow``
    under Qt's offscreen platform) is left alone.
    """
    if (not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")
            and not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW")):
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"


def is_software_gl(renderer_string: str) -> bool:
    r = renderer_string.lower()
    return any(m in r for m in SOFTWARE_GL_MARKERS)


def _orientation_cube() -> vtkAnnotatedCubeActor:
    cube = vtkAnnotatedCubeActor()
    # World is LPS: +x = patient left, +y = posterior, +z = superior (head).
    cube.SetXPlusFaceText("L")
    cube.SetXMinusFaceText("R")
    cube.SetYPlusFaceText("P")
    cube.SetYMinusFaceText("A")
    cube.SetZPlusFaceText("S")
    cube.SetZMinusFaceText("I")
    cube.SetFaceTextScale(0.65)
    cube.SetXFaceTextRotation(0)
    cube.SetZFaceTextRotation(0)
    cube.GetCubeProperty().SetColor(0.22, 0.26, 0.34)
    cube.GetTextEdgesProperty().SetColor(0.6, 0.6, 0.6)
    cube.GetTextEdgesProperty().SetLineWidth(1.0)
    for prop, rgb in ((cube.GetXPlusFaceProperty(), (1.0, 0.45, 0.45)),
                      (cube.GetXMinusFaceProperty(), (1.0, 0.45, 0.45)),
                      (cube.GetYPlusFaceProperty(), (0.45, 1.0, 0.45)),
                      (cube.GetYMinusFaceProperty(), (0.45, 1.0, 0.45)),
                      (cube.GetZPlusFaceProperty(), (0.5, 0.7, 1.0)),
                      (cube.GetZMinusFaceProperty(), (0.5, 0.7, 1.0))):
        prop.SetColor(*rgb)
        prop.SetInterpolationToFlat()
    return cube


class VolumeRenderer:
    """Offscreen volume rendering of one :class:`Volume` (see the module docstring).

    ``mapper``: "auto" (GPU ray caster on a real GPU, CPU ray caster on
    software GL), "cpu" or "gpu".  ``size``: the view in pixels (width,
    height).  ``preset``: a preset id/name or :class:`VRPreset` (default: the
    first for the volume's modality).
    """

    #: Frames per second asked of the CPU ray caster while the mouse drags.
    interactive_rate = 15.0
    #: Desired update rate when the mouse is still (a tiny rate = take the time it needs).
    still_rate = 0.0001
    #: CPU ray caster while dragging: one ray per this many pixels (adapted to the frame rate).
    image_sample_distance = 2.0
    max_image_sample_distance = 8.0
    #: 3D MIP / MinIP in a parallel projection by numpy shear-warp (:mod:`.projection`) instead of
    #: the CPU ray caster: the same picture, 30-60 ms instead of 1-3 s for 512x512x300.
    fast_projection = True
    #: Before the CPU ray caster's first composite frame of a big volume (it builds gradient and
    #: shading tables for every voxel: 7-15 s for 512x512x300 on 2 cores), frames are drawn from a
    #: subsampled copy of at most this many voxels (:attr:`needs_refine` tells that one was).
    preview_voxels = 3_000_000
    progressive = True

    def __init__(self, volume: Volume, *, size: tuple[int, int] = (512, 512), mapper: str = "auto",
                 preset: str | VRPreset | None = None, vtk_volume: VtkVolume | None = None,
                 background: Sequence[float] = (0.0, 0.0, 0.0), orientation_cube: bool = True,
                 sample_distance: float | None = None):
        self.volume = volume
        self.vtk = vtk_volume if vtk_volume is not None else volume_to_vtk(volume)
        self.value_range = robust_range(volume.array)
        self.full_range = self.vtk.value_range()
        self.interacting = False
        self.crop_enabled = False
        self.crop_box = (0.0, 1.0, 0.0, 1.0, 0.0, 1.0)
        self.blend = "composite"

        prefer_offscreen_window()
        self.window = vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.SetSize(int(size[0]), int(size[1]))
        self.window.SetNumberOfLayers(2)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(*background)
        self.renderer.SetLayer(0)
        self.window.AddRenderer(self.renderer)
        # the first render makes the GL context, which tells what GL this is
        self.window.Render()
        self.gl = gl_info(self.window)
        self.software_gl = is_software_gl(self.gl.get("renderer", "")) or not self.gl
        if mapper not in ("auto", "cpu", "gpu"):
            raise ValueError("mapper must be 'auto', 'cpu' or 'gpu'")
        use_gpu = (mapper == "gpu") or (mapper == "auto" and not self.software_gl)
        self.mapper_kind = "gpu" if use_gpu else "cpu"
        finest = float(min(self.vtk.spacing))
        self.full_sample_distance = float(sample_distance) if sample_distance else finest
        if use_gpu:
            m: Any = vtkGPUVolumeRayCastMapper()
            m.SetLockSampleDistanceToInputSpacing(0)
            m.SetSampleDistance(self.full_sample_distance / 2.0)
        else:
            m = vtkFixedPointVolumeRayCastMapper()
            m.SetSampleDistance(self.full_sample_distance)
            m.SetInteractiveSampleDistance(max(2.0 * self.full_sample_distance, 2.0))
            m.SetMinimumImageSampleDistance(1.0)
            m.SetMaximumImageSampleDistance(6.0)
            m.SetImageSampleDistance(1.0)
            threads = os.cpu_count() or 1
            m.SetNumberOfThreads(max(1, threads))
        m.SetInputData(self.vtk.local)
        m.SetAutoAdjustSampleDistances(0)
        m.SetCroppingRegionFlagsToSubVolume()
        self.mapper = m

        self.color_tf = vtkColorTransferFunction()
        self.opacity_tf = vtkPiecewiseFunction()
        self.gradient_tf = vtkPiecewiseFunction()
        self.property = vtkVolumeProperty()
        self.property.SetColor(self.color_tf)
        self.property.SetScalarOpacity(self.opacity_tf)
        self.property.SetInterpolationTypeToLinear()
        self.prop = vtkVolume()
        self.prop.SetMapper(m)
        self.prop.SetProperty(self.property)
        self.prop.SetUserMatrix(matrix_from_numpy(self.vtk.matrix))
        self.renderer.AddVolume(self.prop)
        self._projector: Projector | None = None
        self._preview: tuple[vtkVolume, Any] | None = None
        self.full_ready = False  # the main mapper has drawn a composite frame (its tables exist)
        self.last_frame_kind = ""  # "raycast", "preview" or "projection"

        # crop-box outline (shown while cropping)
        self._outline = vtkOutlineSource()
        om = vtkPolyDataMapper()
        om.SetInputConnection(self._outline.GetOutputPort())
        self.outline_actor = vtkActor()
        self.outline_actor.SetMapper(om)
        self.outline_actor.GetProperty().SetColor(1.0, 0.75, 0.1)
        self.outline_actor.GetProperty().SetLineWidth(1.5)
        self.outline_actor.SetUserMatrix(matrix_from_numpy(self.vtk.matrix))
        self.outline_actor.SetVisibility(0)
        self.renderer.AddActor(self.outline_actor)

        # orientation cube in a corner, in its own layer (turns with the camera)
        self.cube_renderer = vtkRenderer()
        self.cube_renderer.SetLayer(1)
        self.cube_renderer.InteractiveOff()
        self.cube_renderer.SetViewport(0.0, 0.0, 0.2, 0.2)
        self.cube = _orientation_cube()
        self.cube_renderer.AddActor(self.cube)
        self.window.AddRenderer(self.cube_renderer)
        self.cube_renderer.SetDraw(1 if orientation_cube else 0)

        self._w2i = vtkWindowToImageFilter()
        self._w2i.SetInput(self.window)
        self._w2i.SetInputBufferTypeToRGB()
        self._w2i.ReadFrontBufferOff()
        self._w2i.ShouldRerenderOff()

        presets = vr_presets_for(volume.modality or "")
        if isinstance(preset, VRPreset):
            p = preset
        elif preset:
            p = get_vr_preset(preset)
        else:
            p = presets[0]
        self.tf = TransferFunction.from_preset(p, self._range_for(p))
        self._apply_preset_blend(p)
        self._apply_tf()
        self._apply_crop()
        self.window.SetDesiredUpdateRate(self.still_rate)
        self.reset_camera()

    # ------------------------------------------------------------ presets
    def _range_for(self, preset: VRPreset) -> tuple[float, float]:
        return self.full_range if preset.scale == "full" else self.value_range

    def presets(self) -> list[VRPreset]:
        return vr_presets_for(self.volume.modality or "")

    @property
    def preset(self) -> VRPreset:
        return self.tf.preset

    def set_preset(self, preset: str | VRPreset) -> None:
        p = preset if isinstance(preset, VRPreset) else get_vr_preset(preset)
        self.tf = TransferFunction.from_preset(p, self._range_for(p))
        self._apply_preset_blend(p)
        self._apply_tf()

    def _apply_preset_blend(self, p: VRPreset) -> None:
        self.blend = p.blend
        self._apply_blend()
        sh = p.shading
        self.property.SetShade(1 if sh.shade else 0)
        self.property.SetAmbient(sh.ambient)
        self.property.SetDiffuse(sh.diffuse)
        self.property.SetSpecular(sh.specular)
        self.property.SetSpecularPower(sh.specular_power)
        self.property.SetScalarOpacityUnitDistance(p.unit_distance)

    def set_blend(self, blend: str) -> None:
        """"composite" (the preset's transfer functions), "mip" or "minip" (a grey ramp)."""
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}")
        if blend == "composite" and self.tf.preset.blend != "composite":
            # a MIP-only preset has no composite transfer function: take the modality's first one
            first = next((p for p in self.presets() if p.blend == "composite"), None)
            if first is not None:
                self.set_preset(first)
                return
        if blend != "composite" and self.tf.preset.blend == "composite" and self.blend == "composite":
            # MIP/MinIP of a composite preset: a ramp over the value range to start with
            lo, hi = self.value_range
            self.tf = self.tf.with_window((lo + hi) / 2.0, hi - lo)
        elif blend == "composite" and self.blend != "composite":
            self.tf = self.tf.with_window(*self.tf.base_window)
        self.blend = blend
        self._apply_blend()
        self._apply_tf()

    def _apply_mapper_blend(self) -> None:
        m = self.mapper
        if self.blend == "mip":
            m.SetBlendModeToMaximumIntensity()
        elif self.blend == "minip":
            m.SetBlendModeToMinimumIntensity()
        else:
            m.SetBlendModeToComposite()

    def _apply_blend(self) -> None:
        self._apply_mapper_blend()
        self.property.SetShade(1 if (self.blend == "composite" and self.tf_shade()) else 0)

    def tf_shade(self) -> bool:
        tf = getattr(self, "tf", None)
        return bool(tf.preset.shading.shade) if tf is not None else True

    def _apply_tf(self) -> None:
        ctf, otf = self.color_tf, self.opacity_tf
        ctf.RemoveAllPoints()
        otf.RemoveAllPoints()
        if self.blend == "composite":
            colors, opac = self.tf.color_points(), self.tf.opacity_points()
        else:
            colors, opac = self.tf.grey_ramp()
        for x, r, g, b in colors:
            ctf.AddRGBPoint(x, r, g, b)
        for x, a in opac:
            otf.AddPoint(x, a)
        ctf.SetClamping(1)
        otf.SetClamping(1)
        if self.tf.preset.gradient_opacity and self.blend == "composite":
            self.gradient_tf.RemoveAllPoints()
            for x, a in self.tf.preset.gradient_opacity:
                self.gradient_tf.AddPoint(x, a)
            self.property.SetGradientOpacity(self.gradient_tf)
            self.property.DisableGradientOpacityOff()
        else:
            self.property.DisableGradientOpacityOn()
        self.property.SetShade(1 if (self.blend == "composite" and self.tf_shade()) else 0)

    # ------------------------------------------------ W/L of the transfer function
    @property
    def tf_window(self) -> tuple[float, float]:
        return self.tf.window

    def set_tf_window(self, center: float, width: float) -> None:
        self.tf = self.tf.with_window(center, width)
        self._apply_tf()

    def adjust_window(self, dx: float, dy: float) -> None:
        """A W/L drag of (dx, dy) screen pixels: right widens, down raises the level (as in 2D)."""
        c, w = self.tf.window
        per_px = max(abs(w), 1e-3) / 200.0
        self.set_tf_window(c + dy * per_px, max(1e-3, w + dx * per_px))

    # ----------------------------------------------------------- crop box
    def set_crop_enabled(self, on: bool) -> None:
        self.crop_enabled = bool(on)
        self._apply_crop()

    def set_crop_box(self, box: Sequence[float]) -> None:
        """Crop to fractions ``(x0, x1, y0, y1, z0, z1)`` of the column, row and slice axes."""
        b = [min(1.0, max(0.0, float(v))) for v in box]
        for i in (0, 2, 4):
            if b[i] > b[i + 1]:
                b[i], b[i + 1] = b[i + 1], b[i]
        self.crop_box = tuple(b)  # type: ignore[assignment]
        self._apply_crop()

    def crop_planes(self) -> tuple[float, ...]:
        """The crop box in the mapper's (local, mm) coordinates."""
        dims = self.vtk.dimensions
        sp = self.vtk.spacing
        out = []
        for axis in range(3):
            ext = (dims[axis] - 1) * sp[axis]
            out += [self.crop_box[2 * axis] * ext, self.crop_box[2 * axis + 1] * ext]
        return tuple(out)

    def _apply_crop(self) -> None:
        planes = self.crop_planes()
        self.mapper.SetCroppingRegionPlanes(*planes)
        self.mapper.SetCropping(1 if self.crop_enabled else 0)
        self._outline.SetBounds(*planes)
        self.outline_actor.SetVisibility(1 if self.crop_enabled else 0)

    #: The crop box's faces: (axis, side) in the order of :attr:`crop_box` (x0, x1, y0, y1, z0, z1).
    CROP_FACES = ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1))

    def crop_face_centres(self, box: Sequence[float] | None = None) -> np.ndarray:
        """``(6, 3)`` LPS centres of the crop box's faces, in :attr:`CROP_FACES` order."""
        b = self.crop_box if box is None else tuple(box)
        dims, sp = self.vtk.dimensions, self.vtk.spacing
        ext = [(dims[a] - 1) * sp[a] for a in range(3)]
        lo = np.array([b[0] * ext[0], b[2] * ext[1], b[4] * ext[2]])
        hi = np.array([b[1] * ext[0], b[3] * ext[1], b[5] * ext[2]])
        mid = (lo + hi) / 2.0
        pts = []
        for axis, side in self.CROP_FACES:
            p = mid.copy()
            p[axis] = hi[axis] if side else lo[axis]
            pts.append(p)
        return self.vtk.local_to_patient(np.array(pts))

    def crop_face_axes(self) -> np.ndarray:
        """``(3, 3)``: the LPS displacement that moves a crop face across the whole axis (rows x, y, z)."""
        dims, sp = self.vtk.dimensions, self.vtk.spacing
        m = self.vtk.matrix[:3, :3]
        return np.array([m[:, a] * (dims[a] - 1) * sp[a] for a in range(3)])

    def crop_handles(self, view: ParallelView | None = None,
                     box: Sequence[float] | None = None) -> list[tuple[int, float, float, float]]:
        """The faces one can drag in ``view``: ``(face, x, y, pixels per unit fraction)``.

        A face whose axis points (nearly) along the view direction cannot be dragged
        in this view (its handle sits on another one's): it is left out.
        """
        v = view or getattr(self, "last_view", None) or self.parallel_view()
        pts = v.to_pixels(self.crop_face_centres(box))
        axes = self.crop_face_axes()
        out = []
        for i, (axis, _side) in enumerate(self.CROP_FACES):
            d = v.to_pixels(np.array([[0.0, 0.0, 0.0], axes[axis]]))
            d = d[1] - d[0]
            span = float(np.hypot(*d))
            if span >= 8.0:
                out.append((i, float(pts[i, 0]), float(pts[i, 1]), span))
        return out

    def dragged_crop_box(self, face: int, dx: float, dy: float, box: Sequence[float] | None = None,
                         view: ParallelView | None = None, min_gap: float = 0.02) -> tuple[float, ...]:
        """The crop box after dragging ``face``'s handle by ``(dx, dy)`` pixels (y down) in ``view``.

        The face moves along its axis by the drag's component along that axis on the
        screen; it stays inside the volume and ``min_gap`` away from the opposite face.
        """
        b = list(self.crop_box if box is None else box)
        v = view or getattr(self, "last_view", None) or self.parallel_view()
        axis, side = self.CROP_FACES[face]
        d = v.to_pixels(np.array([[0.0, 0.0, 0.0], self.crop_face_axes()[axis]]))
        s = d[1] - d[0]
        n2 = float(s @ s)
        if n2 < 1e-6:
            return tuple(b)
        frac = b[face] + (dx * s[0] + dy * s[1]) / n2
        if side == 0:
            frac = min(max(0.0, frac), b[face + 1] - min_gap)
        else:
            frac = max(min(1.0, frac), b[face - 1] + min_gap)
        b[face] = float(frac)
        return tuple(b)

    # -------------------------------------------------------------- camera
    @property
    def camera(self):
        return self.renderer.GetActiveCamera()

    def bounds_lps(self) -> np.ndarray:
        """The volume's eight corner points in LPS (voxel centres)."""
        return self.volume.corners()

    def reset_camera(self, view: str = "anterior") -> None:
        """Parallel projection from ``view`` ("anterior", "posterior", "left", "right",
        "superior", "inferior"), the whole volume in the window, head up."""
        dirs = {"anterior": ((0, -1, 0), (0, 0, 1)), "posterior": ((0, 1, 0), (0, 0, 1)),
                "left": ((1, 0, 0), (0, 0, 1)), "right": ((-1, 0, 0), (0, 0, 1)),
                "superior": ((0, 0, 1), (0, -1, 0)), "inferior": ((0, 0, -1), (0, -1, 0))}
        eye, up = (np.array(v, float) for v in dirs[view])
        corners = self.bounds_lps()
        center = (corners.min(axis=0) + corners.max(axis=0)) / 2.0
        radius = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0))) / 2.0
        cam = self.camera
        cam.ParallelProjectionOn()
        cam.SetFocalPoint(*center)
        cam.SetPosition(*(center + eye * radius * 4.0))
        cam.SetViewUp(*up)
        right = np.cross(-eye, up)
        rel = corners - center
        half_w = float(np.max(np.abs(rel @ right)))
        half_h = float(np.max(np.abs(rel @ up)))
        w, h = self.window.GetSize()
        aspect = w / h if h else 1.0
        cam.SetParallelScale(1.08 * max(half_h, half_w / aspect))
        self.renderer.ResetCameraClippingRange()

    def rotate(self, dx: float, dy: float) -> None:
        """Turn the volume by a mouse drag of (dx, dy) pixels (right = turn right, down = tilt)."""
        w, h = self.window.GetSize()
        cam = self.camera
        cam.Azimuth(-dx * 200.0 / max(w, 1))
        cam.Elevation(dy * 200.0 / max(h, 1))
        cam.OrthogonalizeViewUp()
        self.renderer.ResetCameraClippingRange()

    def roll(self, degrees: float) -> None:
        self.camera.Roll(degrees)

    def zoom(self, factor: float) -> None:
        """Magnify by ``factor`` (> 1 zooms in)."""
        if factor <= 0:
            return
        cam = self.camera
        if cam.GetParallelProjection():
            cam.SetParallelScale(cam.GetParallelScale() / factor)
        else:
            cam.Dolly(factor)
        self.renderer.ResetCameraClippingRange()

    def pan(self, dx: float, dy: float) -> None:
        """Move the picture by (dx, dy) screen pixels (y down)."""
        cam = self.camera
        w, h = self.window.GetSize()
        per_px = 2.0 * cam.GetParallelScale() / max(h, 1)
        up = np.array(cam.GetViewUp())
        dop = np.array(cam.GetDirectionOfProjection())
        right = np.cross(dop, up)
        shift = (-dx * right + dy * up) * per_px
        cam.SetFocalPoint(*(np.array(cam.GetFocalPoint()) + shift))
        cam.SetPosition(*(np.array(cam.GetPosition()) + shift))
        self.renderer.ResetCameraClippingRange()

    def world_to_pixel(self, point: Sequence[float]) -> tuple[float, float]:
        """Pixel ``(x, y)`` (y down, as in :meth:`render`'s image) of an LPS point."""
        r = self.renderer
        r.SetWorldPoint(float(point[0]), float(point[1]), float(point[2]), 1.0)
        r.WorldToDisplay()
        x, y, _ = r.GetDisplayPoint()
        h = self.window.GetSize()[1]
        return float(x), float(h - 1 - y)

    # --------------------------------------------------------- interaction
    def begin_interaction(self) -> None:
        """The mouse went down: favour speed.

        CPU ray caster: fewer samples along each ray (twice the full-quality
        distance) and one ray per ``image_sample_distance`` pixels, a step that
        :meth:`render` adapts after every interactive frame so that frames take
        ``1 / interactive_rate`` seconds (it is kept for the next drag).  GPU ray
        caster: VTK's own automatic sample distances and the desired update rate.
        """
        self.interacting = True
        if self.mapper_kind == "cpu":
            self.mapper.SetAutoAdjustSampleDistances(0)
            self.mapper.SetSampleDistance(2.0 * self.full_sample_distance)
            self.mapper.SetImageSampleDistance(self.image_sample_distance)
        else:
            self.mapper.SetAutoAdjustSampleDistances(1)
        self.window.SetDesiredUpdateRate(self.interactive_rate)

    def end_interaction(self) -> None:
        """The mouse went up: the next :meth:`render` is at full quality."""
        self.interacting = False
        self.mapper.SetAutoAdjustSampleDistances(0)
        if self.mapper_kind == "cpu":
            self.mapper.SetImageSampleDistance(1.0)
            self.mapper.SetSampleDistance(self.full_sample_distance)
        self.window.SetDesiredUpdateRate(self.still_rate)

    def _adapt(self, seconds: float) -> None:
        """After an interactive CPU frame: the ray step that meets the frame rate next time."""
        if not (self.interacting and self.mapper_kind == "cpu") or seconds <= 0:
            return
        target = 1.0 / self.interactive_rate
        # the cost goes with the number of rays, i.e. 1 / step^2; damped, within 1 .. MAX
        factor = min(2.0, max(0.5, (seconds / target) ** 0.5))
        step = self.image_sample_distance * (factor ** 0.8)
        self.image_sample_distance = float(min(self.max_image_sample_distance, max(1.0, step)))
        self.mapper.SetImageSampleDistance(self.image_sample_distance)

    # ----------------------------------------------------------- rendering
    @property
    def size(self) -> tuple[int, int]:
        w, h = self.window.GetSize()
        return int(w), int(h)

    def resize(self, width: int, height: int) -> None:
        width, height = max(16, int(width)), max(16, int(height))
        if (width, height) == self.size:
            return
        cam = self.camera
        scale = cam.GetParallelScale()
        self.window.SetSize(width, height)
        cam.SetParallelScale(scale)

    def _sync_cube(self) -> None:
        cam = self.camera
        cc = self.cube_renderer.GetActiveCamera()
        dop = np.array(cam.GetDirectionOfProjection())
        cc.SetFocalPoint(0.0, 0.0, 0.0)
        cc.SetPosition(*(-dop * 5.0))
        cc.SetViewUp(*cam.GetViewUp())
        cc.ParallelProjectionOn()
        cc.SetParallelScale(1.0)
        self.cube_renderer.ResetCameraClippingRange()

    def set_orientation_cube(self, on: bool) -> None:
        self.cube_renderer.SetDraw(1 if on else 0)

    # ------------------------------------------------- fast MIP, quick preview
    def uses_projection(self) -> bool:
        """Whether :meth:`render` draws the MIP / MinIP with numpy (see :mod:`.projection`)."""
        return (self.fast_projection and self.blend in ("mip", "minip") and self.mapper_kind == "cpu"
                and bool(self.camera.GetParallelProjection()))

    @property
    def projector(self) -> Projector | None:
        """The numpy MIP / MinIP engine (made at the first such frame)."""
        return self._projector

    @property
    def needs_refine(self) -> bool:
        """The last frame came from the subsampled preview: render again for the full-quality one."""
        return self.last_frame_kind == "preview"

    def _uses_preview(self) -> bool:
        if not (self.progressive and self.blend == "composite" and self.mapper_kind == "cpu"):
            return False
        if self.full_ready or self.preview_factor() <= 1:
            return False
        # while the mouse drags, and for the first still frame; the next still frame is the full one
        return self.interacting or self.last_frame_kind != "preview"

    def preview_factor(self) -> int:
        """Take every n-th voxel along each axis for the preview (1 = the volume is small)."""
        c, r, s = self.vtk.dimensions
        return max(1, math.ceil((c * r * s / float(self.preview_voxels)) ** (1.0 / 3.0) - 1e-9))

    def _preview_prop(self) -> vtkVolume:
        if self._preview is None:
            f = self.preview_factor()
            small = np.ascontiguousarray(self.vtk.array[::f, ::f, ::f])
            img = vtkImageData()
            s, r, c = small.shape
            img.SetDimensions(c, r, s)
            img.SetSpacing(*(sp * f for sp in self.vtk.spacing))
            img.SetOrigin(0.0, 0.0, 0.0)
            arr = numpy_support.numpy_to_vtk(small.reshape(-1), deep=False)
            img.GetPointData().SetScalars(arr)
            m = vtkFixedPointVolumeRayCastMapper()
            m.SetInputData(img)
            m.SetSampleDistance(self.full_sample_distance * f)
            m.SetImageSampleDistance(1.0)
            m.SetAutoAdjustSampleDistances(0)
            m.SetNumberOfThreads(max(1, os.cpu_count() or 1))
            m.SetCroppingRegionFlagsToSubVolume()
            prop = vtkVolume()
            prop.SetMapper(m)
            prop.SetProperty(self.property)
            prop.SetUserMatrix(matrix_from_numpy(self.vtk.matrix))
            prop.SetVisibility(0)
            self.renderer.AddVolume(prop)
            self._preview = (prop, (small, arr, img))
        prop = self._preview[0]
        m = prop.GetMapper()
        m.SetBlendMode(self.mapper.GetBlendMode())
        m.SetCroppingRegionPlanes(*self.crop_planes())
        m.SetCropping(1 if self.crop_enabled else 0)
        return prop

    def prepare_full(self) -> None:
        """Build the CPU ray caster's per-voxel tables (gradients, min-max blocks) without
        drawing in the window: for a spare thread, while :meth:`render` draws previews.

        The main mapper renders once into a tiny offscreen window of its own (its own GL
        context, made on the calling thread) with shading on; its tables are kept for the
        real window.  Until this returns, :meth:`render` never uses the main mapper.
        """
        if self.full_ready or self.mapper_kind != "cpu" or self.closed:
            self._preparing = False
            return
        self._preparing = True
        try:
            win = vtkRenderWindow()
            win.SetOffScreenRendering(1)
            win.SetSize(8, 8)
            ren = vtkRenderer()
            win.AddRenderer(ren)
            prop = vtkVolumeProperty()
            prop.DeepCopy(self.property)
            prop.ShadeOn()  # gradients are made only when shading (or gradient opacity) needs them
            vol = vtkVolume()
            vol.SetMapper(self.mapper)
            vol.SetProperty(prop)
            vol.SetUserMatrix(matrix_from_numpy(self.vtk.matrix))
            ren.AddVolume(vol)
            ren.ResetCamera()
            self.mapper.SetBlendModeToComposite()
            try:
                win.Render()
            finally:
                self._apply_mapper_blend()
                self.mapper.ReleaseGraphicsResources(win)
                ren.RemoveVolume(vol)
                win.Finalize()
            self.full_ready = True
        finally:
            self._preparing = False

    @property
    def preparing(self) -> bool:
        return self._preparing

    def will_prepare(self) -> None:
        """Say that :meth:`prepare_full` is about to run on another thread: until it is done,
        :meth:`render` draws previews (and leaves the main mapper alone)."""
        if not self.full_ready and self.mapper_kind == "cpu":
            self._preparing = True

    _preparing = False

    def parallel_view(self) -> ParallelView:
        """The camera as numbers (for numpy projections and for a GUI's overlays)."""
        cam = self.camera
        w, h = self.size
        return ParallelView(tuple(cam.GetFocalPoint()), tuple(cam.GetDirectionOfProjection()),
                            tuple(cam.GetViewUp()), float(cam.GetParallelScale()), w, h)

    def _colorize(self, values: np.ndarray, cover: np.ndarray) -> np.ndarray:
        """RGB uint8 of projected values through the current colour and opacity functions
        (a 4096-entry table over the window, background blended in; rebuilt when they change)."""
        if self.blend == "composite":
            colors, opac = self.tf.color_points(), self.tf.opacity_points()
        else:
            colors, opac = self.tf.grey_ramp()
        bg = tuple(float(v) for v in self.renderer.GetBackground())
        key = (tuple(colors), tuple(opac), bg)
        if getattr(self, "_lut_key", None) != key:
            xs = np.array([c[0] for c in colors] + [o[0] for o in opac], float)
            lo, hi = float(xs.min()), float(xs.max())
            if hi <= lo:
                hi = lo + 1.0
            n = 4096
            x = np.linspace(lo, hi, n)
            alpha = np.interp(x, [o[0] for o in opac], [o[1] for o in opac])
            lut = np.empty((n + 1, 3), np.uint8)
            for ch in range(3):
                col = np.interp(x, [c[0] for c in colors], [c[ch + 1] for c in colors])
                lut[:n, ch] = np.clip((col * alpha + bg[ch] * (1.0 - alpha)) * 255.0 + 0.5, 0, 255)
            lut[n] = np.clip(np.rint(np.asarray(bg) * 255.0), 0, 255)  # a ray that missed
            self._lut = lut
            self._lut_map = (lo, (n - 1) / (hi - lo), n)
            self._lut_key = key
        lo, scale, n = self._lut_map
        idx = (values - np.float32(lo)) * np.float32(scale) + np.float32(0.5)
        np.clip(idx, 0, n - 1, out=idx)
        idx = idx.astype(np.int32)
        idx[cover <= 0] = n
        pic = self._lut[idx]
        edge = (cover > 0) & (cover < 1)  # anti-aliased outline: blend with the background
        if edge.any():
            c = cover[edge][:, None]
            pic[edge] = np.rint(pic[edge] * c + self._lut[n][None, :].astype(np.float32) * (1 - c)).astype(np.uint8)
        return pic

    def _render_projection(self) -> np.ndarray:
        first = self._projector is None
        if first:
            self._projector = Projector(self.vtk.array, self.volume.affine)
        view = self.parallel_view()
        crop = crop_index_ranges(self.crop_box, self.vtk.dimensions) if self.crop_enabled else None
        # while the mouse drags: every other voxel when the full-resolution frames are too slow
        step = 2 if self.interacting and self._projection_seconds > 1.0 / self.interactive_rate else 1
        t0 = time.perf_counter()
        # at rest: fractional shear and planes between thick slices (smooth, like the ray caster's
        # trilinear samples); while the mouse drags: the rounded shear (about 5x faster)
        values, cover = self._projector.project(view, self.blend, crop=crop, step=step,
                                                linear=not self.interacting)
        if step == 1:
            self._projection_seconds = time.perf_counter() - t0
        pic = self._colorize(values, cover)
        if first:
            # the other two principal axes' slice stacks, made on a spare thread after the first frame
            import threading

            threading.Thread(target=self._projector.prepare, args=(True,), name="osirix-mip-prepare",
                             daemon=True).start()
        # the outline and the orientation cube: drawn by VTK without the volume, laid over
        self.prop.SetVisibility(0)
        try:
            self.window.Render()
        finally:
            self.prop.SetVisibility(1)
        scene = self._grab()
        bg = np.rint(np.asarray(self.renderer.GetBackground()) * 255.0).astype(np.int16)
        over = np.any(scene.astype(np.int16) != bg, axis=2)
        pic[over] = scene[over]
        return pic

    def _grab(self) -> np.ndarray:
        f = self._w2i
        f.Modified()
        f.Update()
        img = f.GetOutput()
        w, h, _ = img.GetDimensions()
        a = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
        return np.ascontiguousarray(a[::-1])

    def render(self) -> np.ndarray:
        """Render and return the picture, ``(height, width, 3)`` uint8 RGB, row 0 at the top.

        3D MIP / MinIP on the CPU path: numpy shear-warp (:meth:`uses_projection`).
        Composite before the ray caster's first full frame of a big volume: the subsampled
        preview (:attr:`needs_refine` is then True; render again for the full picture).
        """
        self._sync_cube()
        self.renderer.ResetCameraClippingRange()
        self.last_view = self.parallel_view()
        t0 = time.perf_counter()
        if self.uses_projection():
            self._last_image = self._render_projection()
            self.last_render_seconds = time.perf_counter() - t0
            self.last_frame_kind = "projection"
            return self._last_image
        preview = self._preparing or self._uses_preview()  # the main mapper is busy on another thread
        if preview:
            pp = self._preview_prop()
            self.prop.SetVisibility(0)
            pp.SetVisibility(1)
            try:
                self.window.Render()
            finally:
                pp.SetVisibility(0)
                self.prop.SetVisibility(1)
        else:
            self.window.Render()
            if self.blend == "composite":
                self.full_ready = True
        self.last_render_seconds = time.perf_counter() - t0
        self.last_frame_kind = "preview" if preview else "raycast"
        if not preview:
            self._adapt(self.last_render_seconds)
        self._last_image = self._grab()
        return self._last_image

    def snapshot(self, path: str | Path) -> Path:
        """Render at full quality and write the picture as a PNG."""
        from PIL import Image

        was = self.interacting
        if was:
            self.end_interaction()
        img = self.render()
        while self.needs_refine:  # a preview: the full-quality frame
            while self._preparing:  # its tables are being built on another thread
                time.sleep(0.02)
            img = self.render()
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(p, format="PNG")
        if was:
            self.begin_interaction()
        return p

    closed = False
    last_render_seconds = 0.0
    last_view: ParallelView | None = None
    _projection_seconds = 0.0

    def close(self) -> None:
        """Free the GL context (the renderer is unusable afterwards)."""
        self.closed = True
        if self._projector is not None:
            self._projector.close()
        try:
            self.window.Finalize()
        except Exception:  # noqa: BLE001
            pass

    def describe(self) -> str:
        gl = self.gl.get("renderer", "unknown GL")
        extra = " (MIP/MinIP by shear-warp)" if self.mapper_kind == "cpu" and self.fast_projection else ""
        return f"{self.mapper_kind.upper()} ray casting{extra} on {gl}"

