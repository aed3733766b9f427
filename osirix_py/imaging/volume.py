"""Volumes from DICOM series: validation, sorting, parallel decoding, the affine.

:func:`load_volumes` turns the files (or in-memory datasets) of one or more
series into :class:`Volume` objects, in the spirit of dicom-numpy's
``combine_slices``: a pure function that validates the stack and returns
voxels plus an affine, with one exception type (:class:`VolumeError`).

What it does, in order:

1. Reads every header (pixel data deferred), expands multi-frame objects into
   frames (enhanced CT/MR/PET through (5200,9230) Per-frame Functional Groups;
   legacy multi-frame through (3004,000C) Grid Frame Offset Vector or
   (0018,0088) Spacing Between Slices), and rejects what is not an image with
   geometry, saying why.  A plain single-frame greyscale file (native little
   endian, or compressed in a syntax decoded here) is read by
   :func:`~osirix_py.dicom.quickheader.read_header_file` instead of pydicom: the
   geometry, rescale, UIDs and the offset of the pixel data, ~0.15 ms instead of
   ~1.5 ms a file; anything it does not cover goes through pydicom as before,
   and the full header of such a file is read only when needed (the first
   slice's, for :attr:`Volume.header`, windows and SUV).
2. Splits the frames into stacks that can form one volume: one (0020,000E)
   Series Instance UID, one (0020,0052) Frame of Reference UID, one
   orientation, one size, one pixel spacing; stacks whose slices share
   positions are split further by the attribute that tells them apart
   ((0018,0086) Echo Numbers, (0020,9128) Temporal Position Index, ...).
   Each split is reported with its reason.
3. Sorts each stack along the slice normal (``IPP · N``; never by Instance
   Number), analyses the gaps (uniform, missing slices, uneven spacing,
   duplicates) and the step direction (gantry tilt).
4. Preallocates the output ``(slices, rows, columns)`` array and decodes the
   slices into it from a thread pool, applying each slice's Modality LUT
   (rescale slope/intercept), so peak memory is the voxel bytes plus one slice
   per worker (native pixels that need no rescale are read from the file
   straight into the output).  Values are in modality units (HU for CT), kept as int16 when
   the data allow (the choice falls back to int32/float32 when they do not).
5. Builds the affine that maps ``(column, row, slice, 1)`` to LPS millimetres.
   Missing slices and uneven spacing are, by default, resampled onto a
   regular grid at the nominal (median) spacing by linear interpolation along
   the stack (``irregular="resample"``); ``"keep"`` keeps the acquired slices
   (the affine then uses the mean step and ``slice_positions`` holds the
   truth); ``"error"`` raises.  A gantry tilt is kept exactly: the affine is
   sheared.

:func:`load_volume` is the same for exactly one stack.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..dicom.geometry import (
    GeometryError,
    ImagePlane,
    analyze_spacing,
    frame_positions,
    functional_value,
    gantry_tilt_deg,
    iop_vectors,
    pixel_spacing_of,
    to_floats,
)
from ..dicom import quickheader
from ..dicom.pixels import (
    TRANSFER_SYNTAXES,
    ModalityLUT,
    PixelDataError,
    SUVError,
    Window,
    decode_encapsulated_bytes,
    decode_encapsulated_frame,
    decode_frame,
    encapsulated_frames,
    fast_decode_available,
    frame_count,
    padding_range,
    stored_range,
    suv_bw_factor,
    windows_from_dataset,
)

__all__ = [
    "Issue",
    "LoadReport",
    "PlanarImage",
    "SliceSource",
    "Volume",
    "VolumeError",
    "VolumeList",
    "load_volume",
    "load_volumes",
]

log = logging.getLogger(__name__)

_INT16 = np.iinfo(np.int16)
_INT32 = np.iinfo(np.int32)

#: Angle (degrees) between the slice step and the normal above which a stack
#: is reported as tilted.
TILT_THRESHOLD_DEG = 0.05


# ---------------------------------------------------------------------------
# Errors and reports


class VolumeError(ValueError):
    """A set of images that cannot form the requested volume.

    ``reason`` says why in words; ``files`` lists the files (or dataset
    descriptions) at fault; ``tag`` names the DICOM attribute at fault when
    there is one, e.g. ``"(0020,0037) Image Orientation (Patient)"``;
    ``code`` is a short machine-readable category ("no-geometry",
    "mixed-orientation", "undecodable", "duplicate-position", "colour",
    "empty", "several-volumes", "irregular", ...).
    """

    def __init__(self, reason: str, *, files: Sequence[str] = (), tag: str | None = None,
                 code: str = "invalid", report: LoadReport | None = None):
        text = reason
        if files:
            shown = ", ".join(str(f) for f in list(files)[:5])
            more = f" (+{len(files) - 5} more)" if len(files) > 5 else ""
            text = f"{reason} [files: {shown}{more}]"
        super().__init__(text)
        self.reason = reason
        self.files = [str(f) for f in files]
        self.tag = tag
        self.code = code
        self.report = report


@dataclass(frozen=True)
class Issue:
    """One finding while building volumes.

    ``severity`` is "info" (nothing lost, e.g. a split by echo), "warning"
    (the volume is usable but not as acquired, e.g. interpolated missing
    slices, gantry tilt) or "error" (images left out).
    """

    code: str
    message: str
    severity: str = "warning"
    files: tuple[str, ...] = ()
    tag: str | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class LoadReport:
    """Everything :func:`load_volumes` noticed: issues, and the files it rejected."""

    issues: list[Issue] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)

    def add(self, code: str, message: str, severity: str = "warning",
            files: Iterable[str] = (), tag: str | None = None) -> Issue:
        issue = Issue(code, message, severity, tuple(str(f) for f in files), tag)
        self.issues.append(issue)
        log.info("%s", issue)
        return issue

    def reject(self, name: str, reason: str, code: str = "rejected", tag: str | None = None) -> None:
        self.rejected[str(name)] = reason
        self.add(code, f"{name}: {reason}", "error", [name], tag)

    @property
    def codes(self) -> set[str]:
        return {i.code for i in self.issues}

    def has(self, code: str) -> bool:
        return any(i.code == code for i in self.issues)

    def extend(self, other: LoadReport) -> None:
        self.issues.extend(other.issues)
        self.rejected.update(other.rejected)

    def __str__(self) -> str:
        if not self.issues:
            return "no issues"
        return "\n".join(str(i) for i in self.issues)


class VolumeList(list):
    """A ``list[Volume]`` that also carries the :class:`LoadReport` of the load."""

    def __init__(self, volumes: Iterable[Volume] = (), report: LoadReport | None = None):
        super().__init__(volumes)
        self.report = report or LoadReport()


@dataclass(frozen=True)
class SliceSource:
    """Where slice ``k`` of a volume came from.

    ``path`` is the file (``None`` for an in-memory dataset or an
    interpolated slice); ``frame`` the 0-based frame of a multi-frame object
    (``None`` for a single-frame image); ``interpolated`` marks slices made by
    resampling.  ``position`` is the slice's (0020,0032).
    """

    path: str | None
    frame: int | None
    sop_instance_uid: str
    instance_number: int | None
    position: tuple[float, float, float]
    interpolated: bool = False


# ---------------------------------------------------------------------------
# Data containers


@dataclass(eq=False)
class Volume:
    """A 3D image: ``array[slice, row, column]`` plus the affine to patient space.

    ``affine`` maps ``(column, row, slice, 1)`` to LPS ``(x, y, z, 1)`` in mm
    (note the index order: the first affine column goes with the *last*
    array axis).  Values are in modality units (``units``: "HU" for CT,
    "BQML" for PET ...).  ``window`` is the file's default window, if any;
    ``suv_factor`` turns PET Bq/ml into body-weight SUV.  ``report`` lists
    what was noticed while loading.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = ""
    units: str = ""
    series_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    window: Window | None = None
    sources: list[SliceSource] = field(default_factory=list)
    slice_positions: np.ndarray | None = None
    report: LoadReport = field(default_factory=LoadReport)
    tilt_deg: float = 0.0
    padding: tuple[float, float] | None = None
    suv_factor: float | None = None
    header: Any = None
    value_range: tuple[float, float] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise VolumeError(f"a volume array must be 3D (slices, rows, columns), got shape {arr.shape}")
        self.array = arr
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise VolumeError(f"the affine must be 4x4, got {aff.shape}")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise VolumeError("the affine is singular")
        self.affine = aff
        if self.slice_positions is None:
            n = self.normal
            self.slice_positions = np.array(
                [float((aff[:3, 3] + k * aff[:3, 2]) @ n) for k in range(arr.shape[0])]
            )

    # -- shape and geometry --------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm in *array* axis order: ``(slice, row, column)``.

        The slice value is the length of the step between slices (along the
        tilted direction for a tilted stack); see :attr:`slice_thickness_along_normal`.
        """
        n = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(n[2]), float(n[1]), float(n[0]))

    @property
    def slice_spacing(self) -> float:
        """Distance between slice planes along their normal (mm)."""
        return abs(float(self.affine[:3, 2] @ self.normal))

    @property
    def origin(self) -> np.ndarray:
        """LPS position of voxel (0, 0, 0): the first slice's (0020,0032)."""
        return self.affine[:3, 3].copy()

    @property
    def row_cosine(self) -> np.ndarray:
        """Unit vector of increasing column index."""
        v = self.affine[:3, 0]
        return v / np.linalg.norm(v)

    @property
    def col_cosine(self) -> np.ndarray:
        """Unit vector of increasing row index."""
        v = self.affine[:3, 1]
        return v / np.linalg.norm(v)

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the slices (row cosine × column cosine)."""
        return np.cross(self.row_cosine, self.col_cosine)

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit vectors of the column, row and slice axes."""
        return self.affine[:3, :3] / np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def orientation(self) -> list[float]:
        """(0020,0037) of the slices."""
        return [float(v) for v in (*self.row_cosine, *self.col_cosine)]

    @property
    def is_orthogonal(self) -> bool:
        """Whether the slice step is along the normal (no tilt, no shear)."""
        step = self.affine[:3, 2]
        return bool(abs(abs(float(step @ self.normal)) - float(np.linalg.norm(step))) < 1e-6 * max(1.0, float(np.linalg.norm(step))))

    @property
    def is_regular(self) -> bool:
        """Whether the slices sit exactly at the positions the affine says."""
        pos = self.slice_positions
        if pos is None or len(pos) < 2:
            return True
        expected = float(self.affine[:3, 3] @ self.normal) + np.arange(len(pos)) * float(self.affine[:3, 2] @ self.normal)
        return bool(np.allclose(pos, expected, atol=1e-3))

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    @property
    def center(self) -> np.ndarray:
        """LPS position of the volume centre."""
        s, r, c = self.shape
        return self.index_to_patient([(c - 1) / 2.0, (r - 1) / 2.0, (s - 1) / 2.0])[0]

    def corners(self) -> np.ndarray:
        """LPS positions (8 x 3) of the centres of the eight corner voxels."""
        s, r, c = self.shape
        idx = np.array([[i, j, k] for k in (0, s - 1) for j in (0, r - 1) for i in (0, c - 1)], float)
        return self.index_to_patient(idx)

    def index_to_patient(self, ijk: Any) -> np.ndarray:
        """LPS points (N x 3) of voxel indices given as ``(column, row, slice)`` (N x 3)."""
        p = np.asarray(ijk, dtype=np.float64).reshape(-1, 3)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def patient_to_index(self, xyz: Any) -> np.ndarray:
        """Fractional ``(column, row, slice)`` indices (N x 3) of LPS points."""
        p = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        inv = np.linalg.inv(self.affine)
        return p @ inv[:3, :3].T + inv[:3, 3]

    def slice_plane(self, k: int) -> ImagePlane:
        """The :class:`ImagePlane` of slice ``k``."""
        s, r, c = self.shape
        pos = self.affine[:3, 3] + k * self.affine[:3, 2]
        sp = self.spacing
        return ImagePlane(pos, self.row_cosine, self.col_cosine, (sp[1], sp[2]), r, c, self.slice_spacing)

    def slice_image(self, k: int) -> PlanarImage:
        """Slice ``k`` as a :class:`PlanarImage` (a view, not a copy)."""
        src = self.sources[k] if k < len(self.sources) else None
        return PlanarImage(
            self.array[k], self.slice_plane(k), units=self.units, modality=self.modality,
            suv_factor=self.suv_factor, padding=self.padding, window=self.window,
            sop_instance_uid=src.sop_instance_uid if src else "", frame=src.frame if src else None,
        )

    @property
    def fill_value(self) -> float:
        """Value for samples outside the volume: air for CT, else the minimum."""
        if self.units.upper() == "HU" or self.modality == "CT":
            return -1024.0
        if self.value_range is None and self.array.size:
            # computed once (a full pass over the voxels), then remembered
            self.value_range = (float(np.nanmin(self.array)), float(np.nanmax(self.array)))
        if self.value_range is not None:
            return float(self.value_range[0])
        return 0.0

    def __repr__(self) -> str:
        sp = ", ".join(f"{v:.4g}" for v in self.spacing)
        return (f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing=({sp}) mm, "
                f"modality={self.modality!r}, units={self.units!r})")


