"""A minimal reader of native little-endian image files: the header up to (7FE0,0010).

pydicom's ``dcmread(..., stop_before_pixels=True)`` builds a full
:class:`~pydicom.dataset.Dataset` of every element before the pixel data
(~1 ms for a CT header); rendering one frame needs a dozen attributes and the
offset of (7FE0,0010) Pixel Data.  :func:`read_native` walks the elements of a
Part 10 file in Explicit or Implicit VR Little Endian without converting any
value, skips sequences by their lengths (or their delimiters), and returns a
:class:`NativeImage`: the image geometry, the byte offset of the pixel data,
and the raw values of the attributes that the display pipeline reads
(:data:`DISPLAY_TAGS` and all of group 0028), so that
:meth:`NativeImage.dataset` gives a small pydicom dataset to build
:class:`~osirix_py.dicom.pixels.DisplayPipeline` from.

:func:`read_header` / :func:`read_header_file` are the same walk for volume
loading: they keep group 0028 and the tags asked for (geometry, UIDs ...) as
raw values with pydicom-equivalent accessors, accept encapsulated pixel data of
the transfer syntaxes the caller names (checking that its items end with the
Sequence Delimitation Item, as pydicom finds it), and return a
:class:`QuickHeader`.

Anything they do not cover returns ``None`` and the caller reads the file
with pydicom: no "DICM" preamble, another transfer syntax (big endian,
deflate, encapsulated), colour, (0028,0100) Bits Allocated other than 8 or 16,
a sequence among the display attributes (Modality LUT, VOI LUT, palette
tables), enhanced objects' functional groups, float pixel data, a pixel data
length that does not hold every frame, or anything malformed.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any

from .fastheader import ITEM, ITEM_END, LONG_VRS, SEQ_END, SHORT_VRS, UNDEFINED_LENGTH

#: Transfer syntaxes read here: Implicit VR LE, Explicit VR LE.
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

#: (0028,xxxx) is always kept.  These others are kept too (what
#: :meth:`DisplayPipeline.from_dataset` and the web renderer read outside group 0028):
#: (0008,0005) Specific Character Set, (0008,0060) Modality, (0018,1164) Imager
#: Pixel Spacing, (2050,0020) Presentation LUT Shape, (0054,1001) Units,
#: (3004,0002) Dose Units, (3004,000E) Dose Grid Scaling.
DISPLAY_TAGS = frozenset({0x00080005, 0x00080060, 0x00181164, 0x20500020, 0x00541001,
                          0x30040002, 0x3004000E})

#: Top-level attributes whose presence means "not for the quick path":
#: (5200,9229) Shared and (5200,9230) Per-frame Functional Groups Sequence
#: (per-frame rescale and windows), (7FE0,0008) Float and (7FE0,0009) Double
#: Float Pixel Data.
_UNSUPPORTED = frozenset({0x52009229, 0x52009230, 0x7FE00008, 0x7FE00009})

_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQ_END = ITEM, ITEM_END, SEQ_END
_UNDEFINED = UNDEFINED_LENGTH
#: Explicit VRs with a 2-byte reserved field and a 4-byte length, and with a 2-byte length.
_LONG_VRS, _SHORT_VRS = LONG_VRS, SHORT_VRS
#: Nesting deeper than this is refused (a malformed or hostile file).
_MAX_DEPTH = 16


class _Bad(Exception):
    """Malformed or unsupported: the caller falls back to pydicom."""


@dataclass(frozen=True, eq=False)
class NativeImage:
    """What rendering a frame of a native greyscale file needs, read without pydicom."""

    transfer_syntax: str
    rows: int
    columns: int
    bits_allocated: int  # 8 or 16
    bits_stored: int
    signed: bool  # (0028,0103) Pixel Representation == 1
    frames: int  # (0028,0008) Number of Frames, 1 when absent or invalid
    photometric: str  # MONOCHROME1 or MONOCHROME2
    pixel_offset: int  # file offset of the first byte of (7FE0,0010)'s value
    pixel_length: int
    #: ((tag, VR or None for implicit VR, raw value bytes), ...) of the display attributes,
    #: in file order: hashable, and the key under which pipelines can be shared.
    elements: tuple[tuple[int, str | None, bytes], ...]

    @property
    def implicit(self) -> bool:
        return self.transfer_syntax == IMPLICIT_LE

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * (self.bits_allocated // 8)

    def frame_offset(self, index: int) -> int:
        return self.pixel_offset + index * self.frame_bytes

    def dataset(self) -> Any:
        """A pydicom dataset of the display attributes only (values converted lazily)."""
        from pydicom.dataelem import RawDataElement
        from pydicom.dataset import Dataset
        from pydicom.tag import Tag

        implicit = self.implicit
        raw = {}
        for tag, vr, value in self.elements:
            t = Tag(tag)
            raw[t] = RawDataElement(t, vr, len(value), value, 0, implicit, True)
        return Dataset(raw)


def read_native(buf: bytes | bytearray | memoryview) -> NativeImage | None:
    """The :class:`NativeImage` of a Part 10 file's bytes (at least up to the pixel
    data; the whole file for the length check), or ``None`` when the quick path does
    not apply (see the module docstring)."""
    try:
        walked = _walk(buf, DISPLAY_TAGS, frozenset(), True)
        if walked is None:
            return None
        ts, _implicit, offset, length, elements, values = walked
        if length is None:
            return None
        return _image(ts, offset, length, len(buf), elements, values)
    except (_Bad, struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True, eq=False)
class QuickHeader:
    """A greyscale image file's pixel description and a few raw attribute values,
    read without pydicom by :func:`read_header` / :func:`read_header_file`.

    ``values`` maps tags to their raw value bytes: all of group 0028 and the
    tags asked for.  The accessors (:meth:`text`, :meth:`floats`, :meth:`integer`,
    :meth:`us`) convert a value the way pydicom does and raise
    :class:`ValueError` for anything they are not sure of (several values where
    one is expected, characters outside printable ASCII, numbers that do not
    parse): the caller then reads the file with pydicom.
    """

    transfer_syntax: str
    implicit: bool
    rows: int
    columns: int
    bits_allocated: int  # 8 or 16
    bits_stored: int
    high_bit: int  # (0028,0102), Bits Stored - 1 when absent
    signed: bool  # (0028,0103) Pixel Representation == 1
    frames: int  # (0028,0008) Number of Frames, 1 when absent
    photometric: str  # MONOCHROME1 or MONOCHROME2
    pixel_offset: int  # file offset of the first byte of (7FE0,0010)'s value
    #: (7FE0,0010)'s length; ``None`` for encapsulated pixel data (undefined length)
    pixel_length: int | None
    file_size: int
    values: dict[int, bytes]

    @property
    def encapsulated(self) -> bool:
        return self.pixel_length is None

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * (self.bits_allocated // 8)

    def __contains__(self, tag: int) -> bool:
        return tag in self.values

    def text(self, tag: int, default: str = "") -> str:
        """A single string value without its trailing spaces and NULs (pydicom's
        reading of CS, UI, LO, SH ...); *default* when absent or empty."""
        v = self.values.get(tag)
        if not v:
            return default
        text = v.decode("ascii").rstrip("\x00 ")
        if "\\" in text or not text.isprintable():
            raise ValueError("not one plain value")
        return text or default

    def _number_text(self, tag: int) -> str | None:
        """The text of a DS/IS value, trimmed (``None`` when absent or empty)."""
        v = self.values.get(tag)
        if not v:
            return None
        return v.decode("ascii").strip().rstrip("\x00 ") or None

    def floats(self, tag: int) -> list[float] | None:
        """The numbers of a DS value (``None`` when absent or empty)."""
        text = self._number_text(tag)
        if text is None:
            return None
        out = [float(x) for x in text.split("\\")]
        if not all(math.isfinite(x) for x in out):
            raise ValueError("not finite")
        return out

    def integer(self, tag: int) -> int | None:
        """An IS value (``None`` when absent or empty)."""
        text = self._number_text(tag)
        if text is None:
            return None
        if not (text[1:] if text[0] in "+-" else text).isdigit():
            raise ValueError("not a plain integer")
        return int(text)

    def us(self, tag: int, default: int | None = None) -> int | None:
        """A US value (the first one), *default* when absent or empty."""
        return _us(self.values, tag, default)


def read_header(buf: bytes | bytearray | memoryview, tags: frozenset[int] = frozenset(), *,
                encapsulated: frozenset[str] = frozenset(), file_size: int | None = None,
                ) -> QuickHeader | None:
    """The :class:`QuickHeader` of a greyscale single- or multi-frame file's bytes,
    keeping the raw values of group 0028 and of *tags*, or ``None`` when the quick
    path does not apply (see the module docstring).

    Native little-endian pixel data is always accepted; encapsulated pixel data
    for the transfer syntaxes in *encapsulated*.  *file_size*, when the bytes are
    only a prefix of the file, is the file's size: the pixel data length is
    checked against it, and :class:`ShortBuffer` is raised when the header does
    not end within the bytes.
    """
    complete = file_size is None or file_size <= len(buf)
    size = len(buf) if file_size is None else file_size
    try:
        walked = _walk(buf, tags, encapsulated, complete)
    except _Short:
        if complete:
            return None
        raise ShortBuffer from None
    except (_Bad, struct.error, IndexError, ValueError, UnicodeDecodeError):
        if not complete:
            raise ShortBuffer from None
        return None
    if walked is None:
        return None
    ts, implicit, offset, length, _elements, values = walked
    if length is None and complete and not _items_end(lambda at: bytes(buf[at:at + 8]), offset, size):
        return None
    try:
        return _header(ts, implicit, offset, length, size, values)
    except (_Bad, ValueError, UnicodeDecodeError):
        return None


class ShortBuffer(Exception):
    """:func:`read_header` needs more of the file than the bytes given."""


def read_header_file(path: str, tags: frozenset[int] = frozenset(), *,
                     encapsulated: frozenset[str] = frozenset(), chunk: int = 65536,
                     ) -> QuickHeader | None:
    """:func:`read_header` of a file: its first *chunk* bytes, the whole file when
    the header does not end within them.  ``None`` when the quick path does not
    apply or the file cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        buf = os.pread(fd, min(chunk, size), 0)
        try:
            q = read_header(buf, tags, encapsulated=encapsulated, file_size=size)
        except ShortBuffer:
            pass
        else:
            if q is None or not q.encapsulated or size <= len(buf):
                return q
            head = len(buf)

            def read8(at: int) -> bytes:
                return bytes(buf[at:at + 8]) if at + 8 <= head else os.pread(fd, 8, at)

            return q if _items_end(read8, q.pixel_offset, size) else None
        buf = os.pread(fd, size, 0)
        if len(buf) != size:
            return None
        return read_header(buf, tags, encapsulated=encapsulated)
    except OSError:
        return None
    finally:
        os.close(fd)


