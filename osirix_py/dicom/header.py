"""Reading a DICOM header into the values the archive indexes.

``read_header(data)`` parses the bytes of a file (Part 10, or a raw dataset
without the preamble as old modalities write) up to the pixel data, checks the
identifying UIDs and returns a :class:`Header` with one value per attribute of
the table, decoded with the file's (0008,0005) Specific Character Set.

Most files (Part 10, Explicit or Implicit VR Little Endian dataset, ASCII /
Latin-1 / UTF-8 text) are read by :func:`~osirix_py.dicom.fastheader.read_indexed`
without building a pydicom dataset; it gives the same values or declines, and
then pydicom reads the file.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field, replace
from typing import NoReturn

import pydicom
from pydicom.charset import python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from .fastheader import FastHeader, read_indexed
from .tags import ATTRIBUTES, Attribute

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

#: Attributes without which an instance cannot be placed in the hierarchy.
REQUIRED = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


class DicomFileError(ValueError):
    """A file that cannot be stored; ``reason`` says why in words."""

    def __init__(self, reason: str, *, kind: str = "invalid"):
        super().__init__(reason)
        self.reason = reason
        #: "not-dicom", "dicomdir", "invalid", "missing-attribute", "charset", "unreadable"
        self.kind = kind


@dataclass
class Header:
    """What the archive needs from one instance."""

    values: dict[str, object]
    transfer_syntax_uid: str
    character_set: str | None
    #: Part 10 bytes to store (the original bytes, or re-encoded when the
    #: source lacked the file meta information) -- or, when :attr:`pieces`
    #: is set, only their first part, through the start of the pixel data.
    data: bytes
    warnings: list[str] = field(default_factory=list)
    #: The Part 10 bytes as the pieces they were received in (joined, they
    #: are the file), when the header was read from their first part only
    #: (:func:`read_header_prefix`); None otherwise.
    pieces: tuple | None = None

    def whole(self) -> "Header":
        """This header with :attr:`data` holding all the Part 10 bytes."""
        if self.pieces is None:
            return self
        return replace(self, data=b"".join(self.pieces), pieces=None)

    @property
    def size(self) -> int:
        """The length of the Part 10 bytes."""
        if self.pieces is None:
            return len(self.data)
        return sum(len(p) for p in self.pieces)

    @property
    def sop_instance_uid(self) -> str:
        return self.values["SOPInstanceUID"]  # type: ignore[return-value]

    @property
    def study_instance_uid(self) -> str:
        return self.values["StudyInstanceUID"]  # type: ignore[return-value]

    @property
    def series_instance_uid(self) -> str:
        return self.values["SeriesInstanceUID"]  # type: ignore[return-value]


def _value_for(ds: Dataset, a: Attribute, problems: list[str]):
    elem = ds.get(a.tag)
    if elem is None or elem.value is None or elem.value == "":
        return None
    v = elem.value
    try:
        if a.is_int:
            if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
                v = v[0] if len(v) else None
            return None if v is None or v == "" else int(v)
        if a.is_person_name:
            return str(v).strip()
        if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
            return "\\".join(str(x) for x in v)
        if isinstance(v, bytes):
            return v.decode("latin-1").strip("\x00 ")
        return str(v).strip()
    except (ValueError, TypeError) as exc:
        problems.append(f"{a.tag_str} {a.keyword}: unreadable value {elem.repval} ({exc})")
        return None


def _is_probably_dicom(ds: Dataset) -> bool:
    # force=True parses anything; a real dataset has at least one of the
    # identifying UIDs.
    return any(k in ds for k in REQUIRED)


def _part10_bytes(ds: Dataset) -> bytes:
    """Re-encode a dataset read without file meta as a Part 10 file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    little = getattr(ds, "is_little_endian", True)
    implicit = getattr(ds, "is_implicit_VR", True)
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ) if little in (True, None) else "1.2.840.10008.1.2.2"
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read_header(data: bytes, *, name: str = "<data>") -> Header:
    """Parse *data* (a whole file's bytes) into a :class:`Header`.

    Raises :class:`DicomFileError` with a reason that names what is wrong.
    """
    if len(data) < 8:
        raise DicomFileError(f"{name}: not a DICOM file (only {len(data)} bytes)", kind="not-dicom")
    if len(data) >= 132 and data[128:132] == b"DICM":
        fast = read_indexed(data)
        if fast is not None:
            return _header_from_fast(fast, data, name)
    return _read_header_pydicom(data, name=name)


#: How much of a file :func:`read_header_prefix` reads its header from, at
#: first and at most (a CT's header is 2-4 KB; the rest is pixel data).
PREFIX_FIRST, PREFIX_MOST = 16 * 1024, 256 * 1024


