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
"""

from __future__ import annotations

import logging
import socket

from pynetdicom import evt

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


#: ``(evt.EVT_CONN_OPEN, handler)`` for ``evt_handlers=`` of ``AE.associate``.
NODELAY_HANDLER = (evt.EVT_CONN_OPEN, _on_conn_open)
