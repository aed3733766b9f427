"""The listener as a Storage SCP: real dcmtk and pynetdicom peers on loopback.

C-ECHO; storescu with its default 128 presentation contexts; every common
transfer syntax stored as received (and retrieved back decompressed by getscu
when the peer does not accept it); eight associations at once; bad data sets
get a failure status and the association goes on; a full disk gives 0xA700;
an aborted transfer leaves nothing; access control; association limit;
TCP_NODELAY on the sockets.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import time
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest
import xxhash
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification

from osirix_py.db.engine import open_database
from osirix_py.dicom import status as st
from osirix_py.dicom import synthetic
from osirix_py.dicom.header import DicomFileError
from osirix_py.net.fastpath import pause_reactor
from osirix_py.net.scu import EchoError, echo_address
from osirix_py.net.tcp import association_socket, has_nodelay
from osirix_py.services.archive import Archive
from osirix_py.services.nodes import Node
from osirix_py.storage import MemoryStore

AET = "OSIRIXPY"

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
DATA_STORE = Path(data_store.__file__).parent / "data"

#: (file, storescu option proposing its transfer syntax)
COMPRESSED = [
    (TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm", "-xy"),  # JPEG baseline
    (TEST_FILES / "JPGExtended.dcm", "-xx"),  # JPEG extended (12 bit)
    (TEST_FILES / "SC_rgb_jpeg_gdcm.dcm", "-xs"),  # JPEG lossless SV1
    (TEST_FILES / "MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS lossless
    (TEST_FILES / "JPEGLSNearLossless_16.dcm", "-xu"),  # JPEG-LS near-lossless
    (TEST_FILES / "MR_small_jp2klossless.dcm", "-xv"),  # JPEG 2000 lossless
    (TEST_FILES / "JPEG2000.dcm", "-xw"),  # JPEG 2000 lossy
    (TEST_FILES / "SC_rgb_rle.dcm", "-xr"),  # RLE
    (TEST_FILES / "image_dfl.dcm", "-xd"),  # deflate
    (TEST_FILES / "MR_small_bigendian.dcm", "-xb"),  # explicit big endian
    (TEST_FILES / "MR_small_implicit.dcm", "-xi"),  # implicit little endian
    (DATA_STORE / "JPEG-LL.dcm", "-xs"),  # JPEG lossless SV1, 16 bit
]


def _copy_with_fresh_uids(src: Path, dst: Path) -> str:
    """pydicom's test files share UIDs between variants: give each copy its own."""
    ds = pydicom.dcmread(src)
    uid = generate_uid(entropy_srcs=[src.name, "listener-test"])
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    for kw in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(kw):
            setattr(ds, kw, generate_uid(entropy_srcs=[src.name, kw]))
    if not ds.get("PatientID"):
        ds.PatientID = "TESTFILES"
    ds.save_as(dst)
    return uid


def _ct(n: int = 3, **kw) -> list[Dataset]:
    kw.setdefault("rows", 32)
    kw.setdefault("columns", 32)
    return synthetic.make_ct_series(slices=n, **kw)


# --------------------------------------------------------------------------- echo
@pytest.mark.peers
def test_echoscu(runtime, dcmtk):
    out = dcmtk("echoscu", "-v", "-aec", AET, "127.0.0.1", runtime.listener_port, timeout=20)
    assert out.returncode == 0, out.stdout
    assert "Received Echo Response (Success)" in out.stdout


def test_scu_echo_success_and_precise_failures(runtime):
    port = runtime.listener_port
    rtt = echo_address("127.0.0.1", port, AET, calling_ae="TESTSCU", timeout=5)
    assert 0 < rtt < 5
    closed = port + 1 if port < 65535 else port - 1
    t0 = time.monotonic()
    with pytest.raises(EchoError) as err:
        echo_address("127.0.0.1", closed, "NOBODY", calling_ae="TESTSCU", timeout=3)
    assert time.monotonic() - t0 < 4
    msg = str(err.value)
    assert err.value.kind == "unreachable"
    assert "127.0.0.1" in msg and str(closed) in msg and "NOBODY" in msg and "refused" in msg


