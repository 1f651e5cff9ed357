"""MqttReporter against the session's real mosquitto, observed with mosquitto_sub and paho."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.commands import Dispatcher
from agent.config import parse_config
from agent.mqtt import MqttReporter
from agent.outbox import Outbox

from .conftest import CTL_PASS, CTL_USER, DEVICE_PASS


def reporter(broker, device, tmp_path, outbox=None, **over) -> MqttReporter:
    cfg = parse_config({"device": {"id": device}, "mqtt": broker.mqtt_section(device, **over)})
    box = outbox or Outbox(tmp_path / f"{device}-outbox.sqlite")
    return MqttReporter(cfg.mqtt, device, box, device_name="Test door", version="t")


def wait_until(pred, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def nodelay(r: MqttReporter) -> bool:
    sock = r._client.socket() if r._client is not None else None
    return sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def ctl_client(broker, v5=True) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    c.username_pw_set(CTL_USER, CTL_PASS)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def test_decisions_availability_and_clean_stop(running_broker, subscribe, tmp_path):
    sub = subscribe("palm/dev1/#")
    r = reporter(running_broker, "dev1", tmp_path)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    assert sub.wait(lambda m: m[0] == "palm/dev1/availability" and m[3] == "online")
    assert nodelay(r)  # a reply is not held back for the broker's delayed TCP acknowledgement
    for i in range(5):
        r.decision({"seq": i, "decision": "denied"})
    got = sub.wait(lambda m: m[0] == "palm/dev1/decision", count=5)
    assert [json.loads(m[3])["seq"] for m in got] == list(range(5))
    assert all(m[2] == 1 and not m[1] for m in got)  # QoS 1, never retained
    assert wait_until(lambda: r.outbox.depth() == 0)  # removed on PUBACK
    assert r.outbox.unsynced() == 0  # the pump synced them to disk after handing them over
    r.stop(timeout=2)
    assert sub.wait(lambda m: m[0] == "palm/dev1/availability" and m[3] == "stopped")
    # availability is retained, decisions are not: a late subscriber sees only "stopped"
    late = subscribe("palm/dev1/#")
    time.sleep(0.3)
    assert [m[3] for m in late.messages] == ["stopped"]


@pytest.mark.parametrize("expiry, queued", [(60, "0.12"), (0, ""), (2**32 - 1, "123456.78")])
def test_decision_properties_pack_as_paho_packs_them(expiry, queued):
    from agent.mqtt import DecisionProperties

    ours = DecisionProperties(expiry, queued)
    theirs = Properties(PacketTypes.PUBLISH)
    theirs.MessageExpiryInterval = expiry
    theirs.UserProperty = ("queued_ms", queued)
    assert ours.pack() == theirs.pack()
    back, _ = Properties(PacketTypes.PUBLISH).unpack(ours.pack())
    assert back.MessageExpiryInterval == expiry and back.UserProperty == [("queued_ms", queued)]
    assert str(ours) == str(theirs)  # what paho's debug log prints


def test_a_burst_beyond_the_window_flows_without_waiting_for_the_pumps_timer(
    running_broker, subscribe, tmp_path
):
    """Acknowledgements wake the pump only when it has a full window to refill: a burst of ten
    windows' worth still arrives whole, in order, well inside the pump's half-second timer per
    window (40 windows would take 20 s on the timer alone)."""
    from agent.mqtt import WINDOW

    sub = subscribe("palm/dev5/decision")
    r = reporter(running_broker, "dev5", tmp_path)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    assert wait_until(lambda: r.counters()["connected"])
    n = 40 * WINDOW
    t0 = time.monotonic()
    for i in range(n):
        r.decision({"seq": i})
    got = sub.wait(lambda m: True, count=n, timeout=15)
    took = time.monotonic() - t0
    assert [json.loads(m[3])["seq"] for m in got] == list(range(n))
    assert took < 10, took
    assert wait_until(lambda: r.outbox.depth() == 0)
    r.stop(timeout=2)


def test_decision_carries_message_expiry_and_time_queued_on_mqtt5(running_broker, tmp_path):
    seen: list[mqtt.MQTTMessage] = []
    c = ctl_client(running_broker)
    c.on_message = lambda cl, ud, msg: seen.append(msg)
    c.subscribe("palm/dev2/decision", qos=1)
    time.sleep(0.2)
    r = reporter(running_broker, "dev2", tmp_path, decision_expiry=120)
    r.decision({"seq": 0})  # made before the connection: it waits in the outbox
    time.sleep(0.5)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    assert wait_until(lambda: len(seen) == 1)
    r.decision({"seq": 1})
    assert wait_until(lambda: len(seen) == 2)
    assert all(0 < m.properties.MessageExpiryInterval <= 120 for m in seen)
    queued = [float(dict(m.properties.UserProperty)["queued_ms"]) for m in seen]
    assert queued[0] >= 500 and 0 <= queued[1] < 500, queued
    r.stop(timeout=2)
    c.loop_stop()
    c.disconnect()


def test_outage_reconnect_and_restart_replay_in_order(running_broker, subscribe, tmp_path):
    sub = subscribe("palm/dev3/decision", session="ctl-dev3-order")
    box_path = tmp_path / "outbox.sqlite"
    a = reporter(running_broker, "dev3", tmp_path, outbox=Outbox(box_path))
    a.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    assert wait_until(lambda: a.counters()["connected"])
    seq = 0
    for _ in range(10):
        a.decision({"seq": seq})
        seq += 1
    running_broker.stop()  # mid-stream: some of these may still be in flight
    for _ in range(10):
        a.decision({"seq": seq})
        seq += 1
    # nothing can be sent, and still each decision goes to disk within moments
    assert wait_until(lambda: a.outbox.unsynced() == 0, timeout=2)
    a.stop(timeout=0.5)  # broker away: nothing can be flushed, the rows stay on disk
    assert a.outbox.depth() > 0
    b = reporter(running_broker, "dev3", tmp_path, outbox=Outbox(box_path))  # "restarted"
    b.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    for _ in range(10):
        b.decision({"seq": seq})
        seq += 1
    running_broker.start()
    sub.proc.wait(timeout=5) if sub.proc.poll() is not None else None
    sub.stop()
    sub.start()  # the persistent session kept everything queued for us meanwhile
    assert wait_until(lambda: b.outbox.depth() == 0, timeout=15)
    got = sub.wait(lambda m: m[0] == "palm/dev3/decision", count=seq, timeout=10)
    seqs = [json.loads(m[3])["seq"] for m in got]
    assert sorted(set(seqs)) == list(range(seq)), "a decision was lost"
    # in order: duplicates (QoS 1) may repeat an earlier message, never overtake
    firsts = [s for i, s in enumerate(seqs) if s not in seqs[:i]]
    assert firsts == list(range(seq))
    b.stop(timeout=2)


def test_tls_client_cert_and_acl_confine_device(running_broker, subscribe, tmp_path):
    pki = running_broker.pki
    cert, key = pki.clients["dev4"]
    tls = {
        "port": running_broker.tls_port,
        "tls": True,
        "tls_ca_certs": str(pki.ca),
        "tls_client_cert": str(cert),
        "tls_client_key": str(key),
    }
    sub = subscribe("palm/#")
    box = Outbox(tmp_path / "dev4.sqlite")
    box.add("palm/dev5/decision", b'{"forged": true}')  # another device's topic: refused
    r = reporter(running_broker, "dev4", tmp_path, outbox=box, **tls)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    r.decision({"seq": 1})
    assert sub.wait(lambda m: m[0] == "palm/dev4/decision")
    assert nodelay(r)  # over TLS too
    assert wait_until(lambda: r.counters()["outbox_refused"] == 1)
    # the subscriber can see the decision before the device has handled its PUBACK
    assert wait_until(lambda: r.outbox.depth() == 0)
    assert not sub.on("palm/dev5/decision")

    # the same device through paho directly: MQTT 5 reports the ACL refusal as reason 135
    acks: list[int] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set("dev4", DEVICE_PASS)
    c.tls_set(ca_certs=str(pki.ca), certfile=str(cert), keyfile=str(key))
    c.on_publish = lambda cl, ud, mid, rc, props: acks.append(rc.value)
    c.connect("127.0.0.1", running_broker.tls_port)
    c.loop_start()
    c.publish("palm/dev5/decision", b"x", qos=1).wait_for_publish(5)
    c.publish("palm/dev4/decision", b"{}", qos=1).wait_for_publish(5)
    assert acks == [135, 0]
    c.loop_stop()
    c.disconnect()
    r.stop(timeout=2)


def test_tls_verification_rejects_unknown_ca(running_broker, tmp_path):
    from .conftest import make_pki

    other = make_pki(tmp_path / "other", ("dev6",))
    cert, key = running_broker.pki.clients["dev6"]
    r = reporter(
        running_broker, "dev6", tmp_path, port=running_broker.tls_port, tls=True,
        tls_ca_certs=str(other.ca), tls_client_cert=str(cert), tls_client_key=str(key),
    )  # fmt: skip
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    assert not wait_until(lambda: r.counters()["connected"], timeout=1.5)
    r.stop(timeout=0.2)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_command_reply_routing(running_broker, tmp_path, protocol):
    replies: list[mqtt.MQTTMessage] = []
    got = threading.Event()

    def on_message(cl, ud, msg):
        replies.append(msg)
        got.set()

    c = ctl_client(running_broker, v5=protocol == "5")
    c.on_message = on_message
    c.subscribe("palm/dev7/reply/#", qos=1)
    r = reporter(running_broker, "dev7", tmp_path, protocol=protocol)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    assert wait_until(lambda: r.counters()["connected"])
    time.sleep(0.2)
    props = None
    if protocol == "5":
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "palm/dev7/reply/ctl"
        props.CorrelationData = b"req-42"
    c.publish("palm/dev7/cmd", b'{"cmd": "fly", "id": 7}', qos=1, properties=props)
    assert got.wait(5)
    doc = json.loads(replies[0].payload)
    assert doc["ok"] is False and doc["id"] == 7 and doc["error"]["code"] == "unknown_command"
    if protocol == "5":
        assert replies[0].topic == "palm/dev7/reply/ctl"
        assert replies[0].properties.CorrelationData == b"req-42"
    else:
        assert replies[0].topic == "palm/dev7/reply"
    r.stop(timeout=1)
    c.loop_stop()
    c.disconnect()


def test_a_wildcard_response_topic_is_answered_on_the_reply_topic(running_broker, tmp_path):
    """A Response Topic no one may publish to: the reply goes to the device's own reply topic,
    and the commands after it are answered too."""
    replies: list[mqtt.MQTTMessage] = []
    c = ctl_client(running_broker)
    c.on_message = lambda cl, ud, msg: replies.append(msg)
    c.subscribe("palm/dev27/reply/#", qos=1)
    r = reporter(running_broker, "dev27", tmp_path)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    assert wait_until(lambda: r.counters()["connected"])
    time.sleep(0.2)
    for i, asked in enumerate(
        ["palm/dev27/reply/#", "palm/dev27/reply/+/x", "palm/dev27/reply/ok"]
    ):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = asked
        c.publish("palm/dev27/cmd", json.dumps({"cmd": "fly", "id": i}), qos=1, properties=props)
        assert wait_until(lambda i=i: len(replies) > i, timeout=5), (i, replies)
    assert [json.loads(m.payload)["id"] for m in replies] == [0, 1, 2]
    assert [m.topic for m in replies] == ["palm/dev27/reply", "palm/dev27/reply", asked]
    r.stop(timeout=1)
    c.loop_stop()
    c.disconnect()


def test_a_retained_command_is_not_run(running_broker, tmp_path):
    """A request the broker keeps would run again at every (re)connect: it is not run at all."""
    replies: list[mqtt.MQTTMessage] = []
    c = ctl_client(running_broker)
    c.on_message = lambda cl, ud, msg: replies.append(msg)
    c.subscribe("palm/dev28/reply/#", qos=1)
    c.publish("palm/dev28/cmd", b'{"cmd": "fly", "id": 1}', qos=1, retain=True).wait_for_publish()
    r = reporter(running_broker, "dev28", tmp_path)
    try:
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
        assert wait_until(lambda: r.counters()["connected"])
        c.publish("palm/dev28/cmd", b'{"cmd": "fly", "id": 2}', qos=1)
        assert wait_until(lambda: replies, timeout=5)
        time.sleep(0.5)
        assert [json.loads(m.payload)["id"] for m in replies] == [2]
    finally:
        r.stop(timeout=1)
        c.publish("palm/dev28/cmd", b"", qos=1, retain=True).wait_for_publish()  # clears it
        c.loop_stop()
        c.disconnect()


def test_a_rotated_password_file_is_read_at_the_next_reconnect(tmp_path):
    """docs/security.md: the file is read at each connect, so rotating the password on the
    broker and in the file needs no restart of the device."""
    import subprocess

    from export.demo.broker import Broker

    pw = tmp_path / "password"
    pw.write_text(DEVICE_PASS + "\n")
    with Broker(tmp_path / "broker", devices=("dev25",), tls_clients=False) as broker:
        section = {**broker.mqtt_section("dev25"), "password": None, "password_file": str(pw)}
        cfg = parse_config({"device": {"id": "dev25"}, "mqtt": section})
        r = MqttReporter(cfg.mqtt, "dev25", Outbox(tmp_path / "outbox.sqlite"))
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
        try:
            assert wait_until(lambda: r.counters()["connected"])
            passwd = str(broker.dir / "passwd")
            subprocess.run(["mosquitto_passwd", "-b", passwd, "dev25", "rotated"], check=True)
            pw.write_text("rotated\n")
            broker.stop()
            assert wait_until(lambda: not r.counters()["connected"], timeout=5)
            broker.start()
            assert wait_until(lambda: r.counters()["connected"], timeout=10)
        finally:
            r.stop(timeout=1)


class SilentLink:
    """A TCP relay to the broker that can go silent: while ``dead`` is set every byte either way
    is dropped and the connection stays up, as when Wi-Fi goes away without a word."""

    def __init__(self, port: int) -> None:
        self.port_to, self.dead = port, threading.Event()
        self.clients: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", self.port_to))
            self.clients.append(near)
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                if not self.dead.is_set():
                    b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            x.close()

    def take_over(self) -> None:
        """End the client's connection as a broker does when another client connects with its
        client id: an MQTT 5 DISCONNECT, reason 0x8E "session taken over" (mosquitto 2.0.11,
        the tests' broker, closes the socket without it; later versions and other brokers send
        it)."""
        for near in self.clients:
            with contextlib.suppress(OSError):
                near.sendall(bytes([0xE0, 2, 0x8E, 0]))
                near.close()
        self.clients.clear()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_decisions_in_flight_when_the_link_died_are_not_sent_past_their_expiry(
    running_broker, tmp_path, protocol
):
    """Handed to the network just before it went silent: once the device reconnects they go
    out again from the outbox, and those older than mqtt.decision_expiry are dropped there
    (paho itself would send them again as they were, however old)."""
    got: list[int] = []
    c = ctl_client(running_broker)
    c.on_message = lambda cl, ud, msg: got.append(json.loads(msg.payload)["seq"])
    c.subscribe("palm/dev26/decision", qos=1)
    link = SilentLink(running_broker.port)
    r = reporter(running_broker, "dev26", tmp_path, port=link.port, protocol=protocol,
                 keepalive=5, decision_expiry=4)  # fmt: skip
    try:
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
        assert wait_until(lambda: r.counters()["connected"])
        r.decision({"seq": 0})
        assert wait_until(lambda: got == [0], timeout=5)
        link.dead.set()
        r.decision({"seq": 1})
        r.decision({"seq": 2})
        # paho notices after 1.5 keepalives: 7.5 s, past the 4 s expiry of seq 1 and 2
        assert wait_until(lambda: not r.counters()["connected"], timeout=15)
        link.dead.clear()
        assert wait_until(lambda: r.counters()["connected"], timeout=10)
        r.decision({"seq": 3})
        assert wait_until(lambda: r.outbox.depth() == 0, timeout=10)
        time.sleep(0.5)
        assert got == [0, 3] and r.outbox.counter("expired") == 2, got
    finally:
        r.stop(timeout=1)
        link.close()
        c.loop_stop()
        c.disconnect()


def test_a_command_run_across_an_outage_is_answered_after_it(running_broker, subscribe, tmp_path):
    """Every request gets one reply: one whose command ends while the link is down is sent
    once the device is connected again."""
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def list_subjects(self) -> dict:
            entered.set()
            release.wait(10)
            return {"subjects": []}

    sub = subscribe("palm/dev29/reply", session="ctl-dev29-reply")
    r = reporter(running_broker, "dev29", tmp_path)
    try:
        r.start(Dispatcher(Slow()))  # type: ignore[arg-type]
        assert wait_until(lambda: r.counters()["connected"])
        c = ctl_client(running_broker)
        c.publish("palm/dev29/cmd", b'{"cmd": "list", "id": 5}', qos=1).wait_for_publish()
        c.loop_stop()
        c.disconnect()
        assert entered.wait(5)
        running_broker.stop()
        assert wait_until(lambda: not r.counters()["connected"], timeout=5)
        release.set()  # the reply is made while the link is down
        time.sleep(0.3)
        running_broker.start()
        sub.stop()
        sub.start()  # its persistent session kept what arrived meanwhile
        got = sub.wait(lambda m: m[0] == "palm/dev29/reply", timeout=10)
        assert got and json.loads(got[0][3])["id"] == 5, got
    finally:
        release.set()
        r.stop(timeout=1)


def test_home_assistant_discovery_and_republish(running_broker, subscribe, tmp_path):
    sub = subscribe("homeassistant/event/dev8/#")
    r = reporter(running_broker, "dev8", tmp_path, homeassistant={"enabled": True})
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    first = sub.wait(lambda m: m[0].endswith("/config"))
    doc = json.loads(first[0][3])
    assert doc["state_topic"] == "palm/dev8/decision"
    assert doc["event_types"] == ["granted", "denied", "unknown", "error"]
    assert doc["availability"][0]["topic"] == "palm/dev8/availability"
    assert doc["device"]["identifiers"] == ["palm-agent-dev8"]
    c = ctl_client(running_broker)
    c.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
    assert len(sub.wait(lambda m: m[0].endswith("/config"), count=2)) >= 2
    r.stop(timeout=1)
    c.loop_stop()
    c.disconnect()


def test_two_devices_with_one_client_id_back_off_and_say_why(running_broker, tmp_path, caplog):
    # an SD card cloned from another device keeps its device.id: the broker throws each
    # connection off as the other connects, and both used to reconnect at once, forever
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    errors: list[dict] = []
    seen = ctl_client(running_broker)
    seen.on_message = lambda c, u, m: errors.append(json.loads(m.payload))
    seen.subscribe("palm/dev1/error", qos=1)
    pair = [reporter(running_broker, "dev1", tmp_path / name, reconnect_max=2.0) for name in "ab"]
    for r in pair:
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    time.sleep(6)
    connects = sum(r.getMessage().startswith("mqtt connected") for r in caplog.records)
    for r in pair:
        r.stop(timeout=1)
    seen.loop_stop()
    flapping = [r for r in caplog.records if "connection_flapping" in r.getMessage()]
    assert flapping and flapping[0].levelname == "ERROR"
    assert "client_id=dev1" in flapping[0].getMessage()
    assert "device.id" in flapping[0].getMessage()
    # at a 0.1 s minimum the pair reconnected 60 times in 6 s (13 now); backing off to 2 s, the
    # streak's first waits (0.2, 0.4, 0.8, 1.6 s) leave room for about a dozen
    assert connects <= 20, connects
    # the operator hears of it on the error topic, once per streak and device
    assert 1 <= [e["event"] for e in errors].count("connection_flapping") <= 2
    assert all(e["client_id"] == "dev1" for e in errors)


def test_a_connection_stable_for_long_ends_the_streak(running_broker, tmp_path, monkeypatch):
    # an outage after a long stable connection reconnects at the configured minimum, however
    # many short connections came before it
    from agent import flapping

    monkeypatch.setattr(flapping, "STABLE_S", 3.0)
    r = reporter(running_broker, "dev1", tmp_path, reconnect_min=0.2, reconnect_max=30.0)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]

    def kick() -> float:
        """Throw the device off as a second device with its id would; seconds until it is back."""
        assert wait_until(r._link.connected.is_set)
        other = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev1", protocol=mqtt.MQTTv5)
        other.username_pw_set("dev1", DEVICE_PASS)
        other.connect("127.0.0.1", running_broker.port)
        other.loop_start()
        assert wait_until(lambda: not r._link.connected.is_set())
        other.disconnect()
        other.loop_stop()
        t0 = time.monotonic()
        assert wait_until(r._link.connected.is_set, timeout=20)
        return time.monotonic() - t0

    for _ in range(flapping.FLAPS):
        kick()
    assert kick() > 0.6  # in a streak: 0.2 s doubled twice (0.8 s)
    time.sleep(3.5)  # longer than STABLE_S
    assert kick() < 0.6  # the streak is over: back to the minimum (0.2 s)
    r.stop(timeout=1)
    # a streak of two cloned cards throwing each other off for a day, at the maximum: the
    # doublings overflowed a float (OverflowError in paho's thread, which then ended)
    r._link.streak.count = 5000
    assert r._link.streak.back_off() == r.cfg.reconnect_max


def test_a_stop_logs_its_disconnect_as_info_and_a_lost_link_as_a_warning(
    running_broker, tmp_path, caplog
):
    """Each clean stop (systemctl stop) logged "mqtt disconnected" as a warning, the same as
    a broker that went away."""

    def disconnects() -> list[tuple[str, str]]:
        return [
            (rec.levelname, rec.getMessage())
            for rec in caplog.records
            if rec.getMessage().startswith("mqtt disconnected")
        ]

    r = reporter(running_broker, "dev11", tmp_path)
    with caplog.at_level("INFO", logger="agent.mqtt"):
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
        assert wait_until(lambda: r.counters()["connected"])
        running_broker.stop()
        assert wait_until(lambda: not r.counters()["connected"])
        assert [level for level, _ in disconnects()] == ["WARNING"]
        running_broker.start()
        assert wait_until(lambda: r.counters()["connected"], timeout=15)
        r.stop(timeout=1)
    got = disconnects()
    assert [level for level, _ in got] == ["WARNING", "INFO"], got
    assert "requested=false" in got[0][1] and "requested=true" in got[1][1], got


def test_decisions_queued_before_ntp_stepped_the_clock_are_delivered(
    running_broker, subscribe, tmp_path, monkeypatch
):
    """Queued at boot on a clock 2 h behind (no real-time clock, broker not yet reachable),
    then NTP steps it forward: they were dropped as past the hour's expiry, moments old."""
    sub = subscribe("palm/dev1/decision")
    box = Outbox(tmp_path / "outbox.sqlite")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 2 * 3600)
    r = reporter(running_broker, "dev1", tmp_path, outbox=box, decision_expiry=3600)
    for i in range(3):
        r.decision({"seq": i, "decision": "granted"})
    monkeypatch.setattr(time, "time", real)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        got = sub.wait(lambda m: True, count=3)
        assert [json.loads(m[3])["seq"] for m in got] == [0, 1, 2]
        assert box.counter("expired") == 0
    finally:
        r.stop(timeout=1)


