"""sd_notify to a real AF_UNIX datagram socket, path and abstract."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from agent.notify import Notifier


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        addr = str(tmp_path / "notify.sock")
        s.bind(addr)
    else:
        name = f"palm-test-{uuid.uuid4().hex}"
        s.bind("\0" + name)
        addr = "@" + name
    s.settimeout(2)
    yield s, addr
    s.close()


def test_messages_arrive(listener):
    s, addr = listener
    n = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_interval == 2.0
    assert n.ready("ready: 3 enrolled")
    assert s.recv(4096).decode() == "READY=1\nSTATUS=ready: 3 enrolled"
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    assert n.stopping()
    assert s.recv(4096).decode().startswith("STOPPING=1\n")


def test_without_systemd_it_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None and not n.ready()


def test_watchdog_for_another_pid_is_ignored():
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000"}
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval is None
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 0.5


def test_send_failure_is_reported_not_raised(tmp_path):
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready() is False
