"""sd_notify(3) in the standard library: one datagram on ``$NOTIFY_SOCKET``.

Written here rather than depending on ``sdnotify``, which PyPI has only as
a source distribution, so that a binary-only install (``pip install
--only-binary :all:``, or cross-installing for a Pi) works.  The rules
follow sd_notify(3) and sd_watchdog_enabled(3):

* ``NOTIFY_SOCKET`` is an absolute path, or an abstract socket name
  written with a leading ``@`` (sent with a leading NUL byte instead);
  anything else, or no variable, means nobody listens: messages are dropped.
* The watchdog is on when ``WATCHDOG_USEC`` is a positive integer and
  ``WATCHDOG_PID`` is either unset or this process's id (a child that
  inherited the variables must not ping for its parent).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Optional

_IDLE_INTERVAL = 1.0  # seconds between pings when no watchdog is asked for (they go nowhere)


def socket_address(value: str) -> Optional[str]:
    """The address to send to for a ``NOTIFY_SOCKET`` value, or None when it names no unix socket."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_usec(environ: Mapping[str, str], pid: Optional[int] = None) -> int:
    """The watchdog timeout in microseconds systemd asked this process for; 0 when off."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return 0
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and (not owner.isdigit() or int(owner) != (os.getpid() if pid is None else pid)):
        return 0
    return int(usec)


class Notifier:
    """Call with a message (``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=..."``) to tell systemd.

    ``watchdog_interval`` is half the watchdog timeout, as sd_watchdog_enabled(3)
    recommends, or 1 s when there is no watchdog.  Sending never blocks and
    never raises: a notification systemd cannot take is dropped, as with
    sd_notify(3), whose callers ignore its result.
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self._sock: Optional[socket.socket] = None
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_usec = watchdog_usec(env)
        self.watchdog_interval = self.watchdog_usec / 2e6 if self.watchdog_usec else _IDLE_INTERVAL
        self.dropped = 0  # messages that could not be sent

    def __call__(self, message: str) -> bool:
        """Send ``message``; True when it was sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
