"""Fast paths around pynetdicom's per-message Python work (profiled hot spots).

pynetdicom builds every DIMSE message as a pydicom ``Dataset``, encodes it with
pydicom's general writer, and does so again for the command set's group
length; for a 200-match C-FIND that was ~2 ms of CPU per response, and for a
C-GET/C-MOVE sub-operation it decoded and re-encoded the whole stored file.
Everything here produces exactly the bytes pynetdicom would send, cheaper:

* :class:`FindResponder` -- C-FIND pending responses: the command set is
  encoded once per request, each identifier is encoded directly from the row
  (little endian syntaxes; anything unusual returns ``None`` and the caller
  falls back to pynetdicom's path), and command + identifier go out as one
  P-DATA request through the association's DUL queue (the same queue, the same
  thread and so the same order as pynetdicom's own messages).
* :class:`StoredInstance` -- a data set for C-GET / C-MOVE sub-operations that
  carries the stored file's encoded data set; :func:`install_encode_hook`
  makes pynetdicom's ``send_c_store`` use those bytes as they are when the
  presentation context's transfer syntax is the stored one (else the file is
  parsed and re-encoded as before).
* :func:`split_part10` -- the file meta information of a Part 10 file without
  parsing the data set; :func:`received_part10` -- a received C-STORE as
  Part 10 bytes with the file meta encoded directly.
* :func:`install_dimse_hook` -- C-STORE requests/responses, final C-FIND and
  pending C-MOVE/C-GET responses: command sets encoded directly (verified
  byte-for-byte against pynetdicom in tests/unit/test_net_fastpath.py).
* :class:`PausedSender` / :func:`install_paused_store` -- C-STORE SCU of stored
  instances without pynetdicom's per-message reactor pause handshake (~1 ms).
* :func:`raw_pdata` -- a whole message's P-DATA-TF PDUs, encoded at once and
  written by the DUL with one ``send`` (instead of one reactor cycle per PDU).
  The whole message is built in memory (one more copy of the data set, at
  most for the time of the send).
* :func:`install_fast_pdata` / :func:`receive_pdvs` / :func:`decode_command`
  -- the receiving side: a received P-DATA-TF PDU goes straight to the DIMSE
  layer, and the common DIMSE-C messages are assembled and their command sets
  decoded without pydicom (the same primitives pynetdicom builds).
* :class:`ContextList` -- presentation contexts copied cheaply per association.
* :func:`install_reactor_wakeup` -- an accepted association's reactor sleeps
  until a DIMSE message, an indication or a kill wakes it, instead of
  looking every millisecond.
* :func:`serve_stores_inline` / :func:`serve_requests_inline` -- received
  C-STORE requests (our C-GET's sub-operations; the listener's stores) are
  served by the DUL thread that received them, and :func:`send_pdata` writes
  their responses from there at once.
* :func:`install_association_hooks` -- association set-up and tear-down:
  pynetdicom's UID checks remembered (:func:`install_uid_cache`), the
  A-ASSOCIATE-RQ encoded directly (:func:`encode_associate_rq`), a closing
  association's DUL polled every 0.5 ms (:func:`install_quick_kill`).

The hooks wrap pynetdicom 3.0 internals (``association.encode``,
``DIMSEServiceProvider.send_msg``, ``fsm.P_DATA_TF`` and action AE-2, the
DUL's ``_read_pdu_data``, the reactor's ``time.sleep``, ``utils.set_uid``,
``Association.kill`` and ``_serve_request``); each falls back to
pynetdicom's own code for anything it does not recognise, and
``Handlers(fast_paths=False)`` turns the listener's send/find uses off.
"""

from __future__ import annotations

import contextlib
import io
import queue
import struct
import threading
import time
from typing import Callable, NamedTuple

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from ..dicom import status as st
from ..dicom.fastheader import peek_sop_uids
from ..dicom.header import DicomFileError, read_header, read_header_prefix
from ..storage.filestore import write_gathered

_EXPLICIT_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                       "UC", "UI", "UR", "UT"})
#: VRs whose text is encoded with the Specific Character Set (the rest are ASCII).
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_INT_VRS = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i"}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"

#: Serialises the installation of the module-level hooks below.
_hook_lock = threading.Lock()

_C_FIND_RSP = 0x8020
_DATASET_PRESENT = 0x0001  # (0000,0800): anything but 0x0101


class EncodeError(ValueError):
    """A value the fast encoder does not handle; use pydicom's writer instead."""


