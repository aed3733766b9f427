"""TCP socket options for DICOM connections.

pynetdicom (3.0) sets ``SO_REUSEADDR`` and timeouts on its sockets but never
``TCP_NODELAY``.  Without it every small DIMSE message (a C-STORE response, a
C-FIND pending response, the command set before a data set) waits for the
peer's delayed ACK: ~40 ms per exchange, even on loopback.  Every socket that
osirix-py opens or accepts for DICOM gets it:

* accepted sockets: :class:`osirix_py.net.scp.Listener` sets it in its server's
  ``get_request`` (before the association thread starts);
* outgoing sockets (echo, C-MOVE sub-associations, the client side): the
  :data:`NODELAY_HANDLER` event handler, bound to ``EVT_CONN_OPEN``, which
  pynetdicom triggers right after ``connect()`` and before the A-ASSOCIATE-RQ
  is sent.

The same ``EVT_CONN_OPEN`` handler (bound by the listener for accepted
connections too) installs :func:`install_dul_wakeup`: pynetdicom's DUL
reactor polls its socket and sleeps 1 ms whenever nothing is there, which
cost up to 1 ms per received message and per message sent after an idle
moment; with the wake-up it waits in ``select`` on the socket AND on a
socket pair that each locally queued primitive writes to.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time

from pynetdicom import evt

from .fastpath import (
    TimeModule,
    _make_waking,
    _WakingQueue,
    install_fast_pdata,
    install_send_lock,
    move_queue,
    replace_time,
)

log = logging.getLogger(__name__)


def set_nodelay(sock: socket.socket | None) -> bool:
    """Disable Nagle on *sock*; False when it is not a TCP socket (or is closed)."""
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return True
    except (OSError, AttributeError):
        return False


def has_nodelay(sock: socket.socket | None) -> bool:
    try:
        return bool(sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    except OSError:
        return False


def association_socket(assoc) -> socket.socket | None:
    """The ``socket.socket`` under a pynetdicom association (None once closed)."""
    dul = getattr(assoc, "dul", None)
    wrapper = getattr(dul, "socket", None)
    return getattr(wrapper, "socket", None)


def _on_conn_open(event) -> None:
    if not set_nodelay(association_socket(event.assoc)):
        log.debug("could not set TCP_NODELAY on the connection to %s", event.address)
    install_dul_wakeup(event.assoc)


#: ``(evt.EVT_CONN_OPEN, handler)`` for ``evt_handlers=`` of ``AE.associate``.
NODELAY_HANDLER = (evt.EVT_CONN_OPEN, _on_conn_open)


# --------------------------------------------------------------------------- DUL wake-up
#: Longest time the DUL reactor waits in ``select`` when idle (its idle cost,
#: as pynetdicom's own 1 ms sleep).
DUL_IDLE_WAIT = 0.001


class _WakeQueue(queue.Queue):
    """The DUL's ``to_provider_queue``: each put also wakes the reactor's select."""

    def __init__(self, wake: socket.socket):
        super().__init__()
        self._osx_wake = wake
        self._osx_was_empty = False

    def _put(self, item) -> None:  # under the queue's mutex, like the reactor's get
        self._osx_was_empty = not self.queue
        self.queue.append(item)

    def put(self, item, block=True, timeout=None):  # noqa: D401 - queue.Queue API
        super().put(item, block, timeout)
        # Only the empty -> non-empty step needs a wake-up: with items already
        # queued, the reactor is busy with them and looks at the queue again
        # before it next waits.
        if self._osx_was_empty:
            try:
                self._osx_wake.send(b"\0")
            except OSError:  # buffer full (a wake-up is pending anyway) or closed
                pass


def _make_waiting_socket_class(base):
    class _WaitingSocket(base):
        """pynetdicom's ``AssociationSocket`` whose ``ready`` waits in ``select``
        (for data from the peer OR a primitive from the local user) instead
        of pynetdicom's poll-then-sleep-1-ms, which cost up to 1 ms of latency
        per received message and per message sent after an idle moment."""

        #: (see fastpath.gather_pending_responses; 0: not gathering)
        _osx_gather_until = 0.0

        @property
        def ready(self) -> bool:
            sock = self.socket
            if sock is None or self._is_connected is False:
                return False
            wake = self._osx_wake_r
            try:
                until = self._osx_gather_until
                if until:
                    # Gathering our C-MOVE's pending responses (see
                    # fastpath.gather_pending_responses): read what is there,
                    # else wait only for a wake-up until the time is up.
                    left = until - time.monotonic()
                    if left <= 0 or not self.event_queue.empty():
                        self._osx_gather_until = 0.0
                    elif select.select([sock], [], [], 0)[0]:
                        return True
                    else:
                        select.select([wake], [], [], left)
                # No wait while an event is queued: the reactor handles one per
                # loop, after this look at the socket (at an association's start
                # the connection's event and the request's came together, and
                # the request waited out a whole DUL_IDLE_WAIT here).
                wait = DUL_IDLE_WAIT if self.event_queue.empty() else 0
                ready, _, _ = select.select([sock, wake], [], [], wait)
            except (OSError, TimeoutError, ValueError):
                self.event_queue.put("Evt17")
                return False
            if wake in ready:
                try:
                    wake.recv(4096)
                except OSError:
                    pass
                return sock in ready
            return bool(ready)

        def recv(self, nr_bytes: int) -> bytearray:
            """*nr_bytes* from the socket (fewer only when the peer closed),
            read straight into one buffer; pynetdicom's own reads 4 KB per
            ``recv`` and appends (128 calls for a 512 KB image)."""
            sock = self.socket
            buf = bytearray(nr_bytes)
            got = 0
            with memoryview(buf) as view:
                while got < nr_bytes:
                    n = sock.recv_into(view[got:], nr_bytes - got)
                    if not n:
                        break
                    got += n
            if got < nr_bytes:
                del buf[got:]
            return buf

    return _WaitingSocket


#: (The wake-up socket pair is closed with the association's objects, by the
#: garbage collector: closing it while the reactor may still select on it
#: would turn into a spurious "connection closed" event.)
_WAITING_CLASSES: dict[type, type] = {}


class _DulTime(TimeModule):
    """Stands in for the ``time`` module inside ``pynetdicom.dul``.

    The DUL reactor calls ``time.sleep(self._run_loop_delay)`` at the top of
    every idle loop; with the wake-up installed that delay is 0 (the select
    in ``ready`` paces the loop), and ``time.sleep(0)`` still gives up the
    GIL and must win it back -- behind any thread that is running Python
    code, up to the 5 ms switch interval, once per loop.  Here a zero sleep
    returns at once; every other use is the real ``time`` module.
    """

    @staticmethod
    def sleep(secs: float) -> None:
        if secs > 0:
            dul = threading.current_thread()
            q = getattr(dul, "to_provider_queue", None)
            if type(q) is _WakingQueue:
                # Not connected yet: wait for the first primitive (the
                # association request) instead of sleeping through it.
                q._osx_event.clear()
                if q.empty():
                    q._osx_event.wait(secs)
                return
            import time

            time.sleep(secs)


_start_lock = threading.Lock()


def install_dul_start_wakeup() -> None:
    """Let a new DUL reactor take its first primitive at once (process-wide).

    Before its connection exists a requestor's DUL polls its queue for the
    association request with pynetdicom's 1 ms sleeps: measured, 1.1 ms
    between ``AE.associate`` sending the request and the DUL connecting,
    on each of our associations (a C-MOVE's sub-association to its
    destination, every client query, retrieve and send).  Each DUL's queue
    now sets an event on each put (fastpath's ``_make_waking``) and its idle
    sleep waits on that event; the socket wake-up replaces both once
    connected."""
    import pynetdicom.dul as dul_module
    from pynetdicom.dul import DULServiceProvider

    with _start_lock:
        original = DULServiceProvider.__init__
        if getattr(original, "_osx_hook", False):
            return

        def __init__(self, *args, **kwargs) -> None:
            original(self, *args, **kwargs)
            _make_waking(self.to_provider_queue, threading.Event())

        __init__._osx_hook = True  # type: ignore[attr-defined]
        DULServiceProvider.__init__ = __init__
        replace_time(dul_module, _DulTime)


def install_dul_wakeup(assoc) -> bool:
    """Make *assoc*'s DUL reactor wake on socket data or a local primitive at once.

    Call before the DUL runs or while nothing is queued for it (acceptor:
    ``EVT_CONN_OPEN``, before ``assoc.start()``; requestor: ``EVT_CONN_OPEN``
    inside the connect, while the association request waits).  Plain TCP only
    (an SSL socket may buffer data that select does not see); returns False
    and changes nothing otherwise.
    """
    dul = getattr(assoc, "dul", None)
    wrapper = getattr(dul, "socket", None)
    if dul is None or wrapper is None or getattr(wrapper, "_osx_wake_r", None) is not None:
        return False
    sock = getattr(wrapper, "socket", None)
    if not isinstance(sock, socket.socket) or type(sock) is not socket.socket:
        return False  # SSL or something else
    try:
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
    except OSError:
        return False
    base = type(wrapper)
    cls = _WAITING_CLASSES.get(base)
    if cls is None:
        cls = _WAITING_CLASSES[base] = _make_waiting_socket_class(base)
    new = _WakeQueue(w)
    pending = move_queue(dul.to_provider_queue, new)
    wrapper._osx_wake_r = r
    wrapper._osx_wake_w = w
    wrapper.__class__ = cls
    dul.to_provider_queue = new
    # The select above paces an idle loop now; no extra sleep per idle loop.
    dul._run_loop_delay = 0
    import pynetdicom.dul as dul_module

    replace_time(dul_module, _DulTime)
    # Received P-DATA goes straight to the DIMSE layer, and P-DATA sent by
    # another thread with nothing queued goes straight to the socket (see
    # fastpath.send_pdata).
    install_fast_pdata(dul)
    install_send_lock(dul)
    if pending:
        new._osx_wake.send(b"\0")
    return True
