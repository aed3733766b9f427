"""Image geometry: planes, orientation, slice sorting, spacing, tilt and the affine.

Everything here follows the Image Plane module (PS3.3 C.7.6.2) and works in the
DICOM patient coordinate system, LPS, in millimetres: +x towards the patient's
left, +y towards the patient's posterior, +z towards the patient's head.

For a pixel at column ``c`` and row ``r`` (both 0-based) of an image whose
(0020,0032) Image Position (Patient) is ``IPP``, whose (0020,0037) Image
Orientation (Patient) holds the row cosine ``X`` (direction of increasing
column) and the column cosine ``Y`` (direction of increasing row), and whose
(0028,0030) Pixel Spacing is ``[Δr, Δc]`` (between rows, between columns)::

    P(c, r) = IPP + c * Δc * X + r * Δr * Y                       (C.7.6.2.1.1)

A stack of such images, sorted along the slice normal ``N = X × Y``, gives the
4x4 affine that maps ``(column, row, slice, 1)`` to ``(x, y, z, 1)``::

    [ Δc·X  Δr·Y  S  IPP_0 ]
    [  0     0    0    1   ]

where ``S`` is the step between consecutive slice positions.  With a gantry
tilt ``S`` is not parallel to ``N`` (the matrix is sheared) and the affine is
still exact.

Enhanced multi-frame objects keep these attributes in functional groups:
(5200,9230) Per-frame Functional Groups Sequence, then (5200,9229) Shared
Functional Groups Sequence; :func:`functional_group` resolves them per frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "GeometryError",
    "ImagePlane",
    "OrientationLabels",
    "SpacingAnalysis",
    "affine_from_geometry",
    "analyze_spacing",
    "direction_letters",
    "frame_positions",
    "functional_group",
    "functional_value",
    "gantry_tilt_deg",
    "iop_vectors",
    "lps_to_ras",
    "orientation_labels",
    "pixel_spacing_of",
    "plane_name",
    "slice_distance",
    "slice_normal",
    "sort_along_normal",
    "to_floats",
]

#: Largest |row · column| accepted for (0020,0037) before the orientation is
#: called invalid; values up to it are re-orthogonalised.
ORTHOGONALITY_TOLERANCE = 1e-3

#: Largest deviation of a direction cosine's length from 1 that is silently
#: normalised; larger deviations are an error.
NORM_TOLERANCE = 0.05


class GeometryError(ValueError):
    """Geometry attributes that are missing or cannot describe an image plane.

    ``tag`` names the attribute at fault, e.g. ``"(0020,0037) Image Orientation
    (Patient)"``.
    """

    def __init__(self, message: str, *, tag: str | None = None):
        super().__init__(message)
        self.tag = tag


# ---------------------------------------------------------------------------
# Value helpers


def to_floats(value: Any, count: int | None = None) -> list[float] | None:
    """``value`` (DS/FD multi-value, list, number or backslash string) as floats.

    Returns ``None`` when the value is absent, empty, not numeric, not finite,
    or (when ``count`` is given) does not hold exactly ``count`` numbers.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        parts = [p for p in value.strip().split("\\")]
        if parts == [""]:
            return None
        value = parts
    if isinstance(value, (int, float)):
        items: list[Any] = [value]
    else:
        try:
            items = list(value)
        except TypeError:
            return None
    try:
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    if not out or not all(math.isfinite(v) for v in out):
        return None
    if count is not None and len(out) != count:
        return None
    return out


def functional_group(ds: Any, frame: int | None, sequence_keyword: str) -> Any:
    """The item of functional group ``sequence_keyword`` that applies to ``frame``.

    Looks in (5200,9230) Per-frame Functional Groups Sequence item ``frame``
    (0-based; ``None`` means frame 0), then in (5200,9229) Shared Functional
    Groups Sequence.  Returns the first item of the group's sequence (e.g. the
    (0020,9113) Plane Position Sequence item) or ``None``.
    """
    index = 0 if frame is None else int(frame)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and 0 <= index < len(per_frame):
        seq = per_frame[index].get(sequence_keyword)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(sequence_keyword)
        if seq:
            return seq[0]
    return None


