"""The HTTP application (Starlette): health, REST, DICOMweb, WADO-URI, rendered images.

``create_app(runtime)`` builds the ASGI app over a running runtime object
(it uses ``runtime.health(timeout)`` and ``runtime.archive``).  Each area is
its own mount, so that an authentication middleware (a later pass) can wrap
the whole app or a single area:

* ``GET /testdbalive``: 200 only when the database answers a real query and
  the DICOM listener accepts associations; 503 otherwise (text/plain);
* ``/api/...``: REST (:mod:`.rest`);
* ``/dicomweb/...``: QIDO-RS, WADO-RS, STOW-RS (:mod:`.dicomweb`);
* ``GET /wado``: WADO-URI (:mod:`.wado_uri`);
* ``GET /openapi.json``: the OpenAPI description of all of the above;
* ``GET /``: a minimal HTML5 study list + series viewer (``resources/web``).

Errors are JSON: ``{"error": reason, "status": code}``.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import dicomweb, rest, wado_uri
from .common import HttpProblem, problem_response
from .openapi import openapi_spec
from .render import Renderer

#: The HTML5 viewer's files (served read-only under /static; Starlette refuses
#: paths that leave this folder).
WEB_ROOT = Path(__file__).resolve().parents[2] / "resources" / "web"

#: Seconds each health check may take.
HEALTH_TIMEOUT = 3.0


def create_app(runtime, *, render_cache_bytes: int = 64 << 20) -> Starlette:
    async def testdbalive(request: Request) -> PlainTextResponse:
        report = await run_in_threadpool(runtime.health, HEALTH_TIMEOUT)
        return PlainTextResponse(report.text, status_code=200 if report.ok else 503,
                                 headers={"Cache-Control": "no-store"})

    async def on_problem(request: Request, exc: HttpProblem):
        return problem_response(exc.status, exc.reason)

    async def on_http(request: Request, exc: HTTPException):
        return problem_response(exc.status_code, exc.detail or "error")

    routes = [
        Route("/testdbalive", testdbalive, methods=["GET", "HEAD"]),
        Mount("/api", routes=rest.routes, name="api"),
        Mount("/dicomweb", routes=dicomweb.routes, name="dicomweb"),
        Route("/wado", wado_uri.wado, methods=["GET"]),
    ]
    if (WEB_ROOT / "index.html").is_file():
        async def index(request: Request) -> FileResponse:
            """The HTML5 study list and series viewer."""
            return FileResponse(WEB_ROOT / "index.html", media_type="text/html",
                                headers={"Cache-Control": "no-cache"})

        routes += [Route("/", index, methods=["GET"]),
                   Mount("/static", app=StaticFiles(directory=WEB_ROOT), name="static")]
    app = Starlette(routes=routes, exception_handlers={HttpProblem: on_problem,
                                                       HTTPException: on_http})

    def spec(request: Request) -> JSONResponse:
        return JSONResponse(openapi_spec(app.routes))

    app.router.routes.append(Route("/openapi.json", spec, methods=["GET"]))
    app.state.runtime = runtime
    app.state.renderer = Renderer(runtime.archive, cache_bytes=render_cache_bytes) \
        if getattr(runtime, "archive", None) is not None else None
    return app