def read_header_prefix(pieces, *, name: str = "<data>") -> Header | None:
    """The :class:`Header` of the Part 10 bytes given as *pieces* (bytes or
    views, in order), read from their first part only, the pieces kept for
    the store (:attr:`Header.pieces`): no join of the whole file.  None where
    the fast reader cannot tell the whole header from the first 256 KB
    (then :func:`read_header` the joined bytes).  Raises as
    :func:`read_header` for what it does read."""
    pieces = tuple(pieces)
    total = sum(len(p) for p in pieces)
    want = PREFIX_FIRST
    while True:
        parts, got = [], 0
        for p in pieces:
            if got >= want:
                break
            parts.append(p[:want - got] if len(p) > want - got else p)
            got += len(parts[-1])
        prefix = b"".join(parts)
        if len(prefix) < 132 or prefix[128:132] != b"DICM":
            return None
        fast = read_indexed(prefix, to_pixels=True)
        if fast is not None:
            return replace(_header_from_fast(fast, prefix, name), pieces=pieces)
        if got >= total or want >= PREFIX_MOST:
            return None
        want = min(want * 4, PREFIX_MOST)


def _read_header_pydicom(data: bytes, *, name: str = "<data>") -> Header:
    """``read_header`` by pydicom alone (every file the fast reader declines)."""
    if len(data) < 8:
        raise DicomFileError(f"{name}: not a DICOM file (only {len(data)} bytes)", kind="not-dicom")
    has_prefix = len(data) >= 132 and data[128:132] == b"DICM"
    problems: list[str] = []
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=not has_prefix)
        # Touch every indexed element now so that a truncated or corrupt
        # header fails here, not later.
        values = {a.keyword: _value_for(ds, a, problems) for a in ATTRIBUTES if not a.derived}
    except InvalidDicomError as exc:
        raise DicomFileError(f"{name}: not a DICOM file ({exc})", kind="not-dicom") from exc
    except (EOFError, OSError, struct.error) as exc:
        raise DicomFileError(f"{name}: truncated or corrupt DICOM header ({exc})") from exc
    except (LookupError, UnicodeError) as exc:
        raise DicomFileError(f"{name}: cannot decode text ({exc})", kind="charset") from exc
    except Exception as exc:  # pydicom raises many kinds on garbage
        if not has_prefix:
            raise DicomFileError(f"{name}: not a DICOM file ({exc})", kind="not-dicom") from exc
        raise DicomFileError(f"{name}: corrupt DICOM header ({exc.__class__.__name__}: {exc})") from exc
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("MediaStorageSOPClassUID") == MEDIA_STORAGE_DIRECTORY:
        _refuse_dicomdir(name)
    if not has_prefix and not _is_probably_dicom(ds):
        raise DicomFileError(f"{name}: not a DICOM file (no DICM prefix and no DICOM UIDs)",
                             kind="not-dicom")
    _check_required(values, name)
    ts = None
    if meta is not None:
        ts = meta.get("TransferSyntaxUID")
    if not has_prefix or ts is None:
        try:
            ds_full = pydicom.dcmread(io.BytesIO(data), force=True)
            data = _part10_bytes(ds_full)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on garbage
            raise DicomFileError(f"{name}: corrupt DICOM file meta or data set, cannot be "
                                 f"rewritten as a Part 10 file ({exc.__class__.__name__}: {exc})") from exc
        ts = ds_full.file_meta.TransferSyntaxUID
    values["TransferSyntaxUID"] = str(ts)
    charset = ds.get("SpecificCharacterSet")
    if charset is not None:
        terms = [charset] if isinstance(charset, str) else list(charset)
        unknown = [t for t in terms if t and t.strip() not in python_encoding]
        if unknown:
            problems.append(f"{name}: unknown (0008,0005) Specific Character Set "
                            f"{', '.join(map(repr, unknown))}; text decoded as ASCII/Latin-1")
        charset = "\\".join(terms)
    return Header(values=values, transfer_syntax_uid=str(ts), character_set=charset,
                  data=data, warnings=problems)


def _header_from_fast(fast: FastHeader, data: bytes, name: str) -> Header:
    """``read_header``'s checks and result for what the fast reader found."""
    if fast.media_storage_sop_class_uid == MEDIA_STORAGE_DIRECTORY:
        _refuse_dicomdir(name)
    values = fast.values
    _check_required(values, name)
    values["TransferSyntaxUID"] = fast.transfer_syntax_uid
    # The fast reader only accepts character sets that pydicom knows: no warning.
    return Header(values=values, transfer_syntax_uid=fast.transfer_syntax_uid,
                  character_set=fast.character_set, data=data, warnings=[])


def _refuse_dicomdir(name: str) -> NoReturn:
    raise DicomFileError(f"{name}: a DICOMDIR (media index), not an image; "
                         "import the DICOMDIR itself to import the files it lists",
                         kind="dicomdir")


def _check_required(values: dict[str, object], name: str) -> None:
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        raise DicomFileError(
            f"{name}: missing required attribute(s) "
            + ", ".join(f"{_tag_str(k)} {k}" for k in missing),
            kind="missing-attribute",
        )


def _tag_str(keyword: str) -> str:
    t = tag_for_keyword(keyword) or 0
    return f"({t >> 16:04X},{t & 0xFFFF:04X})"