@dataclass(eq=False)
class PlanarImage:
    """A 2D image in modality units with its plane in patient space.

    What ROIs are measured on: a slice of a volume (:meth:`Volume.slice_image`),
    a reslice (:func:`osirix_py.imaging.reslice.reslice_image`) or a frame of a
    dataset (:meth:`from_dataset`).
    """

    array: np.ndarray
    plane: ImagePlane
    units: str = ""
    modality: str = ""
    suv_factor: float | None = None
    padding: tuple[float, float] | None = None
    window: Window | None = None
    sop_instance_uid: str = ""
    frame: int | None = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 2:
            raise ValueError(f"a planar image must be 2D, got shape {arr.shape}")
        if arr.shape != (self.plane.rows, self.plane.columns):
            raise ValueError(f"array shape {arr.shape} does not match the plane "
                             f"({self.plane.rows}, {self.plane.columns})")
        self.array = arr

    @classmethod
    def from_dataset(cls, ds: Any, frame: int = 0) -> PlanarImage:
        """Decode ``frame`` of a dataset into modality units (float64 unless integral)."""
        stored = decode_frame(ds, frame)
        if stored.ndim != 2:
            raise PixelDataError("ROI statistics need a greyscale image", tag="(0028,0004) Photometric Interpretation")
        mlut = ModalityLUT.from_dataset(ds, frame)
        values = mlut.apply(stored, np.float64)
        plane = ImagePlane.from_dataset(ds, frame if frame_count(ds) > 1 else None)
        pad = padding_range(ds)
        pad_mod = mlut.output_range(*pad) if pad is not None else None
        suv = None
        if str(ds.get("Modality", "")).upper() == "PT":
            try:
                suv = suv_bw_factor(ds)
            except SUVError:
                suv = None
        windows = windows_from_dataset(ds, frame)
        return cls(values, plane, units=mlut.units, modality=str(ds.get("Modality", "") or ""),
                   suv_factor=suv, padding=pad_mod, window=windows[0] if windows else None,
                   sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""), frame=frame)


# ---------------------------------------------------------------------------
# Records: one per frame of every input