# --------------------------------------------------------------------------- storescu
@pytest.mark.peers
def test_storescu_folder_with_default_128_contexts(runtime, synthetic_dir, dcmtk):
    folder = synthetic_dir / "PAT001"
    files = sorted(folder.rglob("*.dcm"))
    out = dcmtk("storescu", "-d", "-aec", AET, "+sd", "+r", "127.0.0.1", runtime.listener_port,
                    folder, timeout=60)
    assert out.returncode == 0, out.stdout[-3000:]
    proposed = out.stdout.split("Association Accepted")[0].count("(Proposed)")
    assert proposed == 128, f"storescu proposed {proposed} presentation contexts"
    assert out.stdout.count("Received Store Response") == len(files) == 40
    assert "Store Failed" not in out.stdout
    assert runtime.archive.count("instance") == 40
    # Stored as received: the data set bytes after the file meta are identical.
    for f in files[:5]:
        orig = pydicom.dcmread(f)
        row = runtime.archive.find("instance", {"SOPInstanceUID": orig.SOPInstanceUID})[0]
        stored = pydicom.dcmread(io.BytesIO(runtime.archive.read_instance(row)))
        assert stored.PixelData == orig.PixelData
        assert str(stored.PatientName) == str(orig.PatientName)


@pytest.mark.peers
def test_storescu_every_transfer_syntax_stored_as_received_and_getscu_decompresses(runtime, tmp_path, dcmtk):
    src = tmp_path / "src"
    src.mkdir()
    expected = {}
    for i, (f, option) in enumerate(COMPRESSED):
        dst = src / f"{i:02d}_{f.name}"
        uid = _copy_with_fresh_uids(f, dst)
        expected[uid] = (dst, option)
    for path, option in expected.values():
        out = dcmtk("storescu", "-v", option, "-aec", AET, "127.0.0.1", runtime.listener_port,
                        path, timeout=30)
        assert "Received Store Response (Success)" in out.stdout, (path.name, out.stdout[-2000:])
    for uid, (path, _) in expected.items():
        orig = pydicom.dcmread(path)
        rows = runtime.archive.find("instance", {"SOPInstanceUID": uid})
        assert len(rows) == 1, path.name
        assert rows[0]["TransferSyntaxUID"] == orig.file_meta.TransferSyntaxUID, path.name
        stored = pydicom.dcmread(io.BytesIO(runtime.archive.read_instance(rows[0])))
        assert stored.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
        assert stored.PixelData == orig.PixelData, path.name  # never re-encoded

    # getscu proposes uncompressed syntaxes only: every instance comes back
    # decoded (big endian swapped), with the pixels of the original.
    out_dir = tmp_path / "get"
    out_dir.mkdir()
    uids = "\\".join(expected)
    out = dcmtk("getscu", "-v", "-S", "-aec", AET, "-od", out_dir, "127.0.0.1",
                    runtime.listener_port, "-k", "QueryRetrieveLevel=IMAGE", "-k",
                    f"SOPInstanceUID={uids}", timeout=60)
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"Number of Completed Suboperations : {len(expected)}" in out.stdout, out.stdout[-3000:]
    got = {pydicom.dcmread(p).SOPInstanceUID: p for p in out_dir.iterdir()}
    assert set(got) == set(expected)
    for uid, p in got.items():
        back, orig = pydicom.dcmread(p), pydicom.dcmread(expected[uid][0])
        assert not back.file_meta.TransferSyntaxUID.is_compressed
        assert back.SOPInstanceUID == orig.SOPInstanceUID  # decompress() kept the UID
        assert np.array_equal(back.pixel_array, orig.pixel_array), expected[uid][0].name


