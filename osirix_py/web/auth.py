"""Authentication and rights for the whole web server (an ASGI middleware).

Everything but ``GET /testdbalive`` (and the login page with its two static
files) needs a user of :mod:`osirix_py.web.users`, given in one of three ways:

* ``Authorization: Bearer oxp_...``: an API token (``osirix-py users token``);
* ``Authorization: Basic ...``: name and password, for DICOMweb clients;
* the ``osirixpy_session`` cookie of the HTML5 viewer, set by ``POST /login``
  (HttpOnly, SameSite=Strict, Secure over HTTPS).

Rights: ``admin`` may do anything; ``readonly`` only safe methods (GET, HEAD,
OPTIONS): no DELETE, no STOW-RS (403).  A request authenticated by the cookie
with an unsafe method must also carry ``X-Requested-With`` (which a foreign
page cannot add without a CORS preflight that this server never grants).

A password costs one scrypt (~0.1 s) to check, so a successful Basic login is
remembered for :data:`BASIC_TTL` seconds under an HMAC of the credentials
(keyed by a per-process random key; the password itself is never kept), and
is honoured only while the user's stored hash is unchanged.  User records are
re-read at most every :data:`USER_TTL` seconds, so that ``osirix-py users
remove/passwd`` in another process takes effect within that time.  Failed
logins are counted per client address; past :data:`MAX_FAILURES` in
:data:`FAILURE_WINDOW` seconds the client gets 429 without a check.

With authentication off (allowed only on a loopback bind, see
:func:`osirix_py.config.validate_http`), every request acts as an admin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl, quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from .users import User, UserStore

log = logging.getLogger(__name__)

COOKIE = "osirixpy_session"
REALM = "osirix-py"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Reachable without a user: the health check and what the login page needs.
PUBLIC_PATHS = frozenset({"/testdbalive", "/login", "/static/login.js", "/static/viewer.css"})
BASIC_TTL = 600.0
USER_TTL = 2.0
MAX_FAILURES = 20
FAILURE_WINDOW = 600.0
MAX_SESSIONS = 10000
MAX_LOGIN_BODY = 16 << 10

#: What every HTML page of ours may load: only our own files (no inline script),
#: so that even a DICOM value that slipped into the DOM as markup could not run.
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                     (b"x-frame-options", b"DENY")]

ANONYMOUS = User(id=0, name="", role="admin")


class Authenticator:
    """Resolves credentials to users; holds the sessions and the caches."""

    def __init__(self, store: UserStore | None, *, enabled: bool = True,
                 session_seconds: float = 12 * 3600.0):
        if enabled and store is None:
            raise ValueError("authentication needs a user store")
        self.store = store
        self.enabled = enabled
        self.session_seconds = session_seconds
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._basic: dict[bytes, tuple[str, str, float]] = {}
        self._sessions: dict[str, tuple[str, float]] = {}
        self._users: dict[str, tuple[User | None, float]] = {}
        self._tokens: dict[str, tuple[str | None, float]] = {}
        self._failures: dict[str, deque] = {}

    # -- user records ------------------------------------------------------------
    def _fresh_user(self, name: str) -> tuple[bool, User | None]:
        """(True, user) if the cached record is fresh enough, else (False, None)."""
        hit = self._users.get(name)
        if hit is not None and time.monotonic() - hit[1] < USER_TTL:
            return True, hit[0]
        return False, None

    def user(self, name: str) -> User | None:
        fresh, u = self._fresh_user(name)
        if fresh:
            return u
        u = self.store.get(name)  # type: ignore[union-attr]
        with self._lock:
            if len(self._users) > 4 * MAX_SESSIONS:
                self._users.clear()
            self._users[name] = (u, time.monotonic())
        return u

    def forget(self, name: str | None = None) -> None:
        """Drop cached records (after a change made in this process)."""
        with self._lock:
            if name is None:
                self._users.clear()
                self._tokens.clear()
            else:
                self._users.pop(name, None)

    # -- passwords ----------------------------------------------------------------
    def _digest(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, name.encode("utf-8") + b"\0" + password.encode("utf-8"),
                        hashlib.sha256).digest()

    def _basic_cached(self, name: str, password: str, *, refresh: bool = False
                      ) -> tuple[bool, User | None]:
        """(True, user) when a recent check of these credentials still holds.

        Without *refresh* it never touches the database (safe in the event loop).
        """
        hit = self._basic.get(self._digest(name, password))
        if hit is None or hit[2] < time.monotonic():
            return False, None
        fresh, u = self._fresh_user(name)
        if not fresh:
            if not refresh:
                return False, None
            u = self.user(name)
        if u is not None and hmac.compare_digest(u.password_hash, hit[1]):
            return True, u
        return False, None

    def check_password(self, name: str, password: str) -> User | None:
        """The user if the password is theirs (slow on a cache miss: run in a thread)."""
        ok, u = self._basic_cached(name, password, refresh=True)
        if ok:
            return u
        u = self.store.authenticate(name, password)  # type: ignore[union-attr]
        if u is not None:
            with self._lock:
                if len(self._basic) > 4 * MAX_SESSIONS:
                    self._basic.clear()
                self._basic[self._digest(name, password)] = (name, u.password_hash,
                                                             time.monotonic() + BASIC_TTL)
                self._users[name] = (u, time.monotonic())
        return u

    # -- tokens -------------------------------------------------------------------
    def check_token(self, token: str) -> User | None:
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        hit = self._tokens.get(digest)
        if hit is not None and time.monotonic() - hit[1] < USER_TTL:
            return self.user(hit[0]) if hit[0] else None
        u = self.store.by_token(token)  # type: ignore[union-attr]
        with self._lock:
            if len(self._tokens) > 4 * MAX_SESSIONS:
                self._tokens.clear()
            self._tokens[digest] = (u.name if u else None, time.monotonic())
            if u is not None:
                self._users[u.name] = (u, time.monotonic())
        return u

    # -- sessions -------------------------------------------------------------------
    def new_session(self, user: User) -> str:
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                for k in [k for k, (_, exp) in self._sessions.items() if exp < now]:
                    del self._sessions[k]
                while len(self._sessions) >= MAX_SESSIONS:
                    self._sessions.pop(next(iter(self._sessions)))
            self._sessions[_sid_key(sid)] = (user.name, now + self.session_seconds)
        return sid

    def end_session(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(_sid_key(sid), None)

    def session_name(self, sid: str) -> str | None:
        hit = self._sessions.get(_sid_key(sid))
        if hit is None:
            return None
        if hit[1] < time.monotonic():
            self.end_session(sid)
            return None
        return hit[0]

    # -- throttling -----------------------------------------------------------------
    def too_many_failures(self, client: str) -> bool:
        q = self._failures.get(client)
        if not q:
            return False
        cutoff = time.monotonic() - FAILURE_WINDOW
        while q and q[0] < cutoff:
            q.popleft()
        return len(q) >= MAX_FAILURES

    def failed(self, client: str, name: str, how: str) -> None:
        with self._lock:
            if len(self._failures) > MAX_SESSIONS:
                self._failures.clear()
            self._failures.setdefault(client, deque(maxlen=MAX_FAILURES * 2)).append(time.monotonic())
        # The name only, never the password.
        log.warning("authentication failed (%s) for %r from %s", how, name[:64], client)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def _sid_key(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest()


def _client(scope) -> str:
    c = scope.get("client")
    return c[0] if c else "?"


def _cookie(headers: Headers, name: str) -> str | None:
    raw = headers.get("cookie")
    if not raw or name not in raw:
        return None
    try:
        jar = SimpleCookie()
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
        return None
    m = jar.get(name)
    return m.value if m is not None else None


def parse_basic(value: str) -> tuple[str, str] | None:
    try:
        raw = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    name, sep, password = raw.partition(":")
    return (name, password) if sep else None


class AuthMiddleware:
    """Pure ASGI: resolves the user, enforces rights, adds security headers."""

    def __init__(self, app, auth: Authenticator):
        self.app = app
        self.auth = auth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _SECURITY_HEADERS
            await send(message)

        auth = self.auth
        path = scope["path"]
        if not auth.enabled:
            scope["user"], scope["auth"] = ANONYMOUS, "off"
            await self.app(scope, receive, send_with_headers)
            return
        if path in PUBLIC_PATHS:
            scope["user"], scope["auth"] = None, None
            await self.app(scope, receive, send_with_headers)
            return
        headers = Headers(scope=scope)
        client = _client(scope)
        user: User | None = None
        how = None
        authz = headers.get("authorization")
        if authz:
            scheme, _, cred = authz.partition(" ")
            scheme = scheme.lower()
            if auth.too_many_failures(client):
                await _problem(429, "too many failed logins from this address; try again later",
                               {"Retry-After": str(int(FAILURE_WINDOW))})(scope, receive,
                                                                          send_with_headers)
                return
            name = ""
            if scheme == "bearer":
                how = "token"
                user = await run_in_threadpool(auth.check_token, cred.strip())
            elif scheme == "basic":
                how = "basic"
                pair = parse_basic(cred)
                if pair is not None:
                    name = pair[0]
                    ok, user = auth._basic_cached(*pair)
                    if not ok:
                        user = await run_in_threadpool(auth.check_password, *pair)
            else:
                await self._challenge(scope, receive, send_with_headers, headers,
                                      f"unsupported authorization scheme {scheme[:20]!r}")
                return
            if user is None:
                auth.failed(client, name, how)
                await self._challenge(scope, receive, send_with_headers, headers,
                                      "invalid credentials")
                return
        else:
            sid = _cookie(headers, COOKIE)
            if sid:
                name = auth.session_name(sid)
                if name is not None:
                    fresh, user = auth._fresh_user(name)
                    if not fresh:
                        user = await run_in_threadpool(auth.user, name)
                    how = "session"
            if user is None:
                if path == "/logout":
                    scope["user"], scope["auth"] = None, None
                    await self.app(scope, receive, send_with_headers)
                    return
                await self._challenge(scope, receive, send_with_headers, headers,
                                      "authentication required")
                return
        method = scope["method"]
        if method not in SAFE_METHODS and path != "/logout":
            if not user.is_admin:
                await _problem(403, f"user {user.name!r} is read-only: {method} is not allowed")(
                    scope, receive, send_with_headers)
                return
            if how == "session" and not headers.get("x-requested-with"):
                await _problem(403, "a cookie-authenticated request that changes data must carry "
                                    "X-Requested-With")(scope, receive, send_with_headers)
                return
        scope["user"], scope["auth"] = user, how
        await self.app(scope, receive, send_with_headers)

    async def _challenge(self, scope, receive, send, headers: Headers, reason: str):
        method = scope["method"]
        if method in ("GET", "HEAD") and "text/html" in headers.get("accept", "") \
                and not headers.get("authorization") and not headers.get("x-requested-with"):
            target = scope["path"]
            qs = scope.get("query_string", b"").decode("latin-1")
            if qs:
                target += "?" + qs
            resp = RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
        else:
            extra = {}
            if not headers.get("x-requested-with"):
                # A browser's fetch from our own viewer asks for X-Requested-With: it gets
                # a plain 401 (and goes to /login) instead of the browser's Basic dialog.
                extra["WWW-Authenticate"] = f'Basic realm="{REALM}", charset="UTF-8"'
            resp = _problem(401, reason, extra)
        await resp(scope, receive, send)


def _problem(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "status": status}, status_code=status,
                        headers=headers or {})


# --------------------------------------------------------------------------- routes
_NEXT_RE = re.compile(r"^/(?![/\\])[^\\\s]*$")


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site)."""
    if not target or not _NEXT_RE.match(target) or target.startswith("/login"):
        return "/"
    return target


