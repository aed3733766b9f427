"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) against a running runtime, with dicomweb-client."""

from __future__ import annotations

import io
import uuid

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from osirix_py.dicom import synthetic

from nethelpers import make_settings

dicomweb_client = pytest.importorskip("dicomweb_client")
from dicomweb_client.api import DICOMwebClient  # noqa: E402
from dicomweb_client.session_utils import create_session_from_user_pass  # noqa: E402

from osirix_py.server.runtime import Runtime  # noqa: E402
from osirix_py.web.users import UserStore  # noqa: E402

#: The web server requires a user: the tests log in as this admin (HTTP Basic).
ADMIN = ("dicomweb-admin", "dicomweb-admin-password")


def _part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def web(tmp_path_factory, synthetic_dir):
    """A runtime with HTTP, holding the synthetic archive plus patient ``A^B`` (3 CT slices)."""
    d = tmp_path_factory.mktemp("web")
    rt = Runtime(make_settings(d, http=True))
    rep = rt.archive.import_paths([synthetic_dir])
    assert rep.imported == 120, rep.summary()
    for ds in synthetic.make_ct_series(patient_name="A^B", patient_id="AB-1", slices=3, rows=64,
                                       columns=64, seed=7, accession="ACCAB"):
        rt.archive.store_bytes(_part10(ds), origin="test")
    UserStore(rt.archive.db).add(*ADMIN, role="admin")
    rt.start()
    yield rt
    rt.stop(timeout=2.0)


@pytest.fixture(scope="module")
def client(web):
    # A DICOMweb client authenticates with HTTP Basic (the server requires a user).
    return DICOMwebClient(url=f"http://127.0.0.1:{web.http_port}/dicomweb",
                          session=create_session_from_user_pass(*ADMIN))


@pytest.fixture(scope="module")
def http(web):
    with httpx.Client(base_url=f"http://127.0.0.1:{web.http_port}", timeout=30,
                      auth=ADMIN) as c:
        yield c


def _v(obj: dict, tag: str):
    return obj[tag]["Value"][0]


# ----------------------------------------------------------------------- QIDO-RS
def test_search_studies_all_and_paged(client):
    studies = client.search_for_studies()
    assert len(studies) == 7
    page = client.search_for_studies(limit=3, offset=2)
    assert [_v(s, "0020000D") for s in page] == [_v(s, "0020000D") for s in studies[2:5]]


def test_search_studies_by_keyword_and_tag(client):
    by_kw = client.search_for_studies(search_filters={"PatientName": "Doe^John"})
    assert len(by_kw) == 2
    assert all(_v(s, "00100010")["Alphabetic"] == "Doe^John" for s in by_kw)
    by_tag = client.search_for_studies(search_filters={"00100010": "doe*"})
    assert sorted(_v(s, "0020000D") for s in by_tag) == sorted(_v(s, "0020000D") for s in by_kw)
    assert client.search_for_studies(search_filters={"PatientName": "Nobody"}) == []


def test_percent_decoded_person_name(http):
    # Orthanc's QIDO does not decode A%5EB (PEERS.md trap 8); we must.
    r = http.get("/dicomweb/studies?PatientName=A%5EB")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    (study,) = r.json()
    assert _v(study, "00100010") == {"Alphabetic": "A^B"}
    assert _v(study, "00080050") == "ACCAB"


def test_search_series_and_instances(client):
    st = _v(client.search_for_studies(search_filters={"PatientName": "A^B"})[0], "0020000D")
    series = client.search_for_series(study_instance_uid=st)
    assert len(series) == 1 and _v(series[0], "00080060") == "CT"
    se = _v(series[0], "0020000E")
    inst = client.search_for_instances(study_instance_uid=st, series_instance_uid=se)
    assert len(inst) == 3
    assert all(_v(i, "00081190").endswith(_v(i, "00080018")) for i in inst)
    all_ct = client.search_for_series(search_filters={"Modality": "CT"})
    assert se in [_v(s, "0020000E") for s in all_ct]
    some = client.search_for_instances(search_filters={"SeriesInstanceUID": se},
                                       fields=["SOPClassUID"], limit=2)
    assert len(some) == 2


def test_includefield_and_fuzzymatching(http):
    r = http.get("/dicomweb/studies", params={"includefield": "00100010,StudyDate",
                                              "fuzzymatching": "false", "limit": 1})
    assert r.status_code == 200, r.text
    (s,) = r.json()
    assert "00100010" in s and "00080020" in s and "0020000D" in s
    assert "00081030" not in s  # StudyDescription was not asked for
    assert http.get("/dicomweb/studies?includefield=all&limit=1").json()[0]["00081030"]


