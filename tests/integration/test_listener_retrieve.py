"""C-MOVE and C-GET SCP: movescu to a storescp, getscu, pynetdicom; every level,
unknown destinations, bad identifiers, C-CANCEL, TCP_NODELAY on sub-associations."""

from __future__ import annotations

import gc
import socket
import threading
import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
)
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet as PGET,
)
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelMove as PMOVE,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelGet as SGET,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelMove as SMOVE,
)

from osirix_py.dicom import status as st
from osirix_py.net.tcp import has_nodelay
from osirix_py.services.nodes import Node

AET = "OSIRIXPY"


def _ds(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.fixture(scope="module")
def uids(loaded_runtime):
    studies = {r["AccessionNumber"]: r["StudyInstanceUID"] for r in loaded_runtime.archive.find("study")}
    series = {(r["AccessionNumber"], r["SeriesNumber"]): r["SeriesInstanceUID"]
              for r in loaded_runtime.archive.find("series")}
    return studies, series


class PyStoreSCP:
    """A pynetdicom Storage SCP in this process: records what arrives and checks
    TCP_NODELAY on the requestor's (our sub-association's) socket."""

    def __init__(self, ae_title: str = "PYDEST"):
        self.ae_title = ae_title
        self.received: list[Dataset] = []
        self.client_nodelay: list[bool] = []
        self.delay = 0.0
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = StoragePresentationContexts
        self.ae = ae
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                    (evt.EVT_ACCEPTED, self._on_accepted)])
        self.port = self.server.server_address[1]

    def _on_accepted(self, event):
        # The other end of this connection is the runtime's socket, in this process.
        peer = event.assoc.requestor.port
        for obj in gc.get_objects():
            # (TCP only: the DUL wake-up socket pairs are AF_UNIX.)
            if isinstance(obj, socket.socket) and obj.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    if obj.fileno() != -1 and obj.getsockname()[1] == peer:
                        self.client_nodelay.append(has_nodelay(obj))
                except OSError:
                    pass

    def _on_store(self, event):
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.received.append(event.dataset)
        return 0x0000

    def close(self):
        self.ae.shutdown()


@pytest.fixture
def pydest(loaded_runtime):
    scp = PyStoreSCP()
    loaded_runtime.nodes.add(Node(name="pydest", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port),
                             replace=True)
    yield scp
    scp.close()


def cmove(scu, port, model, ds, dest, *, cancel_after=None):
    with scu(port, [model]) as assoc:
        cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == model)
        pending, final = 0, None
        for status, _ in assoc.send_c_move(ds, dest, model, msg_id=3):
            assert status is not None and "Status" in status, "no C-MOVE response"
            if status.Status == st.PENDING:
                pending += 1
                if cancel_after is not None and pending == cancel_after:
                    assoc.send_c_cancel(3, cx.context_id)
            else:
                final = status
        return pending, final


def cget(scu, port, model, ds, *, cancel_after=None, delay=0.0):
    received: list[Dataset] = []

    def on_store(event):
        if delay:
            time.sleep(delay)
        received.append(event.dataset)
        return 0x0000

    contexts = [model, CTImageStorage, MRImageStorage]
    roles = [build_role(CTImageStorage, scp_role=True), build_role(MRImageStorage, scp_role=True)]
    with scu(port, contexts, roles=roles, handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == model)
        pending, final = 0, None
        for status, _ in assoc.send_c_get(ds, model, msg_id=5):
            assert status is not None and "Status" in status, "no C-GET response"
            if status.Status == st.PENDING:
                pending += 1
                if cancel_after is not None and pending == cancel_after:
                    assoc.send_c_cancel(5, cx.context_id)
            else:
                final = status
        return received, final


