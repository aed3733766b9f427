"""Server mode: `osirix-py server` as a real process (sd_notify, health, SIGTERM,
kill -9 during an ingest and restart), and the runtime's health, supervisor and
graceful stop in-process."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from osirix_py.config import load_settings
from osirix_py.dicom import status as st
from osirix_py.dicom import synthetic
from osirix_py.net.scu import echo_address
from osirix_py.net.tcp import NODELAY_HANDLER
from osirix_py.server import sdnotify
from osirix_py.services.factory import open_archive

AET = "OSIRIXPY"
ROOT = Path(__file__).resolve().parents[2]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_healthy(http_port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            code, body = http_get(f"http://127.0.0.1:{http_port}/testdbalive", timeout=5)
            if code == 200:
                return body
            last = body
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"server not healthy after {timeout} s: {last}")


def cli(data_dir: Path, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "osirix_py", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


# --------------------------------------------------------------------------- the process
def test_server_process_notify_health_echo_and_sigterm(tmp_path, ports, server_cmd):
    port, http = ports(2)
    data = tmp_path / "data"
    sock_dir = tempfile.mkdtemp(prefix="sdn")  # AF_UNIX paths are short
    sock_path = os.path.join(sock_dir, "notify")
    recv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    recv.bind(sock_path)
    recv.settimeout(0.2)
    messages: list[str] = []
    done = threading.Event()

    def receive() -> None:  # systemd reads every datagram; so do we
        while not done.is_set():
            try:
                messages.append(recv.recv(4096).decode())
            except socket.timeout:
                pass
            except OSError:
                return

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()

    def wait_message(text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in list(messages)):
                return
            time.sleep(0.02)
        raise TimeoutError(f"no {text} from the server; got {messages[-5:]}")

    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(server_cmd(data, port, http), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_message("READY=1")
        ready = next(m for m in messages if "READY=1" in m)
        assert f"DICOM {AET} on 127.0.0.1:{port}" in ready and f"HTTP on 127.0.0.1:{http}" in ready
        body = wait_healthy(http, proc)
        assert "database: ok" in body and "listener: ok" in body and "C-ECHO" in body
        wait_message("WATCHDOG=1")
        # The CLI's nodes echo against the running server, and against nothing.
        assert cli(data, "nodes", "add", "self", "--aet", AET, "--host", "127.0.0.1",
                   "--port", str(port)).returncode == 0
        r = cli(data, "nodes", "echo", "self")
        assert r.returncode == 0 and "success" in r.stdout, r.stdout + r.stderr
        closed = ports(1)[0]
        assert cli(data, "nodes", "add", "gone", "--aet", "GONEAE", "--host", "127.0.0.1",
                   "--port", str(closed)).returncode == 0
        r = cli(data, "nodes", "echo", "gone")
        assert r.returncode != 0
        assert "GONEAE" in r.stderr and str(closed) in r.stderr and "refused" in r.stderr, r.stderr
        # SIGTERM: a clean, bounded shutdown.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out[-3000:]
        assert time.monotonic() - t0 < 12
        wait_message("STOPPING=1", timeout=5)
        log = (data / "logs" / "osirix-py.log").read_text()
        assert "startup check" in log and "serving:" in log and "SIGTERM received" in log
        assert "osirix-py server stopped" in out  # stderr gets the log too
    finally:
        stop_process(proc)
        done.set()
        receiver.join(2)
        recv.close()


def test_server_refuses_to_start_on_a_busy_port(tmp_path, ports, server_cmd):
    http = ports(1)[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(server_cmd(tmp_path / "d", port, http), capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_kill_9_during_ingest_then_restart_keeps_every_acknowledged_instance(tmp_path, ports, server_cmd):
    port, http = ports(2)
    data = tmp_path / "data"
    datasets = synthetic.make_ct_series(slices=300, rows=64, columns=64, patient_id="CRASH",
                                        patient_name="Crash^Test")
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    proc = subprocess.Popen(server_cmd(data, port, http), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    acknowledged: list[str] = []
    failures: list[str] = []

    def ingest() -> None:
        ae = AE(ae_title="INGEST")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
        assoc = ae.associate("127.0.0.1", port, contexts=[build_context(CTImageStorage)],
                             ae_title=AET, evt_handlers=[NODELAY_HANDLER])
        try:
            if not assoc.is_established:
                failures.append("not established")
                return
            for ds in datasets:
                try:
                    rsp = assoc.send_c_store(ds)
                except Exception as exc:  # noqa: BLE001 - the server died under us
                    failures.append(repr(exc))
                    return
                if rsp is not None and rsp.get("Status") == st.SUCCESS:
                    acknowledged.append(ds.SOPInstanceUID)
                else:
                    return  # no answer: the connection is gone
        finally:
            if assoc.is_established:
                assoc.abort()
            ae.shutdown()

    try:
        wait_healthy(http, proc)
        sender = threading.Thread(target=ingest)
        sender.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 50 and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(acknowledged) >= 50, failures
        os.kill(proc.pid, signal.SIGKILL)  # mid-ingest: stores are in flight
        proc.wait(10)
        sender.join(30)
        assert not sender.is_alive()
        n_ack = len(acknowledged)
        assert 50 <= n_ack < len(datasets)

        # Restart on the same data dir: the startup check runs, then we serve.
        proc = subprocess.Popen(server_cmd(data, port, http), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        wait_healthy(http, proc)
        ident = Dataset()
        ident.QueryRetrieveLevel = "IMAGE"
        ident.StudyInstanceUID = datasets[0].StudyInstanceUID
        ident.SeriesInstanceUID = datasets[0].SeriesInstanceUID
        ident.SOPInstanceUID = ""
        ae = AE(ae_title="CHECK")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", port, ae_title=AET)
        assert assoc.is_established
        found = {i.SOPInstanceUID for s, i in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind)
                 if s and s.Status in (st.PENDING, st.PENDING_WARNING)}
        assoc.release()
        ae.shutdown()
        missing = set(acknowledged) - found
        assert not missing, f"{len(missing)} acknowledged instance(s) lost"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "startup check:" in out
    finally:
        stop_process(proc)

    # Every acknowledged instance is readable and intact; store and index agree.
    settings = load_settings(data_dir=data, environ={})
    archive = open_archive(settings)
    try:
        assert archive.check().clean
        for uid in acknowledged:
            (row,) = archive.find("instance", {"SOPInstanceUID": uid})
            ds = pydicom.dcmread(io.BytesIO(archive.read_instance(row)))
            assert ds.PixelData == by_uid[uid].PixelData
    finally:
        archive.close()
        archive.db.dispose()


# --------------------------------------------------------------------------- in-process
def test_testdbalive_both_ways(runtime):
    url = f"http://127.0.0.1:{runtime.http_port}/testdbalive"
    code, body = http_get(url)
    assert code == 200 and body.startswith("OK"), body

    runtime.stop_listener(timeout=1)
    code, body = http_get(url)
    assert code == 503 and "listener: FAIL - not running" in body, body
    runtime.start_listener()
    code, body = http_get(url)
    assert code == 200, body

    # The database file becomes unreadable (its header is destroyed): 503.
    db_path = runtime.settings.database_path
    with runtime.archive.db.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    header = db_path.read_bytes()[:100]
    with open(db_path, "r+b") as fh:
        fh.write(b"\xff" * 100)
    try:
        code, body = http_get(url)
        assert code == 503 and "database: FAIL" in body and "listener: ok" in body, body
    finally:
        with open(db_path, "r+b") as fh:
            fh.write(header)
    code, body = http_get(url)
    assert code == 200, body


def test_testdbalive_reports_a_deleted_database(runtime):
    url = f"http://127.0.0.1:{runtime.http_port}/testdbalive"
    assert http_get(url)[0] == 200
    db_path = runtime.settings.database_path
    moved = db_path.with_suffix(".moved")
    db_path.rename(moved)
    try:
        code, body = http_get(url)
        assert code == 503 and "database: FAIL" in body, body
        assert not db_path.exists()  # the probe never creates an empty database
    finally:
        moved.rename(db_path)
    assert http_get(url)[0] == 200


def test_supervisor_restarts_a_failed_listener(runtime_factory):
    rt = runtime_factory(http=False)
    port = rt.listener_port
    rt.listener._server.socket.close()  # the accept socket dies under the server
    assert not rt.listener.is_running()
    deadline = time.monotonic() + 10
    while not rt.listener.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rt.listener.is_running() and rt.listener_port == port
    assert echo_address("127.0.0.1", port, AET, calling_ae="TESTSCU", timeout=5) > 0


def test_stop_aborts_lingering_associations_within_the_bound(runtime_factory):
    rt = runtime_factory(http=False)
    ae = AE(ae_title="LINGER")
    ae.add_requested_context(Verification)
    ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", rt.listener_port, ae_title=AET)
    try:
        assert assoc.is_established
        t0 = time.monotonic()
        rt.stop(timeout=1.0)
        assert time.monotonic() - t0 < 5
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
    finally:
        ae.shutdown()


def test_sd_notify_protocol(tmp_path):
    assert sdnotify.notify("READY=1", environ={}) is False
    name = f"osirix-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)  # abstract namespace, as systemd may pass it
        s.settimeout(2)
        assert sdnotify.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"WATCHDOG=1"
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None


def test_systemd_unit_is_notify_with_watchdog_and_restart():
    unit = (ROOT / "packaging" / "osirix-py.service").read_text()
    for line in ("Type=notify", "Restart=always", "osirix-py server", "KillSignal=SIGTERM"):
        assert line in unit
    assert any(ln.startswith("WatchdogSec=") for ln in unit.splitlines())
