"""The fast header reader gives exactly what the pydicom path gives, or declines.

Every check compares :func:`read_header` (fast path first) with
``header._read_header_pydicom`` (pydicom alone) on the same bytes: same values
(types included), transfer syntax, character set, stored bytes and warnings,
or the same :class:`DicomFileError` (message and kind).
"""

from __future__ import annotations

import io
import os
import random
import struct
import warnings

import pytest
from pydicom.data import get_testdata_files
from pydicom.filereader import ENCODED_VR
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from osirix_py.dicom import fastheader, header
from osirix_py.dicom.fastheader import read_indexed
from osirix_py.dicom.header import DicomFileError, read_header
from osirix_py.dicom.synthetic import make_ct_series, make_mr_series

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
DICOMDIR = "1.2.840.10008.1.3.10"

# --- outcomes -----------------------------------------------------------------------------


def _outcome(fn, data: bytes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            h = fn(data, name="f.dcm")
        except DicomFileError as exc:
            return ("error", str(exc), exc.kind)
    typed = {k: (type(v).__name__, v) for k, v in h.values.items()}
    return ("ok", list(h.values), typed, h.transfer_syntax_uid, h.character_set,
            h.data == data, h.warnings)


def _same(data: bytes) -> bool:
    """read_header == the pydicom path on *data*; returns whether the fast path took it."""
    fast = read_indexed(data)
    assert _outcome(read_header, data) == _outcome(header._read_header_pydicom, data)
    return fast is not None


# --- a tiny Part 10 writer (full control over lengths, VRs and delimiters) -----------------

_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
         b"UV"}
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def el(tag: int, vr: str, value: bytes | str, implicit: bool = False, *, pad: bool = True
       ) -> bytes:
    if isinstance(value, str):  # text is padded to an even length, bytes are kept as they are
        value = value.encode("latin-1")
        if pad and len(value) % 2:
            value += b"\x00" if vr == "UI" else b" "
    g, e = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", g, e, len(value)) + value
    v = vr.encode()
    if v in _LONG:
        return struct.pack("<HH2sHI", g, e, v, 0, len(value)) + value
    return struct.pack("<HH2sH", g, e, v, len(value)) + value


def sq(tag: int, items: list[bytes], implicit: bool = False, *, undefined: bool = False,
       undefined_items: bool = False, vr: str = "SQ") -> bytes:
    body = b""
    for it in items:
        if undefined_items:
            body += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + it + _ITEM_END
        else:
            body += struct.pack("<HHI", 0xFFFE, 0xE000, len(it)) + it
    if undefined:
        body += _SEQ_END
    length = 0xFFFFFFFF if undefined else len(body)
    g, e = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", g, e, length) + body
    return struct.pack("<HH2sHI", g, e, vr.encode(), 0, length) + body


def meta(ts: str = EXPLICIT, sop_class: str = CT, sop_uid: str = "1.2.3.4.1") -> bytes:
    elems = (el(0x00020001, "OB", b"\x00\x01") + el(0x00020002, "UI", sop_class)
             + el(0x00020003, "UI", sop_uid) + el(0x00020010, "UI", ts)
             + el(0x00020012, "UI", "1.2.3.999"))
    return b"\x00" * 128 + b"DICM" + el(0x00020000, "UL", struct.pack("<I", len(elems))) + elems


BASE = {
    0x00080016: ("UI", CT),
    0x00080018: ("UI", "1.2.3.4.1"),
    0x00080020: ("DA", "20240115"),
    0x00080030: ("TM", "093000.5"),
    0x00080050: ("SH", "ACC1"),
    0x00080060: ("CS", "CT"),
    0x00080080: ("LO", "Hospital"),
    0x00080090: ("PN", "Ref^Doc"),
    0x00081030: ("LO", "Study desc"),
    0x0008103E: ("LO", "Series desc"),
    0x00100010: ("PN", "Doe^John"),
    0x00100020: ("LO", "PID1"),
    0x00100030: ("DA", "19700101"),
    0x00100040: ("CS", "M"),
    0x00180015: ("CS", "HEAD"),
    0x00181030: ("LO", "Protocol"),
    0x0020000D: ("UI", "1.2.3.4"),
    0x0020000E: ("UI", "1.2.3.4.5"),
    0x00200010: ("SH", "7"),
    0x00200011: ("IS", "3"),
    0x00200013: ("IS", "12"),
    0x00280010: ("US", struct.pack("<H", 4)),
    0x00280011: ("US", struct.pack("<H", 4)),
}


