"""Pixel decoding (every pydicom-data file), lossless twins, the display pipeline, SUV."""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from osirix_py.dicom import pixels as px

# Files in pydicom-data that are broken on purpose, and the attribute the
# error must name.
BROKEN = {
    "MR_truncated.dcm": "(7FE0,0010)",  # pixel data shorter than Rows x Columns
    "nested_priv_SQ.dcm": "(0028,0010)",  # pixel data without an Image Pixel module
    "meta_missing_tsyntax.dcm": "(0028,0010)",
    "badVR.dcm": None,  # (0028,0101) Bits Stored holds "1A"
}


def _quiet_files():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = get_testdata_files("*")
    out = []
    for f in sorted(files):
        p = Path(f)
        if not p.is_file():
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, force=True)
        except Exception:  # noqa: BLE001 - not a dataset at all
            continue
        if "PixelData" in ds:
            out.append(f)
    return out


PIXEL_FILES = _quiet_files()


def _read(name_or_path):
    path = name_or_path if Path(str(name_or_path)).is_file() else get_testdata_file(name_or_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _frames(ds):
    return px.decode(ds)


def test_pydicom_data_is_installed():
    assert len(PIXEL_FILES) >= 100


@pytest.mark.parametrize("path", PIXEL_FILES, ids=[Path(p).name for p in PIXEL_FILES])
def test_every_pydicom_data_file_decodes_and_renders(path):
    name = Path(path).name
    ds = _read(path)
    if name in BROKEN:
        with pytest.raises(px.PixelDataError) as exc:
            px.decode_frame(ds, 0)
        if BROKEN[name]:
            assert BROKEN[name] in str(exc.value)
        return
    n = px.frame_count(ds)
    last = px.decode_frame(ds, n - 1)
    assert last.shape[:2] == (int(ds.Rows), int(ds.Columns))
    assert last.dtype.byteorder in ("=", "|")
    pipeline = px.DisplayPipeline.from_dataset(ds, n - 1)
    img = pipeline.render(last)
    assert img.dtype == np.uint8
    assert img.shape[:2] == last.shape[:2]
    if pipeline.is_color:
        assert img.ndim == 3 and img.shape[2] == 3
    else:
        assert img.ndim == 2


LOSSLESS_TWINS = [
    ("MR_small.dcm", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
                      "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm",
                      "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"]),
    ("emri_small.dcm", ["emri_small_RLE.dcm", "emri_small_big_endian.dcm",
                        "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm"]),
    ("SC_rgb.dcm", ["SC_rgb_expb.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm",
                    "SC_rgb_gdcm_KY.dcm", "SC_rgb_gdcm2k_uncompressed.dcm"]),
    ("SC_rgb_2frame.dcm", ["SC_rgb_expb_2frame.dcm", "SC_rgb_rle_2frame.dcm"]),
    ("SC_rgb_16bit.dcm", ["SC_rgb_expb_16bit.dcm", "SC_rgb_rle_16bit.dcm"]),
    ("SC_rgb_16bit_2frame.dcm", ["SC_rgb_expb_16bit_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm"]),
    ("SC_rgb_32bit.dcm", ["SC_rgb_expb_32bit.dcm", "SC_rgb_rle_32bit.dcm"]),
    ("SC_rgb_32bit_2frame.dcm", ["SC_rgb_expb_32bit_2frame.dcm", "SC_rgb_rle_32bit_2frame.dcm"]),
    ("OBXXXX1A.dcm", ["OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"]),
    ("OBXXXX1A_2frame.dcm", ["OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_rle_2frame.dcm"]),
    ("rtdose.dcm", ["rtdose_expb.dcm", "rtdose_rle.dcm"]),
    ("rtdose_1frame.dcm", ["rtdose_expb_1frame.dcm", "rtdose_rle_1frame.dcm"]),
    ("liver.dcm", ["liver_expb.dcm"]),
    ("liver_1frame.dcm", ["liver_expb_1frame.dcm"]),
    ("gdcm-US-ALOKA-16.dcm", ["gdcm-US-ALOKA-16_big.dcm"]),
    ("SC_rgb_small_odd.dcm", ["SC_rgb_small_odd_big_endian.dcm"]),
    ("693_UNCR.dcm", ["693_J2KR.dcm"]),
    ("MR2_UNCR.dcm", ["MR2_J2KR.dcm"]),
    ("RG1_UNCR.dcm", ["RG1_J2KR.dcm"]),
    ("RG3_UNCR.dcm", ["RG3_J2KR.dcm"]),
    ("US1_UNCR.dcm", ["US1_J2KR.dcm"]),  # JPEG 2000 YBR_RCT vs RGB
]

