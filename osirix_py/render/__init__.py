"""VTK rendering (no Qt): numpy <-> vtkImageData, MPR, MIP and volume rendering, presets.

Importing this package imports VTK (the ``vtkmodules`` it needs, not ``vtk``).
"""

from .convert import VtkVolume, image_to_numpy, supports_direction, volume_to_vtk
from .mpr import SLAB_MODES, VIEWS, MprEngine, rotation_matrix
from .presets import TransferFunction, VRPreset, get_vr_preset, load_vr_presets, vr_presets_for
from .projection import ParallelView, Projector
from .volume_render import VolumeRenderer, gl_info, is_software_gl

__all__ = [
    "SLAB_MODES",
    "VIEWS",
    "MprEngine",
    "ParallelView",
    "Projector",
    "TransferFunction",
    "VRPreset",
    "VolumeRenderer",
    "VtkVolume",
    "get_vr_preset",
    "gl_info",
    "image_to_numpy",
    "is_software_gl",
    "load_vr_presets",
    "rotation_matrix",
    "supports_direction",
    "volume_to_vtk",
    "vr_presets_for",
]