def part10(changes: dict | None = None, *, implicit: bool = False, extra: dict | None = None,
           ts: str | None = None, sop_class: str = CT, pixels: bool = True) -> bytes:
    """A file of BASE with *changes* (tag -> (VR, value) or None to drop) and *extra*
    raw chunks (tag -> already encoded bytes, e.g. sequences), in tag order."""
    elems = dict(BASE)
    for tag, v in (changes or {}).items():
        if v is None:
            elems.pop(tag, None)
        else:
            elems[tag] = v
    chunks = {tag: el(tag, vr, value, implicit) for tag, (vr, value) in elems.items()}
    chunks.update(extra or {})
    body = b"".join(chunks[t] for t in sorted(chunks))
    if pixels:
        body += el(0x7FE00010, "OW", b"\x01\x00" * 16, implicit)
    return meta(ts or (IMPLICIT if implicit else EXPLICIT), sop_class) + body


# --- tests --------------------------------------------------------------------------------


def test_vr_sets_are_pydicoms():
    assert fastheader.LONG_VRS == {bytes(v.encode()) for v in EXPLICIT_VR_LENGTH_32}
    plain = {v for v in ENCODED_VR if len(v) == 2}
    assert fastheader.LONG_VRS | fastheader.SHORT_VRS == plain
    assert not fastheader.LONG_VRS & fastheader.SHORT_VRS


def test_pydicom_test_files_agree():
    files = [f for f in get_testdata_files() if os.path.isfile(f)]
    covered = sum(_same(open(f, "rb").read()) for f in files)
    assert len(files) > 100
    assert covered >= len(files) // 2, (covered, len(files))


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("make", [make_ct_series, make_mr_series])
def test_synthetic_series_take_the_fast_path(make, implicit):
    ts = IMPLICIT if implicit else EXPLICIT
    for ds in make(slices=3, rows=32, columns=32, transfer_syntax=ts):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
        assert _same(data)
        h = read_header(data)
        assert h.sop_instance_uid == ds.SOPInstanceUID
        assert h.values["Rows"] == 32 and isinstance(h.values["InstanceNumber"], int)
        assert h.transfer_syntax_uid == ts


@pytest.mark.parametrize("implicit", [False, True])
def test_plain_file_values(implicit):
    data = part10(implicit=implicit)
    assert _same(data)
    v = read_header(data).values
    assert v["PatientName"] == "Doe^John" and v["StudyTime"] == "093000.5"
    assert v["SeriesNumber"] == 3 and v["Rows"] == 4 and v["NumberOfFrames"] is None
    assert v["IssuerOfPatientID"] is None and v["TransferSyntaxUID"] == (
        IMPLICIT if implicit else EXPLICIT)


@pytest.mark.parametrize("implicit", [False, True])
def test_latin1_and_utf8_names(implicit):
    latin = part10({0x00080005: ("CS", "ISO_IR 100"),
                    0x00100010: ("PN", "Müller^Jürgen".encode("latin-1")),
                    0x00081030: ("LO", "Étude crâne".encode("latin-1"))}, implicit=implicit)
    assert _same(latin)
    h = read_header(latin)
    assert h.values["PatientName"] == "Müller^Jürgen" and h.character_set == "ISO_IR 100"
    utf8 = part10({0x00080005: ("CS", "ISO_IR 192"),
                   0x00100010: ("PN", "Müller^Jürgen=山田^太郎".encode()),
                   0x00080080: ("LO", "Hôpital 東京".encode())}, implicit=implicit)
    assert _same(utf8)
    h = read_header(utf8)
    assert h.values["PatientName"] == "Müller^Jürgen=山田^太郎"
    assert h.values["InstitutionName"] == "Hôpital 東京"
    # No charset: Latin-1 as pydicom's default; ISO_IR 6 and an empty value too.
    for cs in (None, ("CS", "ISO_IR 6"), ("CS", ""), ("CS", "  ")):
        data = part10({0x00080005: cs, 0x00100010: ("PN", "Caf\xe9^X".encode("latin-1"))},
                      implicit=implicit)
        assert _same(data)