# --------------------------------------------------------------------------- movescu / getscu
@pytest.mark.peers
def test_movescu_to_storescp_at_every_level(loaded_runtime, storescp, dcmtk, uids):
    loaded_runtime.nodes.add(Node(name="dest", ae_title="DEST", host="127.0.0.1", port=storescp.port),
                             replace=True)
    studies, series = uids
    port = loaded_runtime.listener_port
    ser, other = series[("ACC00201", 2)], series[("ACC00201", 1)]
    first_sop = loaded_runtime.archive.find("instance", {"SeriesInstanceUID": other})[0]["SOPInstanceUID"]
    # Distinct instances in every case (storescp names its files by SOP Instance UID).
    cases = [
        (["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={studies['ACC00101']}"], 20),
        (["-S", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={studies['ACC00201']}",
          "-k", f"SeriesInstanceUID={ser}"], 10),
        (["-S", "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={studies['ACC00201']}",
          "-k", f"SeriesInstanceUID={other}", "-k", f"SOPInstanceUID={first_sop}"], 1),
        (["-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PAT003"], 40),
        (["-P", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT001",
          "-k", f"StudyInstanceUID={studies['ACC00102']}"], 20),
    ]
    total = 0
    for args, n in cases:
        out = dcmtk("movescu", "-v", "-aec", AET, "-aem", "DEST", *args, "127.0.0.1", port, timeout=60)
        assert out.returncode == 0, out.stdout[-3000:]
        assert "Received Final Move Response (Success)" in out.stdout, out.stdout[-3000:]
        total += n
        files = storescp.wait_for_files(total)
        assert len(files) == total, (args, len(files))


@pytest.mark.peers
def test_movescu_unknown_destination(loaded_runtime, dcmtk, uids):
    studies, _ = uids
    out = dcmtk("movescu", "-d", "-S", "-aec", AET, "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={studies['ACC00101']}", "127.0.0.1", loaded_runtime.listener_port,
                timeout=30)
    assert "0xa801" in out.stdout.lower(), out.stdout[-2000:]
    assert "move destination 'NOWHERE' unknown" in out.stdout


