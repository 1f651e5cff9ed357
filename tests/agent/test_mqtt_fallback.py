"""MQTT 5 -> 3.1.1 fallback against a real broker that speaks 3.1.1 only: amqtt, in a subprocess
on a free port with its own password file and ACL (export.demo.amqtt_broker)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.commands import Dispatcher
from agent.config import parse_config
from agent.mqtt import SILENT_ATTEMPTS, MqttReporter
from agent.outbox import Outbox
from export.demo.amqtt_broker import AmqttBroker

from .conftest import CTL_PASS, CTL_USER, DEVICE_PASS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def amqtt_broker(tmp_path_factory):
    b = AmqttBroker(tmp_path_factory.mktemp("amqtt"))
    b.start()
    yield b
    b.stop()


class Listener:
    """A 3.1.1 client as the broker's ``ctl`` user: every message on ``topic``, in order."""

    def __init__(self, broker: AmqttBroker, topic: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(CTL_USER, CTL_PASS)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.connect("127.0.0.1", broker.port)
        self.c.subscribe(topic, qos=1)
        self.c.loop_start()
        assert subscribed.wait(5), "the ctl user could not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait(self, suffix: str, count: int = 1, timeout: float = 10) -> list[mqtt.MQTTMessage]:
        def hits() -> list[mqtt.MQTTMessage]:
            return [m for m in self.messages if m.topic.endswith(suffix)]

        with self._cond:
            self._cond.wait_for(lambda: len(hits()) >= count, timeout)
            return hits()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_amqtt_does_not_answer_an_mqtt5_connect(amqtt_broker):
    """What the fallback must detect: amqtt cannot parse an MQTT 5 CONNECT (with a will, as the
    daemon sends) and answers nothing at all; the connection ends on the client's keepalive."""
    connacks: list[str] = []
    ended: list[tuple[int, bool]] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-v5", protocol=mqtt.MQTTv5)
    c.username_pw_set("dev1", DEVICE_PASS)
    c.will_set("palm/dev1/availability", b"offline", qos=1, retain=True)
    c.on_connect = lambda cl, ud, flags, rc, props: connacks.append(str(rc))
    c.on_disconnect = lambda cl, ud, flags, rc, props: (
        ended.append((rc.value, flags.is_disconnect_packet_from_server)),
        done.set(),
    )
    c.connect_async("127.0.0.1", amqtt_broker.port, keepalive=2)
    c.loop_start()
    try:
        assert done.wait(10), "the MQTT 5 attempt neither succeeded nor ended"
    finally:
        c.loop_stop()
    assert connacks == []  # neither accepted nor refused with "unsupported protocol version"
    assert ended[0] == (141, False)  # keep alive timeout, on our side

    # the same client on 3.1.1 is accepted: the broker is up and the password is right
    ok = threading.Event()
    c3 = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-v3", protocol=mqtt.MQTTv311)
    c3.username_pw_set("dev1", DEVICE_PASS)
    c3.on_connect = lambda cl, ud, flags, rc, props: ok.set() if not rc.is_failure else None
    c3.connect("127.0.0.1", amqtt_broker.port)
    c3.loop_start()
    assert ok.wait(5)
    c3.loop_stop()
    c3.disconnect()


def test_reporter_falls_back_to_311_and_delivers(amqtt_broker, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    sub = Listener(amqtt_broker, "palm/dev1/#")
    section = amqtt_broker.mqtt_section("dev1", protocol="auto", keepalive=5, decision_expiry=8)
    cfg = parse_config({"device": {"id": "dev1"}, "mqtt": section})
    r = MqttReporter(cfg.mqtt, "dev1", Outbox(tmp_path / "outbox.sqlite"))
    # queued before the first connect: older than decision_expiry by the time the fallback has
    # taken its two keepalive periods, so it must be dropped as stale on 3.1.1 as well
    r.decision({"seq": "stale"})
    t0 = time.monotonic()
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 40
        while not r.counters()["connected"] and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - t0
        print(f"fallback_to_311_connected_after_s={took:.1f}")
        c = r.counters()
        assert c["connected"] and c["protocol"] == "3.1.1", c
        assert took >= SILENT_ATTEMPTS * 5 - 0.5  # two silent attempts, not one
        assert any("falling back to 3.1.1" in m for m in caplog.messages)
        assert sub.wait("/availability")[-1].payload == b"online"

        for i in range(3):
            r.decision({"seq": i, "decision": "denied"})
        got = sub.wait("/decision", count=3)
        assert [json.loads(m.payload)["seq"] for m in got] == [0, 1, 2]
        assert not any(m.retain for m in got)
        deadline = time.monotonic() + 10
        while r.outbox.depth() and time.monotonic() < deadline:  # removed on the 3.1.1 PUBACK
            time.sleep(0.05)
        assert r.outbox.depth() == 0
        assert r.counters()["outbox_expired"] == 1

        # commands: no response topic exists on 3.1.1, the reply goes to <base>/reply
        sub.c.publish("palm/dev1/cmd", b'{"cmd": "fly", "id": 9}', qos=1)
        reply = sub.wait("/reply")
        assert reply and reply[0].topic == "palm/dev1/reply"
        doc = json.loads(reply[0].payload)
        assert doc["ok"] is False and doc["id"] == 9
        assert doc["error"]["code"] == "unknown_command"
    finally:
        r.stop(timeout=2)
    assert sub.wait("/availability", count=2)[-1].payload == b"stopped"
    sub.close()


class SilentBroker:
    """A TCP listener that accepts every connection and never answers: no CONNACK, ever."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            while True:
                self.accepted.append(self.sock.accept()[0])

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_a_broker_that_never_answers_is_one_warning_not_one_per_attempt(tmp_path, caplog):
    """A broker that accepted the connection and never sent a CONNACK had "mqtt connection ended
    without a CONNACK" logged at WARNING on every reconnect attempt, flooding the journal. It is
    one WARNING per outage (each later attempt at DEBUG), and the fallback still happens."""
    silent = SilentBroker()
    section = {"host": "127.0.0.1", "port": silent.port, "tls": False, "protocol": "auto",
               "reconnect_min": 0.2, "reconnect_max": 0.5}  # fmt: skip
    cfg = parse_config({"device": {"id": "dev30"}, "mqtt": section}, env={}, check_files=False)
    # a one-second keepalive (the schema's minimum is 5): an attempt ends after one second
    mqtt_cfg = cfg.mqtt.model_copy(update={"keepalive": 1})
    caplog.set_level(logging.DEBUG, logger="agent.mqtt")
    r = MqttReporter(mqtt_cfg, "dev30", Outbox(tmp_path / "outbox.sqlite"))
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        time.sleep(6)
        protocol = r.counters()["protocol"]
    finally:
        r.stop(timeout=0.5)
        silent.close()
    ended = [x for x in caplog.records if "without a CONNACK" in x.getMessage()]
    warned = [x.getMessage() for x in caplog.records if x.levelno >= logging.WARNING]
    print(f"attempts={len(ended)} warnings={len(warned)}")
    assert len(ended) >= SILENT_ATTEMPTS + 1, ended  # silent on 3.1.1 as well
    assert protocol == "3.1.1"  # two silent MQTT 5 attempts still fall back
    assert len([m for m in warned if "without a CONNACK" in m]) == 1, warned
    assert len(warned) == 2 and "falling back to 3.1.1" in warned[1], warned
    assert all(x.levelno == logging.DEBUG for x in ended[1:])