_ITEM_TAG = b"\xfe\xff\x00\xe0"
_SEQ_END_TAG = b"\xfe\xff\xdd\xe0"


def _items_end(read8, pos: int, size: int) -> bool:
    """Whether the items of encapsulated pixel data starting at *pos* end with a
    (FFFE,E0DD) Sequence Delimitation Item inside the file, found by following the
    items' lengths as pydicom does first (its byte-by-byte scan for a delimiter,
    when this fails, is left to pydicom itself)."""
    while True:
        if pos + 8 > size:
            return False
        head = read8(pos)
        if len(head) < 8:
            return False
        if head[:4] == _SEQ_END_TAG:
            return True
        if head[:4] != _ITEM_TAG:
            return False
        pos += 8 + _U32.unpack_from(head, 4)[0]


def _header(ts: str, implicit: bool, offset: int, length: int | None, size: int,
            values: dict[int, bytes]) -> QuickHeader | None:
    layout = _layout(values, offset, length, size)
    if layout is None:
        return None
    rows, cols, bits, stored, rep, frames, pi = layout
    high = _us(values, 0x00280102, stored - 1)
    return QuickHeader(ts, implicit, rows, cols, bits, stored, high, rep == 1, frames, pi,
                       offset, length, size, values)


_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length (or reserved)
_IMPLICIT = struct.Struct("<HHI")  # group, element, 4-byte length
_U32 = struct.Struct("<I")


