"""The link to the broker as paho's callbacks see it: up or down, the outage it is in, the flap
streak, and the MQTT 5 -> 3.1.1 probe.

Protocol ``auto`` starts on MQTT 5 and falls back to 3.1.1 for the life of the process when the
broker refuses the protocol version in its CONNACK (mosquitto 1.x before 1.6), or when two
attempts in a row end without any CONNACK: a 3.1.1-only broker such as amqtt cannot parse an
MQTT 5 CONNECT and stays silent until the keepalive runs out, so such a broker costs two
keepalive periods at start. One silent attempt is not enough: a broker that dies while a client
connects looks the same once. After the fallback nothing of MQTT 5 is used: no message expiry,
replies on ``reply`` rather than a response topic. The pump makes the 3.1.1 client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from agent import flapping
from agent.config import MqttConfig
from agent.mqtt_client import set_nodelay
from agent.mqtt_failure import explain, refusal
from agent.mqtt_log import Outage

logger = logging.getLogger("agent.mqtt")  # the transport's modules log as one

_UNSUPPORTED_PROTOCOL = (1, 132)  # 3.1.1 CONNACK code 1 / MQTT 5 reason 132
SILENT_ATTEMPTS = 2  # MQTT 5 attempts in a row without a CONNACK before falling back to 3.1.1


class Link:
    """paho's connection callbacks and what they learn, for the pump and the reporter.

    ``on_up(client)`` announces a new connection (subscriptions, ``online``) before the link
    counts as connected; ``on_ended(client, lost)`` tells the pump that a connection ended (lost:
    it had been up); ``report(doc)`` sends an error event; ``wake()`` wakes the pump.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        stop: threading.Event,
        wake: Callable[[], None],
        on_up: Callable[[mqtt.Client], None],
        on_ended: Callable[[mqtt.Client, bool], None],
        report: Callable[[dict[str, Any]], None],
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.v5 = cfg.protocol != "3.1.1"
        self.connected = threading.Event()
        self.fallback = False  # asked for on paho's thread, done by the pump
        self.streak = flapping.Streak(cfg.reconnect_min, cfg.reconnect_max)
        self.retry_at = 0.0  # monotonic time before which the pump starts no fresh client
        self._stop = stop
        self._wake = wake
        self._on_up = on_up
        self._on_ended = on_ended
        self._report = report
        self._answered = True  # the current attempt got a CONNACK (paho's thread only)
        self._silent = 0  # attempts in a row that ended without a CONNACK (paho's thread only)
        self._outage = Outage()  # one WARNING per outage, one INFO at its end
        self._failed: str | None = None  # why the last attempt failed (agent.mqtt_failure)

    def probing(self) -> bool:
        """Whether the MQTT 5 attempts may still fall back to 3.1.1."""
        return self.v5 and self.cfg.protocol == "auto"

    def on_socket_open(self, client, userdata, sock) -> None:
        self._answered = False
        set_nodelay(sock)

    def on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._answered = True
        self._silent = 0
        if reason_code.is_failure:
            if self.probing() and reason_code.value in _UNSUPPORTED_PROTOCOL:
                logger.info("mqtt connect refused reason=%s: trying MQTT 3.1.1", reason_code)
                self.fallback = True
                self._wake()
                return
            # an ERROR line for each attempt, for as long as the credentials stay wrong, filled
            # the journal: once per reason, the retries at DEBUG
            kind, todo = refusal(reason_code)
            self._outage.begin()
            logger.log(
                logging.ERROR if kind != self._failed else logging.DEBUG,
                "mqtt connect refused reason=%s kind=%s: %s; retrying every %g s at most",
                reason_code, kind, todo, self.cfg.reconnect_max,
            )  # fmt: skip
            self._failed = kind
            return
        down_s = self._outage.end()
        self._failed = None
        if down_s is None:
            logger.info("mqtt connected session_present=%s", flags.session_present)
        else:
            logger.info(
                "mqtt connected again session_present=%s down_s=%.1f", flags.session_present, down_s
            )
        self.streak.connected()
        self._on_up(client)
        self.connected.set()
        self._wake()

    def on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        lost = self.connected.is_set()
        if lost:
            # the disconnect stop() asks for is no fault: a warning at each clean stop hid real ones
            asked = self._stop.is_set()
            if not asked:
                self._outage.begin()
            logger.log(
                logging.INFO if asked else logging.WARNING,
                "mqtt disconnected reason=%s requested=%s", reason_code, str(asked).lower(),
            )  # fmt: skip
        self.connected.clear()
        if lost and not self._stop.is_set():
            # after the clear: the event it may raise is held for the next connection
            self._count_flap(client, reason_code)
        self._on_ended(client, lost)
        if not self._answered:
            # a broker that takes the connection and never answers: said once per outage, each
            # later attempt at DEBUG; the INFO "mqtt connected again" ends it
            self._answered = True
            self._silent += 1
            logger.log(
                logging.WARNING if self._outage.begin() else logging.DEBUG,
                "mqtt connection ended without a CONNACK reason=%s attempts=%d: the broker "
                "accepted the connection and did not answer; check that mqtt.host and mqtt.port "
                "name an MQTT broker (and mqtt.tls a TLS listener)",
                reason_code, self._silent,
            )  # fmt: skip
            if self.probing() and self._silent >= SILENT_ATTEMPTS:
                self.fallback = True
                self._wake()

    def on_connect_fail(self, client, userdata) -> None:
        """No connection to the broker, and why (:func:`agent.mqtt_failure.explain`): a WARNING
        when that begins an outage (at start, or after a link lost without a word), an INFO
        line when the reason changes within one (the broker back, its certificate refused),
        each retry for the same reason only at DEBUG."""
        kind, why = explain(getattr(client, "connect_error", None), self.cfg)
        level = logging.INFO if kind != self._failed else logging.DEBUG
        if self._outage.begin():
            level = logging.WARNING
        self._failed = kind
        logger.log(
            level,
            "mqtt broker unreachable host=%s port=%d reason=%s: %s; decisions wait in the "
            "outbox; retrying every %g s at most",
            self.cfg.host, self.cfg.port, kind, why, self.cfg.reconnect_max,
        )  # fmt: skip

    def _count_flap(self, client: mqtt.Client, reason_code: Any) -> None:
        """Another client with this client id throws the device off as often as it connects
        (agent.flapping): reconnect later and later, and say what to look at."""
        code = getattr(reason_code, "value", None)
        delay = self.streak.closed(code)
        if delay is None:
            client.reconnect_delay_set(self.cfg.reconnect_min, self.cfg.reconnect_max)
            return
        self.retry_at = time.monotonic() + delay
        # paho starts each reconnect's wait from this minimum again after every CONNACK
        client.reconnect_delay_set(delay, max(delay, self.cfg.reconnect_max))  # type: ignore[arg-type]
        client_id = self.client_id
        taken = code == flapping.SESSION_TAKEN_OVER
        cause = "session taken over by another client" if taken else "closed by the broker"
        logger.error(
            "mqtt connection_flapping client_id=%s closed=%d retry_in_s=%.1f: %s each time "
            "within %.0f s of connecting; another client most likely uses client id %s (two "
            "devices with one device.id, an SD card cloned from another device, or the same "
            "mqtt.client_id): give each device its own",
            client_id, self.streak.count, delay, cause, flapping.STABLE_S, client_id,
        )  # fmt: skip
        if self.streak.count == flapping.FLAPS:  # once per streak: the log has every one
            event = {"event": "connection_flapping", "client_id": client_id}
            self._report({**event, "closed": self.streak.count, "retry_in_s": round(delay, 1)})
