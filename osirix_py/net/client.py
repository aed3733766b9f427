"""The client side of Query/Retrieve and Storage: C-FIND, C-GET, C-MOVE and C-STORE SCU.

A library that the CLI (and later the GUI, through :mod:`osirix_py.services.jobs`)
calls.  Every failure is a :class:`ScuError` whose message names the peer
(AE title, host and port) and says what went wrong in words: unreachable
host, closed port, rejected association (and why), aborted association,
unknown move destination (and what to add on the PACS).

* :func:`query` -- C-FIND at patient (Patient Root), study, series or image
  level (Study Root); rows are dicts keyed by DICOM keyword, like the local
  ``Archive.find``.
* :func:`retrieve` -- C-GET (instances stored through ``archive.store_bytes``)
  or C-MOVE (to our own AE: our listener stores them), with progress,
  cancel (C-CANCEL) and per-instance failures.
* :func:`send` -- C-STORE of archive rows, one presentation context per SOP
  class and stored transfer syntax plus little endian fallbacks; transcodes to
  little endian when the peer refuses the stored syntax; retries failures.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from io import BytesIO
from typing import Callable, Iterable, Mapping

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import _config, build_context, build_role, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from ..dicom import status as st
from ..dicom.header import DicomFileError
from ..dicom.tags import Level, attributes_up_to, find_attribute
from .fastpath import (
    AnswerFirst,
    PausedSender,
    StoredInstance,
    checked_header,
    command_uids,
    gather_pending_responses,
    install_dimse_hook,
    install_encode_hook,
    lazy_pending_responses,
    lean_retrieve_responses,
    pause_reactor,
    received_header,
    received_later,
    received_part10,
    received_uids,
    serve_stores_inline,
    stop_gathering,
)
from .moves import ACTIVE_MOVES, RETRIEVE_GROUP_WINDOW, RETRIEVE_WRITERS, submit_into
from .scp import ACCEPTED_TRANSFER_SYNTAXES
from .scu import ScuError, Target, open_association

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: What a C-GET proposes for its storage sub-operations: the instance arrives in
#: the syntax the PACS holds when we accept it (no lossy re-encoding).
GET_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEG2000,
                JPEGLosslessSV1, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless,
                RLELossless, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]

ProgressFn = Callable[["TransferProgress"], None]


def _target(node) -> Target:
    return Target(node.host, int(node.port), node.ae_title)


# --------------------------------------------------------------------------- C-FIND
def _value(elem_value, vr: str):
    if elem_value is None:
        return None
    if isinstance(elem_value, MultiValue):
        return "\\".join(str(v) for v in elem_value)
    if vr in ("IS", "US", "UL", "SS", "SL"):
        try:
            return int(elem_value)
        except (TypeError, ValueError):
            return None
    s = str(elem_value)
    return s if s != "" else None


def build_identifier(level: Level, filters: Mapping[str, object],
                     keys: Iterable[str] | None = None) -> Dataset:
    """The C-FIND identifier: QueryRetrieveLevel, the level's return keys (or
    only *keys*), the filters.

    Non-ASCII filter values make it ``SpecificCharacterSet = ISO_IR 192``.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    if keys is None:
        keys = [a.keyword for a in attributes_up_to(level)
                if (not a.derived or a.level is level) and not a.tag >> 16 == 0x0002]
    for kw in keys:
        setattr(ds, kw, None)
    non_ascii = False
    for kw, v in filters.items():
        if find_attribute(kw) is None:
            from pydicom.datadict import tag_for_keyword

            if tag_for_keyword(kw) is None:
                raise ScuError(f"unknown DICOM keyword {kw!r} in the query", kind="usage")
        text = "" if v is None else str(v)
        if not text.isascii():
            non_ascii = True
        setattr(ds, kw, text)
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _row(ds: Dataset, keys: list[str]) -> dict:
    try:
        ds.decode()
    except Exception:  # noqa: BLE001 - keep the raw values
        pass
    row = {}
    for kw in keys:
        elem = ds.get(kw)
        a = find_attribute(kw)
        vr = a.vr if a is not None else ""
        row[kw] = _value(elem, vr) if elem is not None else None
    return row


