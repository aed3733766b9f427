"""Volumes built from slices of exactly known geometry."""

from __future__ import annotations

import copy
import math
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from osirix_py.imaging import Volume, VolumeError, load_volume, load_volumes
from osirix_py.imaging.volume import PlanarImage

SERIES = "1.2.826.0.1.3680043.8.498.1"
FOR = "1.2.826.0.1.3680043.8.498.2"


def _ds(v: float) -> str:
    return format_number_as_ds(float(v) + 0.0)


def _rotation(axis, deg):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def pattern(k: int, rows: int, cols: int) -> np.ndarray:
    """Stored values of slice k: unique per slice and pixel."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (100 * k + 3 * r + c).astype(np.int16)


def make_slices(
    n: int = 6,
    rows: int = 8,
    cols: int = 10,
    *,
    spacing=(0.5, 0.75),
    row=(1.0, 0.0, 0.0),
    col=(0.0, 1.0, 0.0),
    origin=(-10.0, 20.0, 30.0),
    step=None,
    distances=None,
    slope="1",
    intercept="-1024",
    series_uid=SERIES,
    instance_numbers=None,
    modality="CT",
    values=None,
    extra=None,
):
    """In-memory CT slices. Slice k lies at origin + d_k * step (d_k = k or distances[k])."""
    row = np.array([float(_ds(v)) for v in row])
    col = np.array([float(_ds(v)) for v in col])
    normal = np.cross(row, col)
    step = normal * 2.0 if step is None else np.asarray(step, float)
    d = list(range(n)) if distances is None else list(distances)
    out = []
    for k, dk in enumerate(d):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.3"
        ds.FrameOfReferenceUID = FOR
        ds.Modality = modality
        ds.InstanceNumber = (instance_numbers[k] if instance_numbers else k + 1)
        ds.ImagePositionPatient = [_ds(v) for v in np.asarray(origin, float) + dk * step]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(spacing[0]), _ds(spacing[1])]
        ds.SliceThickness = "2"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        if slope is not None:
            ds.RescaleSlope = slope if isinstance(slope, str) else slope[k]
        if intercept is not None:
            ds.RescaleIntercept = intercept
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        arr = pattern(k, rows, cols) if values is None else values[k]
        ds.PixelData = np.asarray(arr).astype("<i2").tobytes()
        for kk, vv in (extra or {}).items():
            setattr(ds, kk, vv[k] if isinstance(vv, list) else vv)
        out.append(ds)
    return out


def expected_affine(ds0, step, spacing=(0.5, 0.75)):
    iop = [float(v) for v in ds0.ImageOrientationPatient]
    row, col = np.array(iop[:3]), np.array(iop[3:])
    a = np.eye(4)
    a[:3, 0] = row * float(spacing[1])
    a[:3, 1] = col * float(spacing[0])
    a[:3, 2] = step
    a[:3, 3] = [float(v) for v in ds0.ImagePositionPatient]
    return a


# ---------------------------------------------------------------------------
# sorting and the affine


def test_axial_stack_sorted_by_position_not_instance_number():
    slices = make_slices(6, instance_numbers=[3, 1, 6, 2, 5, 4])
    shuffled = [slices[i] for i in (4, 0, 5, 2, 1, 3)]
    vol = load_volume(shuffled)
    assert vol.shape == (6, 8, 10)
    assert vol.array.dtype == np.int16
    assert np.allclose(vol.affine, expected_affine(slices[0], [0, 0, 2.0]), atol=1e-9)
    for k in range(6):
        assert np.array_equal(vol.array[k], pattern(k, 8, 10) - 1024)
        assert vol.sources[k].sop_instance_uid == slices[k].SOPInstanceUID
    assert vol.units == "HU" and vol.modality == "CT"
    assert vol.window is not None and vol.window.center == 40
    assert not vol.report.issues
    assert vol.spacing == pytest.approx((2.0, 0.5, 0.75))
    assert vol.is_regular and vol.is_orthogonal


def test_reversed_order_is_sorted_along_the_normal():
    # slices advance towards the feet: the volume still goes along +normal
    slices = make_slices(5, origin=(0, 0, 100), step=[0, 0, -2.5])
    vol = load_volume(slices)
    # sorted along the normal (+z): the first slice is the most inferior one
    assert np.allclose(vol.origin, [0, 0, 90])
    assert np.allclose(vol.affine[:3, 2], [0, 0, 2.5])
    assert np.array_equal(vol.array[0], pattern(4, 8, 10) - 1024)


def test_oblique_orientation_exact_affine_and_voxel_positions():
    r = _rotation([1, -2, 0.5], 37)
    row, col = r[:, 0], r[:, 1]
    slices = make_slices(7, row=row, col=col, origin=(12.5, -40, 7))
    rr = np.array([float(v) for v in slices[0].ImageOrientationPatient[:3]])
    cc = np.array([float(v) for v in slices[0].ImageOrientationPatient[3:]])
    normal = np.cross(rr, cc)
    vol = load_volume(slices[::-1])
    assert np.allclose(vol.affine, expected_affine(slices[0], normal * 2.0), atol=1e-9)
    # every voxel centre is where its slice header says (C.7.6.2.1.1)
    for k in (0, 3, 6):
        ipp = np.array([float(v) for v in slices[k].ImagePositionPatient])
        p = vol.index_to_patient([[4, 5, k]])[0]
        assert np.allclose(p, ipp + 4 * 0.75 * rr + 5 * 0.5 * cc, atol=1e-9)
    back = vol.patient_to_index(vol.index_to_patient([[1.5, 2.25, 3.5]]))
    assert np.allclose(back, [[1.5, 2.25, 3.5]])


def test_gantry_tilt_is_detected_and_kept_exactly():
    t = math.radians(20)
    col = (0.0, math.cos(t), -math.sin(t))  # image plane tilted about x
    step = np.array([0, 0, 3.0])  # slices advance along the table
    slices = make_slices(6, col=col, step=step, extra={"GantryDetectorTilt": "20"})
    vol = load_volume(slices)
    assert vol.tilt_deg == pytest.approx(20.0, abs=1e-6)
    assert vol.report.has("gantry-tilt")
    assert "20" in str(vol.report)
    assert np.allclose(vol.affine[:3, 2], step, atol=1e-9)
    assert not vol.is_orthogonal
    assert vol.slice_spacing == pytest.approx(3.0 * math.cos(t))


def test_missing_slice_is_reported_and_interpolated():
    slices = make_slices(8)
    del slices[3]
    vol = load_volume(slices)
    assert vol.shape[0] == 8
    assert vol.report.has("missing-slices")
    assert np.allclose(vol.affine, expected_affine(slices[0], [0, 0, 2.0]), atol=1e-9)
    assert vol.sources[3].interpolated and not vol.sources[2].interpolated
    assert np.array_equal(vol.array[4], pattern(4, 8, 10) - 1024)
    expected = ((pattern(2, 8, 10).astype(float) + pattern(4, 8, 10)) / 2 - 1024)
    assert np.array_equal(vol.array[3], np.rint(expected).astype(np.int16))


def test_missing_slice_keep_and_error_modes():
    slices = make_slices(8)
    del slices[3]
    kept = load_volume(slices, irregular="keep")
    assert kept.shape[0] == 7 and not kept.is_regular
    assert np.allclose(kept.slice_positions, [30, 32, 34, 38, 40, 42, 44])
    assert kept.report.has("missing-slices")
    with pytest.raises(VolumeError) as exc:
        load_volume(slices, irregular="error")
    assert exc.value.code == "missing-slices"


def test_uneven_spacing_is_resampled_onto_a_regular_grid():
    d = [0, 1, 2, 3.5, 4.5, 5.5]  # in units of the 2 mm step: gaps 2, 2, 3, 2, 2 mm
    # values linear in the slice position make interpolation exact
    values = [np.full((8, 10), int(20 * dk), np.int16) for dk in d]
    slices = make_slices(6, distances=d, values=values)
    vol = load_volume(slices)
    assert vol.report.has("uneven-spacing")
    n = vol.shape[0]
    span = 11.0
    assert vol.affine[2, 2] == pytest.approx(span / (n - 1))
    positions = vol.slice_positions - vol.slice_positions[0]
    for k in range(n):
        assert vol.array[k, 0, 0] == pytest.approx(20 * positions[k] / 2 - 1024, abs=0.5)


def test_rounded_positions_are_kept_with_the_mean_step():
    d = [0, 1.0, 2.05, 3.0, 3.95, 5.0]  # up to 5 % of the spacing off: rounding
    vol = load_volume(make_slices(6, distances=d))
    assert vol.shape[0] == 6 and vol.report.has("position-jitter")
    assert not vol.report.has("uneven-spacing")
    assert vol.affine[2, 2] == pytest.approx(2.0)
    assert np.array_equal(vol.array[2], pattern(2, 8, 10) - 1024)


def test_mixed_orientations_and_sizes_are_split_with_reasons():
    axial = make_slices(4)
    coronal = make_slices(3, col=(0, 0, -1), origin=(0, 50, 0), step=[0, 2, 0])
    small = make_slices(3, rows=6, cols=6, origin=(0, 0, -50))
    vols = load_volumes(axial + coronal + small)
    assert sorted(v.shape for v in vols) == [(3, 6, 6), (3, 8, 10), (4, 8, 10)]
    assert "mixed-orientation" in vols.report.codes and "mixed-size" in vols.report.codes
    with pytest.raises(VolumeError) as exc:
        load_volume(axial + coronal)
    assert exc.value.code == "several-volumes"
    assert "(0020,0037)" in str(exc.value)


def test_several_series_are_split():
    a = make_slices(3, series_uid="1.2.3.1")
    b = make_slices(3, series_uid="1.2.3.2")
    vols = load_volumes(a + b)
    assert len(vols) == 2 and "several-series" in vols.report.codes


def test_shared_positions_are_split_by_echo():
    e1 = make_slices(4, extra={"EchoNumbers": "1"})
    e2 = make_slices(4, extra={"EchoNumbers": "2"}, values=[np.full((8, 10), 7, np.int16)] * 4)
    vols = load_volumes(e1 + e2)
    assert len(vols) == 2 and vols.report.has("split")
    assert "(0018,0086)" in str(vols.report)


def test_same_instance_twice_is_ignored():
    slices = make_slices(4)
    vol = load_volume(slices + [slices[2]])
    assert vol.shape[0] == 4 and vol.report.has("duplicate-instance")


def test_indistinguishable_duplicates_keep_one_and_report():
    slices = make_slices(4)
    dup = copy.deepcopy(slices[1])
    dup.SOPInstanceUID = generate_uid()
    vol = load_volume(slices + [dup])
    assert vol.shape[0] == 4 and vol.report.has("duplicate-position")


def test_bad_geometry_says_which_file_and_tag(tmp_path):
    slices = make_slices(3)
    del slices[1].ImageOrientationPatient
    paths = []
    for i, ds in enumerate(slices):
        p = tmp_path / f"s{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    vol = load_volume(paths)  # the other two still form a volume
    assert vol.shape[0] == 2
    assert str(paths[1]) in vol.report.rejected
    assert "(0020,0037)" in vol.report.rejected[str(paths[1])]
    with pytest.raises(VolumeError) as exc:
        load_volume([paths[1]])
    assert "(0020,0037)" in str(exc.value) and str(paths[1]) in str(exc.value)
    assert exc.value.files == [str(paths[1])]


def test_not_dicom_and_empty_inputs(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(VolumeError) as exc:
        load_volume([junk])
    assert exc.value.code == "empty" and "notes.txt" in str(exc.value)
    with pytest.raises(VolumeError):
        load_volume([])


def test_colour_images_are_rejected_with_reason():
    with pytest.raises(VolumeError, match=r"\(0028,0002\)"):
        load_volume(get_testdata_file("SC_rgb.dcm"))


def test_corrupt_pixel_data_names_the_file(tmp_path):
    slices = make_slices(3)
    slices[1].PixelData = slices[1].PixelData[:50]
    with pytest.raises(VolumeError) as exc:
        load_volume(slices)
    assert exc.value.code == "undecodable"


# ---------------------------------------------------------------------------
# values and dtypes


def test_values_that_do_not_fit_int16_widen():
    vals = [np.full((4, 5), 100 * k, np.uint16) for k in range(3)]
    vals[1][2, 3] = 40000
    slices = make_slices(3, rows=4, cols=5, intercept=None, slope=None, modality="MR")
    for ds, v in zip(slices, vals):
        ds.PixelRepresentation = 0
        ds.PixelData = v.astype("<u2").tobytes()
    vol = load_volume(slices)
    assert vol.array.dtype == np.int32 and vol.array.max() == 40000
    assert vol.report.has("wide-dtype")


def test_unsigned_mr_that_fits_stays_int16():
    slices = make_slices(3, intercept=None, slope=None, modality="MR")
    for ds in slices:
        ds.PixelRepresentation = 0
    vol = load_volume(slices)
    assert vol.array.dtype == np.int16 and vol.units == ""


def test_per_slice_float_slopes_give_float32():
    slices = make_slices(3, slope=["0.5", "0.25", "2"], intercept="0", modality="PT")
    vol = load_volume(slices, suv=False)
    assert vol.array.dtype == np.float32
    for k, s in enumerate((0.5, 0.25, 2.0)):
        assert np.allclose(vol.array[k], pattern(k, 8, 10) * s)


def test_files_decode_in_parallel_like_in_memory(tmp_path):
    slices = make_slices(12, rows=32, cols=24)
    paths = []
    for i, ds in enumerate(slices):
        p = tmp_path / f"IM{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    mem = load_volume(slices)
    files = load_volume(paths, workers=2)
    folder = load_volume(tmp_path, workers=1)
    assert np.array_equal(mem.array, files.array) and np.array_equal(mem.array, folder.array)
    assert np.allclose(mem.affine, files.affine)
    assert files.sources[0].path == str(paths[0])


def test_compressed_and_implicit_files_equal_uncompressed(tmp_path):
    from pydicom.uid import JPEG2000Lossless, RLELossless

    slices = make_slices(5, rows=64, cols=64)
    ref = load_volume(slices)
    for uid in (ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless):
        paths = []
        for i, ds in enumerate(copy.deepcopy(slices)):
            if uid == ImplicitVRLittleEndian:
                ds.file_meta.TransferSyntaxUID = uid
            else:
                try:
                    ds.compress(uid)
                except RuntimeError as exc:  # encoder plug-in missing
                    pytest.skip(str(exc))
            p = tmp_path / f"{uid.name[:6]}{i}.dcm"
            ds.save_as(p, enforce_file_format=True)
            paths.append(p)
        vol = load_volume(paths)
        assert np.array_equal(vol.array, ref.array), uid.name


def test_bits_stored_fast_path_masks_high_bits(tmp_path):
    slices = make_slices(3, rows=4, cols=4, intercept="0")
    paths = []
    for i, ds in enumerate(slices):
        raw = (pattern(i, 4, 4).astype(np.uint16) | 0xF000)  # garbage above bit 11
        ds.PixelRepresentation = 0
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = raw.astype("<u2").tobytes()
        p = tmp_path / f"b{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    vol = load_volume(paths)
    for k in range(3):
        assert np.array_equal(vol.array[k], pattern(k, 4, 4))


def test_peak_memory_stays_near_the_voxel_bytes(tmp_path):
    slices = make_slices(24, rows=256, cols=256)
    paths = []
    for i, ds in enumerate(slices):
        p = tmp_path / f"m{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    del slices
    voxel_bytes = 24 * 256 * 256 * 2
    tracemalloc.start()
    vol = load_volume(paths, workers=2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert vol.nbytes == voxel_bytes
    assert peak < 1.5 * voxel_bytes


# ---------------------------------------------------------------------------
# multi-frame


def make_enhanced(n=5, rows=6, cols=7, *, reverse=True):
    """An enhanced CT (per-frame functional groups) with frames in reverse spatial order."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = SERIES
    ds.FrameOfReferenceUID = FOR
    ds.Modality = "CT"
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
    pm = Dataset()
    pm.PixelSpacing = ["0.8", "0.6"]
    pm.SliceThickness = "1.5"
    pvt = Dataset()
    pvt.RescaleIntercept = "-1000"
    pvt.RescaleSlope = "1"
    pvt.RescaleType = "HU"
    shared.PlaneOrientationSequence = [po]
    shared.PixelMeasuresSequence = [pm]
    shared.PixelValueTransformationSequence = [pvt]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, data = [], []
    order = list(range(n))[::-1] if reverse else list(range(n))
    for k in order:
        f = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [_ds(-20 + 1.5 * k), "10", "40"]
        f.PlanePositionSequence = [pp]
        fc = Dataset()
        fc.StackID = "1"
        fc.InStackPositionNumber = k + 1
        f.FrameContentSequence = [fc]
        frames.append(f)
        data.append(pattern(k, rows, cols).astype(np.uint16))
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack(data).astype("<u2").tobytes()
    return ds


