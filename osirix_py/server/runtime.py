"""The runtime: archive + nodes + DICOM listener + HTTP server, as one object.

``osirix-py server`` runs it headless (:func:`serve_forever`); the GUI will
embed the same :class:`Runtime`.  A test builds one on free ports with a
temporary data dir (or an injected archive over a memory store)::

    rt = Runtime(settings)          # opens the archive unless one is given
    rt.start()                      # startup check, listener, HTTP, supervisor
    rt.listener_port, rt.http_port  # the bound ports (0 in the settings: free ones)
    rt.health()                     # what GET /testdbalive answers
    rt.stop(timeout=10)             # graceful: running associations get *timeout* s

A supervisor thread restarts the listener (and the HTTP server) when it
fails, with a back-off, and sends systemd's ``WATCHDOG=1``.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from ..config import ConfigError, Settings, validate_http
from ..db.engine import Database, DatabaseError
from ..net.scp import Listener, ListenerError
from ..net.scu import EchoError, echo_address
from ..services.factory import open_archive
from ..services.nodes import NodeRepository
from . import sdnotify

log = logging.getLogger(__name__)

#: Seconds the HTTP server gets to finish its requests on stop.
HTTP_STOP_TIMEOUT = 5.0


class RuntimeStartError(RuntimeError):
    """The runtime cannot start (database, port in use ...); the message says why."""


@dataclass
class HealthReport:
    ok: bool
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def text(self) -> str:
        head = "OK" if self.ok else "UNAVAILABLE"
        lines = [head] + [f"{name}: {'ok' if good else 'FAIL'} - {detail}"
                          for name, (good, detail) in self.checks.items()]
        return "\n".join(lines) + "\n"


class HttpServer:
    """uvicorn serving an ASGI app in a thread, on a socket bound here (port 0 ok)."""

    def __init__(self, app, host: str, port: int, *, ssl_certfile: str = "",
                 ssl_keyfile: str = ""):
        self.app = app
        self.host = host
        self.requested_port = port
        self.ssl_certfile = ssl_certfile
        self.ssl_keyfile = ssl_keyfile
        self.port: int | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on sockets whose proto says TCP;
        # without it every keep-alive response waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port if self.port is not None else self.requested_port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise RuntimeStartError(f"cannot listen for HTTP on {self.host}:{self.requested_port}: "
                                    f"{exc.strerror or exc}") from exc
        self.port = sock.getsockname()[1]
        # httptools + uvloop when installed: ~1 ms less per request than h11 + asyncio.
        config = uvicorn.Config(self.app, log_config=None, access_log=True, lifespan="off",
                                loop=_best("uvloop", "asyncio"), http=_best("httptools", "h11"),
                                ws="none", timeout_graceful_shutdown=HTTP_STOP_TIMEOUT,
                                # No X-Forwarded-For from local processes: the client address
                                # is the socket's (the login throttle counts by it).
                                proxy_headers=False,
                                ssl_certfile=self.ssl_certfile or None,
                                ssl_keyfile=self.ssl_keyfile or None)
        if self.ssl_certfile:
            try:
                config.load()
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                sock.close()
                raise RuntimeStartError(f"cannot use the HTTPS certificate {self.ssl_certfile} / "
                                        f"key {self.ssl_keyfile}: {exc}") from exc
        server = uvicorn.Server(config)
        self._server = server
        self._sock = sock
        self._thread = threading.Thread(target=self._run, args=(server, sock), daemon=True,
                                        name=f"http:{self.port}")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeStartError(f"the HTTP server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        log.info("HTTP server on %s://%s:%d", "https" if self.ssl_certfile else "http",
                 self.host, self.port)

    @staticmethod
    def _run(server, sock) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported by is_running()
            log.error("HTTP server failed: %s", exc)
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = HTTP_STOP_TIMEOUT) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.should_exit = True
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(2.0)
        self._server = None
        self._thread = None


def _best(preferred: str, fallback: str) -> str:
    import importlib.util

    return preferred if importlib.util.find_spec(preferred) is not None else fallback


def _probe_database(db: Database) -> Database:
    """A Database that opens a fresh connection for every ping.

    The archive's pooled connections keep the SQLite file open: they go on
    answering after the file is deleted, replaced or made unreadable.  The
    health check must see what a new connection would see, so SQLite files
    are probed without a pool, read-write but never created.
    """
    url = db.engine.url
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not url.database.startswith("file:"):
        uri = Path(url.database).resolve().as_uri() + "?mode=rw"

        def creator():
            return sqlite3.connect(uri, uri=True, timeout=2.0, check_same_thread=False)

        engine = create_engine("sqlite://", creator=creator, poolclass=NullPool)
        return Database(engine=engine, url=db.url)
    return db


class Runtime:
    """The archive, the nodes, the listener and the HTTP server of one installation."""

    def __init__(self, settings: Settings, archive=None, *, verbose: int = 0):
        self.settings = settings
        self._owns_archive = archive is None
        self.archive = archive if archive is not None else open_archive(settings)
        self.nodes = NodeRepository(self.archive.db)
        if archive is not None and settings.nodes:
            self.nodes.sync_from_config(settings.nodes)
        self.listener = Listener(settings.listener, self.archive, self.nodes, debug_pdus=verbose >= 2)
        from ..net import client
        from ..services.jobs import JobManager

        self.jobs = JobManager(self.archive, calling_ae=settings.listener.ae_title,
                               timeout=settings.connect_timeout,
                               listener_port=lambda: self.listener.port,
                               retrieve=client.retrieve, send=client.send)
        self.http: HttpServer | None = None
        self.last_check = None
        self._probe_db = _probe_database(self.archive.db)
        self._health_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
        self._listener_wanted = False
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._started = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------ properties
    @property
    def feed(self):
        return self.archive.feed

    @property
    def listener_port(self) -> int | None:
        return self.listener.port

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    @property
    def ae_title(self) -> str:
        return self.settings.listener.ae_title

    # -------------------------------------------------------------- lifecycle
    def start(self, *, check: bool = True) -> "Runtime":
        """Startup check, then the listener, the HTTP server and the supervisor."""
        with self._lock:
            if self._started:
                return self
            if check:
                t0 = time.perf_counter()
                rep = self.archive.check()
                self.last_check = rep
                log.info("startup check: %d row(s), %d file(s) checked in %.1f s; %d file(s) "
                         "re-indexed, %d row(s) without file removed, %d temporary file(s) removed",
                         rep.rows_checked, rep.files_checked, time.perf_counter() - t0,
                         len(rep.files_reindexed), len(rep.rows_without_file), rep.temporary_removed)
                for bad in rep.files_unreadable:
                    log.warning("startup check: unreadable file %s", bad)
            self._stopping.clear()
            self.jobs.recover()
            try:
                if self.settings.listener.enabled:
                    self.listener.start()
                    self._listener_wanted = True
                if self.settings.http.enabled:
                    from ..web.app import create_app

                    h = validate_http(self.settings.http)
                    self.http = HttpServer(create_app(self), h.bind_address, h.port,
                                           ssl_certfile=h.ssl_certfile, ssl_keyfile=h.ssl_keyfile)
                    self.http.start()
            except ConfigError as exc:
                self._listener_wanted = False
                self.listener.stop(timeout=0)
                raise RuntimeStartError(str(exc)) from exc
            except (ListenerError, RuntimeStartError) as exc:
                self._listener_wanted = False
                self.listener.stop(timeout=0)
                raise RuntimeStartError(str(exc)) from exc
            self._supervisor = threading.Thread(target=self._supervise, daemon=True, name="supervisor")
            self._supervisor.start()
            self._started = True
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the supervisor, the HTTP server and the listener (graceful within
        *timeout* s), then close the archive if this runtime opened it."""
        with self._lock:
            self._stopping.set()
            if self._supervisor is not None:
                self._supervisor.join(timeout=2.0)
                self._supervisor = None
            if self.http is not None:
                self.http.stop()
            self._listener_wanted = False
            self.jobs.shutdown()
            self.listener.stop(timeout=timeout)
            self._health_pool.shutdown(wait=False, cancel_futures=True)
            if self._probe_db is not self.archive.db:
                self._probe_db.dispose()
            if self._owns_archive:
                self.archive.close()
                self.archive.db.dispose()
            self._started = False
            log.info("runtime stopped")

    def __enter__(self) -> "Runtime":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start_listener(self) -> None:
        self.listener.start()
        self._listener_wanted = True

    def stop_listener(self, timeout: float = 10.0) -> None:
        """Stop the listener on purpose (the supervisor leaves it stopped)."""
        self._listener_wanted = False
        self.listener.stop(timeout=timeout)

    # ------------------------------------------------------------- supervisor
    def _supervise(self) -> None:
        wd = sdnotify.watchdog_interval()
        interval = min(0.5, wd) if wd else 0.5
        next_wd = 0.0
        backoff, next_try = 1.0, 0.0
        while not self._stopping.wait(interval):
            now = time.monotonic()
            if self._listener_wanted and not self.listener.is_running() and now >= next_try:
                log.error("DICOM listener is down (%s); restarting it",
                          self.listener.failure or "accept loop ended")
                try:
                    with self._lock:
                        if self._stopping.is_set():
                            break
                        self.listener.start()
                    backoff = 1.0
                    log.info("DICOM listener restarted on port %s", self.listener.port)
                except Exception as exc:  # noqa: BLE001 - keep trying
                    log.error("cannot restart the DICOM listener: %s (next try in %.0f s)", exc, backoff)
                    next_try = now + backoff
                    backoff = min(backoff * 2, 30.0)
            if self.http is not None and not self.http.is_running() and not self._stopping.is_set():
                log.error("HTTP server is down; restarting it")
                try:
                    self.http.start()
                except Exception as exc:  # noqa: BLE001
                    log.error("cannot restart the HTTP server: %s", exc)
            if wd and now >= next_wd:
                sdnotify.watchdog()
                next_wd = now + wd

    # ----------------------------------------------------------------- health
    def _check_database(self) -> tuple[bool, str]:
        t0 = time.perf_counter()
        self._probe_db.ping()
        return True, f"answered in {(time.perf_counter() - t0) * 1000:.0f} ms"

    def _check_listener(self, timeout: float) -> tuple[bool, str]:
        if not self.settings.listener.enabled:
            return True, "disabled in the configuration"
        if not self.listener.is_running():
            return False, "not running"
        host, port = self.listener.host_for_clients, self.listener.port
        try:
            rtt = echo_address(host, port, self.ae_title, calling_ae=self.ae_title, timeout=timeout)
        except EchoError as exc:
            if exc.kind == "rejected":
                # Our own access control answered: the listener accepts requests.
                return True, f"{self.ae_title}@{host}:{port} answered (association {exc.reason})"
            return False, str(exc)
        return True, f"C-ECHO {self.ae_title}@{host}:{port} in {rtt * 1000:.1f} ms"

    def health(self, timeout: float = 3.0) -> HealthReport:
        """Check the database (a real query on a fresh connection) and the
        listener (a C-ECHO to ourselves), in parallel, each within *timeout*."""
        checks: dict[str, tuple[bool, str]] = {}
        try:
            futures = {
                "database": self._health_pool.submit(self._check_database),
                "listener": self._health_pool.submit(self._check_listener, timeout),
            }
        except RuntimeError:  # pool shut down: the runtime is stopping
            return HealthReport(False, {"runtime": (False, "stopping")})
        deadline = time.monotonic() + timeout + 0.5
        for name, fut in futures.items():
            try:
                checks[name] = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                checks[name] = (False, f"no answer within {timeout:.1f} s")
            except Exception as exc:  # noqa: BLE001
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                checks[name] = (False, f"{exc.__class__.__name__}: {first}"[:300])
        return HealthReport(all(ok for ok, _ in checks.values()), checks)


