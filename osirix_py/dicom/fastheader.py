"""A fast reader of the indexed attributes of a Part 10 file, without pydicom's Dataset.

Storing an instance (C-STORE, import, retrieve) needs the few dozen values of
:data:`~osirix_py.dicom.tags.ATTRIBUTES`, not a whole dataset.  pydicom's
``dcmread(stop_before_pixels=True)`` followed by the per-attribute conversion
of :func:`osirix_py.dicom.header.read_header` costs ~1.8 ms for a CT header;
:func:`read_indexed` walks the raw elements of a Part 10 file in Explicit or
Implicit VR Little Endian (the file meta group is always Explicit VR Little
Endian), keeps the raw bytes of the indexed attributes, skips everything else
by its length (sequences of undefined length by their items and delimiters),
stops at (7FE0,0010) Pixel Data (or (7FE0,0008)/(7FE0,0009), as pydicom does)
and converts the kept values exactly as pydicom and ``read_header`` would.

It is an optimisation, never a second opinion: whenever the result could
differ from the pydicom path in any way it returns ``None`` and the caller
reads the file with pydicom.  That is the case for

- no "DICM" prefix, no (0002,0010) Transfer Syntax UID, big endian, deflate,
  a private transfer syntax registered with pydicom;
- a file meta group or dataset that is not encoded as its transfer syntax
  says (pydicom switches between implicit and explicit VR with a warning),
  command set (0000,eeee) elements, an unknown VR, group 0002 elements in the
  dataset, an item delimiter at the top level;
- any malformed or truncated structure: a value running past the end of the
  data, a sequence item that is not an item, a defined-length item whose
  elements do not end exactly at its end, an undefined-length element that is
  not a sequence (pydicom searches its delimiter byte-wise), nesting deeper
  than :data:`MAX_DEPTH`;
- (0008,0005) Specific Character Set other than absent, empty, ``ISO_IR 6``,
  ``ISO_IR 100`` or ``ISO_IR 192`` (ISO 2022 code extensions, GB18030,
  several values ...), an escape character in a text value, text that is not
  valid UTF-8 under ``ISO_IR 192`` (pydicom substitutes with a warning);
- an indexed attribute whose explicit VR is not its dictionary VR, or whose
  value needs more than plain conversion: a multi-valued person name, an IS
  value that is not a plain integer of at most 15 digits (or a multi-valued
  IS with such a value), a US value that is not exactly 2 bytes, an
  undefined length;
- pydicom settings other than the defaults this module reproduces (validation
  mode RAISE, datetime conversion, IS as numpy, None for empty text ...).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from pydicom import config as _pydicom_config
from pydicom import uid as _pydicom_uid
from pydicom.datadict import dictionary_VR

from .tags import ATTRIBUTES

#: Transfer syntaxes that change how the dataset is encoded (PS3.5 A.2-A.5).
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"

#: pydicom's ``stop_before_pixels`` stops at (7FE0,0008) Float, (7FE0,0009)
#: Double Float and (7FE0,0010) Pixel Data.
_STOP = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: Item, item delimitation and sequence delimitation tags; the undefined length.
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END, _UNDEFINED = ITEM, ITEM_END, SEQ_END, UNDEFINED_LENGTH
_CHARSET_TAG = 0x00080005

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})
#: Explicit VRs with a 2-byte length.
SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                       b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                       b"US"})
#: Bytes per value of the binary number VRs (pydicom refuses other lengths).
_NUMBER_SIZE = {b"US": 2, b"SS": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"FD": 8, b"SV": 8, b"UV": 8}
#: Nesting of sequences deeper than this is refused (malformed or hostile).
MAX_DEPTH = 16

#: (0008,0005) values read here and the codec pydicom decodes text with.
_CHARSETS = {None: "latin_1", "": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1",
             "ISO_IR 192": "utf_8"}

#: An IS value that ``int()`` reads exactly as pydicom's IS does.
_PLAIN_IS = re.compile(r" *[+-]?[0-9]{1,15} *", re.ASCII)

_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length (or reserved)
_IMPLICIT = struct.Struct("<HHI")  # group, element, 4-byte length
_U32 = struct.Struct("<I")

# How each indexed value is converted (the dictionary VR decides, as in pydicom).
_PN, _TEXT, _STR, _UI, _IS, _US, _OTHER = range(7)
_KIND_OF_VR = {"PN": _PN, "LO": _TEXT, "SH": _TEXT, "CS": _STR, "DA": _STR, "TM": _STR,
               "AS": _STR, "UI": _UI, "IS": _IS, "US": _US}


class _Bad(Exception):
    """Not for the fast path: the caller reads the file with pydicom."""


@dataclass(frozen=True)
class _Wanted:
    keyword: str
    kind: int
    vr: bytes


def _wanted_table() -> dict[int, _Wanted]:
    table = {}
    for a in ATTRIBUTES:
        if a.derived or a.tag >> 16 == 0x0002:
            continue  # (0002,0010) Transfer Syntax UID comes from the file meta
        vr = a.vr
        table[a.tag] = _Wanted(a.keyword, _KIND_OF_VR.get(vr, _OTHER), vr.encode("ascii"))
    table[_CHARSET_TAG] = _Wanted("SpecificCharacterSet", _STR, b"CS")
    return table


_WANTED = _wanted_table()
#: Keywords in the order ``read_header`` builds its values.
_KEYWORDS = tuple(a.keyword for a in ATTRIBUTES if not a.derived)


@dataclass
class FastHeader:
    """What :func:`read_indexed` found (see ``read_header`` for the meaning)."""

    #: One value per non-derived attribute, keyed and ordered like ``read_header``'s;
    #: ``TransferSyntaxUID`` is None here (``read_header`` sets it from the file meta).
    values: dict[str, object]
    transfer_syntax_uid: str
    #: (0008,0005) as ``read_header`` reports it: None when absent.
    character_set: str | None
    #: (0002,0002) Media Storage SOP Class UID, None when absent.
    media_storage_sop_class_uid: str | None


def read_indexed(data, *, to_pixels: bool = False) -> FastHeader | None:
    """The indexed values of a Part 10 file's bytes, or ``None`` when the fast path
    does not apply (see the module docstring) and pydicom must read the file.

    *to_pixels*: *data* may be only the file's first part; ``None`` unless it
    reaches the pixel data (where the walk stops), so that nothing the
    header holds lies past its end."""
    if not _defaults():
        return None
    try:
        return _read(data, to_pixels)
    except (_Bad, struct.error, IndexError, ValueError, UnicodeError, RecursionError):
        return None


def _defaults() -> bool:
    """Whether pydicom's settings are those whose conversions this module reproduces."""
    c = _pydicom_config
    s = c.settings
    return (
        s.reading_validation_mode != c.RAISE
        and s.infer_sq_for_un_vr
        and c.assume_implicit_vr_switch
        and c.replace_un_with_known_vr
        and not c.datetime_conversion
        and not c.use_IS_numpy
        and not c.use_none_as_empty_text_VR_value
        and not _pydicom_uid.PrivateTransferSyntaxes
    )