class _Short(_Bad):
    """The bytes end before the element being read does: more of the file is needed."""


def _walk(buf, extra: frozenset, encapsulated: frozenset, complete: bool):
    """Walk a Part 10 file's elements up to (7FE0,0010).

    Returns ``(transfer syntax, implicit, pixel value offset, pixel length or None
    when undefined (encapsulated), elements, values)`` of the kept attributes
    (all of group 0028 and the tags in *extra*), or ``None`` when the quick path
    does not apply.  *encapsulated* holds the (explicit VR little endian)
    transfer syntaxes whose encapsulated pixel data is accepted.  With
    *complete* False the bytes are a prefix of the file and running off their end
    raises :class:`_Short`.
    """
    n = len(buf)
    if n < 144 or buf[128:132] != b"DICM":
        if not complete and n < 144:
            raise _Short("preamble")
        return None
    explicit, implicit_, u32 = _EXPLICIT.unpack_from, _IMPLICIT.unpack_from, _U32.unpack_from
    long_vrs, short_vrs = _LONG_VRS, _SHORT_VRS
    # File meta: explicit VR little endian, group 0002 (read like pydicom: until the group ends).
    pos = 132
    ts = None
    while True:
        if pos + 8 > n:
            if not complete:
                raise _Short("file meta")
            break
        group, elem, vr, length = explicit(buf, pos)
        if group != 0x0002:
            break
        if vr in long_vrs:
            if pos + 12 > n and not complete:
                raise _Short("file meta")
            length, pos = u32(buf, pos + 8)[0], pos + 12
        elif vr in short_vrs:
            pos += 8
        else:
            return None
        if length == _UNDEFINED:
            return None
        if pos + length > n:
            if not complete:
                raise _Short("file meta")
            return None
        if elem == 0x0010:
            ts = bytes(buf[pos:pos + length]).decode("ascii").strip("\x00 ")
        pos += length
    if ts == IMPLICIT_LE:
        implicit = True
    elif ts == EXPLICIT_LE or (ts is not None and ts in encapsulated):
        implicit = False
    else:
        return None
    elements: list[tuple[int, str | None, bytes]] = []
    values: dict[int, bytes] = {}
    unsupported = _UNSUPPORTED
    while True:
        if pos + 12 > n:
            if not complete:
                raise _Short("element")
            if pos + 8 > n:
                return None  # no pixel data
        if implicit:
            group, elem, length = implicit_(buf, pos)
            vr = None
            vpos = pos + 8
        else:
            group, elem, vrb, length = explicit(buf, pos)
            if vrb in long_vrs:
                length, vpos = u32(buf, pos + 8)[0], pos + 12
            elif vrb in short_vrs:
                vpos = pos + 8
            else:
                return None  # not explicit VR after all, or garbage: pydicom copes
            vr = vrb.decode("ascii")
        tag = (group << 16) | elem
        if tag == _PIXEL_DATA:
            if ts in encapsulated:
                if length != _UNDEFINED or vr != "OB":
                    return None
                return ts, implicit, vpos, None, elements, values
            if length == _UNDEFINED or (vr is not None and vr not in ("OB", "OW")):
                return None
            return ts, implicit, vpos, length, elements, values
        if tag in unsupported or tag > _PIXEL_DATA:
            return None
        keep = group == 0x0028 or tag in extra
        if length == _UNDEFINED:
            if keep:
                return None  # a sequence among the kept attributes
            pos = _skip_undefined(buf, vpos, implicit, 0)
            continue
        end = vpos + length
        if end > n:
            if not complete:
                raise _Short("value")
            return None
        if keep:
            if vr == "SQ" or vr == "UN" or (implicit and _is_sequence(tag)):
                return None
            value = bytes(buf[vpos:end])
            elements.append((tag, vr, value))
            values[tag] = value
        pos = end


