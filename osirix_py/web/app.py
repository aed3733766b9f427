"""The HTTP application (Starlette): health now; REST, DICOMweb and the viewer later.

``create_app(runtime)`` builds the ASGI app over a running runtime object.
The app only needs the runtime's ``health(timeout)`` (returning an object
with ``ok`` and ``text``); later routes will use ``runtime.archive``.

``GET /testdbalive``: 200 only when the database answers a real query and the
DICOM listener accepts associations, each within a short timeout; 503
otherwise, with the failing checks in the body (text/plain).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

#: Seconds each health check may take.
HEALTH_TIMEOUT = 3.0


def create_app(runtime) -> Starlette:
    async def testdbalive(request: Request) -> PlainTextResponse:
        report = await run_in_threadpool(runtime.health, HEALTH_TIMEOUT)
        return PlainTextResponse(report.text, status_code=200 if report.ok else 503,
                                 headers={"Cache-Control": "no-store"})

    app = Starlette(routes=[Route("/testdbalive", testdbalive, methods=["GET", "HEAD"])])
    app.state.runtime = runtime
    return app