def query(node, level: Level | str, filters: Mapping[str, object] | None = None, *,
          calling_ae: str, timeout: float = 10.0, limit: int | None = None,
          cancel: threading.Event | None = None, keys: Iterable[str] | None = None) -> list[dict]:
    """C-FIND *node* at *level*; returns the matches as dicts keyed by DICOM keyword.

    *keys*: the return keys to ask for besides the filters (default: every
    attribute the local database keeps up to *level*)."""
    level = Level.parse(level) if isinstance(level, str) else level
    filters = dict(filters or {})
    ident = build_identifier(level, filters, keys)
    keys = [e.keyword for e in ident if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")]
    model = (PatientRootQueryRetrieveInformationModelFind if level is Level.PATIENT
             else StudyRootQueryRetrieveInformationModelFind)
    target = _target(node)
    assoc, ae = open_association(target, calling_ae, [build_context(model)], timeout=timeout,
                                 what="C-FIND")
    rows: list[dict] = []
    try:
        cancelled = False
        last = time.monotonic()
        for status, identifier in assoc.send_c_find(ident, model, msg_id=1):
            if status is None or "Status" not in status:
                raise _lost(assoc, target, "C-FIND", timeout, calling_ae, last)
            last = time.monotonic()
            code = status.Status
            if st.is_pending(code):
                if identifier is not None:
                    rows.append(_row(identifier, keys))
                if not cancelled and ((limit and len(rows) >= limit) or (cancel and cancel.is_set())):
                    assoc.send_c_cancel(1, query_model=model)
                    cancelled = True
                continue
            if code in (st.SUCCESS, st.CANCEL):
                break
            comment = status.get("ErrorComment", "")
            raise ScuError(f"{target}: C-FIND answered {st.describe(code)}"
                           + (f": {comment}" if comment else ""), kind="failed")
        return rows[:limit] if limit else rows
    finally:
        _close(assoc, ae)


# --------------------------------------------------------------------------- helpers
def _lost(assoc, target: Target, what: str, timeout: float, calling_ae: str,
          since: float | None = None) -> ScuError:
    """Why a response did not come: the association was aborted, or a time-out.

    *since*: when the last response came.  Once the whole DIMSE time-out has
    passed since then it is a time-out, although the association is aborted
    by then (pynetdicom aborts it when it gives up waiting)."""
    deadline = time.monotonic() + 0.5
    while assoc.is_established and not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.01)  # the reactor may not have recorded the A-ABORT yet
    if since is not None:
        aborted = time.monotonic() - since < timeout * 0.9  # (gone before the time-out)
    else:
        aborted = assoc.is_aborted or not assoc.is_established
    if aborted:
        return ScuError(f"{target}: the association was aborted during the {what} "
                        f"(the peer may refuse {what} from {calling_ae!r})", kind="aborted")
    return ScuError(f"{target}: no {what} response within {timeout:.1f} s", kind="timeout")


def _close(assoc, ae) -> None:
    try:
        if assoc.is_established:
            assoc.release()
    finally:
        ae.shutdown()


def _retrieve_identifier(level: Level, study_uid: str, series_uid: str | None,
                         instance_uid: str | None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    if instance_uid:
        ds.SOPInstanceUID = instance_uid
    return ds


@dataclass
class TransferProgress:
    """Progress of a retrieve or a send (also its final result)."""

    total: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    #: SOP Instance UID -> reason, for instances that failed.
    failures: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    cancelled: bool = False
    error: str | None = None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        s = self.seconds
        return self.completed / s if s > 0 else 0.0

    @property
    def byte_rate(self) -> float:
        s = self.seconds
        return self.bytes / s if s > 0 else 0.0

    def summary(self) -> str:
        parts = [f"{self.completed} completed"]
        if self.warning:
            parts.append(f"{self.warning} with warnings")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.cancelled:
            parts.append("cancelled")
        return ", ".join(parts) + f" of {self.total} in {self.seconds:.1f} s ({self.rate:.0f}/s)"


def _level_for(series_uid, instance_uid) -> Level:
    return Level.IMAGE if instance_uid else Level.SERIES if series_uid else Level.STUDY


def _failed_uids(identifier: Dataset | None) -> list[str]:
    if identifier is None:
        return []
    v = identifier.get("FailedSOPInstanceUIDList")
    if not v:
        return []
    return [str(x) for x in (v if isinstance(v, (list, MultiValue)) else str(v).split("\\"))]


def move_destination_hint(our_ae: str, host: str | None, port: int | None) -> str:
    where = f"host {host or '<this machine>'}, port {port or '<our listener port>'}"
    return (f"the PACS does not know our AE title: add AE {our_ae}, {where} to its "
            "list of DICOM nodes (move destinations)")


# --------------------------------------------------------------------------- retrieve
#: At most 128 presentation contexts fit in an association (odd context IDs
#: 1-255): a C-GET proposes its model and at most this many storage classes.
GET_MAX_STORAGE_CLASSES = 127

#: Storage classes a C-GET proposes beside pynetdicom's 120 common ones (its
#: ``StoragePresentationContexts``), filling the association's free contexts
#: with the newer classes most often found in radiology studies: dose reports
#: (PET/NM, patient, X-ray), parametric maps, breast projection X-ray.  An
#: instance of any other class is fetched by a second pass (see
#: :func:`_get_missing`).
GET_EXTRA_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.68",  # Radiopharmaceutical Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.73",  # Patient Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.76",  # Enhanced X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    "1.2.840.10008.5.1.4.1.1.13.1.4",  # Breast Projection X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.11.12",  # Variable Modality LUT Softcopy Presentation State
)