def functional_value(
    ds: Any, frame: int | None, sequence_keyword: str, keyword: str, default: Any = None
) -> Any:
    """Attribute ``keyword`` for ``frame`` from a functional group, else the top level.

    Example: ``functional_value(ds, 3, "PlanePositionSequence",
    "ImagePositionPatient")`` reads (0020,0032) from the (0020,9113) Plane
    Position Sequence of frame 3, falling back to the shared group and then to
    the top-level attribute of a classic (single-frame) image.
    """
    item = functional_group(ds, frame, sequence_keyword)
    if item is not None:
        value = item.get(keyword)
        if value is not None and value != "":
            return value
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return value


# ---------------------------------------------------------------------------
# Orientation


def iop_vectors(iop: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row cosine, column cosine and normal (unit vectors) from (0020,0037).

    The row cosine is the direction of increasing column index, the column
    cosine that of increasing row index; the normal is row × column.  Cosines
    that are slightly off unit length or slightly non-orthogonal (as written by
    scanners that round to a few decimals) are re-orthonormalised; anything
    worse raises :class:`GeometryError`.
    """
    tag = "(0020,0037) Image Orientation (Patient)"
    values = to_floats(iop, 6)
    if values is None:
        raise GeometryError(f"{tag} must hold six numbers, got {iop!r}", tag=tag)
    row = np.array(values[:3], dtype=np.float64)
    col = np.array(values[3:], dtype=np.float64)
    nr, nc = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if nr == 0.0 or nc == 0.0:
        raise GeometryError(f"{tag} has a zero-length direction cosine: {values}", tag=tag)
    if abs(nr - 1.0) > NORM_TOLERANCE or abs(nc - 1.0) > NORM_TOLERANCE:
        raise GeometryError(f"{tag} direction cosines are not unit vectors: {values}", tag=tag)
    row /= nr
    col /= nc
    dot = float(row @ col)
    if abs(dot) > ORTHOGONALITY_TOLERANCE:
        raise GeometryError(
            f"{tag} row and column cosines are not orthogonal (dot product {dot:.4g})", tag=tag
        )
    col = col - dot * row
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    return row, col, normal


def slice_normal(iop: Any) -> np.ndarray:
    """Unit normal (row cosine × column cosine) of (0020,0037)."""
    return iop_vectors(iop)[2]


_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def direction_letters(vector: Sequence[float], threshold: float = 0.25, max_letters: int = 3) -> str:
    """Patient direction letters of an LPS vector, most significant first.

    ``(1, 0, 0)`` gives ``"L"``, ``(0, -1, 0)`` ``"A"``, ``(0, 0, 1)`` ``"H"``;
    an oblique vector gives several letters ordered by the size of its
    components, e.g. ``"LP"``.  Components whose magnitude (of the unit vector)
    is below ``threshold`` are left out, as OsiriX does; an all-zero vector
    gives ``""``.
    """
    v = np.asarray(vector, dtype=np.float64)
    n = float(np.linalg.norm(v))
    if n == 0.0 or not np.isfinite(n):
        return ""
    v = v / n
    order = np.argsort(-np.abs(v), kind="stable")
    out = []
    for axis in order[:max_letters]:
        c = float(v[axis])
        if abs(c) < threshold:
            break
        out.append(_LETTERS[axis][1 if c > 0 else 0])
    return "".join(out)


class OrientationLabels(NamedTuple):
    """Letters for the four edges of an image (where the patient is)."""

    top: str
    bottom: str
    left: str
    right: str


def orientation_labels(iop: Any, threshold: float = 0.25) -> OrientationLabels:
    """The L/R/A/P/H/F letters to draw at the image edges for (0020,0037).

    The right edge shows the direction of the row cosine (increasing column),
    the bottom edge that of the column cosine (increasing row).  An axial
    image (1\\0\\0\\0\\1\\0) gives top "A", bottom "P", left "R", right "L".
    """
    row, col, _ = iop_vectors(iop)
    return OrientationLabels(
        top=direction_letters(-col, threshold),
        bottom=direction_letters(col, threshold),
        left=direction_letters(-row, threshold),
        right=direction_letters(row, threshold),
    )


def plane_name(iop: Any, tolerance_deg: float = 10.0) -> str:
    """``"AXIAL"``, ``"CORONAL"``, ``"SAGITTAL"`` or ``"OBLIQUE"`` for (0020,0037).

    The plane is named after the patient axis its normal is within
    ``tolerance_deg`` of.
    """
    normal = np.abs(slice_normal(iop))
    axis = int(np.argmax(normal))
    if normal[axis] < math.cos(math.radians(tolerance_deg)):
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]


# ---------------------------------------------------------------------------
# Pixel spacing and planes


def pixel_spacing_of(ds: Any, frame: int | None = None) -> tuple[float, float, str] | None:
    """``(row_spacing, column_spacing, source)`` in mm, or ``None``.

    Tried in order: (0028,0030) Pixel Spacing (per frame from the (0028,9110)
    Pixel Measures Sequence of an enhanced object), (0018,1164) Imager Pixel
    Spacing (projection radiography: at the detector, not corrected for
    magnification), (0018,2010) Nominal Scanned Pixel Spacing (secondary
    capture).  ``source`` is the keyword used.
    """
    value = functional_value(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
    v = to_floats(value, 2)
    if v is not None and v[0] > 0 and v[1] > 0:
        return v[0], v[1], "PixelSpacing"
    for keyword in ("ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        v = to_floats(ds.get(keyword), 2)
        if v is not None and v[0] > 0 and v[1] > 0:
            return v[0], v[1], keyword
    return None


@dataclass(frozen=True, eq=False)
class ImagePlane:
    """The plane of a 2D image in patient space (LPS, mm), per C.7.6.2.

    ``position`` is the centre of the first transmitted pixel (row 0,
    column 0); ``row_cosine`` points along increasing column index,
    ``col_cosine`` along increasing row index; ``pixel_spacing`` is
    ``(row_spacing, column_spacing)`` in (0028,0030) order.  ``rows`` and
    ``columns`` give the image size; ``thickness`` is (0018,0050) Slice
    Thickness when known.
    """

    position: np.ndarray
    row_cosine: np.ndarray
    col_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    thickness: float | None = None

    def __post_init__(self) -> None:
        for name in ("position", "row_cosine", "col_cosine"):
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(3)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(
            self, "pixel_spacing", (float(self.pixel_spacing[0]), float(self.pixel_spacing[1]))
        )
        object.__setattr__(self, "rows", int(self.rows))
        object.__setattr__(self, "columns", int(self.columns))

    @classmethod
    def from_vectors(
        cls,
        position: Sequence[float],
        row_cosine: Sequence[float],
        col_cosine: Sequence[float],
        pixel_spacing: Sequence[float],
        rows: int,
        columns: int,
        thickness: float | None = None,
    ) -> ImagePlane:
        """A plane from vectors; the cosines are normalised and orthogonalised."""
        row, col, _ = iop_vectors(list(row_cosine) + list(col_cosine))
        return cls(np.asarray(position, float), row, col, (pixel_spacing[0], pixel_spacing[1]),
                   rows, columns, thickness)

    @classmethod
    def from_dataset(cls, ds: Any, frame: int | None = None) -> ImagePlane:
        """The plane of ``frame`` (0-based) of a dataset.

        Reads (0020,0032), (0020,0037), (0028,0030), (0028,0010) Rows,
        (0028,0011) Columns and (0018,0050), through the functional groups of an
        enhanced multi-frame object.  For a legacy multi-frame image whose
        frames are parallel planes (RT Dose (3004,000C) Grid Frame Offset
        Vector, or (0018,0088) Spacing Between Slices), the frame's position is
        derived from the first one.  Raises :class:`GeometryError` naming the
        attribute that is missing or invalid.
        """
        tag_ipp = "(0020,0032) Image Position (Patient)"
        rows, columns = ds.get("Rows"), ds.get("Columns")
        if not rows or not columns:
            raise GeometryError("(0028,0010) Rows / (0028,0011) Columns missing", tag="(0028,0010) Rows")
        iop = functional_value(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        if iop is None:
            raise GeometryError("(0020,0037) Image Orientation (Patient) missing",
                                tag="(0020,0037) Image Orientation (Patient)")
        row, col, normal = iop_vectors(iop)
        ipp: list[float] | None
        positions = frame_positions(ds) if frame not in (None, 0) else None
        if positions is not None and frame is not None and frame < len(positions):
            ipp = list(positions[frame])
        else:
            ipp = to_floats(functional_value(ds, frame, "PlanePositionSequence", "ImagePositionPatient"), 3)
        if ipp is None:
            raise GeometryError(f"{tag_ipp} missing or invalid", tag=tag_ipp)
        spacing = pixel_spacing_of(ds, frame)
        if spacing is None:
            raise GeometryError("(0028,0030) Pixel Spacing missing or invalid", tag="(0028,0030) Pixel Spacing")
        thickness = to_floats(
            functional_value(ds, frame, "PixelMeasuresSequence", "SliceThickness"), 1
        )
        return cls(np.array(ipp), row, col, (spacing[0], spacing[1]), int(rows), int(columns),
                   thickness[0] if thickness else None)

    # -- derived geometry -------------------------------------------------

    @property
    def normal(self) -> np.ndarray:
        """Unit normal, row cosine × column cosine."""
        return np.cross(self.row_cosine, self.col_cosine)

    @property
    def orientation(self) -> list[float]:
        """The six (0020,0037) values."""
        return [float(v) for v in (*self.row_cosine, *self.col_cosine)]

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping ``(column, row, 0, 1)`` to LPS ``(x, y, z, 1)``.

        The third column is the unit normal, so ``(column, row, d, 1)`` maps to
        the point ``d`` mm off the plane.
        """
        m = np.eye(4)
        m[:3, 0] = self.row_cosine * self.pixel_spacing[1]
        m[:3, 1] = self.col_cosine * self.pixel_spacing[0]
        m[:3, 2] = self.normal
        m[:3, 3] = self.position
        return m

    @property
    def center(self) -> np.ndarray:
        """Patient position of the image centre (between the middle pixels)."""
        return self.pixel_to_patient((self.columns - 1) / 2.0, (self.rows - 1) / 2.0)[0]

    def pixel_to_patient(self, column: Any, row: Any) -> np.ndarray:
        """LPS points (N x 3) of pixel coordinates (scalars or arrays; fractional allowed)."""
        c = np.atleast_1d(np.asarray(column, dtype=np.float64))
        r = np.atleast_1d(np.asarray(row, dtype=np.float64))
        c, r = np.broadcast_arrays(c, r)
        return (
            self.position[None, :]
            + c.reshape(-1, 1) * (self.pixel_spacing[1] * self.row_cosine)[None, :]
            + r.reshape(-1, 1) * (self.pixel_spacing[0] * self.col_cosine)[None, :]
        )

    def patient_to_pixel(self, points: Any) -> np.ndarray:
        """``(column, row, distance)`` (N x 3) of LPS points.

        ``distance`` is the signed distance in mm from the plane along the
        normal; the projection onto the plane gives the pixel coordinates.
        """
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3) - self.position[None, :]
        out = np.empty_like(p)
        out[:, 0] = p @ self.row_cosine / self.pixel_spacing[1]
        out[:, 1] = p @ self.col_cosine / self.pixel_spacing[0]
        out[:, 2] = p @ self.normal
        return out

    def corners(self) -> np.ndarray:
        """LPS centres of the four corner pixels: (0,0), (C-1,0), (C-1,R-1), (0,R-1)."""
        c, r = self.columns - 1, self.rows - 1
        return self.pixel_to_patient([0, c, c, 0], [0, 0, r, r])

    def labels(self, threshold: float = 0.25) -> OrientationLabels:
        """Edge letters, see :func:`orientation_labels`."""
        return orientation_labels(self.orientation, threshold)

    def is_parallel(self, other: ImagePlane, tolerance: float = 1e-4) -> bool:
        """Whether two planes have the same orientation (up to ``1 - cos`` tolerance)."""
        return (
            float(self.row_cosine @ other.row_cosine) > 1 - tolerance
            and float(self.col_cosine @ other.col_cosine) > 1 - tolerance
        )


