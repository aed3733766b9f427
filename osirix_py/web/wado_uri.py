"""WADO-URI (PS3.18 chapter 9): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

``contentType`` image/jpeg (default), image/png or application/dicom;
``windowCenter``/``windowWidth``, ``rows``/``columns`` (aspect kept),
``frameNumber`` (1-based) and ``imageQuality`` apply to images.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .common import HttpProblem, int_param, lookup_instance
from .render import RenderRequest, choose_media_type, parse_window, render_async


async def wado(request: Request) -> Response:
    p = request.query_params
    if p.get("requestType") != "WADO":
        raise HttpProblem(400, "requestType must be WADO")
    missing = [k for k in ("studyUID", "seriesUID", "objectUID") if not p.get(k)]
    if missing:
        raise HttpProblem(400, "missing parameter(s): " + ", ".join(missing))
    archive = request.app.state.runtime.archive
    row = lookup_instance(archive, p["objectUID"], study=p["studyUID"], series_uid=p["seriesUID"])
    mt = choose_media_type(p.get("contentType"), allowed=("image/jpeg", "image/png",
                                                          "application/dicom"))
    if mt is None:
        raise HttpProblem(406, f"contentType {p.get('contentType')!r} is not offered: "
                               "use image/jpeg, image/png or application/dicom")
    if mt == "application/dicom":
        return Response(await run_in_threadpool(archive.read_instance, row),
                        media_type="application/dicom")
    rows = int_param(p, "rows", None, minimum=1, maximum=4096)
    cols = int_param(p, "columns", None, minimum=1, maximum=4096)
    frame = int_param(p, "frameNumber", 1, minimum=1)
    req = RenderRequest(frame=frame - 1, window=parse_window(p.get("windowCenter"),
                                                             p.get("windowWidth")),
                        size=(rows, cols), media_type=mt,
                        quality=int_param(p, "imageQuality", 90, minimum=1, maximum=100))
    return Response(await render_async(request.app.state.renderer, row, req), media_type=mt)
