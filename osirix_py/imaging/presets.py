"""Window/level presets by modality, kept as data in ``resources/window_presets.json``.

A preset is either fixed (``center``/``width`` in modality units: HU for CT;
for PET, ``units: "SUVbw"`` means the values are body-weight SUV and are
converted with the image's SUV factor) or automatic (``kind: "auto"``, from
the image's values: ``percentiles`` or the full min..max).  The first preset
of a modality is its default when an image has no window of its own;
modalities without an entry use the ``"*"`` list.

The resources folder is found through the ``OSIRIX_PY_RESOURCES``
environment variable, else the ``resources`` folder of the source tree
(next to the ``osirix_py`` package), else ``osirix_py/resources`` inside an
installed package.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dicom.pixels import Window, auto_window
from ..resource_files import ResourceNotFound
from ..resource_files import resources_dir as _resources_dir

__all__ = [
    "PresetError",
    "WindowPreset",
    "get_preset",
    "load_presets",
    "presets_for",
    "resources_dir",
    "window_presets",
]

PRESETS_FILE = "window_presets.json"
PRESETS_SCHEMA = "osirix-py/window-presets"


class PresetError(ValueError):
    """The presets file is missing or invalid, or a preset cannot give a window."""


@dataclass(frozen=True)
class WindowPreset:
    """One named preset; :meth:`window` turns it into a :class:`Window` for an image."""

    name: str
    modality: str
    center: float | None = None
    width: float | None = None
    kind: str = "fixed"
    percentiles: tuple[float, float] | None = None
    function: str = "LINEAR"
    units: str = ""

    @property
    def is_auto(self) -> bool:
        return self.kind == "auto"

    def window(self, values: np.ndarray | None = None, *, suv_factor: float | None = None,
               exclude: tuple[float, float] | None = None) -> Window:
        """The window in modality units.

        ``values`` (the image or volume, modality units) is needed by automatic
        presets; ``suv_factor`` by SUV presets (the window is divided by it to
        land in Bq/ml); ``exclude`` leaves a value range (pixel padding) out of
        automatic statistics.
        """
        if self.is_auto:
            if values is None:
                raise PresetError(f"preset {self.name!r} is automatic and needs the image values")
            return auto_window(values, self.percentiles, exclude)
        assert self.center is not None and self.width is not None
        c, w = self.center, self.width
        if self.units.upper() == "SUVBW":
            if not suv_factor:
                raise PresetError(f"preset {self.name!r} is in SUV and the image has no SUV factor")
            c, w = c / suv_factor, w / suv_factor
            return Window(c, w, "LINEAR_EXACT" if w < 1 else self.function)
        return Window(c, w, self.function)


def resources_dir() -> Path:
    """The folder holding the resource files (see :mod:`osirix_py.resource_files`)."""
    try:
        return _resources_dir()
    except ResourceNotFound as exc:
        raise PresetError(str(exc)) from None


def _parse(data: Any, source: str) -> dict[str, list[WindowPreset]]:
    if not isinstance(data, dict) or data.get("schema") != PRESETS_SCHEMA:
        raise PresetError(f"{source}: not a window presets file (schema {PRESETS_SCHEMA!r} expected)")
    if data.get("version") != 1:
        raise PresetError(f"{source}: unsupported presets version {data.get('version')!r}")
    table = data.get("presets")
    if not isinstance(table, dict):
        raise PresetError(f"{source}: 'presets' must map modalities to lists")
    out: dict[str, list[WindowPreset]] = {}
    for modality, items in table.items():
        if not isinstance(items, list):
            raise PresetError(f"{source}: presets of {modality} must be a list")
        presets = []
        for item in items:
            try:
                name = str(item["name"])
                kind = str(item.get("kind", "fixed"))
                if kind == "auto":
                    pct = item.get("percentiles")
                    if pct is not None:
                        pct = (float(pct[0]), float(pct[1]))
                        if not 0 <= pct[0] < pct[1] <= 100:
                            raise ValueError("percentiles must be 0 <= low < high <= 100")
                    presets.append(WindowPreset(name, modality, kind="auto", percentiles=pct))
                elif kind == "fixed":
                    width = float(item["width"])
                    if width <= 0:
                        raise ValueError("width must be positive")
                    presets.append(WindowPreset(
                        name, modality, float(item["center"]), width, "fixed",
                        function=str(item.get("function", "LINEAR")), units=str(item.get("units", "")),
                    ))
                else:
                    raise ValueError(f"unknown kind {kind!r}")
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise PresetError(f"{source}: invalid preset {item!r} for {modality}: {exc}") from exc
        out[str(modality).upper() if modality != "*" else "*"] = presets
    return out


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> dict[str, list[WindowPreset]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PresetError(f"cannot read {path}: {exc}") from exc
    return _parse(data, path)


def load_presets(path: str | os.PathLike[str] | None = None) -> dict[str, list[WindowPreset]]:
    """All presets, keyed by modality ((0008,0060) value, upper case, or ``"*"``)."""
    p = Path(path) if path is not None else resources_dir() / PRESETS_FILE
    try:
        mtime = p.stat().st_mtime
    except OSError as exc:
        raise PresetError(f"cannot read {p}: {exc}") from exc
    table = _load_cached(str(p), mtime)
    return {k: list(v) for k, v in table.items()}


def presets_for(modality: str, path: str | os.PathLike[str] | None = None) -> list[WindowPreset]:
    """The presets of a modality (e.g. "CT"), or the generic ``"*"`` list."""
    table = load_presets(path)
    return table.get(str(modality or "").upper(), table.get("*", []))


def window_presets(modality: str | None = None, *, fixed_only: bool = False,
                   path: str | os.PathLike[str] | None = None) -> list[WindowPreset]:
    """A flat list of presets: every modality's (``modality`` None) or one modality's.

    ``fixed_only`` leaves out the automatic presets (those without a
    centre/width of their own).
    """
    if modality is not None:
        items = presets_for(modality, path)
    else:
        items = [p for ps in load_presets(path).values() for p in ps]
    return [p for p in items if not (fixed_only and p.is_auto)]


def get_preset(modality: str, name: str, path: str | os.PathLike[str] | None = None) -> WindowPreset:
    """One preset by (case-insensitive) name; raises :class:`PresetError` if unknown."""
    for p in presets_for(modality, path):
        if p.name.lower() == name.lower():
            return p
    known = ", ".join(p.name for p in presets_for(modality, path))
    raise PresetError(f"no {modality} preset named {name!r} (known: {known})")