def test_other_charsets_fall_back():
    for cs in ("ISO 2022 IR 87", "GB18030", "\\ISO 2022 IR 100", "ISO_IR 144", "ISO-IR 100",
               "NONSENSE"):
        data = part10({0x00080005: ("CS", cs)})
        assert read_indexed(data) is None, cs
        assert not _same(data)
    # An escape sequence in a text value, invalid UTF-8: pydicom decides.
    for name in (b"Yamada^\x1b$BFhK\\\x1b(B", ):
        assert not _same(part10({0x00080005: ("CS", "ISO_IR 100"), 0x00100010: ("PN", name)}))
    assert not _same(part10({0x00080005: ("CS", "ISO_IR 192"), 0x00100010: ("PN", b"A\xff^B")}))


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined", [False, True])
@pytest.mark.parametrize("undefined_items", [False, True])
def test_sequences_before_and_between_indexed_tags(implicit, undefined, undefined_items):
    # (0008,1140) Referenced Image Sequence inside the items of the others.
    ref = el(0x00081150, "UI", CT, implicit) + el(0x00081155, "UI", "9.8.7", implicit)
    inner = sq(0x00081140, [ref], implicit, undefined=undefined, undefined_items=undefined_items)
    item = (el(0x00080100, "SH", "CODE", implicit) + el(0x00080104, "LO", "Meaning", implicit)
            + inner)
    # (0008,1032) Procedure Code Sequence sits between (0008,1030) and (0008,103E);
    # (0008,0006) Language Code Sequence before almost everything; both nest.
    extra = {
        0x00081032: sq(0x00081032, [item, item], implicit, undefined=undefined,
                       undefined_items=undefined_items),
        0x00080006: sq(0x00080006, [item, b""], implicit, undefined=undefined,
                       undefined_items=undefined_items),
        0x00400275: sq(0x00400275, [], implicit, undefined=undefined),
    }
    data = part10(implicit=implicit, extra=extra)
    assert _same(data)
    v = read_header(data).values
    assert v["StudyDescription"] == "Study desc" and v["SeriesDescription"] == "Series desc"
    assert v["SOPClassUID"] == CT  # not the nested (0008,1150)
    # An indexed attribute inside a sequence item is not the top-level one.
    nested = sq(0x00081032, [el(0x00100010, "PN", "Nested^Name", implicit)], implicit,
                undefined=undefined, undefined_items=undefined_items)
    data = part10({0x00100010: None}, implicit=implicit, extra={0x00081032: nested})
    assert _same(data)
    assert read_header(data).values["PatientName"] is None


def test_un_sequence_of_implicit_items_and_private_sequence():
    # Explicit VR file: an undefined-length UN (a sequence, read as implicit VR inside).
    items = [el(0x00080100, "SH", "C1", True) + el(0x00080104, "LO", "M", True)]
    un = sq(0x00081032, items, False, undefined=True, undefined_items=True, vr="UN")
    data = part10(extra={0x00081032: un})
    assert _same(data)
    # Implicit VR file: a private undefined-length sequence (not in the dictionary).
    private = sq(0x00091010, [el(0x00091011, "LO", "x", True)], True, undefined=True,
                 undefined_items=True)
    creator = el(0x00090010, "LO", "ACME", True)
    data = part10(implicit=True, extra={0x00090010: creator, 0x00091010: private})
    assert _same(data)
    assert read_indexed(data) is not None


