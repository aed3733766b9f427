"""The one attribute table of osirix-py.

Every piece of the program that needs to know which DICOM attributes exist at
which Query/Retrieve level reads this table: the database schema (indexed
columns), C-FIND matching and responses, the local ``find`` command and its
``--json`` output, the browser's columns and the DICOMweb / REST output.

An :class:`Attribute` names a DICOM keyword, the level it lives on, its VR and
how the database stores it.  ``derived`` attributes are not read from files but
computed by the archive (counts, ModalitiesInStudy).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pydicom.datadict import dictionary_VR, tag_for_keyword


class Level(str, Enum):
    """Query/Retrieve levels, in hierarchy order (PS3.4 C.3)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @classmethod
    def parse(cls, text: str) -> "Level":
        """Accept 'study', 'STUDY', 'instance' (an alias of IMAGE)."""
        t = (text or "").strip().upper()
        if t == "INSTANCE":
            t = "IMAGE"
        try:
            return cls(t)
        except ValueError:
            raise ValueError(
                f"unknown level {text!r}: use patient, study, series or instance"
            ) from None

    @property
    def depth(self) -> int:
        return LEVELS.index(self)

    @property
    def cli_name(self) -> str:
        return "instance" if self is Level.IMAGE else self.value.lower()


LEVELS: tuple[Level, ...] = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


@dataclass(frozen=True)
class Attribute:
    """One attribute the archive indexes.

    keyword:  DICOM keyword, e.g. ``"PatientName"``
    level:    the Q/R level whose table holds it
    column:   database column name (snake_case)
    unique:   the level's unique key (PatientID / StudyInstanceUID / ...)
    derived:  computed by the archive, not read from the file
    length:   column length for strings (DICOM VR maximum where sensible)
    browser:  shown as a column in the GUI browser by default
    """

    keyword: str
    level: Level
    column: str
    unique: bool = False
    derived: bool = False
    length: int = 64
    browser: bool = False

    @property
    def tag(self) -> int:
        t = tag_for_keyword(self.keyword)
        assert t is not None, self.keyword
        return t

    @property
    def vr(self) -> str:
        return dictionary_VR(self.tag)

    @property
    def tag_str(self) -> str:
        """The tag as ``(gggg,eeee)``."""
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"

    @property
    def is_int(self) -> bool:
        return self.vr in ("IS", "US", "UL", "SS", "SL")

    @property
    def is_person_name(self) -> bool:
        return self.vr == "PN"


def _a(keyword, level, column, **kw) -> Attribute:
    return Attribute(keyword, level, column, **kw)


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

#: The attribute table.  Order within a level is display order.
ATTRIBUTES: tuple[Attribute, ...] = (
    # --- Patient (PS3.4 C.6.1.1.2 / C.6.2.1.2) -------------------------------
    _a("PatientName", P, "patient_name", browser=True),
    _a("PatientID", P, "patient_id", unique=True, browser=True),
    _a("IssuerOfPatientID", P, "issuer_of_patient_id"),
    _a("PatientBirthDate", P, "patient_birth_date", length=8, browser=True),
    _a("PatientSex", P, "patient_sex", length=16, browser=True),
    _a("NumberOfPatientRelatedStudies", P, "num_studies", derived=True),
    _a("NumberOfPatientRelatedSeries", P, "num_series", derived=True),
    _a("NumberOfPatientRelatedInstances", P, "num_instances", derived=True),
    # --- Study ---------------------------------------------------------------
    _a("StudyInstanceUID", ST, "study_instance_uid", unique=True),
    _a("StudyDate", ST, "study_date", length=8, browser=True),
    _a("StudyTime", ST, "study_time", length=16),
    _a("AccessionNumber", ST, "accession_number", browser=True),
    _a("StudyID", ST, "study_id", length=16),
    _a("StudyDescription", ST, "study_description", browser=True),
    _a("ReferringPhysicianName", ST, "referring_physician_name"),
    _a("InstitutionName", ST, "institution_name"),
    _a("ModalitiesInStudy", ST, "modalities_in_study", derived=True, browser=True),
    _a("NumberOfStudyRelatedSeries", ST, "num_series", derived=True, browser=True),
    _a("NumberOfStudyRelatedInstances", ST, "num_instances", derived=True, browser=True),
    # --- Series --------------------------------------------------------------
    _a("SeriesInstanceUID", SE, "series_instance_uid", unique=True),
    _a("Modality", SE, "modality", length=16, browser=True),
    _a("SeriesNumber", SE, "series_number", browser=True),
    _a("SeriesDescription", SE, "series_description", browser=True),
    _a("BodyPartExamined", SE, "body_part_examined", length=16),
    _a("SeriesDate", SE, "series_date", length=8),
    _a("SeriesTime", SE, "series_time", length=16),
    _a("ProtocolName", SE, "protocol_name"),
    _a("NumberOfSeriesRelatedInstances", SE, "num_instances", derived=True, browser=True),
    # --- Image / instance ----------------------------------------------------
    _a("SOPInstanceUID", IM, "sop_instance_uid", unique=True),
    _a("SOPClassUID", IM, "sop_class_uid"),
    _a("InstanceNumber", IM, "instance_number", browser=True),
    _a("NumberOfFrames", IM, "number_of_frames"),
    _a("Rows", IM, "rows"),
    _a("Columns", IM, "columns"),
    _a("TransferSyntaxUID", IM, "transfer_syntax_uid"),
)

_BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}

#: Keys of each level that identify its parents (used to build responses).
UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


def attribute(keyword: str) -> Attribute:
    """The table row for *keyword*; ``KeyError`` with a readable message."""
    try:
        return _BY_KEYWORD[keyword]
    except KeyError:
        raise KeyError(f"{keyword!r} is not an indexed attribute") from None


def find_attribute(keyword: str) -> Attribute | None:
    return _BY_KEYWORD.get(keyword)


def attributes_at(level: Level, *, derived: bool | None = None) -> tuple[Attribute, ...]:
    """Attributes stored in *level*'s table (optionally only (non-)derived)."""
    return tuple(
        a for a in ATTRIBUTES if a.level is level and (derived is None or a.derived is derived)
    )


def attributes_up_to(level: Level) -> tuple[Attribute, ...]:
    """Attributes of *level* and of every level above it (what a response may carry).

    In the Study Root model a STUDY-level response also carries patient
    attributes; an IMAGE-level response carries study and series keys.
    """
    return tuple(a for a in ATTRIBUTES if a.level.depth <= level.depth)


def keyword_for_input(name: str) -> str:
    """Resolve a user-typed key (keyword, any case, or ``gggg,eeee``) to a keyword."""
    n = name.strip()
    if n in _BY_KEYWORD:
        return n
    low = {k.lower(): k for k in _BY_KEYWORD}
    if n.lower() in low:
        return low[n.lower()]
    hexed = n.strip("()").replace(",", "").replace(" ", "")
    if len(hexed) == 8:
        try:
            tag = int(hexed, 16)
        except ValueError:
            pass
        else:
            for a in ATTRIBUTES:
                if a.tag == tag:
                    return a.keyword
    raise KeyError(
        f"unknown query key {name!r}; known keys: " + ", ".join(sorted(_BY_KEYWORD))
    )
