"""The demo's broker where mosquitto is missing: start_broker falls back to amqtt (MQTT 3.1.1,
plain TCP on loopback, passwords, the device ACL), and the demo's controller works through it."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from export.demo.amqtt_broker import AmqttBroker
from export.demo.broker import CTL_PASS, CTL_USER, mosquitto_available, start_broker
from export.demo.controller import Controller


def _client(port: int, user: str | None, password: str | None) -> tuple[mqtt.Client, str]:
    """A 3.1.1 client, connected; returns it with the CONNACK's reason."""
    answered = threading.Event()
    reason: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if user is not None:
        c.username_pw_set(user, password)
    c.on_connect = lambda cl, ud, flags, rc, props: (reason.append(str(rc)), answered.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert answered.wait(5), "no CONNACK"
    return c, reason[0]


def test_start_broker_without_mosquitto_runs_amqtt(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # the venv only
    assert not mosquitto_available()
    broker = start_broker(tmp_path / "broker", devices=("dev1", "dev2"))
    ctls: list[Controller] = []
    try:
        assert isinstance(broker, AmqttBroker) and not broker.mqtt5
        assert "amqtt" in broker.describe() and "3.1.1" in broker.describe()
        sec = broker.device_section("dev1")
        assert (sec["host"], sec["port"], sec["tls"]) == ("127.0.0.1", broker.port, False)
        conf = yaml.safe_load(broker.conf.read_text())
        assert conf["listeners"]["default"]["bind"] == f"127.0.0.1:{broker.port}"  # loopback only

        ctl1, ctl2 = (
            Controller(broker.port, "dev1", v5=False),
            Controller(broker.port, "dev2", v5=False),
        )
        ctls += [ctl1, ctl2]
        dev, rc = _client(broker.port, sec["user"], sec["password"])
        assert rc == "Success"
        dev.publish("palm/dev1/decision", json.dumps({"event_id": "e1"}), qos=1).wait_for_publish(5)
        assert ctl1.decision("e1", timeout=5) is not None
        # the ACL confines dev1 to palm/dev1/...: its forgery is acknowledged (3.1.1 cannot
        # refuse a publish) and dropped; the controller's marker, sent after it, arrives alone
        dev.publish("palm/dev2/decision", b'{"event_id": "forged"}', qos=1).wait_for_publish(5)
        ctl1.client.publish("palm/dev2/decision", b'{"event_id": "marker"}', qos=1)
        assert ctl2.decision("marker", timeout=5) is not None
        assert [d["event_id"] for d in ctl2.decisions] == ["marker"]
        dev.loop_stop()
        dev.disconnect()

        for user, password in ((None, None), ("dev1", "wrong"), (CTL_USER, CTL_PASS + "x")):
            c, rc = _client(broker.port, user, password)
            c.loop_stop()
            assert rc == "Not authorized", (user, rc)
    finally:
        for ctl in ctls:
            ctl.close()
        broker.stop()
    assert not broker.running
