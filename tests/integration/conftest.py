"""Fixtures for the integration tests: real runtimes, real dcmtk peers, loopback only.

* :func:`make_settings` / ``runtime_factory``: a :class:`Runtime` on
  127.0.0.1 with free ports (port 0) in a temporary data dir;
* ``loaded_runtime``: one module-wide runtime holding the synthetic archive
  (3 patients x 2 studies x 2 series x 10 slices, 64x64);
* ``dcmtk``: runs a dcmtk tool with ``TCP_NODELAY=1`` and a timeout;
* ``storescp``: a dcmtk storescp on a free port (a C-MOVE destination);
* :func:`scu_association`: a pynetdicom association as a context manager.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE, build_context

from osirix_py.config import HttpConfig, ListenerConfig, Settings
from osirix_py.dicom import synthetic
from osirix_py.net.tcp import NODELAY_HANDLER
from osirix_py.server.runtime import Runtime

AET = "OSIRIXPY"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def make_settings(data_dir: Path, *, http: bool = True, listener_port: int = 0,
                  http_port: int = 0, **listener) -> Settings:
    lst = dict(ae_title=AET, port=listener_port, bind_address="127.0.0.1", acse_timeout=5.0,
               dimse_timeout=20.0, network_timeout=20.0)
    lst.update(listener)
    return Settings(
        data_dir=Path(data_dir),
        listener=ListenerConfig(**lst),
        http=HttpConfig(port=http_port, bind_address="127.0.0.1", enabled=http),
    )


@pytest.fixture
def runtime_factory(tmp_path):
    """``make(archive=None, http=True, **listener_config) -> started Runtime``."""
    started: list[Runtime] = []

    def make(archive=None, *, data_dir: Path | None = None, http: bool = True, **listener) -> Runtime:
        d = data_dir or tmp_path / f"rt{len(started)}"
        rt = Runtime(make_settings(d, http=http, **listener), archive=archive)
        rt.start()
        started.append(rt)
        return rt

    yield make
    for rt in reversed(started):
        rt.stop(timeout=2.0)


@pytest.fixture
def runtime(runtime_factory) -> Runtime:
    return runtime_factory()


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synthetic")
    synthetic.generate_archive(d, patients=3, studies_per_patient=2, series_per_study=2,
                               slices=10, rows=64, columns=64, seed=0)
    return d


@pytest.fixture(scope="module")
def loaded_runtime(tmp_path_factory, synthetic_dir):
    """A runtime whose archive holds the synthetic archive (120 instances)."""
    d = tmp_path_factory.mktemp("loaded")
    rt = Runtime(make_settings(d, http=False))
    rep = rt.archive.import_paths([synthetic_dir])
    assert rep.imported == 120, rep.summary()
    rt.start()
    yield rt
    rt.stop(timeout=2.0)


# --------------------------------------------------------------------------- dcmtk
def _require(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"dcmtk's {tool} is missing: run scripts/setup.sh (apt-get install dcmtk)")
    return exe


def dcmtk_env() -> dict:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"  # dcmtk disables Nagle only when asked
    return env


def run_dcmtk(tool: str, *args, timeout: float = 60.0, cwd: Path | None = None,
              check: bool = False) -> subprocess.CompletedProcess:
    """Run a dcmtk client with TCP_NODELAY=1; stdout and stderr merged in ``.stdout``."""
    exe = _require(tool)
    proc = subprocess.run([exe, *map(str, args)], env=dcmtk_env(), cwd=cwd, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}")
    return proc


@pytest.fixture
def dcmtk():
    """``dcmtk(tool, *args, timeout=60) -> CompletedProcess`` (TCP_NODELAY=1)."""
    return run_dcmtk


@pytest.fixture
def dcmtk_popen():
    """``dcmtk_popen(tool, *args) -> Popen`` (TCP_NODELAY=1, output piped as text)."""

    def start(tool: str, *args) -> subprocess.Popen:
        return subprocess.Popen([_require(tool), *map(str, args)], env=dcmtk_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")

    return start


@dataclass
class StoreSCP:
    ae_title: str
    port: int
    folder: Path
    process: subprocess.Popen

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def wait_for_files(self, n: int, timeout: float = 10.0) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.files()
            if len(files) >= n:
                return files
            time.sleep(0.05)
        return self.files()


@pytest.fixture
def storescp(tmp_path):
    """dcmtk storescp as a C-MOVE destination (AE "DEST"), all transfer syntaxes accepted."""
    exe = _require("storescp")
    folder = tmp_path / "storescp"
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen([exe, "-aet", "DEST", "+xa", "-od", str(folder), str(port)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield StoreSCP("DEST", port, folder, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


# --------------------------------------------------------------------------- pynetdicom
@contextlib.contextmanager
def scu_association(port: int, contexts, *, calling: str = "TESTSCU", called: str = AET,
                    roles=(), handlers=(), timeout: float = 20.0, max_pdu: int = 16382):
    """An established pynetdicom association to 127.0.0.1:*port* (asserts it is)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ctxs = [c if not isinstance(c, str) else build_context(c) for c in contexts]
    assoc = ae.associate("127.0.0.1", port, contexts=ctxs, ae_title=called, ext_neg=list(roles) or None,
                         evt_handlers=[NODELAY_HANDLER, *handlers], max_pdu=max_pdu)
    try:
        assert assoc.is_established, "association not established"
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


@pytest.fixture
def scu():
    """:func:`scu_association` as a fixture: ``with scu(port, contexts) as assoc``."""
    return scu_association


def server_command(data_dir: Path, port: int, http_port: int) -> list[str]:
    return [sys.executable, "-m", "osirix_py", "--data-dir", str(data_dir), "server",
            "--port", str(port), "--http-port", str(http_port), "--bind", "127.0.0.1"]


@pytest.fixture
def server_cmd():
    """``server_cmd(data_dir, port, http_port)``: argv of ``python -m osirix_py server``."""
    return server_command


@pytest.fixture
def ports():
    """``ports(n)``: n free loopback ports."""
    return lambda n=1: [free_port() for _ in range(n)]