def frame_positions(ds: Any) -> list[np.ndarray] | None:
    """(0020,0032) of every frame of a multi-frame dataset, or ``None``.

    From per-frame (0020,9113) Plane Position Sequence items when present;
    else, for frames that are parallel planes of one volume, from
    (3004,000C) Grid Frame Offset Vector (RT Dose; offsets along the normal
    from the first frame) or from (0018,0088) Spacing Between Slices.  Returns
    ``None`` when the frames' positions cannot be known.
    """
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n = 1
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) >= n:
        out = []
        for i in range(n):
            v = to_floats(functional_value(ds, i, "PlanePositionSequence", "ImagePositionPatient"), 3)
            if v is None:
                break
            out.append(np.array(v))
        else:
            return out
    ipp = to_floats(ds.get("ImagePositionPatient"), 3)
    iop = ds.get("ImageOrientationPatient")
    if ipp is None or iop is None:
        return None
    try:
        normal = slice_normal(iop)
    except GeometryError:
        return None
    offsets = to_floats(ds.get("GridFrameOffsetVector"))
    if offsets is not None and len(offsets) == n:
        base = offsets[0]
        return [np.array(ipp) + (o - base) * normal for o in offsets]
    if n > 1:
        spacing = to_floats(ds.get("SpacingBetweenSlices"), 1)
        if spacing is not None and spacing[0] != 0:
            return [np.array(ipp) + k * spacing[0] * normal for k in range(n)]
        return None
    return [np.array(ipp)]


