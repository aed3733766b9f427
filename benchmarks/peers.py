"""Reference DICOM peers for the benchmarks, started and stopped from Python.

This is /work/shared/tools/peers.sh ported to Python, with what a benchmark
needs on top: every peer gets free ports and its own temporary directory, so
several runs (or a system Orthanc on 4242/8042) never collide.

* :class:`Orthanc` -- ``/usr/sbin/Orthanc`` with its default SQLite index, a
  generated JSON configuration whose ``DicomModalities`` know the dcmtk
  clients, the storescp move destination and the osirix-py server AE.
* :class:`StoreSCP` -- dcmtk ``storescp`` (files only, or ``--ignore``).
* :class:`OsirixServer` -- ``python -m osirix_py --data-dir D server ...``.

All bind 127.0.0.1 only.  Neither Orthanc 1.10 nor storescp 3.6.7 can choose a
bind address, so they run under a tiny ``LD_PRELOAD`` shim (compiled once with
the C compiler into the cache dir) that turns their 0.0.0.0 / :: binds into
loopback binds.  All of them, and the dcmtk clients run by :func:`dcmtk`, get
``TCP_NODELAY=1`` in their environment: dcmtk leaves Nagle on otherwise and
every DIMSE exchange then waits ~40 ms for a delayed ACK (PEERS.md, trap 1).

Processes are started in their own session and stopped by their own PID
(SIGTERM, then SIGKILL after a bounded wait); every wait loop is bounded.  Use
them as context managers so that they are always stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

log = logging.getLogger("benchmarks.peers")

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

#: AE titles the dcmtk clients use (Orthanc must know a C-FIND/MOVE/GET caller).
CLIENT_AETS = ("FINDSCU", "MOVESCU", "GETSCU", "STORESCU", "BENCH")
OSIRIX_AET = "OSIRIXPY"
STORESCP_AET = "STORESCP"


class PeerError(RuntimeError):
    """A peer could not be started, or a client run failed."""


# --------------------------------------------------------------------------- tools
def orthanc_binary() -> str | None:
    found = shutil.which("Orthanc")
    if found:
        return found
    return "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None


def have_dcmtk() -> bool:
    return all(shutil.which(t) for t in ("storescu", "storescp", "findscu", "movescu", "getscu"))


def missing_tools(*, orthanc: bool = True) -> list[str]:
    """What this machine lacks for the network benchmarks (empty: all there)."""
    out = []
    if not have_dcmtk():
        out.append("dcmtk (storescu/storescp/findscu/movescu/getscu)")
    if orthanc and orthanc_binary() is None:
        out.append("Orthanc")
    return out


def free_port() -> int:
    """A TCP port that is free on every address right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_SHIM_C = r"""
/* LD_PRELOAD shim: turn bind(INADDR_ANY / in6addr_any) into a loopback bind. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
int bind(int fd, const struct sockaddr *sa, socklen_t len) {
  static bind_fn real;
  if (!real) real = (bind_fn)dlsym(RTLD_NEXT, "bind");
  if (sa && sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in a; memcpy(&a, sa, sizeof a);
    if (a.sin_addr.s_addr == htonl(INADDR_ANY)) {
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      return real(fd, (const struct sockaddr *)&a, sizeof a);
    }
  } else if (sa && sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 a; memcpy(&a, sa, sizeof a);
    if (memcmp(&a.sin6_addr, &in6addr_any, sizeof a.sin6_addr) == 0) {
      a.sin6_addr = in6addr_loopback;
      return real(fd, (const struct sockaddr *)&a, sizeof a);
    }
  }
  return real(fd, sa, len);
}
"""


