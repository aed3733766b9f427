"""The systemd notification protocol (sd_notify), without a dependency.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for the
abstract namespace) to a ``Type=notify`` service; the service sends
newline-separated ``KEY=VALUE`` assignments in one datagram each:
``READY=1`` once it serves, ``WATCHDOG=1`` at least every ``WATCHDOG_USEC``/2
microseconds when ``WatchdogSec=`` is set, ``STOPPING=1`` when it shuts down,
``STATUS=...`` free text for ``systemctl status``.

Everything here is a no-op (returning False) outside systemd or on platforms
without Unix sockets.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send *state* (e.g. ``"READY=1\\nSTATUS=serving"``); True when sent."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address or not hasattr(socket, "AF_UNIX"):
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    elif address[0] != "/":
        log.debug("NOTIFY_SOCKET %r is neither a path nor abstract; ignored", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block the caller (the supervisor, shutdown) on a receiver
            # that does not read: a datagram that cannot go within 0.5 s is dropped.
            sock.settimeout(0.5)
            sock.connect(address)
            sock.sendall(state.encode("utf-8", "replace"))
        return True
    except OSError as exc:
        log.debug("sd_notify(%r) failed: %s", state, exc)
        return False


def ready(status: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None.

    ``WATCHDOG_PID``, when set, must be this process.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
