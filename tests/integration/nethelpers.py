"""Plain helpers of the integration tests (no fixtures): importable by name.

``from nethelpers import make_settings`` works from any test folder, where
``from conftest import`` would be ambiguous between tests/integration and
tests/gui (both have a conftest.py).  tests/integration/conftest.py turns
these into fixtures.
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
from osirix_py.net.tcp import NODELAY_HANDLER

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


def require_tool(tool: str) -> str:
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
    exe = require_tool(tool)
    proc = subprocess.run([exe, *map(str, args)], env=dcmtk_env(), cwd=cwd, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}")
    return proc


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


def server_command(data_dir: Path, port: int, http_port: int) -> list[str]:
    return [sys.executable, "-m", "osirix_py", "--data-dir", str(data_dir), "server",
            "--port", str(port), "--http-port", str(http_port), "--bind", "127.0.0.1"]