def loopback_shim(cache_dir: Path) -> Path | None:
    """Build (once) the bind-to-loopback shim; None (with a warning) without a C compiler."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    so = cache_dir / "bindlo.so"
    if so.is_file() and so.stat().st_size > 0:
        return so
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler: peers will bind 0.0.0.0 (install gcc for loopback-only peers)")
        return None
    src = cache_dir / "bindlo.c"
    src.write_text(_SHIM_C)
    tmp = so.with_suffix(f".so.{os.getpid()}")
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src), "-ldl"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        log.warning("could not build the loopback shim: %s", res.stderr.strip())
        tmp.unlink(missing_ok=True)
        return None
    os.replace(tmp, so)
    return so


def peer_env(shim: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if shim is not None:
        env["LD_PRELOAD"] = str(shim)
    return env


def client_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    env.pop("LD_PRELOAD", None)
    return env


# --------------------------------------------------------------------------- base
class _Process:
    """One background peer process, stopped by its own PID."""

    name = "peer"

    def __init__(self, workdir: Path | None = None, *, keep: bool = False):
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{self.name}.log"
        self._log_fh = None

    # -- lifecycle ----------------------------------------------------------
    def _spawn(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self._log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                     cwd=str(self.workdir))
        log.debug("%s: started pid %d: %s", self.name, self.proc.pid, " ".join(argv))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _wait_ready(self, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise PeerError(f"{self.name} exited during start-up (rc {self.proc.returncode}):\n"
                                f"{self.log_tail()}")
            if check():
                return
            time.sleep(0.05)
        self.stop()
        raise PeerError(f"{self.name} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s: still alive %.0f s after SIGTERM, SIGKILL %d", self.name, timeout, p.pid)
                p.kill()
                p.wait(10)
            except ProcessLookupError:
                pass
        self.proc = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError


# --------------------------------------------------------------------------- Orthanc
class Orthanc(_Process):
    """Orthanc with its SQLite index in a temporary directory, on free loopback ports."""

    name = "orthanc"

    def __init__(self, *, shim: Path | None, aet: str = "ORTHANC",
                 modalities: dict[str, tuple[str, int]] | None = None,
                 extra_config: dict | None = None, dicomweb: bool = False, **kw):
        super().__init__(**kw)
        self.shim = shim
        self.aet = aet
        self.dicom_port = 0
        self.http_port = 0
        #: name -> (AE title, port) on 127.0.0.1, beside the dcmtk client AEs.
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.dicomweb = dicomweb

    def config(self) -> dict:
        mods = {aet: {"AET": aet, "Host": LOOPBACK, "Port": 11100 + i}
                for i, aet in enumerate(CLIENT_AETS)}
        for name, (aet, port) in self.modalities.items():
            mods[name] = {"AET": aet, "Host": LOOPBACK, "Port": port}
        plugins = [str(DICOMWEB_PLUGIN)] if self.dicomweb and DICOMWEB_PLUGIN.exists() else []
        cfg = {
            "Name": "BENCH-ORTHANC",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "Plugins": plugins,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "RegisteredUsers": {},
            "WebDavEnabled": False,
            "ExecuteLuaEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": mods,
            "OrthancPeers": {},
        }
        if plugins:
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                               "WadoRoot": "/wado", "Host": f"{LOOPBACK}:{self.http_port}", "Ssl": False}
        cfg.update(self.extra_config)
        return cfg

    def start(self) -> "Orthanc":
        binary = orthanc_binary()
        if binary is None:
            raise PeerError("Orthanc is not installed (scripts/setup.sh installs it)")
        self.dicom_port, self.http_port = free_port(), free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=2))
        self._spawn([binary, str(cfg_path)], peer_env(self.shim))
        self._wait_ready(lambda: self._http_ok() and port_open(self.dicom_port), 60.0)
        log.info("orthanc up: pid %d, AET %s, DICOM %s:%d, HTTP %s", self.proc.pid, self.aet,
                 LOOPBACK, self.dicom_port, self.url)
        return self

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def _http_ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/system", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def rest(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def count_instances(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


# --------------------------------------------------------------------------- storescp
class StoreSCP(_Process):
    """dcmtk storescp: files only (``-od``), or ``ignore=True`` to receive without writing."""

    name = "storescp"

    def __init__(self, *, shim: Path | None, aet: str = STORESCP_AET, ignore: bool = False,
                 port: int | None = None, **kw):
        super().__init__(**kw)
        self.shim = shim
        self.aet = aet
        self.ignore = ignore
        self.port = port or 0
        self.out_dir = self.workdir / "out"

    def start(self) -> "StoreSCP":
        if not shutil.which("storescp"):
            raise PeerError("dcmtk storescp is not installed (scripts/setup.sh installs it)")
        self.port = self.port or free_port()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        argv = ["storescp", "-aet", self.aet, "-od", str(self.out_dir), "-dhl"]
        if self.ignore:
            argv.append("--ignore")
        argv.append(str(self.port))
        self._spawn(argv, peer_env(self.shim))
        self._wait_ready(lambda: port_open(self.port), 20.0)
        log.info("storescp up: pid %d, AET %s, port %d", self.proc.pid, self.aet, self.port)
        return self

    def count_files(self) -> int:
        return count_files(self.out_dir)

    def clear(self) -> None:
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- osirix-py
def osirix_server_available() -> tuple[bool, str]:
    """Whether ``osirix-py server`` can run (its runtime module imports)."""
    res = subprocess.run([sys.executable, "-c", "import osirix_py.server.runtime"],
                         capture_output=True, text=True, cwd=str(ROOT))
    if res.returncode == 0:
        return True, ""
    last = (res.stderr.strip().splitlines() or ["import failed"])[-1]
    return False, f"osirix_py.server.runtime cannot be imported ({last})"


class OsirixServer(_Process):
    """``python -m osirix_py --data-dir D server --bind 127.0.0.1 --http-port 0`` on a free port.

    *nodes* (name -> (AE title, port) on 127.0.0.1) go into the data dir's
    config.toml, e.g. the storescp that a C-MOVE sends to.
    """

    name = "osirix-py"

    def __init__(self, *, aet: str = OSIRIX_AET, nodes: dict[str, tuple[str, int]] | None = None,
                 extra_args: Sequence[str] = (), **kw):
        super().__init__(**kw)
        self.aet = aet
        self.port = 0
        self.nodes = dict(nodes or {})
        self.extra_args = list(extra_args)
        self.data_dir = self.workdir / "data"

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for name, (aet, port) in self.nodes.items():
            lines += ["[[nodes]]", f'name = "{name}"', f'ae_title = "{aet}"', f'host = "{LOOPBACK}"',
                      f"port = {port}", ""]
        (self.data_dir / "config.toml").write_text("\n".join(lines))

    def start(self) -> "OsirixServer":
        self.write_config()
        self.port = free_port()
        argv = [sys.executable, "-m", "osirix_py", "--data-dir", str(self.data_dir), "server",
                "--port", str(self.port), "--http-port", "0", "--bind", LOOPBACK,
                "--aet", self.aet, *self.extra_args]
        env = peer_env(None)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self._spawn(argv, env)
        # Ready = answers a C-ECHO (a bare TCP probe would leave pynetdicom an
        # association thread waiting for its A-ASSOCIATE until the ACSE timeout).
        self._wait_ready(lambda: echo_ok(self.aet, self.port), 60.0)
        log.info("osirix-py server up: pid %d, AET %s, port %d, data %s", self.proc.pid, self.aet,
                 self.port, self.data_dir)
        return self

    def count_instances(self) -> int:
        """Instances in the server's database (read beside it: SQLite WAL allows that)."""
        from sqlalchemy import create_engine, text

        eng = create_engine(f"sqlite:///{self.data_dir / 'osirix-py.sqlite'}")
        try:
            with eng.connect() as conn:
                return int(conn.execute(text("SELECT count(*) FROM instances")).scalar_one())
        finally:
            eng.dispose()