_PAIRS = [(ref, twin) for ref, twins in LOSSLESS_TWINS for twin in twins]


@pytest.mark.parametrize("ref, twin", _PAIRS, ids=[f"{a}={b}" for a, b in _PAIRS])
def test_lossless_twins_are_bit_exact(ref, twin):
    a = _frames(_read(ref))
    b = _frames(_read(twin))
    assert a.shape == b.shape
    assert np.array_equal(a, b)


# Lossy files and the toolkit's decompressed versions of them
LOSSY_REFERENCES = [
    ("693_UNCI.dcm", "693_J2KI.dcm", 1),
    ("MR2_UNCI.dcm", "MR2_J2KI.dcm", 1),
    ("RG1_UNCI.dcm", "RG1_J2KI.dcm", 1),
    ("RG3_UNCI.dcm", "RG3_J2KI.dcm", 1),
    ("US1_UNCI.dcm", "US1_J2KI.dcm", 1),
    ("JPEG2000_UNC.dcm", "JPEG2000.dcm", 1),
    ("SC_rgb_dcmtk_ebcr_dcmd.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", 1),
    ("SC_rgb_dcmtk_ebcyn1_dcmd.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm", 2),
    ("SC_rgb.dcm", "SC_rgb_jls_lossy_line.dcm", 2),  # JPEG-LS NEAR=2
]


@pytest.mark.parametrize("ref, lossy, tol", LOSSY_REFERENCES, ids=[b for _, b, _ in LOSSY_REFERENCES])
def test_lossy_files_match_their_decompressed_reference(ref, lossy, tol):
    a = _frames(_read(ref)).astype(np.int64)
    b = _frames(_read(lossy)).astype(np.int64)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol


def test_jpeg_with_bad_scan_header_is_repaired():
    # JPEG-lossy.dcm has Se=0 in its SOS segment; JPGExtended.dcm is the same image, well formed
    a = px.decode_frame(_read("JPEG-lossy.dcm"))
    b = px.decode_frame(_read("JPGExtended.dcm"))
    assert np.array_equal(a, b)


def test_jpeg2000_with_corrupt_siz_is_repaired():
    ds = _read("JPEG2000-embedded-sequence-delimiter.dcm")
    a = px.decode_frame(ds)
    assert a.shape == (1024, 256)
    # a lossy (2097:1) version of a whole-body bone scan: plausible counts
    assert -100 < a.min() and a.max() < 400 and a.max() > 100


