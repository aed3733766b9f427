"""The listener's fast paths keep the bytes: what is sent is what is stored,
what is stored is what a C-GET / C-MOVE sends, and C-FIND answers are the same
with and without them."""

from __future__ import annotations

import threading

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from osirix_py.dicom import status as st
from osirix_py.dicom import synthetic
from osirix_py.net import fastpath

AET = "OSIRIXPY"


def _ct(n: int, **kw) -> list[Dataset]:
    return synthetic.make_ct_series(slices=n, rows=64, columns=64, **kw)


def _stored_bytes(runtime, sop_uid: str) -> bytes:
    row = runtime.archive.find("instance", {"SOPInstanceUID": sop_uid})[0]
    return runtime.archive.read_instance(row)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_stored_file_is_the_received_data_set_byte_for_byte(runtime, scu, syntax):
    series = _ct(3, patient_id="BYTES")
    sent = {}
    with scu(runtime.listener_port, [build_context(CTImageStorage, syntax)]) as assoc:
        for ds in series:
            sent[ds.SOPInstanceUID] = encode(ds, syntax == ImplicitVRLittleEndian, True)
            assert assoc.send_c_store(ds).Status == st.SUCCESS
    for uid, data_set in sent.items():
        stored = _stored_bytes(runtime, uid)
        cls_uid, inst_uid, ts, offset = fastpath.split_part10(stored)
        assert (cls_uid, inst_uid, ts) == (CTImageStorage, uid, syntax)
        assert stored[offset:] == data_set  # no re-encoding of what was received


def test_success_only_after_the_sync_that_covers_file_and_row(runtime, scu):
    """The C-STORE response waits for the file-system sync that follows the
    commit (one flush for file + index when both live on one file system)."""
    archive = runtime.archive
    events: list[str] = []
    original = archive.writer.sync_files

    def sync():
        events.append("sync-start")
        original()
        events.append("sync-done")

    archive.writer.sync_files = sync
    ds = _ct(1, patient_id="ORDER")[0]

    def on_sent(event):
        if event.message.command_set.get("CommandField") == 0x8001:
            events.append("rsp")

    with scu(runtime.listener_port, [build_context(CTImageStorage)],
             handlers=[(evt.EVT_DIMSE_RECV, on_sent)]) as assoc:
        assert assoc.send_c_store(ds).Status == st.SUCCESS
    assert events[:3] == ["sync-start", "sync-done", "rsp"]
    assert archive.count("instance", {"SOPInstanceUID": ds.SOPInstanceUID}) == 1


