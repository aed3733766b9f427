"""A real Orthanc for the client-side tests, started from the benchmarks' launcher.

:class:`benchmarks.peers.Orthanc` already does what a test needs: a generated
configuration, free loopback ports (through the bind-to-loopback shim), its own
temporary directory, ``TCP_NODELAY=1`` and a bounded start/stop by PID.  This
module wraps it as pytest fixtures (imported by the ``test_client_*`` modules).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for _p in (ROOT, Path(__file__).resolve().parent):  # the repo (benchmarks) and nethelpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from benchmarks.peers import Orthanc, StoreSCP, loopback_shim, orthanc_binary  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"


def shim():
    return loopback_shim(CACHE)


def start_orthanc(workdir: Path, modalities: dict[str, tuple[str, int]], **extra) -> Orthanc:
    if orthanc_binary() is None:
        pytest.fail("Orthanc is missing: run scripts/setup.sh (apt-get install orthanc)")
    orth = Orthanc(shim=shim(), workdir=workdir, modalities=modalities,
                   extra_config={"DicomAlwaysAllowFind": False, "DicomCheckCalledAet": True, **extra})
    orth.__enter__()
    return orth


def start_storescp(workdir: Path, aet: str = "STORESCP", *, accept_all: bool = False) -> StoreSCP:
    """storescp writing files; only uncompressed syntaxes unless *accept_all* (+xa)."""
    if shutil.which("storescp") is None:
        pytest.fail("dcmtk's storescp is missing: run scripts/setup.sh")

    class _SCP(StoreSCP):
        def _spawn(self, argv, env):
            if accept_all:
                argv = argv[:-1] + ["+xa", argv[-1]]
            super()._spawn(argv, env)

    scp = _SCP(shim=shim(), workdir=workdir, aet=aet)
    scp.__enter__()
    return scp


# --------------------------------------------------------------------------- fixtures
class ClientPeers:
    """Orthanc loaded with a small archive, and our runtime's reserved port/AE."""

    def __init__(self, orthanc: Orthanc, our_port: int, scp_port: int, data: Path, big: Path):
        self.orthanc = orthanc
        self.our_port = our_port
        self.scp_port = scp_port
        self.data = data
        self.big = big

    def node(self, name: str = "orthanc", *, ae_title: str | None = None, method: str = "get"):
        from osirix_py.services.nodes import Node

        return Node(name, ae_title or self.orthanc.aet, "127.0.0.1", self.orthanc.dicom_port,
                    retrieve_method=method)


@pytest.fixture(scope="session")
def client_peers(tmp_path_factory):
    """A session-wide Orthanc that knows OSIRIXPY (our listener's reserved port)
    and STORESCP, holding 2 patients x 2 series x 10 slices and one 150-slice series."""
    from nethelpers import free_port, run_dcmtk  # noqa: PLC0415

    from osirix_py.dicom import synthetic

    root = tmp_path_factory.mktemp("client-peers")
    data, big = root / "data", root / "big"
    synthetic.generate_archive(data, patients=2, studies_per_patient=1, series_per_study=2,
                               slices=10, rows=64, columns=64, seed=0)
    synthetic.generate_archive(big, patients=1, studies_per_patient=1, series_per_study=1,
                               slices=150, rows=32, columns=32, seed=7)
    from pydicom import dcmread

    for f in big.rglob("*.dcm"):  # a patient of its own
        ds = dcmread(f)
        ds.PatientID, ds.PatientName = "BIG001", "BIG^SERIES"
        ds.save_as(f)
    our_port, scp_port = free_port(), free_port()
    orth = start_orthanc(root / "orthanc", {"OSIRIXPY": ("OSIRIXPY", our_port),
                                            "STORESCP": ("STORESCP", scp_port)})
    try:
        for folder in (data, big):
            run_dcmtk("storescu", "-aet", "STORESCU", "-aec", orth.aet, "+sd", "+r", "+sp", "*.dcm",
                      "127.0.0.1", orth.dicom_port, folder, check=True)
        assert orth.count_instances() == 190
        yield ClientPeers(orth, our_port, scp_port, data, big)
    finally:
        orth.cleanup()