#: The storage classes of a C-GET's first (usual) association.
GET_STORAGE_CLASSES: tuple[str, ...] = tuple(dict.fromkeys(
    [str(c.abstract_syntax) for c in StoragePresentationContexts] + list(GET_EXTRA_CLASSES)
))[:GET_MAX_STORAGE_CLASSES]


def _get_contexts(classes, syntax_groups=(GET_SYNTAXES,)) -> tuple[list, list]:
    """A C-GET association's contexts (the model, then for each of *classes*
    one context per group of *syntax_groups*) and SCP role items."""
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    contexts += [build_context(uid, list(group)) for uid in classes for group in syntax_groups]
    return contexts, [build_role(uid, scp_role=True) for uid in classes]


#: What a C-GET's second pass (:func:`_get_missing`) proposes for each SOP
#: class: every syntax our listener accepts, each on a context of its own.
GET_RETRY_SYNTAXES = tuple(str(ts) for ts in ACCEPTED_TRANSFER_SYNTAXES)


@functools.lru_cache(maxsize=1)
def _get_negotiation() -> tuple[list, list]:
    """:func:`_get_contexts` of GET_STORAGE_CLASSES, built once: building
    them validates ~3,000 UIDs (pynetdicom copies the contexts per
    association, cheaply: see ``ContextList``)."""
    return _get_contexts(GET_STORAGE_CLASSES)


def retrieve(node, archive, *, study_uid: str, series_uid: str | None = None,
             instance_uid: str | None = None, method: str = "get", calling_ae: str,
             move_destination: str | None = None, listener_host: str | None = None,
             listener_port: int | None = None, timeout: float = 10.0,
             progress: ProgressFn | None = None, cancel: threading.Event | None = None,
             dimse_timeout: float = 60.0) -> TransferProgress:
    """Retrieve a study, series or instance from *node* by C-GET or C-MOVE.

    C-GET: the instances come back on our association and are stored through
    ``archive.store_bytes``.  C-MOVE: the PACS sends them to *move_destination*
    (default: *calling_ae*), i.e. our listener, which stores them.
    Returns the final :class:`TransferProgress`; raises :class:`ScuError` when
    the retrieve cannot start or fails as a whole (instances that did arrive
    are kept).

    A C-GET that leaves instances behind (a SOP class or transfer syntax the
    association did not offer, ...) asks for them once more, offering every
    syntax we accept for their classes (see :func:`_get_missing`).
    """
    if method not in ("get", "move"):
        raise ScuError(f"unknown retrieve method {method!r} (get or move)", kind="usage")
    level = _level_for(series_uid, instance_uid)
    prog = TransferProgress()
    cancel = cancel or threading.Event()
    ident = _retrieve_identifier(level, study_uid, series_uid, instance_uid)
    _retrieve_pass(node, archive, prog, ident, method=method, calling_ae=calling_ae,
                   move_destination=move_destination, listener_host=listener_host,
                   listener_port=listener_port, timeout=timeout, progress=progress,
                   cancel=cancel, dimse_timeout=dimse_timeout)
    if method == "get" and (prog.failed or prog.error) and not prog.cancelled:
        _get_missing(node, archive, prog, study_uid=study_uid, series_uid=series_uid,
                     instance_uid=instance_uid, calling_ae=calling_ae, timeout=timeout,
                     progress=progress, cancel=cancel, dimse_timeout=dimse_timeout)
    if prog.error and not prog.completed and not prog.cancelled:
        raise ScuError(f"{_target(node)}: {prog.error}", kind="failed")
    return prog


