"""Synthetic DICOM CT and MR series of a phantom with known values.

Everything here is pure pydicom + numpy and deterministic: the same arguments
give byte-identical files (UIDs are derived from the arguments and a ``seed``,
dates and times are fixed unless given, noise comes from a seeded generator).

The phantom
-----------
:data:`PHANTOM` is a continuous object defined in patient coordinates (LPS, mm;
+x towards the patient's left, +y posterior, +z superior).  Outside every
region is air.  Regions are painted in order, a later one wins where they
overlap (they do not overlap in the default phantom)::

    region        shape     centre (x, y, z) mm   radius mm   extent            HU     MR signal
    ------------  --------  --------------------  ----------  ----------------  -----  ---------
    (background)  air       -                     -           -                 -1000  0
    water         cylinder  (0, 0, 0)             100         z in [-100, 100]      0  400
    bone          cylinder  (50, 0, 0)            15          z in [-100, 100]  +1000  50
    fat           cylinder  (-50, 0, 0)           15          z in [-100, 100]   -100  1200
    contrast      sphere    (0, 50, 0)            25          -                   +60  900

The cylinders' axes are parallel to z.  A point is inside a region when its
distance to the axis (or centre) is <= the radius and, for a cylinder, its
distance along the axis from the centre is <= the half length (100 mm).  The
MR signal values imitate a T1-weighted spin echo (fat bright, cortical bone
dark, enhancing sphere bright); they are stored as unsigned 16-bit values with
no rescale.

Images are point-sampled: every pixel holds the phantom's value at that
pixel's centre, whose patient position is (C.7.6.2.1.1)::

    P(r, c) = IPP + c * PixelSpacing[1] * row_cosine + r * PixelSpacing[0] * column_cosine

so an oblique, tilted or unevenly spaced series is geometrically exact, and a
test can check any pixel against :func:`hu_at` at the position the header
gives.  The geometry is rounded to what the header can hold (DS strings of at
most 16 characters) *before* sampling, so the header and the pixels agree.

Series geometry
---------------
Slice ``k`` (0-based) lies at ``IPP_k = origin + offset_k * stack_direction``
where ``offset_k = k * slice_spacing`` (or ``offsets[k]`` when an explicit list
is given) and ``stack_direction`` is the normal of the requested orientation
(row x column).  With a gantry tilt the image plane is rotated by the tilt
about the row direction (``column' = cos t * column - sin t * normal``) while
the slices still advance along the untilted normal (the table axis), as a
tilted CT acquisition does; (0018,1120) Gantry/Detector Tilt is then set.
``origin`` defaults to the position that puts the centre of the middle of the
stack on the phantom centre (0, 0, 0).  Omitted slices (``omit``) keep the
geometry and the instance numbers of the others, as if those files were lost.

API
---
- :data:`PHANTOM`, :func:`hu_at`, :func:`mr_signal_at`
- :func:`make_ct_series`, :func:`iter_ct_slices`, :func:`make_mr_series`,
  :func:`iter_mr_slices` -- in-memory datasets (file meta included)
- :func:`write_series` -- Part 10 files ``IM000001.dcm`` ... (accepts any iterable)
- :func:`generate_archive` -- several patients / studies / series for tests
- :func:`demo_study` -- one sample CT + MR study for ``osirix-py demo``
- :func:`make_uid` -- the deterministic UID scheme (``2.25.<uuid5 int>``)
"""

from __future__ import annotations

import datetime as _dt
import inspect
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)
from pydicom.multival import MultiValue
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "MANUFACTURER",
    "PHANTOM",
    "Phantom",
    "PhantomRegion",
    "demo_study",
    "generate_archive",
    "hu_at",
    "iter_ct_slices",
    "iter_mr_slices",
    "make_ct_series",
    "make_mr_series",
    "make_uid",
    "mr_signal_at",
    "pixel_positions",
    "write_series",
]

MANUFACTURER = "osirix-py synthetic"
INSTITUTION = "osirix-py Synthetic Hospital"

_UUID_NAMESPACE = uuid.UUID("6f3a1c52-8d0e-5b7a-9c41-0a5e2d7b9f13")


def make_uid(*parts: object) -> UID:
    """A deterministic, valid UID ``2.25.<int>`` from a UUID v5 of ``parts``.

    Root 2.25 is the UUID-derived arc (PS3.5 B.2), so no organisation root is
    needed and the UIDs are unique for distinct ``parts``.
    """
    name = "|".join(str(p) for p in parts)
    return UID(f"2.25.{uuid.uuid5(_UUID_NAMESPACE, name).int}")


#: (0002,0012) Implementation Class UID written into every file's meta header.
IMPLEMENTATION_CLASS_UID = make_uid("osirix-py", "synthetic", "implementation")
IMPLEMENTATION_VERSION_NAME = "OSIRIXPY_SYN1"