# --------------------------------------------------------------------------- server mode
def settle_heap() -> None:
    """Collect once, then keep every object alive now out of the cyclic
    garbage collector's scans (``gc.freeze``).

    Call once a long-running process has started: what it loaded (modules,
    the web application, SQLAlchemy's caches: ~100,000 objects) lives as long
    as the process, yet each full collection walked all of it -- a C-FIND
    (thousands of short-lived objects) paid ~0.3 ms on average for that.
    Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def serve_forever(settings: Settings, verbose: int = 0) -> int:
    """``osirix-py server``: run headless until SIGTERM/SIGINT; returns the exit status."""
    from .logs import setup_server_logging

    log_path = setup_server_logging(settings.log_dir, verbose)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        log.info("osirix-py server starting (data dir %s, log %s)", settings.data_dir, log_path)
        sdnotify.status("starting: startup check")
        try:
            runtime = Runtime(settings, verbose=verbose)
        except DatabaseError as exc:
            log.error("cannot open the archive: %s", exc)
            sdnotify.status(f"failed: {exc}")
            return 1
        try:
            runtime.start()
        except RuntimeStartError as exc:
            log.error("cannot start: %s", exc)
            sdnotify.status(f"failed: {exc}")
            runtime.stop(timeout=0)
            return 1
        lst = settings.listener
        summary = (f"DICOM {lst.ae_title} on {lst.bind_address}:{runtime.listener_port}"
                   if lst.enabled else "DICOM listener disabled")
        if runtime.http is not None:
            summary += f", HTTP on {settings.http.bind_address}:{runtime.http_port}"
        log.info("serving: %s", summary)
        settle_heap()
        sdnotify.ready(f"serving: {summary}")
        while not stop.wait(0.5):
            pass
        name = signal.Signals(received[0]).name if received else "request"
        log.info("%s received: shutting down", name)
        sdnotify.stopping(f"stopping ({name})")
        runtime.stop(timeout=10.0)
        log.info("osirix-py server stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
