"""The quick file read of load_volume (dicom/quickheader, no pydicom parse) against the
pydicom read of the same files.

Every load here runs twice: as is, and with the quick read switched off (every file
through ``pydicom.dcmread``).  The volumes, their sources, reports and attributes
must be identical, and the quick read must have been used for the files it covers
and refused for the others.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

import osirix_py.imaging.volume as volume_mod
from osirix_py.dicom import quickheader, synthetic
from osirix_py.imaging import VolumeError, load_volume, load_volumes

ATTRS = ("modality", "units", "series_instance_uid", "frame_of_reference_uid", "window", "padding",
         "suv_factor", "value_range", "description", "tilt_deg")


def _ct(n=6, rows=24, cols=20, **kw):
    return synthetic.make_ct_series(slices=n, rows=rows, columns=cols, **kw)


def _write(datasets, folder: Path, *, reverse=False) -> list[str]:
    paths = [str(p) for p in synthetic.write_series(datasets, folder)]
    return paths[::-1] if reverse else paths


def _load_both(monkeypatch, paths, *, many=False, **kw):
    """(quick result, pydicom result, number of quick records) of the same load."""
    made = []
    real = volume_mod._quick_record

    def counting(*a, **k):
        rec = real(*a, **k)
        if rec is not None:
            made.append(rec)
        return rec

    load = load_volumes if many else load_volume
    with monkeypatch.context() as m:
        m.setattr(volume_mod, "_quick_record", counting)
        quick = load(paths, **kw)
    with monkeypatch.context() as m:
        m.setattr(volume_mod, "_quick_record", lambda *a, **k: None)
        slow = load(paths, **kw)
    return quick, slow, len(made)


def _assert_same(a, b):
    assert a.array.dtype == b.array.dtype
    assert a.array.shape == b.array.shape
    assert np.array_equal(a.array, b.array)
    assert np.array_equal(a.affine, b.affine)
    assert a.sources == b.sources
    assert np.array_equal(a.slice_positions, b.slice_positions)
    assert [str(i) for i in a.report.issues] == [str(i) for i in b.report.issues]
    assert a.report.rejected == b.report.rejected
    for name in ATTRS:
        assert getattr(a, name) == getattr(b, name), name
    assert a.header.SOPInstanceUID == b.header.SOPInstanceUID


@pytest.mark.parametrize("kw", [
    {},  # signed 16 bits, identity rescale: read straight into the volume
    {"unsigned": True},  # 12 of 16 bits, intercept -1024
    {"unsigned": True, "bits_stored": 16},
    {"bits_stored": 12},  # signed, 12 of 16 bits
    {"transfer_syntax": ImplicitVRLittleEndian},
    {"reverse_instance_numbers": True},
    {"tilt_deg": 12.0},
    {"omit": (2,)},  # a missing slice, interpolated
    {"orientation": (0, 1, 0, 0, 0, -1), "pixel_spacing": (0.8, 0.6)},
])
def test_synthetic_ct_quick_equals_pydicom(tmp_path, monkeypatch, kw):
    paths = _write(_ct(**kw), tmp_path)
    quick, slow, n = _load_both(monkeypatch, paths)
    assert n == len(paths)
    _assert_same(quick, slow)


def test_reversed_file_order_and_one_worker(tmp_path, monkeypatch):
    paths = _write(_ct(n=7, unsigned=True, noise=5.0), tmp_path, reverse=True)
    for workers in (1, 2):
        quick, slow, n = _load_both(monkeypatch, paths, workers=workers)
        assert n == len(paths)
        _assert_same(quick, slow)


def test_unused_high_bits_are_masked_and_sign_extended(tmp_path, monkeypatch):
    for unsigned in (True, False):
        datasets = _ct(n=4, unsigned=unsigned, bits_stored=12)
        for ds in datasets:  # garbage in the 4 unused bits of every pixel
            raw = np.frombuffer(ds.PixelData, "<u2").copy()
            raw |= np.uint16(0xA000)
            ds.PixelData = raw.tobytes()
        paths = _write(datasets, tmp_path / str(unsigned))
        quick, slow, n = _load_both(monkeypatch, paths)
        assert n == len(paths)
        _assert_same(quick, slow)


@pytest.mark.parametrize("slope,intercept", [("2", "-1000"), ("0.5", "-1024"), ("1", "0"),
                                             ("", ""), ("0", "7"), ("1.0 ", " -1024.0")])
def test_rescale_values(tmp_path, monkeypatch, slope, intercept):
    datasets = _ct(n=4, unsigned=True)
    for ds in datasets:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    paths = _write(datasets, tmp_path)
    quick, slow, n = _load_both(monkeypatch, paths)
    assert n == len(paths)
    _assert_same(quick, slow)


def test_wide_values_go_to_int32(tmp_path, monkeypatch):
    datasets = _ct(n=4, unsigned=True, bits_stored=16)
    for ds in datasets:
        ds.RescaleSlope = "3"
    paths = _write(datasets, tmp_path)
    quick, slow, n = _load_both(monkeypatch, paths)
    assert n == len(paths)
    _assert_same(quick, slow)


def test_pet_units_mr_and_monochrome1(tmp_path, monkeypatch):
    datasets = _ct(n=4)
    for ds in datasets:
        ds.Modality = "PT"
        ds.Units = "BQML"
        ds.RescaleSlope = "0.25"
        ds.PhotometricInterpretation = "MONOCHROME1"
    paths = _write(datasets, tmp_path / "pt")
    quick, slow, n = _load_both(monkeypatch, paths, suv=False)
    assert n == len(paths) and quick.units == "BQML"
    _assert_same(quick, slow)
    mr = synthetic.make_mr_series(slices=4, rows=16, columns=16)
    paths = _write(mr, tmp_path / "mr")
    quick, slow, n = _load_both(monkeypatch, paths)
    assert n == len(paths)
    _assert_same(quick, slow)


def test_big_private_header_and_sequences_are_walked(tmp_path, monkeypatch):
    """A header longer than the first read (a big private element) and nested
    sequences of undefined length before the pixel data."""
    datasets = _ct(n=4)
    for ds in datasets:
        ds.add_new(0x00291010, "OB", b"\x01" * 200_000)  # private, longer than the first chunk
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3"
        inner = Dataset()
        inner.CodeValue = "X"
        item.ConceptCodeSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([item, copy.deepcopy(item)])
        ds.ReferencedImageSequence.is_undefined_length = True
    paths = _write(datasets, tmp_path)
    quick, slow, n = _load_both(monkeypatch, paths)
    assert n == len(paths)
    _assert_same(quick, slow)


def test_files_the_quick_read_refuses_load_as_before(tmp_path, monkeypatch):
    """A series mixing files the quick read takes and files it must refuse."""
    datasets = _ct(n=8, unsigned=True)
    # (0028,3000) Modality LUT Sequence: pydicom's LUT path
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.ModalityLUTType = "HU"
    lut.add_new(0x00283006, "US", list(range(4096)))  # (0028,3006) LUT Data
    datasets[1].ModalityLUTSequence = Sequence([lut])
    # big endian (not read quickly)
    datasets[2].file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    # a multi-valued (0020,0013)
    datasets[3].InstanceNumber = None
    datasets[3].add_new(0x00200013, "IS", "4\\5")
    # an orientation that is not one of six numbers
    datasets[4].ImageOrientationPatient = [1, 0, 0, 0, 1]
    paths = _write(datasets, tmp_path)
    # no preamble ("DICM" missing): pydicom reads it
    raw = Path(paths[5]).read_bytes()
    Path(paths[5]).write_bytes(raw[132:])
    # truncated pixel data
    raw = Path(paths[6]).read_bytes()
    Path(paths[6]).write_bytes(raw[:-100])
    quick, slow, n = _load_both(monkeypatch, paths[:6] + paths[7:], many=True)
    assert n == 2  # files 0 and 7 only
    assert len(quick) == len(slow)
    assert quick.report.rejected == slow.report.rejected
    assert paths[4] in quick.report.rejected  # five orientation values
    for a, b in zip(quick, slow):
        _assert_same(a, b)
    with pytest.raises(VolumeError) as q_err:
        load_volume([paths[0], paths[6], paths[7]])
    with monkeypatch.context() as m:
        m.setattr(volume_mod, "_quick_record", lambda *a, **k: None)
        with pytest.raises(VolumeError) as s_err:
            load_volume([paths[0], paths[6], paths[7]])
    assert q_err.value.code == s_err.value.code
    assert q_err.value.files == s_err.value.files


def test_several_series_split_the_same(tmp_path, monkeypatch):
    a = _ct(n=4, seed=1)
    b = _ct(n=4, seed=2, rows=16)
    paths = _write(a + b, tmp_path)
    quick, slow, n = _load_both(monkeypatch, paths, many=True)
    assert n == 8 and len(quick) == len(slow) == 2
    for x, y in zip(quick, slow):
        _assert_same(x, y)
    assert [str(i) for i in quick.report.issues] == [str(i) for i in slow.report.issues]


def test_duplicate_positions_split_by_echo(tmp_path, monkeypatch):
    """Splitting by (0018,0086) reads the full headers of quick records on demand."""
    a = _ct(n=4, seed=3)
    b = copy.deepcopy(a)
    for ds, ds2 in zip(a, b):
        ds.EchoNumbers = 1
        ds2.EchoNumbers = 2
        ds2.SOPInstanceUID = pydicom.uid.generate_uid()
        ds2.file_meta.MediaStorageSOPInstanceUID = ds2.SOPInstanceUID
        ds2.PixelData = (np.frombuffer(ds.PixelData, "<i2") + 5).astype("<i2").tobytes()
    paths = _write(a + b, tmp_path)
    quick, slow, n = _load_both(monkeypatch, paths, many=True)
    assert n == 8 and len(quick) == 2
    for x, y in zip(quick, slow):
        _assert_same(x, y)


def test_rle_quick_equals_pydicom(tmp_path, monkeypatch):
    datasets = _ct(n=4, unsigned=True)
    for ds in datasets:
        ds.compress(RLELossless)
    paths = _write(datasets, tmp_path)
    quick, slow, n = _load_both(monkeypatch, paths)
    assert n == len(paths)
    _assert_same(quick, slow)


@pytest.mark.skipif(shutil.which("dcmcjpls") is None, reason="dcmtk's dcmcjpls is not installed")
def test_jpeg_ls_quick_equals_pydicom(tmp_path, monkeypatch):
    raw = _write(_ct(n=4, bits_stored=12, noise=3.0), tmp_path / "raw")
    paths = []
    for p in raw:
        d = tmp_path / Path(p).name
        subprocess.run(["dcmcjpls", "+el", p, str(d)], check=True, capture_output=True, timeout=60)
        paths.append(str(d))
    quick, slow, n = _load_both(monkeypatch, paths)
    assert n == len(paths)
    _assert_same(quick, slow)
    ref = load_volume(raw)
    assert np.array_equal(quick.array, ref.array)


def test_corrupt_compressed_frame_falls_back(tmp_path, monkeypatch):
    datasets = _ct(n=3)
    for ds in datasets:
        ds.compress(RLELossless)
    paths = _write(datasets, tmp_path)
    data = bytearray(Path(paths[1]).read_bytes())
    q = quickheader.read_header(bytes(data), encapsulated=frozenset({RLELossless}))
    bot = int.from_bytes(data[q.pixel_offset + 4:q.pixel_offset + 8], "little")
    header = q.pixel_offset + 8 + bot + 8  # the RLE header of the one fragment
    data[header:header + 4] = (99).to_bytes(4, "little")  # 99 segments
    Path(paths[1]).write_bytes(bytes(data))
    try:
        quick = load_volume(paths)
    except VolumeError as exc:
        quick = exc
    with monkeypatch.context() as m:
        m.setattr(volume_mod, "_quick_record", lambda *a, **k: None)
        try:
            slow = load_volume(paths)
        except VolumeError as exc:
            slow = exc
    assert type(quick) is type(slow)
    assert type(quick) is type(slow)
    if isinstance(quick, VolumeError):
        assert quick.code == slow.code and quick.files == slow.files
    else:
        _assert_same(quick, slow)
    # a missing (FFFE,E0DD) delimiter: pydicom drops the pixel data, so does the quick read
    data = bytearray(Path(paths[2]).read_bytes())
    Path(paths[2]).write_bytes(bytes(data[:-8]))
    quick, slow, n = _load_both(monkeypatch, [paths[0], paths[2]], many=True)
    assert n == 1 and quick.report.rejected == slow.report.rejected


# ---------------------------------------------------------------------------
# quickheader.read_header itself


def _bytes(ds) -> bytes:
    import io

    fp = io.BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    return fp.getvalue()


def test_read_header_values():
    ds = _ct(n=1, unsigned=True)[0]
    ds.RescaleType = "HU  "
    raw = _bytes(ds)
    q = quickheader.read_header(raw, frozenset({0x00200032, 0x0020000E, 0x00200013}))
    assert q is not None and not q.encapsulated and not q.signed
    assert (q.rows, q.columns, q.bits_allocated, q.bits_stored, q.high_bit) == (24, 20, 16, 12, 11)
    assert q.floats(0x00200032) == [float(v) for v in ds.ImagePositionPatient]
    assert q.text(0x0020000E) == ds.SeriesInstanceUID
    assert q.integer(0x00200013) == 1
    assert q.text(0x00281054) == "HU"
    assert q.floats(0x00281053) == [1.0]
    assert 0x00080060 not in q  # not asked for
    assert raw[q.pixel_offset:q.pixel_offset + q.frame_bytes] == ds.PixelData
    # a prefix of the file: more is needed, or the pixel data length does not fit
    with pytest.raises(quickheader.ShortBuffer):
        quickheader.read_header(raw[:300], file_size=len(raw))
    assert quickheader.read_header(raw[:-2]) is None
    # odd values are refused, not guessed
    ds.InstanceNumber = None
    ds.add_new(0x00200013, "IS", "1.5")
    q = quickheader.read_header(_bytes(ds), frozenset({0x00200013}))
    with pytest.raises(ValueError):
        q.integer(0x00200013)


def test_read_header_encapsulated_only_when_asked():
    ds = _ct(n=1)[0]
    ds.compress(RLELossless)
    raw = _bytes(ds)
    assert quickheader.read_header(raw) is None
    assert quickheader.read_native(raw) is None
    q = quickheader.read_header(raw, encapsulated=frozenset({RLELossless}))
    assert q is not None and q.encapsulated and q.pixel_length is None
    assert raw[q.pixel_offset:q.pixel_offset + 4] == b"\xfe\xff\x00\xe0"  # the offset table item


def test_read_header_file_reads_more_for_a_long_header(tmp_path):
    ds = _ct(n=1)[0]
    ds.add_new(0x00291010, "OB", b"\x02" * 100_000)
    p = tmp_path / "long.dcm"
    ds.save_as(p, enforce_file_format=True)
    q = quickheader.read_header_file(str(p), frozenset({0x00200032}), chunk=4096)
    assert q is not None and q.pixel_offset > 100_000
    assert q.file_size == p.stat().st_size
    assert quickheader.read_header_file(str(tmp_path / "missing.dcm")) is None


def test_attributes_pydicom_requires_are_required(tmp_path, monkeypatch):
    """Without (0028,0103) the quick read would assume unsigned; pydicom's decoder
    refuses such a (small) file, so the quick read leaves it to pydicom."""
    datasets = _ct(n=3)
    del datasets[1].PixelRepresentation
    paths = _write(datasets, tmp_path)
    made = []
    real = volume_mod._quick_record
    monkeypatch.setattr(volume_mod, "_quick_record", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    with pytest.raises(VolumeError) as q_err:
        load_volume(paths)
    assert [r is not None for r in made] == [True, False, True]
    monkeypatch.setattr(volume_mod, "_quick_record", lambda *a, **k: None)
    with pytest.raises(VolumeError) as s_err:
        load_volume(paths)
    assert (q_err.value.code, q_err.value.files) == (s_err.value.code, s_err.value.files)