def _c_get_series(runtime, scu, series, syntax: str, on_store) -> list[int]:
    """C-GET *series* from the listener, accepting CT images in *syntax* only;
    the statuses of the responses."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = series[0].StudyInstanceUID
    ident.SeriesInstanceUID = series[0].SeriesInstanceUID
    ctxs = [build_context(StudyRootQueryRetrieveInformationModelGet),
            build_context(CTImageStorage, [syntax])]
    with scu(runtime.listener_port, ctxs, roles=[build_role(CTImageStorage, scp_role=True)],
             handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        return [s.Status for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]


def test_c_get_sends_the_stored_bytes(runtime, scu):
    series = _ct(4, patient_id="GETBYTES")
    with scu(runtime.listener_port, [build_context(CTImageStorage, ImplicitVRLittleEndian)]) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == st.SUCCESS
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_store(event):
        with lock:
            received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    statuses = _c_get_series(runtime, scu, series, ImplicitVRLittleEndian, on_store)
    assert statuses[-1] == st.SUCCESS
    assert len(received) == 4
    for uid, data_set in received.items():
        stored = _stored_bytes(runtime, uid)
        assert stored[fastpath.split_part10(stored)[3]:] == data_set


def test_c_get_stores_go_through_the_reactor_thread_sender_on_a_reused_association(
        runtime, scu, monkeypatch):
    """A C-GET's sub-operations are sent by the association's own thread,
    straight to the DUL: the peer gets the stored bytes, a second C-GET and a
    C-FIND on the same association still work, and a store the sender cannot
    take (no context in the stored syntax) falls back to pynetdicom."""
    series = _ct(3, patient_id="GETREUSE")
    with scu(runtime.listener_port, [build_context(CTImageStorage, ImplicitVRLittleEndian)]) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == st.SUCCESS
    sent: list[str] = []
    original = fastpath.ReactorThreadSender.store

    def counting(self, inst, **kw):
        sent.append(str(inst.SOPInstanceUID))
        return original(self, inst, **kw)

    monkeypatch.setattr(fastpath.ReactorThreadSender, "store", counting)
    received: list[bytes] = []

    def on_store(event):
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = series[0].StudyInstanceUID
    ident.SeriesInstanceUID = series[0].SeriesInstanceUID
    find = Dataset()
    find.QueryRetrieveLevel = "STUDY"
    find.PatientID = "GETREUSE"
    find.StudyInstanceUID = ""
    ctxs = [build_context(StudyRootQueryRetrieveInformationModelGet),
            build_context(StudyRootQueryRetrieveInformationModelFind),
            build_context(CTImageStorage, [ImplicitVRLittleEndian])]
    with scu(runtime.listener_port, ctxs, roles=[build_role(CTImageStorage, scp_role=True)],
             handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        for _ in range(2):
            statuses = [s.Status for s, _ in
                        assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)]
            assert statuses[-1] == st.SUCCESS and statuses.count(st.PENDING) <= 3
            answers = [(s.Status, i) for s, i in
                       assoc.send_c_find(find, StudyRootQueryRetrieveInformationModelFind)]
            assert [a[1].StudyInstanceUID for a in answers if a[0] == st.PENDING] == \
                [series[0].StudyInstanceUID]
    assert sorted(sent) == sorted([str(d.SOPInstanceUID) for d in series] * 2)
    assert len(received) == 6
    stored = {_stored_bytes(runtime, str(d.SOPInstanceUID)) for d in series}
    assert {s[fastpath.split_part10(s)[3]:] for s in stored} == set(received)
    # Only an explicit VR context now: the stored implicit VR bytes need
    # converting, which the sender leaves to pynetdicom.
    sent.clear()
    got: list[Dataset] = []
    statuses = _c_get_series(runtime, scu, series, ExplicitVRLittleEndian,
                             lambda e: got.append(e.dataset) or 0x0000)
    assert statuses[-1] == st.SUCCESS and len(got) == 3 and sent == []


@pytest.mark.parametrize("interval,expected", [(0.0, 4), (60.0, 1)])
def test_c_get_pending_responses_are_spaced_by_the_pending_interval(runtime, scu, monkeypatch,
                                                                    interval, expected):
    series = _ct(4, patient_id=f"PENDING{expected}")
    with scu(runtime.listener_port, [build_context(CTImageStorage, ImplicitVRLittleEndian)]) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == st.SUCCESS
    monkeypatch.setattr(fastpath, "PENDING_INTERVAL", interval)
    statuses = _c_get_series(runtime, scu, series, ImplicitVRLittleEndian, lambda e: 0x0000)
    assert statuses == [st.PENDING] * expected + [st.SUCCESS]


def test_c_get_converts_when_the_peer_takes_only_the_other_little_endian(runtime, scu):
    series = _ct(2, patient_id="GETCONV")
    with scu(runtime.listener_port, [build_context(CTImageStorage, ImplicitVRLittleEndian)]) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == st.SUCCESS
    got: list[Dataset] = []

    def on_store(event):
        got.append(event.dataset)
        return 0x0000

    statuses = _c_get_series(runtime, scu, series, ExplicitVRLittleEndian, on_store)
    assert statuses[-1] == st.SUCCESS
    assert sorted(d.SOPInstanceUID for d in got) == sorted(d.SOPInstanceUID for d in series)
    assert all(d.PixelData == series[0].PixelData or d.PixelData == series[1].PixelData for d in got)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_c_find_answers_are_identical_with_and_without_the_fast_path(runtime, scu, syntax):
    for i, name in enumerate(["DOE^JOHN", "Müller^Jürgen", "DOE^JANE"]):
        ds = _ct(1, patient_id=f"F{i}", patient_name=name, seed=i)[0]
        with scu(runtime.listener_port, [build_context(CTImageStorage)]) as assoc:
            assert assoc.send_c_store(ds).Status == st.SUCCESS
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    for kw in ("PatientName", "PatientID", "StudyDate", "StudyInstanceUID", "ModalitiesInStudy",
               "NumberOfStudyRelatedInstances", "ReferencedStudySequence"):
        setattr(ds := ident, kw, [] if kw.endswith("Sequence") else "")
    ds.PatientName = "*"

    def run() -> list[bytes]:
        out = []

        def on_recv(event):
            msg = event.message
            if msg.command_set.get("CommandField") == 0x8020 and msg.command_set.Status == 0xFF00:
                out.append(msg.data_set.getvalue())

        with scu(runtime.listener_port,
                 [build_context(StudyRootQueryRetrieveInformationModelFind, syntax)],
                 handlers=[(evt.EVT_DIMSE_RECV, on_recv)]) as assoc:
            codes = [s.Status for s, _ in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind)]
        assert codes[-1] == st.SUCCESS
        return out

    handlers = runtime.listener.handlers
    fast = run()
    handlers.fast_find = False
    try:
        slow = run()
    finally:
        handlers.fast_find = True
    assert len(fast) == 3
    assert fast == slow


def _c_move_series(runtime, scu, series, dest_ae: str, on_store, *, calling: str = "TESTSCU",
                   msg_id: int = 1) -> list:
    """C-MOVE *series* from the listener (as *calling*, message *msg_id*) to a
    pynetdicom storage SCP titled *dest_ae* (added to the nodes) whose C-STORE
    handler is *on_store*; the responses' statuses."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

    from osirix_py.services.nodes import Node

    ae = AE(ae_title=dest_ae)
    ae.add_supported_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        runtime.nodes.add(Node(name=dest_ae.lower(), ae_title=dest_ae, host="127.0.0.1",
                               port=server.server_address[1]), replace=True)
        ident = Dataset()
        ident.QueryRetrieveLevel = "SERIES"
        ident.StudyInstanceUID = series[0].StudyInstanceUID
        ident.SeriesInstanceUID = series[0].SeriesInstanceUID
        with scu(runtime.listener_port, [build_context(Move)], calling=calling) as assoc:
            return [s for s, _ in assoc.send_c_move(ident, dest_ae, Move, msg_id=msg_id)]
    finally:
        ae.shutdown()


