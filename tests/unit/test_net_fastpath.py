"""The network fast paths produce exactly what pynetdicom's general path would."""

from __future__ import annotations

import io
import struct
import threading
import time

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_FIND_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dsutils import decode, encode

from osirix_py.dicom import synthetic
from osirix_py.net import fastpath
from osirix_py.net.handlers import (
    IdentifierError,
    build_response,
    decode_identifier,
    parse_identifier,
    response_elements,
    response_plan,
)
from osirix_py.storage.filestore import IOV_MAX

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _pynetdicom_command(msg_cls, primitive) -> bytes:
    msg = msg_cls()
    msg.primitive_to_message(primitive)
    return encode(msg.command_set, True, True)


@pytest.mark.parametrize("comment", [None, "out of resources: disk full", "odd"])
@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xB000])
def test_store_rsp_command_matches_pynetdicom(status, comment):
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 12345
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.123"
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    assert fastpath.store_rsp_command(rsp) == _pynetdicom_command(C_STORE_RSP, rsp)


@pytest.mark.parametrize("inst", ["1.2.826.0.1.3680043.8.498.123", "1.2.826.0.1.3680043.8.498.1234"])
@pytest.mark.parametrize("status,msg_id", [(0x0000, 1), (0xA900, 65535), (0xC000, 300)])
def test_store_rsp_pdu_is_the_pdu_pynetdicom_sends(status, msg_id, inst):
    from pynetdicom.pdu import P_DATA_TF

    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = inst
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    expected = b"".join(P_DATA_TF(p).encode() for p in msg.encode_msg(7, 0))
    assert fastpath.store_rsp_pdu(7, msg_id, CT, inst, status) == expected
    # What cannot be encoded here is left to that general path.
    assert fastpath.store_rsp_pdu(7, None, CT, inst, status) is None
    assert fastpath.store_rsp_pdu(7, msg_id, CT, inst, 0x10000) is None
    assert fastpath.store_rsp_pdu(7, msg_id, CT, "1.2.\u00e9", status) is None


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])
@pytest.mark.parametrize("inst", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.99887766554433221"])
def test_part10_head_is_preamble_dicm_and_the_file_meta(ts, inst):
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    req = C_STORE()
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = inst
    meta = encode_file_meta(create_file_meta(sop_class_uid=CT, sop_instance_uid=inst,
                                             transfer_syntax=ts))
    assert fastpath.part10_head(req, ts) == b"\x00" * 128 + b"DICM" + meta
    twin = C_STORE()  # (the constant parts come from a cache the second time)
    twin.AffectedSOPClassUID = CT
    twin.AffectedSOPInstanceUID = inst
    assert fastpath.part10_head(twin, ts) == b"\x00" * 128 + b"DICM" + meta


def test_find_rsp_command_matches_pynetdicom():
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = STUDY_FIND
    rsp.Status = 0xFF00
    rsp.Identifier = io.BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    expected = _pynetdicom_command(C_FIND_RSP, rsp)
    ours = fastpath.command_set([
        (0x00000002, "UI", STUDY_FIND), (0x00000100, "US", 0x8020), (0x00000120, "US", 7),
        (0x00000800, "US", 0x0001), (0x00000900, "US", 0xFF00)])
    # (0000,0800) Command Data Set Type: any value but 0x0101 means "present"
    assert len(ours) == len(expected)
    assert ours[:-10] == expected[:-10]


def _identifier(**extra) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for kw in ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
               "StudyDescription", "StudyInstanceUID", "ModalitiesInStudy",
               "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "PatientBirthDate",
               "ReferencedStudySequence"):
        setattr(ds, kw, [] if kw.endswith("Sequence") else "")
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


ROWS = [
    {"PatientName": "DOE^JOHN", "PatientID": "P1", "StudyDate": "20240102", "StudyTime": "101010",
     "AccessionNumber": "A1", "StudyDescription": "CT HEAD", "StudyInstanceUID": "1.2.3.4",
     "ModalitiesInStudy": "CT\\MR", "NumberOfStudyRelatedInstances": 100,
     "NumberOfStudyRelatedSeries": 2, "PatientBirthDate": None, "_character_set": None},
    {"PatientName": "Müller^Jürgen", "PatientID": "P2", "StudyDate": "", "StudyTime": None,
     "AccessionNumber": None, "StudyDescription": "odd", "StudyInstanceUID": "1.2.3.45",
     "ModalitiesInStudy": "CT", "NumberOfStudyRelatedInstances": 1,
     "NumberOfStudyRelatedSeries": 1, "PatientBirthDate": "19700101",
     "_character_set": "ISO_IR 100"},
    {"PatientName": "山田^太郎", "PatientID": "P3", "StudyDate": "20240102",
     "StudyTime": "1010", "AccessionNumber": "", "StudyDescription": "",
     "StudyInstanceUID": "1.2.3", "ModalitiesInStudy": "", "NumberOfStudyRelatedInstances": 0,
     "NumberOfStudyRelatedSeries": 0, "PatientBirthDate": None, "_character_set": None},
]


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("row", ROWS, ids=["ascii", "latin1", "utf8"])
def test_find_identifier_bytes_match_pydicom(row, implicit):
    parsed = parse_identifier(_identifier(), STUDY_FIND, retrieve=False)
    plan = response_plan(parsed)
    expected = encode(build_response(parsed, row, "OSIRIXPY", plan), implicit, True)
    elements, charset = response_elements(parsed, row, "OSIRIXPY", plan)
    assert fastpath.encode_elements(elements, charset, implicit) == expected


def test_find_identifier_refuses_what_it_cannot_encode():
    with pytest.raises(fastpath.EncodeError):
        fastpath.encode_elements([(0x00081110, "SQ", [Dataset()])], None, True)
    with pytest.raises(fastpath.EncodeError):
        fastpath.encode_elements([(0x00280010, "US or SS", 1)], None, False)
    with pytest.raises(fastpath.EncodeError):
        fastpath.encode_elements([(0x00100010, "PN", "é")], None, True)  # no charset: ASCII only


PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def _ident(level="STUDY", charset=None, **keys) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


_ALL_EMPTY = dict(PatientName="", PatientID="", StudyDate="", StudyTime="", AccessionNumber="",
                  StudyDescription="", StudyInstanceUID="", ModalitiesInStudy="",
                  NumberOfStudyRelatedInstances="", RetrieveAETitle="", InstanceAvailability="")

#: (identifier, SOP class, retrieve): each decoded both ways must parse alike.
IDENTIFIERS = [
    (_ident(**_ALL_EMPTY), STUDY_FIND, False),
    (_ident(**{**_ALL_EMPTY, "PatientID": "PAT-0042"}), STUDY_FIND, False),
    (_ident(**{**_ALL_EMPTY, "PatientName": "DOE^J*", "StudyDate": "20240101-20240131"}), STUDY_FIND, False),
    (_ident(**{**_ALL_EMPTY, "PatientName": "  spaced^name ", "AccessionNumber": "A?1"}), STUDY_FIND, False),
    (_ident(charset="ISO_IR 100", PatientName="DOE^JOHN", PatientID=""), STUDY_FIND, False),
    (_ident(level="SERIES", StudyInstanceUID="1.2.3", SeriesInstanceUID="", Modality="CT",
            SeriesDescription=""), STUDY_FIND, False),
    (_ident(level="SERIES", StudyInstanceUID="1.2.3*", SeriesInstanceUID=""), STUDY_FIND, False),
    (_ident(level="PATIENT", PatientID="X", PatientName=""), PATIENT_FIND, False),
    (_ident(level="STUDY", PatientID="X"), PATIENT_FIND, False),
    (_ident(level="IMAGE", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4",
            SOPInstanceUID=""), STUDY_FIND, False),
    (_ident(level="study", StudyInstanceUID="1.2.3"), STUDY_MOVE, True),
    (_ident(level="STUDY", StudyInstanceUID=""), STUDY_MOVE, True),
    (_ident(level="FRAME", StudyInstanceUID="1.2.3"), STUDY_FIND, False),
    (_ident(PatientID="X"), "1.2.3.4", False),
    (_ident(level="STUDY", StudyInstanceUID="1.2.3", ScheduledStationAETitle="AE1"), STUDY_FIND, False),
    (_ident(level="", PatientID=""), STUDY_FIND, False),
]