# ---------------------------------------------------------------------------
# Stacks


def slice_distance(position: Any, normal: Any) -> float:
    """Signed distance of a slice along the normal: ``IPP · N`` (mm)."""
    return float(np.asarray(position, dtype=np.float64) @ np.asarray(normal, dtype=np.float64))


def sort_along_normal(positions: Sequence[Any], normal: Any) -> tuple[np.ndarray, np.ndarray]:
    """Order that sorts slice positions along ``normal``, and the sorted distances.

    Sorting is by ``IPP · N`` only (never by (0020,0013) Instance Number); ties
    keep their input order (stable sort).
    """
    p = np.asarray([np.asarray(x, dtype=np.float64) for x in positions]).reshape(-1, 3)
    d = p @ np.asarray(normal, dtype=np.float64)
    order = np.argsort(d, kind="stable")
    return order, d[order]


@dataclass
class SpacingAnalysis:
    """What the gaps between sorted slice positions say about a stack.

    ``spacing`` is the nominal step (the median gap, mm); ``uniform`` is true
    when every gap is within ``tolerance`` of it.  ``missing`` lists
    ``(index, count)``: after sorted slice ``index``, ``count`` slices are
    missing (the gap is a whole multiple of the spacing).  ``jitter`` lists
    the indices whose following gap is off by more than the tolerance but by
    less than ``jitter_fraction`` of the spacing (positions rounded by the
    writer, typically); ``irregular`` those whose gap is none of these.
    ``duplicates`` lists indices whose position equals the previous one.
    """

    distances: np.ndarray
    spacing: float
    uniform: bool
    tolerance: float
    gaps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    missing: list[tuple[int, int]] = field(default_factory=list)
    irregular: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    jitter: list[int] = field(default_factory=list)

    @property
    def missing_count(self) -> int:
        return sum(c for _, c in self.missing)

    @property
    def nearly_uniform(self) -> bool:
        """Uniform up to small jitter: no missing, irregular or duplicate slices."""
        return not self.missing and not self.irregular and not self.duplicates

    @property
    def max_deviation(self) -> float:
        """Largest difference between a gap and the spacing, missing slices aside (mm)."""
        if self.gaps.size == 0:
            return 0.0
        dev = [abs(float(self.gaps[i]) - self.spacing) for i in range(self.gaps.size)
               if i not in {m for m, _ in self.missing}]
        return max(dev) if dev else 0.0