def test_c_move_sends_the_stored_bytes_with_the_originator(runtime, scu):
    series = _ct(5, patient_id="MOVEBYTES")
    with scu(runtime.listener_port, [build_context(CTImageStorage, ImplicitVRLittleEndian)]) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == st.SUCCESS
    received: dict[str, tuple[bytes, str, int]] = {}
    lock = threading.Lock()

    def on_store(event):
        req = event.request
        with lock:
            received[str(req.AffectedSOPInstanceUID)] = (
                req.DataSet.getvalue(), str(req.MoveOriginatorApplicationEntityTitle or "").strip(),
                req.MoveOriginatorMessageID)
        return 0x0000

    rsps = _c_move_series(runtime, scu, series, "MOVEDEST", on_store, calling="MOVER", msg_id=11)
    assert rsps[-1].Status == st.SUCCESS
    assert rsps[-1].NumberOfCompletedSuboperations == 5
    # Pending responses: the first at once, then at most one per
    # PENDING_INTERVAL (they are optional); the final one has the totals.
    assert 1 <= len(rsps[:-1]) <= 5
    assert all(r.Status == st.PENDING for r in rsps[:-1])
    assert len(received) == 5
    for uid, (data_set, originator, originator_id) in received.items():
        stored = _stored_bytes(runtime, uid)
        assert stored[fastpath.split_part10(stored)[3]:] == data_set
        # (pynetdicom's C-MOVE SCP puts its own AE title there, fast path or not.)
        assert (originator, originator_id) == (runtime.listener.config.ae_title, 11)