@dataclass(eq=False)
class _Quick:
    """What a file read by :mod:`~osirix_py.dicom.quickheader` tells without a dataset."""

    head: quickheader.QuickHeader
    series_uid: str
    for_uid: str
    sop_uid: str
    instance_number: int | None


@dataclass(eq=False)
class _Record:
    source: Any  # str path or Dataset
    name: str
    frame: int | None
    #: the pydicom header; ``None`` for a quick record until first asked for
    _header: Any
    plane: ImagePlane
    mlut: ModalityLUT
    order: int  # input order, for stable tie-breaking
    #: set for a single-frame file read by quickheader (no pydicom parse)
    quick: _Quick | None = None

    @property
    def header(self) -> Any:
        """The pydicom header (pixel data deferred); a quick record reads it on first
        use, as the pydicom path would have (for the first slice's attributes, or the
        rare checks that need more than the quick read keeps)."""
        h = self._header
        if h is None:
            h = self._header = _dcmread_header(self.source)
        return h

    @property
    def path(self) -> str | None:
        return self.source if isinstance(self.source, str) else None

    @property
    def series_uid(self) -> str:
        if self.quick is not None:
            return self.quick.series_uid
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def for_uid(self) -> str:
        if self.quick is not None:
            return self.quick.for_uid
        return str(self.header.get("FrameOfReferenceUID", ""))

    @property
    def sop_uid(self) -> str:
        if self.quick is not None:
            return self.quick.sop_uid
        return str(self.header.get("SOPInstanceUID", "") or "")

    @property
    def instance_number(self) -> int | None:
        if self.quick is not None:
            return self.quick.instance_number
        try:
            v = self.header.get("InstanceNumber")
            return int(v) if v not in (None, "") else None
        except (TypeError, ValueError):
            return None

    @property
    def label(self) -> str:
        return self.name if self.frame is None else f"{self.name} frame {self.frame + 1}"


# Attributes that tell apart images sharing a position, tried in order.
# (keyword, functional group sequence or None, description)
_SPLIT_KEYS: tuple[tuple[str, str | None, str], ...] = (
    ("StackID", "FrameContentSequence", "(0020,9056) Stack ID"),
    ("EchoNumbers", None, "(0018,0086) Echo Numbers"),
    ("EffectiveEchoTime", "MREchoSequence", "(0018,9082) Effective Echo Time"),
    ("TemporalPositionIndex", "FrameContentSequence", "(0020,9128) Temporal Position Index"),
    ("TemporalPositionIdentifier", None, "(0020,0100) Temporal Position Identifier"),
    ("DiffusionBValue", "MRDiffusionSequence", "(0018,9087) Diffusion b-value"),
    ("TriggerTime", None, "(0018,1060) Trigger Time"),
    ("EchoTime", None, "(0018,0081) Echo Time"),
    ("AcquisitionNumber", None, "(0020,0012) Acquisition Number"),
    ("ImageType", None, "(0008,0008) Image Type"),
    ("AcquisitionTime", None, "(0008,0032) Acquisition Time"),
    ("ContentTime", None, "(0008,0033) Content Time"),
)


def _split_value(rec: _Record, keyword: str, sequence: str | None) -> Any:
    if sequence is not None:
        v = functional_value(rec.header, rec.frame, sequence, keyword)
    else:
        v = rec.header.get(keyword)
    if v is None:
        return None
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return tuple(str(x) for x in v)
    return str(v)


def _as_source_list(sources: Any) -> list[Any]:
    """Normalise the input: one path, a folder (recursed), datasets, or a mix."""
    from pydicom.dataset import Dataset

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    elif isinstance(sources, Dataset):
        sources = [sources]
    out: list[Any] = []
    for s in sources:
        if isinstance(s, Dataset):
            out.append(s)
            continue
        p = Path(s)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.name != "DICOMDIR")
        else:
            out.append(str(p))
    return out