@pytest.mark.peers
def test_getscu_at_every_level(loaded_runtime, dcmtk, tmp_path, uids):
    studies, series = uids
    port = loaded_runtime.listener_port
    ser = series[("ACC00102", 1)]
    first_sop = loaded_runtime.archive.find("instance", {"SeriesInstanceUID": ser})[0]["SOPInstanceUID"]
    cases = [
        ("study", ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={studies['ACC00102']}"], 20),
        ("series", ["-S", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={studies['ACC00102']}",
                    "-k", f"SeriesInstanceUID={ser}"], 10),
        ("image", ["-S", "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={studies['ACC00102']}",
                   "-k", f"SeriesInstanceUID={ser}", "-k", f"SOPInstanceUID={first_sop}"], 1),
        ("patient", ["-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PAT002"], 40),
    ]
    for name, args, n in cases:
        out_dir = tmp_path / name
        out_dir.mkdir()
        out = dcmtk("getscu", "-v", "-aec", AET, "-od", out_dir, *args, "127.0.0.1", port, timeout=60)
        assert out.returncode == 0, out.stdout[-3000:]
        assert f"Number of Completed Suboperations : {n}" in out.stdout, out.stdout[-2000:]
        assert len(list(out_dir.iterdir())) == n, name


# --------------------------------------------------------------------------- pynetdicom
def test_move_to_pynetdicom_destination_with_nodelay(loaded_runtime, scu, pydest, uids):
    studies, _ = uids
    pending, final = cmove(scu, loaded_runtime.listener_port, SMOVE,
                           _ds("STUDY", StudyInstanceUID=studies["ACC00301"]), pydest.ae_title)
    assert final.Status == st.SUCCESS
    assert final.NumberOfCompletedSuboperations == 20 and final.NumberOfFailedSuboperations == 0
    assert len(pydest.received) == 20
    assert pydest.client_nodelay == [True]  # the sub-association's socket


def test_move_refusals_carry_an_error_comment(loaded_runtime, scu, pydest, uids):
    studies, _ = uids
    port = loaded_runtime.listener_port
    ok = _ds("STUDY", StudyInstanceUID=studies["ACC00101"])
    _, final = cmove(scu, port, SMOVE, ok, "UNKNOWNAE")
    assert final.Status == st.MOVE_DESTINATION_UNKNOWN
    assert "UNKNOWNAE" in final.ErrorComment
    # Identifier errors: our status and comment, not pynetdicom's bare 0xA801.
    _, final = cmove(scu, port, SMOVE, _ds("STUDY", StudyInstanceUID=""), pydest.ae_title)
    assert final.Status == st.IDENTIFIER_DOES_NOT_MATCH
    assert "StudyInstanceUID" in final.ErrorComment
    _, final = cmove(scu, port, SMOVE, _ds("SERIES", StudyInstanceUID="1.2\\1.3", SeriesInstanceUID="1.4"),
                     pydest.ae_title)
    assert final.Status == st.IDENTIFIER_DOES_NOT_MATCH
    _, final = cmove(scu, port, SMOVE, _ds("PATIENT", PatientID="PAT001"), pydest.ae_title)
    assert final.Status == st.IDENTIFIER_DOES_NOT_MATCH  # no PATIENT level in Study Root
    # No match: success with nothing to do.
    pending, final = cmove(scu, port, SMOVE, _ds("STUDY", StudyInstanceUID="1.2.3.4"), pydest.ae_title)
    assert final.Status == st.SUCCESS and pending == 0 and pydest.received == []
    # A known destination that does not answer.
    loaded_runtime.nodes.add(Node(name="down", ae_title="DOWNAE", host="127.0.0.1", port=1), replace=True)
    _, final = cmove(scu, port, SMOVE, ok, "DOWNAE")
    assert final.Status == st.MOVE_DESTINATION_UNKNOWN
    assert "cannot associate" in final.ErrorComment
    # ... and after all that the association and the listener are fine.
    _, final = cmove(scu, port, PMOVE, _ds("PATIENT", PatientID="PAT001"), pydest.ae_title)
    assert final.Status == st.SUCCESS and len(pydest.received) == 40


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_get_series_and_refusals(loaded_runtime, scu, uids):
    studies, series = uids
    port = loaded_runtime.listener_port
    got, final = cget(scu, port, SGET, _ds("SERIES", StudyInstanceUID=studies["ACC00202"],
                                           SeriesInstanceUID=series[("ACC00202", 1)]))
    assert final.Status == st.SUCCESS and len(got) == 10
    assert {d.SeriesInstanceUID for d in got} == {series[("ACC00202", 1)]}
    got, final = cget(scu, port, PGET, _ds("STUDY", PatientID="PAT002", StudyInstanceUID=studies["ACC00202"]))
    assert final.Status == st.SUCCESS and len(got) == 20
    got, final = cget(scu, port, SGET, _ds("SERIES", StudyInstanceUID=studies["ACC00202"]))
    assert final.Status == st.IDENTIFIER_DOES_NOT_MATCH and got == []
    assert "SeriesInstanceUID" in final.ErrorComment
    got, final = cget(scu, port, SGET, _ds("IMAGE", SOPInstanceUID="1.2.*"))
    assert final.Status == st.IDENTIFIER_DOES_NOT_MATCH


# --------------------------------------------------------------------------- C-CANCEL
def test_c_cancel_stops_a_running_move(loaded_runtime, scu, pydest, uids):
    studies, _ = uids
    pydest.delay = 0.1
    pending, final = cmove(scu, loaded_runtime.listener_port, SMOVE,
                           _ds("STUDY", StudyInstanceUID=studies["ACC00301"]), pydest.ae_title,
                           cancel_after=2)
    assert final.Status == st.CANCEL
    assert final.NumberOfRemainingSuboperations > 0
    assert len(pydest.received) < 20


def test_c_cancel_stops_a_running_get(loaded_runtime, scu, uids):
    studies, _ = uids
    got, final = cget(scu, loaded_runtime.listener_port, SGET,
                      _ds("STUDY", StudyInstanceUID=studies["ACC00302"]), cancel_after=2, delay=0.1)
    assert final.Status == st.CANCEL
    assert final.NumberOfRemainingSuboperations > 0
    assert len(got) < 20
