"""Volume-rendering presets, kept as data in ``resources/vr_presets.json``.

A preset holds a colour and an opacity transfer function (points in modality
units, or in fractions of the volume's value range for ``scale: "relative"``),
an optional gradient-opacity function, the shading parameters and a blend
mode.  :class:`TransferFunction` is a preset resolved for one volume plus a
window/level-style adjustment: the points are moved so that the preset's
design window ``(center, width)`` lands on the current ``(center, width)``
(shift by the centre difference, scale by the width ratio), which is what a
right-drag in the 3D view changes.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..resource_files import resources_dir

__all__ = [
    "VR_PRESETS_FILE",
    "PresetError",
    "Shading",
    "TransferFunction",
    "VRPreset",
    "get_vr_preset",
    "load_vr_presets",
    "robust_range",
    "vr_presets_for",
]

VR_PRESETS_FILE = "vr_presets.json"
SCHEMA = "osirix-py/vr-presets"
BLENDS = ("composite", "mip", "minip")
#: How preset points are read: modality units, fractions of the robust range
#: (minimum .. 99.5th percentile) or fractions of the full range (minimum .. maximum).
SCALES = ("absolute", "relative", "full")


class PresetError(ValueError):
    """The VR presets file is missing or invalid, or no preset has that name."""


@dataclass(frozen=True)
class Shading:
    shade: bool = True
    ambient: float = 0.2
    diffuse: float = 0.8
    specular: float = 0.2
    specular_power: float = 10.0


@dataclass(frozen=True)
class VRPreset:
    id: str
    name: str
    modalities: tuple[str, ...]
    blend: str
    scale: str  # "absolute" | "relative" | "full"
    window: tuple[float, float]
    color: tuple[tuple[float, float, float, float], ...]
    opacity: tuple[tuple[float, float], ...]
    gradient_opacity: tuple[tuple[float, float], ...] = ()
    unit_distance: float = 1.0
    shading: Shading = field(default_factory=Shading)

    def applies_to(self, modality: str) -> bool:
        return "*" in self.modalities or modality.upper() in self.modalities


def _points(raw: Any, width: int, what: str, name: str) -> tuple:
    try:
        pts = tuple(tuple(float(v) for v in p) for p in raw)
    except (TypeError, ValueError) as exc:
        raise PresetError(f"preset {name!r}: {what} must be a list of number lists") from exc
    if not pts or any(len(p) != width for p in pts):
        raise PresetError(f"preset {name!r}: {what} points need {width} numbers each")
    xs = [p[0] for p in pts]
    if xs != sorted(xs):
        raise PresetError(f"preset {name!r}: {what} points must be in increasing order")
    return pts


def parse_presets(data: dict) -> list[VRPreset]:
    if data.get("schema") != SCHEMA:
        raise PresetError(f"not a VR presets file (schema {data.get('schema')!r}, expected {SCHEMA!r})")
    out = []
    for raw in data.get("presets", []):
        name = str(raw.get("name") or raw.get("id") or "?")
        blend = str(raw.get("blend", "composite"))
        if blend not in BLENDS:
            raise PresetError(f"preset {name!r}: blend must be one of {BLENDS}")
        scale = str(raw.get("scale", "absolute"))
        if scale not in SCALES:
            raise PresetError(f"preset {name!r}: scale must be one of {SCALES}")
        window = tuple(float(v) for v in raw.get("window", (0.5, 1.0)))
        if len(window) != 2 or window[1] <= 0:
            raise PresetError(f"preset {name!r}: window must be [center, width>0]")
        sh = raw.get("shading") or {}
        out.append(VRPreset(
            id=str(raw.get("id") or name.lower().replace(" ", "-")),
            name=name,
            modalities=tuple(str(m).upper() for m in raw.get("modalities", ["*"])),
            blend=blend,
            scale=scale,
            window=(window[0], window[1]),
            color=_points(raw.get("color"), 4, "color", name),
            opacity=_points(raw.get("opacity"), 2, "opacity", name),
            gradient_opacity=_points(raw["gradient_opacity"], 2, "gradient_opacity", name)
            if raw.get("gradient_opacity") else (),
            unit_distance=float(raw.get("unit_distance", 1.0)),
            shading=Shading(bool(sh.get("shade", True)), float(sh.get("ambient", 0.2)),
                            float(sh.get("diffuse", 0.8)), float(sh.get("specular", 0.2)),
                            float(sh.get("specular_power", 10.0))),
        ))
    if not out:
        raise PresetError("the VR presets file lists no preset")
    return out


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[VRPreset, ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PresetError(f"cannot read the VR presets {path}: {exc}") from exc
    return tuple(parse_presets(data))


def load_vr_presets(path: str | Path | None = None) -> list[VRPreset]:
    """Every preset of the file (default ``resources/vr_presets.json``), in file order."""
    p = Path(path) if path is not None else resources_dir() / VR_PRESETS_FILE
    return list(_load(str(p)))


def vr_presets_for(modality: str, path: str | Path | None = None) -> list[VRPreset]:
    """The presets that apply to ``modality`` (its own first, then the generic ones)."""
    allp = load_vr_presets(path)
    own = [p for p in allp if modality.upper() in p.modalities]
    generic = [p for p in allp if "*" in p.modalities and p not in own]
    return own + generic


def get_vr_preset(key: str, path: str | Path | None = None) -> VRPreset:
    """The preset with this id or name (case-insensitive)."""
    k = key.lower()
    for p in load_vr_presets(path):
        if p.id.lower() == k or p.name.lower() == k:
            return p
    raise PresetError(f"no VR preset named {key!r}")


def robust_range(array: np.ndarray, upper_percentile: float = 99.5) -> tuple[float, float]:
    """``(minimum, upper percentile)`` of the values, from a strided sample (fast on big volumes)."""
    a = np.asarray(array)
    step = max(1, int(round((a.size / 2_000_000) ** (1 / 3)))) if a.ndim == 3 else 1
    sample = a[::step, ::step, ::step] if a.ndim == 3 else a
    lo = float(np.min(sample))
    hi = float(np.percentile(sample, upper_percentile))
    if hi <= lo:
        hi = float(np.max(sample))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


@dataclass(frozen=True)
class TransferFunction:
    """A preset resolved to modality units, with its current window (W/L of the TF)."""

    preset: VRPreset
    base_window: tuple[float, float]  # the preset's design window in modality units
    window: tuple[float, float]  # the current one
    value_range: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_preset(cls, preset: VRPreset, value_range: tuple[float, float]) -> TransferFunction:
        """``value_range``: the range "relative" (or "full") points are fractions of."""
        c, w = preset.window
        if preset.scale != "absolute":
            lo, hi = value_range
            c, w = lo + c * (hi - lo), w * (hi - lo)
        return cls(preset, (c, w), (c, w), value_range)

    def _abs(self, x: float) -> float:
        if self.preset.scale != "absolute":
            lo, hi = self.value_range
            return lo + x * (hi - lo)
        return x

    def map_value(self, x: float) -> float:
        """Where a preset point (in the preset's own scale) lands now."""
        (c0, w0), (c, w) = self.base_window, self.window
        return c + (self._abs(x) - c0) * (w / w0)

    def with_window(self, center: float, width: float) -> TransferFunction:
        return replace(self, window=(float(center), max(1e-6, float(width))))

    def shifted(self, d_center: float, width_factor: float) -> TransferFunction:
        c, w = self.window
        return self.with_window(c + d_center, w * width_factor)

    def color_points(self) -> list[tuple[float, float, float, float]]:
        return [(self.map_value(p[0]), p[1], p[2], p[3]) for p in self.preset.color]

    def opacity_points(self) -> list[tuple[float, float]]:
        return [(self.map_value(p[0]), p[1]) for p in self.preset.opacity]

    def grey_ramp(self) -> tuple[list[tuple[float, float, float, float]], list[tuple[float, float]]]:
        """A black-to-white ramp over the current window with full opacity (for MIP / MinIP)."""
        c, w = self.window
        lo, hi = c - w / 2.0, c + w / 2.0
        return [(lo, 0.0, 0.0, 0.0), (hi, 1.0, 1.0, 1.0)], [(lo, 1.0), (hi, 1.0)]