def test_ybr_is_converted_to_rgb():
    ref = px.decode_frame(_read("SC_rgb.dcm")).astype(int)
    for name in ("SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        ds = _read(name)
        assert px.photometric_after_decode(ds) == "RGB"
        assert np.abs(px.decode_frame(ds).astype(int) - ref).max() <= 6


def test_transfer_syntax_inferred_without_file_meta():
    ds = _read("OT-PAL-8-face.dcm")
    assert "TransferSyntaxUID" not in getattr(ds, "file_meta", {})
    assert px.transfer_syntax_of(ds) == "1.2.840.10008.1.2"
    img = px.render(ds)
    assert img.shape == (480, 640, 3) and img.max() > 200
    # the caller's dataset is not modified
    assert "TransferSyntaxUID" not in getattr(ds, "file_meta", {})


def test_unsupported_transfer_syntax_names_it():
    ds = copy.deepcopy(_read("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2
    with pytest.raises(px.PixelDataError) as exc:
        px.decode_frame(ds)
    assert "1.2.840.10008.1.2.4.100" in str(exc.value)


def test_missing_codec_names_syntax_and_package(monkeypatch):
    import pydicom.pixels as pp

    class _Unavailable:
        is_available = False
        missing_dependencies = {"pylibjpeg": ["pylibjpeg-openjpeg"]}

    monkeypatch.setattr(pp, "get_decoder", lambda uid: _Unavailable())
    monkeypatch.setattr(px, "_codecs_state", [None, False])  # no direct (imagecodecs) decoder either
    ds = _read("MR_small_jp2klossless.dcm")
    with pytest.raises(px.MissingCodecError) as exc:
        px.decode_frame(ds)
    msg = str(exc.value)
    assert "1.2.840.10008.1.2.4.90" in msg and "JPEG 2000" in msg and "pylibjpeg-openjpeg" in msg
    assert exc.value.packages == ("pylibjpeg", "pylibjpeg-openjpeg")


def test_frame_out_of_range():
    with pytest.raises(px.PixelDataError, match="Number of Frames"):
        px.decode_frame(_read("MR_small.dcm"), 3)


def test_decode_frames_into_preallocated_output():
    ds = _read("emri_small.dcm")
    out = np.empty((3, 64, 64), np.uint16)
    res = px.decode_frames(ds, [9, 0, 4], out=out)
    assert res is out
    full = px.decode(ds)
    assert np.array_equal(out, full[[9, 0, 4]])


# ---------------------------------------------------------------------------
# synthetic datasets


def _mono(arr, *, signed=True, bits_stored=16, slope=None, intercept=None, photometric="MONOCHROME2", **extra):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    arr = np.asarray(arr)
    ds.Rows, ds.Columns = arr.shape[-2:]
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return ds


def test_bits_stored_less_than_allocated_masks_and_sign_extends():
    raw = np.array([[0x0FFF, 0xF800, 0x0801, 0x7001]], dtype=np.uint16)  # garbage above bit 11
    ds = _mono(raw, signed=False, bits_stored=12)
    assert px.decode_frame(ds).tolist() == [[4095, 2048, 2049, 1]]
    ds = _mono(raw, signed=True, bits_stored=12)
    out = px.decode_frame(ds)
    assert out.dtype == np.int16
    assert out.tolist() == [[-1, -2048, -2047, 1]]


def test_modality_rescale_and_lut_sequence():
    ds = _mono(np.array([[0, 100, 2000]], np.int16), slope="2", intercept="-1024", Modality="CT")
    m = px.ModalityLUT.from_dataset(ds)
    assert m.units == "HU" and m.is_integral
    assert m.apply(px.decode_frame(ds)).tolist() == [[-1024, -824, 2976]]
    ds = _read("mlut_18.dcm")
    stored = px.decode_frame(ds)
    m = px.ModalityLUT.from_dataset(ds)
    from pydicom.pixels import apply_modality_lut

    assert np.array_equal(m.apply(stored, np.int64), apply_modality_lut(stored, ds).astype(np.int64))


def test_enhanced_ct_per_frame_rescale_and_window():
    ds = _read("eCT_Supplemental.dcm")
    m = px.ModalityLUT.from_dataset(ds, 1)
    assert m.intercept == -1024.0 and m.slope == 1.0
    w = px.windows_from_dataset(ds, 1)
    assert w and w[0].center == 49.0 and w[0].width == 102.0


def test_window_functions_match_the_standard():
    lin = px.Window(40, 400)
    x = np.array([-1000, -160.5, -160.4, 40, 239.5, 239.6, 3000])
    y = px.window_values(x, lin)
    assert y[0] == 0 and y[1] == 0 and y[-1] == 255 and y[-2] == 255
    assert y[3] == pytest.approx(((40 - 39.5) / 399 + 0.5) * 255)
    assert y[4] == pytest.approx(255.0)
    exact = px.Window(40, 400, "LINEAR_EXACT")
    y = px.window_values(np.array([-160, -159, 40, 240, 241]), exact)
    assert y[0] == 0 and y[2] == pytest.approx(127.5) and y[3] == pytest.approx(255) and y[4] == 255
    sig = px.Window(40, 400, "SIGMOID")
    y = px.window_values(np.array([40.0, 140.0]), sig)
    assert y[0] == pytest.approx(127.5)
    assert y[1] == pytest.approx(255 / (1 + math.exp(-1)))
    assert px.Window(0, 0.5).width == 1.0  # LINEAR needs width >= 1
    assert px.Window(1, 2, "bogus").function == "LINEAR"


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int8, np.uint8, np.float32, np.int32])
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_apply_window_lut_equals_float_reference(dtype, function):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    rng = np.random.default_rng(0)
    if info is not None:
        lo, hi = max(info.min, -3000), min(info.max, 3000)
        arr = rng.integers(lo, hi, size=(64, 64), endpoint=True).astype(dtype)
    else:
        arr = rng.uniform(-3000, 3000, size=(64, 64)).astype(dtype)
    w = px.Window(30, 150 if np.dtype(dtype).itemsize > 1 else 60, function)
    ref = np.clip(np.floor(px.window_values(arr, w) + 0.5), 0, 255)
    got = px.apply_window(arr, w)
    assert got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref).max() <= (1 if np.dtype(dtype).kind == "f" else 0)
    inv = px.apply_window(arr, w, invert=True)
    assert np.array_equal(inv, 255 - got)


