"""Imaging core (pure numpy/scipy, no Qt, no VTK, no database).

- :mod:`.volume`: :func:`load_volume`, :func:`load_volumes`, :class:`Volume`,
  :class:`PlanarImage`, :class:`VolumeError` and the load report.
- :mod:`.reslice`: MPR planes, :func:`reslice`, thick slabs (MIP/MinIP/mean),
  projections, :func:`deskew`.
- :mod:`.roi`: point, line, angle, rectangle, ellipse, polygon and freehand
  ROIs with statistics and JSON.
- :mod:`.presets`: window/level presets by modality.
"""

from .presets import PresetError, WindowPreset, get_preset, load_presets, presets_for, window_presets
from .reslice import (
    axial_plane,
    coronal_plane,
    deskew,
    oblique_plane,
    orthogonal_planes,
    plane_through,
    project,
    projection_image,
    reslice,
    reslice_image,
    sagittal_plane,
    slab,
    slab_image,
)
from .roi import (
    ROI,
    AngleROI,
    EllipseROI,
    FreehandROI,
    ImageReference,
    LineROI,
    PointROI,
    PolygonROI,
    RectangleROI,
    ROIError,
    ROIStatistics,
    roi_from_dict,
    roi_from_json,
)
from .volume import (
    Issue,
    LoadReport,
    PlanarImage,
    SliceSource,
    Volume,
    VolumeError,
    VolumeList,
    load_volume,
    load_volumes,
)

__all__ = [
    "ROI",
    "AngleROI",
    "EllipseROI",
    "FreehandROI",
    "ImageReference",
    "Issue",
    "LineROI",
    "LoadReport",
    "PlanarImage",
    "PointROI",
    "PolygonROI",
    "PresetError",
    "ROIError",
    "ROIStatistics",
    "RectangleROI",
    "SliceSource",
    "Volume",
    "VolumeError",
    "VolumeList",
    "WindowPreset",
    "axial_plane",
    "coronal_plane",
    "deskew",
    "get_preset",
    "load_presets",
    "load_volume",
    "load_volumes",
    "oblique_plane",
    "orthogonal_planes",
    "plane_through",
    "presets_for",
    "project",
    "projection_image",
    "reslice",
    "reslice_image",
    "roi_from_dict",
    "roi_from_json",
    "sagittal_plane",
    "slab",
    "slab_image",
    "window_presets",
]
