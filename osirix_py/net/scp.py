"""The DICOM listener: AE setup, presentation contexts, access control, TCP_NODELAY.

:class:`Listener` runs one pynetdicom association server on the configured
bind address and port (0 picks a free port; :attr:`Listener.port` is the one
bound) in a thread of its own; pynetdicom runs each association in a thread.

Accepted: Verification; every storage SOP class pynetdicom knows, in all the
common transfer syntaxes as received (uncompressed, deflate, JPEG baseline /
extended / lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG/H.264/HEVC), with
SCP/SCU role selection so that the same contexts serve C-GET sub-operations;
Patient Root and Study Root C-FIND, C-MOVE and C-GET.

Access control (from :class:`~osirix_py.config.ListenerConfig`), applied when
the A-ASSOCIATE-RQ arrives, before any negotiation:

* ``require_called_ae``: reject (permanent, "called AE title not recognised")
  a request that does not call our AE title;
* ``accept_only_known_nodes``: reject ("calling AE title not recognised") a
  calling AE title that is not in the nodes table; with ``check_node_host``
  the peer must also connect from the node's host;
* ``max_associations`` simultaneous associations (more: transient rejection,
  "local limit exceeded"); ACSE / DIMSE / network timeouts; maximum PDU.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import socket
import threading
import time

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from ..config import ListenerConfig
from .fastpath import ContextList
from .handlers import QR_MODELS, Handlers
from .tcp import NODELAY_HANDLER, set_nodelay

log = logging.getLogger(__name__)

UNCOMPRESSED_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

#: Every transfer syntax a C-STORE is accepted in (stored as received).
ACCEPTED_TRANSFER_SYNTAXES = UNCOMPRESSED_SYNTAXES + [
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1 (Process 14, Selection Value 1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.101",  # MPEG2 MP@HL
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible HP@4.1
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 HP@4.2 2D
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 HP@4.2 3D
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo HP@4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile
]

REJECT_PERMANENT, REJECT_TRANSIENT = 0x01, 0x02
SOURCE_SERVICE_USER = 0x01
DIAG_CALLING_AE, DIAG_CALLED_AE = 0x03, 0x07


class ListenerError(RuntimeError):
    """The listener cannot start (port in use, bad bind address ...)."""


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on accepted sockets.

    pynetdicom 3.0 never sets TCP_NODELAY; without it every DIMSE exchange
    waits ~40 ms for the peer's delayed ACK.
    """

    request_queue_size = 64
    daemon_threads = True

    def get_request(self):
        sock, address = super().get_request()
        set_nodelay(sock)
        return sock, address

    def process_request(self, request, client_address) -> None:
        """Set up the association right here, in the accept loop's thread.

        pynetdicom starts a thread per connection only to build the
        ``Association`` and start its own thread, then ends; that extra
        thread's start and hand-off were ~0.15 ms of the ~1.5 ms from
        connection to A-ASSOCIATE-AC.  Building it takes no I/O (the request
        is read, and access control decided, on the association's threads),
        so the accept loop is not held up.
        """
        self.process_request_thread(request, client_address)

    def service_actions(self) -> None:
        """pynetdicom runs a full ``gc.collect()`` every 60 polls of the accept loop.

        In a process holding an archive (SQLAlchemy, pydicom objects, caches)
        that full collection takes ~100 ms with the GIL held: every 12 s the
        web server and the other associations stalled.  The young generations
        are enough to free the finished associations' reference cycles; the
        interpreter's own GC still runs the full collections when they are due.
        """
        self._gc[0] += 1
        if self._gc[0] >= 60:
            self._gc[0] = 0
            gc.collect(1)


