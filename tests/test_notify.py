"""dtlnd.notify against real AF_UNIX datagram sockets: path and abstract, and the watchdog rules."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from dtlnd.notify import Notifier, socket_address, watchdog_usec


def receiver(address: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(2.0)
    return s


def test_path_socket_gets_each_message_as_one_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with receiver(path) as rx:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n("READY=1") and n("STATUS=running dtln_ns_quant\nWATCHDOG=1")
        assert rx.recv(4096) == b"READY=1"
        assert rx.recv(4096) == b"STATUS=running dtln_ns_quant\nWATCHDOG=1"
        n.close()


def test_abstract_socket_named_with_at_sign() -> None:
    name = f"dtlnd-test-{uuid.uuid4().hex}"
    with receiver("\0" + name) as rx:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.address == "\0" + name
        assert n("READY=1")
        assert rx.recv(4096) == b"READY=1"
        n.close()


def test_no_listener_drops_silently_and_counts(tmp_path: Path) -> None:
    path = str(tmp_path / "gone")
    receiver(path).close()  # bound once, nobody reads any more
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n("WATCHDOG=1") is False and n.dropped == 1
    os.unlink(path)
    assert n("WATCHDOG=1") is False and n.dropped == 2


def test_not_under_systemd_sends_nothing() -> None:
    for env in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}, {"NOTIFY_SOCKET": "@"}):
        n = Notifier(env)
        assert n.address is None and n("READY=1") is False and n.dropped == 0


def test_socket_address_rules() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == "\0abc"
    assert socket_address("vsock:2:1234") is None


@pytest.mark.parametrize(("env", "usec"), [
    ({"WATCHDOG_USEC": "4000000"}, 4_000_000),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}, 4_000_000),
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}, 0),  # meant for another process
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "x"}, 0),
    ({"WATCHDOG_USEC": "0"}, 0),
    ({"WATCHDOG_USEC": "-5"}, 0),
    ({"WATCHDOG_USEC": "4s"}, 0),
    ({}, 0),
])
def test_watchdog_enabled_rules(env: dict, usec: int) -> None:
    assert watchdog_usec(env) == usec
    n = Notifier(env)
    assert n.watchdog_usec == usec
    assert n.watchdog_interval == (usec / 2e6 if usec else 1.0)


def test_defaults_to_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with receiver(path) as rx:
        n = Notifier()
        assert n.watchdog_interval == 1.5
        n("STOPPING=1")
        assert rx.recv(4096) == b"STOPPING=1"
        n.close()
