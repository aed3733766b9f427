"""The synthetic DICOM generator: values, geometry, determinism, files."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID, CTImageStorage, ImplicitVRLittleEndian, MRImageStorage

from osirix_py.dicom import synthetic as syn
from osirix_py.dicom.synthetic import (
    PHANTOM,
    demo_study,
    generate_archive,
    hu_at,
    iter_ct_slices,
    make_ct_series,
    make_mr_series,
    mr_signal_at,
    pixel_positions,
    write_series,
)

SMALL = dict(rows=64, columns=64, pixel_spacing=(4.0, 4.0))


def _rescaled(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _ipp(ds: pydicom.Dataset) -> np.ndarray:
    return np.array(ds.ImagePositionPatient, dtype=float)


def _pixel_of(ds: pydicom.Dataset, point) -> tuple[int, int]:
    """Nearest (row, column) of an LPS point lying in the plane of ``ds``."""
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    d = np.asarray(point, dtype=float) - ipp
    return round(float(d @ iop[3:]) / dr), round(float(d @ iop[:3]) / dc)


# -- the phantom ------------------------------------------------------------------


def test_phantom_definition():
    names = [r.name for r in PHANTOM.regions]
    assert names == ["water", "bone", "fat", "contrast"]
    assert PHANTOM.background_hu == -1000
    assert PHANTOM.region("bone").hu == 1000
    assert PHANTOM.region("fat").hu == -100
    assert PHANTOM.region("contrast").shape == "sphere"


def test_hu_at_region_centres_and_outside():
    pts = np.array([r.center for r in PHANTOM.regions] + [(0.0, 0.0, 150.0), (150.0, 0.0, 0.0)])
    np.testing.assert_array_equal(hu_at(pts), [0, 1000, -100, 60, -1000, -1000])
    np.testing.assert_array_equal(mr_signal_at(pts[:4]), [r.mr_signal for r in PHANTOM.regions])
    # boundary counts as inside; just outside does not
    bone = PHANTOM.region("bone")
    x = bone.center[0] + bone.radius
    edge = np.array([[x, 0.0, 0.0], [x + 1e-6, 0.0, 0.0]])
    np.testing.assert_array_equal(hu_at(edge), [1000, 0])


# -- CT pixels and header -------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_series():
    return make_ct_series(slices=5, slice_spacing=5.0, **SMALL)


def test_ct_header(ct_series):
    ds = ct_series[2]
    assert ds.Modality == "CT"
    assert ds.SOPClassUID == CTImageStorage
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 1)
    assert (float(ds.RescaleIntercept), float(ds.RescaleSlope)) == (0.0, 1.0)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)
    assert ds.Manufacturer == "osirix-py synthetic"
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
        "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
        "InstitutionName", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
        "ProtocolName", "SeriesDate", "SeriesTime", "FrameOfReferenceUID", "InstanceNumber",
        "SliceThickness", "SpacingBetweenSlices", "SliceLocation",
    ):
        assert keyword in ds, keyword
    assert [ds.InstanceNumber for ds in ct_series] == [1, 2, 3, 4, 5]


def test_ct_insert_centres_read_back(ct_series, tmp_path):
    paths = write_series(ct_series, tmp_path)
    middle = pydicom.dcmread(paths[2])  # the middle slice passes through z = 0
    assert float(middle.ImagePositionPatient[2]) == 0.0
    img = _rescaled(middle)
    for region in PHANTOM.regions:
        r, c = _pixel_of(middle, region.center)
        assert img[r, c] == region.hu, region.name
    assert img[0, 0] == -1000


def test_unsigned_ct_with_intercept():
    ds = make_ct_series(slices=1, unsigned=True, **SMALL)[0]
    assert (ds.PixelRepresentation, ds.BitsStored, float(ds.RescaleIntercept)) == (0, 12, -1024.0)
    assert ds.pixel_array.dtype == np.uint16
    img = _rescaled(ds)
    assert set(np.unique(img)) == {-1000, -100, 0, 60, 1000}


def test_every_pixel_matches_continuous_phantom_oblique_and_tilted():
    a, b = math.radians(20), math.radians(35)
    row = (math.cos(a), math.sin(a), 0.0)
    col = (-math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), math.sin(b))
    sagittal = (0, 1, 0, 0, 0, -1)
    for kwargs in (dict(orientation=row + col), dict(tilt_deg=17.0), dict(orientation=sagittal)):
        series = make_ct_series(slices=4, slice_spacing=7.0, **SMALL, **kwargs)
        seen: set[float] = set()
        for ds in series:
            expected = hu_at(pixel_positions(ds).reshape(-1, 3)).reshape(64, 64)
            np.testing.assert_array_equal(_rescaled(ds), expected)
            seen.update(np.unique(expected).tolist())
        assert len(seen) >= 3, kwargs  # air, water and at least one insert


def test_mr_series():
    series = make_mr_series(slices=3, rows=32, columns=32, pixel_spacing=(8.0, 8.0))
    ds = series[1]
    assert ds.Modality == "MR" and ds.SOPClassUID == MRImageStorage
    assert (ds.PixelRepresentation, ds.BitsAllocated) == (0, 16)
    assert "RescaleIntercept" not in ds
    assert float(ds.RepetitionTime) > float(ds.EchoTime) > 0
    assert float(ds.SliceThickness) == 5.0
    expected = mr_signal_at(pixel_positions(ds).reshape(-1, 3)).reshape(32, 32)
    np.testing.assert_array_equal(ds.pixel_array, expected)
    defaults = make_mr_series(slices=1)[0]
    assert (defaults.Rows, defaults.Columns) == (256, 256)
    assert [float(v) for v in defaults.PixelSpacing] == [1.0, 1.0]


# -- geometry ---------------------------------------------------------------------


def test_positions_follow_origin_spacing_normal():
    origin = (-100.0, -120.0, -30.0)
    series = make_ct_series(slices=6, slice_spacing=2.5, origin=origin, **SMALL)
    for k, ds in enumerate(series):
        np.testing.assert_allclose(_ipp(ds), np.add(origin, (0, 0, 2.5 * k)))
        assert float(ds.SliceLocation) == pytest.approx(origin[2] + 2.5 * k)
    assert float(series[0].SpacingBetweenSlices) == 2.5

    a = math.radians(30)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(a), -math.sin(a))
    normal = np.cross(orientation[:3], orientation[3:])
    series = make_ct_series(slices=4, slice_spacing=3.0, orientation=orientation, **SMALL)
    ipp0 = np.array(series[0].ImagePositionPatient, float)
    for k, ds in enumerate(series):
        np.testing.assert_allclose(_ipp(ds), ipp0 + 3.0 * k * normal, atol=1e-6)


def test_default_origin_centres_the_phantom():
    series = make_ct_series(slices=5, **SMALL)
    middle = series[2]
    centre = pixel_positions(middle)[31:33, 31:33].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(centre, PHANTOM.center, atol=1e-9)


def test_gantry_tilt_shifts_along_table_axis():
    series = make_ct_series(slices=3, slice_spacing=5.0, tilt_deg=20.0, **SMALL)
    ds = series[0]
    assert float(ds.GantryDetectorTilt) == 20.0
    iop = np.array(ds.ImageOrientationPatient, float)
    t = math.radians(20)
    np.testing.assert_allclose(iop, [1, 0, 0, 0, math.cos(t), -math.sin(t)], atol=1e-12)
    step = np.array(series[1].ImagePositionPatient, float) - np.array(ds.ImagePositionPatient, float)
    np.testing.assert_allclose(step, [0, 0, 5.0], atol=1e-9)  # the table moves along z
    assert float(ds.SpacingBetweenSlices) == pytest.approx(5.0 * math.cos(math.radians(20)))


def test_omit_reverse_and_uneven_offsets():
    series = make_ct_series(slices=6, omit=(2, 4), reverse_instance_numbers=True, **SMALL)
    assert [ds.InstanceNumber for ds in series] == [6, 5, 3, 1]
    z = [float(ds.ImagePositionPatient[2]) for ds in series]
    assert np.allclose(np.diff(z), [2.5, 5.0, 5.0])

    offsets = [0.0, 1.0, 3.0, 7.5]
    series = make_ct_series(offsets=offsets, origin=(0.0, 0.0, -10.0), **SMALL)
    assert [float(ds.ImagePositionPatient[2]) for ds in series] == [-10.0, -9.0, -7.0, -2.5]
    assert "SpacingBetweenSlices" not in series[0]

    with pytest.raises(ValueError):
        make_ct_series(slices=3, omit=(3,), **SMALL)


# -- UIDs, determinism, files -----------------------------------------------------------


def test_uids_valid_and_unique():
    ct = make_ct_series(slices=4, **SMALL)
    mr = make_mr_series(slices=4, rows=16, columns=16)
    uids = [ds.SOPInstanceUID for ds in ct + mr]
    assert len(set(uids)) == len(uids)
    for ds in ct + mr:
        keywords = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
        for keyword in keywords:
            assert UID(ds[keyword].value).is_valid, keyword
    assert ct[0].SeriesInstanceUID != mr[0].SeriesInstanceUID
    assert make_ct_series(slices=1, seed=1, **SMALL)[0].StudyInstanceUID != ct[0].StudyInstanceUID


def test_same_arguments_give_identical_bytes(tmp_path):
    kwargs = dict(slices=3, noise=5.0, **SMALL)
    a = write_series(make_ct_series(**kwargs), tmp_path / "a")
    b = write_series(iter_ct_slices(**kwargs), tmp_path / "b")
    assert [p.name for p in a] == ["IM000001.dcm", "IM000002.dcm", "IM000003.dcm"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    c = write_series(make_ct_series(**{**kwargs, "seed": 7}), tmp_path / "c")
    assert a[0].read_bytes() != c[0].read_bytes()


def test_part10_and_implicit_vr(tmp_path):
    series = make_ct_series(slices=1, transfer_syntax=ImplicitVRLittleEndian, **SMALL)
    (path,) = write_series(series, tmp_path)
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.pixel_array.shape == (64, 64)


def test_non_ascii_names_round_trip(tmp_path):
    series = make_ct_series(slices=1, patient_name="Müller^Jürgen", **SMALL)
    (latin,) = write_series(series, tmp_path / "l")
    assert "Müller^Jürgen".encode("latin-1") in latin.read_bytes()
    assert str(pydicom.dcmread(latin).PatientName) == "Müller^Jürgen"
    series = make_ct_series(slices=1, patient_name="Łukasz^Zoë", character_set="ISO_IR 192", **SMALL)
    (utf8,) = write_series(series, tmp_path / "u")
    ds = pydicom.dcmread(utf8)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Łukasz^Zoë"
    with pytest.raises(ValueError):
        make_ct_series(slices=1, patient_name="Łukasz^Zoë", **SMALL)


def test_generate_archive(tmp_path):
    kwargs = dict(patients=3, studies_per_patient=2, series_per_study=2, slices=3, rows=16, columns=16)
    paths = generate_archive(tmp_path / "one", **kwargs)
    assert len(paths) == 3 * 2 * 2 * 3
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert len({h.PatientID for h in headers}) == 3
    assert len({h.StudyInstanceUID for h in headers}) == 6
    assert len({h.SeriesInstanceUID for h in headers}) == 12
    assert len({h.SOPInstanceUID for h in headers}) == len(paths)
    assert {h.Modality for h in headers} == {"CT", "MR"}
    assert len({h.StudyDate for h in headers}) == 6
    assert "Müller^Jürgen" in {str(h.PatientName) for h in headers}
    for study in {h.StudyInstanceUID for h in headers}:
        assert len({h.PatientID for h in headers if h.StudyInstanceUID == study}) == 1
    again = generate_archive(tmp_path / "two", **kwargs)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


@pytest.mark.slow
def test_demo_study(tmp_path):
    paths = demo_study(tmp_path)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert {str(h.PatientName) for h in headers} == {"Demo^Patient"}
    assert len({h.StudyInstanceUID for h in headers}) == 1
    assert {h.Modality for h in headers} == {"CT", "MR"}
    assert sum(p.stat().st_size for p in paths) < 40 * 1024 * 1024


def test_make_uid_is_deterministic():
    assert syn.make_uid("a", 1) == syn.make_uid("a", 1) != syn.make_uid("a", 2)
    assert len(syn.make_uid("x")) <= 64