def _parse_either(ident, sop, retrieve):
    try:
        p = parse_identifier(ident, sop, retrieve=retrieve)
    except IdentifierError as exc:
        return ("error", exc.status, exc.comment)
    return (p.root, p.level, p.query, p.unsupported,
            [(int(k.tag), k.VR) for k in p.requested], response_plan(p))


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("case", range(len(IDENTIFIERS)))
def test_identifier_decoded_without_pydicom_parses_as_with_it(case, implicit):
    ds, sop, retrieve = IDENTIFIERS[case]
    raw = encode(ds, implicit, True)
    fast = decode_identifier(raw, implicit)
    assert fast is not None
    slow = decode(io.BytesIO(raw), implicit, True)
    assert _parse_either(fast, sop, retrieve) == _parse_either(slow, sop, retrieve)


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("ds", [
    _ident(charset="ISO_IR 100", PatientName="Müller^Jürgen"),  # non-ASCII: charset decides
    _ident(charset=["", "ISO 2022 IR 87"], PatientName="ヤマダ^タロウ"),  # escape sequences
    _ident(StudyInstanceUID=["1.2.3", "1.2.4"]),  # UID list
    _ident(ReferencedStudySequence=[Dataset()]),  # sequence
    _ident(NumberOfStudyRelatedInstances="12"),  # IS with a value
    _ident(PatientWeight="70.5"),  # DS with a value
], ids=["latin1", "iso2022", "uid-list", "sequence", "is", "ds"])
def test_identifier_decoder_leaves_the_unusual_to_pydicom(ds, implicit):
    assert decode_identifier(encode(ds, implicit, True), implicit) is None


def test_identifier_decoder_refuses_truncated_and_private_elements():
    raw = encode(_ident(PatientID="ABC"), False, True)
    assert decode_identifier(raw, False) is not None
    # An ISO 2022 escape is ASCII, but switches the character set.
    assert decode_identifier(raw[:-3] + b"\x1b(BA", False) is None
    assert decode_identifier(raw[:-2], False) is None
    assert decode_identifier(raw + b"\x09\x00\x10\x00LO\x02\x00ab", False) is None


@pytest.mark.parametrize("max_pdu", [0, 16384, 4096, 106, 40_006, 40_007])
@pytest.mark.parametrize("with_dataset", [True, False])
def test_message_bytes_equal_pynetdicoms_pdus(max_pdu, with_dataset):
    """The raw P-DATA-TF bytes of a message are exactly the PDUs pynetdicom
    would send for it (one PDV per PDU, same fragments, same headers),
    including fragment sizes that divide the data set exactly."""
    from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    prim = C_STORE()
    prim.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    prim.AffectedSOPInstanceUID = "1.2.3.4"
    data = bytes(range(256)) * (40_000 // 256) + b"tail"
    if with_dataset:  # a request with its data set
        prim.MessageID = 7
        prim.Priority = 2
        prim.DataSet = io.BytesIO(data)
        msg, cmd = C_STORE_RQ(), fastpath.store_rq_command(prim)
    else:  # a response: command set only
        prim.MessageIDBeingRespondedTo = 7
        prim.Status = 0
        msg, cmd = C_STORE_RSP(), fastpath.store_rsp_command(prim)
    msg.primitive_to_message(prim)
    expected = b"".join(P_DATA_TF(p).encode() for p in msg.encode_msg(5, max_pdu))
    got = fastpath.message_bytes(5, cmd, data if with_dataset else None, max_pdu)
    assert got == expected
    # Every PDU within the peer's maximum (the variable field: PDV items).
    pos, n = 0, 0
    while pos < len(got):
        (length,) = struct.unpack_from(">I", got, pos + 2)
        assert got[pos] == 0x04 and (max_pdu == 0 or length <= max_pdu)
        pos += 6 + length
        n += 1
    assert pos == len(got) and n >= 1


def test_gathered_send_writes_every_pdu_in_order_through_partial_sends():
    """A message's PDUs go out with ``sendmsg`` from their pieces: a peer
    that reads slowly (partial sends) and more pieces than one call may
    take still get the exact bytes of :func:`message_bytes`; a peer gone
    puts "transport closed" (Evt17) on the DUL's queue, as pynetdicom's
    ``send`` does."""
    import queue
    import socket
    import ssl

    data = bytes(range(256)) * 4096  # 1 MB: 1,030 PDUs of 1 KB, 2,060 pieces
    parts = fastpath.message_parts(3, b"c" * 40, data, 1024)
    assert len(parts) > 2 * IOV_MAX  # (more than two calls may take)
    expected = fastpath.message_bytes(3, b"c" * 40, data, 1024)

    class Transport:  # what the function uses of pynetdicom's AssociationSocket
        def __init__(self, sock):
            self.socket, self.event_queue = sock, queue.Queue()

        class assoc:  # noqa: N801
            @staticmethod
            def get_handlers(event):
                return []

    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.settimeout(10)
    got = bytearray()

    def read():
        while len(got) < len(expected):
            chunk = b.recv(3000)
            if not chunk:
                return
            got.extend(chunk)
            time.sleep(0.0005)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        transport = Transport(a)
        assert fastpath._send_gathered(transport, parts)
        reader.join(20)
        assert bytes(got) == expected
        assert transport.event_queue.empty()
        b.close()
        time.sleep(0.05)
        assert fastpath._send_gathered(transport, fastpath.message_parts(3, b"c" * 40, data, 1024))
        assert transport.event_queue.get_nowait() == "Evt17"
    finally:
        a.close()
        b.close()
    # A TLS socket has no sendmsg: declined, nothing sent, the caller joins.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    with context.wrap_socket(socket.socket(), do_handshake_on_connect=False) as tls:
        transport = Transport(tls)
        assert not fastpath._send_gathered(transport, parts)
        assert transport.event_queue.empty()


def test_raw_pdata_goes_out_as_one_pdu_object_with_the_prebuilt_bytes():
    import pynetdicom.fsm as fsm
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    prim = fastpath.raw_pdata(1, b"\x00" * 8, b"d" * 100, 64)
    assert isinstance(prim, P_DATA)
    pdu = fsm.P_DATA_TF(prim)  # what the state machine's DT-1 builds
    assert type(pdu) is P_DATA_TF
    assert pdu.encode() == fastpath.message_bytes(1, b"\x00" * 8, b"d" * 100, 64)
    # Ordinary primitives still build ordinary PDUs.
    plain = P_DATA()
    plain.presentation_data_value_list.append((1, b"\x03abcd"))
    assert fsm.P_DATA_TF(plain).encode() == P_DATA_TF(plain).encode()


def test_stored_instance_sends_the_stored_bytes(tmp_path):
    ds = synthetic.make_ct_series(slices=1, rows=64, columns=64)[0]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    inst = fastpath.StoredInstance.from_file(data)
    assert inst.SOPInstanceUID == ds.SOPInstanceUID
    ts = pydicom.uid.UID(str(ds.file_meta.TransferSyntaxUID))
    raw = inst.encoded_for(ts.is_implicit_VR, ts.is_little_endian, False)
    assert raw is not None and data.endswith(raw)
    assert inst.as_stored() == raw  # (what a sender sends in the stored syntax)
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == inst.SOPInstanceUID
    # The other little endian encoding: parsed and re-encoded by pydicom.
    assert inst.encoded_for(not ts.is_implicit_VR, True, False) is None
    fastpath.install_encode_hook()
    import pynetdicom.association as pa

    other = pa.encode(inst, not ts.is_implicit_VR, True, False)
    back = pydicom.filereader.read_dataset(io.BytesIO(other), not ts.is_implicit_VR, True)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData


def test_split_part10_rejects_what_is_not_part10():
    with pytest.raises(ValueError):
        fastpath.split_part10(b"\0" * 200)


@pytest.mark.parametrize("originator", [None, "OSIRIXPY", "ODD"])
def test_store_rq_command_matches_pynetdicom(originator):
    from pynetdicom.dimse_messages import C_STORE_RQ

    rq = C_STORE()
    rq.MessageID = 65535
    rq.AffectedSOPClassUID = CT
    rq.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345"
    rq.Priority = 2
    if originator:
        rq.MoveOriginatorApplicationEntityTitle = originator
        rq.MoveOriginatorMessageID = 9
    rq.DataSet = io.BytesIO(b"\0\0")
    assert fastpath.store_rq_command(rq) == _pynetdicom_command(C_STORE_RQ, rq)


@pytest.mark.parametrize("originator", [None, ("MOVER", 9), ("OSIRIXPY", 65535)])
@pytest.mark.parametrize("inst,msg_id,priority", [("1.2.826.0.1.3680043.8.498.1", 1, 2),
                                                  ("1.2.826.0.1.3680043.8.498.12", 65535, 0)])
def test_store_rq_bytes_are_what_pynetdicom_encodes_for_those_values(inst, msg_id, priority,
                                                                     originator):
    from pynetdicom.dimse_messages import C_STORE_RQ

    rq = C_STORE()
    rq.MessageID = msg_id
    rq.Priority = priority
    rq.AffectedSOPClassUID = CT
    rq.AffectedSOPInstanceUID = inst
    if originator:
        rq.MoveOriginatorApplicationEntityTitle, rq.MoveOriginatorMessageID = originator
    rq.DataSet = io.BytesIO(b"\0\0")
    aet, aet_id = originator or (None, None)
    assert fastpath.store_rq_bytes(msg_id, CT, inst, priority, aet, aet_id) \
        == _pynetdicom_command(C_STORE_RQ, rq)
    # What the primitive must check is left to it.
    assert fastpath.store_rq_bytes(65536, CT, inst, priority) is None
    assert fastpath.store_rq_bytes(msg_id, CT, inst, 3) is None
    assert fastpath.store_rq_bytes(msg_id, CT, inst, priority, "A" * 17, 1) is None
    assert fastpath.store_rq_bytes(msg_id, CT, "1.2.\u00e9", priority) is None


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])
@pytest.mark.parametrize("inst", ["1.2.3", "1.2.34"])
def test_file_meta_bytes_match_pynetdicom(ts, inst):
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    expected = encode_file_meta(create_file_meta(sop_class_uid=CT, sop_instance_uid=inst,
                                                 transfer_syntax=ts))
    assert fastpath.file_meta_bytes(CT, inst, ts) == expected