def test_a_full_disk_does_not_lose_the_decision(running_broker, subscribe, tmp_path, caplog):
    """The outbox's SQLite refuses the row (SQLITE_FULL, as on a full SD card, here through
    max_page_count): decision() raised, the capture loop lost the decision and skipped its own
    actions on it. It now goes out from memory, counted, and logged once for the episode: an
    ERROR line for each decision filled the journal of a device whose disk was already full."""
    caplog.set_level(logging.DEBUG, logger="agent.mqtt")
    sub = subscribe("palm/dev1/decision")
    box = Outbox(tmp_path / "outbox.sqlite")
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count={pages + 1}")  # room for a few rows, then full
    r = reporter(running_broker, "dev1", tmp_path, outbox=box)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        assert wait_until(r._link.connected.is_set)
        for i in range(12):
            r.decision({"seq": i, "pad": "x" * 1000})
        got = sub.wait(lambda m: True, count=12)
        assert sorted(json.loads(m[3])["seq"] for m in got) == list(range(12))
        unstored = r.counters()["outbox_unstored"]
        assert 1 < unstored < 12
        errors = [x.getMessage() for x in caplog.records if x.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert errors[0].startswith(
            f"outbox unwritable kind=disk_full path={box.path}: database or disk is full — "
            f"the disk that holds {box.path} is full; "
        ), errors[0]
        assert "until you free space on it" in errors[0], errors[0]
        still = [x for x in caplog.records if "outbox still unwritable" in x.getMessage()]
        assert len(still) == unstored - 1 and all(x.levelno == logging.DEBUG for x in still)

        with box._lock:  # space freed
            box._db.execute("PRAGMA max_page_count=1000000")
        r.decision({"seq": 12})
        r.decision({"seq": 13})
        assert sub.wait(lambda m: json.loads(m[3])["seq"] == 13)
        # one INFO line: the pump freeing a row as the broker acks it may have let a decision
        # in between refusals, the episode ending there; the ones after it are not announced
        again = [x for x in caplog.records if "writable again" in x.getMessage()]
        assert [x.levelno for x in again] == [logging.INFO], again
        m = re.fullmatch(
            rf"outbox writable again unstored=(\d+) kind=disk_full path={re.escape(str(box.path))}",
            again[0].getMessage(),
        )
        assert m and 1 <= int(m[1]) <= unstored, again[0].getMessage()
        assert r.counters()["outbox_unstored"] == unstored  # the stats keep the count
        assert wait_until(lambda: box.depth() == 0)
    finally:
        r.stop(timeout=1)


def test_an_outbox_locked_by_another_process_is_said_once(
    running_broker, subscribe, tmp_path, caplog
):
    """Another process (an open sqlite3 shell) holds the outbox's write lock past the wait for
    it: one ERROR line naming it, not one per decision, and one INFO line once it lets go. The
    wait was Python's default, 5 s, on the capture loop for every decision."""
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    sub = subscribe("palm/dev1/decision")
    box = Outbox(tmp_path / "outbox.sqlite")
    other = sqlite3.connect(box.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    r = reporter(running_broker, "dev1", tmp_path, outbox=box)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        assert wait_until(r._link.connected.is_set)
        began = time.monotonic()
        for i in range(4):
            r.decision({"seq": i})
        waited = time.monotonic() - began
        assert waited < 4.0, f"{waited:.1f} s for 4 decisions"  # 20 s at 5 s each
        other.execute("COMMIT")
        r.decision({"seq": 4})
        got = sub.wait(lambda m: True, count=5)
        assert sorted(json.loads(m[3])["seq"] for m in got) == list(range(5))
        said = [(x.levelno, x.getMessage()) for x in caplog.records if "outbox " in x.getMessage()]
        assert len(said) == 2, said
        assert said[0][0] == logging.ERROR, said
        assert said[0][1].startswith(f"outbox unwritable kind=locked path={box.path}: "), said
        assert "until you end it" in said[0][1], said
        assert said[1] == (
            logging.INFO,
            f"outbox writable again unstored=4 kind=locked path={box.path}",
        ), said
        assert r.counters()["outbox_unstored"] == 4
    finally:
        other.close()
        r.stop(timeout=1)


def test_an_outbox_on_a_file_system_gone_read_only_is_said_once(
    running_broker, subscribe, tmp_path, caplog
):
    """The kernel remounted the card read-only (errors found on it): each decision went out
    from memory under an ERROR line that called it 'failed' and said to free space; one line
    now names the read-only file system and what to do, and the rows already there still go."""
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    sub = subscribe("palm/dev1/decision")
    box = Outbox(tmp_path / "outbox.sqlite")
    r = reporter(running_broker, "dev1", tmp_path, outbox=box)
    r.decision({"seq": 0})  # a row from before, not yet sent
    writable = box._db  # kept open: closed, the last connection would remove the log file
    with box._lock:
        box._db = sqlite3.connect(f"file:{box.path}?mode=ro", uri=True, isolation_level=None,
                                  check_same_thread=False)  # fmt: skip
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        assert wait_until(r._link.connected.is_set)
        for i in range(1, 4):
            r.decision({"seq": i})
        got = sub.wait(lambda m: True, count=4)
        assert sorted(json.loads(m[3])["seq"] for m in got) == list(range(4))
        said = [(x.levelno, x.getMessage()) for x in caplog.records if x.levelno >= logging.ERROR]
        assert len(said) == 1, said
        assert said[0][1].startswith(
            f"outbox unwritable kind=read_only path={box.path}: attempt to write a readonly "
            f"database — the file system that holds {box.path} is read-only"
        ), said
        assert "mount it read-write again" in said[0][1], said
        assert r.counters()["outbox_unstored"] == 3
        # the row from before, delivered, cannot be deleted: kept aside, not a pump traceback
        # every round that held back what waited behind it
        assert wait_until(lambda: not r._pump.pending())
        assert box.depth() == 1
        warned = [x.getMessage() for x in caplog.records if x.levelno == logging.WARNING]
        assert len(warned) == 1 and warned[0].startswith(
            f"outbox cannot forget sent rows kind=read_only path={box.path}: "
        ), warned
        r.decision({"seq": 4})
        assert sub.wait(lambda m: json.loads(m[3])["seq"] == 4)
        assert not [x for x in caplog.records if x.exc_info], "a traceback"
    finally:
        r.stop(timeout=1)
        writable.close()


def test_a_decision_the_full_disk_kept_in_memory_expires_as_a_row_would(
    running_broker, subscribe, tmp_path, caplog
):
    """Held in memory across an outage, it went out when the link came back however old, with no
    message expiry: an hour-old "granted" could still open a door."""
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    sub = subscribe("palm/dev1/decision")
    box = Outbox(tmp_path / "outbox.sqlite")
    box._db.execute(f"PRAGMA max_page_count={box._db.execute('PRAGMA page_count').fetchone()[0]}")
    r = reporter(running_broker, "dev1", tmp_path, outbox=box, decision_expiry=2)
    r.decision({"seq": 0, "pad": "x" * 5000})  # no connection yet: held, and then too old
    time.sleep(2.2)
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        assert wait_until(r._link.connected.is_set)
        r.decision({"seq": 1, "pad": "x" * 5000})
        got = sub.wait(lambda m: True, count=1)
        time.sleep(0.5)
        assert [json.loads(m[3])["seq"] for m in sub.messages] == [1], got
        assert r.counters()["outbox_unstored"] == 2
        dropped = [x.getMessage() for x in caplog.records if "unstored decisions" in x.getMessage()]
        assert len(dropped) == 1 and dropped[0].startswith(
            "mqtt unstored decisions dropped count=1 oldest_age_s="
        ), dropped
    finally:
        r.stop(timeout=1)


def test_replies_made_during_an_outage_never_push_out_a_decision_held_in_memory(
    running_broker, subscribe, tmp_path, caplog
):
    """Decisions a full disk kept in memory shared one 256-entry buffer with replies and error
    events: 300 error events during an outage pushed them out without a word. They are now
    kept apart, and what a full buffer loses is logged and counted."""
    from agent.mqtt import HELD

    caplog.set_level(logging.INFO, logger="agent.mqtt")
    decisions, errors = subscribe("palm/dev1/decision"), subscribe("palm/dev1/error")
    box = Outbox(tmp_path / "outbox.sqlite")
    box._db.execute(f"PRAGMA max_page_count={box._db.execute('PRAGMA page_count').fetchone()[0]}")
    r = reporter(running_broker, "dev1", tmp_path, outbox=box)
    for i in range(3):  # no connection yet, and no room on the disk
        r.decision({"seq": i, "pad": "x" * 5000})
    extra = 44
    for i in range(HELD + extra):
        r.error({"seq": i})
    r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
    try:
        got = decisions.wait(lambda m: True, count=3)
        assert sorted(json.loads(m[3])["seq"] for m in got) == [0, 1, 2]
        got = errors.wait(lambda m: True, count=HELD)
        assert sorted(json.loads(m[3])["seq"] for m in got) == list(range(extra, HELD + extra))
        assert r.counters()["held_dropped"] == extra
        # said once, at the first loss: a WARNING for each filled the journal of a long outage
        dropped = [x for x in caplog.records if "mqtt held_dropped" in x.getMessage()]
        assert [x.levelname for x in dropped] == ["WARNING"], [x.getMessage() for x in dropped]
        assert (
            dropped[0].getMessage().startswith("mqtt held_dropped topic=palm/dev1/error dropped=1:")
        )
    finally:
        r.stop(timeout=1)


def test_a_link_that_goes_silent_is_not_taken_for_a_second_client(
    running_broker, tmp_path, caplog, monkeypatch
):
    """Flaky Wi-Fi: the broker stops answering pings and the device drops the connection soon
    after it opened. Each such drop counted towards a flapping streak, so the device backed off
    and blamed another client with its id. A keepalive timeout no longer counts (here a streak
    is one connection, so that one drop would be enough)."""
    from agent import flapping

    monkeypatch.setattr(flapping, "FLAPS", 1)
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    link = SilentLink(running_broker.port)
    r = reporter(running_broker, "dev28", tmp_path, port=link.port, protocol="5", keepalive=5,
                 reconnect_min=0.2, reconnect_max=30.0)  # fmt: skip
    try:
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
        assert wait_until(r._link.connected.is_set)
        link.dead.set()
        assert wait_until(lambda: not r._link.connected.is_set(), timeout=15)  # 1.5 keepalives
        link.dead.clear()
        assert wait_until(r._link.connected.is_set, timeout=10)
        lost = [x.getMessage() for x in caplog.records if "mqtt disconnected" in x.getMessage()]
        assert lost and "Keep alive timeout" in lost[0], lost
        assert not [x for x in caplog.records if "connection_flapping" in x.getMessage()]
        assert r._link.streak.count == 0
    finally:
        r.stop(timeout=1)
        link.close()


def test_a_session_taken_over_is_named_at_once_and_backs_off(running_broker, tmp_path, caplog):
    """A broker that says why it closed the connection (MQTT 5 reason 0x8E) needs no streak of
    short connections to know another client has this client id."""
    caplog.set_level(logging.INFO, logger="agent.mqtt")
    errors: list[dict] = []
    seen = ctl_client(running_broker)
    seen.on_message = lambda c, u, m: errors.append(json.loads(m.payload))
    seen.subscribe("palm/dev27/error", qos=1)
    link = SilentLink(running_broker.port)
    r = reporter(running_broker, "dev27", tmp_path, port=link.port, protocol="5",
                 reconnect_min=0.5, reconnect_max=30.0)  # fmt: skip
    try:
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
        assert wait_until(r._link.connected.is_set)
        link.take_over()
        t0 = time.monotonic()
        assert wait_until(lambda: not r._link.connected.is_set())
        assert wait_until(r._link.connected.is_set, timeout=10)
        assert time.monotonic() - t0 > 0.9  # twice the minimum, from the first one
        flapping = [
            x.getMessage() for x in caplog.records if "connection_flapping" in x.getMessage()
        ]
        assert len(flapping) == 1 and "session taken over by another client" in flapping[0]
        assert wait_until(lambda: [e["event"] for e in errors] == ["connection_flapping"])
    finally:
        r.stop(timeout=1)
        link.close()
        seen.loop_stop()


@pytest.mark.parametrize("in_flight", [False, True])
def test_a_broker_outage_is_one_warning_and_its_end_one_info(
    running_broker, tmp_path, caplog, in_flight
):
    """While the broker was away paho logged "Client is not connected" at ERROR on every
    reconnect attempt, which flooded the journal for as long as the outage lasted. The outage
    is one WARNING, its end one INFO, and paho's transient complaints are DEBUG."""
    r = reporter(running_broker, f"dev1{6 + in_flight}", tmp_path, reconnect_min=0.2,
                 reconnect_max=0.5)  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="agent.mqtt")
    try:
        r.start(Dispatcher(ctx=None))  # type: ignore[arg-type]
        assert wait_until(lambda: r.counters()["connected"])
        caplog.clear()
        running_broker.stop()
        if in_flight:  # decisions made while it goes away: handed to paho, never acknowledged
            for i in range(5):
                r.decision({"seq": i})
        assert wait_until(lambda: not r.counters()["connected"])
        time.sleep(3)  # a reconnect attempt every 0.5 s at most
        for i in range(5):
            r.decision({"seq": 5 + i})
        running_broker.start()
        assert wait_until(lambda: r.counters()["connected"], timeout=15)
        assert wait_until(lambda: r.outbox.depth() == 0)
    finally:
        r.stop(timeout=1)
    out = [x for x in caplog.records if x.name == "agent.mqtt"]
    assert [x.getMessage() for x in out if x.levelno >= logging.ERROR] == []
    warned = [x.getMessage() for x in out if x.levelno == logging.WARNING]
    assert len(warned) == 1 and "mqtt disconnected" in warned[0], warned
    back = [x.getMessage() for x in out if x.levelno == logging.INFO and "again" in x.getMessage()]
    assert len(back) == 1 and "down_s=" in back[0], back
    retried = [x.getMessage() for x in out if x.levelno == logging.DEBUG]
    assert any("not connected" in m or "failed" in m.lower() for m in retried), retried