def test_multi_valued_and_empty_values():
    cases = {
        0x00080060: ("CS", "CT\\PT"),
        0x00081030: ("LO", "A \\B\\ C "),
        0x0008103E: ("LO", "\\"),
        0x00080050: ("SH", ""),
        0x00180015: ("CS", " "),
        0x00200011: ("IS", "7\\8"),
        0x00200013: ("IS", "\\8"),
        0x00280008: ("IS", " 4 "),
        0x00100030: ("DA", "19700101\\"),
        0x00080030: ("TM", " 1200"),
        0x00100040: ("CS", "\t"),
        0x00181030: ("LO", "P\x00"),
        0x00100020: ("LO", " PID "),
        0x00080090: ("PN", "A^B=="),
        0x00200010: ("SH", "x\\"),
    }
    data = part10(cases)
    assert _same(data)
    v = read_header(data).values
    assert v["Modality"] == "CT\\PT" and v["StudyDescription"] == "A\\B\\ C"
    assert v["SeriesNumber"] == 7 and v["InstanceNumber"] is None and v["NumberOfFrames"] == 4
    assert v["AccessionNumber"] is None and v["BodyPartExamined"] is None
    assert v["PatientSex"] == "" and v["PatientID"] == "PID"
    assert v["ReferringPhysicianName"] == "A^B"


def test_values_pydicom_converts_specially_fall_back():
    for change in ({0x00200013: ("IS", "1.5")}, {0x00200013: ("IS", "12345678901234567890")},
                   {0x00200011: ("IS", "3\\x")}, {0x00200011: ("IS", "  \\5")},
                   {0x00280010: ("US", b"\x04\x00\x05\x00")}, {0x00280010: ("US", b"\x04")},
                   {0x00100010: ("PN", "A^B\\C^D")},
                   {0x00100010: ("LO", "Wrong^VR")}, {0x00200013: ("US", b"\x01\x00")}):
        data = part10(change)
        assert read_indexed(data) is None, change
        _same(data)


def test_transfer_syntaxes():
    # Encapsulated syntaxes have an explicit VR LE dataset: fast path.
    assert _same(part10(ts="1.2.840.10008.1.2.4.50"))
    assert _same(part10(ts="1.2.840.10008.1.2.4.90"))
    # Big endian, deflate, an implicit dataset under an explicit syntax: pydicom.
    assert not _same(part10(ts="1.2.840.10008.1.2.2"))
    assert not _same(part10(ts="1.2.840.10008.1.2.1.99"))
    assert not _same(part10(implicit=True, ts=EXPLICIT))
    assert not _same(part10(implicit=False, ts=IMPLICIT))


def test_checks_of_read_header_still_happen():
    # Missing required UIDs: same error, from the fast path.
    data = part10({0x0020000E: None, 0x00080018: ("UI", "")})
    assert read_indexed(data) is not None
    assert _same(data)
    with pytest.raises(DicomFileError, match=r"\(0008,0018\) SOPInstanceUID, \(0020,000E\)") as e:
        read_header(data)
    assert e.value.kind == "missing-attribute"
    # A DICOMDIR is refused.
    data = part10(sop_class=DICOMDIR)
    assert read_indexed(data) is not None
    assert _same(data)
    with pytest.raises(DicomFileError) as e:
        read_header(data)
    assert e.value.kind == "dicomdir"
    # No pixel data: read to the end.
    assert _same(part10(pixels=False))
    # Elements after the pixel data are not read.
    data = part10() + el(0x00100010, "PN", "After^Pixels")
    assert _same(data) and read_header(data).values["PatientName"] == "Doe^John"


def test_truncated_files_give_the_same_error():
    nested = sq(0x00081032, [el(0x00080100, "SH", "C1") + el(0x00080104, "LO", "M")],
                undefined=True, undefined_items=True)
    full = part10(extra={0x00081032: nested})
    end = full.index(struct.pack("<HH", 0x7FE0, 0x0010))
    errors = 0
    for cut in list(range(0, 300, 7)) + list(range(300, end + 4)):
        data = full[:cut]
        _same(data)
        errors += _outcome(read_header, data)[0] == "error"
    assert errors > 100


