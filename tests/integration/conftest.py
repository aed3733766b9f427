"""Fixtures for the integration tests: real runtimes, real dcmtk peers, loopback only.

* :func:`make_settings` / ``runtime_factory``: a :class:`Runtime` on
  127.0.0.1 with free ports (port 0) in a temporary data dir;
* ``loaded_runtime``: one module-wide runtime holding the synthetic archive
  (3 patients x 2 studies x 2 series x 10 slices, 64x64);
* ``dcmtk``: runs a dcmtk tool with ``TCP_NODELAY=1`` and a timeout;
* ``storescp``: a dcmtk storescp on a free port (a C-MOVE destination);
* :func:`scu_association`: a pynetdicom association as a context manager.

The plain helpers live in ``nethelpers.py``; tests import them from there
(``from conftest import`` is ambiguous when tests/gui is collected too).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from osirix_py.dicom import synthetic
from osirix_py.server.runtime import Runtime

from nethelpers import (  # noqa: F401 - re-exported to the tests through the fixtures below
    AET, ROOT, StoreSCP, dcmtk_env, free_port, make_settings, require_tool, run_dcmtk,
    scu_association, server_command, wait_for_port,
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
@pytest.fixture
def dcmtk():
    """``dcmtk(tool, *args, timeout=60) -> CompletedProcess`` (TCP_NODELAY=1)."""
    return run_dcmtk


@pytest.fixture
def dcmtk_popen():
    """``dcmtk_popen(tool, *args) -> Popen`` (TCP_NODELAY=1, output piped as text)."""

    def start(tool: str, *args) -> subprocess.Popen:
        return subprocess.Popen([require_tool(tool), *map(str, args)], env=dcmtk_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")

    return start


@pytest.fixture
def storescp(tmp_path):
    """dcmtk storescp as a C-MOVE destination (AE "DEST"), all transfer syntaxes accepted."""
    exe = require_tool("storescp")
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
@pytest.fixture
def scu():
    """:func:`scu_association` as a fixture: ``with scu(port, contexts) as assoc``."""
    return scu_association


@pytest.fixture
def server_cmd():
    """``server_cmd(data_dir, port, http_port)``: argv of ``python -m osirix_py server``."""
    return server_command


@pytest.fixture
def ports():
    """``ports(n)``: n free loopback ports."""
    return lambda n=1: [free_port() for _ in range(n)]