def _is_sequence(tag: int) -> bool:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _skip_undefined(buf, pos: int, implicit: bool, depth: int) -> int:
    """Position after the (FFFE,E0DD) that ends an undefined-length sequence's items at *pos*.

    An undefined-length UN is a sequence in implicit VR (PS3.5 6.2.2); its items
    are read as implicit VR too.
    """
    if depth > _MAX_DEPTH:
        raise _Bad("nesting too deep")
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _Short("truncated sequence")
        group, elem, length = _IMPLICIT.unpack_from(buf, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Bad("not an item")
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _skip_item(buf, pos, implicit, depth + 1)


def _skip_item(buf, pos: int, implicit: bool, depth: int) -> int:
    """Position after the (FFFE,E00D) that ends an undefined-length item at *pos*."""
    n = len(buf)
    while True:
        if pos + 8 > n:
            raise _Short("truncated item")
        item_implicit = implicit
        if implicit:
            group, elem, length = _IMPLICIT.unpack_from(buf, pos)
            if (group << 16) | elem == _ITEM_END:
                return pos + 8
            pos += 8
        else:
            group, elem, vrb, length = _EXPLICIT.unpack_from(buf, pos)
            if (group << 16) | elem == _ITEM_END:
                return pos + 8
            if vrb in _LONG_VRS:
                length, pos = _U32.unpack_from(buf, pos + 8)[0], pos + 12
                if vrb == b"UN":
                    item_implicit = True
            elif vrb in _SHORT_VRS:
                pos += 8
            else:
                raise _Bad("bad VR")
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, pos, item_implicit, depth + 1)
        else:
            pos += length


