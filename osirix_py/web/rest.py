"""The REST API under ``/api``: browse, inspect, download, delete, statistics, thumbnails.

Lists take DICOM matching on the attribute table as query parameters
(``/api/studies?PatientName=DOE*&StudyDate=20240101-``) plus ``limit`` and
``offset``; objects are plain JSON keyed by DICOM keyword.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..dicom import pixels
from ..dicom.tags import Level
from ..services.archive import ArchiveError
from .common import (DICOM_JSON, HttpProblem, check_uid, dicom_json_response, find_one, int_param,
                     lookup_instance, matching_query, plain_row, require_admin, run_find)
from .render import (RenderRequest, _effective_window, choose_media_type, parse_window,
                     render_async, to_display)

LIST_MAX = 10000
_LEVELS = {"patients": Level.PATIENT, "studies": Level.STUDY, "series": Level.SERIES,
           "instances": Level.IMAGE}
_WHAT = {Level.STUDY: "study", Level.SERIES: "series", Level.IMAGE: "instance"}


def _archive(request: Request):
    return request.app.state.runtime.archive


def list_objects(request: Request) -> Response:
    level = _LEVELS[request.url.path.rstrip("/").rsplit("/", 1)[-1]]
    params = request.query_params
    query = matching_query(params.multi_items(), {"limit", "offset"})
    limit = int_param(params, "limit", 100, maximum=LIST_MAX)
    offset = int_param(params, "offset", 0)
    rows = run_find(_archive(request), level, query, limit=limit, offset=offset)
    return JSONResponse([plain_row(r) for r in rows])


def _level_of(request: Request) -> Level:
    return _LEVELS[request.url.path.split("/api/", 1)[1].split("/", 1)[0]]


def get_object(request: Request) -> Response:
    level = _level_of(request)
    uid = request.path_params["uid"]
    archive = _archive(request)
    row = find_one(archive, level, uid, _WHAT[level])
    out = plain_row(row)
    if level is Level.STUDY:
        out["Series"] = [r["SeriesInstanceUID"] for r in
                         archive.find(Level.SERIES, {"StudyInstanceUID": uid})]
    elif level is Level.SERIES:
        out["Instances"] = [r["SOPInstanceUID"] for r in
                            archive.find(Level.IMAGE, {"SeriesInstanceUID": uid})]
    else:
        out["FileSize"] = row.get("_file_size")
    return JSONResponse(out)


def delete_object(request: Request) -> Response:
    require_admin(request)
    level = _level_of(request)
    uid = check_uid(request.path_params["uid"], _WHAT[level])
    try:
        rep = _archive(request).delete(level, uid)
    except ArchiveError as exc:
        raise HttpProblem(404, str(exc)) from None
    return JSONResponse({"deleted": _WHAT[level], "uid": uid, "instances": rep.instances,
                         "files_removed": rep.files_removed, "errors": rep.errors})


def instance_tags(request: Request) -> Response:
    archive = _archive(request)
    row = find_one(archive, Level.IMAGE, request.path_params["uid"], "instance")
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(row)), force=True)
    url = f"{str(request.base_url).rstrip('/')}/api/instances/{row['SOPInstanceUID']}"

    def handler(el) -> str:
        return f"{url}/bulkdata/{el.tag:08X}"

    return dicom_json_response(ds.to_json_dict(bulk_data_threshold=1024,
                                               bulk_data_element_handler=handler,
                                               suppress_invalid_tags=True))


def instance_bulkdata(request: Request) -> Response:
    archive = _archive(request)
    row = find_one(archive, Level.IMAGE, request.path_params["uid"], "instance")
    try:
        tag = int(request.path_params["tag"], 16)
    except ValueError:
        raise HttpProblem(400, "bulk data tag must be 8 hex digits") from None
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(row)), force=True)
    if tag not in ds or not isinstance(ds[tag].value, (bytes, bytearray)):
        raise HttpProblem(404, f"no top-level bulk data element {tag:08X}")
    return Response(bytes(ds[tag].value), media_type="application/octet-stream")


def instance_file(request: Request) -> Response:
    archive = _archive(request)
    row = find_one(archive, Level.IMAGE, request.path_params["uid"], "instance")
    name = f"{row['SOPInstanceUID']}.dcm"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    path = archive.instance_file(row)
    if path is not None and path.is_file():
        return FileResponse(path, media_type="application/dicom", headers=headers)
    return Response(archive.read_instance(row), media_type="application/dicom", headers=headers)


def _render_request(request: Request, default_size: int | None) -> RenderRequest:
    return render_request(request.scope.get("query_string", b""), request.headers.get("accept"),
                          default_size)


#: (query string, Accept, default size) -> RenderRequest: a viewer asks for the same
#: parameters image after image.  Bounded; only short keys are kept.
_RENDER_REQUESTS: dict = {}
_RENDER_REQUESTS_MAX = 256
_KEY_MAX = 512


def render_request(query_string: bytes, accept: str | None,
                   default_size: int | None) -> RenderRequest:
    """The :class:`RenderRequest` of an image route's query (``frame``, ``windowCenter``/
    ``windowWidth``, ``size``, ``quality``, ``format``) and Accept header; 400/406."""
    key = (query_string, accept, default_size)
    req = _RENDER_REQUESTS.get(key)
    if req is not None:
        return req
    p = QueryParams(query_string)
    mt = choose_media_type(p.get("format") and f"image/{p['format'].lower()}" or accept)
    if mt is None:
        raise HttpProblem(406, "images are offered as image/jpeg or image/png")
    size = int_param(p, "size", default_size, minimum=1, maximum=4096)
    frame = int_param(p, "frame", 1, minimum=1)
    req = RenderRequest(frame=frame - 1, window=parse_window(p.get("windowCenter"),
                                                             p.get("windowWidth")),
                        size=(size, size), media_type=mt,
                        quality=int_param(p, "quality", 90, minimum=1, maximum=100))
    if len(query_string) + len(accept or "") <= _KEY_MAX:
        if len(_RENDER_REQUESTS) >= _RENDER_REQUESTS_MAX:
            _RENDER_REQUESTS.clear()
        _RENDER_REQUESTS[key] = req
    return req


_IMAGE_CACHE_CONTROL = {"Cache-Control": "private, max-age=60"}


def _image(data: bytes, req: RenderRequest) -> Response:
    return Response(data, media_type=req.media_type, headers=_IMAGE_CACHE_CONTROL)


def _image_response(request: Request, row: dict, *, default_size: int | None) -> Response:
    req = _render_request(request, default_size)
    return _image(request.app.state.renderer.render(row, req), req)


async def rendered_image(state, uid: str, query_string: bytes, accept: str | None,
                         default_size: int | None = None) -> Response:
    """The image response of ``/api/instances/{uid}/rendered`` (and ``/thumbnail``): also
    called straight from the app's fast path for this route (see :mod:`.app`)."""
    req = render_request(query_string, accept, default_size)
    row = lookup_instance(state.runtime.archive, uid)
    return _image(await render_async(state.renderer, row, req), req)