def analyze_spacing(
    distances: Sequence[float], rel_tolerance: float = 0.02, abs_tolerance: float = 0.01,
    jitter_fraction: float = 0.1,
) -> SpacingAnalysis:
    """Analyse sorted slice distances (mm along the normal).

    A gap equal to the nominal spacing within ``max(abs_tolerance,
    rel_tolerance * spacing)`` is regular; a gap of ``k`` times the spacing
    (k >= 2, same tolerance) means ``k - 1`` missing slices; a gap smaller than
    ``abs_tolerance`` is a duplicate position; a gap within ``jitter_fraction``
    of the spacing is jitter; anything else is irregular.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.size < 2:
        return SpacingAnalysis(d, 0.0, True, abs_tolerance)
    gaps = np.diff(d)
    dup = [int(i) + 1 for i in np.nonzero(np.abs(gaps) < abs_tolerance)[0]]
    real = gaps[np.abs(gaps) >= abs_tolerance]
    if real.size == 0:
        return SpacingAnalysis(d, 0.0, False, abs_tolerance, gaps, duplicates=dup)
    spacing = float(np.median(real))
    tol = max(abs_tolerance, rel_tolerance * spacing)
    missing: list[tuple[int, int]] = []
    irregular: list[int] = []
    jitter: list[int] = []
    for i, g in enumerate(gaps):
        if abs(g) < abs_tolerance:
            continue
        if abs(g - spacing) <= tol:
            continue
        k = round(g / spacing)
        if k >= 2 and abs(g - k * spacing) <= tol * k:
            missing.append((i, k - 1))
        elif abs(g - spacing) <= jitter_fraction * spacing:
            jitter.append(i)
        else:
            irregular.append(i)
    uniform = not missing and not irregular and not dup and not jitter
    return SpacingAnalysis(d, spacing, uniform, tol, gaps, missing, irregular, dup, jitter)


def gantry_tilt_deg(iop: Any, step: Any) -> float:
    """Angle (degrees) between the slice step vector and the slice normal.

    ``step`` is the vector from one slice's (0020,0032) to the next.  Zero for
    an ordinary stack; for a CT acquired with (0018,1120) Gantry/Detector Tilt
    it is the tilt angle.  The sign is positive when the image plane is
    rotated from the table axis towards its column cosine, i.e. when the step
    leans towards *decreasing* row index (the convention of the synthetic
    series generator: ``column' = cos t * column - sin t * normal``).
    """
    row, col, normal = iop_vectors(iop)
    s = np.asarray(step, dtype=np.float64).reshape(3)
    n = float(np.linalg.norm(s))
    if n == 0.0:
        return 0.0
    s = s / n
    along = float(s @ normal)
    if along < 0:
        s, along = -s, -along
    across = float(s @ col)
    sideways = float(s @ row)
    magnitude = math.degrees(math.atan2(math.hypot(across, sideways), along))
    lean = -across if abs(across) >= abs(sideways) else sideways
    return magnitude if lean >= 0 else -magnitude


def affine_from_geometry(
    iop: Any, origin: Any, pixel_spacing: Sequence[float], slice_step: Any
) -> np.ndarray:
    """The 4x4 affine mapping ``(column, row, slice, 1)`` to LPS (mm).

    ``origin`` is (0020,0032) of the first slice, ``pixel_spacing`` is
    (0028,0030) ``(row_spacing, column_spacing)``, ``slice_step`` the vector
    between consecutive slice positions (or a scalar spacing along the normal).
    """
    row, col, normal = iop_vectors(iop)
    step = np.asarray(slice_step, dtype=np.float64)
    if step.ndim == 0:
        step = normal * float(step)
    m = np.eye(4)
    m[:3, 0] = row * float(pixel_spacing[1])
    m[:3, 1] = col * float(pixel_spacing[0])
    m[:3, 2] = step.reshape(3)
    m[:3, 3] = np.asarray(origin, dtype=np.float64).reshape(3)
    return m


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert an affine whose output is LPS to one whose output is RAS (NIfTI, Slicer)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)


def distances_along(points: Iterable[Any], normal: Any) -> np.ndarray:
    """``IPP · N`` for many positions."""
    n = np.asarray(normal, dtype=np.float64)
    return np.array([float(np.asarray(p, dtype=np.float64) @ n) for p in points])
