"""A controller on the broker: sends commands to one device, collects its replies and decisions.

It is what a door controller or Home Assistant would be: a separate MQTT client (the broker's
``ctl`` user) that only sees the device's topics. Replies are matched by the request ``id``;
decisions are kept by ``event_id`` with their arrival time.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from export.demo.broker import CTL_PASS, CTL_USER

logger = logging.getLogger(__name__)


class NoReply(TimeoutError):
    """A command got no reply: the device exited, or it did not answer within the timeout."""


class Controller:
    def __init__(self, port: int, device: str, prefix: str = "palm", v5: bool = True) -> None:
        self.base = f"{prefix}/{device}"
        self.replies: dict[str, dict[str, Any]] = {}
        self.decisions: list[dict[str, Any]] = []
        self.stats: list[dict[str, Any]] = []
        self.availability: str | None = None
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"demo-ctl-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.username_pw_set(CTL_USER, CTL_PASS)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda c, u, sock: sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"controller: no subscription to {self.base}/# within 10 s")

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        client.subscribe(f"{self.base}/#", qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        leaf = msg.topic.rsplit("/", 1)[-1]
        text = msg.payload.decode("utf-8", "replace")
        with self._cond:
            if leaf == "availability":
                self.availability = text
            elif leaf in ("decision", "reply", "stats"):
                try:
                    doc = json.loads(text)
                except ValueError:
                    logger.warning("controller: not JSON on %s: %.80s", msg.topic, text)
                    return
                doc["_received"] = time.monotonic()
                doc["_received_wall"] = time.time()
                user = dict(getattr(msg.properties, "UserProperty", None) or [])
                if "queued_ms" in user:  # MQTT 5: how long the decision waited on the device
                    doc["_queued_ms"] = float(user["queued_ms"])
                if leaf == "decision":
                    self.decisions.append(doc)
                elif leaf == "stats":
                    self.stats.append(doc)
                elif "id" in doc:
                    self.replies[str(doc["id"])] = doc
            self._cond.notify_all()

    def wait_for(self, pred, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    def command(
        self,
        cmd: str,
        args: dict[str, Any] | None = None,
        timeout: float = 60,
        alive: Callable[[], bool] | None = None,
    ) -> dict:
        """Send one command and wait for its reply document (``ok``, ``result`` or ``error``).

        ``alive`` says whether the device process still runs: once it has exited there is no
        reply to wait for, and :class:`NoReply` comes at once rather than after ``timeout``.
        """
        rid = uuid.uuid4().hex[:12]
        payload = json.dumps({"cmd": cmd, "id": rid, "args": args or {}})
        sent = time.monotonic()
        deadline = sent + timeout
        self.client.publish(f"{self.base}/cmd", payload, qos=1)
        while not self.wait_for(lambda: rid in self.replies, min(0.5, timeout)):
            if alive is not None and not alive():
                raise NoReply(f"the device exited before it answered {cmd}")
            if time.monotonic() >= deadline:
                raise NoReply(f"no reply to {cmd} within {timeout:g}s")
        reply = self.replies.pop(rid)
        reply["_round_trip_ms"] = round((reply["_received"] - sent) * 1e3, 1)
        return reply

    def decision(self, event_id: str, timeout: float = 10) -> dict[str, Any] | None:
        def find() -> dict[str, Any] | None:
            return next((d for d in self.decisions if d.get("event_id") == event_id), None)

        self.wait_for(lambda: find() is not None, timeout)
        with self._cond:
            return find()

    def take(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(decisions, stats) received so far; both lists start afresh."""
        with self._cond:
            taken = (self.decisions, self.stats)
            self.decisions, self.stats = [], []
        return taken

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