@pytest.mark.peers
def test_eight_storescu_associations_at_once(runtime, synthetic_dir, dcmtk_popen):
    series_dirs = sorted({p.parent for p in synthetic_dir.rglob("*.dcm")})[:8]
    procs = [dcmtk_popen("storescu", "-aec", AET, "+sd", "127.0.0.1", runtime.listener_port, d)
             for d in series_dirs]
    outs = [p.communicate(timeout=90)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, outs
    assert runtime.archive.count("instance") == 80
    assert runtime.archive.count("series") == 8
    assert runtime.archive.check().clean


def test_eight_pynetdicom_associations_at_once(runtime, scu):
    """Concurrent C-STOREs of distinct and identical instances through the group commit."""
    shared = _ct(2, patient_id="SHARED", seed=99)

    def send(i: int) -> list[int]:
        series = _ct(5, patient_id=f"P{i}", seed=i) + shared
        with scu(runtime.listener_port, [build_context(CTImageStorage)]) as assoc:
            return [assoc.send_c_store(ds).Status for ds in series]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(8)))
    assert all(s == st.SUCCESS for r in results for s in r)
    assert runtime.archive.count("instance") == 8 * 5 + 2


# --------------------------------------------------------------------------- bad input
def _send_raw_c_store(assoc, data: bytes, sop_class: str, sop_instance: str, msg_id: int,
                      originator: tuple[str, int] | None = None) -> Dataset:
    """A C-STORE whose command UIDs need not match the data set (pynetdicom's
    send_c_store takes them from the data set); *originator*: its Move
    Originator AE Title and Message ID."""
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class)
    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    if originator is not None:
        req.MoveOriginatorApplicationEntityTitle, req.MoveOriginatorMessageID = originator
    req.DataSet = io.BytesIO(data)
    # (pynetdicom's own pause, a flag read without a lock, lets a reactor that
    # has just resumed take the response off the queue; see pause_reactor.)
    pause_reactor(assoc)
    try:
        assoc.dimse.send_msg(req, cx.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    ds = Dataset()
    ds.Status = rsp.Status
    if rsp.ErrorComment:
        ds.ErrorComment = rsp.ErrorComment
    return ds


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_bad_data_sets_get_failure_status_and_the_association_goes_on(runtime, scu):
    good, other = _ct(2, patient_id="GOOD")
    no_study = _ct(1, patient_id="BAD", seed=5)[0]
    del no_study.StudyInstanceUID
    with scu(runtime.listener_port, [build_context(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
        # 1. A required UID missing: "cannot understand", naming the attribute.
        rsp = assoc.send_c_store(no_study)
        assert rsp.Status == st.CANNOT_UNDERSTAND
        assert "StudyInstanceUID" in rsp.ErrorComment
        # 2. Data set UID differs from the command's: 0xA900.
        data = encode(other, False, True)
        rsp = _send_raw_c_store(assoc, data, CTImageStorage, "1.2.3.4.5.6", 7)
        assert rsp.Status == st.DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert "SOP Instance UID" in rsp.ErrorComment
        # 3. SOP class differs.
        rsp = _send_raw_c_store(assoc, data, CTImageStorage, other.SOPInstanceUID, 8)
        assert rsp.Status == st.SUCCESS  # same class: fine
        other2 = _ct(1, patient_id="CLS", seed=6)[0]
        other2.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR in a CT context
        rsp = _send_raw_c_store(assoc, encode(other2, False, True), CTImageStorage,
                                other2.SOPInstanceUID, 9)
        assert rsp.Status == st.DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert "SOP Class UID" in rsp.ErrorComment
        # 4. Garbage bytes.
        rsp = _send_raw_c_store(assoc, b"\x08\x00\x18\x00\xff\xff" + b"\x00" * 40, CTImageStorage,
                                "1.2.3.999", 10)
        assert 0xC000 <= rsp.Status <= 0xCFFF
        assert rsp.ErrorComment
        # 5. ... and the association is still good.
        assert assoc.is_established
        assert assoc.send_c_store(good).Status == st.SUCCESS
    uids = {r["SOPInstanceUID"] for r in runtime.archive.find("instance")}
    assert uids == {good.SOPInstanceUID, other.SOPInstanceUID}
    assert runtime.archive.check().clean


def test_disk_full_answers_a700_and_keeps_nothing_partial(runtime_factory, tmp_path, scu):
    series = _ct(4, rows=64, columns=64, patient_id="FULL")
    one = len(encode(series[0], False, True)) + 400
    db = open_database(f"sqlite:///{tmp_path}/full.sqlite")
    store = MemoryStore(capacity=int(one * 1.5))
    archive = Archive(db, store)
    try:
        rt = runtime_factory(archive=archive, http=False)
        with scu(rt.listener_port, [build_context(CTImageStorage)]) as assoc:
            statuses = [assoc.send_c_store(ds) for ds in series]
            assert statuses[0].Status == st.SUCCESS
            for s in statuses[1:]:
                assert s.Status == st.OUT_OF_RESOURCES_STORE
                assert "disk full" in s.ErrorComment
            assert assoc.is_established
        assert archive.count("instance") == 1
        assert len(list(store.keys())) == 1
    finally:
        archive.close()
        db.dispose()


def test_peer_abort_mid_transfer_leaves_no_file_or_row(runtime, scu):
    big = _ct(1, rows=256, columns=256, patient_id="ABORT")[0]
    with scu(runtime.listener_port, [build_context(CTImageStorage, ExplicitVRLittleEndian)],
                         max_pdu=16382) as assoc:
        cx = assoc.accepted_contexts[0]
        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = CTImageStorage
        req.AffectedSOPInstanceUID = big.SOPInstanceUID
        req.Priority = 2
        req.DataSet = io.BytesIO(encode(big, False, True))
        msg = C_STORE_RQ()
        msg.primitive_to_message(req)
        pdus = list(msg.encode_msg(cx.context_id, 8192))
        assert len(pdus) > 10
        for p in pdus[: len(pdus) // 2]:
            assoc.dul.send_pdu(p)
        time.sleep(0.2)
        assoc.abort()
    time.sleep(0.3)
    assert runtime.archive.count("instance") == 0
    assert list(runtime.archive.store.keys()) == []
    store_dir = runtime.settings.store_dir
    assert not [p for p in store_dir.rglob("*") if p.is_file()]
    # The listener is unharmed.
    assert echo_address("127.0.0.1", runtime.listener_port, AET, calling_ae="TESTSCU", timeout=5) > 0



def test_tiny_pdus_split_command_sets_and_data_sets_and_all_arrives(runtime_factory, synthetic_dir, dcmtk):
    """With a 128-byte maximum PDU every command set arrives in several
    fragments (and images in hundreds): storescu's instances are all stored
    intact, and findscu's matches all come back."""
    rt = runtime_factory(max_pdu=128)
    files = sorted(synthetic_dir.rglob("*.dcm"))[:5]
    dcmtk("storescu", "-aec", AET, "127.0.0.1", str(rt.listener_port), *map(str, files))
    assert rt.archive.count("instance") == 5
    for f in files:
        ds = pydicom.dcmread(f)
        row = rt.archive.find("image", {"SOPInstanceUID": ds.SOPInstanceUID})[0]
        stored = pydicom.dcmread(io.BytesIO(rt.archive.read_instance(row)))
        assert stored.PixelData == ds.PixelData and stored.PatientName == ds.PatientName
    out = dcmtk("findscu", "-v", "-S", "-aec", AET, "-k", "QueryRetrieveLevel=STUDY",
                "-k", "StudyInstanceUID", "127.0.0.1", str(rt.listener_port))
    text = (out.stdout or "") + (out.stderr or "")
    pending = sum(1 for line in text.splitlines() if "Find Response" in line and "Pending" in line)
    assert pending == rt.archive.count("study") >= 1


def test_malformed_pdata_pdu_aborts_that_association_only(runtime, scu):
    """A P-DATA-TF PDU whose PDV item claims more bytes than the PDU holds:
    the listener aborts that association (A-ABORT), stores nothing, and keeps
    serving others."""
    with scu(runtime.listener_port, [build_context(CTImageStorage, ExplicitVRLittleEndian)]) as assoc:
        cx = assoc.accepted_contexts[0].context_id
        bad = b"\x04\x00" + (6).to_bytes(4, "big") + (255).to_bytes(4, "big") + bytes([cx, 0x03])
        assoc.dul.socket.socket.sendall(bad)
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted
    assert runtime.archive.count("instance") == 0
    assert echo_address("127.0.0.1", runtime.listener_port, AET, calling_ae="TESTSCU", timeout=5) > 0


# --------------------------------------------------------------------------- access control
@pytest.mark.peers
def test_wrong_called_ae_rejected_when_required(runtime_factory, dcmtk):
    rt = runtime_factory(require_called_ae=True, http=False)
    out = dcmtk("echoscu", "-v", "-aec", "SOMEONE", "127.0.0.1", rt.listener_port, timeout=20)
    assert out.returncode != 0
    assert "Called AE Title Not Recognized" in out.stdout or "Called AE title not recognised" in out.stdout, out.stdout
    with pytest.raises(EchoError) as err:
        echo_address("127.0.0.1", rt.listener_port, "SOMEONE", calling_ae="TESTSCU", timeout=5)
    assert err.value.kind == "rejected" and "Called AE title not recognised" in str(err.value)
    assert echo_address("127.0.0.1", rt.listener_port, AET, calling_ae="TESTSCU", timeout=5) > 0


def test_wrong_called_ae_accepted_by_default(runtime):
    assert echo_address("127.0.0.1", runtime.listener_port, "ANY-SCP", calling_ae="X", timeout=5) > 0


def test_only_known_nodes_and_their_hosts(runtime_factory):
    rt = runtime_factory(accept_only_known_nodes=True, check_node_host=True, http=False)
    port = rt.listener_port
    with pytest.raises(EchoError) as err:
        echo_address("127.0.0.1", port, AET, calling_ae="STRANGER", timeout=5)
    assert "Calling AE title not recognised" in str(err.value)
    rt.nodes.add(Node(name="far", ae_title="FARAWAY", host="10.254.254.254", port=104))
    with pytest.raises(EchoError) as err:
        echo_address("127.0.0.1", port, AET, calling_ae="FARAWAY", timeout=5)
    assert err.value.kind == "rejected"
    rt.nodes.add(Node(name="local", ae_title="LOCALWS", host="localhost", port=104))
    assert echo_address("127.0.0.1", port, AET, calling_ae="LOCALWS", timeout=5) > 0
    # The health check counts an access-control answer as a listener that answers.
    assert rt.health(3).checks["listener"][0]


def test_association_limit_rejects_transiently(runtime_factory, scu):
    rt = runtime_factory(max_associations=2, http=False)
    with scu(rt.listener_port, [Verification]), \
            scu(rt.listener_port, [Verification]):
        with pytest.raises(EchoError) as err:
            echo_address("127.0.0.1", rt.listener_port, AET, calling_ae="THIRD", timeout=5)
        assert "temporarily" in str(err.value) and "Local limit exceeded" in str(err.value)
    time.sleep(0.3)
    assert echo_address("127.0.0.1", rt.listener_port, AET, calling_ae="THIRD", timeout=5) > 0


def test_tcp_nodelay_on_accepted_and_outgoing_sockets(runtime, scu):
    with scu(runtime.listener_port, [Verification]) as assoc:
        assert has_nodelay(association_socket(assoc))  # our outgoing socket
        deadline = time.monotonic() + 5
        while not runtime.listener.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        (server_side,) = runtime.listener.active_associations
        assert has_nodelay(association_socket(server_side))  # the accepted socket
    # Without our handler pynetdicom leaves Nagle on (so the check means something).
    ae = AE(ae_title="PLAIN")
    ae.add_requested_context(Verification)
    plain = ae.associate("127.0.0.1", runtime.listener_port, ae_title=AET)
    try:
        assert plain.is_established and not has_nodelay(association_socket(plain))
    finally:
        plain.release()
        ae.shutdown()


def _files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_stores_are_written_as_they_arrive_and_leave_nothing_behind(runtime, scu):
    """A C-STORE's data set is written to its file while it arrives (the
    archive commits that file; nothing is written a second time) and hashed
    as it arrives (each row's checksum is its file's XXH3-128, over PDUs of
    16 KB here); a refused request, a duplicate and a stored instance leave
    no temporary file."""
    store = runtime.archive.store
    writes_after_receive: list[str] = []
    original_put = store.put
    store.put = lambda key, data, **kw: (writes_after_receive.append(key),
                                         original_put(key, data, **kw))[1]
    first, second = _ct(2, rows=128, columns=128, patient_id="ASRECEIVED")
    with scu(runtime.listener_port, [build_context(CTImageStorage)], max_pdu=16382) as assoc:
        assert assoc.send_c_store(first).Status == st.SUCCESS
        assert assoc.send_c_store(first).Status == st.SUCCESS  # duplicate: kept
        other = _ct(1, patient_id="MISMATCH")[0]
        rsp = _send_raw_c_store(assoc, encode(other, False, True), CTImageStorage,
                                generate_uid(), 5)  # the command names another instance
        assert rsp.Status == st.DATASET_DOES_NOT_MATCH_SOP_CLASS
        assert assoc.send_c_store(second).Status == st.SUCCESS
    assert writes_after_receive == []
    files = _files_under(runtime.settings.store_dir)
    assert [p.suffix for p in files] == [".dcm", ".dcm"]
    for ds in (first, second):
        row = runtime.archive.find("image", {"SOPInstanceUID": ds.SOPInstanceUID})[0]
        on_disk = runtime.archive.read_instance(row)
        assert pydicom.dcmread(io.BytesIO(on_disk)).PixelData == ds.PixelData
        assert row["_checksum"] == xxhash.xxh3_128_hexdigest(on_disk)
        assert row["_file_size"] == len(on_disk) > 16382
    assert runtime.archive.check().clean


def test_stores_of_our_own_c_move_are_answered_at_once_and_stored_behind(runtime, scu):
    """The PACS's C-STOREs for a C-MOVE we sent (calling AE the PACS, move
    originator us, our request's message ID) are answered at once and
    stored in the background: each is tracked for its retrieve and in the
    archive once those are settled.  One whose data set does not match its
    command is refused as any other store; one for another C-MOVE (another
    message ID) is stored the usual way, durable before its answer."""
    from osirix_py.net.moves import ACTIVE_MOVES

    first, second, later = _ct(3, rows=64, columns=64, patient_id="EARLYACK")
    stray = _ct(1, rows=64, columns=64, patient_id="EARLYMISMATCH")[0]
    with ACTIVE_MOVES.expecting("PACS", AET, 7) as exp:
        with scu(runtime.listener_port, [build_context(CTImageStorage)], calling="PACS") as assoc:
            statuses = [assoc.send_c_store(ds, originator_aet=AET, originator_id=7).Status
                        for ds in (first, second)]
            refused = _send_raw_c_store(assoc, encode(stray, False, True), CTImageStorage,
                                        generate_uid(), 9, originator=(AET, 7))
            usual = assoc.send_c_store(later, originator_aet=AET, originator_id=8).Status
            stored_at_answer = runtime.archive.count(
                "image", {"SOPInstanceUID": later.SOPInstanceUID})
        tracked = list(exp.pending)
    assert statuses == [st.SUCCESS, st.SUCCESS] and usual == st.SUCCESS
    assert refused.Status == st.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert stored_at_answer == 1  # (the usual way: durable before its answer)
    assert [sop for sop, _ in tracked] == [first.SOPInstanceUID, second.SOPInstanceUID]
    for _, fut in tracked:
        assert fut.result(10).result(10).status == "stored"
    runtime.archive.writer.flush().result(10)
    stored = {r["SOPInstanceUID"] for r in runtime.archive.find("instance")}
    assert stored == {first.SOPInstanceUID, second.SOPInstanceUID, later.SOPInstanceUID}
    for ds in (first, second):
        row = runtime.archive.find("image", {"SOPInstanceUID": ds.SOPInstanceUID})[0]
        assert pydicom.dcmread(io.BytesIO(runtime.archive.read_instance(row))).PixelData \
            == ds.PixelData
    assert runtime.archive.check().clean


def test_an_unreadable_store_of_our_own_c_move_fails_in_its_retrieve(runtime, scu):
    """A sub-operation of our own C-MOVE is answered once its command is
    checked against the start of its data set; its data set is read on the
    writing thread.  One that cannot be read there (a corrupt element after
    its UIDs) is acknowledged, not stored, and its retrieve learns why; the
    next one is stored."""
    from osirix_py.net.moves import ACTIVE_MOVES

    bad, good = _ct(2, rows=64, columns=64, patient_id="EARLYBAD")
    data = encode(bad, False, True)
    name = data.index(b"\x10\x00\x10\x00PN")  # (0010,0010): a length past the end
    corrupt = data[:name + 6] + b"\xff\xff" + data[name + 8:]
    with ACTIVE_MOVES.expecting("PACS", AET, 11) as exp:
        with scu(runtime.listener_port, [build_context(CTImageStorage)], calling="PACS") as assoc:
            answered = _send_raw_c_store(assoc, corrupt, CTImageStorage, bad.SOPInstanceUID, 3,
                                         originator=(AET, 11))
            stored = assoc.send_c_store(good, originator_aet=AET, originator_id=11).Status
        tracked = dict(exp.pending)
    assert answered.Status == st.SUCCESS and stored == st.SUCCESS
    with pytest.raises(DicomFileError, match="^data set: missing required attribute"):
        tracked[bad.SOPInstanceUID].result(10)
    assert tracked[good.SOPInstanceUID].result(10).result(10).status == "stored"
    runtime.archive.writer.flush().result(10)
    assert {r["SOPInstanceUID"] for r in runtime.archive.find("instance")} == {good.SOPInstanceUID}
    assert [p.suffix for p in _files_under(runtime.settings.store_dir)] == [".dcm"]


def test_disk_full_while_receiving_answers_a700_and_keeps_nothing(runtime, scu, monkeypatch):
    """The file of an arriving data set cannot be written (ENOSPC, from
    /dev/full) and the disk is still full when the bytes are stored the usual
    way: 0xA700, no file and no row for it; the others are stored."""
    from osirix_py.storage.base import StorageFullError, key_for_uid
    from osirix_py.storage.filestore import IncomingFile

    series = _ct(3, rows=128, columns=128, patient_id="FULLRX")
    full = key_for_uid(series[1].SOPInstanceUID)
    store = runtime.archive.store
    original_put, original_open = store.put, store.open_staged
    opened = []

    def open_staged(key):
        if key == full:
            opened.append(key)
            return IncomingFile(store, key + ".x.tmp", "/nonexistent/x.tmp",
                                os.open("/dev/full", os.O_WRONLY))
        return original_open(key)

    def put(key, data, **kw):
        if key == full:
            raise StorageFullError(28, "No space left on device")
        return original_put(key, data, **kw)

    monkeypatch.setattr(store, "open_staged", open_staged)
    monkeypatch.setattr(store, "put", put)
    with scu(runtime.listener_port, [build_context(CTImageStorage)]) as assoc:
        statuses = [assoc.send_c_store(ds).Status for ds in series]
    assert opened == [full]
    assert statuses == [st.SUCCESS, st.OUT_OF_RESOURCES_STORE, st.SUCCESS]
    stored = {r["SOPInstanceUID"] for r in runtime.archive.find("instance")}
    assert stored == {series[0].SOPInstanceUID, series[2].SOPInstanceUID}
    assert [p.suffix for p in _files_under(runtime.settings.store_dir)] == [".dcm", ".dcm"]