def html_file(path: Path) -> FileResponse:
    return FileResponse(path, media_type="text/html",
                        headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP})


def login_routes(web_root: Path):
    """``GET/POST /login``, ``POST /logout``, ``GET /api/me``."""
    from starlette.routing import Route

    async def login_page(request: Request) -> Response:
        """The login page of the HTML5 viewer."""
        return html_file(web_root / "login.html")

    async def login(request: Request) -> Response:
        """Log in with name and password (form or JSON); sets the session cookie."""
        auth: Authenticator = request.app.state.auth
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return _problem(413, "login request too large")
        is_json = ctype == "application/json"
        try:
            if is_json:
                data = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise ValueError
            else:
                data = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (ValueError, UnicodeDecodeError):
            return _problem(400, "send username and password as a form or a JSON object")
        name, password = data.get("username"), data.get("password")
        nxt = safe_next(data.get("next") if isinstance(data.get("next"), str) else None)
        if not auth.enabled:
            return JSONResponse({"user": None, "role": "admin", "auth": "off"}) if is_json \
                else RedirectResponse(nxt, status_code=303)
        client = _client(request.scope)
        if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
            return _problem(400, "username and password are required")
        if auth.too_many_failures(client):
            return _problem(429, "too many failed logins from this address; try again later",
                            {"Retry-After": str(int(FAILURE_WINDOW))})
        user = await run_in_threadpool(auth.check_password, name, password)
        if user is None:
            auth.failed(client, name, "login")
            if is_json:
                return _problem(401, "wrong user name or password")
            return RedirectResponse("/login?error=1&next=" + quote(nxt, safe=""), status_code=303)
        auth.succeeded(client)
        log.info("user %r logged in from %s", user.name, client)
        sid = auth.new_session(user)
        resp: Response = JSONResponse({"user": user.name, "role": user.role, "auth": "session"}) \
            if is_json else RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, sid, max_age=int(auth.session_seconds), path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
        return resp

    async def logout(request: Request) -> Response:
        """End the session of the cookie (if any)."""
        auth: Authenticator = request.app.state.auth
        sid = request.cookies.get(COOKIE)
        if sid:
            auth.end_session(sid)
        wants_json = "application/json" in request.headers.get("accept", "") \
            or request.headers.get("x-requested-with")
        resp: Response = JSONResponse({"logged_out": True}) if wants_json \
            else RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
        return resp

    async def me(request: Request) -> Response:
        """Who the request is authenticated as, and the role."""
        user = request.scope.get("user")
        how = request.scope.get("auth")
        return JSONResponse({"user": user.name if user and how != "off" else None,
                             "role": user.role if user else None, "auth": how})

    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/me", me, methods=["GET"]),
    ]