def test_malformed_structures_fall_back():
    ok = part10()
    pos = ok.index(struct.pack("<HH", 0x0010, 0x0010))
    # A top-level item delimiter, an unknown VR, a value running past the end.
    for bad in (ok[:pos] + _ITEM_END + ok[pos:],
                ok[:pos] + struct.pack("<HH2sH", 0x0009, 0x0010, b"ZZ", 2) + b"ab" + ok[pos:],
                ok[:pos] + struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 60000) + ok[pos:]):
        assert read_indexed(bad) is None
        _same(bad)
    # Nesting too deep.
    item = el(0x00080100, "SH", "C")
    for _ in range(fastheader.MAX_DEPTH + 2):
        item = sq(0x00081032, [item], undefined=True, undefined_items=True)
    data = part10(extra={0x00081032: item})
    assert read_indexed(data) is None
    _same(data)
    # An undefined-length item whose elements overrun a defined-length item.
    bad_item = struct.pack("<HHI", 0xFFFE, 0xE000, 4) + el(0x00080100, "SH", "CODE")
    seq = struct.pack("<HH2sHI", 0x0008, 0x1032, b"SQ", 0, 0xFFFFFFFF) + bad_item + _SEQ_END
    data = part10(extra={0x00081032: seq})
    assert read_indexed(data) is None
    _same(data)


_ALPHABET = ["A", "b", "^", "=", " ", "\\", "\x00", "1", "9", "-", "+", ".", "\t", "é", "東"]


def _random_value(rng: random.Random, vr: str, utf8: bool) -> bytes:
    if vr == "US":
        return rng.choice([b"\x00\x02", b"\x01", b"\x01\x00\x02\x00", b""])
    if vr == "IS":
        text = rng.choice(["12", " 12", "12 ", "-3", "+4", "1.0", "1.5", "", "  ", "7\\8",
                           "\\8", "x", "0012", "99999999999999"])
        return text.encode()
    text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 8)))
    if vr in ("UI", "CS", "DA", "TM", "IS") or not utf8:
        return text.encode("latin-1", "replace")
    return text.encode("utf-8")


@pytest.mark.filterwarnings("ignore")
def test_random_files_agree():
    rng = random.Random(20240115)
    fast = 0
    n = 250
    for _ in range(n):
        implicit = rng.random() < 0.4
        cs = rng.choice([None, "ISO_IR 100", "ISO_IR 192", "ISO_IR 6", ""])
        utf8 = cs == "ISO_IR 192"
        changes: dict = {0x00080005: None if cs is None else ("CS", cs)}
        for tag, (vr, _v) in BASE.items():
            if rng.random() < 0.3 and tag not in (0x00080018, 0x0020000D, 0x0020000E):
                changes[tag] = (vr, _random_value(rng, vr, utf8))
        extra = {}
        if rng.random() < 0.5:
            items = [el(0x00080100, "SH", "C", implicit) for _ in range(rng.randint(0, 2))]
            extra[0x00081032] = sq(0x00081032, items, implicit, undefined=rng.random() < 0.5,
                                   undefined_items=rng.random() < 0.5)
        data = part10(changes, implicit=implicit, extra=extra)
        fast += _same(data)
    assert fast >= n // 3, fast


