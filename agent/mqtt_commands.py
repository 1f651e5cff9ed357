"""Commands over MQTT: requests from ``cmd`` run one at a time on their own thread, off paho's,
and each is answered on its MQTT 5 response topic or on ``reply``."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqtt_link import Link
from agent.reporter import CommandSink

logger = logging.getLogger("agent.mqtt")  # the transport's modules log as one

QUEUED = 1024  # commands waiting for the worker; past it a request is answered "busy" at once

# publish(topic, reply document, qos, MQTT 5 properties or None)
Send = Callable[[str, dict[str, Any], int, Any], None]


class Commands:
    """The command queue and its worker (:meth:`run`). A response topic is honoured only while
    ``link`` speaks MQTT 5; ``send`` publishes a reply, or holds it while the link is down."""

    def __init__(
        self,
        reply_topic: str,
        link: Link,
        send: Send,
        stop: threading.Event,
    ) -> None:
        self.reply_topic = reply_topic
        self._link = link
        self._send = send
        self._stop = stop
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(maxsize=QUEUED)

    def receive(self, msg: mqtt.MQTTMessage) -> None:
        """A request from paho's thread: queued for the worker."""
        if msg.retain:
            # a request kept by the broker would run again at every reconnect (a rekey, an
            # enrollment): commands are for the moment they are sent
            logger.warning("mqtt retained command ignored topic=%s", msg.topic)
            return
        try:
            self._queue.put_nowait(msg)
        except queue.Full:  # a flood: answer at once rather than leave a request unanswered
            logger.warning("mqtt command queue full; refusing command")
            busy = {"schema": 1, "ok": False, "error": {"code": "busy", "message": "try again"}}
            self._reply(msg, busy)

    def close(self) -> None:
        """Ends the worker once it is done with the command in hand."""
        self._queue.put(None)

    def run(self, on_command: CommandSink) -> None:
        while True:
            msg = self._queue.get()
            if msg is None or self._stop.is_set():
                return
            try:
                reply = on_command(msg.payload)
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
        topic, props = self.reply_topic, None
        req = getattr(msg, "properties", None)
        asked = getattr(req, "ResponseTopic", None) if self._link.v5 and req is not None else None
        if asked and not _publishable(asked):
            # a wildcard or an empty level cannot be published to: paho raises, which used to
            # end the thread that answers commands
            logger.warning("mqtt response topic refused, replying on %s topic=%r", topic, asked)
        elif asked:
            topic = asked
            props = Properties(PacketTypes.PUBLISH)
            if getattr(req, "CorrelationData", None) is not None:
                props.CorrelationData = req.CorrelationData
        self._send(topic, reply, 1, props)


def _publishable(topic: str) -> bool:
    """Whether a client may publish to ``topic``: no wildcard, within MQTT's length limit."""
    return "+" not in topic and "#" not in topic and 0 < len(topic.encode()) <= 65535