def _read(buf, to_pixels: bool = False) -> FastHeader | None:
    n = len(buf)
    if n < 144 or buf[128:132] != b"DICM":
        return None
    pos, ts, media_class = _read_meta(buf, n)
    if ts == IMPLICIT_LE:
        implicit = True
    elif ts in (EXPLICIT_BE, DEFLATED_LE):
        return None
    else:
        implicit = False  # Explicit VR Little Endian and every encapsulated syntax
    if pos + 8 > n:
        return None  # no dataset
    if buf[pos] == 0 and buf[pos + 1] == 0:
        return None  # command set elements: pydicom reads them apart
    if _looks_implicit(buf, pos, n, implicit) != implicit:
        return None  # pydicom switches (with a warning)
    raw, at_pixels = _walk_top(buf, pos, n, implicit)
    if to_pixels and not at_pixels:
        return None
    return _convert(raw, ts, media_class)


def _read_meta(buf, n: int) -> tuple[int, str, str | None]:
    """Position after the file meta group, its transfer syntax and media SOP class."""
    pos = 132
    if _looks_implicit(buf, pos, n, False):
        raise _Bad("implicit VR file meta")
    ts = media_class = None
    explicit, u32 = _EXPLICIT.unpack_from, _U32.unpack_from
    first = True
    while True:
        if pos + 8 > n:
            raise _Bad("no dataset after the file meta")
        group, elem, vr, length = explicit(buf, pos)
        if group != 0x0002:
            break
        if vr in LONG_VRS:
            length, vpos = u32(buf, pos + 8)[0], pos + 12
        elif vr in SHORT_VRS:
            vpos = pos + 8
        else:
            raise _Bad("unknown VR in the file meta")
        end = vpos + length
        if length == _UNDEFINED or end > n:
            raise _Bad("file meta length")
        if first or elem == 0x0000:
            # pydicom converts the first meta element and (0002,0000) while reading:
            # a number of the wrong length raises there.
            size = _NUMBER_SIZE.get(vr)
            if size and length % size:
                raise _Bad("file meta number of the wrong length")
            first = False
        if elem == 0x0010 or elem == 0x0002:
            if vr != b"UI":
                raise _Bad("file meta VR")
            value = _ui(bytes(buf[vpos:end]))
            if elem == 0x0010:
                ts = value
            else:
                media_class = value
        pos = end
    if not ts or "\\" in ts:
        raise _Bad("no usable transfer syntax")
    return pos, ts, media_class