@pytest.mark.parametrize("query, words", [
    ("StudyDate=2024-01-01", "not a date"),
    ("NoSuchKey=1", "not a searchable attribute"),
    ("limit=abc", "not an integer"),
    ("offset=-1", "out of range"),
    ("fuzzymatching=maybe", "fuzzymatching"),
    ("includefield=NotAKeyword", "includefield"),
])
def test_qido_malformed_query_400(http, query, words):
    r = http.get(f"/dicomweb/studies?{query}")
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


# ----------------------------------------------------------------------- WADO-RS
def _ab_uids(client):
    (inst,) = client.search_for_instances(search_filters={"PatientName": "A^B", "InstanceNumber": "2"})
    return _v(inst, "0020000D"), _v(inst, "0020000E"), _v(inst, "00080018")


def test_retrieve_study_series_instance(client):
    st, se, sop = _ab_uids(client)
    study = client.retrieve_study(st)
    assert len(study) == 3 and all(isinstance(d, pydicom.Dataset) for d in study)
    series = client.retrieve_series(st, se)
    assert sorted(d.SOPInstanceUID for d in series) == sorted(d.SOPInstanceUID for d in study)
    ds = client.retrieve_instance(st, se, sop)
    assert ds.SOPInstanceUID == sop and ds.pixel_array.shape == (64, 64)


def test_retrieve_metadata_with_bulkdata_uri(client, http):
    st, se, sop = _ab_uids(client)
    meta = client.retrieve_instance_metadata(st, se, sop)
    assert _v(meta, "00080018") == sop
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.endswith(f"/instances/{sop}/bulkdata/7FE00010")
    series_meta = client.retrieve_series_metadata(st, se)
    assert len(series_meta) == 3


def test_retrieve_frames(client):
    st, se, sop = _ab_uids(client)
    ds = client.retrieve_instance(st, se, sop)
    (frame,) = client.retrieve_instance_frames(st, se, sop, frame_numbers=[1])
    assert frame == ds.pixel_array.astype("<i2" if ds.PixelRepresentation else "<u2").tobytes()


def test_rendered_and_unknown_uids(client, http):
    from PIL import Image

    st, se, sop = _ab_uids(client)
    r = http.get(f"/dicomweb/studies/{st}/series/{se}/instances/{sop}/rendered",
                 headers={"Accept": "image/png"}, params={"viewport": "32,32"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    r = http.get(f"/dicomweb/studies/{st}/series/{se}/instances/{sop}/frames/9")
    assert r.status_code == 404
    for path in (f"/dicomweb/studies/1.2.3", f"/dicomweb/studies/{st}/series/1.2.3/metadata",
                 f"/dicomweb/studies/{st}/series/{se}/instances/*"):
        r = http.get(path)
        assert r.status_code == 404, path
        assert "error" in r.json()


# ----------------------------------------------------------------------- STOW-RS
def test_store_instances(client, web):
    uid = generate_uid()
    dss = synthetic.make_ct_series(patient_name="Stow^One", patient_id="STOW-1", slices=2,
                                   rows=32, columns=32, study_uid=uid, seed=11)
    res = client.store_instances(dss)
    refs = res.ReferencedSOPSequence
    assert sorted(r.ReferencedSOPInstanceUID for r in refs) == sorted(d.SOPInstanceUID for d in dss)
    assert "FailedSOPSequence" not in res
    assert web.archive.count("IMAGE", {"StudyInstanceUID": uid}) == 2


def test_stow_with_a_non_dicom_part(http, web):
    uid = generate_uid()
    (good,) = synthetic.make_ct_series(patient_name="Stow^Two", patient_id="STOW-2", slices=1,
                                       rows=32, columns=32, study_uid=uid, seed=12)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _part10(good)
            + f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + b"this is not DICOM at all" + f"\r\n--{boundary}--\r\n".encode())
    r = http.post("/dicomweb/studies", content=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert r.status_code == 202, r.text
    res = r.json()
    assert res["00081199"]["Value"][0]["00081155"]["Value"] == [good.SOPInstanceUID]
    (failed,) = res["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert web.archive.count("IMAGE", {"StudyInstanceUID": uid}) == 1
    # Only bad parts: 409; to the wrong study: 409 too.
    only_bad = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\nnope\r\n"
                f"--{boundary}--\r\n").encode()
    r = http.post("/dicomweb/studies", content=only_bad, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 409
    r = http.post("/dicomweb/studies/1.2.3", content=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 409
    r = http.post("/dicomweb/studies", content=b"x", headers={"Content-Type": "application/json"})
    assert r.status_code == 415