# --------------------------------------------------------------------------- elements
def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if len(value) & 1:
        raise EncodeError("odd length")
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value
    if vr in _EXPLICIT_LONG:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
    if len(value) > 0xFFFF:
        raise EncodeError("value too long for a 16-bit length")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def encode_value(vr: str, value, encoding: str) -> bytes:
    """The value field of one element (even length, padded as PS3.5 6.2 says)."""
    if value is None or value == "":
        return b""
    if vr in _INT_VRS:
        if isinstance(value, str):
            value = int(value.split("\\")[0])
        return struct.pack(_INT_VRS[vr], int(value))
    if vr not in _TEXT_VRS:
        raise EncodeError(f"VR {vr}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EncodeError(f"{type(value).__name__} value")
    if isinstance(value, int):
        if vr not in ("IS", "DS"):
            raise EncodeError("int for a text VR")
        value = str(value)
    raw = value.encode(encoding if vr in _CHARSET_VRS else "ascii")
    if len(raw) & 1:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def encode_elements(elements: list[tuple[int, str, object]], charset: str | None, implicit: bool) -> bytes:
    """Encode (tag, VR, value) triples (any order) as a little endian data set.

    A None/empty value gives a zero-length element (an empty SQ included).
    Raises :class:`EncodeError` for what only pydicom's writer does right.
    """
    encoding = "ascii"
    if charset:
        if "\\" in charset:
            raise EncodeError("multi-valued Specific Character Set")
        encoding = convert_encodings([charset])[0]
    out = []
    try:
        for tag, vr, value in sorted(elements, key=lambda e: e[0]):
            if vr == "SQ":
                if value:
                    raise EncodeError("sequence with items")
                out.append(_element(tag, "SQ", b"", implicit))
                continue
            if " or " in vr:
                raise EncodeError(f"ambiguous VR {vr}")
            out.append(_element(tag, vr, encode_value(vr, value, encoding), implicit))
    except (UnicodeError, LookupError, ValueError, struct.error, OverflowError) as exc:
        if isinstance(exc, EncodeError):
            raise
        raise EncodeError(str(exc)) from exc
    return b"".join(out)


# --------------------------------------------------------------------------- contexts
class ContextList(list):
    """Presentation contexts that pynetdicom copies cheaply per association.

    pynetdicom deep-copies the contexts of every association it requests or
    accepts; with every storage SOP class x ~25 transfer syntaxes that copy
    (UID validation by regular expression included) cost ~60 ms of CPU per
    association -- more than a whole C-ECHO at Orthanc.  The UIDs are immutable strings: a new
    context object with its own transfer syntax list is an equivalent copy.
    """

    def __deepcopy__(self, memo):
        out = []
        for cx in self:
            new = object.__new__(type(cx))
            new.__dict__.update(cx.__dict__)
            new._transfer_syntax = list(cx._transfer_syntax)
            out.append(new)
        return out


# --------------------------------------------------------------------------- logging
def quiet_pynetdicom() -> None:
    """Turn off pynetdicom's "standard" PDU/DIMSE event handlers and its
    identifier dumps (process-wide settings).

    They only ever write DEBUG lines, yet cost time on every PDU and message
    even when nothing is logged, and a bound ``EVT_DIMSE_SENT`` handler makes
    every message take pynetdicom's pydicom encoding (the fast paths here
    step aside for handlers that might look at the message).  Left on when
    the ``pynetdicom`` logger is at DEBUG (someone is reading the dumps).
    """
    import logging

    from pynetdicom import _config

    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


#: Most UIDs that pynetdicom's ``set_uid`` has converted and checked, by
#: argument (see :func:`install_uid_cache`); emptied when it reaches the limit.
_UID_CACHE: dict = {}
_UID_CACHE_LIMIT = 16384


def install_uid_cache() -> None:
    """Remember the UIDs that pynetdicom has already converted and checked.

    pynetdicom converts and validates every UID it is given or receives
    (``utils.set_uid``: pydicom's ``UID()`` with its regular-expression check,
    then its own and the conformance check): ~40 us each, ~2,000 times for an
    association request with 128 presentation contexts (50 ms) and several
    times per C-STORE message.  Nearly all of them are the same few hundred
    SOP class and transfer syntax UIDs.  The wrapped ``set_uid`` returns the
    same ``UID`` object for the same arguments (and the same
    conformance setting); a value that fails raises every time as before (an
    error is not remembered), and a non-conformant one is warned about once
    while remembered.
    """
    import pynetdicom.ae
    import pynetdicom.dimse_primitives
    import pynetdicom.pdu_items
    import pynetdicom.pdu_primitives
    import pynetdicom.presentation
    import pynetdicom.utils
    from pynetdicom import _config

    with _hook_lock:
        original = pynetdicom.utils.set_uid
        if getattr(original, "_osx_hook", False):
            return

        def set_uid(value, name, allow_empty=True, allow_none=True, validate=True):
            if type(value) not in (str, bytes) and (type(value) is not UID or hasattr(
                    value, "_PRIVATE_TS_ENCODING")):
                return original(value, name, allow_empty, allow_none, validate)
            key = (value, name, allow_empty, allow_none, validate, _config.ENFORCE_UID_CONFORMANCE)
            try:
                return _UID_CACHE[key]
            except KeyError:
                pass
            uid = original(value, name, allow_empty, allow_none, validate)
            if len(_UID_CACHE) >= _UID_CACHE_LIMIT:
                _UID_CACHE.clear()
            _UID_CACHE[key] = uid
            return uid

        set_uid._osx_hook = True  # type: ignore[attr-defined]
        for module in (pynetdicom.utils, pynetdicom.ae, pynetdicom.dimse_primitives,
                       pynetdicom.pdu_items, pynetdicom.pdu_primitives, pynetdicom.presentation):
            if getattr(module, "set_uid", None) is original:
                module.set_uid = set_uid
        _install_transfer_syntax_cache()


#: Transfer syntax UIDs (with the UID conformance setting) that
#: ``PresentationContext.add_transfer_syntax`` takes without a word.
_QUIET_SYNTAXES: dict[tuple[str, bool], UID] = {}


def _quiet_syntax(uid: UID) -> bool:
    """Whether ``PresentationContext.add_transfer_syntax`` takes *uid*
    without a warning (under the current UID conformance setting)."""
    from pynetdicom.utils import validate_uid

    return bool(uid and validate_uid(uid) and uid.is_valid
                and (uid.is_private or uid.is_transfer_syntax))


def _install_transfer_syntax_cache() -> None:
    """``PresentationContext.add_transfer_syntax`` converts and checks its
    UID anew each time (``UID()``, two regular expressions, the transfer
    syntax lookup): ~1,100 times while an association with 121 contexts is
    negotiated and answered.  The wrapped method appends a syntax it has
    already seen pass those checks without a warning straight away, and
    hands anything else to pynetdicom.  Called with the hook lock held."""
    from pynetdicom import _config
    from pynetdicom.presentation import PresentationContext

    original = PresentationContext.add_transfer_syntax
    if getattr(original, "_osx_hook", False):
        return

    def add_transfer_syntax(self, syntax) -> None:
        if type(syntax) in (str, UID) and not hasattr(syntax, "_PRIVATE_TS_ENCODING"):
            key = (syntax, _config.ENFORCE_UID_CONFORMANCE)
            uid = _QUIET_SYNTAXES.get(key)
            if uid is not None:
                if uid not in self._transfer_syntax:
                    self._transfer_syntax.append(uid)
                return
            original(self, syntax)
            uid = UID(syntax)
            if _quiet_syntax(uid):
                if len(_QUIET_SYNTAXES) >= _UID_CACHE_LIMIT:
                    _QUIET_SYNTAXES.clear()
                _QUIET_SYNTAXES[key] = uid
            return
        original(self, syntax)

    add_transfer_syntax._osx_hook = True  # type: ignore[attr-defined]
    PresentationContext.add_transfer_syntax = add_transfer_syntax


# --------------------------------------------------------------------------- A-ASSOCIATE-RQ
def _item(item_type: int, body: bytes) -> bytes:
    """A PDU item or sub-item: type, reserved, 2-byte big-endian length, body."""
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _uid_bytes(uid) -> bytes:
    return str(uid).encode("ascii")


#: What :func:`encode_associate_rq` encodes of a requestor's user
#: information, by primitive class name -> encoder of the sub-item's body.
_USER_INFO_ENCODERS = {
    "MaximumLengthNotification": lambda p: (0x51, struct.pack(">I", int(p.maximum_length_received))),
    "ImplementationClassUIDNotification": lambda p: (0x52, _uid_bytes(p.implementation_class_uid)),
    "AsynchronousOperationsWindowNegotiation": lambda p: (
        0x53, struct.pack(">HH", int(p.maximum_number_operations_invoked),
                          int(p.maximum_number_operations_performed))),
    "SCP_SCU_RoleSelectionNegotiation": lambda p: (
        0x54, struct.pack(">H", len(_uid_bytes(p.sop_class_uid))) + _uid_bytes(p.sop_class_uid)
        + bytes((int(bool(p.scu_role)), int(bool(p.scp_role))))),
    "ImplementationVersionNameNotification": lambda p: (
        0x55, p.implementation_version_name.encode("ascii")
        if isinstance(p.implementation_version_name, str) else bytes(p.implementation_version_name)),
}


def encode_associate_rq(primitive) -> bytes | None:
    """The A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) of a requestor's A-ASSOCIATE
    primitive, byte for byte what pynetdicom encodes, built directly.

    pynetdicom builds an item object per presentation context, abstract and
    transfer syntax and user information sub-item, converting and checking
    each UID again on the way: ~15 ms for the 128 contexts x 11 transfer
    syntaxes (+ 127 role selections) of a C-GET association, ~0.3 ms here.
    The primitive's values were checked when it was built.  None for what
    only pynetdicom encodes (extended negotiation, user identity, a value
    that is not plain ASCII): the caller falls back to it.
    """
    try:
        contexts = []
        for cx in primitive.presentation_context_definition_list:
            body = [bytes((int(cx.context_id), 0, 0, 0)), _item(0x30, _uid_bytes(cx.abstract_syntax))]
            body += [_item(0x40, _uid_bytes(ts)) for ts in cx.transfer_syntax]
            contexts.append(_item(0x20, b"".join(body)))
        return _associate_pdu(0x01, primitive, contexts)
    except (AttributeError, TypeError, ValueError, UnicodeError, IndexError, struct.error):
        return None


def _associate_pdu(pdu_type: int, primitive, contexts: list[bytes]) -> bytes | None:
    """An A-ASSOCIATE-RQ (0x01) or -AC (0x02) PDU of *primitive* around its
    encoded presentation context items *contexts*; None for user
    information only pynetdicom encodes or AE titles over 16 bytes."""
    user = []
    for sub in primitive.user_information:
        encoder = _USER_INFO_ENCODERS.get(type(sub).__name__)
        if encoder is None:
            return None
        user.append(_item(*encoder(sub)))
    called = primitive.called_ae_title.encode("ascii")
    calling = primitive.calling_ae_title.encode("ascii")
    if len(called) > 16 or len(calling) > 16:
        return None
    body = b"".join([
        struct.pack(">HH", 1, 0), called.ljust(16), calling.ljust(16), bytes(32),
        _item(0x10, _uid_bytes(primitive.application_context_name)),
        *contexts,
        _item(0x50, b"".join(user)),
    ])
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _replace_send_action(action: str, encode, primitive_of) -> None:
    """Replace the state machine's *action* (send an A-ASSOCIATE PDU) in
    pynetdicom's table by one that writes ``encode(primitive_of(queued))``:
    the same primitive taken from the same queue, the same bytes on the
    socket, the same next state.  pynetdicom's own action runs when an
    ``EVT_PDU_SENT`` handler is bound (it is given the PDU object) or
    *encode* gives None."""
    from pynetdicom import evt, fsm

    with _hook_lock:
        description, original, next_state = fsm.ACTIONS[action]
        if getattr(original, "_osx_hook", False):
            return

        def send(dul) -> str:
            queued = dul.to_provider_queue.queue[0] if dul.to_provider_queue.queue else None
            primitive = primitive_of(queued) if queued is not None else None
            raw = None
            if primitive is not None and dul.socket is not None \
                    and not dul.assoc.get_handlers(evt.EVT_PDU_SENT):
                raw = encode(primitive)
            if raw is None:
                return original(dul)
            dul.to_provider_queue.get(False)
            dul.socket.send(raw)
            return next_state

        send._osx_hook = True  # type: ignore[attr-defined]
        fsm.ACTIONS[action] = (description, send, next_state)


def install_fast_associate_rq() -> None:
    """Send association requests encoded by :func:`encode_associate_rq`
    (action AE-2: send the A-ASSOCIATE-RQ once connected; see
    :func:`_replace_send_action`)."""
    _replace_send_action("AE-2", encode_associate_rq, lambda queued: getattr(queued, "request", None))


def encode_associate_ac(primitive) -> bytes | None:
    """The A-ASSOCIATE-AC PDU (PS3.8 9.3.3) of an acceptor's A-ASSOCIATE
    (accept) primitive, byte for byte what pynetdicom encodes, built
    directly: ~1 ms less to answer a dcmtk ``getscu``'s 121 contexts and
    role selections.  None for what only pynetdicom encodes (see
    :func:`encode_associate_rq`)."""
    try:
        contexts = [_item(0x21, bytes((int(cx.context_id), 0, int(cx.result), 0))
                          + _item(0x40, _uid_bytes(cx.transfer_syntax[0])))
                    for cx in primitive.presentation_context_definition_results_list]
        return _associate_pdu(0x02, primitive, contexts)
    except (AttributeError, TypeError, ValueError, UnicodeError, IndexError, struct.error):
        return None


def install_fast_associate_ac() -> None:
    """Send association acceptances encoded by :func:`encode_associate_ac`
    (action AE-7; see :func:`_replace_send_action`)."""
    _replace_send_action("AE-7", encode_associate_ac, lambda queued: queued)


# --------------------------------------------------------------------------- A-ASSOCIATE-RQ received
#: The (sub-)item types :func:`associate_rq_primitive` reads; any other
#: (extended negotiation, user identity, an unknown type) leaves the whole
#: request to pynetdicom.
_RQ_SUB_ITEMS = (0x51, 0x52, 0x54, 0x55)
_RQ_ITEMS: dict[tuple[bytes, bool], object] = {}
_RQ_ITEMS_LIMIT = 4096
_PYNETDICOM = object()  # "let pynetdicom read it"


def _rq_item(raw: bytes, conformance: bool):
    """What pynetdicom makes of the received (sub-)item *raw* (type,
    reserved, length, body) under UID conformance setting *conformance*:
    read by its own item class, once per distinct item -- a UID, or for
    user information a primitive to copy -- or ``_PYNETDICOM`` where
    pynetdicom would refuse or warn about it (it then reads the request
    itself, and says so as it always does)."""
    key = (raw, conformance)
    try:
        return _RQ_ITEMS[key]
    except KeyError:
        pass
    from pynetdicom.pdu_items import PDU_ITEM_TYPES

    value = _PYNETDICOM
    try:
        kind = raw[0]
        item = PDU_ITEM_TYPES[kind]()
        item.decode(raw)
        if kind == 0x10:
            value = item.application_context_name
        elif kind == 0x30:
            value = item.abstract_syntax_name
        elif kind == 0x40:
            uid = item.transfer_syntax_name
            if _quiet_syntax(uid):
                value = uid
        elif kind in _RQ_SUB_ITEMS:
            value = item.to_primitive()
    except Exception:  # noqa: BLE001 - pynetdicom's own reading reports it
        value = _PYNETDICOM
    if len(_RQ_ITEMS) >= _RQ_ITEMS_LIMIT:
        _RQ_ITEMS.clear()
    _RQ_ITEMS[key] = value
    return value


def _rq_items(b: bytes, start: int, end: int):
    """The raw (sub-)items of *b* from *start* to *end*; ValueError where
    one runs past *end*."""
    while start < end:
        stop = start + 4 + (int.from_bytes(b[start + 2:start + 4], "big") if start + 4 <= end
                            else end)
        if stop > end:
            raise ValueError("item runs past its parent")
        yield b[start:stop]
        start = stop


def associate_rq_primitive(items: bytes, called_ae_title, calling_ae_title):
    """The A-ASSOCIATE primitive of a received A-ASSOCIATE-RQ PDU (PS3.8
    9.3.2) from its variable *items*, equal to what pynetdicom's
    ``A_ASSOCIATE_RQ.decode()`` + ``to_primitive()`` make, or None for what
    only pynetdicom reads (see :func:`_rq_item`): the caller falls back to it.

    pynetdicom decodes an object per item and sub-item and converts and
    checks every UID again on the way: ~4-5 ms for the 120 contexts and
    role selections of a dcmtk ``getscu`` (two thirds of its association
    set-up here), where the same few hundred items recur.  Here each
    distinct item is read once by pynetdicom's own classes and its value
    reused."""
    from pynetdicom import _config
    from pynetdicom.pdu_primitives import A_ASSOCIATE
    from pynetdicom.presentation import PresentationContext

    conformance = _config.ENFORCE_UID_CONFORMANCE

    def context(raw: bytes):
        cx = PresentationContext()
        cx.context_id = raw[4]
        for sub in _rq_items(raw, 8, len(raw)):
            value = _rq_item(sub, conformance)
            if value is _PYNETDICOM or sub[0] not in (0x30, 0x40):
                return None
            if sub[0] == 0x30:
                cx.abstract_syntax = value
            else:
                cx.add_transfer_syntax(value)  # (see _install_transfer_syntax_cache)
        return cx

    try:
        read = _associate_items(items, conformance, 0x20, context)
        if read is None or not read[0]:
            return None
        apps, contexts, user = read
        prim = A_ASSOCIATE()
        prim.calling_ae_title = calling_ae_title
        prim.called_ae_title = called_ae_title
        prim.application_context_name = apps[0]  # (pynetdicom: the first one)
        prim.presentation_context_definition_list.extend(contexts)
        if user is not None:
            prim.user_information = user
    except (ValueError, TypeError, IndexError):
        return None
    return prim


def associate_ac_primitive(items: bytes, reserved_aet, reserved_aec):
    """The A-ASSOCIATE (accept) primitive of a received A-ASSOCIATE-AC PDU
    (PS3.8 9.3.3) from its variable *items*, equal to what pynetdicom's
    ``A_ASSOCIATE_AC.decode()`` + ``to_primitive()`` make, or None for what
    only pynetdicom reads: the acceptance of our C-GET's 128 contexts and
    127 role selections took it ~4 ms (see :func:`associate_rq_primitive`)."""
    from pynetdicom import _config
    from pynetdicom.pdu_primitives import A_ASSOCIATE
    from pynetdicom.presentation import PresentationContext

    conformance = _config.ENFORCE_UID_CONFORMANCE

    def context(raw: bytes):
        cx = PresentationContext()
        cx.context_id = raw[4]
        cx.result = raw[6]
        subs = list(_rq_items(raw, 8, len(raw)))
        if any(sub[0] != 0x40 for sub in subs):
            return None
        if subs and len(subs[0]) > 4:  # (an empty one: no syntax, as pynetdicom)
            value = _rq_item(subs[0], conformance)
            if value is _PYNETDICOM:
                return None
            cx.add_transfer_syntax(value)
        return cx

    try:
        read = _associate_items(items, conformance, 0x21, context)
        if read is None:
            return None
        apps, contexts, user = read
        prim = A_ASSOCIATE()
        # (Not tested when received, PS3.8 Table 9-17: set as pynetdicom sets them.)
        prim._called_ae_title = reserved_aet
        prim._calling_ae_title = reserved_aec
        if apps:
            prim.application_context_name = apps[-1]  # (pynetdicom: the last one)
        prim.presentation_context_definition_results_list.extend(contexts)
        if user is not None:
            prim.user_information = user
        prim.result = 0x00
    except (ValueError, TypeError, IndexError):
        return None
    return prim


def _associate_items(items: bytes, conformance: bool, context_type: int, read_context):
    """(application context names, presentation contexts, user information
    items or None when there is no such item) of an A-ASSOCIATE PDU's
    variable *items*, each context item of *context_type* read by
    ``read_context(raw)``; None where anything is left to pynetdicom."""
    apps, contexts, user = [], [], None
    for raw in _rq_items(items, 0, len(items)):
        kind = raw[0]
        if kind == 0x10:
            value = _rq_item(raw, conformance)
            if value is _PYNETDICOM:
                return None
            apps.append(value)
        elif kind == context_type:
            cx = read_context(raw)
            if cx is None:
                return None
            contexts.append(cx)
        elif kind == 0x50:
            user = _user_items(raw, conformance)
            if user is None:
                return None
        else:
            return None
    return apps, contexts, user


def _user_items(raw: bytes, conformance: bool) -> list | None:
    """Fresh copies of the user information sub-items of item *raw* (see
    :func:`_rq_item`); None if any is left to pynetdicom."""
    user = []
    for sub in _rq_items(raw, 4, len(raw)):
        value = _rq_item(sub, conformance)
        if value is _PYNETDICOM or sub[0] not in _RQ_SUB_ITEMS:
            return None
        dup = object.__new__(type(value))  # (a shallow copy: str, int, bool values)
        dup.__dict__.update(value.__dict__)
        user.append(dup)
    return user


def _quick_pdu_class(base, build):
    """*base* (pynetdicom's A_ASSOCIATE_RQ or _AC) whose ``decode`` reads
    the fixed fields as pynetdicom does and keeps the variable items' bytes,
    whose ``to_primitive`` is ``build(items, *the two AE fields)`` (falling
    back to pynetdicom's on None), and whose ``variable_items`` are decoded
    by pynetdicom only if someone asks."""
    ae_fields = [name for (_, _), name, _, _ in base()._decoders
                 if name not in ("protocol_version", "variable_items")]

    class Quick(base):
        _osx_items: list

        @property  # type: ignore[override]
        def variable_items(self) -> list:
            raw = self.__dict__.pop("_osx_raw", None)
            if raw is not None:
                self._osx_items = self._wrap_generate_items(raw)
            return self._osx_items

        @variable_items.setter
        def variable_items(self, value: list) -> None:
            self.__dict__.pop("_osx_raw", None)
            self._osx_items = value

        def decode(self, bytestream: bytes) -> None:
            for (offset, length), name, func, args in self._decoders:
                if name == "variable_items":
                    self.__dict__["_osx_raw"] = bytestream[offset:]
                else:
                    setattr(self, name, func(bytestream[offset:offset + length], *args))

        def to_primitive(self):
            raw = self.__dict__.get("_osx_raw")
            if raw is not None:
                prim = build(raw, *(getattr(self, name) for name in ae_fields))
                if prim is not None:
                    return prim
            return super().to_primitive()

    Quick.__name__ = Quick.__qualname__ = f"Quick{base.__name__}"
    return Quick


def install_fast_associate_decode() -> None:
    """Read received association requests and acceptances with
    :func:`associate_rq_primitive` / :func:`associate_ac_primitive`.

    Wraps pynetdicom's ``DULServiceProvider._decode_pdu``: an A-ASSOCIATE-RQ
    or -AC PDU becomes a subclass of pynetdicom's own (see
    :func:`_quick_pdu_class`).  pynetdicom's own path runs while an
    ``EVT_DATA_RECV`` or ``EVT_PDU_RECV`` handler is bound (pynetdicom's
    debug logger is one: it looks handlers up by the PDU's exact class)."""
    from pynetdicom import evt
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ

    with _hook_lock:
        original = DULServiceProvider._decode_pdu
        if getattr(original, "_osx_hook", False):
            return
        quick = {b"\x01": (_quick_pdu_class(A_ASSOCIATE_RQ, associate_rq_primitive), "Evt6"),
                 b"\x02": (_quick_pdu_class(A_ASSOCIATE_AC, associate_ac_primitive), "Evt3")}

        def _decode_pdu(self, bytestream):
            kind = quick.get(bytes(bytestream[:1]))
            if kind is None or self.assoc.get_handlers(evt.EVT_PDU_RECV) \
                    or self.assoc.get_handlers(evt.EVT_DATA_RECV):
                return original(self, bytestream)
            pdu = kind[0]()
            pdu.decode(bytes(bytestream))
            return pdu, kind[1]

        _decode_pdu._osx_hook = True  # type: ignore[attr-defined]
        DULServiceProvider._decode_pdu = _decode_pdu


#: How often a closing association looks whether its DUL has stopped.
KILL_POLL = 0.0001


def install_quick_kill() -> None:
    """Let a closing association notice its DUL stop within 0.1 ms.

    ``Association.kill`` (after every release or abort, on both sides) polls
    ``dul.stop_dul()`` and sleeps 10 ms between tries; the DUL nearly always
    reaches its idle state a moment after the first try, so each association
    ended ~10-12 ms after its release was done.  The same loop, polling every
    :data:`KILL_POLL` seconds (0.5 ms until a C-MOVE's end was measured: its
    sub-association's release then took 0.6 ms from the peer's answer, on
    the way to the final response; a handful of polls costs nothing).
    """
    from pynetdicom.association import Association

    with _hook_lock:
        if getattr(Association.kill, "_osx_hook", False):
            return

        def kill(self) -> None:
            self._reactor_checkpoint.set()
            self._kill = True
            self.is_established = False
            self._is_paused = True
            ev = getattr(self, "_osx_reactor_event", None)
            if ev is not None:
                ev.set()  # its reactor may be waiting out REACTOR_IDLE_WAIT
            while self.dul.is_alive() and not self.dul.stop_dul():
                time.sleep(KILL_POLL)

        kill._osx_hook = True  # type: ignore[attr-defined]
        Association.kill = kill


def install_association_hooks() -> None:
    """The association set-up and tear-down speed-ups above (process-wide;
    for the client and for the listener, whose C-MOVE sub-associations are
    requests too)."""
    install_uid_cache()
    install_fast_associate_rq()
    install_fast_associate_decode()
    install_fast_associate_ac()
    install_quick_kill()


# --------------------------------------------------------------------------- P-DATA
#: P-DATA-TF PDU header with its one PDV item's header: PDU type 04, reserved,
#: PDU length, PDV item length, presentation context ID, message control header.
_PDU_PDV = struct.Struct(">BBIIBB")


def message_bytes(cx: int, command: bytes, dataset: bytes | None, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs of one DIMSE message, encoded, back to back.

    Byte for byte what pynetdicom sends for the message (``encode_msg``: one
    PDV per PDU, fragments of at most *max_pdu* - 6 bytes, *max_pdu* being
    the peer's maximum PDU length, 0 for unlimited; an empty data set sends
    nothing), built with one copy of the data set instead of three.
    """
    return b"".join(message_parts(cx, command, dataset, max_pdu))


def message_parts(cx: int, command: bytes, dataset: bytes | None, max_pdu: int) -> list:
    """:func:`message_bytes` as the pieces to join: each PDU's header, then
    its fragment (a view of *command* or *dataset*, not a copy)."""
    step = max_pdu - 6 if max_pdu else 0
    parts: list = []

    def frags(data: bytes, more: int, last: int) -> None:
        n = len(data)
        if not step or n <= step:
            parts.append(_PDU_PDV.pack(4, 0, n + 6, n + 2, cx, last))
            parts.append(data)
            return
        view = memoryview(data)
        chunks = [view[i:i + step] for i in range(0, n, step)]
        m = len(chunks[-1])
        # (Every PDU but the last has the same header: 32 of them for a 512 KB
        # image to a 16 KB peer.)
        pieces: list = [_PDU_PDV.pack(4, 0, step + 6, step + 2, cx, more)] * (2 * len(chunks))
        pieces[-2] = _PDU_PDV.pack(4, 0, m + 6, m + 2, cx, last)
        pieces[1::2] = chunks
        parts.extend(pieces)

    frags(command, 0x01, 0x03)
    if dataset:
        frags(dataset, 0x00, 0x02)
    return parts


class RawMessage:
    """Marker base of :func:`raw_pdata` primitives (see :func:`install_raw_pdata`)."""


def raw_pdata(cx: int, command: bytes, dataset: bytes | None, max_pdu: int):
    """One P-DATA primitive that carries a whole DIMSE message's encoded PDUs.

    Queued with ``dul.send_pdu`` like any P-DATA request, so it keeps its
    place among the association's other outgoing messages; the DUL's state
    machine handles it as ONE P-DATA request (event 9, action DT-1) and
    writes all its PDUs with one ``send`` -- instead of one reactor cycle,
    one PDU object, three copies of the fragment and one system call per
    PDU (32 of each for a 512 KB image to a 16 KB peer).  The PDUs are kept
    as :func:`message_parts`: :func:`send_pdata` writes them with one
    gathering ``sendmsg``, without copying the data set into one buffer
    first; they are joined only if the primitive is queued.  The first call
    installs :func:`install_raw_pdata`.
    """
    return _raw_primitive(cx, message_parts(cx, command, dataset, max_pdu), dataset is not None)


def _raw_primitive(cx: int, raw: bytes | list, has_dataset: bool):
    """The :func:`raw_pdata` primitive of already encoded PDUs (one message,
    or several back to back): their bytes, or the pieces to join."""
    cls = _RAW_CLASS.get("cls")
    if cls is None:
        from pynetdicom.pdu_primitives import P_DATA

        install_raw_pdata()
        cls = _RAW_CLASS["cls"] = type("RawPData", (P_DATA, RawMessage), {})
    prim = cls()
    prim._osx_raw = raw
    # What anything that inspects P-DATA primitives sees: the first PDV.
    prim.presentation_data_value_list.append((cx, bytes([0x01 if has_dataset else 0x03])))
    return prim


_RAW_CLASS: dict[str, type] = {}


def install_raw_pdata() -> None:
    """Let pynetdicom's state machine send :func:`raw_pdata` primitives.

    Wraps the ``P_DATA_TF`` name in ``pynetdicom.fsm`` (actions DT-1 and
    AR-7 build the PDU from the primitive): a raw primitive becomes a real
    ``P_DATA_TF`` whose ``encode()`` returns the prebuilt bytes; every other
    primitive goes to the original class.
    """
    import pynetdicom.fsm as fsm

    with _hook_lock:
        if getattr(fsm.P_DATA_TF, "_osx_hook", False):
            return
        original = fsm.P_DATA_TF

        def P_DATA_TF(primitive=None):  # noqa: N802 - stands in for the class
            raw = getattr(primitive, "_osx_raw", None)
            if raw is None:
                return original(primitive)
            pdu = original()
            data = raw if isinstance(raw, bytes) else b"".join(raw)
            pdu.encode = lambda: data  # type: ignore[method-assign]
            return pdu

        P_DATA_TF._osx_hook = True  # type: ignore[attr-defined]
        fsm.P_DATA_TF = P_DATA_TF


def command_set(elements: list[tuple[int, str, object]]) -> bytes:
    """An implicit VR little endian command set with its (0000,0000) group length."""
    return _with_group_length(encode_elements(elements, None, True))


#: (0000,0000) Command Group Length: tag, value length 4, the value.
_GROUP_LENGTH = struct.Struct("<HHII")


def _with_group_length(body: bytes) -> bytes:
    """The encoded elements *body* of a command set (implicit VR little
    endian) preceded by its (0000,0000) Command Group Length."""
    return _GROUP_LENGTH.pack(0, 0, 4, len(body)) + body


# --------------------------------------------------------------------------- C-FIND
class FindResponder:
    """Sends C-FIND pending responses for one request straight to the DUL.

    Responses produced back to back go out together: up to
    :attr:`BATCH` of them (or :attr:`BATCH_BYTES`, or whatever is there
    once :attr:`BATCH_SECONDS` have passed since the first) in one DUL
    primitive and one ``send`` -- one hand-over to the DUL thread instead of
    one per matching study.  :meth:`flush` before anything else is sent for
    the request (its final status, or a response pynetdicom encodes)."""

    BATCH = 32
    BATCH_BYTES = 256 * 1024
    BATCH_SECONDS = 0.02

    def __init__(self, assoc, cx_id: int, transfer_syntax: str, sop_class: str, msg_id: int,
                 status: int):
        self.assoc = assoc
        self.cx_id = cx_id
        self.implicit = transfer_syntax == _IMPLICIT_LE
        self.max_pdu = int(assoc.dimse.maximum_pdu_size or 0)
        self.command = command_set([
            (0x00000002, "UI", str(sop_class)),
            (0x00000100, "US", _C_FIND_RSP),
            (0x00000120, "US", int(msg_id)),
            (0x00000800, "US", _DATASET_PRESENT),
            (0x00000900, "US", int(status)),
        ])
        self.sent = 0
        self._buf: list[bytes] = []
        self._buf_bytes = 0
        self._buf_since = 0.0

    @classmethod
    def for_event(cls, event, status: int) -> "FindResponder | None":
        """A responder for a C-FIND event, or None when the context's syntax
        is not implicit/explicit VR little endian (pynetdicom's path then)."""
        try:
            cx = event.context
            ts = str(cx.transfer_syntax)
            if ts not in (_IMPLICIT_LE, _EXPLICIT_LE):
                return None
            assoc = event.assoc
            if getattr(assoc, "dul", None) is None or not hasattr(assoc.dul, "send_pdu"):
                return None
            return cls(assoc, int(cx.context_id), ts, str(event.request.AffectedSOPClassUID),
                       int(event.request.MessageID), status)
        except Exception:  # noqa: BLE001 - any surprise: the ordinary path
            return None

    def encode(self, elements: list[tuple[int, str, object]], charset: str | None) -> bytes:
        return encode_elements(elements, charset, self.implicit)

    def send(self, identifier: bytes) -> None:
        raw = message_bytes(self.cx_id, self.command, identifier, self.max_pdu)
        if not self._buf:
            self._buf_since = time.monotonic()
        self._buf.append(raw)
        self._buf_bytes += len(raw)
        self.sent += 1
        if (len(self._buf) >= self.BATCH or self._buf_bytes >= self.BATCH_BYTES
                or time.monotonic() - self._buf_since >= self.BATCH_SECONDS):
            self.flush()

    def flush(self) -> None:
        """Send the responses held back so far."""
        if self._buf:
            raw = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
            self._buf.clear()
            self._buf_bytes = 0
            self.assoc.dul.send_pdu(_raw_primitive(self.cx_id, raw, True))


# --------------------------------------------------------------------------- stored files
def split_part10(data: bytes) -> tuple[str, str, str, int]:
    """(SOP class, SOP instance, transfer syntax, offset of the data set) of a Part 10 file.

    Reads only the (explicit VR little endian) file meta group; raises
    ``ValueError`` when it is not there.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise ValueError("no DICM prefix")
    pos = 132
    found: dict[int, str] = {}
    n = len(data)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV"):
            length = struct.unpack_from("<I", data, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            start = pos + 8
        if length == 0xFFFFFFFF or start + length > n:
            raise ValueError("bad file meta element")
        if elem in (0x0002, 0x0003, 0x0010):
            found[elem] = data[start:start + length].decode("ascii", "replace").rstrip("\x00 ")
        pos = start + length
    if len(found) != 3:
        raise ValueError("file meta lacks SOP class, instance or transfer syntax")
    return found[0x0002], found[0x0003], found[0x0010], pos


#: transfer syntax UID -> (implicit VR, little endian, deflated)
_SYNTAX_FLAGS: dict[str, tuple[bool, bool, bool]] = {}


def _syntax_flags(ts: str) -> tuple[bool, bool, bool]:
    flags = _SYNTAX_FLAGS.get(ts)
    if flags is None:
        uid = UID(ts)
        flags = (uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)
        if len(_SYNTAX_FLAGS) < 256:
            _SYNTAX_FLAGS[ts] = flags
    return flags


class StoredInstance(Dataset):
    """A data set to yield from a C-GET/C-MOVE handler: the UIDs pynetdicom
    needs, plus the stored file's bytes (sent as they are by the encode hook)."""

    def __init__(self, data: bytes, sop_class: str, sop_instance: str, ts: str, offset: int):
        from pydicom import config
        from pydicom.dataelem import DataElement

        super().__init__()
        # (The UIDs come from the stored file, checked when it was stored:
        # no second validation by regular expression per element.)
        self[0x00080016] = DataElement(0x00080016, "UI", sop_class, validation_mode=config.IGNORE)
        self[0x00080018] = DataElement(0x00080018, "UI", sop_instance, validation_mode=config.IGNORE)
        meta = FileMetaDataset()
        meta[0x00020010] = DataElement(0x00020010, "UI", ts, validation_mode=config.IGNORE)
        self.file_meta = meta
        object.__setattr__(self, "_osx_file", data)
        object.__setattr__(self, "_osx_offset", offset)
        # (What a sender reads per instance, without the Dataset lookups.)
        object.__setattr__(self, "_osx_uids", (str(sop_class), str(sop_instance), str(ts)))

    @classmethod
    def from_file(cls, data: bytes) -> "StoredInstance":
        sop_class, sop_instance, ts, offset = split_part10(data)
        return cls(data, sop_class, sop_instance, ts, offset)

    def encoded_for(self, implicit: bool, little: bool, deflated: bool) -> memoryview | None:
        """The stored data set bytes when they are already in that encoding
        (a view into the file's bytes, not a copy)."""
        ts_implicit, ts_little, ts_deflated = _syntax_flags(self._osx_uids[2])
        if deflated or ts_deflated:
            return None
        if ts_implicit == implicit and ts_little == little:
            return memoryview(self._osx_file)[self._osx_offset:]
        return None

    def as_stored(self) -> memoryview | None:
        """The stored data set bytes, to send in the stored syntax (None for a
        deflated one: pynetdicom's path re-encodes it)."""
        return None if _syntax_flags(self._osx_uids[2])[2] else \
            memoryview(self._osx_file)[self._osx_offset:]

    def full(self) -> Dataset:
        """The whole instance parsed (for a re-encoding to another syntax)."""
        from pydicom import dcmread

        return dcmread(io.BytesIO(self._osx_file))



def install_encode_hook() -> None:
    """Make pynetdicom's ``send_c_store`` send a :class:`StoredInstance` as stored.

    Wraps ``pynetdicom.association.encode`` (the name ``send_c_store`` calls);
    every other data set goes to the original function unchanged.
    """
    import pynetdicom.association as pa

    with _hook_lock:
        if getattr(pa.encode, "_osx_hook", False):
            return
        original = pa.encode

        def encode(ds, is_implicit_vr, is_little_endian, deflated=False):
            if isinstance(ds, StoredInstance):
                raw = ds.encoded_for(is_implicit_vr, is_little_endian, deflated)
                if raw is not None:
                    return raw
                ds = ds.full()
            return original(ds, is_implicit_vr, is_little_endian, deflated)

        encode._osx_hook = True  # type: ignore[attr-defined]
        pa.encode = encode


# --------------------------------------------------------------------------- C-STORE-RSP
_C_STORE_RSP = 0x8001
_NO_DATASET = 0x0101


def store_rsp_command(primitive) -> bytes | None:
    """The encoded command set of a plain C-STORE response primitive
    (None: something only pynetdicom's general path encodes)."""
    if getattr(primitive, "OffendingElement", None) is not None or primitive.DataSet is not None:
        return None
    status = primitive.Status
    msg_id = primitive.MessageIDBeingRespondedTo
    if status is None or msg_id is None:
        return None
    elements: list[tuple[int, str, object]] = [
        (0x00000100, "US", _C_STORE_RSP),
        (0x00000120, "US", int(msg_id)),
        (0x00000800, "US", _NO_DATASET),
        (0x00000900, "US", int(status)),
    ]
    if primitive.AffectedSOPClassUID is not None:
        elements.append((0x00000002, "UI", str(primitive.AffectedSOPClassUID)))
    if primitive.AffectedSOPInstanceUID is not None:
        elements.append((0x00001000, "UI", str(primitive.AffectedSOPInstanceUID)))
    comment = primitive.ErrorComment
    if comment:
        elements.append((0x00000902, "LO", str(comment)))
    try:
        return command_set(elements)
    except EncodeError:
        return None


#: Four US elements of a command set, tag by tag: (group, element, length 2, value) x 4.
_FOUR_US = struct.Struct("<HHIHHHIHHHIHHHIH")
#: An implicit VR element's header: group, element, value length.
_ELEMENT_HEADER = struct.Struct("<HHI")


def _store_command(cls: bytes, inst: bytes, us: bytes, tail: bytes = b"") -> bytes:
    """A C-STORE command set: (0000,0002) *cls*, the encoded US elements *us*
    (:data:`_FOUR_US`), (0000,1000) *inst* (encoded values, see
    :func:`_uid_values`), then the encoded elements *tail* (tags above
    (0000,1000)), with its group length."""
    return _with_group_length(b"".join((_ELEMENT_HEADER.pack(0, 0x0002, len(cls)), cls, us,
                                        _ELEMENT_HEADER.pack(0, 0x1000, len(inst)), inst, tail)))


def _uid_values(sop_class, sop_instance) -> tuple[bytes, bytes] | None:
    """The two UIDs of a C-STORE command as encoded values (ASCII, padded
    to even length); None when either is missing, empty or not ASCII."""
    if sop_class is None or sop_instance is None:
        return None
    try:
        cls = str(sop_class).encode("ascii")
        inst = str(sop_instance).encode("ascii")
    except UnicodeError:
        return None
    if not cls or not inst:
        return None
    return (cls + b"\x00" if len(cls) & 1 else cls), (inst + b"\x00" if len(inst) & 1 else inst)


def store_rsp_pdu(cx: int, msg_id, sop_class, sop_instance, status: int) -> bytes | None:
    """The P-DATA-TF PDU of a C-STORE response with *status* alone (what
    :func:`store_rsp_command` + :func:`message_bytes` make of the response
    primitive), built directly; None for what that path must check (a
    missing message ID or UID, a UID that is not ASCII)."""
    uids = _uid_values(sop_class, sop_instance)
    if (uids is None or type(msg_id) is not int or not 0 <= msg_id <= 0xFFFF
            or type(status) is not int or not 0 <= status <= 0xFFFF):
        return None
    cmd = _store_command(*uids, _FOUR_US.pack(0, 0x0100, 2, _C_STORE_RSP, 0, 0x0120, 2, msg_id,
                                              0, 0x0800, 2, _NO_DATASET, 0, 0x0900, 2, status))
    return _PDU_PDV.pack(4, 0, len(cmd) + 6, len(cmd) + 2, cx, 0x03) + cmd


def find_rsp_command(primitive) -> bytes | None:
    """The command set of a C-FIND response without identifier (the final
    one, or a failure), None when pynetdicom's path is needed."""
    if primitive.Identifier is not None or getattr(primitive, "OffendingElement", None) is not None:
        return None
    if primitive.Status is None or primitive.MessageIDBeingRespondedTo is None:
        return None
    elements: list[tuple[int, str, object]] = [
        (0x00000100, "US", _C_FIND_RSP),
        (0x00000120, "US", int(primitive.MessageIDBeingRespondedTo)),
        (0x00000800, "US", _NO_DATASET),
        (0x00000900, "US", int(primitive.Status)),
    ]
    if primitive.AffectedSOPClassUID is not None:
        elements.append((0x00000002, "UI", str(primitive.AffectedSOPClassUID)))
    if primitive.ErrorComment:
        elements.append((0x00000902, "LO", str(primitive.ErrorComment)))
    try:
        return command_set(elements)
    except EncodeError:
        return None


def retrieve_pending_command(primitive, command_field: int) -> bytes | None:
    """The command set of a PENDING C-MOVE / C-GET response without identifier
    (None for anything else: final responses take pynetdicom's path, where
    the listener's ``EVT_DIMSE_SENT`` handler may put its own status on them)."""
    if primitive.Status != 0xFF00 or primitive.Identifier is not None:
        return None
    if primitive.ErrorComment or getattr(primitive, "OffendingElement", None) is not None:
        return None
    if primitive.MessageIDBeingRespondedTo is None:
        return None
    elements: list[tuple[int, str, object]] = [
        (0x00000100, "US", command_field),
        (0x00000120, "US", int(primitive.MessageIDBeingRespondedTo)),
        (0x00000800, "US", _NO_DATASET),
        (0x00000900, "US", 0xFF00),
    ]
    if primitive.AffectedSOPClassUID is not None:
        elements.append((0x00000002, "UI", str(primitive.AffectedSOPClassUID)))
    for tag, kw in ((0x00001020, "NumberOfRemainingSuboperations"),
                    (0x00001021, "NumberOfCompletedSuboperations"),
                    (0x00001022, "NumberOfFailedSuboperations"),
                    (0x00001023, "NumberOfWarningSuboperations")):
        v = getattr(primitive, kw)
        if v is not None:
            elements.append((tag, "US", int(v)))
    try:
        return command_set(elements)
    except EncodeError:
        return None


def store_rq_command(primitive) -> bytes | None:
    """The encoded command set of a C-STORE request primitive (None: use pynetdicom)."""
    if primitive.MessageID is None or primitive.AffectedSOPClassUID is None \
            or primitive.AffectedSOPInstanceUID is None or primitive.Priority is None:
        return None
    return store_rq_bytes(int(primitive.MessageID), primitive.AffectedSOPClassUID,
                          primitive.AffectedSOPInstanceUID, int(primitive.Priority),
                          primitive.MoveOriginatorApplicationEntityTitle or None,
                          primitive.MoveOriginatorMessageID)


def store_rq_bytes(msg_id, sop_class, sop_instance, priority: int = 2,
                   originator_aet: str | None = None, originator_id=None) -> bytes | None:
    """What :func:`store_rq_command` encodes for a request primitive with
    these values, encoded from the values themselves (the primitive's
    setters check each UID with a regular expression); None for anything
    the primitive must check or refuse (then build it)."""
    from pynetdicom import _config

    if (type(msg_id) is not int or not 0 <= msg_id <= 0xFFFF or priority not in (0, 1, 2)
            or (originator_id is not None
                and (type(originator_id) is not int or not 0 <= originator_id <= 0xFFFF))):
        return None
    uids = _uid_values(sop_class, sop_instance)
    if uids is None:
        return None
    tail = b""
    if originator_aet is not None:
        aet = str(originator_aet).strip()
        if (not _config.USE_SHORT_DIMSE_AET or not aet or len(aet) > 16 or not aet.isascii()
                or not aet.isprintable() or "\\" in aet):
            return None
        raw = aet.encode("ascii")
        raw += b" " if len(raw) & 1 else b""
        tail = _ELEMENT_HEADER.pack(0, 0x1030, len(raw)) + raw
    if originator_id is not None:
        tail += struct.pack("<HHIH", 0, 0x1031, 2, originator_id)
    return _store_command(*uids, _FOUR_US.pack(0, 0x0100, 2, 0x0001, 0, 0x0110, 2, msg_id,
                                               0, 0x0700, 2, priority, 0, 0x0800, 2, _DATASET_PRESENT),
                          tail)


def _sent_handlers_ignore_store_rsp(assoc) -> bool:
    from pynetdicom import evt

    for handler, _args in assoc.get_handlers(evt.EVT_DIMSE_SENT) or []:
        if not getattr(handler, "_osx_ignores_store_rsp", False):
            return False
    return True


def ignores_store_rsp(fn):
    """Mark an ``EVT_DIMSE_SENT`` handler that does nothing for C-STORE requests
    and responses, C-FIND responses and pending C-MOVE / C-GET responses (so
    that those may skip building the pydicom message it would receive)."""
    fn._osx_ignores_store_rsp = True
    return fn


#: Shortest time between two PENDING responses of one C-GET / C-MOVE after
#: the first (PS3.4 C.4.2.3.1, C.4.3.3.1: pending responses are optional).
#: Each is a message for both ends per instance sent; a progress bar needs
#: a few a second.
PENDING_INTERVAL = 0.1


def _pending_too_soon(dimse, primitive) -> bool:
    """Whether this PENDING C-GET/C-MOVE response follows the previous one of
    the same request by less than :data:`PENDING_INTERVAL` (then it is not
    sent; the final response carries the totals)."""
    if primitive.Status != 0xFF00 or primitive.MessageIDBeingRespondedTo is None:
        return False
    now = time.monotonic()
    last: dict = dimse.__dict__.setdefault("_osx_last_pending", {})
    msg_id = int(primitive.MessageIDBeingRespondedTo)
    before = last.get(msg_id)
    if before is not None and now - before < PENDING_INTERVAL:
        return True
    last[msg_id] = now
    return False


def send_pdata(dul, primitive) -> None:
    """Send a :func:`raw_pdata` primitive: written at once by the calling
    thread when nothing is queued before it and the DUL is between actions,
    as action DT-1 would write it a moment later; otherwise queued with
    ``dul.send_pdu`` as usual.

    On the DUL's own thread (a request served inline, see
    :func:`serve_stores_inline`) that is always safe.  Another thread (a
    C-GET's sub-operations on the association's reactor thread, a C-MOVE's
    stores on its sub-association) writes itself only on a DUL given a send
    lock by :func:`install_send_lock`, under that lock, which the DUL holds
    for each of its state machine's actions: the two never write at once,
    and nothing queued earlier is overtaken.  Measured, a C-GET of 100 CT
    from the listener: each handover to the DUL thread (a wake-up and a
    thread switch, ~60 us of the sender's time here) was made twice per
    instance, for the store and for the pending response."""
    if not _write_now(dul, primitive._osx_raw):
        dul.send_pdu(primitive)


def send_raw(dul, cx: int, raw: bytes | list, has_dataset: bool) -> None:
    """:func:`send_pdata` of already encoded PDUs (*raw*: one message's
    bytes or pieces, as :func:`raw_pdata` keeps them), the primitive made
    only when they have to be queued."""
    if not _write_now(dul, raw):
        dul.send_pdu(_raw_primitive(cx, raw, has_dataset))


def _write_now(dul, raw: bytes | list) -> bool:
    """Write encoded PDUs *raw* on *dul*'s socket from this thread, if
    :func:`send_pdata` may (True: written, or Evt17 queued on error)."""
    from pynetdicom import evt

    lock = getattr(dul, "_osx_send_lock", None)
    if ((lock is not None or threading.get_ident() == dul.ident) and dul.socket is not None
            and not dul.assoc.get_handlers(evt.EVT_PDU_SENT)):
        with lock if lock is not None else contextlib.nullcontext():
            if (not dul.to_provider_queue.queue and dul.event_queue.empty()
                    and dul.state_machine.current_state == "Sta6"):
                if isinstance(raw, bytes) or not _send_gathered(dul.socket, raw):
                    dul.socket.send(raw if isinstance(raw, bytes) else b"".join(raw))
                return True
    return False


def _send_gathered(transport, parts: list) -> bool:
    """Write *parts* to pynetdicom's association socket *transport* with
    ``sendmsg`` (what its ``send`` does for one buffer: an error puts
    Evt17, "transport closed", on the DUL's queue).  False, having sent
    nothing, where that cannot be done: a TLS socket (no ``sendmsg``), or
    someone listening to EVT_DATA_SENT (which carries the bytes)."""
    import ssl

    from pynetdicom import evt

    sock = getattr(transport, "socket", None)
    if sock is None or not hasattr(sock, "sendmsg") or isinstance(sock, ssl.SSLSocket) \
            or transport.assoc.get_handlers(evt.EVT_DATA_SENT):
        return False
    try:
        write_gathered(sock.sendmsg, parts)
    except Exception:  # noqa: BLE001 - as AssociationSocket.send
        transport.event_queue.put("Evt17")
    return True


def install_send_lock(dul) -> None:
    """Give *dul* the send lock of :func:`send_pdata` (call before the DUL
    runs or while nothing is queued for it): its state machine's actions run
    holding it.  Re-entrant: an action's own event handlers may send."""
    if getattr(dul, "_osx_send_lock", None) is not None:
        return
    lock = threading.RLock()
    sm = dul.state_machine
    do_action = sm.do_action

    def locked_do_action(event):
        with lock:
            return do_action(event)

    sm.do_action = locked_do_action
    dul._osx_send_lock = lock


def install_dimse_hook() -> None:
    """Send C-STORE requests and responses without pynetdicom's per-message
    pydicom encoding of the command set.

    Wraps ``DIMSEServiceProvider.send_msg``: a C-STORE-RSP with only the
    usual fields, or a C-STORE-RQ with its data set in memory, on an
    association whose ``EVT_DIMSE_SENT`` handlers (if any) are marked with
    :func:`ignores_store_rsp`, is encoded directly (~1 ms less per message);
    every other message takes the original.
    """
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE

    rsp_encoders = {
        C_FIND: find_rsp_command,
        C_MOVE: lambda p: retrieve_pending_command(p, 0x8021),
        C_GET: lambda p: retrieve_pending_command(p, 0x8010),
    }
    with _hook_lock:
        original = DIMSEServiceProvider.send_msg
        if getattr(original, "_osx_hook", False):
            return

        def send_msg(self, primitive, context_id: int) -> None:
            kind = type(primitive)
            if kind in (C_GET, C_MOVE) and _pending_too_soon(self, primitive):
                return
            if kind in rsp_encoders and primitive.MessageIDBeingRespondedTo is not None:
                try:
                    cmd = rsp_encoders[kind](primitive) if _sent_handlers_ignore_store_rsp(self.assoc) \
                        else None
                except Exception:  # noqa: BLE001 - the general path decides
                    cmd = None
                if cmd is not None:
                    send_pdata(self.dul, raw_pdata(int(context_id), cmd, None,
                                                   int(self.maximum_pdu_size or 0)))
                    return
            if type(primitive) is C_STORE:
                dataset = None
                try:
                    if not _sent_handlers_ignore_store_rsp(self.assoc):
                        cmd = None
                    elif primitive.MessageIDBeingRespondedTo is not None:
                        cmd = store_rsp_command(primitive)
                    elif getattr(primitive, "_dataset_path", None) is None \
                            and primitive.DataSet is not None:
                        cmd = store_rq_command(primitive)
                        dataset = primitive.DataSet.getvalue()
                    else:
                        cmd = None
                except Exception:  # noqa: BLE001 - the general path decides
                    cmd = None
                if cmd is not None:
                    send_pdata(self.dul, raw_pdata(int(context_id), cmd, dataset,
                                                   int(self.maximum_pdu_size or 0)))
                    return
            original(self, primitive, context_id)

        send_msg._osx_hook = True  # type: ignore[attr-defined]
        DIMSEServiceProvider.send_msg = send_msg


# --------------------------------------------------------------------------- received C-STORE
def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str,
                    implementation_uid: str | None = None, version_name: str | None = None) -> bytes:
    """Encoded file meta information group (explicit VR little endian), as
    pynetdicom's ``encode_file_meta(create_file_meta(...))`` writes it."""
    if implementation_uid is None or version_name is None:
        from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

        implementation_uid = implementation_uid or PYNETDICOM_IMPLEMENTATION_UID
        version_name = version_name or PYNETDICOM_IMPLEMENTATION_VERSION
    body = _element(0x00020001, "OB", b"\x00\x01", False) + encode_elements([
        (0x00020002, "UI", str(sop_class)),
        (0x00020003, "UI", str(sop_instance)),
        (0x00020010, "UI", str(transfer_syntax)),
        (0x00020012, "UI", str(implementation_uid)),
        (0x00020013, "SH", str(version_name)),
    ], None, False)
    return _element(0x00020000, "UL", struct.pack("<I", len(body)), False) + body


def received_part10(event) -> bytes:
    """``event.encoded_dataset()`` of a C-STORE event, with the file meta
    encoded directly (the same bytes, ~1 ms less per instance); the very
    bytes it was received into when the fast path made them (see
    :class:`ReceivedDataSet`)."""
    whole = part10_of(event.request, str(event.context.transfer_syntax))
    return whole if whole is not None else event.encoded_dataset()


def received_later(req, transfer_syntax: str) -> bool:
    """Whether :func:`part10_of` (*req*, *transfer_syntax*) will give the
    bytes as received, without decoding anything and so without an error:
    the receiving thread can leave joining them to another."""
    stream = req.DataSet
    return (type(stream) is ReceivedDataSet and stream._lazy  # noqa: SLF001
            and stream._ts == transfer_syntax)


#: (keyword in the data set, in the C-STORE command, name) of the UIDs the
#: two must agree on.
_COMMAND_UIDS = (("SOPInstanceUID", "AffectedSOPInstanceUID", "SOP Instance UID"),
                 ("SOPClassUID", "AffectedSOPClassUID", "SOP Class UID"))


def differs(name: str) -> str:
    """Why a received data set is refused with 0xA900 (see :func:`command_mismatch`)."""
    return f"{name} of data set differs from the command's"


def command_mismatch(hdr, req) -> tuple[str, object, object] | None:
    """(name, value in the data set, value in the command) of the first UID
    in which a received data set (its :class:`~osirix_py.dicom.header.Header`
    *hdr*) differs from its C-STORE command *req*; None when they agree."""
    for keyword, command_keyword, name in _COMMAND_UIDS:
        in_data_set, in_command = hdr.values.get(keyword), getattr(req, command_keyword)
        if str(in_data_set) != str(in_command).strip():
            return name, in_data_set, in_command
    return None


def checked_header(req, data: bytes):
    """The :class:`~osirix_py.dicom.header.Header` of C-STORE request
    *req*'s Part 10 bytes *data*; ``DicomFileError`` when they cannot be
    read or are not the instance the command names (:func:`command_mismatch`)."""
    return _checked(req, read_header(data, name="data set"))


def _checked(req, hdr):
    mismatch = command_mismatch(hdr, req)
    if mismatch is not None:
        raise DicomFileError(f"data set: {differs(mismatch[0])}")
    return hdr


def received_header(req, transfer_syntax: str):
    """:func:`checked_header` of C-STORE request *req*'s received Part 10
    bytes, read from their first part and keeping the pieces they arrived in
    (:func:`~osirix_py.dicom.header.read_header_prefix`): a grouped store
    writes them as they are, without joining the ~0.5 MB of a CT image on a
    thread that holds the GIL meanwhile.  Joined and read whole where that
    does not apply (None where only pynetdicom can make the bytes)."""
    stream = req.DataSet
    if (isinstance(stream, ReceivedDataSet) and stream._lazy and stream._part10 is None
            and transfer_syntax == stream._ts and stream._pieces):
        hdr = read_header_prefix(stream._pieces, name="data set")
        if hdr is not None:
            return _checked(req, hdr)
    data = part10_of(req, transfer_syntax)
    return None if data is None else checked_header(req, data)


def command_uids(req) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) named by C-STORE request *req*, as
    :func:`received_uids` gives the data set's."""
    return str(req.AffectedSOPClassUID).strip(), str(req.AffectedSOPInstanceUID).strip()


def received_uids(req, transfer_syntax: str) -> tuple[str, str] | None:
    """(SOP Class UID, SOP Instance UID) of C-STORE request *req*'s data set,
    read from its first received fragment without joining anything, when
    :func:`received_later` holds and that fragment starts with them (see
    :func:`~osirix_py.dicom.fastheader.peek_sop_uids`); otherwise None."""
    if not received_later(req, transfer_syntax):
        return None
    implicit, little, deflated = _syntax_flags(transfer_syntax)
    pieces = req.DataSet._pieces  # noqa: SLF001 - (head, fragments...)
    if len(pieces) < 2 or not little or deflated:
        return None
    return peek_sop_uids(pieces[1], implicit)


def part10_of(req, transfer_syntax: str) -> bytes | None:
    """The Part 10 bytes of C-STORE request *req*'s data set received in
    *transfer_syntax* (see :func:`received_part10`); None where only
    pynetdicom can make them."""
    stream = req.DataSet
    if isinstance(stream, ReceivedDataSet):
        whole = stream.part10_for(transfer_syntax)
        if whole is not None:
            return whole
    head = part10_head(req, transfer_syntax)
    if head is None or not isinstance(stream, io.BytesIO):
        return None
    return b"".join((head, stream.getvalue()))


class ReceivedDataSet(io.BytesIO):
    """The data set of a C-STORE request received on the fast path, kept as
    the pieces of its Part 10 file (the head: preamble and file meta, then
    the data set's fragments as received), joined into that file's bytes
    once, on first use, by whichever thread needs them (a retrieve's writing
    thread, not the receiving one: see :func:`received_later`).  One copy of
    each received fragment, where a stream and then the file's bytes made
    two (~10 ms of a 100-instance retrieve).  :func:`received_part10` takes
    those bytes as they are; any other use of the stream first fills it with
    the data set (a copy), so that it behaves as the ``io.BytesIO``
    pynetdicom gives."""

    def __init__(self, pieces: tuple, offset: int, transfer_syntax: str):
        super().__init__()
        self._pieces = pieces
        self._part10: bytes | None = None
        self._join_lock = threading.Lock()
        self._offset = offset
        self._ts = transfer_syntax
        self._lazy = True

    def _whole(self) -> bytes:
        whole = self._part10
        if whole is None:
            with self._join_lock:
                whole = self._part10
                if whole is None:
                    whole = self._part10 = b"".join(self._pieces)
                    self._pieces = ()
        return whole

    def part10_for(self, transfer_syntax: str) -> bytes | None:
        """The Part 10 bytes, if the stream was never touched and they were
        made for *transfer_syntax*."""
        return self._whole() if self._lazy and transfer_syntax == self._ts else None

    def _fill(self) -> None:
        if self._lazy:
            self._lazy = False
            io.BytesIO.__init__(self, self._whole()[self._offset:])

    def getvalue(self) -> bytes:
        if self._lazy:
            return self._whole()[self._offset:]
        return super().getvalue()


def _filling(name: str):
    base = getattr(io.BytesIO, name)

    def method(self, *args, **kwargs):
        self._fill()
        return base(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in ("read", "read1", "readinto", "readinto1", "readline", "readlines", "seek", "tell",
              "write", "writelines", "truncate", "getbuffer", "__iter__", "__next__",
              "__getstate__"):
    setattr(ReceivedDataSet, _name, _filling(_name))
del _name


def part10_head(request, transfer_syntax: str) -> bytes | None:
    """What precedes a received C-STORE data set in its Part 10 file:
    preamble, "DICM" and the file meta (see :func:`received_part10`); None
    when the request's UIDs cannot be encoded.  Kept on the request: the
    file written as it arrives and its Part 10 bytes both need it."""
    cached = getattr(request, "_osx_part10_head", None)
    if cached is not None and cached[0] == transfer_syntax:
        return cached[1]
    sop_class = str(request.AffectedSOPClassUID).strip()
    sop_instance = str(request.AffectedSOPInstanceUID).strip()
    try:
        parts = _head_parts(sop_class, transfer_syntax)
        inst = _element(0x00020003, "UI", encode_value("UI", sop_instance, "ascii"), False)
    except (EncodeError, UnicodeError):
        head = None
    else:
        # (0002,0000) counts from (0002,0001) on: all but the 12 bytes of itself.
        head = b"".join((parts[0], struct.pack("<I", parts[2] + len(inst)), parts[1], inst,
                         parts[3]))
    request._osx_part10_head = (transfer_syntax, head)
    return head


#: (SOP Class UID, transfer syntax) -> the constant pieces of a received
#: instance's Part 10 head (see :func:`_head_parts`).
_HEAD_PARTS: dict[tuple[str, str], tuple[bytes, bytes, int, bytes]] = {}


def _head_parts(sop_class: str, transfer_syntax: str) -> tuple[bytes, bytes, int, bytes]:
    """What :func:`file_meta_bytes` writes around the SOP Instance UID, for
    one SOP class and syntax: (preamble + "DICM" + the group length's tag
    and VR, the elements before the instance UID, the length of all
    elements but that UID, the elements after it).  Raises EncodeError."""
    key = (sop_class, transfer_syntax)
    parts = _HEAD_PARTS.get(key)
    if parts is None:
        meta = file_meta_bytes(sop_class, "1", transfer_syntax)
        # The meta group with the one-character instance UID "1" (padded to
        # two bytes): split around that element, whose 8-byte header + 2.
        inst = _element(0x00020003, "UI", b"1\x00", False)
        at = meta.index(inst)
        fixed = meta[12:at], meta[at + len(inst):]
        parts = (b"\x00" * 128 + b"DICM" + meta[:8], fixed[0],
                 len(fixed[0]) + len(fixed[1]), fixed[1])
        if len(_HEAD_PARTS) < 1024:
            _HEAD_PARTS[key] = parts
    return parts


# --------------------------------------------------------------------------- C-STORE SCU
def pause_reactor(assoc) -> None:
    """Block *assoc*'s reactor on its checkpoint before DIMSE messaging.

    pynetdicom 3.0 pauses the reactor inside each send_*() with a flag that
    it checks without a lock, and sets ``_is_paused`` on every tick even when
    it is not going to wait: a reactor that has just passed its checkpoint may
    still read the flag as "paused", go on, and take the peer's C-STORE-RSP
    off the queue ("Received unexpected C-STORE service message"), leaving
    send_c_store() to wait for the DIMSE timeout (seen about once per few
    hundred stores on a loaded 2-core machine).  Clearing the checkpoint
    first and seeing the flag stay set closes most of that window.
    """
    cp = getattr(assoc, "_reactor_checkpoint", None)
    if cp is None or not hasattr(assoc, "_is_paused"):
        return
    cp.clear()
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        if assoc._is_paused:
            time.sleep(0.0002)
            if assoc._is_paused:
                return
        else:
            time.sleep(0.0001)


class PausedSender:
    """C-STORE requests of stored instances with the association reactor kept paused.

    pynetdicom's ``send_c_store`` pauses the association's reactor for each
    message and lets it run again afterwards; pausing waits for the reactor's
    next 1 ms tick, which cost ~1 ms per instance (a third of a send).  Here
    the reactor stays paused (blocked on its checkpoint, so it cannot take a
    response off the queue) for a run of stores of :class:`StoredInstance` s;
    each is sent and its response awaited exactly as ``send_c_store`` does
    (the same DIMSE calls and DIMSE timeout).  :meth:`peer_gone` looks for an
    abort or a closed connection between instances, which the paused reactor
    only records once resumed; :meth:`resume` before anything else.
    """

    def __init__(self, assoc):
        self.assoc = assoc
        self.paused = False
        #: Called once a store's PDUs are out, before its response is awaited
        #: (the C-MOVE / C-GET SCP loads the next instance meanwhile).
        self.after_send: Callable[[], None] | None = None

    def pause(self) -> None:
        if not self.paused:
            pause_reactor(self.assoc)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.assoc._reactor_checkpoint.set()

    def peer_gone(self) -> bool:
        if not self.paused:
            return False
        try:
            return bool(self.assoc.acse.is_aborted()) or not self.assoc.dul.is_alive()
        except Exception:  # noqa: BLE001
            return True

    def context_for(self, inst: StoredInstance):
        """The accepted context in the instance's own syntax (ValueError: none)."""
        sop_class, _inst, ts = inst._osx_uids
        return self.assoc._get_valid_context(sop_class, ts, "scu", allow_conversion=False)

    def store(self, inst: StoredInstance, *, msg_id: int, priority: int = 2,
              originator_aet: str | None = None, originator_id: int | None = None,
              context=None) -> Dataset | None:
        """Send *inst* as stored; the response's status data set (None: no
        response within the DIMSE timeout, or the association went away)."""
        from pynetdicom.dimse_primitives import C_STORE

        assoc = self.assoc
        if not assoc.is_established:
            raise RuntimeError("the association is not established")
        cx = context or self.context_for(inst)
        raw = inst.as_stored()
        if raw is None:
            raise ValueError("the stored instance is not in its context's syntax")
        sop_class, sop_instance, _ts = inst._osx_uids
        cmd = store_rq_bytes(msg_id, sop_class, sop_instance, priority,
                             originator_aet, originator_id) \
            if _sent_handlers_ignore_store_rsp(assoc) else None
        if cmd is None:
            # (pynetdicom's own path, whose primitive checks what was given)
            req = C_STORE()
            req.MessageID = msg_id
            req.Priority = priority
            req.AffectedSOPClassUID = inst.SOPClassUID
            req.AffectedSOPInstanceUID = inst.SOPInstanceUID
            if originator_aet is not None:
                req.MoveOriginatorApplicationEntityTitle = originator_aet
            if originator_id is not None:
                req.MoveOriginatorMessageID = originator_id
            req.DataSet = io.BytesIO(raw)
        self.pause()
        if cmd is not None:
            # Straight to the DUL: the file's data set bytes, as they are.
            cx_id = int(cx.context_id)
            send_raw(assoc.dul, cx_id, message_parts(cx_id, cmd, raw,
                                                     int(assoc.dimse.maximum_pdu_size or 0)), True)
        else:
            assoc.dimse.send_msg(req, cx.context_id)
        if self.after_send is not None:
            self.after_send()
        _cx, rsp = assoc.dimse.get_msg(block=True)
        if rsp is None:
            self.resume()  # (time-out or abort: the reactor records which)
            return None
        return assoc._check_received_status(rsp)


class ReactorThreadSender(PausedSender):
    """:class:`PausedSender` for stores sent by the association's own reactor
    thread (a C-GET's sub-operations: the handler runs on that thread, so
    nothing else can take the responses off the DIMSE queue and there is no
    reactor to pause).  The accepted context of each (SOP class, syntax) is
    looked up once."""

    def __init__(self, assoc):
        super().__init__(assoc)
        self.paused = True
        self._contexts: dict[tuple[str, str], object] = {}

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def context_for(self, inst: StoredInstance):
        key = (inst._osx_uids[0], inst._osx_uids[2])
        cx = self._contexts.get(key)
        if cx is None:
            cx = self._contexts[key] = super().context_for(inst)
        return cx


def install_reactor_thread_store(assoc) -> ReactorThreadSender:
    """Route *assoc*'s ``send_c_store`` of :class:`StoredInstance` s made on
    its own reactor thread (pynetdicom's C-GET service class sending a
    handler's sub-operations) through a :class:`ReactorThreadSender`: the
    data set goes to the DUL as stored, without pynetdicom's per-message
    pause handshake, context search and primitive checks (~0.5 ms a store).
    Calls from any other thread, and anything but a stored instance in an
    accepted context, take pynetdicom's own path.  Once per association (the
    sender, for its ``after_send``)."""
    sender = getattr(assoc, "_osx_reactor_store", None)
    if sender is not None:
        return sender
    sender = ReactorThreadSender(assoc)
    assoc._osx_reactor_store = sender
    assoc.send_c_store = _stored_sender(assoc, sender, assoc.send_c_store,
                                        lambda: threading.current_thread() is assoc)
    return sender


def _stored_sender(assoc, sender: PausedSender, original_store, allowed=lambda: True):
    """A ``send_c_store`` for *assoc* that sends a :class:`StoredInstance` in
    its own syntax through *sender* (when *allowed*, the association is up,
    the peer is still there and a context accepts it); anything else resumes
    the sender and takes *original_store*."""

    def send_c_store(dataset, msg_id=1, priority=2, originator_aet=None, originator_id=None):
        if isinstance(dataset, StoredInstance) and assoc.is_established and allowed():
            try:
                cx = sender.context_for(dataset)
            except ValueError:
                cx = None
            if cx is not None and not sender.peer_gone():
                status = sender.store(dataset, msg_id=msg_id, priority=priority,
                                      originator_aet=originator_aet, originator_id=originator_id,
                                      context=cx)
                return status if status is not None else Dataset()
        sender.resume()
        return original_store(dataset, msg_id=msg_id, priority=priority,
                              originator_aet=originator_aet, originator_id=originator_id)

    return send_c_store


def install_paused_store(assoc) -> PausedSender:
    """Route *assoc*'s ``send_c_store`` of :class:`StoredInstance` s through a
    :class:`PausedSender` (everything else, release and abort first resume the
    reactor and take pynetdicom's own path).  For the associations that
    pynetdicom's C-MOVE service class opens and drives itself."""
    sender = PausedSender(assoc)
    original_release = assoc.release
    original_abort = assoc.abort
    send_c_store = _stored_sender(assoc, sender, assoc.send_c_store)

    def release():
        sender.resume()
        return original_release()

    def abort():
        sender.resume()
        return original_abort()

    assoc.send_c_store = send_c_store
    assoc.release = release
    assoc.abort = abort
    return sender


# --------------------------------------------------------------------------- P-DATA receive
def _parse_pdvs(body: bytearray) -> list | None:
    """(context ID, message control header + fragment) of each PDV item of a
    P-DATA-TF PDU's variable field, as views into *body*; None when malformed."""
    out = []
    view = memoryview(body)
    pos, end = 0, len(body)
    while pos < end:
        if pos + 6 > end:
            return None
        (n,) = struct.unpack_from(">I", body, pos)
        if n < 2 or pos + 4 + n > end:
            return None
        out.append((body[pos + 4], view[pos + 5:pos + 4 + n]))
        pos += 4 + n
    return out or None


#: Command elements decoded here: tag -> (VR, keyword).  Any other element in a
#: command set sends the message through pynetdicom's own decoding.
_COMMAND_ELEMENTS = {
    0x00000000: ("UL", "CommandGroupLength"),
    0x00000002: ("UI", "AffectedSOPClassUID"),
    0x00000100: ("US", "CommandField"),
    0x00000110: ("US", "MessageID"),
    0x00000120: ("US", "MessageIDBeingRespondedTo"),
    0x00000600: ("AE", "MoveDestination"),
    0x00000700: ("US", "Priority"),
    0x00000800: ("US", "CommandDataSetType"),
    0x00000900: ("US", "Status"),
    0x00000902: ("LO", "ErrorComment"),
    0x00000903: ("US", "ErrorID"),
    0x00001000: ("UI", "AffectedSOPInstanceUID"),
    0x00001020: ("US", "NumberOfRemainingSuboperations"),
    0x00001021: ("US", "NumberOfCompletedSuboperations"),
    0x00001022: ("US", "NumberOfFailedSuboperations"),
    0x00001023: ("US", "NumberOfWarningSuboperations"),
    0x00001030: ("AE", "MoveOriginatorApplicationEntityTitle"),
    0x00001031: ("US", "MoveOriginatorMessageID"),
}

#: The DIMSE-C messages decoded here (command field -> message class name);
#: C-CANCEL and DIMSE-N take pynetdicom's path.
_FAST_COMMANDS = {0x0001: "C_STORE_RQ", 0x8001: "C_STORE_RSP", 0x0020: "C_FIND_RQ",
                  0x8020: "C_FIND_RSP", 0x0010: "C_GET_RQ", 0x8010: "C_GET_RSP",
                  0x0021: "C_MOVE_RQ", 0x8021: "C_MOVE_RSP", 0x0030: "C_ECHO_RQ",
                  0x8030: "C_ECHO_RSP"}


def decode_command(cmd: bytes):
    """``(primitive, has_data_set, data_set_keyword)`` for an encoded command set
    of a common DIMSE-C message, built as pynetdicom's ``decode_msg`` +
    ``message_to_primitive`` build it (same attributes, same values), without
    pydicom; None for anything else (pynetdicom's path decides then)."""
    from pynetdicom.dimse_messages import _DATASET_KEYWORDS, _MSG_TO_PRIMITVE

    values: dict[str, object] = {}
    pos, end = 0, len(cmd)
    try:
        while pos < end:
            group, elem, length = struct.unpack_from("<HHI", cmd, pos)
            pos += 8
            spec = _COMMAND_ELEMENTS.get((group << 16) | elem)
            if spec is None or pos + length > end:
                return None
            vr, keyword = spec
            raw = cmd[pos:pos + length]
            pos += length
            if vr == "US":
                if length != 2:
                    return None
                values[keyword] = raw[0] | (raw[1] << 8)
            elif vr == "UL":
                if length != 4:
                    return None
                values[keyword] = struct.unpack("<I", raw)[0]
            else:
                text = raw.decode("ascii")
                if "\\" in text:
                    return None  # multi-valued: pynetdicom warns and takes the first
                values[keyword] = text.rstrip("\x00 ") if vr != "AE" else text.strip("\x00 ")
        name = _FAST_COMMANDS.get(values.get("CommandField"))  # type: ignore[arg-type]
        if name is None or "CommandDataSetType" not in values:
            return None
        prim = _MSG_TO_PRIMITVE[name[:name.rfind("_R")]]()
        for keyword, value in values.items():
            if value == "" and keyword != "ErrorComment":
                continue  # (pydicom gives None for an empty UI/AE: not set either)
            if hasattr(prim, keyword):
                setattr(prim, keyword, value)
    except (UnicodeDecodeError, struct.error, ValueError, TypeError):
        return None
    return prim, values["CommandDataSetType"] != 0x0101, _DATASET_KEYWORDS.get(name)


class _Incoming:
    """A DIMSE message being received on the fast path."""

    __slots__ = ("cx", "cmd", "prim", "keyword", "data", "sink")

    def __init__(self, cx: int):
        self.cx = cx
        self.cmd = bytearray()
        self.prim = None
        self.keyword: str | None = None
        #: the data set's fragments as received (views into their PDUs,
        #: which are never reused), joined once at the end
        self.data: list | None = None
        #: where a C-STORE request's data set is also written as it arrives
        #: (see :func:`write_stores_as_received`), or None
        self.sink = None


def _deliver(dimse, msg: _Incoming) -> None:
    prim = msg.prim
    if msg.keyword is not None:
        setattr(prim, msg.keyword, _stream(dimse.assoc, msg))
    prim._context_id = msg.cx
    prim._dataset_path = None
    prim._dataset_file = None
    if msg.sink is not None:
        prim._osx_received = msg.sink
    if msg.keyword == "DataSet" and prim.MessageIDBeingRespondedTo is None:
        serve = getattr(dimse.assoc, "_osx_inline_store", None)
        if serve is not None and _no_request_waiting(dimse.msg_queue):
            serve(prim)
            return
    dimse.msg_queue.put((msg.cx, prim))


def _stream(assoc, msg: _Incoming) -> io.BytesIO:
    """The received data set (or identifier) of *msg* as the stream
    pynetdicom puts on its primitive: for a C-STORE request that this
    process serves itself (see :func:`serve_stores_inline`), a
    :class:`ReceivedDataSet` inside its Part 10 bytes."""
    frags = msg.data or ()
    prim = msg.prim
    if (msg.keyword == "DataSet" and prim.MessageIDBeingRespondedTo is None
            and getattr(assoc, "_osx_inline_store", None) is not None):
        cx = assoc._accepted_cx.get(msg.cx)
        ts = str(cx.transfer_syntax[0]) if cx is not None and cx.transfer_syntax else None
        head = part10_head(prim, ts) if ts else None
        if head is not None:
            return ReceivedDataSet((head, *frags), len(head), ts)
    # (BytesIO shares the bytes it starts with: no second copy.)
    return io.BytesIO(b"".join(frags))


def _no_request_waiting(q: queue.Queue) -> bool:
    """Whether nothing but responses to our own requests waits in the DIMSE
    queue *q*: a request served now keeps the peer's order of requests.

    A C-GET's pending responses wait there for the thread that reads them
    (progress) while its sub-operations keep arriving; a store queued behind
    one would go to that thread and its response back through the DUL's
    queue (measured, 100 CT from Orthanc: a third of the stores, ~1 ms
    more each).  The responses' own order is unchanged, and the final one
    comes after the peer has every store's response, so after every store
    served here."""
    with q.mutex:
        return all(getattr(item[1], "MessageIDBeingRespondedTo", None) is not None
                   for item in q.queue)


class AnswerFirst(NamedTuple):
    """What a *quick_store* (see :func:`serve_stores_inline`) may return
    instead of a bare status: answer with *status*, then call *then* (which
    hands the data set to a writing thread) -- the peer's next store, which
    waits for the answer, is not kept waiting for that hand-off too."""

    status: int
    then: Callable[[], None]


def _answer(assoc, req, status) -> None:
    """Send a quick store's status (an ``int`` or :class:`AnswerFirst`)."""
    if type(status) is AnswerFirst:
        send_store_status(assoc, req, status.status)
        status.then()
    else:
        send_store_status(assoc, req, status)


def serve_stores_inline(assoc, quick_store=None) -> None:
    """Answer the C-STORE requests that arrive on *assoc* (our C-GET's
    sub-operations) on its DUL thread, as each is received.

    pynetdicom queues each received request for the thread waiting on the
    C-GET's responses, which runs the ``EVT_C_STORE`` handler and queues the
    response back for the DUL thread to send: two thread hand-offs per
    instance (~1.3 ms on two busy cores).  Here the DUL thread runs the same
    ``Association._c_store_scp`` (context check, handler, response) itself
    and writes its response at once (:func:`send_pdata`).  Only while no
    other message waits in the DIMSE queue (so the order of messages is the
    peer's); the handler must be quick (hand the data to a worker).

    *quick_store(request)*: a status (or :class:`AnswerFirst`) for a request
    it serves itself, answered with :func:`send_store_status`; None for one it
    leaves to that usual path (which refuses, for one, a request on a context
    where we are not the SCP).
    """
    assoc._osx_inline_store = assoc._c_store_scp
    if quick_store is not None:
        def serve(prim) -> None:
            status = quick_store(prim)
            if status is None:
                assoc._c_store_scp(prim)
            else:
                _answer(assoc, prim, status)

        assoc._osx_inline_store = serve


def send_store_status(assoc, req, status: int) -> None:
    """Answer C-STORE request *req* on *assoc* with *status* alone: the
    response pynetdicom's C-STORE SCP code builds for a status, without that
    code and the event around its handler -- encoded here and written at
    once (:func:`send_raw`) when nothing listens to the messages sent,
    otherwise as a primitive through ``send_msg``."""
    from pynetdicom.dimse_primitives import C_STORE

    if _sent_handlers_ignore_store_rsp(assoc):
        pdu = store_rsp_pdu(req._context_id, req.MessageID, req.AffectedSOPClassUID,
                            req.AffectedSOPInstanceUID, status)
        if pdu is not None:
            send_raw(assoc.dul, req._context_id, pdu, False)
            return
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = req.MessageID
    rsp.AffectedSOPInstanceUID = req.AffectedSOPInstanceUID
    rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
    rsp.Status = status
    assoc.dimse.send_msg(rsp, req._context_id)


def _discard_received(msg) -> None:
    """After serving *msg*: its received file goes unless the handler took
    it (a refused request, an error)."""
    received = getattr(msg, "_osx_received", None)
    if received is not None:
        received.discard()


def _install_serve_lock():
    """Make ``Association._serve_request`` hold the association's
    ``_osx_serve_lock`` (when it has one, see :func:`serve_requests_inline`)
    around each request, and discard the request's received file afterwards
    unless its handler took it (:func:`write_stores_as_received`); returns
    pynetdicom's own ``_serve_request``.

    It also gives back a *response* that an association's reactor took off
    the DIMSE queue (pynetdicom logs "Received unexpected C-STORE service
    message" and drops it): pynetdicom's ``send_*()`` pause the reactor with
    a flag read without a lock (see :func:`pause_reactor`), so a reactor that
    has just resumed can take the response its sender waits for, which then
    waits out the DIMSE timeout.  Queued again once, it reaches that sender
    (woken by the put, while the reactor sleeps its tick); a response nobody
    takes is dropped the second time, as before."""
    from pynetdicom.association import Association

    with _hook_lock:
        original = getattr(Association._serve_request, "_osx_original", None)
        if original is not None:
            return original
        original = Association._serve_request

        def _serve_request(self, msg, context_id: int) -> None:
            if (getattr(msg, "MessageIDBeingRespondedTo", None) is not None
                    and not msg.is_valid_request and not getattr(msg, "_osx_requeued", False)):
                msg._osx_requeued = True
                self.dimse.msg_queue.put((context_id, msg))
                return
            lock = getattr(self, "_osx_serve_lock", None)
            try:
                if lock is None:
                    return original(self, msg, context_id)
                with lock:
                    return original(self, msg, context_id)
            finally:
                _discard_received(msg)

        _serve_request._osx_original = original  # type: ignore[attr-defined]
        Association._serve_request = _serve_request
        return original


def serve_requests_inline(assoc, quick_store=None) -> None:
    """Serve the C-STORE requests that arrive on the accepted association
    *assoc* on its DUL thread, as each is received (see
    :func:`serve_stores_inline`): pynetdicom's own ``_serve_request`` (the
    Storage service class, the ``EVT_C_STORE`` handler, the response), minus
    the hand-off to the association's thread and back.

    *quick_store(request)*: a status for a request it serves itself (a
    sub-operation of our own C-MOVE, acknowledged at once), answered with
    the response pynetdicom's Storage service class would build, without
    the service class and the event around the handler (~0.15 ms a store);
    None for a request it leaves to that usual path.

    One request at a time per association, whichever thread serves it: the
    association thread takes the same lock around each request it serves,
    and a C-STORE that arrives while it holds it (a peer with asynchronous
    operations, say) is queued for it as before.
    """
    from pynetdicom.dimse_primitives import C_STORE

    serve_request = _install_serve_lock()
    lock = threading.Lock()

    def serve(prim) -> None:
        if not lock.acquire(blocking=False):
            assoc.dimse.msg_queue.put((prim._context_id, prim))
            return
        try:
            status = None
            if quick_store is not None and type(prim) is C_STORE and not assoc._sent_release:
                status = quick_store(prim)
            if status is None:
                serve_request(assoc, prim, prim._context_id)
            else:
                _answer(assoc, prim, status)
        finally:
            lock.release()
            _discard_received(prim)

    assoc._osx_serve_lock = lock
    assoc._osx_inline_store = serve


def write_stores_as_received(assoc, open_file) -> None:
    """Write the data set of each C-STORE request received on *assoc* (on
    the fast path) to a file as its PDUs arrive, beside keeping its bytes.

    ``open_file(primitive, context_id)`` gives, once the request's command
    set is in, an object with ``write(bytes) -> bool`` (False: it failed
    and is done with) and ``discard()``, or None; the request's primitive then
    carries it as ``_osx_received`` for whoever serves it (see
    :func:`received_file`).  Whatever nobody took is discarded: after the
    request is served (:func:`_install_serve_lock`'s wrapper) and, for a
    message that never completed, when the association closes
    (:func:`discard_unreceived`)."""
    _install_serve_lock()
    assoc._osx_open_received = open_file


def received_file(request):
    """The file a C-STORE request's data set was written to as it arrived
    (see :func:`write_stores_as_received`), or None."""
    return getattr(request, "_osx_received", None)


def discard_unreceived(assoc) -> None:
    """Discard the file of a C-STORE data set whose reception *assoc* never
    finished (the peer aborted, the connection dropped)."""
    dimse = getattr(assoc, "dimse", None)
    msg = getattr(dimse, "_osx_rx", None)
    if msg is not None and msg.sink is not None:
        sink, msg.sink = msg.sink, None
        sink.discard()


def receive_pdvs(assoc, items: list) -> None:
    """Assemble received PDV items into DIMSE messages (see install_fast_pdata).

    The common DIMSE-C messages are decoded by :func:`decode_command` and
    queued exactly as ``DIMSEServiceProvider.receive_primitive`` queues them;
    any other message -- or any message while an ``EVT_DIMSE_RECV`` handler is
    bound, or one that pynetdicom has already started -- is handed to
    ``receive_primitive`` with all its fragments so far."""
    from pynetdicom import evt
    from pynetdicom.pdu_primitives import P_DATA

    dimse = assoc.dimse
    msg: _Incoming | None = getattr(dimse, "_osx_rx", None)

    def hand_over(pdvs: list) -> None:
        dimse._osx_rx = None
        prim = P_DATA()
        prim.presentation_data_value_list.extend(pdvs)
        dimse.receive_primitive(prim)

    for i, (cx, item) in enumerate(items):
        ctrl = item[0]
        if msg is None:
            if dimse.message is not None or not ctrl & 1 or assoc.get_handlers(evt.EVT_DIMSE_RECV):
                hand_over(items[i:])
                return
            msg = _Incoming(cx)
        if ctrl & 1:  # a command fragment
            if msg.prim is not None:
                # A command inside a data set: pynetdicom's decoding would
                # mangle it; the peer broke the protocol.
                raise ValueError("command fragment inside a data set")
            msg.cmd += item[1:]
            if not ctrl & 2:
                continue
            decoded = decode_command(bytes(msg.cmd))
            if decoded is None:
                hand_over([(cx, b"\x03" + bytes(msg.cmd))] + list(items[i + 1:]))
                return
            msg.cx = cx
            msg.prim, has_data, msg.keyword = decoded
            if not has_data:
                _deliver(dimse, msg)
                msg = None
            else:
                msg.data = []
                opener = getattr(assoc, "_osx_open_received", None)
                if opener is not None and msg.keyword == "DataSet" \
                        and msg.prim.MessageIDBeingRespondedTo is None:
                    msg.sink = opener(msg.prim, cx)
        else:  # a data set fragment
            if msg.prim is None:
                # Data before the command set is complete: as pynetdicom would.
                head = [(msg.cx, b"\x01" + bytes(msg.cmd))] if msg.cmd else []
                hand_over(head + list(items[i:]))
                return
            fragment = item[1:]
            msg.data.append(fragment)  # type: ignore[union-attr]
            if msg.sink is not None and not msg.sink.write(fragment):
                msg.sink = None  # (it removed its file; the bytes are stored as usual)
            if ctrl & 2:
                _deliver(dimse, msg)
                msg = None
    dimse._osx_rx = msg


def install_fast_pdata(dul) -> bool:
    """Hand received P-DATA-TF PDUs straight to the DIMSE layer.

    Replaces *dul*'s ``_read_pdu_data`` (call once its socket reads with
    one ``recv_into`` per PDU, see ``osirix_py.net.tcp``).  A P-DATA-TF PDU
    that arrives in state Sta6 (association established) with nothing else
    waiting in the DUL's queues, and with no ``EVT_DATA_RECV`` /
    ``EVT_PDU_RECV`` handler bound, is split into its PDV items (views into
    the received buffer) and given to ``dimse.receive_primitive`` as one
    P-DATA primitive: what the state machine's action DT-2 does for event
    10, without the copies of the PDU, the PDU and item objects, the two
    event notifications and the trip through the event queue.  Every other
    PDU (and any P-DATA-TF in another state) goes through pynetdicom's code
    exactly as before.
    """
    import logging

    from pynetdicom import evt

    log = logging.getLogger("pynetdicom.dul")
    assoc = dul.assoc

    def fast_ok() -> bool:
        return (dul.state_machine.current_state == "Sta6" and dul.event_queue.empty()
                and dul._recv_pdu.empty() and not assoc.get_handlers(evt.EVT_DATA_RECV)
                and not assoc.get_handlers(evt.EVT_PDU_RECV))

    def read_pdu_data() -> None:
        sock = dul.socket
        try:
            head = sock.recv(6)
        except (OSError, TimeoutError) as exc:
            log.error("Connection closed before the entire PDU was received (%s)", exc)
            dul.event_queue.put("Evt17")
            return
        if len(head) != 6:
            dul.event_queue.put("Evt17")
            return
        pdu_type, _, length = struct.unpack(">BBL", head)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            log.error("Unknown PDU type received '0x%02X'", pdu_type)
            dul.event_queue.put("Evt19")
            return
        try:
            body = sock.recv(length)
        except (OSError, TimeoutError) as exc:
            log.error("Connection closed before the entire PDU was received (%s)", exc)
            dul.event_queue.put("Evt17")
            return
        if len(body) != length:
            log.error("The received PDU is shorter than expected (%d of %d bytes received)",
                      len(body) + 6, length + 6)
            dul.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and fast_ok():
            items = _parse_pdvs(body)
            if items is None:
                log.error("Unable to decode the received P-DATA-TF PDU")
                dul.event_queue.put("Evt19")
                return
            try:
                receive_pdvs(assoc, items)
            except ValueError as exc:
                log.error("Invalid DIMSE message received (%s)", exc)
                dul.event_queue.put("Evt19")
            return
        try:
            pdu, event = dul._decode_pdu(head + body)
        except Exception as exc:  # noqa: BLE001 - as pynetdicom: an invalid PDU
            log.error("Unable to decode the received PDU data (%s)", exc)
            dul.event_queue.put("Evt19")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    dul._read_pdu_data = read_pdu_data
    return True


# --------------------------------------------------------------------------- reactor wake-up
#: reactor thread id -> (its wake-up event, its association)
_REACTOR_WAKE: dict[int, tuple[threading.Event, object]] = {}

#: How long an idle accepted association's reactor sleeps between its checks
#: when nothing wakes it (the network timeout's resolution; every message,
#: release, abort or kill wakes it at once).
REACTOR_IDLE_WAIT = 0.05


class TimeModule:
    """Base of the stand-ins for the ``time`` module inside a pynetdicom module:
    every name is the real ``time`` module's except what a subclass defines
    (its ``sleep``)."""

    def __getattr__(self, name):
        return getattr(time, name)


def replace_time(module, shim: type) -> None:
    """Give *module* (``pynetdicom.association``, ``pynetdicom.dul``) an instance
    of *shim* as its ``time`` (once per process)."""
    with _hook_lock:
        if not isinstance(module.time, shim):
            module.time = shim()


def move_queue(old: queue.Queue, new: queue.Queue) -> bool:
    """Move what *old* holds into *new*, in order (True if anything was there):
    for swapping a pynetdicom queue for one that wakes its reader."""
    with old.mutex:
        pending = list(old.queue)
        old.queue.clear()
    for item in pending:
        queue.Queue.put(new, item)
    return bool(pending)


class _ReactorTime(TimeModule):
    """Stands in for the ``time`` module inside ``pynetdicom.association``.

    The association reactor loop starts each tick with ``time.sleep(0.001)``
    before it looks for a received DIMSE message, a release or abort
    indication, a dead DUL and the network timeout: up to a millisecond
    (on average half) between a request's arrival and its handling, and a
    thousand wake-ups a second while idle -- ~0.6 ms of CPU per instance
    received (a quarter of the DUL thread's), taken from the threads that do
    the work on a two-core machine, and more once requests are served on the
    DUL thread (:func:`serve_requests_inline`) and the reactor has nothing
    to do.  For a reactor registered by :func:`install_reactor_wakeup` that
    sleep returns at once when something waits for it and otherwise waits
    for the wake-up event (set on every message, indication or kill) for up
    to :data:`REACTOR_IDLE_WAIT`; every other call is the real ``time``
    function.
    """

    @staticmethod
    def sleep(secs: float) -> None:
        if secs == 0.001:
            entry = _REACTOR_WAKE.get(threading.get_ident())
            if entry is not None:
                ev, assoc = entry
                if _reactor_has_work(assoc):
                    return
                ev.clear()
                # (Cleared, then checked again: a message queued between the
                # two sets the event, and the wait below returns at once.)
                if not _reactor_has_work(assoc):
                    ev.wait(REACTOR_IDLE_WAIT)
                return
        time.sleep(secs)


def _reactor_has_work(assoc) -> bool:
    """Whether the reactor of *assoc* has something to look at now."""
    dul = assoc.dul
    return (assoc._kill or not assoc.dimse.msg_queue.empty() or not dul.to_user_queue.empty()
            or not dul.is_alive())


class _WakingQueue(queue.Queue):
    """A ``queue.Queue`` whose every put also sets its ``_osx_event``."""

    _osx_event: threading.Event

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        self._osx_event.set()


class ResponseStatus:
    """The status elements of a C-GET / C-MOVE response, read from its
    primitive: what pynetdicom's response generator copies into a new
    ``Dataset`` for each response (``"Status" in s``, ``s.Status``,
    ``s.get(keyword, default)``).  Empty (no Status) when no response came."""

    __slots__ = ("_rsp",)

    def __init__(self, rsp=None):
        self._rsp = rsp

    def get(self, keyword: str, default=None):
        value = getattr(self._rsp, keyword, None) if self._rsp is not None else None
        return default if value is None else value

    def __contains__(self, keyword: str) -> bool:
        return self.get(keyword) is not None

    @property
    def Status(self) -> int:  # noqa: N802 - the DICOM keyword, as on a Dataset
        return self._rsp.Status


def _lean_get_move_responses(assoc, transfer_syntax):
    """``Association._wrap_get_move_responses`` (see
    :func:`lean_retrieve_responses`) minus a pydicom ``Dataset`` built and two
    log lines formatted per response."""
    import logging

    from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
    from pynetdicom.dsutils import decode
    from pynetdicom.status import (STATUS_CANCEL, STATUS_FAILURE, STATUS_WARNING,
                                   code_to_category)

    log = logging.getLogger("pynetdicom.assoc")
    try:
        while True:
            _, rsp = assoc.dimse.get_msg(block=True)
            if rsp is None:  # the DIMSE timeout expired
                assoc._handle_no_response()
                yield ResponseStatus(), None
                return
            if type(rsp) is C_STORE:  # a sub-operation not served on arrival
                assoc._c_store_scp(rsp)
                continue
            if type(rsp) not in (C_GET, C_MOVE) or not rsp.is_valid_response:
                log.error("Received an unexpected or invalid %s message from the peer",
                          type(rsp).__name__.replace("_", "-"))
                assoc.abort()
                yield ResponseStatus(), None
                return
            code = rsp.Status
            if st.is_pending(code):
                yield ResponseStatus(rsp), None
                continue
            identifier = None
            # Cancel, warning and failure may carry the Failed SOP Instance
            # UID List (PS3.4 C.4.3).
            if rsp.Identifier and code_to_category(code) in (
                    STATUS_CANCEL, STATUS_WARNING, STATUS_FAILURE):
                try:
                    identifier = decode(rsp.Identifier, transfer_syntax.is_implicit_VR,
                                        transfer_syntax.is_little_endian,
                                        transfer_syntax.is_deflated)
                except Exception as exc:  # noqa: BLE001 - as pynetdicom: logged, then None
                    log.error("Failed to decode the received Identifier dataset (%s)", exc)
            yield ResponseStatus(rsp), identifier
            return
    finally:
        assoc._reactor_checkpoint.set()


def lean_retrieve_responses(assoc) -> None:
    """Let *assoc*'s ``send_c_get`` / ``send_c_move`` yield their responses
    through :func:`_lean_get_move_responses`: the status as a
    :class:`ResponseStatus` view of each response primitive instead of a
    ``Dataset`` built from it (measured, 100 CT by C-GET: ~50 us of the
    waiting thread's time per pending response, GIL held, beside the
    threads receiving and storing the instances)."""
    assoc._wrap_get_move_responses = lambda ts: _lean_get_move_responses(assoc, ts)


#: How often the thread that waits for a retrieve's responses looks at its
#: queue when only pending responses arrive (see :func:`lazy_pending_responses`).
PENDING_POLL = 0.02


def _is_pending_response(prim) -> bool:
    status = getattr(prim, "Status", None)
    return (getattr(prim, "MessageIDBeingRespondedTo", None) is not None
            and status is not None and st.is_pending(status))


class _LazyPendingQueue(queue.Queue):
    """A DIMSE message queue whose pending responses do not wake its reader;
    everything else does, and a blocked reader looks every PENDING_POLL."""

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        pending = _is_pending_response(item[1])
        with self.mutex:
            self._put(item)
            self.unfinished_tasks += 1
            if not pending:
                self.not_empty.notify()
        sock = getattr(self, "_osx_gather", None)
        if sock is not None:  # (put by the DUL thread: see gather_pending_responses)
            sock._osx_gather_until = time.monotonic() + GATHER_PENDING if pending else 0.0

    def get(self, block: bool = True, timeout: float | None = None):
        if not block:
            return queue.Queue.get(self, False)
        with self.not_empty:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._qsize():
                wait = PENDING_POLL if end is None else min(PENDING_POLL, end - time.monotonic())
                if wait <= 0:
                    raise queue.Empty
                self.not_empty.wait(wait)
            item = self._get()
            self.not_full.notify()
            return item


def lazy_pending_responses(assoc) -> bool:
    """Let the pending C-GET / C-MOVE responses of our retrieve on *assoc*
    wait (up to PENDING_POLL) for the thread that reads them, instead of
    waking it for each instance: they only carry progress, and each wake-up
    costs a thread switch on busy cores (100 per 100-instance retrieve).  A
    final response, or a request the DUL thread does not serve itself,
    still wakes it at once.  False (nothing changed) unless the queue is a
    plain ``queue.Queue``."""
    dimse = getattr(assoc, "dimse", None)
    q = getattr(dimse, "msg_queue", None)
    if type(q) is not queue.Queue:
        return False
    q.__class__ = _LazyPendingQueue
    return True


#: How long the DUL thread of our C-MOVE lets the PACS's next responses
#: gather in its socket after a pending one (see gather_pending_responses).
GATHER_PENDING = 0.02


def gather_pending_responses(assoc) -> bool:
    """For our C-MOVE on *assoc* (its pending responses made lazy by
    :func:`lazy_pending_responses`): after each pending response its DUL
    thread reads nothing for up to GATHER_PENDING, then everything that
    gathered at once -- one wake-up for many responses instead of one per
    instance, while the PACS's stores arrive on another association
    (measured, 100 CT from Orthanc, alternating runs: 124 -> 117 ms and
    128 -> 120 ms, CPU -10 ms).  Anything we send (a C-CANCEL, an abort)
    still wakes it, and :func:`stop_gathering` ends the wait: it is called
    when the PACS closes the association its stores came on, before its
    final response (as Orthanc does).  A final response that comes without
    that is read at most GATHER_PENDING late.  False (nothing changed)
    where the DUL cannot wait that way."""
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    q = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if (type(q) is not _LazyPendingQueue or sock is None
            or getattr(sock, "_osx_wake_w", None) is None):
        return False
    q._osx_gather = sock
    return True


def stop_gathering(assoc) -> None:
    """End :func:`gather_pending_responses`' wait now (from any thread)."""
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    wake = getattr(sock, "_osx_wake_w", None)
    if sock is None or wake is None:
        return
    sock._osx_gather_until = 0.0
    try:
        wake.send(b"\0")
    except OSError:  # full (a wake-up is pending anyway) or closed
        pass


def _make_waking(q: queue.Queue, ev: threading.Event) -> None:
    """Make *q* set *ev* on each put from now on.  The queue object stays
    the same (its class changes): a thread that has just looked it up and
    is about to put cannot lose its item to a replaced queue."""
    q._osx_event = ev  # type: ignore[attr-defined]
    q.__class__ = _WakingQueue
    if not q.empty():
        ev.set()


def install_reactor_wakeup(assoc) -> bool:
    """Let *assoc*'s reactor (the calling thread: call from ``EVT_ESTABLISHED``
    of an accepted association) sleep until a DIMSE message, a release or
    abort indication or a kill wakes it (see :class:`_ReactorTime`)."""
    import pynetdicom.association as pa

    dimse = getattr(assoc, "dimse", None)
    dul = getattr(assoc, "dul", None)
    if dimse is None or not hasattr(dimse, "msg_queue") or not hasattr(dul, "to_user_queue"):
        return False
    replace_time(pa, _ReactorTime)
    if type(dimse.msg_queue) not in (queue.Queue, _WakingQueue) or type(
            dul.to_user_queue) not in (queue.Queue, _WakingQueue):
        return False
    ev = threading.Event()
    _make_waking(dimse.msg_queue, ev)
    _make_waking(dul.to_user_queue, ev)
    tid = threading.get_ident()
    assoc._osx_reactor_event = ev
    _REACTOR_WAKE[tid] = (ev, assoc)
    assoc._osx_reactor_tid = tid
    return True


def remove_reactor_wakeup(assoc) -> None:
    tid = getattr(assoc, "_osx_reactor_tid", None)
    if tid is not None:
        _REACTOR_WAKE.pop(tid, None)
