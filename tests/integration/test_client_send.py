"""C-STORE SCU (send) with and without transcoding, faults, and the CLI commands."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from nethelpers import AET, free_port, make_settings
from osirix_py.cli import main
from osirix_py.net import client
from osirix_py.net.scu import ScuError
from osirix_py.server.runtime import Runtime
from osirix_py.services.nodes import Node
from peers_fixtures import client_peers, start_storescp  # noqa: F401 - fixture

pytestmark = pytest.mark.peers

J2K = Path(__import__("data_store").__file__).parent / "data" / "MR2_J2KR.dcm"


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    runtime = Runtime(make_settings(tmp_path_factory.mktemp("send-rt"), http=False, enabled=False))
    runtime.start()
    out = runtime.archive.store_bytes(J2K.read_bytes(), origin="test")
    assert out.status == "stored"
    yield runtime
    runtime.stop(timeout=2.0)


def _rows(rt, **query):
    return rt.archive.find("image", query)


def _j2k_row(rt):
    uid = dcmread(J2K, stop_before_pixels=True).SOPInstanceUID
    (row,) = _rows(rt, SOPInstanceUID=uid)
    assert row["TransferSyntaxUID"] == JPEG2000Lossless
    return row


def test_send_transcodes_for_uncompressed_only_peer(rt, tmp_path):
    scp = start_storescp(tmp_path / "scp", "STORESCP")  # no +xa: uncompressed only
    try:
        node = Node("scp", "STORESCP", "127.0.0.1", scp.port)
        prog = client.send(node, rt.archive, [_j2k_row(rt)], calling_ae=AET)
        assert (prog.completed, prog.failed) == (1, 0), prog.failures
        (received,) = [p for p in scp.out_dir.rglob("*") if p.is_file()]
        got = dcmread(received)
        assert got.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert np.array_equal(got.pixel_array, dcmread(J2K).pixel_array)
    finally:
        scp.cleanup()


def test_send_keeps_compressed_syntax_when_accepted(rt, tmp_path):
    scp = start_storescp(tmp_path / "scp", "STORESCP", accept_all=True)
    try:
        node = Node("scp", "STORESCP", "127.0.0.1", scp.port)
        prog = client.send(node, rt.archive, [_j2k_row(rt)], calling_ae=AET)
        assert prog.completed == 1
        (received,) = [p for p in scp.out_dir.rglob("*") if p.is_file()]
        assert dcmread(received).file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert received.stat().st_size < J2K.stat().st_size * 1.1
    finally:
        scp.cleanup()


def test_send_series_job_to_orthanc(client_peers, rt):  # noqa: F811
    rep = rt.archive.import_paths([client_peers.data / "PAT002"])
    assert rep.imported == 20
    study = _rows(rt, PatientID="PAT002")[0]["StudyInstanceUID"]
    job = rt.jobs.submit_send(client_peers.node(), study_uid=study)
    job = rt.jobs.wait(job.id, 60)
    assert job.state == "done", job.error
    assert (job.completed, job.total, job.failed) == (20, 20, 0) and job.rate > 0


@pytest.fixture
def aborting_store_scp():
    """A storage SCP that accepts 3 instances per association, then aborts."""
    ae = AE(ae_title="FLAKY")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    received: list[str] = []
    per_assoc: dict[int, int] = {}
    lock = threading.Lock()

    def on_store(event):
        with lock:
            n = per_assoc.get(id(event.assoc), 0)
            if n >= 3:
                event.assoc.abort()
                return 0xA700
            per_assoc[id(event.assoc)] = n + 1
            received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield Node("flaky", "FLAKY", "127.0.0.1", port), received
    finally:
        server.shutdown()


def test_abort_mid_send_then_retry(client_peers, rt, aborting_store_scp):  # noqa: F811
    node, received = aborting_store_scp
    rows = _rows(rt, PatientID="PAT002")[:8]
    prog = client.send(node, rt.archive, rows, calling_ae=AET, retries=0)
    assert prog.completed == 3 and prog.failed == 5
    assert "aborted" in next(iter(prog.failures.values()))
    assert "FLAKY@127.0.0.1" in prog.error
    received.clear()
    prog = client.send(node, rt.archive, rows, calling_ae=AET, retries=2)
    assert (prog.completed, prog.failed) == (8, 0)  # 3 + 3 + 2 over three associations
    assert sorted(received) == sorted(r["SOPInstanceUID"] for r in rows)


def test_send_to_closed_port_fails_naming_peer(rt):
    port = free_port()
    row = _j2k_row(rt)
    with pytest.raises(ScuError) as err:
        client.send(Node("x", "GONE", "127.0.0.1", port), rt.archive, [row], calling_ae=AET, timeout=2)
    assert f"GONE@127.0.0.1:{port}" in str(err.value)


# --------------------------------------------------------------------------- CLI
def _cli_home(tmp_path: Path, peers, listener_port: int) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'connect_timeout = 5.0\n[listener]\nae_title = "{AET}"\nport = {listener_port}\n'
        f'bind_address = "127.0.0.1"\n\n[[nodes]]\nname = "orthanc"\nae_title = "ORTHANC"\n'
        f'host = "127.0.0.1"\nport = {peers.orthanc.dicom_port}\nretrieve_method = "move"\n')
    return home


def test_cli_query_retrieve_send(client_peers, tmp_path, capsys):  # noqa: F811
    home = _cli_home(tmp_path, client_peers, client_peers.our_port)
    assert main(["--data-dir", str(home), "query", "orthanc", "PatientID=PAT001", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    uid = rows[0]["StudyInstanceUID"]
    assert main(["--data-dir", str(home), "query", "orthanc", f"StudyInstanceUID={uid}",
                 "--level", "series"]) == 0
    assert "2 match(es) at series level" in capsys.readouterr().err
    # C-MOVE (the node's preferred method): a temporary listener of our own receives
    assert main(["--data-dir", str(home), "-q", "retrieve", "orthanc", "--study", uid, "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "done" and job["completed"] == 20
    assert main(["--data-dir", str(home), "-q", "retrieve", "orthanc", "--study", uid,
                 "--method", "get"]) == 0
    assert "20 of 20 completed" in capsys.readouterr().out
    assert main(["--data-dir", str(home), "find", "--json"]) == 0
    assert [r["StudyInstanceUID"] for r in json.loads(capsys.readouterr().out)] == [uid]
    assert main(["--data-dir", str(home), "-q", "send", "orthanc", "--study", uid]) == 0
    assert "20 of 20 completed" in capsys.readouterr().out
    # echo names the node; an unreachable node fails with host, port and AE
    assert main(["--data-dir", str(home), "nodes", "echo", "orthanc"]) == 0
    assert f"ORTHANC@127.0.0.1:{client_peers.orthanc.dicom_port}" in capsys.readouterr().out
    port = free_port()
    assert main(["--data-dir", str(home), "nodes", "add", "gone", "--aet", "GONE", "--host",
                 "127.0.0.1", "--port", str(port)]) == 0
    assert main(["--data-dir", str(home), "query", "gone"]) == 3
    assert f"GONE@127.0.0.1:{port}" in capsys.readouterr().err