def test_apply_window_is_fast():
    arr = np.random.default_rng(1).integers(-1024, 3000, size=(512, 512)).astype(np.int16)
    out = np.empty((512, 512), np.uint8)
    px.apply_window(arr, (40, 400), out=out)  # builds the LUT once
    times = []
    for _ in range(20):
        t = time.perf_counter()
        px.apply_window(arr, (40, 400), out=out)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 0.005  # ~0.35 ms on a 2-core EPYC


def test_big_endian_array_windows_like_native():
    arr = np.arange(-500, 500, dtype=np.int16).reshape(10, 100)
    be = arr.astype(">i2")
    assert np.array_equal(px.apply_window(be, (0, 500)), px.apply_window(arr, (0, 500)))


def test_pipeline_lut_equals_chain_for_stored_values():
    ds = _mono(np.zeros((2, 2), np.int16), slope="1.5", intercept="-100", WindowCenter="50",
               WindowWidth="300", Modality="CT")
    p = px.DisplayPipeline.from_dataset(ds)
    stored = np.random.default_rng(2).integers(-2000, 2000, size=(32, 32)).astype(np.int16)
    got = p.render(stored)
    ref = np.clip(np.floor(px.window_values(stored * 1.5 - 100, px.Window(50, 300)) + 0.5), 0, 255)
    assert np.array_equal(got, ref.astype(np.uint8))
    # an explicit window overrides the file's
    got2 = p.render(stored, (0, 1000))
    ref2 = np.clip(np.floor(px.window_values(stored * 1.5 - 100, px.Window(0, 1000)) + 0.5), 0, 255)
    assert np.array_equal(got2, ref2.astype(np.uint8))


def test_monochrome1_is_inverted():
    arr = np.array([[0, 1000, 4095]], np.uint16)
    m2 = px.DisplayPipeline.from_dataset(_mono(arr, signed=False, bits_stored=12))
    m1 = px.DisplayPipeline.from_dataset(_mono(arr, signed=False, bits_stored=12, photometric="MONOCHROME1"))
    w = px.Window(2048, 4096)
    assert np.array_equal(m1.render(arr, w), 255 - m2.render(arr, w))
    assert m1.render(arr, w)[0, 0] == 255  # lowest value is white
    ds = _read("RG1_UNCR.dcm")
    assert px.DisplayPipeline.from_dataset(ds).invert


def test_presentation_lut_shape_inverse():
    arr = np.array([[0, 100]], np.uint16)
    ds = _mono(arr, signed=False, PresentationLUTShape="INVERSE")
    assert px.DisplayPipeline.from_dataset(ds).render(arr, (50, 100)).tolist() == [[255, 0]]