def test_enhanced_multiframe_per_frame_functional_groups():
    ds = make_enhanced()
    vol = load_volume(ds)
    assert vol.shape == (5, 6, 7)
    # sagittal: the normal (row x column) points to the patient's right (-x),
    # so the volume starts at the frame with the largest x
    expected = np.eye(4)
    expected[:3, 0] = [0, 0.6, 0]
    expected[:3, 1] = [0, 0, -0.8]
    expected[:3, 2] = [-1.5, 0, 0]
    expected[:3, 3] = [-14, 10, 40]
    assert np.allclose(vol.affine, expected)
    for k in range(5):
        assert np.array_equal(vol.array[k], pattern(4 - k, 6, 7) - 1000)
    assert vol.sources[0].frame == 0  # stored first (reverse order), lies first along -x


def test_enhanced_multiframe_from_file_with_many_frames(tmp_path):
    ds = make_enhanced(n=40, rows=5, cols=5, reverse=False)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    p = tmp_path / "enh.dcm"
    ds.save_as(p, enforce_file_format=True)
    vol = load_volume(p, workers=2)
    assert vol.shape == (40, 5, 5)
    assert np.array_equal(vol.array[33], pattern(39 - 33, 5, 5) - 1000)  # sorted along -x


def test_pydicom_data_multiframes():
    ect = load_volume(get_testdata_file("eCT_Supplemental.dcm"))
    assert ect.shape == (2, 512, 512) and ect.array.dtype == np.int16
    assert np.allclose(ect.normal, [0, 0, -1]) and ect.slice_spacing == pytest.approx(10)
    dose = load_volume(get_testdata_file("rtdose.dcm"))
    assert dose.shape == (15, 10, 10) and dose.array.dtype == np.float32
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    assert np.allclose(dose.array[3], ds.pixel_array[3] * float(ds.DoseGridScaling))
    assert dose.affine[2, 2] == pytest.approx(5.0)
    with pytest.raises(VolumeError, match="(0020,0032)"):
        load_volume(get_testdata_file("emri_small.dcm"))  # enhanced MR without its functional groups