class _MoveDestinationFilter(logging.Filter):
    """pynetdicom logs "Unknown Move Destination" whenever a C-MOVE handler
    ends before the first sub-operation; the handlers log the real reason
    (unknown destination, bad identifier ...) themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unknown Move Destination")


_PYNETDICOM_SC_LOG = logging.getLogger("pynetdicom.service_class")
if not any(isinstance(f, _MoveDestinationFilter) for f in _PYNETDICOM_SC_LOG.filters):
    _PYNETDICOM_SC_LOG.addFilter(_MoveDestinationFilter())


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class AccessControl:
    """Decides on each A-ASSOCIATE-RQ (EVT_REQUESTED) from the listener config."""

    def __init__(self, config: ListenerConfig, nodes):
        self.config = config
        self.nodes = nodes
        self._addr_cache: dict[str, tuple[float, set[str]]] = {}

    def _host_addresses(self, host: str) -> set[str]:
        now = time.monotonic()
        hit = self._addr_cache.get(host)
        if hit and now - hit[0] < 60:
            return hit[1]
        out: set[str] = set()
        try:
            out.add(str(ipaddress.ip_address(host)))
        except ValueError:
            try:
                for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP):
                    out.add(str(ipaddress.ip_address(info[4][0].split("%")[0])))
            except (socket.gaierror, OSError, ValueError):
                pass
        self._addr_cache[host] = (now, out)
        return out

    def _host_matches(self, node_host: str, peer_ip: str) -> bool:
        try:
            ip = ipaddress.ip_address(peer_ip.split("%")[0])
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        return str(ip) in self._host_addresses(node_host)

    def decide(self, calling: str, called: str, peer_ip: str) -> tuple[int, str] | None:
        """None to accept, else (diagnostic, reason)."""
        cfg = self.config
        if cfg.require_called_ae and called.strip() != cfg.ae_title.strip():
            return DIAG_CALLED_AE, f"called AE title {called.strip()!r} not recognised (we are {cfg.ae_title!r})"
        if cfg.accept_only_known_nodes:
            node = self.nodes.by_ae_title(calling.strip())
            if node is None:
                return DIAG_CALLING_AE, f"calling AE title {calling.strip()!r} not recognised (not in nodes table)"
            if cfg.check_node_host and not self._host_matches(node.host, peer_ip):
                return DIAG_CALLING_AE, (f"calling AE title {calling.strip()!r} not recognised from "
                                         f"{peer_ip} (node {node.name} is at {node.host})")
        return None

    def on_requested(self, event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title or "")
        called = str(rq.called_ae_title or "")
        peer = assoc.requestor.address
        try:
            verdict = self.decide(calling, called, peer)
        except Exception:  # noqa: BLE001 - the nodes table unreadable: refuse, say why
            log.exception("access control failed for %s@%s", calling, peer)
            verdict = (0x01, "access control check failed")
        if verdict is None:
            return
        diagnostic, reason = verdict
        # Our own health probe (our AE title, from this host) is refused like
        # anyone when we accept only known nodes; that is expected, not news.
        own = calling.strip() == self.config.ae_title.strip() and _is_loopback(peer)
        log.log(logging.DEBUG if own else logging.WARNING, "association from %s@%s:%s rejected: %s",
                calling.strip(), peer, assoc.requestor.port, reason)
        assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, diagnostic)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()


def build_ae(config: ListenerConfig) -> AE:
    """The application entity with every context the listener supports."""
    ae = AE(ae_title=config.ae_title)
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.connection_timeout = config.acse_timeout
    ae.maximum_associations = max(1, config.max_associations)
    ae.maximum_pdu_size = max(0, config.max_pdu)
    ae.require_called_aet = False  # done by AccessControl, with a logged reason
    ae.require_calling_aet = []
    ae.add_supported_context(Verification, UNCOMPRESSED_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        # scp_role: accept a C-GET requestor's proposal to act as Storage SCP.
        ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES,
                                 scu_role=True, scp_role=True)
    for uid in QR_MODELS:
        ae.add_supported_context(uid, UNCOMPRESSED_SYNTAXES)
    return ae


class Listener:
    """The DICOM listener.  ``start()`` binds and serves; ``stop(timeout)`` is graceful."""

    def __init__(self, config: ListenerConfig, archive, nodes, *, debug_pdus: bool = False):
        self.config = config
        self.archive = archive
        self.nodes = nodes
        self.debug_pdus = debug_pdus
        self.handlers = Handlers(archive, nodes, ae_title=config.ae_title, max_pdu=config.max_pdu)
        self.access = AccessControl(config, nodes)
        self.ae: AE | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self.failure: BaseException | None = None
        self.started_at: float | None = None

    # ------------------------------------------------------------------ state
    @property
    def port(self) -> int | None:
        """The bound port (after a first start, kept across restarts)."""
        return self._port

    @property
    def host_for_clients(self) -> str:
        """Where a local client reaches us (the bind address, or loopback)."""
        b = self.config.bind_address
        if b in ("", "0.0.0.0"):
            return "127.0.0.1"
        if b == "::":
            return "::1"
        return b

    def is_running(self) -> bool:
        """The accept loop runs and its socket is open."""
        server, thread = self._server, self._thread
        if server is None or thread is None or not thread.is_alive():
            return False
        try:
            return server.socket.fileno() != -1
        except (OSError, AttributeError):
            return False

    @property
    def active_associations(self) -> list:
        server = self._server
        return list(server.active_associations) if server is not None else []

    # -------------------------------------------------------------- start/stop
    def start(self) -> None:
        if self.is_running():
            return
        if self._server is not None:
            # A failed server: release its socket and thread; its running
            # associations go on.
            self._close_server()
        if not self.debug_pdus:
            # pynetdicom's "standard" PDU/DIMSE logging handlers and its dumps
            # of every identifier cost time on every PDU and every C-FIND
            # response even when nothing is logged (process-wide settings).
            _config.LOG_HANDLER_LEVEL = "none"
            _config.LOG_REQUEST_IDENTIFIERS = False
            _config.LOG_RESPONSE_IDENTIFIERS = False
        ae = build_ae(self.config)
        port = self._port if self._port is not None else self.config.port
        handlers = [(evt.EVT_REQUESTED, self.access.on_requested), NODELAY_HANDLER] \
            + self.handlers.bindings()
        try:
            server = ae.make_server((self.config.bind_address, port), ae_title=self.config.ae_title,
                                    evt_handlers=handlers, server_class=_Server)
        except OSError as exc:
            raise ListenerError(f"cannot listen on {self.config.bind_address}:{port}: "
                                f"{exc.strerror or exc}") from exc
        server.contexts = ContextList(server.contexts)
        ae._servers.append(server)  # so that ae.shutdown() finds it, as start_server does
        self.ae = ae
        self._server = server
        self._port = server.server_address[1]
        self.failure = None
        self._thread = threading.Thread(target=self._serve, args=(server,), daemon=True,
                                        name=f"dicom-listener:{self._port}")
        self._thread.start()
        self.started_at = time.monotonic()
        log.info("DICOM listener %s on %s:%d", self.config.ae_title, self.config.bind_address, self._port)

    def _serve(self, server: _Server) -> None:
        try:
            server.serve_forever(poll_interval=0.2)
        except BaseException as exc:  # noqa: BLE001 - reported to the supervisor
            self.failure = exc
            log.error("DICOM listener on port %s failed: %s", self._port, exc)

    def _close_server(self):
        server, thread = self._server, self._thread
        self._server = None
        self._thread = None
        if server is None:
            return None
        if thread is not None and thread.is_alive():
            server.shutdown()  # stops the accept loop, closes the socket
            thread.join(timeout=2.0)
        else:
            try:
                server.server_close()
            except OSError:
                pass
            if server in server.ae._servers:
                server.ae._servers.remove(server)
        return server

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting; let running associations finish for *timeout* s, then abort them."""
        server = self._close_server()
        if server is None:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        active = list(server.active_associations)
        if active:
            log.info("waiting up to %.0f s for %d association(s) to finish", timeout, len(active))
        while active and time.monotonic() < deadline:
            time.sleep(0.05)
            active = [a for a in active if a.is_alive()]
        for assoc in active:
            log.warning("aborting association from %s@%s (shutdown)", assoc.requestor.ae_title,
                        assoc.requestor.address)
            try:
                assoc.abort()
            except Exception:  # noqa: BLE001
                pass
        for assoc in active:
            assoc.join(timeout=2.0)
        log.info("DICOM listener on port %s stopped", self._port)
