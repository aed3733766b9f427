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
* ``GET /``: the HTML5 study list + series viewer (``resources/web``);
* ``GET/POST /login``, ``POST /logout``, ``GET /api/me``: users (:mod:`.auth`).

Everything but ``/testdbalive`` and the login page needs a user (password,
API token, HTTP Basic or the viewer's session cookie), unless authentication
is off in the configuration (loopback binds only): see :mod:`.auth`.

Errors are JSON: ``{"error": reason, "status": code}``.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import dicomweb, rest, wado_uri
from ..config import is_loopback
from ..resource_files import resources_dir
from .auth import Authenticator, AuthMiddleware, html_file, login_routes
from .common import HttpProblem, problem_response
from .openapi import openapi_spec
from .render import Renderer
from .users import UserStore

log = logging.getLogger(__name__)

#: The HTML5 viewer's files (served read-only under /static; Starlette refuses
#: paths that leave this folder).
WEB_ROOT = resources_dir() / "web"

#: Seconds each health check may take.
HEALTH_TIMEOUT = 3.0


#: Where the first start writes the password of the web user it creates (in the data dir).
INITIAL_PASSWORD_FILE = "initial-admin-password.txt"


def _first_admin(store: UserStore, data_dir) -> None:
    """First start with no web user: create ``admin`` with a random password in a 0600 file.

    Done once per data dir (the file is the record): when every user was removed on
    purpose later, the server only warns.  The password never reaches the log.
    """
    if data_dir is None:
        log.warning("the web server requires a login but there are no users yet: "
                    "add one with 'osirix-py users add NAME --role admin'")
        return
    path = Path(data_dir) / INITIAL_PASSWORD_FILE
    if path.exists():
        log.warning("the web server requires a login but there are no users (any more): "
                    "add one with 'osirix-py users add NAME --role admin'")
        return
    password = secrets.token_urlsafe(15)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{password}\n")
    store.add("admin", password, role="admin")
    log.warning("created the web user 'admin'; its password is in %s (change it with "
                "'osirix-py users passwd admin', then delete the file)", path)


def make_authenticator(runtime) -> Authenticator:
    """The authenticator the runtime's settings ask for (users in its database)."""
    http = getattr(getattr(runtime, "settings", None), "http", None)
    enabled = True if http is None else http.auth
    hours = 12.0 if http is None else http.session_hours
    store = UserStore(runtime.archive.db)
    if enabled and http is not None and not http.ssl_certfile and not is_loopback(http.bind_address):
        log.warning("the web server on %s has no certificate: passwords and session cookies "
                    "cross the network in clear text (set [http] ssl_certfile / ssl_keyfile)",
                    http.bind_address)
    if enabled:
        try:
            if store.count() == 0:
                _first_admin(store, getattr(getattr(runtime, "settings", None), "data_dir", None))
        except Exception as exc:  # noqa: BLE001 - reported, the server still starts
            log.error("cannot read the users table: %s", exc)
    return Authenticator(store, enabled=enabled, session_seconds=hours * 3600.0)


class RenderedFastPath:
    """``GET /api/instances/{uid}/rendered`` straight to its handler.

    The viewer asks for image after image on this route.  This pure ASGI step sits
    inside :class:`~.auth.AuthMiddleware` (the request has been admitted, the security
    headers are added as for any response) and calls the same handler as the route,
    :func:`.rest.rendered_image`, with the same errors (:class:`HttpProblem` as JSON);
    it skips what the route adds around it (exception middleware, router, mount,
    ``Request``), ~0.1 ms a request.  Anything else, including HEAD and paths under a
    root path, takes the ordinary route.
    """

    PREFIX = "/api/instances/"
    SUFFIX = "/rendered"

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            path = scope["path"]
            if path.startswith(self.PREFIX) and path.endswith(self.SUFFIX):
                uid = path[len(self.PREFIX):-len(self.SUFFIX)]
                if uid and "/" not in uid:  # the route's {uid}: one path segment
                    accept = None
                    for name, value in scope["headers"]:
                        if name == b"accept":
                            accept = value.decode("latin-1")
                            break
                    try:
                        response = await rest.rendered_image(
                            scope["app"].state, uid, scope.get("query_string", b""), accept)
                    except HttpProblem as exc:
                        response = problem_response(exc.status, exc.reason)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(runtime, *, render_cache_bytes: int = 64 << 20,
               auth: Authenticator | None = None) -> Starlette:
    auth = auth if auth is not None else make_authenticator(runtime)

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
        *login_routes(WEB_ROOT),
        Mount("/api", routes=rest.routes, name="api"),
        Mount("/dicomweb", routes=dicomweb.routes, name="dicomweb"),
        Route("/wado", wado_uri.wado, methods=["GET"]),
    ]
    if (WEB_ROOT / "index.html").is_file():
        async def index(request: Request):
            """The HTML5 study list and series viewer."""
            return html_file(WEB_ROOT / "index.html")

        routes += [Route("/", index, methods=["GET"]),
                   Mount("/static", app=StaticFiles(directory=WEB_ROOT), name="static")]
    app = Starlette(routes=routes, exception_handlers={HttpProblem: on_problem,
                                                       HTTPException: on_http},
                    middleware=[Middleware(AuthMiddleware, auth=auth),
                                Middleware(RenderedFastPath)])

    def spec(request: Request) -> JSONResponse:
        return JSONResponse(openapi_spec(app.routes))

    app.router.routes.append(Route("/openapi.json", spec, methods=["GET"]))
    app.state.runtime = runtime
    app.state.auth = auth
    app.state.renderer = Renderer(runtime.archive, cache_bytes=render_cache_bytes) \
        if getattr(runtime, "archive", None) is not None else None
    return app