def test_single_image_volume_and_planar_image():
    vol = load_volume(get_testdata_file("CT_small.dcm"))
    assert vol.shape == (1, 128, 128) and vol.report.has("single-slice")
    img = vol.slice_image(0)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    direct = PlanarImage.from_dataset(ds)
    assert np.array_equal(img.array, direct.array)
    assert np.allclose(img.plane.position, direct.plane.position)


def test_volume_from_array_and_geometry_helpers():
    vol = Volume(np.zeros((3, 4, 5), np.int16), np.diag([0.5, 0.6, 2.0, 1.0]))
    assert vol.spacing == (2.0, 0.6, 0.5)
    assert np.allclose(vol.center, [1.0, 0.9, 2.0])
    assert vol.corners().shape == (8, 3)
    assert vol.fill_value == 0.0
    assert np.allclose(vol.slice_plane(2).position, [0, 0, 4])
    with pytest.raises(VolumeError):
        Volume(np.zeros((2, 2, 2)), np.zeros((4, 4)))


# ---------------------------------------------------------------------------
# the synthetic phantom series (when that module is present)


def test_synthetic_phantom_voxels_match_the_affine():
    synthetic = pytest.importorskip("osirix_py.dicom.synthetic")
    r = _rotation([0.2, 1, 0.3], 25)
    orientation = [*r[:, 0], *r[:, 1]]
    series = synthetic.make_ct_series(slices=10, rows=48, columns=48, pixel_spacing=(5.0, 5.0),
                                      slice_spacing=6.0, orientation=orientation, omit=[4],
                                      reverse_instance_numbers=True)
    vol = load_volume(series)
    assert vol.report.has("missing-slices") and vol.shape == (10, 48, 48)
    kk, jj, ii = np.meshgrid(np.arange(10), np.arange(0, 48, 5), np.arange(0, 48, 5), indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
    keep = idx[:, 2] != 4
    hu = synthetic.hu_at(vol.index_to_patient(idx[keep]))
    got = vol.array[kk.ravel()[keep], jj.ravel()[keep], ii.ravel()[keep]]
    assert np.mean(got == hu) > 0.99  # the rest sit on region boundaries (DS rounding)


def test_synthetic_tilted_series():
    synthetic = pytest.importorskip("osirix_py.dicom.synthetic")
    series = synthetic.make_ct_series(slices=8, rows=32, columns=32, pixel_spacing=(8.0, 8.0),
                                      slice_spacing=5.0, tilt_deg=15.0)
    vol = load_volume(series)
    assert vol.tilt_deg == pytest.approx(15.0, abs=0.01)
    idx = np.array([[i, j, k] for k in range(8) for j in range(0, 32, 4) for i in range(0, 32, 4)], float)
    hu = synthetic.hu_at(vol.index_to_patient(idx))
    got = vol.array[idx[:, 2].astype(int), idx[:, 1].astype(int), idx[:, 0].astype(int)]
    assert np.mean(got == hu) > 0.99