def test_pixel_padding_is_black():
    arr = np.array([[-2000, -2000, 0, 1000]], np.int16)
    # a window below every value: all white, except the padding
    ds = _mono(arr, intercept="-1024", slope="1", WindowCenter="-3500", WindowWidth="10", Modality="CT")
    ds.PixelPaddingValue = -2000
    p = px.DisplayPipeline.from_dataset(ds)
    assert p.padding == (-2000, -2000)
    img = p.render(arr)
    assert img[0, 0] == 0 and img[0, 1] == 0 and img[0, 2] == 255
    # padding range (0028,0121)
    ds.PixelPaddingRangeLimit = -1500
    assert px.padding_range(ds) == (-2000, -1500)
    # unsigned data with a US padding value
    ds2 = _mono(np.array([[65535, 3]], np.uint16), signed=False)
    ds2.PixelPaddingValue = 65535
    assert px.padding_range(ds2) == (65535, 65535)


def test_voi_lut_sequence_is_used():
    ds = _read("vlut_04.dcm")
    stored = px.decode_frame(ds)
    p = px.DisplayPipeline.from_dataset(ds)
    assert p.voi_luts and not p.windows
    img = p.render(stored)
    from pydicom.pixels import apply_voi

    voi = apply_voi(stored, ds).astype(np.float64)
    expected = np.clip(np.floor(voi * 255.0 / p.voi_luts[0].max_output + 0.5), 0, 255)
    assert np.array_equal(img, expected.astype(np.uint8))


def test_no_window_uses_the_frame_range():
    arr = np.array([[100, 200], [300, 400]], np.uint16)
    img = px.DisplayPipeline.from_dataset(_mono(arr, signed=False)).render(arr)
    assert img.min() == 0 and img.max() == 255


def test_palette_colour_rendering():
    ds = _read("OBXXXX1A.dcm")
    stored = px.decode_frame(ds)
    img = px.DisplayPipeline.from_dataset(ds).render(stored)
    from pydicom.pixels import apply_color_lut

    ref = apply_color_lut(stored, ds)[..., :3]
    if ref.dtype != np.uint8:
        ref = (ref >> 8).astype(np.uint8)
    assert np.array_equal(img, ref)
    big = _read("OBXXXX1A_expb.dcm")  # 8-bit entries declared as 16
    assert np.array_equal(px.render(big), img)


def test_rgb_16_and_32_bit_scale_to_8_bits():
    a8 = px.render(_read("SC_rgb.dcm"))
    a16 = px.render(_read("SC_rgb_16bit.dcm"))
    a32 = px.render(_read("SC_rgb_32bit.dcm"))
    assert a16.dtype == a32.dtype == np.uint8
    assert np.abs(a16.astype(int) - a8).max() <= 1
    assert np.abs(a32.astype(int) - a8).max() <= 1


def test_auto_window():
    w = px.auto_window(np.array([0, 10, 20, 1000]), (0, 75))
    assert w.lower == pytest.approx(0) and w.upper == pytest.approx(265.0)  # linear percentile
    w = px.auto_window(np.array([-2000, 0, 100]), exclude=(-2000, -2000))
    assert w.lower == 0 and w.upper == 100


# ---------------------------------------------------------------------------
# SUV


