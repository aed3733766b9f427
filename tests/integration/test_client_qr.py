"""Client side against a real Orthanc: C-ECHO, C-FIND, C-GET, C-MOVE, jobs, faults."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet
from sqlalchemy import select

from nethelpers import AET, free_port, make_settings
from osirix_py.db.schema import jobs as jobs_table
from osirix_py.net import client
from osirix_py.net.scu import EchoError, ScuError, echo
from osirix_py.server.runtime import Runtime
from osirix_py.services.jobs import INTERRUPTED, JobManager
from osirix_py.services.nodes import Node
from osirix_py.storage.base import checksum
from peers_fixtures import client_peers  # noqa: F401 - fixture

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def rt(client_peers, tmp_path_factory):  # noqa: F811
    runtime = Runtime(make_settings(tmp_path_factory.mktemp("client-rt"), http=False,
                                    listener_port=client_peers.our_port))
    runtime.start()
    yield runtime
    runtime.stop(timeout=2.0)


def _studies(peers):
    rows = client.query(peers.node(), "study", {}, calling_ae=AET)
    return {r["PatientID"]: r for r in rows}


def _forget(rt, study_uid):
    if rt.archive.count("study", {"StudyInstanceUID": study_uid}):
        rt.archive.delete("study", study_uid)


# --------------------------------------------------------------------------- echo
def test_echo_names_peer_and_measures_rtt(client_peers):
    assert echo(client_peers.node(), calling_ae=AET, timeout=5) > 0
    closed = free_port()
    t0 = time.monotonic()
    with pytest.raises(EchoError) as err:
        echo(Node("gone", "NOBODY", "127.0.0.1", closed), calling_ae=AET, timeout=2)
    assert time.monotonic() - t0 < 3
    assert f"NOBODY@127.0.0.1:{closed}" in str(err.value)
    assert "refused" in str(err.value)


# --------------------------------------------------------------------------- C-FIND
def test_query_each_level(client_peers):
    node = client_peers.node()
    patients = client.query(node, "patient", {}, calling_ae=AET)
    assert {p["PatientID"] for p in patients} >= {"PAT001", "PAT002"}
    studies = client.query(node, "study", {"PatientID": "PAT001"}, calling_ae=AET)
    assert len(studies) == 1
    s = studies[0]
    assert s["NumberOfStudyRelatedInstances"] == 20 and s["ModalitiesInStudy"]
    # the same keys as the local find (dicts keyed by DICOM keyword)
    assert {"StudyInstanceUID", "StudyDate", "AccessionNumber", "PatientName"} <= set(s)
    series = client.query(node, "series", {"StudyInstanceUID": s["StudyInstanceUID"]}, calling_ae=AET)
    assert len(series) == 2 and all(r["NumberOfSeriesRelatedInstances"] == 10 for r in series)
    images = client.query(node, "image", {"StudyInstanceUID": s["StudyInstanceUID"],
                                          "SeriesInstanceUID": series[0]["SeriesInstanceUID"]},
                          calling_ae=AET)
    assert len(images) == 10 and all(r["SOPInstanceUID"] for r in images)
    # only the return keys asked for (besides the filters)
    lean = client.query(node, "image", {"StudyInstanceUID": s["StudyInstanceUID"],
                                        "SeriesInstanceUID": series[0]["SeriesInstanceUID"]},
                        calling_ae=AET, keys=("SOPInstanceUID", "SOPClassUID"))
    assert {r["SOPInstanceUID"] for r in lean} == {r["SOPInstanceUID"] for r in images}
    assert all(set(r) == {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                          "SOPClassUID"} and r["SOPClassUID"] for r in lean)


def test_query_filters_and_charset(client_peers):
    node = client_peers.node()
    everything = client.query(node, "study", {}, calling_ae=AET)
    first = everything[0]
    by_date = client.query(node, "study", {"StudyDate": f"{first['StudyDate']}-{first['StudyDate']}"},
                           calling_ae=AET)
    assert first["StudyInstanceUID"] in {r["StudyInstanceUID"] for r in by_date}
    acc = client.query(node, "study", {"AccessionNumber": first["AccessionNumber"]}, calling_ae=AET)
    assert [r["StudyInstanceUID"] for r in acc] == [first["StudyInstanceUID"]]
    mr = client.query(node, "series", {"Modality": "MR"}, calling_ae=AET)
    assert mr and all(r["Modality"] == "MR" for r in mr)
    # non-ASCII filter: sent as ISO_IR 192, answers decoded with their character set
    umlaut = client.query(node, "patient", {"PatientName": "Müller*"}, calling_ae=AET)
    assert umlaut and umlaut[0]["PatientName"].startswith("Müller")
    assert client.query(node, "study", {"PatientName": "NOBODY*"}, calling_ae=AET) == []


# --------------------------------------------------------------------------- retrieve
@pytest.mark.parametrize("method", ["get", "move"])
def test_retrieve_study_series_instance(client_peers, rt, method):
    node = client_peers.node(method=method)
    study = _studies(client_peers)["PAT001"]
    uid = study["StudyInstanceUID"]
    _forget(rt, uid)
    seen = []
    prog = client.retrieve(node, rt.archive, study_uid=uid, method=method, calling_ae=AET,
                           progress=lambda p: seen.append((p.completed, p.remaining)))
    assert (prog.completed, prog.failed, prog.total) == (20, 0, 20)
    assert seen and seen[-1] == (20, 0)
    # Done means indexed (and durable): C-GET's stores and the C-MOVE stores
    # our listener acknowledged early are settled before retrieve returns.
    assert rt.archive.count("image", {"StudyInstanceUID": uid}) == 20
    # Each file holds the data set that was sent, element for element, and
    # the checksum indexed with it.
    sources = {}
    for f in client_peers.data.rglob("*.dcm"):
        ds = dcmread(f)
        sources[ds.SOPInstanceUID] = ds
    rows = rt.archive.find("instance", {"StudyInstanceUID": uid})
    for r in rows:
        data = rt.archive.read_instance(r)
        assert r["_checksum"] == checksum(data) and r["_file_size"] == len(data)
        got, src = dcmread(BytesIO(data)), sources[r["SOPInstanceUID"]]
        assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        assert got == src and got.PixelData == src.PixelData
    # series and instance level
    _forget(rt, uid)
    series = client.query(node, "series", {"StudyInstanceUID": uid}, calling_ae=AET)[0]
    sid = series["SeriesInstanceUID"]
    prog = client.retrieve(node, rt.archive, study_uid=uid, series_uid=sid, method=method, calling_ae=AET)
    assert prog.completed == 10
    _forget(rt, uid)
    inst = client.query(node, "image", {"StudyInstanceUID": uid, "SeriesInstanceUID": sid},
                        calling_ae=AET)[0]["SOPInstanceUID"]
    prog = client.retrieve(node, rt.archive, study_uid=uid, series_uid=sid, instance_uid=inst,
                           method=method, calling_ae=AET)
    assert prog.completed == 1
    assert rt.archive.count("image", {"StudyInstanceUID": uid}) == 1


@pytest.mark.parametrize("method", ["get", "move"])
def test_retrieve_reports_instances_that_could_not_be_stored_here(client_peers, rt, method,
                                                                  monkeypatch):
    """Retrieved instances are acknowledged to the PACS before they are
    written; one that then fails here (disk full) is counted as failed, with
    its UID and the reason, and everything else is stored."""
    from osirix_py.storage.base import StorageFullError, key_for_uid

    node = client_peers.node(method=method)
    uid = _studies(client_peers)["PAT002"]["StudyInstanceUID"]
    _forget(rt, uid)
    sid = client.query(node, "series", {"StudyInstanceUID": uid}, calling_ae=AET)[0]["SeriesInstanceUID"]
    sops = sorted(r["SOPInstanceUID"] for r in client.query(
        node, "image", {"StudyInstanceUID": uid, "SeriesInstanceUID": sid}, calling_ae=AET))
    full = {key_for_uid(u) for u in (sops[2], sops[6])}
    store = rt.archive.store
    original_stage = store.stage

    def stage(key, data=None, **kw):  # (a retrieve's file is staged, then renamed in place)
        if key in full:
            raise StorageFullError(28, "No space left on device")
        return original_stage(key, data, **kw)

    monkeypatch.setattr(store, "stage", stage)
    prog = client.retrieve(node, rt.archive, study_uid=uid, series_uid=sid, method=method,
                           calling_ae=AET)
    assert (prog.completed, prog.failed) == (8, 2)
    assert len(prog.failures) == 2 and all("not stored here" in r for r in prog.failures.values())
    # a partial retrieve, not a failed one (asked for again, they failed here again)
    assert prog.error is None
    stored = {r["SOPInstanceUID"] for r in rt.archive.find("instance", {"SeriesInstanceUID": sid})}
    assert len(stored) == 8 and not stored & set(prog.failures)


def test_retrieve_job_persisted_with_throughput(client_peers, rt):
    uid = _studies(client_peers)["PAT002"]["StudyInstanceUID"]
    _forget(rt, uid)
    updates = []
    unsubscribe = rt.jobs.subscribe(updates.append)
    try:
        job = rt.jobs.submit_retrieve(client_peers.node(), study_uid=uid, method="get")
        job = rt.jobs.wait(job.id, 30)
    finally:
        unsubscribe()
    assert job.state == "done", job.error
    assert (job.completed, job.total, job.failed) == (20, 20, 0)
    assert job.bytes > 0 and job.rate > 0 and job.byte_rate > 0
    assert [u.state for u in updates][:2] == ["queued", "running"] and updates[-1].state == "done"
    with rt.archive.db.engine.connect() as conn:
        row = conn.execute(select(jobs_table).where(jobs_table.c.id == job.id)).mappings().one()
    assert row["state"] == "done" and row["completed"] == 20 and row["finished_at"] is not None
    assert rt.archive.count("image", {"StudyInstanceUID": uid}) == 20


@pytest.mark.parametrize("method", ["get", "move"])
def test_cancel_retrieve(client_peers, rt, method):
    uid = _studies(client_peers)["BIG001"]["StudyInstanceUID"]
    _forget(rt, uid)
    cancel = threading.Event()

    def progress(p):
        if p.completed >= 5:
            cancel.set()

    prog = client.retrieve(client_peers.node(method=method), rt.archive, study_uid=uid,
                           method=method, calling_ae=AET, progress=progress, cancel=cancel)
    assert prog.cancelled
    assert 5 <= prog.completed < 150
    # what did arrive is kept and indexed
    assert rt.archive.count("image", {"StudyInstanceUID": uid}) >= 5


def test_interrupted_jobs_marked_failed(client_peers, rt):
    mgr = JobManager(rt.archive, calling_ae=AET)
    started = threading.Event()
    job = mgr._submit("retrieve", "never runs", {},
                      lambda job, cancel: (started.set(), cancel.wait(60)))
    # The worker writes "running" before it starts the work: wait for that
    # write, or it may land after recover()'s below.
    assert started.wait(10)
    # pretend the process died while the job was running
    with rt.archive.db.engine.begin() as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.id == job.id).values(state="running"))
    # The first manager's worker stays blocked until the check is done: were it
    # released first, its own final state write could land after recover()'s.
    assert JobManager(rt.archive, calling_ae=AET).recover() >= 1
    with rt.archive.db.engine.connect() as conn:
        row = conn.execute(select(jobs_table).where(jobs_table.c.id == job.id)).mappings().one()
    mgr._cancel[job.id].set()
    assert row["state"] == "failed" and row["error"] == INTERRUPTED
    mgr._pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- faults
def test_closed_port_fails_fast_naming_peer(rt):
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ScuError) as err:
        client.query(Node("x", "PACS", "127.0.0.1", port), "study", {}, calling_ae=AET, timeout=2)
    assert time.monotonic() - t0 < 3
    assert err.value.kind == "unreachable" and f"PACS@127.0.0.1:{port}" in str(err.value)
    job = rt.jobs.submit_retrieve(Node("x", "PACS", "127.0.0.1", port), study_uid="1.2.3", method="get")
    job = rt.jobs.wait(job.id, 15)
    assert job.state == "failed" and f"PACS@127.0.0.1:{port}" in job.error


def test_rejected_called_ae_and_unknown_calling_ae(client_peers, monkeypatch):
    with pytest.raises(ScuError) as err:
        client.query(client_peers.node(ae_title="WRONGAE"), "study", {}, calling_ae=AET, timeout=5)
    assert "WRONGAE@127.0.0.1" in str(err.value)
    assert err.value.kind == "rejected" and "Called AE title not recognised" in str(err.value)
    # The same when pynetdicom's requestor finds the connection closed before
    # it reads the answer (Orthanc closes it right after the A-ASSOCIATE-RJ; on
    # busy cores the DUL thread gets there first and pynetdicom says
    # "aborted"): its thread held up on purpose here.
    import pynetdicom.acse

    send_request = pynetdicom.acse.ACSE.send_request

    def late(self):
        send_request(self)
        time.sleep(0.3)

    with monkeypatch.context() as m:
        m.setattr(pynetdicom.acse.ACSE, "send_request", late)
        with pytest.raises(ScuError) as err:
            client.query(client_peers.node(ae_title="WRONGAE"), "study", {}, calling_ae=AET,
                         timeout=5)
    assert err.value.kind == "rejected" and "Called AE title not recognised" in str(err.value)
    # Orthanc accepts the association but refuses C-FIND from an AE it does not know
    with pytest.raises(ScuError) as err:
        client.query(client_peers.node(), "study", {}, calling_ae="STRANGER", timeout=5)
    assert "STRANGER" in str(err.value)


def test_unknown_move_destination_explained(client_peers, rt):
    uid = _studies(client_peers)["PAT001"]["StudyInstanceUID"]
    with pytest.raises(ScuError) as err:
        client.retrieve(client_peers.node(), rt.archive, study_uid=uid, method="move",
                        calling_ae=AET, move_destination="NOWHERE", listener_host="127.0.0.1",
                        listener_port=4321)
    msg = str(err.value)
    assert err.value.kind == "move-destination"
    assert "does not know our AE title: add AE NOWHERE, host 127.0.0.1, port 4321" in msg


class _Misnamed(Dataset):
    """A data set whose C-STORE command (pynetdicom takes its UIDs from the
    data set's attributes) names another SOP instance than it holds."""

    @property
    def SOPInstanceUID(self):  # noqa: N802
        return "1.2.826.0.1.3680043.2.1125.999.1"


def _misnamed(path) -> Dataset:
    ds = dcmread(path)
    out = _Misnamed()
    out.update(ds)
    out.file_meta = ds.file_meta
    return out


@contextmanager
def _partial_get_scp(client_peers, ae_title: str, sent: int, then, misnamed: int | None = None):
    """A pynetdicom C-GET SCP that sends *sent* instances of a 10-instance
    series (a pending response after each), then calls *then(event)* and
    stops: yields its Node and the series' files.  The command of instance
    number *misnamed* names another SOP instance than its data set."""
    files = sorted(client_peers.data.rglob("*.dcm"))[:10]
    ae = AE(ae_title=ae_title)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scp_role=True,
                                 scu_role=False)

    def on_get(event):
        yield len(files)
        for i, f in enumerate(files):
            if i == sent:
                then(event)
                return
            yield 0xFF00, _misnamed(f) if i == misnamed else dcmread(f)

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)])
    try:
        yield Node(ae_title.lower(), ae_title, "127.0.0.1", port), files
    finally:
        server.shutdown()