# ---------------------------------------------------------------------------
# The phantom


@dataclass(frozen=True)
class PhantomRegion:
    """One region of the phantom, in patient coordinates (LPS, mm).

    ``shape`` is ``"cylinder"`` (axis ``axis`` through ``center``, ``radius``,
    extending ``half_length`` either side of ``center`` along the axis) or
    ``"sphere"`` (``center``, ``radius``).  Boundaries count as inside.
    """

    name: str
    shape: str
    center: tuple[float, float, float]
    radius: float
    hu: float
    mr_signal: float
    half_length: float = 0.0
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask of the points (any broadcastable shapes) inside the region."""
        dx = x - self.center[0]
        dy = y - self.center[1]
        dz = z - self.center[2]
        r2 = self.radius * self.radius
        if self.shape == "sphere":
            return (dx * dx + dy * dy) + dz * dz <= r2
        if self.shape != "cylinder":
            raise ValueError(f"unknown phantom region shape {self.shape!r}")
        ax, ay, az = _unit(self.axis)
        if (ax, ay, az) == (0.0, 0.0, 1.0):
            inside_z = np.abs(dz) <= self.half_length
            if np.ndim(inside_z) == 0 and not inside_z:
                return np.zeros(np.broadcast_shapes(np.shape(dx), np.shape(dy)), dtype=bool)
            return (dx * dx + dy * dy <= r2) & inside_z
        t = dx * ax + dy * ay + dz * az
        radial2 = dx * dx + dy * dy + dz * dz - t * t
        return (radial2 <= r2) & (np.abs(t) <= self.half_length)

    def area_in_axial_plane(self, z: float) -> float:
        """Exact cross-section area (mm^2) in the axial plane at ``z`` (z-axis cylinders, spheres)."""
        dz = z - self.center[2]
        if self.shape == "sphere":
            return math.pi * max(self.radius**2 - dz * dz, 0.0)
        if _unit(self.axis) != (0.0, 0.0, 1.0):
            raise ValueError("area_in_axial_plane needs a cylinder along z")
        return math.pi * self.radius**2 if abs(dz) <= self.half_length else 0.0


@dataclass(frozen=True)
class Phantom:
    """A background value and regions painted in order (a later region wins)."""

    regions: tuple[PhantomRegion, ...]
    background_hu: float = -1000.0
    background_mr: float = 0.0
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def region(self, name: str) -> PhantomRegion:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, field: str = "hu") -> np.ndarray:
        """Values (``field`` "hu" or "mr") at points given as broadcastable coordinate arrays."""
        if field == "hu":
            background = self.background_hu
        elif field == "mr":
            background = self.background_mr
        else:
            raise ValueError(f"unknown field {field!r}")
        out = np.full(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), background)
        for region in self.regions:
            mask = region.contains(x, y, z)
            if mask.shape != out.shape:
                if not mask.any():
                    continue
                mask = np.broadcast_to(mask, out.shape)
            np.copyto(out, region.hu if field == "hu" else region.mr_signal, where=mask)
        return out

    def hu_at(self, points_lps: np.ndarray) -> np.ndarray:
        p = _points(points_lps)
        return self.sample(p[:, 0], p[:, 1], p[:, 2], "hu")

    def mr_signal_at(self, points_lps: np.ndarray) -> np.ndarray:
        p = _points(points_lps)
        return self.sample(p[:, 0], p[:, 1], p[:, 2], "mr")


#: The default phantom: a water cylinder in air with bone and fat rods and a
#: contrast sphere.  See the module docstring for the table.
PHANTOM = Phantom(
    regions=(
        PhantomRegion(
            "water", "cylinder", (0.0, 0.0, 0.0), 100.0, hu=0.0, mr_signal=400.0, half_length=100.0
        ),
        PhantomRegion(
            "bone", "cylinder", (50.0, 0.0, 0.0), 15.0, hu=1000.0, mr_signal=50.0, half_length=100.0
        ),
        PhantomRegion(
            "fat", "cylinder", (-50.0, 0.0, 0.0), 15.0, hu=-100.0, mr_signal=1200.0, half_length=100.0
        ),
        PhantomRegion("contrast", "sphere", (0.0, 50.0, 0.0), 25.0, hu=60.0, mr_signal=900.0),
    ),
    background_hu=-1000.0,
    background_mr=0.0,
)


def hu_at(points_lps: np.ndarray, phantom: Phantom = PHANTOM) -> np.ndarray:
    """HU of the continuous phantom at Nx3 LPS points (mm); returns shape (N,)."""
    return phantom.hu_at(points_lps)


def mr_signal_at(points_lps: np.ndarray, phantom: Phantom = PHANTOM) -> np.ndarray:
    """MR signal of the continuous phantom at Nx3 LPS points (mm); returns shape (N,)."""
    return phantom.mr_signal_at(points_lps)


def _points(points_lps: np.ndarray) -> np.ndarray:
    p = np.asarray(points_lps, dtype=np.float64)
    if p.ndim == 1 and p.shape[0] == 3:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be Nx3, got shape {p.shape}")
    return p


def _unit(v: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if n == 0.0:
        raise ValueError("zero-length direction")
    a = a / n
    return (float(a[0]), float(a[1]), float(a[2]))


# ---------------------------------------------------------------------------
# Geometry


def _ds_round(value: float) -> float:
    """``value`` as it reads back from a DS string of at most 16 characters."""
    return float(format_number_as_ds(float(value) + 0.0))


def _ds_str(value: float) -> str:
    return format_number_as_ds(float(value) + 0.0)


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    row_spacing: float  # PixelSpacing[0]: between rows (along the column cosine)
    col_spacing: float  # PixelSpacing[1]: between columns (along the row cosine)
    row_cosine: tuple[float, float, float]
    col_cosine: tuple[float, float, float]
    stack_direction: np.ndarray
    positions: list[tuple[float, float, float]]  # per slice index, DS-rounded
    slice_locations: list[float]
    spacing_between_slices: float | None
    tilt_deg: float


def _geometry(
    *,
    slices: int,
    rows: int,
    columns: int,
    pixel_spacing: Sequence[float],
    slice_spacing: float,
    origin: Sequence[float] | None,
    orientation: Sequence[float],
    tilt_deg: float,
    offsets: Sequence[float] | None,
    phantom: Phantom,
) -> _Geometry:
    if rows < 1 or columns < 1:
        raise ValueError("rows and columns must be positive")
    if len(orientation) != 6:
        raise ValueError("orientation needs six direction cosines")
    row = np.array(_unit(orientation[:3]))
    col = np.array(_unit(orientation[3:]))
    if abs(float(row @ col)) > 1e-4:
        raise ValueError("orientation row and column cosines are not orthogonal")
    col = col - (row @ col) * row
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    if tilt_deg:
        t = math.radians(tilt_deg)
        col = math.cos(t) * col - math.sin(t) * normal
    # round the cosines to what the header holds, and sample with those
    row_c = tuple(_ds_round(v) for v in row)
    col_c = tuple(_ds_round(v) for v in col)
    dr, dc = (float(pixel_spacing[0]), float(pixel_spacing[1]))
    if dr <= 0 or dc <= 0:
        raise ValueError("pixel spacing must be positive")
    dr, dc = _ds_round(dr), _ds_round(dc)

    if offsets is not None:
        offs = [float(o) for o in offsets]
        if not offs:
            raise ValueError("offsets is empty")
        spacing_between: float | None = None
    else:
        if slices < 1:
            raise ValueError("slices must be positive")
        if slice_spacing <= 0:
            raise ValueError("slice_spacing must be positive")
        offs = [k * float(slice_spacing) for k in range(slices)]
        plane_normal = np.cross(np.array(row_c), np.array(col_c))
        spacing_between = abs(float(slice_spacing) * float(plane_normal @ normal))

    if origin is None:
        mid = 0.5 * (min(offs) + max(offs))
        centre = np.asarray(phantom.center, dtype=np.float64)
        o = (
            centre
            - 0.5 * (columns - 1) * dc * np.array(row_c)
            - 0.5 * (rows - 1) * dr * np.array(col_c)
            - mid * normal
        )
    else:
        o = np.asarray(origin, dtype=np.float64)
        if o.shape != (3,):
            raise ValueError("origin must be three coordinates")
    positions = [tuple(_ds_round(v) for v in (o + off * normal)) for off in offs]
    locations = [_ds_round(float(np.asarray(p) @ normal)) for p in positions]
    return _Geometry(
        rows=rows,
        columns=columns,
        row_spacing=dr,
        col_spacing=dc,
        row_cosine=row_c,  # type: ignore[arg-type]
        col_cosine=col_c,  # type: ignore[arg-type]
        stack_direction=normal,
        positions=positions,  # type: ignore[arg-type]
        slice_locations=locations,
        spacing_between_slices=spacing_between,
        tilt_deg=float(tilt_deg),
    )


class _PlaneSampler:
    """Samples the phantom on one image plane; the in-plane grid is computed once.

    Per axis the pixel offsets from the IPP are ``r * PixelSpacing[0] * col_i +
    c * PixelSpacing[1] * row_i``; an axis along which a cosine is zero is kept
    as a broadcastable row/column vector (or a scalar), which gives the same
    numbers as the full grid and makes axial slices cheap.
    """

    def __init__(self, geom: _Geometry, phantom: Phantom, field: str):
        c = np.arange(geom.columns, dtype=np.float64)
        r = np.arange(geom.rows, dtype=np.float64)
        rc, cc = geom.row_cosine, geom.col_cosine
        self._grid: list[np.ndarray | float] = []
        for i in range(3):
            a = geom.row_spacing * cc[i]  # per row step
            b = geom.col_spacing * rc[i]  # per column step
            if a == 0.0 and b == 0.0:
                self._grid.append(0.0)
            elif a == 0.0:
                self._grid.append((c * b)[None, :])
            elif b == 0.0:
                self._grid.append((r * a)[:, None])
            else:
                self._grid.append(r[:, None] * a + c[None, :] * b)
        self._shape = (geom.rows, geom.columns)
        self._phantom = phantom
        self._field = field

    def sample(self, ipp: Sequence[float]) -> np.ndarray:
        x, y, z = (self._grid[i] + ipp[i] for i in range(3))
        out = self._phantom.sample(x, y, z, self._field)
        return np.broadcast_to(out, self._shape)


def pixel_positions(ds: Dataset) -> np.ndarray:
    """(Rows, Columns, 3) LPS positions (mm) of the pixel centres of ``ds``.

    Computed from the header exactly as the generator samples, per axis
    ``(r * PixelSpacing[0] * col_i + c * PixelSpacing[1] * row_i) + IPP_i``, so
    ``hu_at(pixel_positions(ds).reshape(-1, 3))`` reproduces the pixels bit for
    bit, boundaries included.
    """
    ipp = [float(v) for v in ds.ImagePositionPatient]
    iop = [float(v) for v in ds.ImageOrientationPatient]
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r = np.arange(int(ds.Rows), dtype=np.float64)[:, None]
    c = np.arange(int(ds.Columns), dtype=np.float64)[None, :]
    out = np.empty((int(ds.Rows), int(ds.Columns), 3))
    for i in range(3):
        out[..., i] = (r * (dr * iop[3 + i]) + c * (dc * iop[i])) + ipp[i]
    return out


# ---------------------------------------------------------------------------
# Datasets

_CHARSET_CODECS = {
    "": "ascii",
    "ISO_IR 6": "ascii",
    "ISO_IR 100": "latin_1",
    "ISO_IR 192": "utf-8",
}


def _check_charset(character_set: str, *texts: str) -> None:
    codec = _CHARSET_CODECS.get(character_set)
    if codec is None:
        raise ValueError(
            f"unsupported character set {character_set!r} (use one of {sorted(_CHARSET_CODECS)})"
        )
    for text in texts:
        try:
            text.encode(codec)
        except UnicodeEncodeError as exc:
            raise ValueError(f"{text!r} cannot be encoded in {character_set!r}") from exc


def _add_minutes(time_hhmmss: str, minutes: int) -> str:
    t = _dt.datetime.strptime(time_hhmmss[:6].ljust(6, "0"), "%H%M%S")
    return (t + _dt.timedelta(minutes=minutes)).strftime("%H%M%S")


_SUPPORTED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _base_dataset(
    *,
    modality: str,
    sop_class: str,
    patient_name: str,
    patient_id: str,
    patient_birth_date: str,
    patient_sex: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    study_date: str,
    study_time: str,
    accession: str,
    study_id: str,
    study_description: str,
    series_number: int,
    series_description: str,
    body_part: str,
    character_set: str,
    referring_physician: str,
    institution: str,
    geom: _Geometry,
    slice_thickness: float,
    window: tuple[float, float],
) -> Dataset:
    ds = Dataset()
    if character_set:
        ds.SpecificCharacterSet = character_set
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY", "M"]
    ds.SOPClassUID = sop_class
    series_time = _add_minutes(study_time, max(series_number - 1, 0))
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AcquisitionDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = study_time
    ds.SeriesTime = series_time
    ds.AcquisitionTime = series_time
    ds.ContentTime = series_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = referring_physician
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = "Phantom Generator"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = patient_birth_date
    ds.PatientSex = patient_sex
    ds.BodyPartExamined = body_part
    ds.SliceThickness = _ds_str(slice_thickness)
    if geom.spacing_between_slices is not None:
        ds.SpacingBetweenSlices = _ds_str(geom.spacing_between_slices)
    ds.ProtocolName = series_description
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds_str(v) for v in (*geom.row_cosine, *geom.col_cosine)]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geom.rows
    ds.Columns = geom.columns
    ds.PixelSpacing = [_ds_str(geom.row_spacing), _ds_str(geom.col_spacing)]
    ds.BitsAllocated = 16
    ds.WindowCenter = _ds_str(window[0])
    ds.WindowWidth = _ds_str(window[1])
    return ds


def _finish_slice(
    template: Dataset,
    *,
    geom: _Geometry,
    index: int,
    instance_number: int,
    sop_uid: str,
    pixels: np.ndarray,
    transfer_syntax: str,
) -> Dataset:
    ds = _clone(template)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [_ds_str(v) for v in geom.positions[index]]
    ds.SliceLocation = _ds_str(geom.slice_locations[index])
    ds.add_new(0x7FE00010, "OW", pixels.tobytes())  # (7FE0,0010) Pixel Data
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    return ds


def _clone(template: Dataset) -> Dataset:
    """A copy of a flat dataset with its own elements (much cheaper than deepcopy)."""
    ds = Dataset()
    for elem in template:
        value = elem.value
        if isinstance(value, (list, MultiValue)):
            value = list(value)
        ds.add_new(elem.tag, elem.VR, value)
    return ds


def _slice_plan(n: int, omit: Iterable[int], reverse: bool) -> list[tuple[int, int]]:
    omitted = {int(i) for i in omit}
    bad = sorted(i for i in omitted if not 0 <= i < n)
    if bad:
        raise ValueError(f"omit indices out of range 0..{n - 1}: {bad}")
    return [(k, (n - k) if reverse else (k + 1)) for k in range(n) if k not in omitted]


def _noise(seed: int, tag: int, index: int, shape: tuple[int, int], sigma: float) -> np.ndarray | None:
    if not sigma:
        return None
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, tag, index])
    return rng.normal(0.0, sigma, size=shape)


def iter_ct_slices(
    *,
    patient_name: str = "Phantom^CT",
    patient_id: str = "PHANTOM-001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
    slices: int = 20,
    rows: int = 512,
    columns: int = 512,
    pixel_spacing: Sequence[float] = (0.7, 0.7),
    slice_spacing: float = 2.5,
    origin: Sequence[float] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    tilt_deg: float = 0.0,
    omit: Iterable[int] = (),
    offsets: Sequence[float] | None = None,
    reverse_instance_numbers: bool = False,
    series_number: int = 1,
    study_date: str = "20240115",
    study_time: str = "093000",
    accession: str = "ACC0001",
    character_set: str = "ISO_IR 100",
    series_description: str = "Phantom CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    unsigned: bool = False,
    bits_stored: int | None = None,
    slice_thickness: float | None = None,
    noise: float = 0.0,
    window: tuple[float, float] = (40.0, 400.0),
    patient_birth_date: str = "19700101",
    patient_sex: str = "O",
    study_id: str = "1",
    study_description: str = "Synthetic phantom",
    body_part: str = "ABDOMEN",
    referring_physician: str = "Referring^Doctor",
    institution: str = INSTITUTION,
    frame_of_reference_uid: str | None = None,
    phantom: Phantom = PHANTOM,
) -> Iterator[Dataset]:
    """Yield the CT slices one by one (spatial order); see :func:`make_ct_series`."""
    if transfer_syntax not in _SUPPORTED_SYNTAXES:
        raise ValueError("transfer_syntax must be Explicit or Implicit VR Little Endian")
    _check_charset(character_set, str(patient_name), series_description, study_description, institution)
    if bits_stored is None:
        bits_stored = 12 if unsigned else 16
    if not 8 < bits_stored <= 16:
        raise ValueError("bits_stored must be in 9..16")
    geom = _geometry(
        slices=slices, rows=rows, columns=columns, pixel_spacing=pixel_spacing,
        slice_spacing=slice_spacing, origin=origin, orientation=orientation,
        tilt_deg=tilt_deg, offsets=offsets, phantom=phantom,
    )
    n = len(geom.positions)
    if study_uid is None:
        study_uid = make_uid("study", seed, patient_id, study_date, study_time, accession)
    if series_uid is None:
        series_uid = make_uid("series", study_uid, "CT", series_number, seed)
    frame_uid = frame_of_reference_uid or make_uid("frame", series_uid)
    thickness = _thickness(slice_thickness, slice_spacing, offsets, geom)
    ds0 = _base_dataset(
        modality="CT", sop_class=CTImageStorage, patient_name=patient_name, patient_id=patient_id,
        patient_birth_date=patient_birth_date, patient_sex=patient_sex, study_uid=study_uid,
        series_uid=series_uid, frame_uid=frame_uid, study_date=study_date, study_time=study_time,
        accession=accession, study_id=study_id, study_description=study_description,
        series_number=series_number, series_description=series_description, body_part=body_part,
        character_set=character_set, referring_physician=referring_physician,
        institution=institution, geom=geom, slice_thickness=thickness, window=window,
    )
    ds0.KVP = "120"
    ds0.DataCollectionDiameter = "500"
    fov = max(geom.columns * geom.col_spacing, geom.rows * geom.row_spacing)
    ds0.ReconstructionDiameter = _ds_str(fov)
    ds0.GantryDetectorTilt = _ds_str(tilt_deg)
    ds0.TableHeight = "150"
    ds0.XRayTubeCurrent = 200
    ds0.ConvolutionKernel = "STANDARD"
    ds0.BitsStored = bits_stored
    ds0.HighBit = bits_stored - 1
    if unsigned:
        intercept = -1024.0
        lo, hi, dtype = 0, (1 << bits_stored) - 1, "<u2"
        ds0.PixelRepresentation = 0
    else:
        intercept = 0.0
        lo, hi, dtype = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1, "<i2"
        ds0.PixelRepresentation = 1
    ds0.RescaleIntercept = _ds_str(intercept)
    ds0.RescaleSlope = "1"
    ds0.RescaleType = "HU"
    sampler = _PlaneSampler(geom, phantom, "hu")
    for k, instance in _slice_plan(n, omit, reverse_instance_numbers):
        hu = sampler.sample(geom.positions[k])
        extra = _noise(seed, 1, k, hu.shape, noise)
        if extra is not None:
            hu = np.rint(hu + extra)
        stored = np.clip(hu - intercept, lo, hi).astype(dtype)
        yield _finish_slice(
            ds0, geom=geom, index=k, instance_number=instance,
            sop_uid=make_uid("instance", series_uid, k), pixels=stored,
            transfer_syntax=transfer_syntax,
        )


def make_ct_series(**kwargs) -> list[Dataset]:
    """A CT series of the phantom as in-memory datasets (pixel data and file meta set).

    Keywords (all optional): ``patient_name="Phantom^CT"``, ``patient_id="PHANTOM-001"``,
    ``study_uid``/``series_uid`` (derived from the arguments and ``seed`` when None),
    ``seed=0``, ``slices=20``, ``rows=512``, ``columns=512``, ``pixel_spacing=(0.7, 0.7)``
    ((0028,0030) order: between rows, between columns), ``slice_spacing=2.5``,
    ``origin`` (IPP of slice 0; default centres the phantom), ``orientation=(1,0,0,0,1,0)``,
    ``tilt_deg=0.0``, ``omit=()`` (0-based slice indices left out), ``offsets`` (explicit
    slice offsets in mm along the normal; overrides ``slices``/``slice_spacing`` and
    drops (0018,0088) Spacing Between Slices), ``reverse_instance_numbers=False``,
    ``series_number=1``, ``study_date="20240115"``, ``study_time="093000"``,
    ``accession="ACC0001"``, ``character_set="ISO_IR 100"`` (or "ISO_IR 192"),
    ``series_description="Phantom CT"``, ``transfer_syntax=ExplicitVRLittleEndian``,
    ``unsigned=False`` (True: PixelRepresentation 0, RescaleIntercept -1024, BitsStored 12).
    Extra: ``bits_stored``, ``slice_thickness``, ``noise`` (Gaussian sigma in HU, seeded),
    ``window=(40, 400)``, ``patient_birth_date``, ``patient_sex``, ``study_id``,
    ``study_description``, ``body_part``, ``referring_physician``, ``institution``,
    ``frame_of_reference_uid``, ``phantom``.

    Slices are returned in spatial order (slice index order); InstanceNumber is
    ``k + 1`` (or ``N - k`` reversed) for slice index ``k`` of the full stack.
    """
    return list(iter_ct_slices(**kwargs))


make_ct_series.__signature__ = inspect.signature(iter_ct_slices).replace(  # type: ignore[attr-defined]
    return_annotation="list[Dataset]"
)


def iter_mr_slices(
    *,
    patient_name: str = "Phantom^MR",
    patient_id: str = "PHANTOM-001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
    slices: int = 20,
    rows: int = 256,
    columns: int = 256,
    pixel_spacing: Sequence[float] = (1.0, 1.0),
    slice_spacing: float = 5.0,
    origin: Sequence[float] | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    omit: Iterable[int] = (),
    offsets: Sequence[float] | None = None,
    reverse_instance_numbers: bool = False,
    series_number: int = 1,
    study_date: str = "20240115",
    study_time: str = "093000",
    accession: str = "ACC0001",
    character_set: str = "ISO_IR 100",
    series_description: str = "Phantom MR T1 SE",
    transfer_syntax: str = ExplicitVRLittleEndian,
    slice_thickness: float | None = None,
    noise: float = 0.0,
    window: tuple[float, float] | None = None,
    repetition_time: float = 500.0,
    echo_time: float = 15.0,
    magnetic_field_strength: float = 1.5,
    patient_birth_date: str = "19700101",
    patient_sex: str = "O",
    study_id: str = "1",
    study_description: str = "Synthetic phantom",
    body_part: str = "HEAD",
    referring_physician: str = "Referring^Doctor",
    institution: str = INSTITUTION,
    frame_of_reference_uid: str | None = None,
    phantom: Phantom = PHANTOM,
) -> Iterator[Dataset]:
    """Yield the MR slices one by one (spatial order); see :func:`make_mr_series`."""
    if transfer_syntax not in _SUPPORTED_SYNTAXES:
        raise ValueError("transfer_syntax must be Explicit or Implicit VR Little Endian")
    _check_charset(character_set, str(patient_name), series_description, study_description, institution)
    geom = _geometry(
        slices=slices, rows=rows, columns=columns, pixel_spacing=pixel_spacing,
        slice_spacing=slice_spacing, origin=origin, orientation=orientation,
        tilt_deg=0.0, offsets=offsets, phantom=phantom,
    )
    n = len(geom.positions)
    if study_uid is None:
        study_uid = make_uid("study", seed, patient_id, study_date, study_time, accession)
    if series_uid is None:
        series_uid = make_uid("series", study_uid, "MR", series_number, seed)
    frame_uid = frame_of_reference_uid or make_uid("frame", series_uid)
    thickness = _thickness(slice_thickness, slice_spacing, offsets, geom)
    if window is None:
        values = [phantom.background_mr] + [r.mr_signal for r in phantom.regions]
        lo_v, hi_v = min(values), max(values)
        window = ((lo_v + hi_v) / 2.0, max(hi_v - lo_v, 1.0))
    ds0 = _base_dataset(
        modality="MR", sop_class=MRImageStorage, patient_name=patient_name, patient_id=patient_id,
        patient_birth_date=patient_birth_date, patient_sex=patient_sex, study_uid=study_uid,
        series_uid=series_uid, frame_uid=frame_uid, study_date=study_date, study_time=study_time,
        accession=accession, study_id=study_id, study_description=study_description,
        series_number=series_number, series_description=series_description, body_part=body_part,
        character_set=character_set, referring_physician=referring_physician,
        institution=institution, geom=geom, slice_thickness=thickness, window=window,
    )
    ds0.ScanningSequence = "SE"
    ds0.SequenceVariant = "NONE"
    ds0.ScanOptions = ""
    ds0.MRAcquisitionType = "2D"
    ds0.RepetitionTime = _ds_str(repetition_time)
    ds0.EchoTime = _ds_str(echo_time)
    ds0.NumberOfAverages = "1"
    ds0.ImagingFrequency = _ds_str(42.577478 * magnetic_field_strength)
    ds0.ImagedNucleus = "1H"
    ds0.EchoNumbers = "1"
    ds0.MagneticFieldStrength = _ds_str(magnetic_field_strength)
    ds0.EchoTrainLength = 1
    ds0.FlipAngle = "90"
    ds0.BitsStored = 16
    ds0.HighBit = 15
    ds0.PixelRepresentation = 0
    sampler = _PlaneSampler(geom, phantom, "mr")
    for k, instance in _slice_plan(n, omit, reverse_instance_numbers):
        signal = sampler.sample(geom.positions[k])
        extra = _noise(seed, 2, k, signal.shape, noise)
        if extra is not None:
            # magnitude images: the noise is folded to positive values (Rician-like)
            signal = np.abs(np.rint(signal + extra))
        stored = np.clip(signal, 0, 65535).astype("<u2")
        yield _finish_slice(
            ds0, geom=geom, index=k, instance_number=instance,
            sop_uid=make_uid("instance", series_uid, k), pixels=stored,
            transfer_syntax=transfer_syntax,
        )


def make_mr_series(**kwargs) -> list[Dataset]:
    """An MR series of the phantom (MR Image Storage, unsigned 16-bit, no rescale).

    Same keywords as :func:`make_ct_series` except ``tilt_deg``, ``unsigned``,
    ``bits_stored``; defaults ``patient_name="Phantom^MR"``, 256x256,
    ``pixel_spacing=(1.0, 1.0)``, ``slice_spacing=5.0``, 20 slices,
    ``series_description="Phantom MR T1 SE"``.  Extra: ``repetition_time=500``,
    ``echo_time=15``, ``magnetic_field_strength=1.5``, ``window`` (default spans
    the phantom's signal values), ``noise`` (sigma, seeded, folded to >= 0).
    Pixel values are the regions' ``mr_signal`` values (see :data:`PHANTOM`).
    """
    return list(iter_mr_slices(**kwargs))


make_mr_series.__signature__ = inspect.signature(iter_mr_slices).replace(  # type: ignore[attr-defined]
    return_annotation="list[Dataset]"
)


def _thickness(
    slice_thickness: float | None, slice_spacing: float, offsets: Sequence[float] | None, geom: _Geometry
) -> float:
    """The given thickness, else the spacing, else (explicit offsets) the smallest gap."""
    if slice_thickness is not None:
        return float(slice_thickness)
    if offsets is None:
        return float(slice_spacing)
    s = sorted(float(np.asarray(p) @ geom.stack_direction) for p in geom.positions)
    gaps = [b - a for a, b in zip(s, s[1:]) if b - a > 1e-6]
    return min(gaps) if gaps else float(slice_spacing)


# ---------------------------------------------------------------------------
# Files


def write_series(datasets: Iterable[Dataset], folder: str | Path) -> list[Path]:
    """Write datasets as Part 10 files ``IM000001.dcm``, ``IM000002.dcm`` ... into ``folder``.

    ``datasets`` may be any iterable (e.g. :func:`iter_ct_slices`), written one at
    a time so a large series need not be held in memory.  Files are numbered in
    iteration order.  The folder is created if needed.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, ds in enumerate(datasets, start=1):
        path = out / f"IM{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


_ARCHIVE_NAMES = (
    ("Doe^John", "M", "19600312"),
    ("Müller^Jürgen", "M", "19551124"),
    ("Smith^Jane", "F", "19820607"),
)


def generate_archive(
    folder: str | Path,
    *,
    patients: int = 3,
    studies_per_patient: int = 2,
    series_per_study: int = 2,
    slices: int = 10,
    rows: int = 64,
    columns: int = 64,
    seed: int = 0,
) -> list[Path]:
    """A small deterministic archive: ``folder/<PatientID>/study<S>/series<N>/IM*.dcm``.

    Patients ``PAT001``... are named "Doe^John", "Müller^Jürgen" (Latin-1,
    ISO_IR 100), "Smith^Jane", then "Patient^004"...; every name is written
    with ISO_IR 100.  Studies alternate between CT (even global study index)
    and MR; all series of one study share its modality.  Study dates are
    2024-01-15 plus 7 days per study, times 08:00 + 1 h per study of the patient.
    Accession numbers are ``ACC<patient><study>``, e.g. ``ACC00102``.  The pixel
    spacing is chosen so the field of view covers the phantom (240 mm).
    Returns the written paths in order.
    """
    root = Path(folder)
    paths: list[Path] = []
    base_date = _dt.date(2024, 1, 15)
    study_counter = 0
    for p in range(patients):
        if p < len(_ARCHIVE_NAMES):
            name, sex, birth = _ARCHIVE_NAMES[p]
        else:
            name, sex, birth = f"Patient^{p + 1:03d}", "O", "19700101"
        patient_id = f"PAT{p + 1:03d}"
        for s in range(studies_per_patient):
            modality = "CT" if study_counter % 2 == 0 else "MR"
            study_date = (base_date + _dt.timedelta(days=7 * study_counter)).strftime("%Y%m%d")
            study_time = f"{8 + s % 12:02d}0000"
            accession = f"ACC{p + 1:03d}{s + 1:02d}"
            study_uid = make_uid("archive-study", seed, p, s)
            study_counter += 1
            for j in range(series_per_study):
                series_number = j + 1
                common = dict(
                    patient_name=name,
                    patient_id=patient_id,
                    patient_birth_date=birth,
                    patient_sex=sex,
                    study_uid=study_uid,
                    series_uid=make_uid("archive-series", seed, p, s, j),
                    seed=seed,
                    slices=slices,
                    rows=rows,
                    columns=columns,
                    pixel_spacing=(240.0 / rows, 240.0 / columns),
                    series_number=series_number,
                    study_date=study_date,
                    study_time=study_time,
                    accession=accession,
                    study_id=str(s + 1),
                    study_description=f"Synthetic {modality} study {s + 1}",
                )
                if modality == "CT":
                    datasets = iter_ct_slices(
                        **common, slice_spacing=5.0,
                        series_description=f"CT series {series_number}",
                    )
                else:
                    datasets = iter_mr_slices(
                        **common, slice_spacing=5.0,
                        series_description=f"MR series {series_number}",
                    )
                sub = root / patient_id / f"study{s + 1}" / f"series{series_number}"
                paths.extend(write_series(datasets, sub))
    return paths


def demo_study(folder: str | Path) -> list[Path]:
    """One sample study for ``osirix-py demo``, patient "Demo^Patient".

    ``folder/CT``: 60 axial CT slices, 512x512, 0.7 mm pixels, 1.5 mm apart,
    with mild noise (10 HU); ``folder/MR``: 24 MR slices, 256x256, 1 mm pixels,
    4 mm apart.  Both series share one study.  About 34 MB.
    """
    root = Path(folder)
    common = dict(
        patient_name="Demo^Patient",
        patient_id="DEMO-001",
        patient_birth_date="19750505",
        patient_sex="O",
        study_uid=make_uid("demo-study"),
        study_date="20240301",
        study_time="101500",
        accession="DEMO0001",
        study_description="Demo phantom study",
        seed=2024,
    )
    paths = write_series(
        iter_ct_slices(
            **common, slices=60, slice_spacing=1.5, series_number=1,
            series_description="CT phantom 1.5 mm", noise=10.0,
        ),
        root / "CT",
    )
    paths += write_series(
        iter_mr_slices(
            **common, slices=24, slice_spacing=4.0, series_number=2,
            series_description="MR phantom T1 SE", noise=15.0,
        ),
        root / "MR",
    )
    return paths
