"""MQTT transport (paho-mqtt 2.x): decisions through the outbox, availability, stats, commands.

Topics, under ``<topic_prefix>/<device id>``:
  ``availability`` retained QoS 1: ``online`` on connect, ``stopped`` on a clean stop and
  ``offline`` as the last will; ``decision`` QoS 1, never retained (a replayed "granted" must not
  open a door), with a message expiry on MQTT 5; ``stats``; ``error``; ``cmd`` (in) and ``reply``.

The parts: :mod:`agent.mqtt_client` builds the paho client (credentials, TLS, last will);
:mod:`agent.mqtt_link` holds paho's connection callbacks (outages, flapping, the MQTT 5 -> 3.1.1
fallback); :mod:`agent.mqtt_pump` sends decisions from the outbox and what waits in memory;
:mod:`agent.mqtt_commands` runs commands and replies; :mod:`agent.mqtt_log` puts paho's log in
ours. :class:`MqttReporter` wires them together behind :class:`agent.reporter.Reporter`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from agent.config import MqttConfig
from agent.homeassistant import decision_entity
from agent.mqtt_client import discard, make_client, tls_context
from agent.mqtt_commands import Commands
from agent.mqtt_link import SILENT_ATTEMPTS, Link
from agent.mqtt_pump import HELD, WINDOW, DecisionProperties, Pump
from agent.outbox import Outbox, since_boot
from agent.reporter import CommandSink, Reporter
from agent.store_unwritable import Episode, any_write_error, problem

__all__ = [
    "HELD",
    "SILENT_ATTEMPTS",
    "WINDOW",
    "DecisionProperties",
    "MqttReporter",
]

logger = logging.getLogger(__name__)


class MqttReporter(Reporter):
    """The daemon's :class:`~agent.reporter.Reporter` over MQTT: the only part that knows paho."""

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        outbox: Outbox,
        device_name: str = "Palm reader",
        version: str = "0",
    ) -> None:
        if cfg.tls:
            tls_context(cfg)  # its files are checked now: one line and exit 2 at start
        self.cfg = cfg
        self.device_id = device_id
        self.device_name = device_name
        self.version = version
        self.outbox = outbox
        base = f"{cfg.topic_prefix}/{device_id}"
        self.topics = {
            name: f"{base}/{name}"
            for name in ("availability", "decision", "stats", "error", "cmd", "reply")
        }
        self._client: mqtt.Client | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._link = Link(
            cfg,
            cfg.client_id or device_id,
            self._stop,
            self._wake.set,
            on_up=self._announce,
            on_ended=lambda client, lost: self._pump.ended(client, lost),  # the pump comes next
            report=self.error,
        )
        self._pump = Pump(
            cfg, outbox, self._link, lambda: self._client, self._new_client, self._stop, self._wake
        )
        self._commands = Commands(self.topics["reply"], self._link, self._send, self._stop)
        self._threads: list[threading.Thread] = []
        self._unstored = 0  # decisions the outbox could not take since start, sent from memory
        self._unwritable = Episode()  # the outbox cannot be written now (said once)

    # -- Reporter ---------------------------------------------------------------------------
    def start(self, on_command: CommandSink) -> None:
        self._client = self._make_client()
        for target, args, name in (
            (self._pump.run, (), "mqtt-pump"),
            (self._commands.run, (on_command,), "mqtt-commands"),
        ):
            t = threading.Thread(target=target, args=args, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def decision(self, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc, separators=(",", ":")).encode()
        try:
            self.outbox.add(self.topics["decision"], payload, self.cfg.qos)
        except sqlite3.Error as e:
            # a full or failing SD card: the decision still goes out, from memory; raising here
            # lost it and skipped the capture loop's own actions on it (the door, the LEDs)
            self._unstored += 1
            down = self.cfg.qos == 0 and not self._link.connected.is_set()
            self._add_failed(e, down)
            if not down:
                # through the pump, which drops it past mqtt.decision_expiry as it does rows
                held = (self.topics["decision"], payload, self.cfg.qos, None, since_boot())
                self._pump.hold(self._pump.held_decisions, held)
        else:
            ended = self._unwritable.written()
            if ended is not None:
                logger.info(
                    "outbox writable again unstored=%d kind=%s path=%s",
                    ended[1], ended[0], self.outbox.path,
                )  # fmt: skip
        self._wake.set()

    def stats(self, doc: dict[str, Any]) -> None:
        self._send(self.topics["stats"], doc, 0)

    def error(self, doc: dict[str, Any]) -> None:
        self._send(self.topics["error"], doc, 1)

    def counters(self) -> dict[str, Any]:
        return {
            "connected": self._link.connected.is_set(),
            "protocol": "5" if self._link.v5 else "3.1.1",
            "outbox_depth": self.outbox.depth(),
            "outbox_dropped": self.outbox.counter("dropped"),
            "outbox_expired": self.outbox.counter("expired"),
            "outbox_refused": self.outbox.counter("refused"),
            "outbox_unstored": self._unstored,
            "held_dropped": self._pump.held_dropped,
        }

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        connected = self._link.connected
        while connected.is_set() and self._pump.pending() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._commands.close()
        for t in self._threads:
            t.join(timeout=2.0)
        client = self._client
        if client is None:
            return
        if connected.is_set():
            info = client.publish(self.topics["availability"], b"stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as e:
                logger.warning("mqtt could not publish stopped: %s", e)
        client.disconnect()
        client.loop_stop()
        logger.info("mqtt stopped outbox_depth=%d", self.outbox.depth())

    def _add_failed(self, err: sqlite3.Error, down: bool) -> None:
        """The outbox refused a decision: one ERROR line per episode, not per decision (a
        journal on a full disk got one for every capture), the rest at DEBUG."""
        kind, what = any_write_error(err)
        path = self.outbox.path
        fate = "dropped (QoS 0 and no connection)" if down else "sent from memory"
        if not self._unwritable.refused_now(kind):
            logger.debug(
                "outbox still unwritable kind=%s unstored=%d: %s; the decision is %s",
                kind, self._unwritable.refused, what, fate,
            )  # fmt: skip
            return
        wrong, todo = problem(kind, path)
        logger.error(
            "outbox unwritable kind=%s path=%s: %s — %s; decisions are sent from memory "
            "(lost if the device restarts before the broker has them; with mqtt.qos 0 and no "
            "connection, dropped) and counted in outbox_unstored until you %s",
            kind, path, what, wrong, todo,
        )  # fmt: skip

    # -- the client -------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        return make_client(
            self.cfg,
            self._link.client_id,
            self._link.v5,
            self.topics["availability"],
            self._link.streak.back_off(),
            self._link,
            self._pump.on_publish,
            self._on_message,
        )

    def _new_client(self) -> None:
        """A fresh paho client in place of the current one, and what it had in flight dropped
        (the pump's :meth:`~agent.mqtt_pump.Pump.forget`)."""
        if self._client is not None:
            discard(self._client)
        self._pump.forget()
        self._client = self._make_client()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        ha_status = f"{self.cfg.homeassistant.discovery_prefix}/status"
        if self.cfg.homeassistant.enabled and msg.topic == ha_status:
            if msg.payload == b"online":
                self._publish_discovery(client)
            return
        self._commands.receive(msg)

    def _announce(self, client: mqtt.Client) -> None:
        """A new connection: subscribe first, since "online" promises that commands are being
        listened to."""
        client.subscribe(self.topics["cmd"], qos=1)
        client.publish(self.topics["availability"], b"online", qos=1, retain=True)
        if self.cfg.homeassistant.enabled:
            client.subscribe(f"{self.cfg.homeassistant.discovery_prefix}/status", qos=1)
            self._publish_discovery(client)

    def _send(self, topic: str, doc: dict[str, Any], qos: int, properties: Any = None) -> None:
        payload = json.dumps(doc, separators=(",", ":")).encode()
        client = self._client
        if client is None or not self._link.connected.is_set():
            if qos > 0:  # a reply to a command run across an outage still goes out (stats not)
                self._pump.hold(self._pump.held, (topic, payload, qos, properties, None))
                self._wake.set()
            return
        client.publish(topic, payload, qos=qos, retain=False, properties=properties)

    def _publish_discovery(self, client: mqtt.Client) -> None:
        topic, doc = decision_entity(
            self.cfg.homeassistant.discovery_prefix,
            self.device_id,
            self.device_name,
            self.version,
            self.topics,
        )
        client.publish(topic, json.dumps(doc).encode(), qos=1, retain=True)
        logger.info("mqtt home assistant discovery published topic=%s", topic)