@pytest.fixture
def aborting_get_scp(client_peers):
    """Sends 3 instances of a 10-instance series, then aborts."""
    with _partial_get_scp(client_peers, "ABORTER", 3, lambda event: event.assoc.abort()) as scp:
        yield scp


def test_a_c_get_store_whose_data_set_is_not_the_one_named_is_refused(rt, client_peers):
    """A PACS whose C-STORE names one instance and carries another: that
    sub-operation is refused with 0xA900 and not stored, the retrieve says
    which and why, and the rest of the series is stored."""
    with _partial_get_scp(client_peers, "MISNAMER", 4, lambda event: None, misnamed=1) as scp:
        node, files = scp
        study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        _forget(rt, study)
        prog = client.retrieve(node, rt.archive, study_uid=study, method="get", calling_ae=AET)
    real = dcmread(files[1], stop_before_pixels=True).SOPInstanceUID
    assert (prog.completed, prog.failed) == (3, 1)
    reason = prog.failures["1.2.826.0.1.3680043.2.1125.999.1"]
    assert "0xA900" in reason and real in reason
    stored = {r["SOPInstanceUID"] for r in rt.archive.find("image", {"StudyInstanceUID": study})}
    assert stored == {dcmread(f, stop_before_pixels=True).SOPInstanceUID
                      for f in (files[0], files[2], files[3])}