def _retrieve_pass(node, archive, prog: TransferProgress, ident: Dataset, *, method: str,
                   calling_ae: str, move_destination: str | None, listener_host: str | None,
                   listener_port: int | None, timeout: float, progress: ProgressFn | None,
                   cancel: threading.Event, dimse_timeout: float,
                   negotiation: tuple[list, list] | None = None) -> None:
    """One C-GET or C-MOVE request of :func:`retrieve` (identifier *ident*),
    its counts and failures in *prog*.  A final failure status sets
    ``prog.error`` (the caller decides); *negotiation*: a C-GET's contexts
    and role items (default: :func:`_get_negotiation`)."""
    target = _target(node)
    lock = threading.Lock()
    handlers = []
    ext_neg = None
    pending: list = []
    writer = ThreadPoolExecutor(max_workers=RETRIEVE_WRITERS, thread_name_prefix="cget-store")
    if method == "get":
        install_dimse_hook()  # C-STORE responses encoded directly
        model = StudyRootQueryRetrieveInformationModelGet
        contexts, ext_neg = negotiation or _get_negotiation()

        def on_store(event):
            try:
                data = received_part10(event)
            except Exception as exc:  # noqa: BLE001
                log.warning("C-GET: cannot read the received data set: %s", exc)
                return st.CANNOT_UNDERSTAND
            # The PACS keeps its copy, so the sub-operation is acknowledged once
            # the file is written; the index commit (one file-system sync per
            # group) completes in the background and is awaited before the
            # retrieve reports anything as done.
            # Parsing and writing happen on a worker thread so that the next
            # sub-operation can arrive meanwhile; a failure there is reported
            # per instance at the end (FailedSOPInstanceUIDList-like).
            attach(event.request, data)()
            return st.SUCCESS

        def store(req, data, ts=None):
            if data is None:  # (the request's bytes, as received)
                hdr = received_header(req, ts)
                if hdr is None:
                    raise DicomFileError("data set: its bytes cannot be made into a file")
            else:
                hdr = checked_header(req, data)
            with lock:
                prog.bytes += hdr.size
            return archive.submit_bytes(hdr.data, origin=f"dicom:{node.ae_title}",
                                        name=f"C-GET from {node.ae_title}", header=hdr,
                                        window=RETRIEVE_GROUP_WINDOW)

        def attach(req, data, ts=None) -> Callable[[], None]:
            # The store counted in the retrieve; the call that hands it to a
            # writing thread.
            sop = str(getattr(req, "AffectedSOPInstanceUID", "") or "?")
            fut: Future = Future()
            with lock:
                pending.append((sop, fut))
            return functools.partial(submit_into, writer, fut,
                                     functools.partial(store, req, data, ts))

        def quick_store(req):
            # A request on its own context, for which we are the SCP, whose
            # bytes the fast path kept as received: acknowledged here, its
            # Part 10 bytes joined on the writing thread, not this one (the
            # DUL's, which the next sub-operation waits for).  Anything else
            # goes through pynetdicom's C-STORE SCP code and on_store.
            cx = assoc._accepted_cx.get(req._context_id)
            if (cx is None or not cx.as_scp or not cx.transfer_syntax
                    or cx.abstract_syntax != req.AffectedSOPClassUID):
                return None
            ts = str(cx.transfer_syntax[0])
            if not received_later(req, ts):
                return None
            uids, named = received_uids(req, ts), command_uids(req)
            if uids is not None and uids != named:
                # (Checked on the writing thread where the first fragment
                # cannot tell: the retrieve then counts it as failed.)
                reason = (f"refused (0xA900): the C-STORE names {named[1]} ({named[0]}), "
                          f"its data set is {uids[1]} ({uids[0]})")
                log.warning("C-GET from %s: %s", node.ae_title, reason)
                with lock:
                    prog.failures[named[1]] = reason
                return st.DATASET_DOES_NOT_MATCH_SOP_CLASS
            # Answered first, handed to a writing thread after: the PACS's
            # next store waits for the answer, not for the hand-off.
            return AnswerFirst(st.SUCCESS, attach(req, None, ts))

        handlers.append((evt.EVT_C_STORE, on_store))
    else:
        model = StudyRootQueryRetrieveInformationModelMove
        contexts = [build_context(model)]
    dest = (move_destination or calling_ae).strip()
    assoc, ae = open_association(target, calling_ae, contexts, timeout=timeout,
                                 what=f"C-{method.upper()}", ext_neg=ext_neg, handlers=handlers,
                                 dimse_timeout=dimse_timeout)
    lazy_pending_responses(assoc)
    lean_retrieve_responses(assoc)
    gathering = method == "move" and gather_pending_responses(assoc)
    if method == "get":
        serve_stores_inline(assoc, quick_store)
    what = f"C-{method.upper()}"
    cancel_sent = [0.0]

    def watch():
        # Send C-CANCEL as soon as asked, even while waiting for a response.
        while not done.wait(0.05):
            if cancel.is_set() and not cancel_sent[0]:
                cancel_sent[0] = time.monotonic()
                try:
                    assoc.send_c_cancel(msg_id, query_model=model)
                except Exception as exc:  # noqa: BLE001
                    log.debug("C-CANCEL failed: %s", exc)
            elif cancel_sent[0] and time.monotonic() - cancel_sent[0] > 5.0 and assoc.is_established:
                log.warning("%s: no answer to C-CANCEL within 5 s; aborting", target)
                assoc.abort()
                return

    done = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True, name="retrieve-cancel")
    watcher.start()
    # C-MOVE: our listener may acknowledge the PACS's stores once written and
    # leave their index commits to us (net.moves); settled below like C-GET's.
    msg_id = ACTIVE_MOVES.next_message_id() if method == "move" else 1
    moves = (ACTIVE_MOVES.expecting(node.ae_title, calling_ae, msg_id) if method == "move"
             else nullcontext())
    expectation = moves.__enter__()
    if expectation is not None:
        pending = expectation.pending
        if gathering:
            expectation.on_source_closed = functools.partial(stop_gathering, assoc)
    try:
        responses = (assoc.send_c_get(ident, model, msg_id=msg_id) if method == "get"
                     else assoc.send_c_move(ident, dest, model, msg_id=msg_id))
        final = None
        last = time.monotonic()
        for status, identifier in responses:
            if status is None or "Status" not in status:
                lost = _lost(assoc, target, what, dimse_timeout, calling_ae, last)
                prog.error = str(lost)
                if cancel.is_set():
                    prog.cancelled = True
                    return
                raise ScuError(prog.error, kind=lost.kind)
            last = time.monotonic()
            code = status.Status
            remaining = status.get("NumberOfRemainingSuboperations")
            prog.completed = int(status.get("NumberOfCompletedSuboperations") or 0)
            prog.failed = int(status.get("NumberOfFailedSuboperations") or 0)
            prog.warning = int(status.get("NumberOfWarningSuboperations") or 0)
            if remaining is not None:
                prog.remaining = int(remaining)
                prog.total = prog.completed + prog.failed + prog.warning + prog.remaining
            if st.is_pending(code):
                if progress:
                    progress(prog)
                continue
            final = (code, status, identifier)
            break
        if final is None:
            raise ScuError(f"{target}: the {what} ended without a final response", kind="aborted")
        code, status, identifier = final
        prog.status = code
        prog.remaining = 0
        prog.total = max(prog.total, prog.completed + prog.failed + prog.warning)
        for uid in _failed_uids(identifier):
            prog.failures.setdefault(uid, "failed at the PACS (FailedSOPInstanceUIDList)")
        if code == st.CANCEL:
            prog.cancelled = True
        elif code == st.MOVE_DESTINATION_UNKNOWN:
            raise ScuError(f"{target}: C-MOVE refused, move destination {dest!r} unknown: "
                           f"{move_destination_hint(dest, listener_host, listener_port)}",
                           kind="move-destination")
        elif (method == "move" and st.is_failure(code) and not prog.completed and not prog.failed
              and not prog.warning and 0xC000 <= code <= 0xCFFF):
            # Orthanc (1.10) answers an unknown destination with 0xC000 and no comment.
            comment = status.get("ErrorComment", "")
            raise ScuError(f"{target}: C-MOVE refused before any transfer "
                           f"({st.describe(code)}{': ' + comment if comment else ''}); most often "
                           f"{move_destination_hint(dest, listener_host, listener_port)}",
                           kind="move-destination")
        elif st.is_failure(code) and code != st.SUCCESS:
            comment = status.get("ErrorComment", "")
            prog.error = f"{what} answered {st.describe(code)}" + (f": {comment}" if comment else "")
        if progress:
            progress(prog)
    finally:
        done.set()
        watcher.join(1.0)
        _close(assoc, ae)
        moves.__exit__(None, None, None)
        writer.shutdown(wait=True)
        if pending:
            # No more instances are coming: their grouped commit need not
            # wait out its window (up to RETRIEVE_GROUP_WINDOW per retrieve).
            archive.writer.flush()
        _settle(pending, prog, dimse_timeout)