@pytest.mark.parametrize("status,comment", [(0x0000, None), (0xA900, "bad level"), (0xFE00, None)])
def test_final_find_rsp_command_matches_pynetdicom(status, comment):
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 77
    rsp.AffectedSOPClassUID = STUDY_FIND
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    assert fastpath.find_rsp_command(rsp) == _pynetdicom_command(C_FIND_RSP, rsp)


@pytest.mark.parametrize("kind", ["move", "get"])
def test_pending_retrieve_rsp_command_matches_pynetdicom(kind):
    from pynetdicom.dimse_messages import C_GET_RSP, C_MOVE_RSP
    from pynetdicom.dimse_primitives import C_GET, C_MOVE

    prim, msg, field = (C_MOVE, C_MOVE_RSP, 0x8021) if kind == "move" else (C_GET, C_GET_RSP, 0x8010)
    rsp = prim()
    rsp.MessageIDBeingRespondedTo = 4
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    rsp.Status = 0xFF00
    rsp.NumberOfRemainingSuboperations = 99
    rsp.NumberOfCompletedSuboperations = 1
    rsp.NumberOfFailedSuboperations = 0
    rsp.NumberOfWarningSuboperations = 0
    assert fastpath.retrieve_pending_command(rsp, field) == _pynetdicom_command(msg, rsp)
    rsp.Status = 0x0000  # final responses: pynetdicom's path (and the listener's overrides)
    assert fastpath.retrieve_pending_command(rsp, field) is None