# --------------------------------------------------------------------------- clients
def echo_ok(aec: str, port: int, aet: str = "BENCH") -> bool:
    """True when a C-ECHO to 127.0.0.1:*port* succeeds (dcmtk echoscu, else pynetdicom)."""
    if shutil.which("echoscu"):
        try:
            res = subprocess.run(["echoscu", "-to", "2", "-aet", aet, "-aec", aec, LOOPBACK, str(port)],
                                 capture_output=True, env=client_env(), timeout=10,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
        return res.returncode == 0
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate(LOOPBACK, port, ae_title=aec)
    try:
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


def dcmtk(argv: Sequence[str], *, timeout: float = 900.0, check: bool = True) -> float:
    """Run a dcmtk client with ``TCP_NODELAY=1``; return its wall-clock seconds.

    Raises :class:`PeerError` with the tail of its output when it fails (a
    non-zero exit, or an error line from a client that exits 0 anyway).
    """
    t0 = time.perf_counter()
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, env=client_env(),
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{argv[0]} did not finish within {timeout:.0f} s") from exc
    dt = time.perf_counter() - t0
    out = (res.stdout or "") + (res.stderr or "")
    if check and (res.returncode != 0 or "E: " in out or "F: " in out):
        tail = "\n".join(out.strip().splitlines()[-12:])
        raise PeerError(f"{' '.join(argv[:3])} ... failed (rc {res.returncode}):\n{tail}")
    return dt


def storescu(files_or_dirs: Sequence[Path | str], *, aec: str, port: int,
             aet: str = "STORESCU", timeout: float = 1800.0) -> float:
    """Send files (folders recursively, ``*.dcm`` only) in ONE association; seconds."""
    return dcmtk(["storescu", "-aet", aet, "-aec", aec, "+sd", "+r", "+sp", "*.dcm",
                  LOOPBACK, str(port), *map(str, files_or_dirs)], timeout=timeout)


def findscu(keys: dict[str, str], *, aec: str, port: int, repeat: int = 1, level: str = "STUDY",
            aet: str = "FINDSCU", timeout: float = 900.0) -> float:
    argv = ["findscu", "-aet", aet, "-aec", aec, "-S", "-k", f"QueryRetrieveLevel={level}"]
    for k, v in keys.items():
        argv += ["-k", f"{k}={v}" if v != "" else k]
    if repeat > 1:
        argv += ["--repeat", str(repeat)]
    argv += [LOOPBACK, str(port)]
    return dcmtk(argv, timeout=timeout)


def movescu(keys: dict[str, str], *, aec: str, port: int, dest: str, level: str = "SERIES",
            aet: str = "MOVESCU", timeout: float = 900.0) -> float:
    argv = ["movescu", "-aet", aet, "-aec", aec, "-aem", dest, "-S",
            "-k", f"QueryRetrieveLevel={level}"]
    for k, v in keys.items():
        argv += ["-k", f"{k}={v}"]
    argv += [LOOPBACK, str(port)]
    return dcmtk(argv, timeout=timeout)


def getscu(keys: dict[str, str], *, aec: str, port: int, out_dir: Path, level: str = "SERIES",
           aet: str = "GETSCU", timeout: float = 900.0) -> float:
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = ["getscu", "-aet", aet, "-aec", aec, "-S", "-k", f"QueryRetrieveLevel={level}",
            "-od", str(out_dir)]
    for k, v in keys.items():
        argv += ["-k", f"{k}={v}"]
    argv += [LOOPBACK, str(port)]
    return dcmtk(argv, timeout=timeout)


def count_files(folder: Path) -> int:
    """How many files lie under *folder* (what a dcmtk run wrote there)."""
    return sum(1 for p in folder.rglob("*") if p.is_file())


def wait_until(pred, timeout: float, what: str, interval: float = 0.1) -> None:
    """Bounded wait for *pred*; PeerError naming *what* on time-out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise PeerError(f"timed out after {timeout:.0f} s waiting for {what}")