def test_abort_mid_retrieve_keeps_what_arrived(rt, aborting_get_scp):
    node, files = aborting_get_scp
    study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    _forget(rt, study)
    job = rt.jobs.submit_retrieve(node, study_uid=study, method="get")
    job = rt.jobs.wait(job.id, 30)
    assert job.state == "failed" and "aborted" in job.error and "ABORTER@127.0.0.1" in job.error
    assert rt.archive.count("image", {"StudyInstanceUID": study}) == 3


@pytest.fixture
def silent_get_scp(client_peers):
    """Sends 2 instances of a 10-instance series, then says nothing more for 20 s."""
    release = threading.Event()
    with _partial_get_scp(client_peers, "SILENT", 2, lambda event: release.wait(20)) as scp:
        try:
            yield scp
        finally:
            release.set()


def test_a_pacs_that_goes_silent_times_out_and_keeps_what_arrived(rt, silent_get_scp):
    """No response within the DIMSE timeout: the retrieve fails with a time-out
    that names the PACS, within a bound, and the instances that arrived
    (their pending responses read on the way) are stored."""
    node, files = silent_get_scp
    study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    _forget(rt, study)
    seen = []
    t0 = time.monotonic()
    with pytest.raises(client.ScuError) as err:
        client.retrieve(node, rt.archive, study_uid=study, method="get", calling_ae=AET,
                        dimse_timeout=1.5, progress=lambda p: seen.append(p.completed))
    elapsed = time.monotonic() - t0
    assert err.value.kind == "timeout" and "SILENT@127.0.0.1" in str(err.value)
    assert "no C-GET response within 1.5 s" in str(err.value)
    assert 1.4 < elapsed < 8.0
    assert seen and max(seen) >= 1  # (pynetdicom reports a store when it starts the next)
    assert rt.archive.count("image", {"StudyInstanceUID": study}) == 2


