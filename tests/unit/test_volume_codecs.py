"""Compressed series load into volumes equal to their uncompressed twins.

Small series (a few 48x40 slices) of signed/unsigned, 8/12/16-bit data are
written uncompressed, then compressed with dcmtk (JPEG Lossless SV1 and
process 14, JPEG-LS lossless and near-lossless, RLE, JPEG baseline/extended)
and with pydicom's encoders (RLE, JPEG 2000 lossless).  Lossless copies must
load to exactly the uncompressed volume; every frame the direct decoder
(imagecodecs / libjpeg without pydicom's runner) produces must equal
pydicom's own decode, lossy ones included.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from osirix_py.dicom import pixels
from osirix_py.imaging import load_volume

ROWS, COLS, N = 48, 40, 4

# name: (bits allocated, bits stored, signed, low, high, intercept)
KINDS = {
    "s16": (16, 16, True, -2000, 3000, "-1024"),
    "u16": (16, 16, False, 0, 65535, "0"),
    "u12": (16, 12, False, 0, 4095, "-1024"),
    "s12": (16, 12, True, -2048, 2047, "0"),
    "u8": (8, 8, False, 0, 255, "0"),
}

LOSSLESS_DCMTK = {
    "jpeg-sv1": ["dcmcjpeg", "+e1"],
    "jpeg-p14": ["dcmcjpeg", "+el"],
    "jpeg-ls": ["dcmcjpls", "+el"],
    "rle-dcmtk": ["dcmcrle"],
}


def _values(kind: str, k: int) -> np.ndarray:
    bits_alloc, bits_stored, signed, lo, hi, _ = KINDS[kind]
    rng = np.random.default_rng(1000 + k)
    v = rng.integers(lo, hi + 1, size=(ROWS, COLS), dtype=np.int64)
    v[0, :4] = [lo, hi, lo, hi]  # the extremes
    v[1:9, 1:9] = lo + (hi - lo) // 3  # a flat patch, as in real images
    return v


def _slices(kind: str) -> list[Dataset]:
    bits_alloc, bits_stored, signed, lo, hi, intercept = KINDS[kind]
    series = generate_uid()
    out = []
    for k in range(N):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = CTImageStorage
        ds.SeriesInstanceUID = series
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.30"
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.31"
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ["-10", "20", str(30 + 2 * k)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.5", "0.75"]
        ds.SliceThickness = "2"
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_alloc, bits_stored, bits_stored - 1
        ds.PixelRepresentation = int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = "1", intercept
        dtype = ("<i" if signed else "<u") + str(bits_alloc // 8)
        ds.PixelData = _values(kind, k).astype(dtype).tobytes()
        out.append(ds)
    return out


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[str, list[Path]]:
    """kind -> uncompressed files, and "kind/codec" -> compressed copies."""
    root = tmp_path_factory.mktemp("codecs")
    out: dict[str, list[Path]] = {}
    for kind in KINDS:
        raw = []
        slices = _slices(kind)
        for k, ds in enumerate(slices):
            p = root / kind / "raw" / f"{k}.dcm"
            p.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(p, enforce_file_format=True)
            raw.append(p)
        out[kind] = raw
        for codec, cmd in LOSSLESS_DCMTK.items():
            if shutil.which(cmd[0]) is None:
                continue
            (root / kind / codec).mkdir()
            dst = [root / kind / codec / p.name for p in raw]
            for s, d in zip(raw, dst):
                subprocess.run([*cmd, str(s), str(d)], check=True, capture_output=True, timeout=60)
            out[f"{kind}/{codec}"] = dst
        for codec, uid in (("rle-pydicom", pydicom.uid.RLELossless), ("j2k", pydicom.uid.JPEG2000Lossless)):
            (root / kind / codec).mkdir()
            dst = []
            for k, ds in enumerate(copy.deepcopy(slices)):
                try:
                    ds.compress(uid)
                except (RuntimeError, ValueError):  # encoder plug-in missing or unsuitable
                    break
                d = root / kind / codec / f"{k}.dcm"
                ds.save_as(d, enforce_file_format=True)
                dst.append(d)
            else:
                out[f"{kind}/{codec}"] = dst
    return out


CASES = [f"{k}/{c}" for k in KINDS for c in (*LOSSLESS_DCMTK, "rle-pydicom", "j2k")]


@pytest.mark.parametrize("case", CASES)
def test_lossless_series_equals_uncompressed(series, case):
    if case not in series:
        pytest.skip(f"no encoder for {case} here")
    kind = case.split("/")[0]
    ref = load_volume(series[kind])
    vol = load_volume(series[case], workers=2)
    assert vol.array.dtype == ref.array.dtype
    assert np.array_equal(vol.array, ref.array)
    assert np.allclose(vol.affine, ref.affine)
    one = load_volume(series[case], workers=1)
    assert np.array_equal(one.array, ref.array)


@pytest.mark.parametrize("case", CASES)
def test_direct_decoder_equals_pydicom(series, case):
    if case not in series:
        pytest.skip(f"no encoder for {case} here")
    from pydicom.pixels import pixel_array

    for p in series[case]:
        ds = pydicom.dcmread(p)
        uid = str(ds.file_meta.TransferSyntaxUID)
        fast = pixels.decode_encapsulated_frame(ds, 0, uid=uid)
        if pixels.fast_decode_available(uid):
            assert fast is not None, f"{case}: the direct path declined {p.name}"
        if fast is None:
            continue
        ref = np.asarray(pixel_array(ds, index=0, raw=False))
        assert fast.dtype == ref.dtype and fast.shape == ref.shape
        assert np.array_equal(fast, ref)


@pytest.mark.parametrize("case", [*KINDS, *CASES])
def test_quick_file_read_equals_pydicom_read(series, monkeypatch, case):
    """load_volume's quick header read (dicom/quickheader) gives the volume that the
    pydicom header read of the same files gives."""
    if case not in series:
        pytest.skip(f"no encoder for {case} here")
    import osirix_py.imaging.volume as volume

    made = []
    real = volume._quick_record

    def counting(*a, **k):
        rec = real(*a, **k)
        made.append(rec)
        return rec

    monkeypatch.setattr(volume, "_quick_record", counting)
    quick = load_volume(series[case])
    assert all(r is not None for r in made) and len(made) == N
    monkeypatch.setattr(volume, "_quick_record", lambda *a, **k: None)
    slow = load_volume(series[case])
    assert quick.array.dtype == slow.array.dtype
    assert np.array_equal(quick.array, slow.array)
    assert np.array_equal(quick.affine, slow.affine)
    assert quick.sources == slow.sources
    assert quick.value_range == slow.value_range
    assert [str(i) for i in quick.report.issues] == [str(i) for i in slow.report.issues]


def test_fast_path_is_used_for_compressed_volumes(series, monkeypatch):
    case = next((c for c in ("s16/jpeg-sv1", "s16/j2k", "s16/rle-pydicom") if c in series), None)
    if case is None:
        pytest.skip("no compressed series")
    import osirix_py.imaging.volume as volume

    def boom(*a, **k):
        raise AssertionError("pydicom path used")

    ref = load_volume(series["s16"])
    monkeypatch.setattr(volume, "decode_frame", boom)
    assert np.array_equal(load_volume(series[case]).array, ref.array)


def test_without_imagecodecs_falls_back_to_pydicom(series, monkeypatch):
    monkeypatch.setattr(pixels, "_codecs_state", [None, False])
    assert not pixels.fast_decode_available("1.2.840.10008.1.2.4.70")
    for case in ("s12/jpeg-sv1", "u12/j2k", "s16/rle-pydicom"):
        if case in series:
            ref = load_volume(series[case.split("/")[0]])
            assert np.array_equal(load_volume(series[case]).array, ref.array)


@pytest.mark.parametrize("kind,cmd", [
    ("u8", ["dcmcjpeg", "+eb"]),      # JPEG baseline (process 1)
    ("u12", ["dcmcjpeg", "+ee"]),     # JPEG extended (process 4), 12-bit
    ("u12", ["dcmcjpls", "+en"]),     # JPEG-LS near-lossless (dcmtk: unsigned only)
    ("u8", ["dcmcjpls", "+en"]),
])
def test_lossy_series_equal_pydicom_decode(series, tmp_path, kind, cmd):
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} (dcmtk) is not installed")
    from pydicom.pixels import pixel_array

    paths = []
    for p in series[kind]:
        d = tmp_path / p.name
        subprocess.run([*cmd, str(p), str(d)], check=True, capture_output=True, timeout=60)
        paths.append(d)
    vol = load_volume(paths, workers=2)
    expected = []
    for p in paths:
        ds = pydicom.dcmread(p)
        fast = pixels.decode_encapsulated_frame(ds, 0)
        ref = np.asarray(pixel_array(ds, index=0, raw=False))
        assert fast is not None and fast.dtype == ref.dtype and np.array_equal(fast, ref)
        expected.append(ref.astype(np.int64) + int(float(ds.RescaleIntercept)))
    assert np.array_equal(vol.array, np.stack(expected))


def _enhanced(kind: str) -> Dataset:
    """One multi-frame (enhanced CT) object holding the series of ``kind``, frames reversed."""
    slices = _slices(kind)
    ds = copy.deepcopy(slices[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
               "RescaleSlope", "RescaleIntercept", "InstanceNumber"):
        delattr(ds, kw)
    ds.NumberOfFrames = N
    shared = Dataset()
    po, pm, pvt = Dataset(), Dataset(), Dataset()
    po.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    pm.PixelSpacing, pm.SliceThickness = ["0.5", "0.75"], "2"
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "1", KINDS[kind][5], "HU"
    shared.PlaneOrientationSequence = [po]
    shared.PixelMeasuresSequence = [pm]
    shared.PixelValueTransformationSequence = [pvt]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for s in reversed(slices):
        f, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = list(s.ImagePositionPatient)
        f.PlanePositionSequence = [pp]
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = b"".join(s.PixelData for s in reversed(slices))
    return ds


@pytest.mark.parametrize("uid", [pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless])
def test_compressed_multiframe_equals_uncompressed(series, tmp_path, uid):
    ds = _enhanced("s16")
    p0 = tmp_path / "raw.dcm"
    ds.save_as(p0, enforce_file_format=True)
    try:
        ds.compress(uid)
    except (RuntimeError, ValueError) as exc:
        pytest.skip(str(exc))
    p1 = tmp_path / "enc.dcm"
    ds.save_as(p1, enforce_file_format=True)
    ref = load_volume(p0)
    vol = load_volume(p1, workers=2)
    assert np.array_equal(vol.array, ref.array)
    assert np.array_equal(vol.array, load_volume(series["s16"]).array)
