"""Window/level presets for the 2D viewer, from the imaging core's preset file.

:mod:`osirix_py.imaging.presets` keeps the presets by modality in
``resources/window_presets.json`` (fixed centre/width, automatic percentiles,
SUV windows for PET).  This module only picks the list for an image and
turns a preset into a window for the slice on screen; when the presets file
cannot be read the viewer still offers the classic CT windows below.
"""

from __future__ import annotations

import logging

from ..dicom.pixels import SUVError, Window, suv_bw_factor
from ..imaging.presets import PresetError, WindowPreset, presets_for

log = logging.getLogger(__name__)

#: Used only when the presets file is missing or invalid (the error is logged).
FALLBACK = (
    WindowPreset("Soft tissue", "CT", 40, 400),
    WindowPreset("Lung", "CT", -600, 1500),
    WindowPreset("Bone", "CT", 400, 1800),
    WindowPreset("Brain", "CT", 40, 80),
    WindowPreset("Full dynamic", "*", kind="auto"),
)


def presets_for_modality(modality: str) -> list[WindowPreset]:
    try:
        return presets_for(modality)
    except PresetError as exc:
        log.warning("window presets unavailable (%s); using built-in ones", exc)
        mod = (modality or "").upper()
        return [p for p in FALLBACK if p.modality in (mod, "*")] or [FALLBACK[-1]]


def suv_factor(dec) -> float | None:
    """Body-weight SUV factor of a decoded PET slice (None for other images)."""
    header = dec.header
    if str(header.get("Modality", "") or "").upper() != "PT":
        return None
    try:
        return suv_bw_factor(header)
    except SUVError:
        return None


def preset_window(preset: WindowPreset, dec) -> Window:
    """The window a preset gives for a decoded slice (automatic presets use its values)."""
    pad = dec.pipeline.padding
    exclude = dec.pipeline.modality.output_range(*pad) if pad is not None else None
    return preset.window(dec.modality_values() if preset.is_auto else None,
                         suv_factor=suv_factor(dec), exclude=exclude)


def initial_window(dec) -> Window | None:
    """The file's own window; else (no VOI LUT either) the modality's first preset; else min..max.

    ``None`` means "let the display pipeline apply the file's VOI LUT".
    """
    pipe = dec.pipeline
    if pipe.windows or pipe.voi_luts:
        return pipe.default_window(dec.stored)
    modality = str(dec.header.get("Modality", "") or "")
    for p in presets_for_modality(modality)[:1]:
        try:
            return preset_window(p, dec)
        except PresetError as exc:
            log.info("default preset %s not usable: %s", p.name, exc)
    return pipe.default_window(dec.stored)