def _us(values: dict[int, bytes], tag: int, default: int | None = None) -> int | None:
    v = values.get(tag)
    if v is None or len(v) == 0:
        return default
    if len(v) < 2:
        raise _Bad("short US")
    return v[0] | (v[1] << 8)


def _cs(values: dict[int, bytes], tag: int) -> str:
    v = values.get(tag)
    return v.decode("ascii").strip("\x00 ").upper() if v else ""


def _layout(values: dict[int, bytes], offset: int, length: int | None, size: int):
    """(rows, columns, bits allocated, bits stored, pixel representation, frames,
    photometric interpretation) of a greyscale image the quick paths read, or
    None (colour, odd sizes, a frame count pydicom must judge, pixel data
    shorter than its frames; *length* None: not checked)."""
    rows, cols = _us(values, 0x00280010), _us(values, 0x00280011)
    bits = _us(values, 0x00280100)
    stored = _us(values, 0x00280101, bits)
    spp = _us(values, 0x00280002, 1)
    rep = _us(values, 0x00280103, 0)
    if not rows or not cols or bits not in (8, 16) or spp != 1 or rep not in (0, 1):
        return None
    if stored is None or not 1 <= stored <= bits:
        return None
    pi = _cs(values, 0x00280004) or "MONOCHROME2"
    if pi not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    frames = 1
    raw_frames = values.get(0x00280008)
    if raw_frames:
        text = raw_frames.decode("ascii").strip("\x00 ")
        if text:
            if not text.isdigit():
                return None  # "2.0", signs, several values: let pydicom judge
            frames = max(int(text), 1)
    if length is not None:
        frame_bytes = rows * cols * (bits // 8)
        if length < frames * frame_bytes or offset + frames * frame_bytes > size:
            return None
    return rows, cols, bits, stored, rep, frames, pi


def _image(ts: str, offset: int, length: int, n: int, elements, values) -> NativeImage | None:
    layout = _layout(values, offset, length, n)
    if layout is None:
        return None
    rows, cols, bits, stored, rep, frames, pi = layout
    return NativeImage(ts, rows, cols, bits, stored, rep == 1, frames, pi, offset, length,
                       tuple(elements))