def _looks_implicit(buf, pos: int, n: int, assumed: bool) -> bool:
    """pydicom's test of the first element of a dataset: a VR is two capitals."""
    if pos + 6 > n:
        return assumed
    a, b = buf[pos + 4], buf[pos + 5]
    return not (0x40 < a < 0x5B and 0x40 < b < 0x5B)


def _walk_top(buf, pos: int, n: int,
              implicit: bool) -> tuple[dict[int, tuple[bytes, bytes]], bool]:
    """Raw (VR, value) of the wanted top-level elements, up to the pixel data;
    and whether the walk stopped there (not at the end of *buf*)."""
    wanted = _WANTED
    stop = _STOP
    raw: dict[int, tuple[bytes, bytes]] = {}
    while pos + 8 <= n:  # fewer than 8 bytes left: pydicom ends the dataset there
        group, elem, vr, length, vpos = _element_header(buf, pos, n, implicit)
        tag = (group << 16) | elem
        if tag in stop:
            return raw, True
        if group == 0xFFFE or group == 0x0002:
            raise _Bad("delimiter or file meta element in the dataset")
        if length == _UNDEFINED:
            if tag in wanted:
                raise _Bad("undefined length indexed attribute")
            pos = _undefined(buf, tag, vr, vpos, n, implicit, 0)
            continue
        end = vpos + length
        if end > n:
            raise _Bad("value past the end")
        w = wanted.get(tag)
        if w is not None:
            if vr is not None and vr != w.vr:
                raise _Bad("VR differs from the dictionary")
            raw[tag] = (w.vr, bytes(buf[vpos:end]))
        pos = end
    return raw, False


def _undefined(buf, tag: int, vr: bytes | None, pos: int, n: int, implicit: bool,
               depth: int) -> int:
    """Skip an undefined-length element whose value starts at *pos*; the position after it.

    Only sequences are walked (as pydicom does: explicit SQ or UN, or an implicit
    element whose dictionary VR is SQ or a private one whose value starts with an
    item); any other undefined-length value pydicom finds by a byte search for the
    delimiter, which is not reproduced here.
    """
    if vr is not None:
        if vr != b"SQ" and vr != b"UN":
            raise _Bad("undefined length non-sequence")
    else:
        try:
            is_seq = dictionary_VR(tag) == "SQ"
        except KeyError:
            is_seq = pos + 4 <= n and _U32.unpack_from(buf, pos)[0] == 0xE000FFFE
        if not is_seq:
            raise _Bad("undefined length non-sequence")
    return _skip_sequence(buf, pos, n, implicit, depth + 1)