def _pet(**over):
    ds = Dataset()
    ds.Modality = "PT"
    ds.Units = "BQML"
    ds.PatientWeight = "70"
    ds.DecayCorrection = "START"
    ds.SeriesDate = "20240101"
    ds.SeriesTime = "110000"
    ds.AcquisitionDate = "20240101"
    ds.AcquisitionTime = "110500"
    item = Dataset()
    item.RadionuclideTotalDose = "370000000"
    item.RadionuclideHalfLife = "6586.2"
    item.RadiopharmaceuticalStartTime = "100000"
    ds.RadiopharmaceuticalInformationSequence = [item]
    for k, v in over.items():
        if k.startswith("item_"):
            if v is None:
                delattr(item, k[5:])
            else:
                setattr(item, k[5:], v)
        elif v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def test_suv_body_weight_factor():
    expected = 70000 / (370e6 * 2 ** (-3600 / 6586.2))
    assert px.suv_bw_factor(_pet()) == pytest.approx(expected, rel=1e-12)
    # the series time is later than the acquisition (post-processed series): use the acquisition
    late = _pet(SeriesTime="120000", AcquisitionTime="110000")
    assert px.suv_bw_factor(late) == pytest.approx(expected, rel=1e-12)
    # ADMIN: decay corrected to the injection
    assert px.suv_bw_factor(_pet(DecayCorrection="ADMIN")) == pytest.approx(70000 / 370e6)
    # NONE: the image's own acquisition time
    none = 70000 / (370e6 * 2 ** (-3900 / 6586.2))
    assert px.suv_bw_factor(_pet(DecayCorrection="NONE")) == pytest.approx(none)
    # across midnight without dates
    night = _pet(SeriesDate=None, AcquisitionDate=None, SeriesTime="003000", AcquisitionTime="003000",
                 item_RadiopharmaceuticalStartTime="233000")
    assert px.suv_bw_factor(night) == pytest.approx(expected, rel=1e-12)
    # start date-time wins over the time
    dt = _pet(item_RadiopharmaceuticalStartDateTime="20240101100000")
    assert px.suv_bw_factor(dt) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "over, tag",
    [
        ({"Units": "CNTS"}, "(0054,1001)"),
        ({"PatientWeight": None}, "(0010,1030)"),
        ({"PatientWeight": "0"}, "(0010,1030)"),
        ({"item_RadionuclideTotalDose": None}, "(0018,1074)"),
        ({"item_RadionuclideHalfLife": None}, "(0018,1075)"),
        ({"item_RadiopharmaceuticalStartTime": None}, "(0018,1072)"),
        ({"RadiopharmaceuticalInformationSequence": None}, "(0054,0016)"),
    ],
)
def test_suv_missing_tags_are_named(over, tag):
    with pytest.raises(px.SUVError) as exc:
        px.suv_bw_factor(_pet(**over))
    assert tag in str(exc.value)


# ---------------------------------------------------------------------------
# window presets (resources/window_presets.json)


def test_ct_presets_are_complete():
    from osirix_py.imaging import get_preset, presets_for

    names = {p.name.lower() for p in presets_for("CT")}
    for needed in ("brain", "subdural", "stroke", "lung", "mediastinum", "abdomen", "liver", "bone"):
        assert needed in names
    lung = get_preset("ct", "LUNG").window()
    assert (lung.center, lung.width) == (-600, 1500)
    brain = get_preset("CT", "Brain").window()
    # LINEAR (C.11.2.1.2.1): x = c maps to ((c - (c - 0.5)) / (w - 1) + 0.5) * 255 = 129.1
    assert px.apply_window(np.array([[0, 40, 80]], np.int16), brain).tolist() == [[0, 129, 255]]


def test_auto_and_suv_presets():
    from osirix_py.imaging import PresetError, get_preset, presets_for

    mr = presets_for("MR")[0]
    assert mr.is_auto
    values = np.arange(1000)
    w = mr.window(values)
    assert w.lower == pytest.approx(np.percentile(values, 1)) and w.upper == pytest.approx(np.percentile(values, 99))
    with pytest.raises(PresetError):
        mr.window()
    suv = get_preset("PT", "SUV 0-5")
    w = suv.window(suv_factor=2e-4)  # SUV 0..5 is 0..25000 Bq/ml
    assert w.lower == pytest.approx(0, abs=1) and w.upper == pytest.approx(25000, abs=1)
    with pytest.raises(PresetError, match="SUV"):
        suv.window()
    assert presets_for("OT") == presets_for("*")
    with pytest.raises(PresetError, match="no CT preset"):
        get_preset("CT", "nonsense")


def test_invalid_presets_file(tmp_path):
    from osirix_py.imaging import PresetError, load_presets

    bad = tmp_path / "p.json"
    bad.write_text('{"schema": "osirix-py/window-presets", "version": 1, "presets": {"CT": [{"name": "x"}]}}')
    with pytest.raises(PresetError, match="invalid preset"):
        load_presets(bad)
    bad.write_text("{not json")
    with pytest.raises(PresetError):
        load_presets(bad)
    with pytest.raises(PresetError):
        load_presets(tmp_path / "missing.json")