def _held_by_pacs(node, *, study_uid: str, series_uid: str | None, instance_uid: str | None,
                  calling_ae: str, timeout: float) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (SOP Class UID, Series Instance UID) of what *node*
    holds for a retrieve of these UIDs: C-FIND at series level (for a
    study), then at image level per series, as a Study Root query must."""
    series = [series_uid] if series_uid else [
        r["SeriesInstanceUID"] for r in query(node, "series", {"StudyInstanceUID": study_uid},
                                              calling_ae=calling_ae, timeout=timeout,
                                              keys=("SeriesInstanceUID",))
        if r.get("SeriesInstanceUID")]
    held: dict[str, tuple[str, str]] = {}
    for se in series:
        for r in query(node, "image", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": se,
                                       "SOPInstanceUID": instance_uid or "", "SOPClassUID": ""},
                       calling_ae=calling_ae, timeout=timeout, keys=()):
            if r.get("SOPInstanceUID") and r.get("SOPClassUID"):
                held[r["SOPInstanceUID"]] = (r["SOPClassUID"], r.get("SeriesInstanceUID") or se)
    return held


def _stored_here(archive, study_uid: str, uids) -> set[str]:
    """Which of the SOP Instance UIDs *uids* (of study *study_uid*) the archive holds."""
    rows = archive.find("instance", {"StudyInstanceUID": study_uid})
    return {r["SOPInstanceUID"] for r in rows} & set(uids)


def _get_missing(node, archive, prog: TransferProgress, *, study_uid: str,
                 series_uid: str | None, instance_uid: str | None, calling_ae: str,
                 timeout: float, progress: ProgressFn | None, cancel: threading.Event,
                 dimse_timeout: float) -> None:
    """The second pass of a C-GET that left instances behind.

    The PACS can only send an instance on a context we proposed, for its
    SOP class, in a transfer syntax it can produce.  A C-GET association
    holds at most 127 storage classes (there are more than 170), and one
    context per class gets a single syntax from the PACS: an instance of
    another class, or one the PACS cannot transcode to that syntax (an
    MPEG-4 video, say), fails -- its sub-operation, or, as with Orthanc,
    the whole C-GET (0xC000, often before anything was sent).

    So the PACS is asked (C-FIND, series then image level) for the class of
    every instance it holds for this retrieve, and each one not stored here
    is asked for once more, on associations that propose its class in
    every transfer syntax we accept, one context each (so that it comes as
    stored): a series missing as a whole at series level, otherwise by SOP
    Instance UID list.  *prog* then counts the whole retrieve.  Nothing
    more happens when the PACS cannot be queried or nothing is missing.
    """
    target = _target(node)
    try:
        held = _held_by_pacs(node, study_uid=study_uid, series_uid=series_uid,
                             instance_uid=instance_uid, calling_ae=calling_ae, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a best effort: the first pass's result stands
        log.info("%s: C-GET incomplete; could not ask the PACS what it holds: %s", target, exc)
        if prog.error:
            prog.error += (" (a C-GET proposes at most 127 SOP classes, each in one transfer "
                           "syntax; for instances of others, retrieve by C-MOVE)")
        return
    here = _stored_here(archive, study_uid, held)
    missing = {u: v for u, v in held.items() if u not in here}
    if not missing:
        return
    classes = sorted({cls for cls, _ in missing.values()})
    proposed = set(GET_STORAGE_CLASSES)
    unproposed = [c for c in classes if c not in proposed]
    log.info("%s: %d instance(s) missing after the C-GET%s: asking for them again, proposing "
             "every transfer syntax we accept for their SOP class(es)", target, len(missing),
             " (SOP classes not proposed: " + ", ".join(
                 f"{UID(c).name} {c}" if UID(c).name != c else c for c in unproposed) + ")"
             if unproposed else "")
    first = {"completed": prog.completed, "warning": prog.warning, "bytes": prog.bytes}
    done = {"completed": 0, "warning": 0, "bytes": 0}
    reasons: dict[str, str] = {}
    status, error = prog.status, prog.error

    def merged(p2: TransferProgress) -> None:
        prog.completed = first["completed"] + done["completed"] + p2.completed
        prog.warning = first["warning"] + done["warning"] + p2.warning
        prog.bytes = first["bytes"] + done["bytes"] + p2.bytes
        prog.remaining = p2.remaining
        prog.total = max(len(held), prog.completed + prog.warning)
        if progress:
            progress(prog)

    by_series: dict[str, list[str]] = {}
    for u, (_, se) in held.items():
        by_series.setdefault(se, []).append(u)
    per_assoc = max(1, GET_MAX_STORAGE_CLASSES // len(GET_RETRY_SYNTAXES))
    for i in range(0, len(classes), per_assoc):
        chunk = set(classes[i:i + per_assoc])
        negotiation = _get_contexts(sorted(chunk), [(ts,) for ts in GET_RETRY_SYNTAXES])
        for se, uids in by_series.items():
            wanted = [u for u in uids if u in missing and missing[u][0] in chunk]
            if not wanted or cancel.is_set():
                continue
            if instance_uid:
                ident = _retrieve_identifier(Level.IMAGE, study_uid, se, instance_uid)
            elif len(wanted) == len(uids):
                ident = _retrieve_identifier(Level.SERIES, study_uid, se, None)
            else:
                ident = _retrieve_identifier(Level.IMAGE, study_uid, se, None)
                ident.SOPInstanceUID = wanted
            p2 = TransferProgress()
            try:
                _retrieve_pass(node, archive, p2, ident, method="get", calling_ae=calling_ae,
                               move_destination=None, listener_host=None, listener_port=None,
                               timeout=timeout, progress=merged, cancel=cancel,
                               dimse_timeout=dimse_timeout, negotiation=negotiation)
            except ScuError as exc:
                p2.error = str(exc)
            for k in done:
                done[k] += getattr(p2, k)
            reasons.update(p2.failures)
            if p2.cancelled:
                prog.cancelled = True
            if p2.error:
                status, error = p2.status, p2.error
    # What the whole retrieve left out, now: the instances held there and not here.
    here = _stored_here(archive, study_uid, held)
    still = [u for u in held if u not in here]
    prog.completed = first["completed"] + done["completed"]
    prog.warning = first["warning"] + done["warning"]
    prog.bytes = first["bytes"] + done["bytes"]
    prog.failures = {u: reasons.get(u) or prog.failures.get(u)
                     or f"not received ({UID(held[u][0]).name})" for u in still}
    prog.failed = len(still)
    prog.remaining = 0
    prog.total = max(len(held), prog.completed + prog.failed + prog.warning)
    if still:
        # (An error only where a pass had one: instances that failed one by
        # one leave a partial retrieve, as without a second pass.)
        prog.status = status if status is not None and st.is_failure(status) else st.WARNING_SUBOPS
        prog.error = (f"{error}; {len(still)} instance(s) still missing after asking again"
                      if error else None)
    else:
        prog.status = st.WARNING_SUBOPS if prog.warning else st.SUCCESS
        prog.error = None
    if progress:
        progress(prog)


def _settle(pending: list, prog: "TransferProgress", timeout: float) -> None:
    """Wait for the index commits of the instances retrieved (C-GET stores, and
    C-MOVE stores our listener acknowledged early); count those that failed."""
    for sop, fut in pending:
        try:
            out = fut.result(timeout)  # C-GET: the write, then the index commit
            if isinstance(out, Future):
                out.result(timeout)
        except Exception as exc:  # noqa: BLE001 - a per-instance failure
            prog.failures[sop] = f"not stored here: {exc}"
    lost = sum(1 for sop, _ in pending if sop in prog.failures)
    if lost:
        prog.completed = max(0, prog.completed - lost)
        prog.failed += lost


# --------------------------------------------------------------------------- send
@dataclass
class _Item:
    row: dict
    sop_uid: str
    sop_class: str
    ts: str


def _items(rows: Iterable[dict]) -> list[_Item]:
    out = []
    for r in rows:
        out.append(_Item(r, str(r["SOPInstanceUID"]), str(r.get("SOPClassUID") or ""),
                         str(r.get("TransferSyntaxUID") or ExplicitVRLittleEndian)))
    return out


def send_contexts(items: list[_Item], limit: int = 128) -> list:
    """One context per (SOP class, compressed syntax) needed, plus one per SOP
    class with explicit + implicit little endian (the fallback)."""
    ctxs = []
    seen = set()
    classes = []
    for it in items:
        if it.sop_class not in classes:
            classes.append(it.sop_class)
    for c in classes:
        ctxs.append(build_context(c, list(UNCOMPRESSED)))
    for it in items:
        key = (it.sop_class, it.ts)
        if it.ts in UNCOMPRESSED or key in seen:
            continue
        seen.add(key)
        if len(ctxs) < limit:
            ctxs.append(build_context(it.sop_class, [it.ts]))
    return ctxs[:limit]


def _accepted(assoc) -> dict[str, set[str]]:
    acc: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        acc.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return acc


def _prepare(archive, it: _Item, accepted: dict[str, set[str]]):
    """What to hand to send_c_store: a path (sent as stored) or a transcoded Dataset."""
    syntaxes = accepted.get(it.sop_class, set())
    if not syntaxes:
        raise ScuError(f"the peer accepts no presentation context for SOP class {it.sop_class}",
                       kind="refused")
    path = archive.instance_file(it.row)
    if it.ts in syntaxes:
        # Sent as stored: the file's data set bytes go out unchanged (no
        # decode, no re-encode; the command set is encoded directly).
        data = archive.read_instance(it.row)
        try:
            inst = StoredInstance.from_file(data)
        except ValueError:
            inst = None
        if inst is not None and str(inst.file_meta.TransferSyntaxUID) == it.ts \
                and not UID(it.ts).is_deflated:
            return inst, len(data)
        if path is not None and path.is_file():
            return path, len(data)
        return dcmread(BytesIO(data)), len(data)
    data = archive.read_instance(it.row)
    ds = dcmread(BytesIO(data))
    if UID(it.ts).is_compressed:
        ds.decompress()  # -> explicit VR little endian, pixels decoded by pylibjpeg
    if ExplicitVRLittleEndian in syntaxes:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_original_encoding(False, True)
    else:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.set_original_encoding(True, True)
    return ds, len(data)


def send(node, archive, rows: Iterable[dict], *, calling_ae: str, timeout: float = 10.0,
         retries: int = 1, progress: ProgressFn | None = None,
         cancel: threading.Event | None = None, dimse_timeout: float = 60.0) -> TransferProgress:
    """C-STORE the IMAGE-level archive *rows* to *node*; failed instances are
    retried *retries* more times (on a new association if the first was lost)."""
    # Files whose stored syntax the peer accepted go out as they are: a
    # StoredInstance whose data set bytes the encode hook passes through
    # (no decode/re-encode), with the command set encoded directly.  The flag
    # covers the fallback of sending by path (streamed from disk, not parsed).
    _config.STORE_SEND_CHUNKED_DATASET = True
    install_encode_hook()
    install_dimse_hook()
    items = _items(rows)
    target = _target(node)
    prog = TransferProgress(total=len(items))
    cancel = cancel or threading.Event()
    todo = items
    attempt = 0
    while todo and not cancel.is_set():
        failed_now: list[_Item] = []
        try:
            assoc, ae = open_association(target, calling_ae, send_contexts(todo), timeout=timeout,
                                         what="C-STORE", dimse_timeout=dimse_timeout)
        except ScuError as exc:
            if attempt == 0 or attempt >= retries:
                prog.error = str(exc)
                for it in todo:
                    prog.failures.setdefault(it.sop_uid, str(exc))
                prog.failed = len(prog.failures)
                if attempt == 0:
                    raise
                break
            attempt += 1
            continue
        paused = PausedSender(assoc)
        # The next instance is read (and, if needed, transcoded) by a helper
        # thread while the peer stores the current one: file reads release
        # the GIL, so the wait for each response hides the next read.
        reader = ThreadPoolExecutor(1, thread_name_prefix="send-read")
        ahead: dict[int, Future] = {}

        def prepared(k: int):
            fut = ahead.pop(k, None)
            if k + 1 < len(todo) and not cancel.is_set():
                ahead[k + 1] = reader.submit(_prepare, archive, todo[k + 1], accepted)
            return fut.result() if fut is not None else _prepare(archive, todo[k], accepted)

        try:
            accepted = _accepted(assoc)
            for i, it in enumerate(todo):
                if cancel.is_set():
                    prog.cancelled = True
                    break
                if paused.peer_gone():
                    paused.resume()
                    _lost(assoc, target, "C-STORE", dimse_timeout, calling_ae)  # lets it record the abort
                if not assoc.is_established:
                    reason = f"{target}: the association was aborted before this instance was sent"
                    for rest in todo[i:]:
                        prog.failures[rest.sop_uid] = reason
                        failed_now.append(rest)
                    prog.error = reason
                    break
                sent_at = time.monotonic()
                try:
                    obj, size = prepared(i)
                    if isinstance(obj, StoredInstance):
                        rsp = paused.store(obj, msg_id=(i % 65535) + 1)
                    else:
                        paused.resume()
                        pause_reactor(assoc)
                        rsp = assoc.send_c_store(obj, msg_id=(i % 65535) + 1)
                except ScuError as exc:
                    prog.failures[it.sop_uid] = str(exc)
                    failed_now.append(it)
                    continue
                except Exception as exc:  # noqa: BLE001 - per-instance failure
                    prog.failures[it.sop_uid] = f"cannot send: {exc}"
                    failed_now.append(it)
                    continue
                code = getattr(rsp, "Status", None) if rsp is not None else None
                if code is None:
                    prog.failures[it.sop_uid] = str(_lost(assoc, target, "C-STORE",
                                                          dimse_timeout, calling_ae, sent_at))
                    failed_now.append(it)
                    continue
                if st.is_failure(code):
                    comment = rsp.get("ErrorComment", "")
                    prog.failures[it.sop_uid] = f"{st.describe(code)}" + (f": {comment}" if comment else "")
                    failed_now.append(it)
                    continue
                prog.failures.pop(it.sop_uid, None)
                prog.completed += 1
                prog.bytes += size
                if st.is_warning(code):
                    prog.warning += 1
                prog.failed = len(prog.failures)
                if progress:
                    progress(prog)
        finally:
            for fut in ahead.values():
                fut.cancel()
            reader.shutdown(wait=True)
            paused.resume()
            _close(assoc, ae)
        prog.failed = len(prog.failures)
        if prog.cancelled or attempt >= retries:
            break
        attempt += 1
        todo = failed_now
    prog.cancelled = prog.cancelled or cancel.is_set()
    prog.failed = len(prog.failures)
    prog.remaining = prog.total - prog.completed - prog.failed
    if progress:
        progress(prog)
    return prog
