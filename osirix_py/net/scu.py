"""The client side (SCU): C-ECHO and the association helper of :mod:`.client`.

Every failure is an exception whose message says what went wrong in words a
user can act on: which host, port and AE title, and whether the host was
unreachable, the port closed, the association rejected (and why) or aborted.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import Verification

from ..dicom import status as st
from .fastpath import ContextList, install_association_hooks, quiet_pynetdicom
from .tcp import NODELAY_HANDLER, install_dul_start_wakeup

log = logging.getLogger(__name__)

#: Seconds the pynetdicom DUL reactor sleeps when idle on client associations.
RUN_LOOP_DELAY = 0.0001


class ScuError(RuntimeError):
    """A client-side (SCU) operation failed; the message names the peer.

    ``kind``: ``"unreachable"``, ``"rejected"``, ``"aborted"``, ``"timeout"``,
    ``"failed"`` (a failure status), ``"move-destination"`` (0xA801),
    ``"refused"`` (no acceptable presentation context) or ``"usage"``.
    """

    def __init__(self, message: str, *, kind: str, reason: str = ""):
        super().__init__(message)
        self.kind = kind
        self.reason = reason


class EchoError(ScuError):
    """A C-ECHO failed.

    ``kind`` is one of ``"unreachable"`` (no TCP connection: refused, timed
    out, unknown host), ``"rejected"`` (A-ASSOCIATE-RJ; ``reason`` says why),
    ``"aborted"`` (the peer aborted, or closed the connection without an
    answer), ``"timeout"`` (no answer within the timeout) or ``"failed"``
    (the C-ECHO itself returned a failure status).
    """


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    ae_title: str

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _diagnose_connect(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails (None: it succeeds)."""
    try:
        with socket.create_connection((host, port), timeout=max(0.2, timeout)):
            return None
    except socket.gaierror as exc:
        return f"unknown host {host!r} ({exc.strerror})"
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port} (nothing listens on that port)"
    except (socket.timeout, TimeoutError):
        return f"no answer from {host}:{port} within {timeout:.1f} s (host down or filtered)"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"


def echo_address(host: str, port: int, called_ae: str, *, calling_ae: str,
                 timeout: float = 10.0) -> float:
    """C-ECHO ``called_ae@host:port``; returns the C-ECHO round trip in seconds.

    The whole exchange (connect, associate, echo, release) is bounded by
    *timeout* (each network wait uses at most what is left of it).
    Raises :class:`EchoError`.
    """
    target = Target(host, int(port), called_ae)
    try:
        assoc, ae = open_association(target, calling_ae, [build_context(Verification)],
                                     timeout=timeout, what="Verification")
    except ScuError as exc:
        raise EchoError(str(exc), kind=exc.kind, reason=exc.reason) from None
    try:
        t0 = time.perf_counter()
        rsp = assoc.send_c_echo()
        rtt = time.perf_counter() - t0
        code = getattr(rsp, "Status", None)
        if code is None:
            if assoc.is_aborted:
                raise EchoError(f"{target}: the association was aborted during the C-ECHO",
                                kind="aborted")
            raise EchoError(f"{target}: no C-ECHO response within {timeout:.1f} s", kind="timeout")
        if code != st.SUCCESS:
            raise EchoError(f"{target}: C-ECHO answered {st.describe(code)}", kind="failed")
        return rtt
    finally:
        if assoc.is_established:
            assoc.release()
        elif not (assoc.is_rejected or assoc.is_aborted):
            assoc.abort()
        ae.shutdown()


def echo(node, calling_ae: str, timeout: float = 10.0) -> float:
    """C-ECHO a node of the nodes table (anything with host, port, ae_title)."""
    return echo_address(node.host, node.port, node.ae_title, calling_ae=calling_ae, timeout=timeout)


def _unread_rejection(assoc):
    """The A-ASSOCIATE-RJ primitive the peer's answer left unread in *assoc*'s
    DUL queue, or None.

    pynetdicom's requestor checks that the connection is still open before it
    reads the answer to its request; a peer that rejects closes the
    connection right after its A-ASSOCIATE-RJ, so when the DUL thread has
    read the rejection and closed the socket first, the association reports
    an abort and the rejection (with its reason) stays in the queue -- seen
    in ~1 of 5 rejected requests on two busy cores."""
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    q = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
    for item in list(getattr(q, "queue", None) or ()):
        if isinstance(item, A_ASSOCIATE) and item.result in (0x01, 0x02):
            return item
    return None


def open_association(target: Target, calling_ae: str, contexts, *, timeout: float = 10.0,
                     what: str = "association", ext_neg=None, handlers=(),
                     dimse_timeout: float | None = None, max_pdu: int = 0):
    """An established association to *target* (returns ``(assoc, ae)``; call
    ``assoc.release()`` and ``ae.shutdown()`` when done).

    Connecting and associating are bounded by *timeout*; DIMSE waits by
    *dimse_timeout* (default: *timeout*).  Raises :class:`ScuError` naming
    host, port and AE: unreachable, rejected (with the reason), aborted.
    """
    deadline = time.monotonic() + timeout
    quiet_pynetdicom()
    install_association_hooks()
    install_dul_start_wakeup()
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = dimse_timeout or timeout
    ae.network_timeout = max(timeout, dimse_timeout or timeout)
    ae.maximum_pdu_size = max_pdu
    connected: list[bool] = []
    assoc = ae.associate(target.host, int(target.port), contexts=ContextList(contexts),
                         ae_title=target.ae_title, ext_neg=ext_neg or None, max_pdu=max_pdu,
                         evt_handlers=[NODELAY_HANDLER,
                                       (evt.EVT_CONN_OPEN, lambda e: connected.append(True)),
                                       *handlers])
    if assoc.is_established:
        # pynetdicom's DUL reactor sleeps 1 ms whenever it finds nothing to do;
        # during a transfer that is a sleep per PDU exchange.  0.1 ms keeps the
        # idle cost low and the latency close to the network's.
        dul = getattr(assoc, "dul", None)
        if dul is not None and hasattr(dul, "_run_loop_delay") and \
                getattr(getattr(dul, "socket", None), "_osx_wake_r", None) is None:
            dul._run_loop_delay = RUN_LOOP_DELAY
        return assoc, ae
    try:
        if not connected:
            left = deadline - time.monotonic()
            why = _diagnose_connect(target.host, target.port, min(left, 3.0)) if left > 0.05 else None
            raise ScuError(f"{target}: {why or f'no TCP connection within {timeout:.1f} s'}",
                           kind="unreachable", reason=why or "timeout")
        unread = None if assoc.is_rejected else _unread_rejection(assoc)
        if assoc.is_rejected or unread is not None:
            rj = unread or assoc.acceptor.primitive
            reason = rj.reason_str if rj is not None else "no reason given"
            kind = "permanently" if rj is not None and rj.result == 0x01 else "temporarily"
            raise ScuError(f"{target}: association {kind} rejected: {reason}"
                           f" (we called as {calling_ae!r})", kind="rejected", reason=reason)
        if assoc.is_aborted:
            raise ScuError(f"{target}: the peer aborted the association request (it may not "
                           f"know our AE title {calling_ae!r}, or refuse {what})", kind="aborted")
        if time.monotonic() >= deadline - 0.05:
            raise ScuError(f"{target}: no A-ASSOCIATE answer within {timeout:.1f} s", kind="timeout")
        raise ScuError(f"{target}: the connection was closed before the association was "
                       "accepted (not a DICOM port?)", kind="aborted")
    except ScuError:
        if not (assoc.is_rejected or assoc.is_aborted):
            assoc.abort()
        ae.shutdown()
        raise