# --------------------------------------------------------------------------- C-GET: second pass
#: Two storage classes that no C-GET proposes on its first association.
_UNPROPOSED = ("1.2.840.10008.5.1.4.1.1.104.3",  # Encapsulated STL
               "1.2.840.10008.5.1.4.1.1.88.74")  # Planned Imaging Agent Administration SR
_VIDEO = "1.2.840.10008.5.1.4.1.1.77.1.1.1"  # Video Endoscopic Image
_MPEG4 = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile / Level 4.1


def _study_with_rare_instances(folder):
    """Data sets of one study: a 3-slice CT series, a series with one
    instance of each class in _UNPROPOSED, and a series with an MPEG-4
    endoscopy video; and (study, rare series, video series, CT class)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    from osirix_py.dicom import synthetic

    ct = sorted(synthetic.generate_archive(folder, patients=1, studies_per_patient=1,
                                           series_per_study=1, slices=3, rows=32, columns=32,
                                           seed=11))
    out, rare_series, video_series = [dcmread(f) for f in ct], generate_uid(), generate_uid()
    for cls in _UNPROPOSED + (_VIDEO,):
        ds = dcmread(ct[0])
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = cls
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = rare_series, "OT", 2
        del ds.PixelData
        if cls == _VIDEO:
            ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = video_series, "ES", 3
            ds.file_meta.TransferSyntaxUID = _MPEG4
            ds.update({"SamplesPerPixel": 3, "PhotometricInterpretation": "YBR_PARTIAL_420",
                       "PlanarConfiguration": 0, "BitsAllocated": 8, "BitsStored": 8,
                       "HighBit": 7, "PixelRepresentation": 0, "NumberOfFrames": 1})
            ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(range(256)) * 8])
            ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        out.append(ds)
    return out, (out[0].StudyInstanceUID, rare_series, video_series, str(out[0].SOPClassUID))


@pytest.fixture
def orthanc_with_rare_instances(client_peers, tmp_path):
    """An Orthanc of its own holding :func:`_study_with_rare_instances`
    (Orthanc cannot transcode the video)."""
    from peers_fixtures import start_orthanc

    datasets, info = _study_with_rare_instances(tmp_path / "ct")
    orth = start_orthanc(tmp_path / "orthanc", {AET: (AET, client_peers.our_port)})
    try:
        sender = AE("RARESCU")
        for ds in datasets:
            sender.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = sender.associate("127.0.0.1", orth.dicom_port, ae_title=orth.aet)
        assert assoc.is_established
        try:
            for ds in datasets:
                assert assoc.send_c_store(ds).Status == 0
        finally:
            assoc.release()
        yield (Node("rare", orth.aet, "127.0.0.1", orth.dicom_port), *info)
    finally:
        orth.cleanup()


def test_c_get_fetches_what_its_first_association_could_not_carry(rt,
                                                                   orthanc_with_rare_instances):
    """A C-GET association proposes at most 127 storage classes (there are
    more), each getting one transfer syntax from the PACS.  Orthanc refuses a
    whole C-GET whose instances include another class, or a video it cannot
    transcode (0xC000, nothing sent).  The retrieve asks the PACS what it
    holds and asks again for what is missing, offering every syntax for
    their classes: every instance arrives, in its class and the syntax it
    was stored in, at study and at series level."""
    node, study, rare_series, video_series, ct_class = orthanc_with_rare_instances
    assert ct_class in client.GET_STORAGE_CLASSES and _VIDEO in client.GET_STORAGE_CLASSES
    assert not set(_UNPROPOSED) & set(client.GET_STORAGE_CLASSES)  # (the premises)
    _forget(rt, study)
    seen = []
    prog = client.retrieve(node, rt.archive, study_uid=study, method="get", calling_ae=AET,
                           progress=lambda p: seen.append(p.completed))
    assert (prog.completed, prog.failed, prog.total) == (6, 0, 6)
    assert prog.status == 0 and prog.error is None and not prog.failures
    assert seen and seen[-1] == 6
    rows = rt.archive.find("instance", {"StudyInstanceUID": study})
    assert sorted(r["SOPClassUID"] for r in rows) == sorted([ct_class] * 3 + list(_UNPROPOSED)
                                                            + [_VIDEO])
    video = [r for r in rows if r["SOPClassUID"] == _VIDEO]
    assert video[0]["TransferSyntaxUID"] == _MPEG4

    _forget(rt, study)
    prog = client.retrieve(node, rt.archive, study_uid=study, series_uid=rare_series,
                           method="get", calling_ae=AET)
    assert (prog.completed, prog.failed) == (2, 0)
    rows = rt.archive.find("instance", {"StudyInstanceUID": study})
    assert sorted(r["SOPClassUID"] for r in rows) == sorted(_UNPROPOSED)


def test_c_get_second_pass_asks_only_for_what_is_missing(rt, orthanc_with_rare_instances,
                                                        monkeypatch):
    """Instances already here are not asked for again: with two of the CT
    slices stored, the study's second pass asks for the third by its UID and
    for the two other series whole, offering their classes in every syntax,
    and the retrieve counts every instance of the study."""
    node, study, rare_series, video_series, ct_class = orthanc_with_rare_instances
    _forget(rt, study)
    ct_series = [r["SeriesInstanceUID"] for r in client.query(
        node, "series", {"StudyInstanceUID": study}, calling_ae=AET)
        if r["SeriesInstanceUID"] not in (rare_series, video_series)][0]
    client.retrieve(node, rt.archive, study_uid=study, series_uid=ct_series, method="get",
                    calling_ae=AET)
    slices = sorted(r["SOPInstanceUID"] for r in rt.archive.find(
        "instance", {"SeriesInstanceUID": ct_series}))
    assert len(slices) == 3
    rt.archive.delete("instance", slices[1])
    asked = []
    one_pass = client._retrieve_pass

    def recording(node, archive, prog, ident, **kw):
        contexts = (kw.get("negotiation") or client._get_negotiation())[0][1:]
        asked.append((ident.QueryRetrieveLevel, ident.get("SeriesInstanceUID"),
                      ident.get("SOPInstanceUID"),
                      {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in contexts}))
        return one_pass(node, archive, prog, ident, **kw)

    monkeypatch.setattr(client, "_retrieve_pass", recording)
    prog = client.retrieve(node, rt.archive, study_uid=study, method="get", calling_ae=AET)
    assert asked[0][:3] == ("STUDY", None, None)
    offered = {(cls, ts) for cls in sorted(set(_UNPROPOSED) | {_VIDEO, ct_class})
               for ts in client.GET_RETRY_SYNTAXES}
    assert (_VIDEO, _MPEG4) in offered
    assert sorted(a[:3] for a in asked[1:]) == sorted([
        ("IMAGE", ct_series, slices[1]), ("SERIES", rare_series, None),
        ("SERIES", video_series, None)])
    assert all(a[3] == offered for a in asked[1:])
    assert (prog.failed, prog.total) == (0, 6) and prog.completed >= 4
    assert rt.archive.count("image", {"StudyInstanceUID": study}) == 6


def test_c_get_from_a_pacs_that_fails_single_sub_operations(rt, tmp_path):
    """Another osirix-py as the PACS: it sends what the association can
    carry and fails the rest one by one (0xB000, Failed SOP Instance UID
    List) -- the classes not proposed, and the video it cannot decompress
    for the syntax accepted.  The second pass brings those three: the
    retrieve ends with all six, the video as stored."""
    from io import BytesIO

    datasets, (study, _, _, ct_class) = _study_with_rare_instances(tmp_path / "ct")
    pacs = Runtime(make_settings(tmp_path / "pacs", http=False, ae_title="OTHERPACS"))
    pacs.start()
    try:
        for ds in datasets:
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            pacs.archive.store_bytes(buf.getvalue(), origin="test")
        node = Node("other", "OTHERPACS", "127.0.0.1", pacs.listener.port)
        _forget(rt, study)
        first = []
        one_pass = client._retrieve_pass

        def recording(node, archive, prog, ident, **kw):
            one_pass(node, archive, prog, ident, **kw)
            first.append((prog.completed, prog.failed, prog.status))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(client, "_retrieve_pass", recording)
            prog = client.retrieve(node, rt.archive, study_uid=study, method="get",
                                   calling_ae=AET)
        assert first[0] == (3, 3, 0xB000)  # (the premise: single sub-operations failed)
        assert (prog.completed, prog.failed, prog.total, prog.status) == (6, 0, 6, 0)
        rows = rt.archive.find("instance", {"StudyInstanceUID": study})
        assert sorted(r["SOPClassUID"] for r in rows) == sorted(
            [ct_class] * 3 + list(_UNPROPOSED) + [_VIDEO])
        assert [r["TransferSyntaxUID"] for r in rows if r["SOPClassUID"] == _VIDEO] == [_MPEG4]
    finally:
        pacs.stop(timeout=2.0)