async def instance_rendered(request: Request) -> Response:
    """The instance rendered as JPEG or PNG (``frame``, ``windowCenter``/``windowWidth``,
    ``size``, ``quality``)."""
    return await rendered_image(request.app.state, request.path_params["uid"],
                                request.scope.get("query_string", b""),
                                request.headers.get("accept"))


async def instance_thumbnail(request: Request) -> Response:
    """A thumbnail of the instance (128 pixels unless ``size`` is given)."""
    return await rendered_image(request.app.state, request.path_params["uid"],
                                request.scope.get("query_string", b""),
                                request.headers.get("accept"), 128)


def series_thumbnail(request: Request) -> Response:
    archive = _archive(request)
    uid = check_uid(request.path_params["uid"], "series")
    rows = archive.find(Level.IMAGE, {"SeriesInstanceUID": uid})
    if not rows:
        raise HttpProblem(404, f"no series with UID {uid} in the archive")
    return _image_response(request, rows[len(rows) // 2], default_size=128)


def instance_pixels(request: Request) -> Response:
    """Raw pixels of one frame for the HTML5 viewer, which windows them itself.

    The body is the frame, little endian, row by row: stored values as
    ``uint8``/``int16``/``uint16``, ``float32`` modality values for anything
    else, or ``rgb8`` for colour images.  ``X-Pixel-Info`` (JSON) says how to
    read and show it: rows, columns, dtype, slope, intercept, the default
    window (modality units), min/max (modality units), invert, frames and
    pixel spacing.
    """
    row = lookup_instance(_archive(request), request.path_params["uid"])
    index = int_param(request.query_params, "frame", 1, minimum=1) - 1
    frame = request.app.state.renderer.frame(row, index)
    p, stored = frame.pipeline, frame.stored
    slope, intercept = p.modality.slope, p.modality.intercept
    kind = stored.dtype.kind + str(stored.dtype.itemsize)
    if p.is_color or stored.ndim == 3:
        body, dtype = np.ascontiguousarray(to_display(frame)), "rgb8"
        lo, hi, slope, intercept = 0.0, 255.0, 1.0, 0.0
    elif kind in ("u1", "i2", "u2") and p.modality.lut is None and not p.voi_luts \
            and p.padding is None:
        body = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("<"))
        dtype = {"u1": "uint8", "i2": "int16", "u2": "uint16"}[kind]
        lo, hi = float(stored.min()), float(stored.max())
        lo, hi = p.modality.output_range(lo, hi)
    else:
        # A modality LUT table, a VOI LUT, padding or an unusual type: send what the
        # viewer can window linearly (modality values; padding as the minimum).
        vals = p.modality.apply(stored, np.float64)
        if p.padding is not None:
            pad = (stored >= p.padding[0]) & (stored <= p.padding[1])
            if (~pad).any():
                vals[pad] = vals[~pad].min()
        body, dtype = np.ascontiguousarray(vals, dtype="<f4"), "float32"
        slope, intercept = 1.0, 0.0
        lo, hi = float(vals.min()), float(vals.max())
    w = _effective_window(p, None) if dtype != "rgb8" else None
    if w is None:
        w = pixels.Window.from_range(lo, hi, "LINEAR")
    info = {"rows": int(body.shape[0]), "columns": int(body.shape[1]), "dtype": dtype,
            "slope": slope, "intercept": intercept, "center": w.center, "width": w.width,
            "min": lo, "max": hi, "invert": bool(p.invert) and dtype != "rgb8",
            "frames": frame.frames, "spacing": list(frame.spacing) if frame.spacing else None}
    return Response(body.tobytes(), media_type="application/octet-stream",
                    headers={"X-Pixel-Info": json.dumps(info, separators=(",", ":")),
                             "Cache-Control": "private, max-age=300"})


def statistics(request: Request) -> Response:
    return JSONResponse(_archive(request).stats())


routes = [
    # The image routes first: the router tries routes in order, and these are the hot ones.
    Route("/instances/{uid}/rendered", instance_rendered, methods=["GET"]),
    Route("/instances/{uid}/thumbnail", instance_thumbnail, methods=["GET"]),
    Route("/patients", list_objects, methods=["GET"]),
    Route("/studies", list_objects, methods=["GET"]),
    Route("/series", list_objects, methods=["GET"]),
    Route("/instances", list_objects, methods=["GET"]),
    Route("/studies/{uid}", get_object, methods=["GET"]),
    Route("/series/{uid}", get_object, methods=["GET"]),
    Route("/instances/{uid}", get_object, methods=["GET"]),
    Route("/studies/{uid}", delete_object, methods=["DELETE"]),
    Route("/series/{uid}", delete_object, methods=["DELETE"]),
    Route("/instances/{uid}", delete_object, methods=["DELETE"]),
    Route("/instances/{uid}/tags", instance_tags, methods=["GET"]),
    Route("/instances/{uid}/bulkdata/{tag}", instance_bulkdata, methods=["GET"]),
    Route("/instances/{uid}/file", instance_file, methods=["GET"]),
    Route("/instances/{uid}/pixels", instance_pixels, methods=["GET"]),
    Route("/series/{uid}/thumbnail", series_thumbnail, methods=["GET"]),
    Route("/statistics", statistics, methods=["GET"]),
]

__all__ = ["routes", "DICOM_JSON"]
