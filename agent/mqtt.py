"""MQTT transport (paho-mqtt 2.x): decisions through the outbox, availability, stats, commands.

Topics, under ``<topic_prefix>/<device id>``:
  ``availability`` retained QoS 1: ``online`` on connect, ``stopped`` on a clean stop and
  ``offline`` as the last will; ``decision`` QoS 1, never retained (a replayed "granted" must not
  open a door), with a message expiry on MQTT 5; ``stats``; ``error``; ``cmd`` (in) and ``reply``.

Durability: ``decision`` commits the document to the outbox and wakes the pump thread, which
hands new rows to paho and then syncs the outbox to disk (see :mod:`agent.outbox`).

Ordering across outages: a pump thread hands outbox rows to paho only while connected, at most a
window at a time. paho re-sends its own unacknowledged window on reconnect, so after a reconnect
the pump waits until that window is acknowledged before sending newer rows: replay stays in
order. After a restart the window is empty and the pump starts from the oldest row.

Protocol ``auto`` starts on MQTT 5 and falls back to 3.1.1 for the life of the process when the
broker refuses the protocol version in its CONNACK (mosquitto 1.x before 1.6), or when two
attempts in a row end without any CONNACK: a 3.1.1-only broker such as amqtt cannot parse an
MQTT 5 CONNECT and stays silent until the keepalive runs out, so such a broker costs two
keepalive periods at start. One silent attempt is not enough: a broker that dies while a client
connects looks the same once. After the fallback nothing of MQTT 5 is used: no message expiry,
replies on ``reply`` rather than a response topic.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import sqlite3
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers, writeInt32, writeUTF

from agent import flapping
from agent.config import MqttConfig
from agent.held import Held, HeldQueue
from agent.homeassistant import decision_entity
from agent.mqtt_log import Outage, PahoLog
from agent.outbox import Outbox, since_boot
from agent.reporter import CommandSink, Reporter

logger = logging.getLogger(__name__)

WINDOW = 20  # rows handed to paho and not yet acknowledged (paho's own in-flight default)
HELD = 256  # replies and error events kept while the link is down; past it the oldest go
# decisions the outbox could not take (a full disk), kept apart: replies never push one out
HELD_DECISIONS = 1024
_UNSUPPORTED_PROTOCOL = (1, 132)  # 3.1.1 CONNACK code 1 / MQTT 5 reason 132
SILENT_ATTEMPTS = 2  # MQTT 5 attempts in a row without a CONNACK before falling back to 3.1.1


class DecisionProperties(Properties):
    """A decision's MQTT 5 properties (message expiry, ``queued_ms``), packed once by paho's
    own encoders.

    paho packs a Properties object on every publish by walking the name of every property it
    knows, and setting one walks them again: 28 us for a decision's two (9.6 us here), under
    the interpreter lock that the next capture's palm search is waiting for.
    """

    def __init__(self, expiry_s: int, queued_ms: str) -> None:
        super().__init__(PacketTypes.PUBLISH)
        # plain attributes as Properties keeps them, for its str() in paho's debug log
        object.__setattr__(self, "MessageExpiryInterval", expiry_s)
        object.__setattr__(self, "UserProperty", [("queued_ms", queued_ms)])
        ident = VariableByteIntegers.encode
        body = (
            ident(self.names["Message Expiry Interval"])
            + writeInt32(expiry_s)
            + ident(self.names["User Property"])
            + writeUTF("queued_ms")
            + writeUTF(queued_ms)
        )
        object.__setattr__(self, "_packed", ident(len(body)) + body)

    def pack(self) -> bytes:
        return self._packed


class MqttReporter(Reporter):
    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        outbox: Outbox,
        device_name: str = "Palm reader",
        version: str = "0",
    ) -> None:
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
        self._v5 = cfg.protocol != "3.1.1"
        self._client: mqtt.Client | None = None
        self._on_command: CommandSink | None = None
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._acks: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._commands: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(maxsize=1024)
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id (pump thread only)
        self._last_handed = 0
        self._resync = False
        self._fallback = False
        self._answered = True  # the current attempt got a CONNACK (paho's thread only)
        self._silent = 0  # attempts in a row that ended without a CONNACK (paho's thread only)
        self._streak = flapping.Streak(cfg.reconnect_min, cfg.reconnect_max)
        self._retry_at = 0.0  # monotonic time before which the pump starts no fresh client
        self._outage = Outage()  # one WARNING per outage, one INFO at its end
        self._threads: list[threading.Thread] = []
        self._unstored = 0  # decisions the outbox could not take since start, sent from memory
        # what waits in memory for the pump: replies and error events made while the link is
        # down, and decisions the outbox could not take
        self._held = HeldQueue(HELD)
        self._held_decisions = HeldQueue(HELD_DECISIONS)
        self._held_dropped = 0  # messages a full queue lost since start

    # -- Reporter ---------------------------------------------------------------------------
    def start(self, on_command: CommandSink) -> None:
        self._on_command = on_command
        self._client = self._make_client()
        for target, name in ((self._pump, "mqtt-pump"), (self._command_worker, "mqtt-commands")):
            t = threading.Thread(target=target, name=name, daemon=True)
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
            down = self.cfg.qos == 0 and not self._connected.is_set()
            logger.error(
                "outbox add_failed error=%s unstored=%d: %s; free space on the disk that holds "
                "outbox.path",
                e, self._unstored,
                "the decision is dropped (QoS 0 and no connection)" if down else "the decision "
                "is sent from memory, and lost if the device restarts before the broker has it",
            )  # fmt: skip
            if not down:
                # through the pump, which drops it past mqtt.decision_expiry as it does rows
                held = (self.topics["decision"], payload, self.cfg.qos, None, since_boot())
                self._hold(self._held_decisions, held)
        self._wake.set()

    def stats(self, doc: dict[str, Any]) -> None:
        self._send(self.topics["stats"], doc, qos=0)

    def error(self, doc: dict[str, Any]) -> None:
        self._send(self.topics["error"], doc, qos=1)

    def counters(self) -> dict[str, Any]:
        return {
            "connected": self._connected.is_set(),
            "protocol": "5" if self._v5 else "3.1.1",
            "outbox_depth": self.outbox.depth(),
            "outbox_dropped": self.outbox.counter("dropped"),
            "outbox_expired": self.outbox.counter("expired"),
            "outbox_refused": self.outbox.counter("refused"),
            "outbox_unstored": self._unstored,
            "held_dropped": self._held_dropped,
        }

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (
            self._connected.is_set()
            and (self.outbox.depth() or self._held or self._held_decisions)
            and time.monotonic() < deadline
        ):
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._commands.put(None)
        for t in self._threads:
            t.join(timeout=2.0)
        client = self._client
        if client is None:
            return
        if self._connected.is_set():
            info = client.publish(self.topics["availability"], b"stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as e:
                logger.warning("mqtt could not publish stopped: %s", e)
        client.disconnect()
        client.loop_stop()
        logger.info("mqtt stopped outbox_depth=%d", self.outbox.depth())

    # -- client -----------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        protocol = mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or self.device_id,
            protocol=protocol,
            clean_session=None if self._v5 else True,
        )
        client.enable_logger(PahoLog(logger))  # type: ignore[arg-type]
        if cfg.user is not None:
            client.username_pw_set(cfg.user, cfg.secret())
            if cfg.password_file is not None:
                client.on_pre_connect = self._on_pre_connect
        if cfg.tls:
            client.tls_set(
                ca_certs=cfg.tls_ca_certs,
                certfile=cfg.tls_client_cert,
                keyfile=cfg.tls_client_key,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(cfg.tls_insecure)
        client.will_set(self.topics["availability"], b"offline", qos=1, retain=True)
        client.reconnect_delay_set(self._streak.back_off(), cfg.reconnect_max)  # type: ignore[arg-type]
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        client.loop_start()
        logger.info(
            "mqtt connecting host=%s port=%d tls=%s protocol=%s",
            cfg.host, cfg.port, cfg.tls, "5" if self._v5 else "3.1.1",
        )  # fmt: skip
        return client

    def _on_pre_connect(self, client, userdata) -> None:
        """The password file again before each connect: a rotated password is used at the next
        reconnect (on paho's thread; an unreadable file keeps the last password)."""
        try:
            client.username_pw_set(self.cfg.user, self.cfg.secret())
        except OSError as e:
            logger.error("mqtt password_file unreadable, keeping the last password: %s", e)

    def _probing(self) -> bool:
        return self._v5 and self.cfg.protocol == "auto"

    def _on_socket_open(self, client, userdata, sock) -> None:
        self._answered = False
        # Nagle's algorithm holds a small packet back while an earlier one is unacknowledged,
        # and the broker delays its TCP acknowledgement: a reply or a decision sent right
        # after another waited up to 40 ms for it
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._answered = True
        self._silent = 0
        if reason_code.is_failure:
            logger.error("mqtt connect refused reason=%s", reason_code)
            if self._probing() and reason_code.value in _UNSUPPORTED_PROTOCOL:
                self._fallback = True
                self._wake.set()
            return
        down_s = self._outage.end()
        if down_s is None:
            logger.info("mqtt connected session_present=%s", flags.session_present)
        else:
            logger.info(
                "mqtt connected again session_present=%s down_s=%.1f", flags.session_present, down_s
            )
        self._streak.connected()
        # subscribe first: "online" promises that commands are being listened to
        client.subscribe(self.topics["cmd"], qos=1)
        client.publish(self.topics["availability"], b"online", qos=1, retain=True)
        if self.cfg.homeassistant.enabled:
            client.subscribe(f"{self.cfg.homeassistant.discovery_prefix}/status", qos=1)
            self._publish_discovery(client)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        lost = self._connected.is_set()
        if lost:
            # the disconnect stop() asks for is no fault: a warning at each clean stop hid real ones
            asked = self._stop.is_set()
            if not asked:
                self._outage.begin()
            logger.log(
                logging.INFO if asked else logging.WARNING,
                "mqtt disconnected reason=%s requested=%s", reason_code, str(asked).lower(),
            )  # fmt: skip
        self._connected.clear()
        if lost and not self._stop.is_set():
            # after the clear: the event it may raise is held for the next connection
            self._count_flap(client, reason_code)
        self._resync = True
        if lost and self._inflight:
            # paho would reconnect by itself and send its unacknowledged window again as it
            # was, however old by then: it stops here, and the pump starts a fresh client
            client.disconnect()
            self._wake.set()
        if not self._answered:
            self._answered = True
            self._silent += 1
            logger.warning(
                "mqtt connection ended without a CONNACK reason=%s attempts=%d",
                reason_code, self._silent,
            )  # fmt: skip
            if self._probing() and self._silent >= SILENT_ATTEMPTS:
                self._fallback = True
                self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        """No TCP connection to the broker: said once per outage (at start, or after a link
        lost without a word), each retry only at DEBUG."""
        if self._outage.begin():
            logger.warning(
                "mqtt broker unreachable host=%s port=%d: decisions wait in the outbox; "
                "retrying every %g s at most",
                self.cfg.host, self.cfg.port, self.cfg.reconnect_max,
            )  # fmt: skip

    def _count_flap(self, client: mqtt.Client, reason_code: Any) -> None:
        """Another client with this client id throws the device off as often as it connects
        (agent.flapping): reconnect later and later, and say what to look at."""
        code = getattr(reason_code, "value", None)
        delay = self._streak.closed(code)
        if delay is None:
            client.reconnect_delay_set(self.cfg.reconnect_min, self.cfg.reconnect_max)
            return
        self._retry_at = time.monotonic() + delay
        # paho starts each reconnect's wait from this minimum again after every CONNACK
        client.reconnect_delay_set(delay, max(delay, self.cfg.reconnect_max))  # type: ignore[arg-type]
        client_id = self.cfg.client_id or self.device_id
        taken = code == flapping.SESSION_TAKEN_OVER
        cause = "session taken over by another client" if taken else "closed by the broker"
        logger.error(
            "mqtt connection_flapping client_id=%s closed=%d retry_in_s=%.1f: %s each time "
            "within %.0f s of connecting; another client most likely uses client id %s (two "
            "devices with one device.id, an SD card cloned from another device, or the same "
            "mqtt.client_id): give each device its own",
            client_id, self._streak.count, delay, cause, flapping.STABLE_S, client_id,
        )  # fmt: skip
        if self._streak.count == flapping.FLAPS:  # once per streak: the log has every one
            event = {"event": "connection_flapping", "client_id": client_id}
            self.error({**event, "closed": self._streak.count, "retry_in_s": round(delay, 1)})

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # called on paho's thread, possibly before publish() returned: hand over, do not touch state
        self._acks.put((mid, reason_code.value if hasattr(reason_code, "value") else 0))
        # The pump handles acknowledgements when it next wakes: for the next decision, or within
        # its half-second wait. Waking it for each one added a pump round per decision, under
        # the interpreter lock the capture loop needs; it is woken at once only when it waits
        # for acknowledgements to send more (a full window, a resync).
        if self._resync or len(self._inflight) >= WINDOW:
            self._wake.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        ha_status = f"{self.cfg.homeassistant.discovery_prefix}/status"
        if self.cfg.homeassistant.enabled and msg.topic == ha_status:
            if msg.payload == b"online":
                self._publish_discovery(client)
            return
        if msg.retain:
            # a request kept by the broker would run again at every reconnect (a rekey, an
            # enrollment): commands are for the moment they are sent
            logger.warning("mqtt retained command ignored topic=%s", msg.topic)
            return
        try:
            self._commands.put_nowait(msg)
        except queue.Full:  # a flood: answer at once rather than leave a request unanswered
            logger.warning("mqtt command queue full; refusing command")
            busy = {"schema": 1, "ok": False, "error": {"code": "busy", "message": "try again"}}
            self._reply(msg, busy)

    # -- threads ----------------------------------------------------------------------------
    def _pump(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._drain_acks()
                if self._fallback:
                    self._fall_back()
                elif (
                    self._resync
                    and self._inflight
                    and not self._connected.is_set()
                    and time.monotonic() >= self._retry_at
                ):
                    # the rows go out again from the outbox, those past their expiry dropped
                    # the outage has had its WARNING
                    logger.info("mqtt link lost with %d in flight", len(self._inflight))
                    self._new_client()
                if self._connected.is_set():
                    self._send_held()
                    self._send_pending()
                # after the hand-over, so that the network does not wait for the disk
                self.outbox.sync()
            except Exception:
                logger.exception("mqtt pump error")
                time.sleep(0.5)
        try:
            self._drain_acks()
            self.outbox.sync()
        except Exception:
            logger.exception("mqtt pump error at stop")

    def _drain_acks(self) -> None:
        delivered: list[int] = []
        while True:
            try:
                mid, rc = self._acks.get_nowait()
            except queue.Empty:
                break
            row = self._inflight.pop(mid, None)
            if row is None:
                continue
            if rc >= 128:
                logger.error("mqtt broker refused decision row=%d reason=%d", row, rc)
                self.outbox.discard(row, "refused")
            else:
                delivered.append(row)
        self.outbox.ack(*delivered)

    def _send_pending(self) -> None:
        if self._resync and self._inflight:
            return  # paho is re-sending the previous window; newer rows wait behind it
        self._resync = False
        room = WINDOW - len(self._inflight)
        if room <= 0:
            return
        client = self._client
        assert client is not None
        for row in self.outbox.after(self._last_handed, room):
            # a stale decision is dropped on either protocol; only MQTT 5 can tell the broker
            remaining = int(self.cfg.decision_expiry - row.age_s)
            if remaining <= 0:
                self.outbox.discard(row.id, "expired")
                self._last_handed = row.id
                continue
            props = None
            if self._v5:
                # queued_ms: how long it waited on the device (outbox commit, an outage) before
                # it left: a consumer sees a replayed decision for what it is, and frame ->
                # publish is the document's latency_ms plus this
                props = DecisionProperties(remaining, f"{row.age_s * 1e3:.2f}")
            info = client.publish(
                row.topic, row.payload, qos=row.qos, retain=False, properties=props
            )
            self._inflight[info.mid] = row.id
            self._last_handed = row.id

    def _fall_back(self) -> None:
        self._fallback = False
        logger.warning(
            "mqtt broker does not speak MQTT 5; falling back to 3.1.1 until restart "
            '(mqtt.protocol "3.1.1" skips the probe, "5" forbids the fallback)'
        )
        self._v5 = False
        self._new_client()

    def _new_client(self) -> None:
        """A fresh paho client in place of the current one, and what it had in flight dropped:
        every row still in the outbox (the unacknowledged ones) is handed over again, oldest
        first, through :meth:`_send_pending`'s expiry check."""
        old = self._client
        if old is not None:
            old.loop_stop()  # no callback from it after this
            sock = old.socket()
            if sock is not None:  # a half-open attempt: the broker must not keep it
                sock.close()
        while True:  # its acknowledgements name its own packet ids
            try:
                self._acks.get_nowait()
            except queue.Empty:
                break
        self._inflight.clear()
        self._resync = False
        self._last_handed = 0
        self._client = self._make_client()

    def _command_worker(self) -> None:
        while True:
            msg = self._commands.get()
            if msg is None or self._stop.is_set():
                return
            assert self._on_command is not None
            try:
                reply = self._on_command(msg.payload)
            except Exception as e:  # the sink validates; this is the last guard
                logger.exception("command handler crashed")
                reply = {
                    "schema": 1,
                    "ok": False,
                    "error": {"code": "internal", "message": str(e)},
                }
            try:
                self._reply(msg, reply)
            except Exception:  # this thread answers every later command too
                logger.exception("mqtt reply failed")

    def _reply(self, msg: mqtt.MQTTMessage, reply: dict[str, Any]) -> None:
        topic, props = self.topics["reply"], None
        req = getattr(msg, "properties", None)
        asked = getattr(req, "ResponseTopic", None) if self._v5 and req is not None else None
        if asked and not _publishable(asked):
            # a wildcard or an empty level cannot be published to: paho raises, which used to
            # end the thread that answers commands
            logger.warning("mqtt response topic refused, replying on %s topic=%r", topic, asked)
        elif asked:
            topic = asked
            props = Properties(PacketTypes.PUBLISH)
            if getattr(req, "CorrelationData", None) is not None:
                props.CorrelationData = req.CorrelationData
        self._send(topic, reply, qos=1, properties=props)

    def _send(self, topic: str, doc: dict[str, Any], qos: int, properties=None) -> None:
        payload = json.dumps(doc, separators=(",", ":")).encode()
        client = self._client
        if client is None or not self._connected.is_set():
            if qos > 0:  # a reply to a command run across an outage still goes out (stats not)
                self._hold(self._held, (topic, payload, qos, properties, None))
                self._wake.set()
            return
        client.publish(topic, payload, qos=qos, retain=False, properties=properties)

    def _hold(self, held: HeldQueue, item: Held) -> None:
        """Keeps ``item`` for the pump; a full queue loses its oldest, which is said and
        counted (``held_dropped``), as the outbox does with its rows."""
        lost = held.put(item)
        if lost is not None:
            self._held_dropped += 1  # from the capture loop's or the command worker's thread
            logger.warning(
                "mqtt held_dropped topic=%s dropped=%d: %d messages wait in memory for the link; "
                "the oldest went",
                lost[0], self._held_dropped, held.limit,
            )  # fmt: skip

    def _send_held(self) -> None:
        """Decisions first: a door or an alarm waits on them, a command's sender can ask again."""
        for held in (self._held_decisions, self._held):
            self._send_from(held)

    def _send_from(self, held: HeldQueue) -> None:
        client = self._client
        while client is not None and self._connected.is_set():
            item = held.get()
            if item is None:
                return
            topic, payload, qos, properties, added = item
            if added is not None:  # a decision from memory: the outbox's expiry and properties
                age = since_boot() - added
                remaining = int(self.cfg.decision_expiry - age)
                if remaining <= 0:
                    logger.warning(
                        "mqtt unstored decision dropped age_s=%.0f: past mqtt.decision_expiry", age
                    )
                    continue
                if self._v5:
                    properties = DecisionProperties(remaining, f"{age * 1e3:.2f}")
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


def _publishable(topic: str) -> bool:
    """Whether a client may publish to ``topic``: no wildcard, within MQTT's length limit."""
    return "+" not in topic and "#" not in topic and 0 < len(topic.encode()) <= 65535
