"""REST API, WADO-URI and rendered images against a running runtime (httpx + Pillow)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from nethelpers import make_settings
from PIL import Image

from osirix_py.server.runtime import Runtime
from osirix_py.web.users import UserStore


#: The web server requires a user: the tests log in as this admin (HTTP Basic).
ADMIN = ("rest-admin", "rest-admin-password")


@pytest.fixture(scope="module")
def web(tmp_path_factory, synthetic_dir):
    d = tmp_path_factory.mktemp("webrest")
    rt = Runtime(make_settings(d, http=True))
    rep = rt.archive.import_paths([synthetic_dir])
    assert rep.imported == 120, rep.summary()
    UserStore(rt.archive.db).add(*ADMIN, role="admin")
    rt.start()
    yield rt
    rt.stop(timeout=2.0)


@pytest.fixture(scope="module")
def http(web):
    with httpx.Client(base_url=f"http://127.0.0.1:{web.http_port}", timeout=30,
                      auth=ADMIN) as c:
        yield c


@pytest.fixture(scope="module")
def ct_instance(http):
    rows = http.get("/api/instances", params={"Modality": "CT", "InstanceNumber": "5",
                                              "limit": 1}).json()
    assert rows, "no CT instance in the synthetic archive"
    return rows[0]


def test_lists_with_matching_and_paging(http):
    pats = http.get("/api/patients").json()
    assert sorted(p["PatientName"] for p in pats) == ["Doe^John", "Müller^Jürgen", "Smith^Jane"]
    studies = http.get("/api/studies", params={"PatientName": "doe*"}).json()
    assert len(studies) == 2 and all(s["PatientID"] == studies[0]["PatientID"] for s in studies)
    series = http.get("/api/series", params={"limit": 5, "offset": 10}).json()
    assert len(series) == 2
    assert len(http.get("/api/instances", params={"limit": 1000}).json()) == 120
    r = http.get("/api/studies", params={"StudyDate": "2024-01"})
    assert r.status_code == 400 and "not a date" in r.json()["error"]
    r = http.get("/api/studies", params={"Bogus": "1"})
    assert r.status_code == 400 and "Bogus" in r.json()["error"]


def test_objects_and_tags(http, ct_instance):
    st, se, sop = (ct_instance["StudyInstanceUID"], ct_instance["SeriesInstanceUID"],
                   ct_instance["SOPInstanceUID"])
    study = http.get(f"/api/studies/{st}").json()
    assert se in study["Series"] and study["StudyInstanceUID"] == st
    series = http.get(f"/api/series/{se}").json()
    assert sop in series["Instances"] and series["Modality"] == "CT"
    inst = http.get(f"/api/instances/{sop}").json()
    assert inst["InstanceNumber"] == 5 and inst["FileSize"] > 0
    tags = http.get(f"/api/instances/{sop}/tags")
    assert tags.headers["content-type"].startswith("application/dicom+json")
    tj = tags.json()
    assert tj["00080018"]["Value"] == [sop]
    assert tj["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    bulk = http.get(tj["7FE00010"]["BulkDataURI"])
    assert bulk.status_code == 200 and len(bulk.content) == 64 * 64 * 2


def test_file_download_and_statistics(http, ct_instance):
    r = http.get(f"/api/instances/{ct_instance['SOPInstanceUID']}/file")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(r.content))
    assert ds.SOPInstanceUID == ct_instance["SOPInstanceUID"]
    stats = http.get("/api/statistics").json()
    assert stats["instances"] >= 100 and stats["studies"] >= 5


def _wado(http, inst, **extra):
    params = {"requestType": "WADO", "studyUID": inst["StudyInstanceUID"],
              "seriesUID": inst["SeriesInstanceUID"], "objectUID": inst["SOPInstanceUID"], **extra}
    return http.get("/wado", params=params)


def test_wado_uri_jpeg_png_window_and_size(http, ct_instance):
    r = _wado(http, ct_instance)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and im.size == (64, 64)
    a = np.asarray(Image.open(io.BytesIO(_wado(http, ct_instance, contentType="image/png",
                                                windowCenter=40, windowWidth=400).content)))
    b = np.asarray(Image.open(io.BytesIO(_wado(http, ct_instance, contentType="image/png",
                                                windowCenter=1000, windowWidth=100).content)))
    assert a.shape == b.shape == (64, 64)
    assert not np.array_equal(a, b)
    r = _wado(http, ct_instance, contentType="image/png", rows=32, columns=32)
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    r = _wado(http, ct_instance, contentType="application/dicom")
    assert pydicom.dcmread(io.BytesIO(r.content)).SOPInstanceUID == ct_instance["SOPInstanceUID"]


def test_wado_uri_errors(http, ct_instance):
    assert _wado(http, ct_instance, requestType="XYZ").status_code == 400
    r = http.get("/wado", params={"requestType": "WADO", "studyUID": "1.2"})
    assert r.status_code == 400 and "objectUID" in r.json()["error"]
    r = _wado(http, ct_instance, windowCenter=40)
    assert r.status_code == 400 and "windowWidth" in r.json()["error"]
    r = _wado(http, ct_instance, frameNumber=3)
    assert r.status_code == 404
    r = _wado(http, {**ct_instance, "SeriesInstanceUID": "1.2.3"})
    assert r.status_code == 404
    r = _wado(http, {**ct_instance, "SOPInstanceUID": "../../../../etc/passwd"})
    assert r.status_code == 404 and "not a valid UID" in r.json()["error"]
    r = _wado(http, ct_instance, contentType="text/html")
    assert r.status_code == 406


def test_rendered_jpeg_png_window_size_and_errors(http, web, ct_instance):
    from osirix_py.web.common import lookup_instance
    from osirix_py.web.render import Renderer, RenderRequest

    sop = ct_instance["SOPInstanceUID"]
    url = f"/api/instances/{sop}/rendered"
    r = http.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "private, max-age=60"
    assert r.headers["x-content-type-options"] == "nosniff"  # added to every response
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    row = lookup_instance(web.archive, sop)
    assert r.content == Renderer(web.archive).render(row, RenderRequest())
    assert http.get(url).content == r.content  # from the render cache
    r = http.get(url, params={"format": "png", "size": 32, "windowCenter": 40,
                              "windowWidth": 400})
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    assert r.content == Renderer(web.archive).render(
        row, RenderRequest(window=(40.0, 400.0), size=(32, 32), media_type="image/png"))
    r = http.get(url, headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png"
    r = http.get(url, params={"quality": 50})
    assert r.status_code == 200 and len(r.content) < len(http.get(url).content)
    assert http.head(url).status_code == 200  # HEAD: the ordinary route
    for params, status, words in (({"windowCenter": 40}, 400, "windowWidth"),
                                  ({"frame": 2}, 404, "frame 2"),
                                  ({"size": 0}, 400, "size"),
                                  ({"quality": "x"}, 400, "quality")):
        r = http.get(url, params=params)
        assert r.status_code == status and words in r.json()["error"], params
        assert r.json()["status"] == status
    r = http.get(url, headers={"Accept": "text/html"})
    assert r.status_code == 406 and "image/jpeg" in r.json()["error"]
    for bad in ("1.2.3", "a*b", "..%2F..%2Fetc"):
        r = http.get(f"/api/instances/{bad}/rendered")
        assert r.status_code == 404 and "error" in r.json(), bad
    # Not without a user.
    r = httpx.get(f"{http.base_url}{url}", timeout=30)
    assert r.status_code == 401


def test_rendered_image_is_gone_once_its_instance_is_deleted(http, web):
    inst = http.get("/api/instances", params={"PatientName": "Doe*", "InstanceNumber": "7",
                                              "limit": 1}).json()[0]
    sop = inst["SOPInstanceUID"]
    url = f"/api/instances/{sop}/rendered"
    assert http.get(url).status_code == 200
    assert http.get(url, params={"size": 16}).status_code == 200  # both in the render cache
    assert http.delete(f"/api/instances/{sop}").status_code == 200
    for params in ({}, {"size": 16}):
        r = http.get(url, params=params)
        assert r.status_code == 404 and sop in r.json()["error"]
    assert http.get(f"/api/instances/{sop}/thumbnail").status_code == 404
    assert _wado(http, inst).status_code == 404


def test_thumbnails(http, ct_instance):
    r = http.get(f"/api/instances/{ct_instance['SOPInstanceUID']}/thumbnail")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (128, 128)
    r = http.get(f"/api/series/{ct_instance['SeriesInstanceUID']}/thumbnail",
                 params={"size": 48, "format": "png"})
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (48, 48)


def test_raw_pixels_for_the_html5_viewer(http, web, ct_instance):
    import json

    sop = ct_instance["SOPInstanceUID"]
    r = http.get(f"/api/instances/{sop}/pixels")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    info = json.loads(r.headers["x-pixel-info"])
    row = web.archive.find("IMAGE", {"SOPInstanceUID": sop})[0]
    ds = pydicom.dcmread(io.BytesIO(web.archive.read_instance(row)))
    assert (info["rows"], info["columns"], info["frames"]) == (ds.Rows, ds.Columns, 1)
    assert info["dtype"] == ("int16" if ds.PixelRepresentation else "uint16")
    assert np.array_equal(np.frombuffer(r.content, "<" + ("i2" if ds.PixelRepresentation else "u2"))
                          .reshape(ds.Rows, ds.Columns), ds.pixel_array)
    assert (info["slope"], info["intercept"]) == (float(ds.RescaleSlope), float(ds.RescaleIntercept))
    assert (info["center"], info["width"]) == (float(ds.WindowCenter), float(ds.WindowWidth))
    assert info["min"] <= info["max"] and info["invert"] is False
    assert http.get(f"/api/instances/{sop}/pixels", params={"frame": 2}).status_code == 404
    assert http.get("/api/instances/1.2.3/pixels").status_code == 404


def test_unknown_uids_404(http):
    for path in ("/api/studies/1.2.3", "/api/series/1.2.3", "/api/instances/1.2.3",
                 "/api/instances/1.2.3/tags", "/api/instances/1.2.3/file",
                 "/api/series/1.2.3/thumbnail", "/api/instances/a*b"):
        r = http.get(path)
        assert r.status_code == 404, path
        assert "error" in r.json()
    assert http.delete("/api/studies/1.2.3").status_code == 404


def test_openapi(http):
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for p in ("/api/studies", "/dicomweb/studies", "/wado", "/api/instances/{uid}/tags",
              "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"):
        assert p in spec["paths"], p
    assert "post" in spec["paths"]["/dicomweb/studies"]


def test_delete_instance_series_study(http, web):
    studies = http.get("/api/studies", params={"PatientName": "Smith*"}).json()
    st = studies[0]["StudyInstanceUID"]
    series = http.get(f"/api/studies/{st}").json()["Series"]
    inst = http.get(f"/api/series/{series[0]}").json()["Instances"]
    r = http.delete(f"/api/instances/{inst[0]}")
    assert r.status_code == 200 and r.json()["instances"] == 1
    assert http.get(f"/api/instances/{inst[0]}").status_code == 404
    assert http.delete(f"/api/series/{series[0]}").json()["instances"] == len(inst) - 1
    r = http.delete(f"/api/studies/{st}")
    assert r.status_code == 200
    assert http.get(f"/api/studies/{st}").status_code == 404
    assert web.archive.count("STUDY", {"StudyInstanceUID": st}) == 0


def test_html_viewer_is_served_and_static_is_confined(http):
    r = http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/static/viewer.js" in r.text
    js = http.get("/static/viewer.js")
    assert js.status_code == 200
    assert "innerHTML" not in js.text.replace("(never innerHTML)", "")  # values go in as text
    for path in ("/static/../../pyproject.toml", "/static/%2e%2e/%2e%2e/pyproject.toml"):
        assert http.get(path).status_code == 404, path