@pytest.mark.parametrize("op", ["C-GET", "C-MOVE"])
def test_the_next_instance_is_read_while_the_peer_stores_this_one(runtime, scu, monkeypatch, op):
    """A C-GET / C-MOVE reads instance k+1 from the archive while the peer
    still holds instance k unanswered (its store cycle no longer includes
    our file read); nothing is read beyond the last, every instance arrives
    once with its stored bytes, and the retrieve succeeds."""
    series = _ct(4, patient_id="READAHEAD" + op[2:])
    with scu(runtime.listener_port, [build_context(CTImageStorage, ImplicitVRLittleEndian)]) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == st.SUCCESS
    archive = runtime.archive
    reads: list[str] = []
    changed = threading.Condition()
    original = archive.read_instance

    def read_instance(row):
        data = original(row)
        with changed:
            reads.append(str(row["SOPInstanceUID"]))
            changed.notify_all()
        return data

    monkeypatch.setattr(archive, "read_instance", read_instance)
    seen: list[tuple[str, list[str]]] = []
    received: dict[str, bytes] = {}

    def on_store(event):
        k = len(seen) + 1
        with changed:
            # Instance k is here, not yet answered: k+1 is being read (or was).
            changed.wait_for(lambda: len(reads) > k, timeout=3 if k < len(series) else 0.2)
            seen.append((str(event.request.AffectedSOPInstanceUID), list(reads)))
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    if op == "C-GET":
        statuses = _c_get_series(runtime, scu, series, ImplicitVRLittleEndian, on_store)
        assert statuses[-1] == st.SUCCESS
    else:
        rsps = _c_move_series(runtime, scu, series, "AHEADDEST", on_store)
        assert rsps[-1].Status == st.SUCCESS
        assert rsps[-1].NumberOfCompletedSuboperations == 4
    n = len(series)
    assert [uid for uid, _ in seen] == reads  # each read once, sent in that order
    for k, (uid, read_so_far) in enumerate(seen, start=1):
        assert read_so_far == reads[:min(k + 1, n)], (k, uid, read_so_far)
    assert sorted(received) == sorted(str(d.SOPInstanceUID) for d in series)
    for uid, data_set in received.items():
        stored = _stored_bytes(runtime, uid)
        assert stored[fastpath.split_part10(stored)[3]:] == data_set


def test_stores_are_served_as_they_arrive_one_request_at_a_time(runtime, scu):
    """A C-STORE is stored and answered by the thread that received it; while
    the association's own thread serves a request, the next one waits for
    it instead of running beside it."""
    import time

    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    archive = runtime.archive
    served_by: list = []
    original = archive.store_bytes

    def store_bytes(*args, **kw):
        served_by.append(threading.current_thread())
        return original(*args, **kw)

    archive.store_bytes = store_bytes
    first, second = _ct(2, patient_id="INLINE")
    with scu(runtime.listener_port, [build_context(CTImageStorage)]) as assoc:
        assert assoc.send_c_store(first).Status == st.SUCCESS
        assert isinstance(served_by[0], DULServiceProvider)
        (ours,) = runtime.listener.active_associations
        lock = ours._osx_serve_lock
        lock.acquire()  # as the association thread does around a request
        answer: list = []
        sender = threading.Thread(target=lambda: answer.append(assoc.send_c_store(second)))
        try:
            sender.start()
            time.sleep(0.5)
            assert not answer and len(served_by) == 1  # not served beside the other
        finally:
            lock.release()
        sender.join(10)
        assert answer and answer[0].Status == st.SUCCESS
        assert isinstance(served_by[1], Association)  # queued, then served in turn
    assert archive.count("image") == 2


def test_an_idle_association_does_not_spin_and_still_answers(runtime, scu):
    """An accepted association's reactor sleeps while nothing arrives (it
    used to look every millisecond: ~0.6 ms of CPU per instance received),
    wakes for a request and for the release."""
    import time

    from pynetdicom.sop_class import Verification

    with scu(runtime.listener_port, [build_context(Verification)]) as assoc:
        (ours,) = runtime.listener.active_associations
        looks: list[float] = []
        get_msg = ours.dimse.get_msg

        def counting_get_msg(*a, **kw):
            looks.append(time.monotonic())
            return get_msg(*a, **kw)

        ours.dimse.get_msg = counting_get_msg
        time.sleep(0.5)
        idle_looks = len(looks)
        assert assoc.send_c_echo().Status == st.SUCCESS
        assert assoc.send_c_echo().Status == st.SUCCESS
    assert assoc.is_released
    assert idle_looks <= 0.5 / fastpath.REACTOR_IDLE_WAIT + 5, idle_looks  # not ~500
    deadline = time.monotonic() + 5
    while runtime.listener.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not runtime.listener.active_associations