def _dcmread_header(path: str) -> Any:
    """A file's header as :func:`_read_records` reads it (pixel data deferred)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            return pydicom.dcmread(path, defer_size=4096)
        except InvalidDicomError:
            return pydicom.dcmread(path, defer_size=4096, force=True)
    except Exception as exc:  # noqa: BLE001 - e.g. the file went away since the quick read
        raise VolumeError(f"cannot read {path} ({exc})", files=[path], code="unreadable") from exc


#: Attributes a quick record reads besides group 0028: (0008,0018) SOP Instance
#: UID, (0008,0060) Modality, (0018,0050) Slice Thickness, (0018,1164) Imager Pixel
#: Spacing, (0018,2010) Nominal Scanned Pixel Spacing, (0020,000E) Series Instance
#: UID, (0020,0013) Instance Number, (0020,0032) Image Position (Patient),
#: (0020,0037) Image Orientation (Patient), (0020,0052) Frame of Reference UID,
#: (0054,1001) Units, (3004,000E) Dose Grid Scaling, (7FE0,0001) Extended Offset Table
#: (the last two only to send such files to pydicom).
_QUICK_TAGS = frozenset({0x00080018, 0x00080060, 0x00180050, 0x00181164, 0x00182010, 0x0020000E,
                         0x00200013, 0x00200032, 0x00200037, 0x00200052, 0x00541001, 0x3004000E,
                         0x7FE00001})

#: (0028,0002) Samples per Pixel, (0028,0004) Photometric Interpretation, (0028,0101)
#: Bits Stored, (0028,0103) Pixel Representation: required by pydicom's decoders (the
#: quick read would assume 1, MONOCHROME2, Bits Allocated and unsigned).
_QUICK_REQUIRED = (0x00280002, 0x00280004, 0x00280101, 0x00280103)


def _quick_encapsulated() -> frozenset[str]:
    """The encapsulated transfer syntaxes that decode without pydicom here."""
    return frozenset(uid for uid in TRANSFER_SYNTAXES if fast_decode_available(uid))


def _quick_record(path: str, order: int, orientations: dict,
                  encapsulated: frozenset[str]) -> _Record | None:
    """The record of a single-frame greyscale file read by quickheader, or ``None``
    when anything is unusual: the caller then reads the file with pydicom, which
    decides (and reports) exactly as before.

    The values equal what the pydicom path computes from the same bytes:
    :meth:`ImagePlane.from_dataset` and :meth:`ModalityLUT.from_dataset` of a
    classic single-frame image, restricted to the cases where they read only the
    attributes kept here (no Modality LUT Sequence, no functional groups, no RT
    Dose scaling).  *orientations* caches the cosines per (0020,0037) value;
    *encapsulated* lists the compressed transfer syntaxes taken.
    """
    q = quickheader.read_header_file(path, _QUICK_TAGS, encapsulated=encapsulated)
    if q is None or q.frames != 1:
        return None
    if not all(tag in q for tag in _QUICK_REQUIRED):
        return None  # pydicom's decoder would refuse a small file without them
    if q.encapsulated:
        if not fast_decode_available(q.transfer_syntax):
            return None
    elif q.high_bit != q.bits_stored - 1:
        return None  # _fast_native would not read it
    try:
        modality = q.text(0x00080060).upper()
        if modality == "RTDOSE" or 0x3004000E in q or 0x7FE00001 in q:
            return None
        iop_raw = q.values.get(0x00200037)
        vectors = orientations.get(iop_raw)
        if vectors is None:
            iop = q.floats(0x00200037)
            if iop is None or len(iop) != 6:
                return None
            row, col, _ = iop_vectors(iop)
            vectors = orientations[iop_raw] = (row, col)
        ipp = q.floats(0x00200032)
        if ipp is None or len(ipp) != 3:
            return None
        spacing = None
        for tag in (0x00280030, 0x00181164, 0x00182010):
            v = q.floats(tag)
            if v is not None and len(v) == 2 and v[0] > 0 and v[1] > 0:
                spacing = v
                break
        if spacing is None:
            return None
        thickness = q.floats(0x00180050)
        slope = q.floats(0x00281053)
        intercept = q.floats(0x00281052)
        slope = slope if slope is not None and len(slope) == 1 else None
        intercept = intercept if intercept is not None and len(intercept) == 1 else None
        s_ = slope[0] if slope else 1.0
        b_ = intercept[0] if intercept else 0.0
        if s_ == 0.0:
            s_ = 1.0
        rtype = q.text(0x00281054).strip()
        if modality == "PT":
            rtype = q.text(0x00541001) or rtype
        if not rtype and modality == "CT":
            rtype = "HU"
        quick = _Quick(q, q.text(0x0020000E), q.text(0x00200052), q.text(0x00080018),
                       q.integer(0x00200013))
    except (ValueError, UnicodeDecodeError, GeometryError):
        return None
    plane = ImagePlane(np.array(ipp), vectors[0], vectors[1], (spacing[0], spacing[1]), q.rows,
                       q.columns, thickness[0] if thickness is not None and len(thickness) == 1 else None)
    return _Record(path, path, None, None, plane, ModalityLUT(float(s_), float(b_), rtype), order, quick)


def _read_records(sources: list[Any], report: LoadReport) -> list[_Record]:
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.errors import InvalidDicomError

    records: list[_Record] = []
    order = 0
    orientations: dict = {}
    encapsulated = _quick_encapsulated()
    for i, src in enumerate(sources):
        if isinstance(src, str):
            rec = _quick_record(src, order, orientations, encapsulated)
            if rec is not None:
                records.append(rec)
                order += 1
                continue
        if isinstance(src, Dataset):
            header = src
            name = str(getattr(src, "filename", "") or f"dataset #{i + 1} ({src.get('SOPInstanceUID', '?')})")
            source: Any = src
        else:
            name = src
            source = src
            try:
                header = pydicom.dcmread(src, defer_size=4096)
            except InvalidDicomError:
                try:
                    header = pydicom.dcmread(src, defer_size=4096, force=True)
                except Exception as exc:  # noqa: BLE001
                    report.reject(name, f"not a DICOM file ({exc})", "unreadable")
                    continue
                if "SOPClassUID" not in header and "Rows" not in header:
                    report.reject(name, "not a DICOM file", "unreadable")
                    continue
            except Exception as exc:  # noqa: BLE001 - any read failure is a rejection
                report.reject(name, f"cannot be read ({exc})", "unreadable")
                continue
        if "PixelData" not in header:
            report.reject(name, "has no (7FE0,0010) Pixel Data (not an image)", "not-image",
                          "(7FE0,0010) Pixel Data")
            continue
        spp = int(header.get("SamplesPerPixel", 1) or 1)
        if spp != 1:
            report.reject(name, f"is colour ((0028,0002) Samples per Pixel {spp}); volumes are greyscale",
                          "colour", "(0028,0002) Samples per Pixel")
            continue
        pi = str(header.get("PhotometricInterpretation", "") or "").upper()
        if pi == "PALETTE COLOR":
            report.reject(name, "is PALETTE COLOR; volumes are greyscale", "colour",
                          "(0028,0004) Photometric Interpretation")
            continue
        n = frame_count(header)
        try:
            planes = _frame_planes(header, n)
        except GeometryError as exc:
            report.reject(name, f"has no usable geometry: {exc}", "no-geometry", exc.tag)
            continue
        for f, plane in enumerate(planes):
            frame = None if n == 1 else f
            try:
                mlut = ModalityLUT.from_dataset(header, frame)
            except PixelDataError as exc:
                report.reject(name, str(exc), "invalid", exc.tag)
                break
            records.append(_Record(source, name, frame, header, plane, mlut, order))
            order += 1
    return records


def _frame_planes(ds: Any, n: int) -> list[ImagePlane]:
    """The plane of every frame (positions computed once for multi-frame objects)."""
    if n == 1:
        return [ImagePlane.from_dataset(ds, None)]
    positions = frame_positions(ds)
    if positions is None:
        raise GeometryError(
            f"multi-frame image ({n} frames) without per-frame (0020,0032) Image Position (Patient) "
            "((5200,9230) Per-frame Functional Groups, (3004,000C) Grid Frame Offset Vector or "
            "(0018,0088) Spacing Between Slices)",
            tag="(0020,0032) Image Position (Patient)",
        )
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not rows or not cols:
        raise GeometryError("(0028,0010) Rows / (0028,0011) Columns missing", tag="(0028,0010) Rows")
    out = []
    for f in range(n):
        iop = functional_value(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
        if iop is None:
            raise GeometryError("(0020,0037) Image Orientation (Patient) missing",
                                tag="(0020,0037) Image Orientation (Patient)")
        row, col, _ = iop_vectors(iop)
        sp = pixel_spacing_of(ds, f)
        if sp is None:
            raise GeometryError("(0028,0030) Pixel Spacing missing", tag="(0028,0030) Pixel Spacing")
        th = to_floats(functional_value(ds, f, "PixelMeasuresSequence", "SliceThickness"), 1)
        out.append(ImagePlane(positions[f], row, col, (sp[0], sp[1]), rows, cols, th[0] if th else None))
    return out


# ---------------------------------------------------------------------------
# Grouping


@dataclass(eq=False)
class _Group:
    records: list[_Record]
    label: str = ""
    issues: list[Issue] = field(default_factory=list)


def _same_stack(a: _Record, b: _Record) -> str | None:
    """``None`` when two frames can share a volume, else the reason they cannot."""
    if a.series_uid != b.series_uid:
        return "series"
    if a.for_uid != b.for_uid:
        return "frame-of-reference"
    pa, pb = a.plane, b.plane
    if (pa.rows, pa.columns) != (pb.rows, pb.columns):
        return "size"
    if not pa.is_parallel(pb, 1e-5):  # about 0.25 degrees
        return "orientation"
    sa, sb = pa.pixel_spacing, pb.pixel_spacing
    if abs(sa[0] - sb[0]) > 1e-3 * max(sa[0], 1e-6) or abs(sa[1] - sb[1]) > 1e-3 * max(sa[1], 1e-6):
        return "pixel-spacing"
    return None


_SPLIT_TEXT = {
    "series": ("several-series", "(0020,000E) Series Instance UID"),
    "frame-of-reference": ("mixed-frame-of-reference", "(0020,0052) Frame of Reference UID"),
    "size": ("mixed-size", "(0028,0010) Rows / (0028,0011) Columns"),
    "orientation": ("mixed-orientation", "(0020,0037) Image Orientation (Patient)"),
    "pixel-spacing": ("mixed-pixel-spacing", "(0028,0030) Pixel Spacing"),
}


def _group_records(records: list[_Record], report: LoadReport) -> list[_Group]:
    groups: list[_Group] = []
    reasons: set[str] = set()
    for rec in records:
        for g in groups:
            why = _same_stack(g.records[0], rec)
            if why is None:
                g.records.append(rec)
                break
            reasons.add(why)
        else:
            groups.append(_Group([rec]))
    if len(groups) > 1:
        # report only the reasons that actually separate some pair of groups
        seen = set()
        for i, g in enumerate(groups):
            for h in groups[i + 1:]:
                why = _same_stack(g.records[0], h.records[0])
                if why:
                    seen.add(why)
        for why in sorted(seen):
            code, tag = _SPLIT_TEXT[why]
            sizes = ", ".join(str(len(g.records)) for g in groups)
            report.add(code, f"images differ in {tag}: split into {len(groups)} stacks ({sizes} images)",
                       "info", tag=tag)
    for i, g in enumerate(groups):
        p = g.records[0].plane
        g.label = f"stack {i + 1}: {len(g.records)} images {p.rows}x{p.columns}"
    return groups


def _position_keys(recs: list[_Record], normal: np.ndarray, tol: float) -> list[int]:
    d = np.array([float(r.plane.position @ normal) for r in recs])
    return [int(round(x / tol)) for x in d]


def _split_duplicates(group: _Group, report: LoadReport) -> list[_Group]:
    """Split a stack whose images share positions; drop exact duplicates.

    The issues found are added to ``report`` and to each resulting group.
    """
    local = LoadReport()
    parts = _split_duplicates_into(group, local)
    report.extend(local)
    for p in parts:
        p.issues.extend(local.issues)
    return parts


def _split_duplicates_into(group: _Group, report: LoadReport) -> list[_Group]:
    recs = group.records
    # the same instance (and frame) given twice
    seen: dict[tuple[str, int | None], _Record] = {}
    unique: list[_Record] = []
    dropped: list[str] = []
    for r in recs:
        key = (r.sop_uid, r.frame)
        if r.sop_uid and key in seen:
            dropped.append(r.label)
            continue
        seen[key] = r
        unique.append(r)
    if dropped:
        report.add("duplicate-instance", f"{len(dropped)} image(s) given twice were ignored", "info", dropped)
    recs = unique
    normal = recs[0].plane.normal
    tol = max(1e-3, 0.01 * min(recs[0].plane.pixel_spacing))
    keys = _position_keys(recs, normal, tol)
    if len(set(keys)) == len(keys):
        return [_Group(recs, group.label)]
    for keyword, seq, tag in _SPLIT_KEYS:
        values = [_split_value(r, keyword, seq) for r in recs]
        distinct = sorted(set(values), key=lambda v: (v is None, str(v)))
        if len(distinct) < 2:
            continue
        parts: dict[Any, list[_Record]] = {}
        for r, v in zip(recs, values):
            parts.setdefault(v, []).append(r)
        ok = all(
            len(set(_position_keys(p, normal, tol))) == len(p) for p in parts.values()
        )
        if ok:
            report.add("split", f"images share positions; split by {tag} into {len(parts)} volumes "
                       f"({', '.join(f'{v}: {len(p)}' for v, p in parts.items())})", "info", tag=tag)
            return [_Group(p, f"{group.label} {keyword}={v}") for v, p in parts.items()]
    # nothing tells them apart: keep the first image at each position
    kept: dict[int, _Record] = {}
    lost: list[str] = []
    for r, k in sorted(zip(recs, keys), key=lambda rk: (rk[1], rk[0].instance_number or 0, rk[0].order)):
        if k in kept:
            lost.append(r.label)
        else:
            kept[k] = r
    report.add("duplicate-position",
               f"{len(lost)} image(s) share a position with another and nothing tells them apart; "
               "kept the first (lowest (0020,0013) Instance Number) at each position",
               "error", lost, "(0020,0032) Image Position (Patient)")
    return [_Group(sorted(kept.values(), key=lambda r: r.order), group.label)]


# ---------------------------------------------------------------------------
# Decoding into the output array


class _Overflow(Exception):
    pass


def _choose_dtype(recs: list[_Record]) -> tuple[np.dtype, bool]:
    """Output dtype, and whether it is guaranteed to hold every possible value."""
    integral = all(r.mlut.is_integral for r in recs)
    if not integral:
        return np.dtype(np.float32), True
    lo, hi = math.inf, -math.inf
    float_data = False
    for r in recs:
        q = r.quick
        if q is not None:  # never float pixel data (quickheader refuses it)
            bits = q.head.bits_stored
            rng = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if q.head.signed else (0, (1 << bits) - 1)
        else:
            if "FloatPixelData" in r.header or "DoubleFloatPixelData" in r.header:
                float_data = True
            rng = stored_range(r.header)
        a, b = r.mlut.output_range(*rng)
        lo, hi = min(lo, a), max(hi, b)
    if float_data:
        return np.dtype(np.float32), True
    if lo >= _INT16.min and hi <= _INT16.max:
        return np.dtype(np.int16), True
    return np.dtype(np.int16), False


def _store(stored: np.ndarray, mlut: ModalityLUT, dst: np.ndarray, guaranteed: bool) -> tuple[float, float]:
    """Write modality values of one frame into ``dst``; return their min and max."""
    if stored.shape != dst.shape:
        raise PixelDataError(f"decoded frame shape {stored.shape} differs from (0028,0010)/(0028,0011) {dst.shape}")
    if dst.dtype.kind == "f":
        if mlut.lut is not None:
            dst[...] = mlut.lut.apply(stored)
        else:
            np.multiply(stored, np.float32(mlut.slope) if mlut.slope != 1.0 else np.float32(1.0),
                        out=dst, casting="unsafe")
            if mlut.intercept != 0.0:
                dst += np.float32(mlut.intercept)
        if dst.size == 0:
            return 0.0, 0.0
        return float(dst.min()), float(dst.max())
    info = np.iinfo(dst.dtype)
    if mlut.lut is not None:
        values = mlut.lut.apply(stored)
        lo, hi = int(values.min()), int(values.max())
        if lo < info.min or hi > info.max:
            raise _Overflow
        dst[...] = values
        return float(lo), float(hi)
    if stored.size == 0:
        return 0.0, 0.0
    smin, smax = int(stored.min()), int(stored.max())
    slope, intercept = int(mlut.slope), int(mlut.intercept)
    a, b = smin * slope + intercept, smax * slope + intercept
    lo, hi = min(a, b), max(a, b)
    if not guaranteed and (lo < info.min or hi > info.max):
        raise _Overflow
    if slope == 1:
        if intercept == 0 and stored.dtype == dst.dtype:
            dst[...] = stored
        else:
            np.add(stored, np.int32(intercept) if stored.itemsize <= 2 else np.int64(intercept),
                   out=dst, casting="unsafe")
    else:
        dst[...] = stored.astype(np.int32 if abs(hi) < 2**31 and abs(lo) < 2**31 else np.int64) * slope + intercept
    return float(lo), float(hi)


_FAST_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _fast_native(rec: _Record) -> np.ndarray | None:
    """Read an uncompressed little-endian frame straight from the file, or ``None``.

    Only for a file whose (7FE0,0010) was deferred by the header read, with 8
    or 16 Bits Allocated and (0028,0102) High Bit = Bits Stored - 1.
    """
    path = rec.path
    h = rec.header
    if path is None:
        return None
    meta = getattr(h, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _FAST_SYNTAXES:
        return None
    raw = h._dict.get(0x7FE00010)
    if raw is None or getattr(raw, "value", b"") is not None or not hasattr(raw, "value_tell"):
        return None
    try:
        bits_alloc = int(h.BitsAllocated)
        bits_stored = int(h.get("BitsStored") or bits_alloc)
        high = int(h.get("HighBit") if h.get("HighBit") is not None else bits_stored - 1)
    except (TypeError, ValueError, AttributeError):
        return None
    if bits_alloc not in (8, 16) or high != bits_stored - 1 or bits_stored > bits_alloc:
        return None
    signed = int(h.get("PixelRepresentation") or 0) == 1
    dtype = np.dtype(("<i" if signed else "<u") + str(bits_alloc // 8))
    rows, cols = rec.plane.rows, rec.plane.columns
    count = rows * cols
    frame = rec.frame or 0
    nbytes = count * dtype.itemsize
    if raw.length != 0xFFFFFFFF and raw.length < (frame + 1) * nbytes:
        return None
    arr = np.fromfile(path, dtype=dtype, count=count, offset=raw.value_tell + frame * nbytes)
    if arr.size != count:
        return None
    arr = arr.astype(dtype.newbyteorder("="), copy=False).reshape(rows, cols)
    if bits_stored < bits_alloc:
        shift = bits_alloc - bits_stored
        if signed:
            arr = (arr << shift) >> shift
        else:
            arr &= (1 << bits_stored) - 1
    return arr


def _encapsulated_value(rec: _Record) -> bytes | None:
    """The encapsulated (7FE0,0010) value of ``rec``'s file: from the header when it was
    read, else straight from the file at the deferred element's offset (no second parse)."""
    raw = rec.header._dict.get(0x7FE00010)
    if raw is None:
        return None
    value = getattr(raw, "value", None)
    if isinstance(value, (bytes, bytearray)):
        return value
    path = rec.path
    tell = getattr(raw, "value_tell", None)
    if value is not None or path is None or tell is None:
        return None
    length = getattr(raw, "length", 0xFFFFFFFF)
    with open(path, "rb") as f:
        f.seek(tell)
        # undefined length: to the end of the file; the frame parser stops at the
        # (FFFE,E0DD) Sequence Delimitation Item
        return f.read(-1 if length == 0xFFFFFFFF else length)