def _skip_sequence(buf, pos: int, n: int, implicit: bool, depth: int) -> int:
    """Position after the (FFFE,E0DD) that ends the items starting at *pos*."""
    if depth > MAX_DEPTH:
        raise _Bad("nesting too deep")
    unpack = _IMPLICIT.unpack_from
    while True:
        if pos + 8 > n:
            raise _Bad("truncated sequence")
        group, elem, length = unpack(buf, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Bad("not an item")
        # pydicom reads an item of an explicit VR sequence as implicit VR when its
        # first element looks so (PS3.5 6.2.2: a UN sequence is implicit VR).
        item_implicit = implicit or _looks_implicit(buf, pos, n, implicit)
        if length == _UNDEFINED:
            pos = _skip_elements(buf, pos, None, n, item_implicit, depth)
        else:
            end = pos + length
            if end > n:
                raise _Bad("item past the end")
            if length and _skip_elements(buf, pos, end, n, item_implicit, depth) != end:
                raise _Bad("item elements overrun the item")
            pos = end


def _element_header(buf, pos: int, n: int, implicit: bool):
    """(group, element, VR or None, value length, value position) of the element
    at *pos* (the caller has checked that 8 bytes are there)."""
    if implicit:
        group, elem, length = _IMPLICIT.unpack_from(buf, pos)
        return group, elem, None, length, pos + 8
    group, elem, vr, length = _EXPLICIT.unpack_from(buf, pos)
    if vr in LONG_VRS:
        if pos + 12 > n:
            raise _Bad("truncated element header")
        return group, elem, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    if vr in SHORT_VRS:
        return group, elem, vr, length, pos + 8
    raise _Bad("unknown VR")


_SOP_CLASS_TAG, _SOP_INSTANCE_TAG = 0x00080016, 0x00080018


def peek_sop_uids(buf, implicit: bool) -> tuple[str, str] | None:
    """(SOP Class UID, SOP Instance UID) read from the start of a little
    endian data set -- *buf* may be only its first part (a C-STORE's first
    received fragment): the top-level elements are walked up to (0008,0018)
    and no further.  None when that start does not hold both (an undefined
    length or a truncated element before them, a malformed header): the
    caller then reads the whole data set.  Values as :func:`read_indexed`
    gives them."""
    n = len(buf)
    pos = 0
    found: dict[int, str] = {}
    try:
        while pos + 8 <= n:
            group, elem, _vr, length, pos = _element_header(buf, pos, n, implicit)
            tag = group << 16 | elem
            if tag > _SOP_INSTANCE_TAG or length == _UNDEFINED or pos + length > n:
                break
            if tag in (_SOP_CLASS_TAG, _SOP_INSTANCE_TAG):
                found[tag] = _ui(bytes(buf[pos:pos + length]))
            pos += length
    except (_Bad, struct.error):
        return None
    if len(found) < 2:
        return None
    return found[_SOP_CLASS_TAG], found[_SOP_INSTANCE_TAG]


def _skip_elements(buf, pos: int, end: int | None, n: int, implicit: bool, depth: int) -> int:
    """Walk the elements of an item from *pos*: to *end* (defined length) or to its
    (FFFE,E00D) delimiter (undefined length, ``end`` None); the position reached."""
    u32 = _U32.unpack_from
    while end is None or pos < end:
        if pos + 8 > n:
            raise _Bad("truncated item")
        group, elem = buf[pos] | (buf[pos + 1] << 8), buf[pos + 2] | (buf[pos + 3] << 8)
        if group == 0xFFFE:
            if elem == 0xE00D and end is None and u32(buf, pos + 4)[0] == 0:
                return pos + 8
            raise _Bad("unexpected delimiter in an item")
        _, _, vr, length, vpos = _element_header(buf, pos, n, implicit)
        if length == _UNDEFINED:
            pos = _undefined(buf, (group << 16) | elem, vr, vpos, n, implicit, depth)
        else:
            pos = vpos + length
            if pos > n:
                raise _Bad("value past the end")
    return pos


# --- value conversion: pydicom's converters followed by read_header's _value_for ---------

def _ui(raw: bytes) -> str:
    """A UI value as pydicom's convert_UI + UID give it (several joined by backslash)."""
    parts = raw.decode("latin_1").rstrip("\x00 ").split("\\")
    return "\\".join(p.strip() for p in parts)


def _convert(raw: dict[int, tuple[bytes, bytes]], ts: str, media_class: str | None) -> FastHeader:
    cs_raw = raw.pop(_CHARSET_TAG, None)
    if cs_raw is None:
        charset = None
    else:
        charset = cs_raw[1].decode("latin_1").rstrip(" \x00")
        if "\\" in charset:
            raise _Bad("multi-valued character set")
    codec = _CHARSETS.get(charset)
    if codec is None:
        raise _Bad("character set not read here")
    found = {}
    wanted = _WANTED
    for tag, (_vr, value) in raw.items():
        w = wanted[tag]
        found[w.keyword] = _value(w.kind, value, codec) if value else None
    values = {k: found.get(k) for k in _KEYWORDS}
    return FastHeader(values, ts, charset, media_class)


def _value(kind: int, raw: bytes, codec: str):
    """The value ``_value_for`` gives for *raw* (non-empty) bytes of the *kind*."""
    if kind == _UI:
        parts = raw.decode("latin_1").rstrip("\x00 ").split("\\")
        if len(parts) == 1:
            v = parts[0].strip()
            return v or None
        return "\\".join(p.strip() for p in parts)
    if kind == _STR:
        parts = raw.decode("latin_1").rstrip(" \x00").split("\\")
        if len(parts) == 1:
            v = parts[0]
            return None if v == "" else v.strip()
        return "\\".join(parts)
    if kind == _TEXT:
        if 0x1B in raw:
            raise _Bad("escape sequence")
        parts = [p.rstrip("\x00 ") for p in raw.decode(codec).split("\\")]
        if len(parts) == 1:
            v = parts[0]
            return None if v == "" else v.strip()
        return "\\".join(parts)
    if kind == _PN:
        raw = raw.rstrip(b"\x00 ")
        if 0x1B in raw:
            raise _Bad("escape sequence")
        v = raw.decode(codec)
        if "\\" in v:
            raise _Bad("multi-valued person name")
        # PersonName drops empty trailing component groups ("A^B==" -> "A^B").
        v = v.rstrip("=")
        return None if v == "" else v.strip()
    if kind == _IS:
        parts = raw.decode("latin_1").rstrip(" \x00").split("\\")
        match = _PLAIN_IS.fullmatch
        for p in parts:
            if p and not match(p):
                raise _Bad("IS value not a plain integer")
        return int(parts[0]) if parts[0] else None
    if kind == _US:
        if len(raw) != 2:
            raise _Bad("US value not one value")
        return raw[0] | (raw[1] << 8)
    raise _Bad("VR not read here")