def test_reactor_sleep_returns_for_work_and_waits_for_a_wake_up(monkeypatch):
    import queue
    import threading
    import time

    import pynetdicom.association as pa

    class _Dul:
        def __init__(self):
            self.to_user_queue = queue.Queue()

        def is_alive(self):
            return True

    class _Dimse:
        def __init__(self):
            self.msg_queue = queue.Queue()

    class _Assoc:
        _kill = False

        def __init__(self):
            self.dimse, self.dul = _Dimse(), _Dul()

    # A long idle wait: only a wake-up ends the sleeps below in time.
    monkeypatch.setattr(fastpath, "REACTOR_IDLE_WAIT", 30.0)
    assoc = _Assoc()
    msg_queue, to_user = assoc.dimse.msg_queue, assoc.dul.to_user_queue
    msg_queue.put((1, "early"))
    slept: dict[str, float] = {}

    def reactor():
        assert fastpath.install_reactor_wakeup(assoc)

        def sleep(what):
            t0 = time.perf_counter()
            pa.time.sleep(0.001)
            slept[what] = time.perf_counter() - t0

        sleep("message pending")
        assert msg_queue.get_nowait() == (1, "early")  # kept, not consumed
        sleep("woken by a message")
        msg_queue.get_nowait()
        sleep("woken by an indication")
        to_user.get_nowait()
        assoc._kill = True
        sleep("killed")
        fastpath.remove_reactor_wakeup(assoc)

    def feeder():
        time.sleep(0.2)
        msg_queue.put((1, "later"))
        time.sleep(0.2)
        to_user.put("A-RELEASE")

    threads = [threading.Thread(target=reactor), threading.Thread(target=feeder)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    # The queues are the same objects (a thread about to put keeps its queue).
    assert assoc.dimse.msg_queue is msg_queue and assoc.dul.to_user_queue is to_user
    assert slept["message pending"] < 1 and slept["killed"] < 1
    assert 0.1 < slept["woken by a message"] < 10
    assert 0.1 < slept["woken by an indication"] < 10
    assert pa.time.monotonic() > 0  # everything else is the real time module


def test_received_pdv_items_are_split_and_malformed_ones_refused():
    good = fastpath.message_bytes(3, b"c" * 10, b"d" * 50, 0)
    # Two PDUs (command, data): each body parses into its one PDV item.
    first_len = struct.unpack_from(">I", good, 2)[0]
    body1 = bytearray(good[6:6 + first_len])
    body2 = bytearray(good[12 + first_len:])
    (cx, item), = fastpath._parse_pdvs(body1)
    assert cx == 3 and bytes(item) == b"\x03" + b"c" * 10
    (cx, item), = fastpath._parse_pdvs(body2)
    assert cx == 3 and bytes(item) == b"\x02" + b"d" * 50
    # Two items in one PDU body.
    assert len(fastpath._parse_pdvs(body1 + body2)) == 2
    # Truncated, zero-length, length past the end, empty: refused.
    assert fastpath._parse_pdvs(body1[:-1]) is None
    assert fastpath._parse_pdvs(bytearray(b"\x00\x00\x00\x00\x03\x03")) is None
    assert fastpath._parse_pdvs(bytearray(b"\x00\x00\x00\xff\x03\x03")) is None
    assert fastpath._parse_pdvs(bytearray()) is None


def test_waiting_socket_reads_whole_pdus_and_stops_at_close():
    import socket

    from pynetdicom.transport import AssociationSocket

    from osirix_py.net import tcp

    cls = tcp._make_waiting_socket_class(AssociationSocket)
    a, b = socket.socketpair()
    try:
        wrapper = object.__new__(cls)
        wrapper.socket = a
        payload = bytes(range(256)) * 4096  # 1 MiB: many recv_into calls
        import threading

        t = threading.Thread(target=b.sendall, args=(payload + b"tail",))
        t.start()
        assert wrapper.recv(len(payload)) == payload
        t.join()
        b.close()
        got = wrapper.recv(100)  # peer closed after 4 bytes
        assert isinstance(got, bytearray) and got == b"tail"
    finally:
        a.close()


def _pynetdicom_decoded(cmd: bytes, data: bytes | None = None):
    """What pynetdicom's own receive path makes of a command set (+ data set)."""
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.pdu_primitives import P_DATA

    msg = DIMSEMessage()
    p = P_DATA()
    p.presentation_data_value_list.append((5, b"\x03" + cmd))
    if data is not None:
        p.presentation_data_value_list.append((5, b"\x02" + data))
    assert msg.decode_msg(p, None)
    return msg.message_to_primitive()


_PRIMITIVE_FIELDS = ("MessageID", "MessageIDBeingRespondedTo", "AffectedSOPClassUID",
                     "AffectedSOPInstanceUID", "Priority", "Status", "ErrorComment", "ErrorID",
                     "MoveDestination", "MoveOriginatorApplicationEntityTitle",
                     "MoveOriginatorMessageID", "NumberOfRemainingSuboperations",
                     "NumberOfCompletedSuboperations", "NumberOfFailedSuboperations",
                     "NumberOfWarningSuboperations")


def _commands():
    from pynetdicom.dimse_messages import (C_ECHO_RQ, C_FIND_RSP, C_GET_RSP, C_MOVE_RQ,
                                           C_MOVE_RSP, C_STORE_RQ, C_STORE_RSP)
    from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE

    def store_rq(**kw):
        p = C_STORE()
        p.MessageID, p.Priority = 7, 2
        p.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        p.AffectedSOPInstanceUID = "1.2.3.4.5"
        for k, v in kw.items():
            setattr(p, k, v)
        p.DataSet = io.BytesIO(b"x")
        return C_STORE_RQ, p, True

    def rsp(cls, msg, status=0x0000, **kw):
        p = cls()
        p.MessageIDBeingRespondedTo, p.Status = 9, status
        for k, v in kw.items():
            setattr(p, k, v)
        return msg, p, False

    move_rq = C_MOVE()
    move_rq.MessageID, move_rq.Priority = 3, 0
    move_rq.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    move_rq.MoveDestination = "STORESCP"
    move_rq.Identifier = io.BytesIO(b"q")
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return [
        store_rq(),
        store_rq(MoveOriginatorApplicationEntityTitle="OSIRIXPY", MoveOriginatorMessageID=12),
        store_rq(AffectedSOPInstanceUID="1.2.3.4.55"),  # odd length: padded with \0
        rsp(C_STORE, C_STORE_RSP, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            AffectedSOPInstanceUID="1.2.3"),
        rsp(C_STORE, C_STORE_RSP, 0xA700, ErrorComment="out of resources: disk full"),
        rsp(C_STORE, C_STORE_RSP, 0xC000, ErrorComment="odd"),
        rsp(C_FIND, C_FIND_RSP, 0xFF00, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1"),
        rsp(C_GET, C_GET_RSP, 0xFF00, NumberOfRemainingSuboperations=99,
            NumberOfCompletedSuboperations=1, NumberOfFailedSuboperations=0,
            NumberOfWarningSuboperations=0),
        rsp(C_MOVE, C_MOVE_RSP, 0xA801, ErrorComment="move destination 'X' unknown"),
        (C_MOVE_RQ, move_rq, True),
        (C_ECHO_RQ, echo, False),
    ]


@pytest.mark.parametrize("case", range(11))
def test_decode_command_gives_pynetdicoms_primitive(case):
    msg_cls, prim, has_data = _commands()[case]
    msg = msg_cls()
    msg.primitive_to_message(prim)
    from pynetdicom.dsutils import decode, encode

    cmd = encode(msg.command_set, True, True)
    expected = _pynetdicom_decoded(cmd, b"x" if has_data else None)
    got = fastpath.decode_command(cmd)
    assert got is not None
    got_prim, got_has_data, keyword = got
    assert type(got_prim) is type(expected) and got_has_data == has_data
    for field in _PRIMITIVE_FIELDS:
        if hasattr(expected, field):
            assert getattr(got_prim, field) == getattr(expected, field), field
            assert type(getattr(got_prim, field)) is type(getattr(expected, field)), field


def test_decode_command_leaves_the_unusual_to_pynetdicom():
    from pynetdicom.dimse_messages import C_CANCEL_RQ
    from pynetdicom.dimse_primitives import C_CANCEL
    from pynetdicom.dsutils import decode, encode

    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 3
    msg = C_CANCEL_RQ()
    msg.primitive_to_message(cancel)
    assert fastpath.decode_command(encode(msg.command_set, True, True)) is None
    # An element it does not know (OffendingElement, AT), a truncated set.
    assert fastpath.decode_command(struct.pack("<HHI", 0, 0x0901, 4) + b"\x10\x00\x10\x00") is None
    assert fastpath.decode_command(struct.pack("<HHI", 0, 0x0100, 2)) is None


def test_find_responses_go_out_in_batches_in_order():
    """Back-to-back C-FIND responses share DUL primitives (BATCH at most);
    the bytes on the wire are each response's PDUs, in order."""
    sent = []

    class _Dul:
        def send_pdu(self, prim):
            sent.append(prim._osx_raw)

    class _Dimse:
        maximum_pdu_size = 16384

    class _Assoc:
        dul = _Dul()
        dimse = _Dimse()

    r = fastpath.FindResponder(_Assoc(), 1, "1.2.840.10008.1.2", STUDY_FIND, 5, 0xFF00)
    r.BATCH_SECONDS = 60.0  # (the time limit has its own test: C-CANCEL of a slow find)
    idents = [fastpath.encode_elements([(0x00100020, "LO", f"ID{i:03d}")], None, True)
              for i in range(70)]
    for ident in idents:
        r.send(ident)
    r.flush()
    r.flush()  # nothing left: sends nothing
    assert len(sent) == 3  # 32 + 32 + the 6 left at the flush
    expected = b"".join(fastpath.message_bytes(1, r.command, i, 16384) for i in idents)
    assert b"".join(sent) == expected and r.sent == 70


def _store_rq_pdvs(cx: int, sop_instance: str, data: bytes) -> list:
    """The PDV items ((context id, control byte + fragment)) of a C-STORE-RQ."""
    cmd = fastpath.command_set([
        (0x00000002, "UI", "1.2.840.10008.5.1.4.1.1.2"),
        (0x00000100, "US", 0x0001),
        (0x00000110, "US", 7),
        (0x00000700, "US", 0),
        (0x00000800, "US", 0x0000),
        (0x00001000, "UI", sop_instance),
    ])
    return [(cx, b"\x03" + cmd), (cx, b"\x00" + data[:10]), (cx, b"\x02" + data[10:])]


def _decoded_response(raw: bytes):
    """(primitive, context ID) of one encoded DIMSE message without data set,
    decoded by pynetdicom."""
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    pdu = P_DATA_TF()
    pdu.decode(raw)
    prim = P_DATA()
    prim.presentation_data_value_list = [[item.presentation_context_id, item.presentation_data_value]
                                         for item in pdu.presentation_data_value_items]
    msg = C_STORE_RSP()
    assert msg.decode_msg(prim)
    return msg.message_to_primitive(), msg.context_id


def _receiving_assoc(served: list, sent: list | None = None):
    """A stand-in for an association that receives C-STORE requests on the
    fast path (context 3: explicit VR little endian): pynetdicom's C-STORE
    SCP code appends each request to *served*, responses go to *sent*."""
    import queue
    from types import SimpleNamespace

    class _Assoc:
        def get_handlers(self, event):
            return []

    class _Dimse:
        def __init__(self, assoc):
            self.assoc = assoc
            self.message = None
            self.msg_queue = queue.Queue()

        def send_msg(self, rsp, cx):
            (sent if sent is not None else []).append((rsp, cx))

    class _Dul:  # (no socket: what is sent is queued, as encoded PDUs)
        socket = None
        ident = None

        def send_pdu(self, primitive):
            (sent if sent is not None else []).append(_decoded_response(primitive._osx_raw))

    assoc = _Assoc()
    assoc.dimse = _Dimse(assoc)
    assoc.dul = _Dul()
    assoc._c_store_scp = served.append
    assoc._accepted_cx = {3: SimpleNamespace(transfer_syntax=["1.2.840.10008.1.2.1"])}
    return assoc


def test_inline_stores_are_served_on_arrival_unless_a_request_waits():
    import queue
    from types import SimpleNamespace

    from pynetdicom.dimse_primitives import C_GET

    served: list = []
    assoc = _receiving_assoc(served)
    data = bytes(range(40))
    # Without serve_stores_inline the request is queued for the waiting thread.
    fastpath.receive_pdvs(assoc, _store_rq_pdvs(1, "1.2.3.1", data))
    assert served == [] and assoc.dimse.msg_queue.qsize() == 1
    fastpath.serve_stores_inline(assoc)
    # A request still waits in the queue: this one queues behind it (the
    # peer's order is kept) ...
    fastpath.receive_pdvs(assoc, _store_rq_pdvs(1, "1.2.3.2", data))
    assert served == [] and assoc.dimse.msg_queue.qsize() == 2
    # ... but a response to our own request (a C-GET's pending status, read
    # by another thread) does not hold it back: it is served at once, with
    # its whole data set.
    pending = C_GET()
    pending.MessageIDBeingRespondedTo = 1
    assoc.dimse.msg_queue = queue.Queue()
    assoc.dimse.msg_queue.put((3, pending))
    fastpath.receive_pdvs(assoc, _store_rq_pdvs(3, "1.2.3.3", data))
    assert assoc.dimse.msg_queue.qsize() == 1 and len(served) == 1
    req = served[0]
    assert isinstance(req, C_STORE) and req.AffectedSOPInstanceUID == "1.2.3.3"
    assert req._context_id == 3
    # Its data set lives inside its Part 10 bytes, which the handler gets as
    # they are -- the same bytes pynetdicom's encoded_dataset() makes.
    event = SimpleNamespace(request=req, context=SimpleNamespace(transfer_syntax="1.2.840.10008.1.2.1"))
    part10 = fastpath.received_part10(event)
    assert part10 == fastpath.part10_head(req, "1.2.840.10008.1.2.1") + data
    assert part10[128:132] == b"DICM" and pydicom.dcmread(io.BytesIO(part10), force=True) \
        .file_meta.MediaStorageSOPInstanceUID == "1.2.3.3"
    # Another transfer syntax gets its own head; and read as a stream, the
    # data set is just the data set, from its first byte.
    other = SimpleNamespace(request=req, context=SimpleNamespace(transfer_syntax="1.2.840.10008.1.2"))
    assert fastpath.received_part10(other) == fastpath.part10_head(req, "1.2.840.10008.1.2") + data
    assert req.DataSet.getvalue() == data
    assert req.DataSet.read(5) == data[:5] and req.DataSet.tell() == 5
    assert req.DataSet.getvalue() == data
    # Once touched as a stream, the Part 10 bytes are made afresh (the stream
    # might have been written to).
    req.DataSet.seek(0, io.SEEK_END)
    req.DataSet.write(b"xx")
    assert fastpath.received_part10(event) == fastpath.part10_head(req, "1.2.840.10008.1.2.1") + data + b"xx"


def test_quick_store_answers_at_once_and_leaves_the_join_to_another_thread():
    """serve_stores_inline(quick_store=...): a status from quick_store is
    the response, with no call into pynetdicom's C-STORE SCP code; None
    leaves the request to that code.  The received fragments are joined
    into the Part 10 bytes only when someone asks for them, once, whichever
    thread that is (received_later says it can be another)."""
    ts = "1.2.840.10008.1.2.1"
    sent, served, quick_seen = [], [], []

    def quick(req):
        quick_seen.append(req)
        return None if req.AffectedSOPInstanceUID == "1.2.3.9" else 0x0000

    assoc = _receiving_assoc(served, sent)
    fastpath.serve_stores_inline(assoc, quick)
    data = bytes(range(40))
    fastpath.receive_pdvs(assoc, _store_rq_pdvs(3, "1.2.3.4", data))
    fastpath.receive_pdvs(assoc, _store_rq_pdvs(3, "1.2.3.9", data))
    assert [r.AffectedSOPInstanceUID for r in quick_seen] == ["1.2.3.4", "1.2.3.9"]
    assert [r.AffectedSOPInstanceUID for r in served] == ["1.2.3.9"]  # (left to pynetdicom)
    (rsp, cx), = sent
    assert (cx, rsp.Status, rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPInstanceUID) \
        == (3, 0x0000, 7, "1.2.3.4")
    req = quick_seen[0]
    stream = req.DataSet
    assert fastpath.received_later(req, ts) and not fastpath.received_later(req, "1.2.840.10008.1.2")
    assert stream._part10 is None  # not joined on the receiving thread
    got = []
    t = threading.Thread(target=lambda: got.append(fastpath.part10_of(req, ts)))
    t.start()
    t.join(5)
    assert got == [fastpath.part10_head(req, ts) + data]
    assert fastpath.part10_of(req, ts) is got[0]  # joined once
    assert stream.getvalue() == data
    assert stream.read(3) == data[:3]  # touched as a stream: no longer "as received"
    assert not fastpath.received_later(req, ts)


def test_quick_store_may_answer_before_handing_the_data_set_over():
    """AnswerFirst(status, then): the response goes out first, then *then*
    runs (on the same thread), which sees it sent."""
    sent, served, order = [], [], []

    def quick(req):
        return fastpath.AnswerFirst(0x0000, lambda: order.append(len(sent)))

    assoc = _receiving_assoc(served, sent)
    fastpath.serve_stores_inline(assoc, quick)
    fastpath.receive_pdvs(assoc, _store_rq_pdvs(3, "1.2.3.5", bytes(range(40))))
    assert served == [] and order == [1]
    (rsp, cx), = sent
    assert (cx, rsp.Status, rsp.AffectedSOPInstanceUID) == (3, 0x0000, "1.2.3.5")


def test_uid_cache_gives_what_set_uid_gives_and_still_refuses_bad_uids():
    import pynetdicom.pdu_items
    import pynetdicom.utils
    from pynetdicom import _config
    from pydicom.uid import UID

    fastpath.install_uid_cache()
    set_uid = pynetdicom.utils.set_uid
    assert pynetdicom.pdu_items.set_uid is set_uid and getattr(set_uid, "_osx_hook", False)
    for value in ("1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", UID("1.2.3.4"), "1.2.5 "):
        for _ in range(2):
            got = set_uid(value, "Test UID")
            text = value.decode() if isinstance(value, bytes) else value
            assert isinstance(got, UID) and got == text.strip()
    assert set_uid(None, "Test UID") is None
    with pytest.raises(TypeError):
        set_uid(12, "Test UID")
    for _ in range(2):  # an error is not remembered: raised every time
        with pytest.raises(ValueError):
            set_uid("", "Test UID", allow_empty=False)
        with pytest.raises(ValueError):
            set_uid("1." * 40, "Test UID")
    saved = _config.ENFORCE_UID_CONFORMANCE
    try:
        assert set_uid("1.02.3", "Test UID") == "1.02.3"  # non-conformant: accepted ...
        _config.ENFORCE_UID_CONFORMANCE = True
        with pytest.raises(ValueError):  # ... but not once conformance is enforced
            set_uid("1.02.3", "Test UID")
    finally:
        _config.ENFORCE_UID_CONFORMANCE = saved


def _associate_rq(contexts, user_information, called="ORTHANC", calling="OSIRIXPY"):
    import copy

    from pynetdicom.pdu_primitives import A_ASSOCIATE

    p = A_ASSOCIATE()
    p.application_context_name = "1.2.840.10008.3.1.1.1"
    p.calling_ae_title, p.called_ae_title = calling, called
    for i, cx in enumerate(copy.deepcopy(contexts)):
        cx.context_id = 2 * i + 1
        p.presentation_context_definition_list.append(cx)
    p.user_information = list(user_information)
    return p


def _user_info(*, version=True, window=None):
    from pynetdicom.pdu_primitives import (
        AsynchronousOperationsWindowNegotiation,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
    )

    items = [MaximumLengthNotification(), ImplementationClassUIDNotification()]
    items[0].maximum_length_received = 16382
    items[1].implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    if version:
        items.append(ImplementationVersionNameNotification())
        items[-1].implementation_version_name = "OSIRIX_PY_1"
    if window:
        items.append(AsynchronousOperationsWindowNegotiation())
        items[-1].maximum_number_operations_invoked, \
            items[-1].maximum_number_operations_performed = window
    return items


def test_associate_rq_encoded_as_pynetdicom_encodes_it():
    from pynetdicom import build_context
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    from osirix_py.net import client

    get_contexts, roles = client._get_negotiation()  # 128 contexts, 127 SCP roles
    cases = [
        _associate_rq(get_contexts, _user_info() + list(roles)),
        _associate_rq([build_context("1.2.840.10008.1.1")], _user_info(version=False), "A", "B"),
        _associate_rq([build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.4.90"])],
                      _user_info(window=(2, 3)), "CALLED_16_CHARS_", "X"),
    ]
    for p in cases:
        assert fastpath.encode_associate_rq(p) == A_ASSOCIATE_RQ(p).encode()


def test_associate_rq_with_what_only_pynetdicom_encodes_is_left_to_it():
    from pynetdicom import build_context
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    ident = UserIdentityNegotiation()
    ident.user_identity_type = 1
    ident.primary_field = b"radiologist"
    p = _associate_rq([build_context("1.2.840.10008.1.1")], _user_info() + [ident])
    assert fastpath.encode_associate_rq(p) is None


def _rq_primitive_summary(p):
    """Everything an acceptor negotiates from: AE titles, application
    context, contexts (ID, abstract syntax, transfer syntaxes in order) and
    the user information items with all their values."""
    return (p.calling_ae_title, p.called_ae_title, p.application_context_name,
            [(cx.context_id, cx.abstract_syntax, list(cx.transfer_syntax))
             for cx in p.presentation_context_definition_list],
            [(type(u).__name__, sorted((k, repr(v)) for k, v in vars(u).items()))
             for u in p.user_information])


def _pynetdicom_rq_primitive(raw: bytes):
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    pdu = A_ASSOCIATE_RQ()
    pdu.decode(raw)
    return pdu, pdu.to_primitive()


def test_associate_rq_read_as_pynetdicom_reads_it():
    """A received association request gives the primitive pynetdicom's own
    decoding gives: getscu-like (128 contexts with several transfer syntaxes
    each, 127 role selections), minimal, 16-character AE titles; read twice,
    the second time from the item cache, with user information items that
    are copies (no object shared between two associations)."""
    from pynetdicom import build_context
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    from osirix_py.net import client

    fastpath.install_association_hooks()
    get_contexts, roles = client._get_negotiation()
    cases = [
        _associate_rq(get_contexts, _user_info() + list(roles)),
        _associate_rq([build_context("1.2.840.10008.1.1")], _user_info(version=False), "A", "B"),
        _associate_rq([build_context("1.2.840.10008.5.1.4.1.1.2",
                                     ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2"])],
                      _user_info(), "CALLED_16_CHARS_", "X"),
    ]
    for p in cases:
        raw = A_ASSOCIATE_RQ(p).encode()
        pdu, expected = _pynetdicom_rq_primitive(raw)
        first = fastpath.associate_rq_primitive(raw[74:], pdu.called_ae_title, pdu.calling_ae_title)
        again = fastpath.associate_rq_primitive(raw[74:], pdu.called_ae_title, pdu.calling_ae_title)
        assert _rq_primitive_summary(first) == _rq_primitive_summary(expected)
        assert _rq_primitive_summary(again) == _rq_primitive_summary(expected)
        assert not {id(u) for u in first.user_information} & {id(u) for u in again.user_information}
    assert len(first.presentation_context_definition_list[0].transfer_syntax) == 2


def test_associate_rq_with_what_only_pynetdicom_reads_is_left_to_it():
    """Asynchronous operations, user identity, an unknown item type, a
    truncated item and a non-conformant transfer syntax UID (pynetdicom
    warns about it) are read by pynetdicom (None here); so is everything
    while an EVT_PDU_RECV handler is bound (pynetdicom's debug logger looks
    handlers up by the PDU's exact class)."""
    from pynetdicom import build_context
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    fastpath.install_association_hooks()
    ident = UserIdentityNegotiation()
    ident.user_identity_type = 1
    ident.primary_field = b"radiologist"
    echo = [build_context("1.2.840.10008.1.1")]
    plain = A_ASSOCIATE_RQ(_associate_rq(echo, _user_info())).encode()
    odd_syntax = A_ASSOCIATE_RQ(_associate_rq(
        [build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.3.04"])],
        _user_info())).encode()
    unknown_item = plain + bytes((0x99, 0, 0, 2, 1, 2))
    raws = [
        A_ASSOCIATE_RQ(_associate_rq(echo, _user_info(window=(2, 3)))).encode(),
        A_ASSOCIATE_RQ(_associate_rq(echo, _user_info() + [ident])).encode(),
        unknown_item,
        plain[:-1],
        odd_syntax,
    ]
    for raw in raws:
        assert fastpath.associate_rq_primitive(raw[74:], "ORTHANC", "OSIRIXPY") is None
    assert fastpath.associate_rq_primitive(plain[74:], "ORTHANC", "OSIRIXPY") is not None

    seen: list = []

    class FakeAssoc:
        def __init__(self, bound):
            self.bound = bound
            self.abort = self._abort_nonblocking = self._abort_blocking = lambda: None

        def get_handlers(self, event):
            return [(lambda e: seen.append(e.event), None)] if event in self.bound else []

    from pynetdicom import evt
    from pynetdicom.dul import DULServiceProvider

    for bound, quick in (((), True), ((evt.EVT_PDU_RECV,), False), ((evt.EVT_DATA_RECV,), False)):
        dul = object.__new__(DULServiceProvider)
        dul._assoc = FakeAssoc(bound)
        pdu, event = dul._decode_pdu(bytearray(plain))
        assert event == "Evt6" and isinstance(pdu, A_ASSOCIATE_RQ)
        assert (type(pdu) is not A_ASSOCIATE_RQ) == quick
        assert pdu.calling_ae_title == "OSIRIXPY" and pdu.protocol_version == 1
        assert _rq_primitive_summary(pdu.to_primitive()) == _rq_primitive_summary(
            _pynetdicom_rq_primitive(plain)[1])
        # The items themselves, for whoever asks (decoded by pynetdicom then).
        assert [type(i).__name__ for i in pdu.variable_items] == [
            "ApplicationContextItem", "PresentationContextItemRQ", "UserInformationItem"]
    assert seen == [evt.EVT_PDU_RECV, evt.EVT_DATA_RECV]  # the handlers saw the PDUs


def _associate_ac(results, user_information, called="OSIRIXPY", calling="GETSCU"):
    from pynetdicom.pdu_primitives import A_ASSOCIATE
    from pynetdicom.presentation import PresentationContext

    p = A_ASSOCIATE()
    p.application_context_name = "1.2.840.10008.3.1.1.1"
    p.called_ae_title, p.calling_ae_title = called, calling
    p.result = 0x00
    for cx_id, abstract, ts, result in results:
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax, cx.transfer_syntax, cx.result = cx_id, abstract, [ts], result
        p.presentation_context_definition_results_list.append(cx)
    p.user_information = list(user_information)
    return p


def test_associate_ac_encoded_as_pynetdicom_encodes_it():
    """Accepted and refused contexts, role selection replies, with and
    without an implementation version name: the same bytes; a reply with
    what only pynetdicom encodes (a user identity response) is left to it."""
    from pynetdicom.pdu import A_ASSOCIATE_AC
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation, UserIdentityNegotiation

    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = "1.2.840.10008.5.1.4.1.1.2", False, True
    results = [(1, "1.2.840.10008.1.1", "1.2.840.10008.1.2", 0x00),
               (3, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", 0x00),
               (5, "1.2.3.4", "1.2.840.10008.1.2", 0x03),
               (7, "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.4.90", 0x04)]
    cases = [_associate_ac(results, _user_info() + [role]),
             _associate_ac(results[:1], _user_info(version=False), "CALLED_16_CHARS_", "B"),
             _associate_ac(results, _user_info(window=(1, 1)))]
    for p in cases:
        assert fastpath.encode_associate_ac(p) == A_ASSOCIATE_AC(p).encode()
    ident = UserIdentityNegotiation()
    ident.server_response = b"ok"
    assert fastpath.encode_associate_ac(_associate_ac(results, _user_info() + [ident])) is None


def _ac_primitive_summary(p):
    return (p._called_ae_title, p._calling_ae_title, p.application_context_name, p.result,
            [(cx.context_id, cx.result, list(cx.transfer_syntax))
             for cx in p.presentation_context_definition_results_list],
            [(type(u).__name__, sorted((k, repr(v)) for k, v in vars(u).items()))
             for u in p.user_information])


def test_associate_ac_read_as_pynetdicom_reads_it():
    """A received acceptance (accepted and refused contexts, a refused one
    with an empty transfer syntax sub-item as some peers send, role
    replies) gives pynetdicom's primitive; asynchronous operations in it
    are left to pynetdicom."""
    import struct

    from pynetdicom.pdu import A_ASSOCIATE_AC
    from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

    fastpath.install_association_hooks()
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid, role.scu_role, role.scp_role = "1.2.840.10008.5.1.4.1.1.2", False, True
    results = [(1, "1.2.840.10008.1.1", "1.2.840.10008.1.2", 0x00),
               (3, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", 0x00),
               (5, "1.2.3.4", "1.2.840.10008.1.2", 0x03)]
    raws = [A_ASSOCIATE_AC(_associate_ac(results, _user_info() + [role])).encode(),
            A_ASSOCIATE_AC(_associate_ac(results[:1], _user_info(version=False),
                                         "CALLED_16_CHARS_", "B")).encode()]
    body = raws[0][6:] + bytes((0x21, 0, 0, 8, 7, 0, 3, 0, 0x40, 0, 0, 0))
    raws.append(struct.pack(">BBI", 2, 0, len(body)) + body)
    for raw in raws:
        pdu = A_ASSOCIATE_AC()
        pdu.decode(raw)
        got = fastpath.associate_ac_primitive(raw[74:], pdu.reserved_aet, pdu.reserved_aec)
        assert _ac_primitive_summary(got) == _ac_primitive_summary(pdu.to_primitive())
    assert got.presentation_context_definition_results_list[-1].transfer_syntax == []
    windowed = A_ASSOCIATE_AC(_associate_ac(results, _user_info(window=(1, 1)))).encode()
    assert fastpath.associate_ac_primitive(windowed[74:], "OSIRIXPY", "GETSCU") is None


def test_waiting_socket_does_not_wait_while_an_event_is_queued(monkeypatch):
    """The DUL reactor handles one event per loop, after it looks at the
    socket: with an event queued that look must not block (at an
    association's start the request's event waited a whole idle wait behind
    the connection's)."""
    import socket

    from pynetdicom.transport import AssociationSocket

    from osirix_py.net import tcp

    waits = []
    real_select = tcp.select.select

    def select(r, w, x, timeout):
        waits.append(timeout)
        return real_select(r, w, x, timeout)

    monkeypatch.setattr(tcp.select, "select", select)
    cls = tcp._make_waiting_socket_class(AssociationSocket)
    a, b = socket.socketpair()
    wake_r, wake_w = socket.socketpair()
    try:
        wrapper = object.__new__(cls)
        wrapper.socket, wrapper._is_connected, wrapper._osx_wake_r = a, True, wake_r
        import queue

        wrapper._event_queue = queue.Queue()
        monkeypatch.setattr(cls, "event_queue", property(lambda self: self._event_queue),
                            raising=False)
        assert wrapper.ready is False
        wrapper._event_queue.put("Evt6")
        assert wrapper.ready is False
        b.sendall(b"x")
        assert wrapper.ready is True
        assert waits == [tcp.DUL_IDLE_WAIT, 0, 0]
    finally:
        for s in (a, b, wake_r, wake_w):
            s.close()


def test_pdata_from_another_thread_is_written_directly_only_when_safe():
    """With the send lock a P-DATA sent by a thread other than the DUL's is
    written at once when nothing is queued before it and the DUL is not in
    an action; queued behind anything queued (order kept); written only
    after an action in progress ends; and queued as before on a DUL without
    the lock."""
    import queue
    import threading

    written: list = []

    class FakeSocket:
        def send(self, data):
            written.append(data)

    class FakeStateMachine:
        current_state = "Sta6"

        def do_action(self, event):
            return event

    class FakeAssoc:
        def get_handlers(self, event):
            return []

    class FakeDul:
        def __init__(self):
            self.socket, self.assoc = FakeSocket(), FakeAssoc()
            self.to_provider_queue, self.event_queue = queue.Queue(), queue.Queue()
            self.state_machine = FakeStateMachine()
            self.ident = -1  # (not this thread)
            self.queued: list = []

        def send_pdu(self, primitive):
            raw = primitive._osx_raw
            self.queued.append(raw if isinstance(raw, bytes) else b"".join(raw))
            self.to_provider_queue.put(primitive)

    def pdata(tag: bytes):
        return fastpath.raw_pdata(1, fastpath.command_set([(0x00000100, "US", 1)]), tag, 0)

    plain = FakeDul()
    fastpath.send_pdata(plain, pdata(b"a"))
    assert written == [] and len(plain.queued) == 1  # no lock: queued as before

    dul = FakeDul()
    fastpath.install_send_lock(dul)
    fastpath.send_pdata(dul, pdata(b"b"))
    assert len(written) == 1 and written[0].endswith(b"b") and dul.queued == []
    dul.to_provider_queue.put("an earlier primitive")
    fastpath.send_pdata(dul, pdata(b"c"))
    assert len(written) == 1 and dul.queued[-1].endswith(b"c")  # behind it, in order
    dul.to_provider_queue = queue.Queue()
    dul.state_machine.current_state = "Sta7"  # releasing: not for us
    fastpath.send_pdata(dul, pdata(b"d"))
    assert len(written) == 1 and dul.queued[-1].endswith(b"d")
    dul.to_provider_queue = queue.Queue()
    dul.state_machine.current_state = "Sta6"

    in_action, release = threading.Event(), threading.Event()
    original = FakeStateMachine.do_action

    def slow_action(event):
        in_action.set()
        release.wait(10)
        written.append(b"action")

    FakeStateMachine.do_action = lambda self, event: slow_action(event)
    try:
        dul2 = FakeDul()
        fastpath.install_send_lock(dul2)
        t = threading.Thread(target=dul2.state_machine.do_action, args=("Evt9",))
        t.start()
        assert in_action.wait(10)
        sender = threading.Thread(target=fastpath.send_pdata, args=(dul2, pdata(b"e")))
        sender.start()
        sender.join(0.2)
        assert sender.is_alive()  # waits for the action to end
        release.set()
        t.join(10)
        sender.join(10)
        assert written[-2] == b"action" and written[-1].endswith(b"e")
    finally:
        FakeStateMachine.do_action = original


def test_a_response_taken_by_the_reactor_is_given_back_once():
    """pynetdicom's reactor can take a response its sender waits for (a racy
    pause); it goes back to the DIMSE queue once, for that sender, and is
    dropped as pynetdicom drops it if it comes back again.  Requests are
    served as before."""
    from pynetdicom import AE
    from pynetdicom.association import Association

    fastpath._install_serve_lock()
    assoc = Association(AE(), "requestor")
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 5
    rsp.Status = 0
    assoc._serve_request(rsp, 1)
    assert assoc.dimse.msg_queue.get_nowait() == (1, rsp)
    assoc._serve_request(rsp, 1)  # (pynetdicom: "Received unexpected ... message")
    assert assoc.dimse.msg_queue.empty()


def test_a_new_dul_wakes_for_its_first_primitive():
    """Before its connection exists a DUL's idle sleep ends as soon as a
    primitive (the association request) is queued, not after the sleep; a
    DUL made after the hook starts with that queue, and the socket wake-up
    takes what it holds over."""
    import queue
    import threading

    from pynetdicom import AE
    from pynetdicom.association import Association

    from osirix_py.net import tcp

    tcp.install_dul_start_wakeup()
    dul = Association(AE(), "requestor").dul
    assert type(dul.to_provider_queue) is fastpath._WakingQueue

    class FakeDul(threading.Thread):
        def __init__(self):
            super().__init__(daemon=True)
            self.to_provider_queue = queue.Queue()
            fastpath._make_waking(self.to_provider_queue, threading.Event())

        def run(self):
            tcp._DulTime.sleep(30)  # would sleep 30 s without the wake-up

    t = FakeDul()
    t.start()
    t.join(0.2)
    assert t.is_alive()  # it does wait while nothing is queued
    t.to_provider_queue.put("A-ASSOCIATE request")
    t.join(10)
    assert not t.is_alive()
    moved = tcp._WakeQueue(None)
    assert fastpath.move_queue(t.to_provider_queue, moved)
    assert moved.get_nowait() == "A-ASSOCIATE request"


def test_associations_with_the_hooks_negotiate_and_close_as_pynetdicoms(tmp_path):
    """A pynetdicom SCP sees the same request with and without the hooks
    (also through pynetdicom's own encoding when an EVT_PDU_SENT handler
    wants the PDU object), and after each release both DUL threads end."""
    import socket

    from pynetdicom import AE, build_role, evt
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.sop_class import CTImageStorage, Verification

    fastpath.install_association_hooks()
    seen: list = []
    scp = AE(ae_title="PEER")
    scp.add_supported_context(Verification)
    scp.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
                              scp_role=True, scu_role=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = scp.start_server(("127.0.0.1", port), block=False,
                              evt_handlers=[(evt.EVT_REQUESTED, lambda e: seen.append(e.assoc))])
    try:
        for pdu_sent in (False, True):
            sent: list = []
            handlers = [(evt.EVT_PDU_SENT, lambda e: sent.append(e.pdu))] if pdu_sent else []
            scu = AE(ae_title="OSIRIXPY")
            scu.add_requested_context(Verification)
            scu.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
            assoc = scu.associate("127.0.0.1", port, ae_title="PEER",
                                  ext_neg=[build_role(CTImageStorage, scp_role=True)],
                                  evt_handlers=handlers)
            assert assoc.is_established
            cts = {cx.abstract_syntax: cx for cx in assoc.accepted_contexts}
            assert set(cts) == {Verification, CTImageStorage}
            assert cts[CTImageStorage].transfer_syntax == ["1.2.840.10008.1.2.1"]
            assert cts[CTImageStorage].as_scp  # the role selection went through
            assert assoc.send_c_echo().Status == 0
            assoc.release()
            assert assoc.is_released and not assoc.dul.is_alive()
            assert any(isinstance(p, A_ASSOCIATE_RQ) for p in sent) == pdu_sent
            scu.shutdown()
        assert [a.requestor.ae_title for a in seen] == ["OSIRIXPY", "OSIRIXPY"]
    finally:
        server.shutdown()


def test_pending_responses_wait_for_their_reader_and_final_ones_wake_it(monkeypatch):
    """A retrieve's pending responses (progress only) do not wake the thread
    that reads them; it still gets them, in order, at its next look (every
    PENDING_POLL), and a final response (or a blocked get's timeout) is not
    delayed."""
    import queue as _queue
    import types

    monkeypatch.setattr(fastpath, "PENDING_POLL", 0.5)

    def rsp(status):
        return (1, types.SimpleNamespace(MessageIDBeingRespondedTo=1, Status=status))

    q = _queue.Queue()
    assoc = types.SimpleNamespace(dimse=types.SimpleNamespace(msg_queue=q))
    assert fastpath.lazy_pending_responses(assoc) and type(q) is not _queue.Queue
    assert not fastpath.lazy_pending_responses(assoc)  # (once)

    got, woke = [], []

    def reader(n):
        for _ in range(n):
            got.append(q.get(True, 5.0)[1].Status)
            woke.append(time.monotonic())

    t = threading.Thread(target=reader, args=(3,))
    start = time.monotonic()
    t.start()
    time.sleep(0.05)
    q.put(rsp(0xFF00))
    q.put(rsp(0xFF00))
    time.sleep(0.2)
    assert got == []  # not woken by the pending ones...
    deadline = time.monotonic() + 2.0
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [0xFF00, 0xFF00]  # ...but they reach it at its next look
    assert woke[0] - start >= 0.45
    sent = time.monotonic()
    q.put(rsp(0x0000))  # the final response wakes it at once
    t.join(2.0)
    assert got[-1] == 0x0000 and not t.is_alive()
    assert woke[-1] - sent < 0.25
    t0 = time.monotonic()
    with pytest.raises(_queue.Empty):
        q.get(True, 0.05)
    assert 0.04 < time.monotonic() - t0 < 0.4


def test_lean_retrieve_responses_yield_what_pynetdicom_yields():
    """For the same C-GET responses (pending ones, a C-STORE request that
    was not served on arrival, a final failure with its Failed SOP Instance
    UID List), the lean generator yields the same status values and
    identifier as pynetdicom's own, serves the request, and resumes the
    reactor; a response that never comes yields an empty status."""
    import threading as _threading
    from types import SimpleNamespace

    from pydicom.uid import UID, ImplicitVRLittleEndian
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_GET

    keywords = ("Status", "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                "NumberOfFailedSuboperations", "NumberOfWarningSuboperations", "ErrorComment")

    def responses():
        out = []
        for done in range(3):
            rsp = C_GET()
            rsp.MessageIDBeingRespondedTo = 1
            rsp.Status = 0xFF00
            rsp.NumberOfRemainingSuboperations = 3 - done
            rsp.NumberOfCompletedSuboperations = done
            rsp.NumberOfFailedSuboperations = 0
            rsp.NumberOfWarningSuboperations = 0
            out.append((1, rsp))
        store = C_STORE()
        store.MessageID = 9
        store.AffectedSOPClassUID = CT
        store.AffectedSOPInstanceUID = "1.2.3.4"
        out.append((3, store))
        final = C_GET()
        final.MessageIDBeingRespondedTo = 1
        final.Status = 0xA702
        final.NumberOfCompletedSuboperations = 2
        final.NumberOfFailedSuboperations = 1
        final.NumberOfWarningSuboperations = 0
        final.ErrorComment = "out of resources"
        ident = Dataset()
        ident.FailedSOPInstanceUIDList = ["1.2.3.5", "1.2.3.6"]
        final.Identifier = io.BytesIO(encode(ident, True, True))
        out.append((1, final))
        return out

    def run(generator_of):
        served, queue_ = [], list(responses())
        assoc = SimpleNamespace(_reactor_checkpoint=_threading.Event(), lock=_threading.Lock(),
                                _c_store_scp=served.append, abort=lambda: None,
                                _handle_no_response=lambda: served.append("timeout"))
        assoc.dimse = SimpleNamespace(get_msg=lambda block: queue_.pop(0) if queue_ else (None, None))
        got = [({k: s.get(k) for k in keywords}, i and list(i.FailedSOPInstanceUIDList))
               for s, i in generator_of(assoc)]
        return got, [getattr(x, "AffectedSOPInstanceUID", x) for x in served], \
            assoc._reactor_checkpoint.is_set()

    ts = UID(ImplicitVRLittleEndian)
    ours = run(lambda a: fastpath._lean_get_move_responses(a, ts))
    theirs = run(lambda a: Association._wrap_get_move_responses(a, ts))
    assert ours == theirs
    statuses, served, resumed = ours
    assert [s["Status"] for s, _ in statuses] == [0xFF00] * 3 + [0xA702]
    assert statuses[-1][1] == ["1.2.3.5", "1.2.3.6"] and served == ["1.2.3.4"] and resumed
    # No response at all (DIMSE timeout): an empty status, nothing left paused.
    assoc = SimpleNamespace(_reactor_checkpoint=_threading.Event(), _handle_no_response=list,
                            dimse=SimpleNamespace(get_msg=lambda block: (None, None)))
    (status, ident), = list(fastpath._lean_get_move_responses(assoc, ts))
    assert "Status" not in status and ident is None and assoc._reactor_checkpoint.is_set()


def test_our_c_moves_pending_responses_gather_until_the_time_is_up_or_a_wake_up(monkeypatch):
    """After a pending C-MOVE response (gather_pending_responses), the DUL's
    look at the socket reads what is already there, and otherwise waits for
    nothing but a wake-up until GATHER_PENDING is up; a final response, or
    stop_gathering (the PACS closed the association its stores came on),
    ends that at once."""
    import queue
    import socket
    import types

    from pynetdicom.transport import AssociationSocket

    from osirix_py.net import tcp

    monkeypatch.setattr(fastpath, "GATHER_PENDING", 0.3)
    cls = tcp._make_waiting_socket_class(AssociationSocket)
    a, b = socket.socketpair()
    wake_r, wake_w = socket.socketpair()
    try:
        wrapper = object.__new__(cls)
        wrapper.socket, wrapper._is_connected = a, True
        wrapper._osx_wake_r, wrapper._osx_wake_w = wake_r, wake_w
        wrapper._event_queue = queue.Queue()
        monkeypatch.setattr(cls, "event_queue", property(lambda self: self._event_queue),
                            raising=False)
        q = queue.Queue()
        assoc = types.SimpleNamespace(dimse=types.SimpleNamespace(msg_queue=q),
                                      dul=types.SimpleNamespace(socket=wrapper))
        assert not fastpath.gather_pending_responses(assoc)  # (its queue is not lazy yet)
        assert fastpath.lazy_pending_responses(assoc) and fastpath.gather_pending_responses(assoc)

        def rsp(status):
            return (1, types.SimpleNamespace(MessageIDBeingRespondedTo=1, Status=status))

        q.put(rsp(0xFF00))  # (the DUL thread delivers a pending response)
        b.sendall(b"x")  # the next one is already there: read at once
        t0 = time.monotonic()
        assert wrapper.ready is True and time.monotonic() - t0 < 0.1
        a.recv(1)
        q.put(rsp(0xFF00))
        # Data that comes while it gathers waits until the time is up...
        threading.Timer(0.05, b.sendall, args=(b"y",)).start()
        t0 = time.monotonic()
        assert wrapper.ready is True
        assert 0.25 < time.monotonic() - t0 < 1.0
        a.recv(1)
        q.put(rsp(0xFF00))
        threading.Timer(0.05, fastpath.stop_gathering, args=(assoc,)).start()
        t0 = time.monotonic()
        wrapper.ready  # (...or a wake-up: the PACS's stores ended)
        assert time.monotonic() - t0 < 0.25
        q.put(rsp(0xFF00))
        q.put(rsp(0x0000))  # a final response ends gathering
        b.sendall(b"z")
        t0 = time.monotonic()
        assert wrapper.ready is True and time.monotonic() - t0 < 0.1
    finally:
        for s in (a, b, wake_r, wake_w):
            s.close()