def _fast_encapsulated(rec: _Record, cache: dict, lock: threading.Lock) -> np.ndarray | None:
    """Decode a compressed greyscale frame without pydicom's runner (see
    :func:`~osirix_py.dicom.pixels.decode_encapsulated_frame`), or ``None``."""
    meta = getattr(rec.header, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not fast_decode_available(uid):
        return None
    out = _scratch(rec, cache, lock)
    if rec.frame is None:
        data = _encapsulated_value(rec)
        if data is None:
            return None
        return decode_encapsulated_frame(rec.header, 0, data, uid=uid, out=out)
    # multi-frame: split the frames once per file, shared by the tasks of that file
    key = ("frames", rec.path if rec.path is not None else id(rec.source))
    with lock:
        frames = cache.get(key)
        if frames is None:
            data = _encapsulated_value(rec)
            try:
                frames = encapsulated_frames(rec.header, data) if data is not None else []
            except Exception:  # noqa: BLE001 - the pydicom path reports it
                frames = []
            cache[key] = frames
    if rec.frame >= len(frames):
        return None
    return decode_encapsulated_frame(rec.header, rec.frame, uid=uid, frame=frames[rec.frame], out=out)


def _scratch(rec: _Record, cache: dict, lock: threading.Lock) -> np.ndarray:
    """This thread's decode buffer for ``rec``'s frame size, kept in ``cache`` for the load.

    Decoding into a reused buffer instead of a fresh 512 KiB array each time
    saves the page faults of the allocation (~0.4 ms of a 2 ms frame)."""
    try:
        itemsize = max(1, int(rec.header.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError):
        itemsize = 2
    return _scratch_buf(cache, lock, rec.plane.rows, rec.plane.columns, itemsize)


def _scratch_buf(cache: dict, lock: threading.Lock, rows: int, cols: int, itemsize: int) -> np.ndarray:
    """This thread's reused ``(rows, cols)`` unsigned buffer of *itemsize* bytes."""
    key = ("scratch", threading.get_ident(), rows, cols, itemsize)
    buf = cache.get(key)
    if buf is None:
        buf = np.empty((rows, cols), dtype=f"u{itemsize}")
        with lock:
            cache[key] = buf
    return buf


def _read_into(path: str, arr: np.ndarray, offset: int) -> bool:
    """Fill the C-contiguous *arr* with the file's bytes at *offset* (no intermediate
    copy); ``False`` when the file is shorter."""
    mv = memoryview(arr).cast("B")
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        done, total = 0, len(mv)
        while done < total:
            k = f.readinto(mv[done:])
            if not k:
                return False
            done += k
    return True


def _quick_decode(rec: _Record, dst: np.ndarray, guaranteed: bool, cache: dict,
                  lock: threading.Lock) -> tuple[float, float] | None:
    """Decode a quick record's frame into ``dst`` (a slot of the output) and return its
    value range, or ``None`` when the pydicom path must do it.

    Native pixels are read from the file straight into ``dst`` when the stored
    values are the output values (same dtype, all bits stored, identity rescale),
    else into this thread's scratch buffer and stored through :func:`_store`, as
    :func:`_fast_native` does; encapsulated frames are decoded by
    :func:`decode_encapsulated_bytes` into the scratch buffer.
    """
    q = rec.quick.head
    path = rec.path
    itemsize = q.bits_allocated // 8
    if q.encapsulated:
        from pydicom.encaps import get_frame

        with open(path, "rb", buffering=0) as f:
            f.seek(q.pixel_offset)
            data = f.read()
        try:
            frame = get_frame(data, 0, number_of_frames=1)
        except Exception:  # noqa: BLE001 - the pydicom path reports it
            return None
        buf = _scratch_buf(cache, lock, q.rows, q.columns, itemsize)
        stored = decode_encapsulated_bytes(frame, q.transfer_syntax, q.rows, q.columns,
                                           q.bits_allocated, q.bits_stored, q.signed, out=buf)
        if stored is None:
            return None
        return _store(stored, rec.mlut, dst, guaranteed)
    dtype = np.dtype(("<i" if q.signed else "<u") + str(itemsize))
    mlut = rec.mlut
    if (dst.dtype == dtype and q.bits_stored == q.bits_allocated and mlut.lut is None
            and mlut.slope == 1.0 and mlut.intercept == 0.0 and dst.flags.c_contiguous):
        if not _read_into(path, dst, q.pixel_offset):
            return None
        if dst.size == 0:
            return 0.0, 0.0
        return float(dst.min()), float(dst.max())
    arr = _scratch_buf(cache, lock, q.rows, q.columns, itemsize).view(dtype)
    if not _read_into(path, arr, q.pixel_offset):
        return None
    if q.bits_stored < q.bits_allocated:
        shift = q.bits_allocated - q.bits_stored
        if q.signed:
            np.left_shift(arr, shift, out=arr)
            np.right_shift(arr, shift, out=arr)
        else:
            np.bitwise_and(arr, (1 << q.bits_stored) - 1, out=arr)
    return _store(arr, mlut, dst, guaranteed)


def _decode_task(items: list[tuple[_Record, int]], out: np.ndarray, guaranteed: bool,
                 ranges: list[tuple[float, float] | None], cache: dict, lock: threading.Lock) -> None:
    import pydicom

    ds = None
    for rec, slot in items:
        if rec.quick is not None:
            rng = _quick_decode(rec, out[slot], guaranteed, cache, lock)
            if rng is not None:
                ranges[slot] = rng
                continue
        stored = _fast_native(rec)
        if stored is None:
            stored = _fast_encapsulated(rec, cache, lock)
        if stored is None:
            if ds is None:
                if rec.path is None:
                    ds = rec.source
                else:
                    with lock:
                        ds = cache.get(rec.path)
                    if ds is None:
                        try:
                            ds = pydicom.dcmread(rec.path)
                        except pydicom.errors.InvalidDicomError:  # as the header was read
                            ds = pydicom.dcmread(rec.path, force=True)
                        if rec.frame is not None:
                            with lock:
                                cache[rec.path] = ds
            stored = decode_frame(ds, rec.frame or 0)
        if stored.ndim != 2:
            raise PixelDataError(f"decoded frame has shape {stored.shape}; volumes are greyscale",
                                 tag="(0028,0002) Samples per Pixel")
        ranges[slot] = _store(stored, rec.mlut, out[slot], guaranteed)


def _decode_into(slots: list[tuple[_Record, int]], out: np.ndarray, guaranteed: bool, workers: int) -> list:
    """Decode every (record, slot) into ``out`` from a thread pool."""
    ranges: list[tuple[float, float] | None] = [None] * out.shape[0]
    # one task per file for single-frame files; chunks of frames for multi-frame files
    by_file: dict[Any, list[tuple[_Record, int]]] = {}
    for rec, slot in slots:
        key = rec.path if rec.path is not None else id(rec.source)
        by_file.setdefault(key, []).append((rec, slot))
    tasks: list[list[tuple[_Record, int]]] = []
    for items in by_file.values():
        if len(items) > 16:
            tasks.extend(items[i:i + 16] for i in range(0, len(items), 16))
        else:
            tasks.append(items)
    cache: dict = {}
    lock = threading.Lock()
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            _run_task(t, out, guaranteed, ranges, cache, lock)
        return ranges
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="osirix-decode") as pool:
        futures = [pool.submit(_run_task, t, out, guaranteed, ranges, cache, lock) for t in tasks]
        first_exc: BaseException | None = None
        for f in futures:
            try:
                f.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if first_exc is None:
                    first_exc = exc
                    for g in futures:
                        g.cancel()
        if first_exc is not None:
            raise first_exc
    return ranges


def _run_task(items, out, guaranteed, ranges, cache, lock) -> None:
    try:
        _decode_task(items, out, guaranteed, ranges, cache, lock)
    except _Overflow:
        raise
    except PixelDataError as exc:
        rec = items[0][0]
        raise VolumeError(f"cannot decode {rec.label}: {exc}", files=[rec.name], tag=exc.tag,
                          code="undecodable") from exc
    except VolumeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file must say which one
        rec = items[0][0]
        raise VolumeError(f"cannot read {rec.label}: {exc}", files=[rec.name], code="unreadable") from exc


# ---------------------------------------------------------------------------
# Building one volume


def _interpolate_slots(out: np.ndarray, filled: np.ndarray) -> list[int]:
    """Fill the slots of ``out`` not in ``filled`` by linear interpolation along axis 0."""
    have = np.nonzero(filled)[0]
    missing = np.nonzero(~filled)[0]
    for m in missing:
        j = np.searchsorted(have, m)
        a, b = have[j - 1], have[j]
        w = (m - a) / (b - a)
        if out.dtype.kind == "f":
            out[m] = (1 - w) * out[a] + w * out[b]
        else:
            out[m] = np.rint((1 - w) * out[a].astype(np.float32) + w * out[b].astype(np.float32)).astype(out.dtype)
    return [int(m) for m in missing]


def _resample_stack(acq: np.ndarray, acq_d: np.ndarray, out_d: np.ndarray, out: np.ndarray) -> None:
    """Linear interpolation of acquired slices (at ``acq_d``) onto positions ``out_d``."""
    for j, d in enumerate(out_d):
        k = int(np.searchsorted(acq_d, d, side="right")) - 1
        k = min(max(k, 0), len(acq_d) - 2)
        span = acq_d[k + 1] - acq_d[k]
        w = 0.0 if span == 0 else float((d - acq_d[k]) / span)
        w = min(max(w, 0.0), 1.0)
        if w < 1e-6:
            out[j] = acq[k]
        elif w > 1 - 1e-6:
            out[j] = acq[k + 1]
        elif out.dtype.kind == "f":
            out[j] = (1 - w) * acq[k] + w * acq[k + 1]
        else:
            out[j] = np.rint((1 - w) * acq[k].astype(np.float32) + w * acq[k + 1].astype(np.float32)).astype(out.dtype)


def _build_volume(group: _Group, report: LoadReport, *, irregular: str, workers: int,
                  dtype: Any, compute_suv: bool) -> Volume:
    recs = group.records
    first = recs[0]
    plane0 = first.plane
    normal = plane0.normal
    positions = [r.plane.position for r in recs]
    dist = np.array([float(p @ normal) for p in positions])
    order = np.argsort(dist, kind="stable")
    recs = [recs[i] for i in order]
    dist = dist[order]
    pos = np.array([recs[i].plane.position for i in range(len(recs))])
    n = len(recs)
    names = [r.label for r in recs]
    local = LoadReport()
    local.issues.extend(group.issues)
    analysis = analyze_spacing(dist)

    if n == 1:
        thickness = plane0.thickness or 1.0
        step = normal * thickness
        out_positions = dist.copy()
        slot_of = [0]
        n_out = 1
        local.add("single-slice", f"one image only; slice thickness {thickness:g} mm used as the slice step", "info")
    else:
        if analysis.duplicates:
            raise VolumeError("images share a position after splitting", files=[names[i] for i in analysis.duplicates],
                              tag="(0020,0032) Image Position (Patient)", code="duplicate-position")
        span = dist[-1] - dist[0]
        line = (pos[-1] - pos[0]) / span  # step per mm along the normal
        # positions must lie on one line (a straight stack, possibly tilted)
        expected = pos[0] + np.outer(dist - dist[0], line)
        residual = float(np.max(np.linalg.norm(pos - expected, axis=1)))
        if residual > max(0.05, 0.1 * min(plane0.pixel_spacing)):
            local.add("inconsistent-positions",
                      f"slice positions are not on one line (up to {residual:.3g} mm off); "
                      "the affine follows the first and last slices", "warning",
                      tag="(0020,0032) Image Position (Patient)")
        if analysis.nearly_uniform:
            step = (pos[-1] - pos[0]) / (n - 1)
            slot_of = list(range(n))
            n_out = n
            out_positions = dist.copy()
            if analysis.jitter:
                local.add("position-jitter",
                          f"slice gaps deviate from {analysis.spacing:.4g} mm by up to "
                          f"{analysis.max_deviation:.3g} mm (rounded positions?); slices kept, "
                          f"the affine uses the mean step {span / (n - 1):.4g} mm", "info",
                          tag="(0020,0032) Image Position (Patient)")
        else:
            spacing = analysis.spacing
            what = []
            if analysis.missing:
                cnt = analysis.missing_count
                where = ", ".join(f"after {names[i]}" for i, _ in analysis.missing[:5])
                what.append(f"{cnt} slice(s) missing ({where})")
            if analysis.irregular:
                gaps = analysis.gaps[analysis.irregular]
                what.append(f"uneven spacing (gaps {', '.join(f'{g:.3g}' for g in gaps[:5])} mm vs {spacing:.4g} mm)")
            desc = "; ".join(what)
            code = "missing-slices" if analysis.missing and not analysis.irregular else "uneven-spacing"
            if analysis.missing and analysis.irregular:
                local.add("missing-slices", desc, "warning", tag="(0020,0032) Image Position (Patient)")
            if irregular == "error":
                raise VolumeError(f"irregular slice spacing: {desc}", files=names, code=code,
                                  tag="(0020,0032) Image Position (Patient)")
            if irregular == "keep":
                step = (pos[-1] - pos[0]) / (n - 1)
                slot_of = list(range(n))
                n_out = n
                out_positions = dist.copy()
                local.add(code, f"{desc}; slices kept as acquired: the affine uses the mean step "
                          f"{span / (n - 1):.4g} mm and slice_positions holds the true positions",
                          "warning", tag="(0020,0032) Image Position (Patient)")
            else:
                # keep the acquired extent: the nearest spacing that divides it evenly
                n_out = max(2, int(round(span / spacing)) + 1)
                spacing = span / (n_out - 1)
                step = line * spacing
                out_positions = dist[0] + np.arange(n_out) * spacing
                on_grid = np.abs((dist - dist[0]) / spacing - np.round((dist - dist[0]) / spacing)) * spacing <= analysis.tolerance
                if on_grid.all():
                    slot_of = [int(round((d - dist[0]) / spacing)) for d in dist]
                else:
                    slot_of = []  # general resampling
                local.add(code, f"{desc}; resampled to {n_out} slices {spacing:.4g} mm apart by linear "
                          "interpolation along the stack", "warning", tag="(0020,0032) Image Position (Patient)")

    tilt = gantry_tilt_deg(plane0.orientation, step) if n > 1 else 0.0
    if abs(tilt) > TILT_THRESHOLD_DEG:
        declared = to_floats(first.header.get("GantryDetectorTilt"), 1)
        extra = f"; (0018,1120) Gantry/Detector Tilt says {declared[0]:g}°" if declared else ""
        local.add("gantry-tilt", f"gantry tilt of {tilt:.3g}° (the slice step is not along the normal): "
                  f"the affine is sheared{extra}", "warning", tag="(0018,1120) Gantry/Detector Tilt")

    # -- pixel data ----------------------------------------------------------
    if dtype is not None:
        out_dtype, guaranteed = np.dtype(dtype), True
        if out_dtype.kind in "iu":
            guaranteed = False
    else:
        out_dtype, guaranteed = _choose_dtype(recs)
    rows, cols = plane0.rows, plane0.columns
    while True:
        try:
            if slot_of and len(slot_of) == n:
                out = np.empty((n_out, rows, cols), dtype=out_dtype)
                ranges = _decode_into(list(zip(recs, slot_of)), out, guaranteed, workers)
                filled = np.zeros(n_out, bool)
                filled[slot_of] = True
                interpolated = _interpolate_slots(out, filled) if not filled.all() else []
            else:
                acq = np.empty((n, rows, cols), dtype=out_dtype)
                ranges = _decode_into(list(zip(recs, range(n))), acq, guaranteed, workers)
                out = np.empty((n_out, rows, cols), dtype=out_dtype)
                _resample_stack(acq, dist, out_positions, out)
                del acq
                interpolated = [j for j, d in enumerate(out_positions) if np.min(np.abs(dist - d)) > analysis.tolerance]
            break
        except _Overflow:
            out_dtype = np.dtype(np.int32) if out_dtype.itemsize < 4 and out_dtype.kind in "iu" else np.dtype(np.float32)
            guaranteed = out_dtype.kind == "f"
            log.info("values do not fit; reloading as %s", out_dtype)
            local.add("wide-dtype", f"values exceed int16; stored as {out_dtype}", "info")

    valid = [r for r in ranges if r is not None]
    value_range = (min(r[0] for r in valid), max(r[1] for r in valid)) if valid else None

    # -- sources ---------------------------------------------------------------
    sources: list[SliceSource] = []
    by_slot = {s: r for r, s in zip(recs, slot_of)} if slot_of else {}
    for j in range(n_out):
        rec = by_slot.get(j)
        if rec is None and not slot_of:
            k = int(np.argmin(np.abs(dist - out_positions[j])))
            if abs(dist[k] - out_positions[j]) <= analysis.tolerance:
                rec = recs[k]
        p = pos[0] + (out_positions[j] - dist[0]) * (step / max(float(step @ normal), 1e-12)) if n > 1 else pos[0]
        if rec is None:
            sources.append(SliceSource(None, None, "", None, tuple(float(x) for x in p), True))
        else:
            sources.append(SliceSource(rec.path, rec.frame, rec.sop_uid, rec.instance_number,
                                       tuple(float(x) for x in rec.plane.position)))
    if interpolated and slot_of:
        log.info("interpolated slices %s", interpolated)

    affine = np.eye(4)
    affine[:3, 0] = plane0.row_cosine * plane0.pixel_spacing[1]
    affine[:3, 1] = plane0.col_cosine * plane0.pixel_spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = pos[0]

    h = first.header
    modality = str(h.get("Modality", "") or "")
    windows = windows_from_dataset(h, first.frame)
    pad = padding_range(h)
    pad_mod = first.mlut.output_range(*pad) if pad is not None else None
    suv = None
    if compute_suv and modality.upper() == "PT":
        try:
            suv = suv_bw_factor(h)
        except SUVError as exc:
            local.add("no-suv", f"body-weight SUV unavailable: {exc}", "info", tag=exc.tag)
    units = first.mlut.units
    if any(r.mlut.units != units for r in recs):
        local.add("mixed-units", "slices declare different units", "warning", tag="(0028,1054) Rescale Type")
    report.issues.extend(local.issues[len(group.issues):])
    return Volume(
        array=out,
        affine=affine,
        modality=modality,
        units=units,
        series_instance_uid=str(h.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(h.get("FrameOfReferenceUID", "") or ""),
        window=windows[0] if windows else None,
        sources=sources,
        slice_positions=np.asarray(out_positions, dtype=np.float64),
        report=local,
        tilt_deg=float(tilt) if abs(tilt) > TILT_THRESHOLD_DEG else 0.0,
        padding=pad_mod,
        suv_factor=suv,
        header=h,
        value_range=value_range,
        description=str(h.get("SeriesDescription", "") or ""),
    )


# ---------------------------------------------------------------------------
# Public entry points


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def load_volumes(
    sources: Any,
    *,
    irregular: str = "resample",
    workers: int | None = None,
    dtype: Any = None,
    suv: bool = True,
) -> VolumeList:
    """Every volume that the images form, with a report (see the module docstring).

    ``sources``: file paths, a folder (searched recursively), pydicom
    Datasets, or a mix.  ``irregular``: "resample" (default), "keep" or
    "error" for stacks with missing slices or uneven spacing.  ``workers``:
    decoding threads (default: the number of CPUs, at most 8).  ``dtype``:
    force the output dtype (default: int16 when the values allow, else int32
    or float32).  Files that cannot be used are listed in
    ``result.report.rejected`` with the reason; stacks that cannot be built
    raise :class:`VolumeError`.
    """
    if irregular not in ("resample", "keep", "error"):
        raise ValueError("irregular must be 'resample', 'keep' or 'error'")
    report = LoadReport()
    items = _as_source_list(sources)
    if not items:
        raise VolumeError("no images given", code="empty", report=report)
    records = _read_records(items, report)
    if not records:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(report.rejected.items())[:5])
        raise VolumeError(f"none of the {len(items)} input(s) is an image with geometry ({reasons})",
                          files=list(report.rejected), code="empty", report=report)
    groups: list[_Group] = []
    for g in _group_records(records, report):
        groups.extend(_split_duplicates(g, report))
    nworkers = workers if workers is not None else _default_workers()
    volumes = VolumeList(report=report)
    for g in groups:
        vol = _build_volume(g, report, irregular=irregular, workers=nworkers, dtype=dtype, compute_suv=suv)
        volumes.append(vol)
    return volumes


def load_volume(
    sources: Any,
    *,
    irregular: str = "resample",
    workers: int | None = None,
    dtype: Any = None,
    suv: bool = True,
) -> Volume:
    """The one volume that ``sources`` form (see :func:`load_volumes` for the options).

    Raises :class:`VolumeError` when the images form no volume or several
    (mixed orientations, sizes, series, echoes ...), naming the reason; use
    :func:`load_volumes` to get them all.  The returned volume's ``report``
    also lists the files that were rejected.
    """
    vols = load_volumes(sources, irregular=irregular, workers=workers, dtype=dtype, suv=suv)
    if len(vols) != 1:
        reasons = "; ".join(i.message for i in vols.report.issues if i.code in (
            "several-series", "mixed-frame-of-reference", "mixed-size", "mixed-orientation",
            "mixed-pixel-spacing", "split"))
        shapes = ", ".join(f"{v.shape[0]}x{v.shape[1]}x{v.shape[2]}" for v in vols)
        raise VolumeError(f"the images form {len(vols)} volumes ({shapes}): {reasons}; "
                          "use load_volumes() to get each", code="several-volumes", report=vols.report)
    vol = vols[0]
    vol.report = vols.report  # everything noticed, rejected files included
    return vol
