"""DICOMweb (PS3.18): QIDO-RS, WADO-RS and STOW-RS, mounted under ``/dicomweb``.

* QIDO-RS searches through :meth:`Archive.find` on the attribute table of
  :mod:`osirix_py.dicom.tags`; values are percent-decoded (Orthanc's are not).
* WADO-RS streams instances as ``multipart/related; type="application/dicom"``
  (one file read at a time), metadata as DICOM JSON with bulk data URIs,
  frames as uncompressed ``application/octet-stream`` parts, rendered frames
  as JPEG or PNG.
* STOW-RS stores each part through :meth:`Archive.store_bytes`; a part that
  is not DICOM fails alone.

Handlers are plain functions (run in Starlette's thread pool) except STOW,
which must read the request body.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..dicom import pixels
from ..dicom.header import DicomFileError, read_header
from ..dicom.tags import Level
from ..storage.base import StorageError, StorageFullError
from . import multipart
from .common import (DICOM_JSON, HttpProblem, base_url, check_uid, dicom_json_response,
                     dicom_json_row, find_instances, int_param, json_bytes, lookup_instance,
                     matching_query, require_admin, resolve_tag, run_find)
from .render import RenderRequest, choose_media_type, render_async

#: How many bytes of files WADO-RS reads per worker-thread hop while streaming.
RETRIEVE_BATCH_BYTES = 4 << 20
QIDO_RESERVED = {"limit", "offset", "fuzzymatching", "includefield"}
#: Default and maximum QIDO page size.
QIDO_MAX_LIMIT = 10000

# ============================================================================ QIDO-RS


def _qido(request: Request, level: Level, fixed: dict[str, str]) -> Response:
    archive = request.app.state.runtime.archive
    params = request.query_params
    for k, v in fixed.items():
        check_uid(v, k)
    query = matching_query(params.multi_items(), QIDO_RESERVED)
    for k, v in fixed.items():
        if k in query and query[k] != v:
            return dicom_json_response([])
        query[k] = v
    fuzzy = (params.get("fuzzymatching") or "false").lower()
    if fuzzy not in ("true", "false"):
        raise HttpProblem(400, f"fuzzymatching must be true or false, not {fuzzy!r}")
    include: set[int] | None = set()
    for value in params.getlist("includefield"):
        for name in value.split(","):
            if name.strip().lower() == "all":
                include = None
                break
            t = resolve_tag(name)
            if t is None or (dictionary_VR(t) if _known(t) else None) is None:
                raise HttpProblem(400, f"includefield: {name!r} is not a DICOM keyword or tag")
            if include is not None:
                include.add(t)
        if include is None:
            break
    # Without includefield the whole table is returned (a superset of PS3.18's defaults).
    if include is not None and not include:
        include = None
    limit = int_param(params, "limit", QIDO_MAX_LIMIT, maximum=QIDO_MAX_LIMIT)
    offset = int_param(params, "offset", 0)
    rows = run_find(archive, level, query, limit=limit, offset=offset)
    base = base_url(request) + "/dicomweb"
    out = []
    for r in rows:
        url = f"{base}/studies/{r['StudyInstanceUID']}"
        if level is not Level.STUDY:
            url += f"/series/{r['SeriesInstanceUID']}"
            if level is Level.IMAGE:
                url += f"/instances/{r['SOPInstanceUID']}"
        if include is not None:
            include |= _ALWAYS
        out.append(dicom_json_row(level, r, include=include, extra={"00081190": ("UR", url)}))
    return dicom_json_response(out)


def _known(tag: int) -> bool:
    try:
        dictionary_VR(tag)
        return True
    except KeyError:
        return False


_ALWAYS = {0x0020000D, 0x0020000E, 0x00080018, 0x00080016}


def qido_studies(request: Request) -> Response:
    return _qido(request, Level.STUDY, {})


def qido_series(request: Request) -> Response:
    p = request.path_params
    return _qido(request, Level.SERIES, {"StudyInstanceUID": p["study"]} if "study" in p else {})


def qido_instances(request: Request) -> Response:
    p = request.path_params
    fixed = {}
    if "study" in p:
        fixed["StudyInstanceUID"] = p["study"]
    if "series" in p:
        fixed["SeriesInstanceUID"] = p["series"]
    return _qido(request, Level.IMAGE, fixed)


# ============================================================================ WADO-RS
def _keys(request: Request) -> dict[str, str]:
    p = request.path_params
    keys = {"StudyInstanceUID": p["study"]}
    if "series" in p:
        keys["SeriesInstanceUID"] = p["series"]
    if "instance" in p:
        keys["SOPInstanceUID"] = p["instance"]
    return keys


def _what(keys: dict) -> str:
    return "instance" if "SOPInstanceUID" in keys else "series" if "SeriesInstanceUID" in keys \
        else "study"


def _accepts(request: Request, *types: str) -> bool:
    accept = request.headers.get("accept", "")
    if not accept:
        return True
    low = accept.lower()
    return any(t in low for t in types) or "*/*" in low


def wado_retrieve(request: Request) -> Response:
    """Instances of a study / series / instance as multipart/related application/dicom."""
    if not _accepts(request, "application/dicom", "multipart/related"):
        raise HttpProblem(406, "only multipart/related; type=\"application/dicom\" is offered here")
    archive = request.app.state.runtime.archive
    keys = _keys(request)
    rows = find_instances(archive, _what(keys), **keys)
    boundary = multipart.new_boundary()
    head = multipart.part_head({"Content-Type": "application/dicom"}, boundary)

    def read_batch(batch: list[dict]) -> bytes:
        out = bytearray()
        for r in batch:
            out += head
            out += archive.read_instance(r)
            out += b"\r\n"
        return bytes(out)

    async def body():
        # Files are read in a worker thread a few at a time (one thread hop per
        # ~RETRIEVE_BATCH_BYTES, not three per instance); memory stays bounded.
        i = 0
        while i < len(rows):
            j, size = i, 0
            while j < len(rows) and (j == i or size < RETRIEVE_BATCH_BYTES):
                size += int(rows[j].get("_file_size") or 0)
                j += 1
            yield await run_in_threadpool(read_batch, rows[i:j])
            i = j
        yield multipart.closing(boundary)

    return StreamingResponse(body(), media_type=multipart.content_type("application/dicom",
                                                                       boundary))


def _bulk_handler(url: str):
    def handler(el) -> str:
        return f"{url}/bulkdata/{el.tag:08X}"
    return handler


def _instance_json(archive, row: dict, url: str) -> dict:
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(row)), force=True)
    return ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=_bulk_handler(url),
                           suppress_invalid_tags=True)


def wado_metadata(request: Request) -> Response:
    archive = request.app.state.runtime.archive
    keys = _keys(request)
    rows = find_instances(archive, _what(keys), **keys)
    base = base_url(request) + "/dicomweb"

    def chunks():
        yield b"["
        for i, r in enumerate(rows):
            url = (f"{base}/studies/{r['StudyInstanceUID']}/series/{r['SeriesInstanceUID']}"
                   f"/instances/{r['SOPInstanceUID']}")
            yield (b"," if i else b"") + json_bytes(_instance_json(archive, r, url))
        yield b"]"

    return StreamingResponse(chunks(), media_type=DICOM_JSON)


def _dataset(archive, row) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(archive.read_instance(row)), force=True)


def _frame_numbers(text: str) -> list[int]:
    try:
        nums = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HttpProblem(400, f"frame list {text[:80]!r} is not a comma-separated list of numbers") \
            from None
    if not nums or any(n < 1 for n in nums):
        raise HttpProblem(400, "frame numbers start at 1")
    return nums


def frame_bytes(ds, index: int) -> bytes:
    """One frame, uncompressed, little endian (decoded if the file is compressed)."""
    arr = np.asarray(pixels.decode_frame(ds, index))
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()


def wado_frames(request: Request) -> Response:
    archive = request.app.state.runtime.archive
    keys = _keys(request)
    nums = _frame_numbers(request.path_params["frames"])
    row = lookup_instance(archive, keys["SOPInstanceUID"], study=keys["StudyInstanceUID"],
                          series_uid=keys["SeriesInstanceUID"])
    ds = _dataset(archive, row)
    if "PixelData" not in ds:
        raise HttpProblem(404, "this instance has no pixel data")
    n = pixels.frame_count(ds)
    bad = [f for f in nums if f > n]
    if bad:
        raise HttpProblem(404, f"frame(s) {bad} do not exist (the instance has {n})")
    boundary = multipart.new_boundary()

    def parts():
        for f in nums:
            try:
                data = frame_bytes(ds, f - 1)
            except pixels.PixelDataError as exc:
                raise HttpProblem(406, f"cannot decode frame {f}: {exc}") from None
            yield {"Content-Type": "application/octet-stream"}, data

    # Decoded before the response starts so that a decoding error is a clean 406.
    body = list(multipart.stream_parts(list(parts()), boundary))
    return Response(b"".join(body), media_type=multipart.content_type(
        "application/octet-stream", boundary, "1.2.840.10008.1.2.1"))


def wado_bulkdata(request: Request) -> Response:
    archive = request.app.state.runtime.archive
    keys = _keys(request)
    row = find_instances(archive, "instance", **keys)[0]
    try:
        tag = int(request.path_params["tag"], 16)
    except ValueError:
        raise HttpProblem(400, "bulk data tag must be 8 hex digits") from None
    ds = _dataset(archive, row)
    if tag not in ds:
        raise HttpProblem(404, f"no element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at the top level")
    value = ds[tag].value
    if not isinstance(value, (bytes, bytearray)):
        raise HttpProblem(404, "that element is not bulk data")
    boundary = multipart.new_boundary()
    body = b"".join(multipart.stream_parts([({"Content-Type": "application/octet-stream"},
                                             bytes(value))], boundary))
    return Response(body, media_type=multipart.content_type("application/octet-stream", boundary))


def _render_params(request: Request, frame: int) -> RenderRequest:
    p = request.query_params
    window = None
    if p.get("window"):
        bits = p["window"].split(",")
        try:
            c, w = float(bits[0]), float(bits[1])
        except (ValueError, IndexError):
            raise HttpProblem(400, "window must be center,width[,function]") from None
        if w <= 0:
            raise HttpProblem(400, "window width must be positive")
        window = (c, w)
    size = (None, None)
    if p.get("viewport"):
        bits = p["viewport"].split(",")
        try:
            rows, cols = int(bits[0]), int(bits[1])
        except (ValueError, IndexError):
            raise HttpProblem(400, "viewport must be rows,columns") from None
        if not (0 < rows <= 4096 and 0 < cols <= 4096):
            raise HttpProblem(400, "viewport out of range (1..4096)")
        size = (rows, cols)
    quality = int_param(p, "quality", 90, minimum=1, maximum=100)
    mt = choose_media_type(request.headers.get("accept"))
    if mt is None:
        raise HttpProblem(406, "rendered images are offered as image/jpeg or image/png")
    return RenderRequest(frame=frame, window=window, size=size, media_type=mt, quality=quality)


async def wado_rendered(request: Request) -> Response:
    rt = request.app.state
    keys = _keys(request)
    frame = 1
    if "frames" in request.path_params:
        nums = _frame_numbers(request.path_params["frames"])
        frame = nums[0]
    req = _render_params(request, frame - 1)
    row = lookup_instance(rt.runtime.archive, keys["SOPInstanceUID"],
                          study=keys["StudyInstanceUID"], series_uid=keys["SeriesInstanceUID"])
    data = await render_async(rt.renderer, row, req)
    return Response(data, media_type=req.media_type)


# ============================================================================ STOW-RS
FAIL_CANNOT_UNDERSTAND = 0xC000
FAIL_OUT_OF_RESOURCES = 0xA700
FAIL_PROCESSING = 0x0110
FAIL_STUDY_MISMATCH = 0xA900


async def stow(request: Request) -> Response:
    require_admin(request)
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/related"):
        raise HttpProblem(415, "STOW-RS takes multipart/related; type=\"application/dicom\"")
    part_type = multipart.type_of(ctype)
    if part_type not in (None, "application/dicom"):
        raise HttpProblem(415, f"only type=\"application/dicom\" is stored, not {part_type!r}")
    boundary = multipart.boundary_of(ctype)
    if not boundary:
        raise HttpProblem(400, "the Content-Type has no boundary")
    study = request.path_params.get("study")
    if study is not None:
        check_uid(study, "study")
    body = await request.body()
    try:
        parts = multipart.parse(body, boundary)
    except multipart.MultipartError as exc:
        raise HttpProblem(400, str(exc)) from None
    if not parts:
        raise HttpProblem(400, "the request has no parts")
    archive = request.app.state.runtime.archive
    base = base_url(request) + "/dicomweb"
    origin = f"stow:{request.client.host if request.client else '?'}"
    return await run_in_threadpool(_store_parts, archive, parts, study, base, origin)


def _store_parts(archive, parts, study, base, origin) -> Response:
    referenced, failed = [], []
    for i, (headers, content) in enumerate(parts):
        sop_class = sop_uid = ""
        pt = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        try:
            if pt != "application/dicom":
                raise DicomFileError(f"part {i + 1}: {pt} is not application/dicom", kind="not-dicom")
            hdr = read_header(content, name=f"part {i + 1}")
            sop_class = str(hdr.values.get("SOPClassUID") or "")
            sop_uid = hdr.sop_instance_uid
            if study is not None and hdr.study_instance_uid != study:
                failed.append(_failed(sop_class, sop_uid, FAIL_STUDY_MISMATCH))
                continue
            out = archive.store_bytes(content, origin=origin, header=hdr)
        except DicomFileError:
            failed.append(_failed(sop_class, sop_uid, FAIL_CANNOT_UNDERSTAND))
            continue
        except StorageFullError:
            failed.append(_failed(sop_class, sop_uid, FAIL_OUT_OF_RESOURCES))
            continue
        except (StorageError, OSError):
            failed.append(_failed(sop_class, sop_uid, FAIL_PROCESSING))
            continue
        url = (f"{base}/studies/{out.study_instance_uid}/series/{out.series_instance_uid}"
               f"/instances/{out.sop_instance_uid}")
        referenced.append({
            "00081150": {"vr": "UI", "Value": [out.sop_class_uid]},
            "00081155": {"vr": "UI", "Value": [out.sop_instance_uid]},
            "00081190": {"vr": "UR", "Value": [url]},
        })
    result: dict = {}
    if study is not None or referenced:
        st = study or _study_of(referenced)
        if st:
            result["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{st}"]}
    if failed:
        result["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        result["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    return dicom_json_response(result, status)


def _study_of(referenced: list[dict]) -> str | None:
    studies = {r["00081190"]["Value"][0].split("/studies/")[1].split("/")[0] for r in referenced}
    return studies.pop() if len(studies) == 1 else None


def _failed(sop_class: str, sop_uid: str, reason: int) -> dict:
    item: dict = {"00081197": {"vr": "US", "Value": [reason]}}
    item["00081150"] = {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"}
    item["00081155"] = {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"}
    return dict(sorted(item.items()))


# ============================================================================ routes
_I = "/studies/{study}/series/{series}/instances/{instance}"

routes = [
    Route("/studies", qido_studies, methods=["GET"]),
    Route("/studies", stow, methods=["POST"]),
    Route("/series", qido_series, methods=["GET"]),
    Route("/instances", qido_instances, methods=["GET"]),
    Route("/studies/{study}", wado_retrieve, methods=["GET"]),
    Route("/studies/{study}", stow, methods=["POST"]),
    Route("/studies/{study}/metadata", wado_metadata, methods=["GET"]),
    Route("/studies/{study}/series", qido_series, methods=["GET"]),
    Route("/studies/{study}/instances", qido_instances, methods=["GET"]),
    Route("/studies/{study}/series/{series}", wado_retrieve, methods=["GET"]),
    Route("/studies/{study}/series/{series}/metadata", wado_metadata, methods=["GET"]),
    Route("/studies/{study}/series/{series}/instances", qido_instances, methods=["GET"]),
    Route(_I, wado_retrieve, methods=["GET"]),
    Route(_I + "/metadata", wado_metadata, methods=["GET"]),
    Route(_I + "/rendered", wado_rendered, methods=["GET"]),
    Route(_I + "/frames/{frames}", wado_frames, methods=["GET"]),
    Route(_I + "/frames/{frames}/rendered", wado_rendered, methods=["GET"]),
    Route(_I + "/bulkdata/{tag}", wado_bulkdata, methods=["GET"]),
]