@pytest.mark.parametrize("implicit", [False, True])
def test_sop_uids_are_peeked_from_the_start_of_a_data_set(implicit):
    """A C-STORE's first received fragment is enough to check its command:
    the SOP Class and Instance UIDs come from the start of the data set, as
    the whole header gives them; a start that does not reach them, or an
    undefined length before them, gives None (the whole is read instead)."""
    from pynetdicom.dsutils import encode
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = make_ct_series(slices=1, rows=32, columns=32,
                        transfer_syntax=IMPLICIT if implicit else EXPLICIT)[0]
    data = encode(ds, implicit, True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    whole = read_header(buf.getvalue())
    got = fastheader.peek_sop_uids(data, implicit)
    assert got == (whole.values["SOPClassUID"], whole.sop_instance_uid)
    assert got == (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    uid_end = data.index(str(ds.SOPInstanceUID).encode()) + len(str(ds.SOPInstanceUID))
    assert fastheader.peek_sop_uids(data[:uid_end + 1], implicit) == got  # (even UID padding)
    assert fastheader.peek_sop_uids(data[:uid_end - 4], implicit) is None  # cut inside it
    assert fastheader.peek_sop_uids(memoryview(data)[:4096], implicit) == got
    assert fastheader.peek_sop_uids(b"\x08\x00\x16\x00garbage!", implicit) is None

    before = Dataset()  # an undefined-length sequence before the UIDs
    item = Dataset()
    item.CodeValue = "X"
    before.add_new(0x00080006, "SQ", Sequence([item]))
    before.SOPClassUID, before.SOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    raw = encode(before, implicit, True)
    undefined = raw.replace(struct.pack("<I", len(encode(item, implicit, True)) + 8),
                            b"\xff\xff\xff\xff", 1)
    assert fastheader.peek_sop_uids(raw, implicit) == got
    assert fastheader.peek_sop_uids(undefined, implicit) is None


# --- a header read from the first part of a file's pieces ---------------------------------

def _pieces(data: bytes, rng: random.Random) -> list:
    """*data* cut at random places, as a C-STORE's fragments arrive (views and bytes)."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6))))
    out, prev = [], 0
    for c in cuts + [len(data)]:
        out.append(memoryview(data)[prev:c] if rng.random() < 0.5 else data[prev:c])
        prev = c
    return out


def test_header_read_from_the_first_part_equals_the_whole_files():
    """read_header_prefix gives read_header's values for the same bytes, keeps
    the pieces (whole() joins them back), or declines (None) -- never a
    header cut short: the pydicom test files, synthetic series and random
    files, each cut into random pieces."""
    rng = random.Random(7)
    files = [open(f, "rb").read() for f in get_testdata_files() if os.path.isfile(f)]
    for make in (make_ct_series, make_mr_series):
        for ds in make(slices=2, rows=64, columns=64):
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            files.append(buf.getvalue())
    files += [part10(implicit=rng.random() < 0.5) for _ in range(50)]
    taken = 0
    for data in files:
        pieces = _pieces(data, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                got = header.read_header_prefix(pieces, name="f.dcm")
            except DicomFileError as exc:
                with pytest.raises(DicomFileError) as whole_exc:
                    read_header(data, name="f.dcm")
                assert str(exc) == str(whole_exc.value)
                continue
            if got is None:
                continue
            want = read_header(data, name="f.dcm")
        taken += 1
        assert got.values == want.values
        assert (got.transfer_syntax_uid, got.character_set) == (want.transfer_syntax_uid,
                                                                 want.character_set)
        assert got.size == len(data) and got.whole().data == data and got.whole().pieces is None
        assert data.startswith(got.data) and len(got.data) <= header.PREFIX_MOST
    assert taken >= 60, taken


def test_a_prefix_that_ends_before_the_pixel_data_is_not_taken_for_the_header():
    """A first part that ends between two elements, before the pixel data,
    looks like a complete (shorter) data set: the prefix reader must not take
    it.  Here the indexed Instance Number lies past the first 16 KB, behind a
    long private element; the header is still read right (from a longer
    prefix), and a file whose header outgrows 256 KB is declined."""
    big = {0x00090010: ("LO", "PRIVATE"), 0x00091001: ("OB", b"\x00" * (20 * 1024))}
    data = part10({0x00200013: ("IS", "42"), **big})
    assert data.index(b"42") > header.PREFIX_FIRST
    cut = data.index(b"\x20\x00\x0d\x00")  # (0020,000D), an element boundary past 16 KB
    assert read_indexed(data[:cut], to_pixels=True) is None
    assert read_indexed(data[:cut]) is not None  # (what a walk to the end would take)
    got = header.read_header_prefix([data[:100], data[100:]], name="f.dcm")
    assert got is not None and got.values["InstanceNumber"] == 42
    huge = part10({0x00091001: ("OB", b"\x00" * (300 * 1024)), 0x00090010: ("LO", "PRIVATE")})
    assert header.read_header_prefix([huge], name="f.dcm") is None
    assert read_header(huge).values["InstanceNumber"] == 12
