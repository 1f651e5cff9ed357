"""The pump: the thread that hands decisions from the outbox, and messages held in memory, to
paho, and takes paho's acknowledgements back to the outbox.

Durability: a decision is committed to the outbox and the pump woken; it hands new rows to paho
and then syncs the outbox to disk (see :mod:`agent.outbox`).

Ordering across outages: the pump hands outbox rows to paho only while connected, at most a
window at a time. paho re-sends its own unacknowledged window on reconnect, so after a reconnect
the pump waits until that window is acknowledged before sending newer rows: replay stays in
order. After a restart the window is empty and the pump starts from the oldest row.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers, writeInt32, writeUTF

from agent.config import MqttConfig
from agent.held import Held, HeldQueue
from agent.mqtt_link import Link
from agent.outbox import Outbox, since_boot
from agent.store_unwritable import Episode, any_write_error, problem

logger = logging.getLogger("agent.mqtt")  # the transport's modules log as one

WINDOW = 20  # rows handed to paho and not yet acknowledged (paho's own in-flight default)
HELD = 256  # replies and error events kept while the link is down; past it the oldest go
# decisions the outbox could not take (a full disk), kept apart: replies never push one out
HELD_DECISIONS = 1024


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


class Pump:
    """What waits to go out, and the thread (:meth:`run`) that sends it.

    ``client()`` is the paho client in use; ``renew()`` replaces it with a fresh one (calling
    :meth:`forget` once the old one is stopped).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        outbox: Outbox,
        link: Link,
        client: Callable[[], mqtt.Client | None],
        renew: Callable[[], None],
        stop: threading.Event,
        wake: threading.Event,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self._link = link
        self._client = client
        self._renew = renew
        self._stop = stop
        self._wake = wake
        self._acks: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id (pump thread only)
        self._last_handed = 0
        self._resync = False
        # what waits in memory for the pump: replies and error events made while the link is
        # down, and decisions the outbox could not take
        self.held = HeldQueue(HELD)
        self.held_decisions = HeldQueue(HELD_DECISIONS)
        self.held_dropped = 0  # messages a full queue lost since start
        # rows done with (delivered, expired, refused) that the outbox could not delete (its
        # file system gone read-only): not sent again, and deleted when it can be written
        self._gone: set[int] = set()
        self._stuck = Episode()

    # -- from other threads -----------------------------------------------------------------
    def on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        """paho's: called on paho's thread, possibly before publish() returned: hand over, do
        not touch state."""
        self._acks.put((mid, getattr(reason_code, "value", 0)))
        # The pump handles acknowledgements when it next wakes: for the next decision, or within
        # its half-second wait. Waking it for each one added a pump round per decision, under
        # the interpreter lock the capture loop needs; it is woken at once only when it waits
        # for acknowledgements to send more (a full window, a resync).
        if self._resync or len(self._inflight) >= WINDOW:
            self._wake.set()

    def ended(self, client: mqtt.Client, lost: bool) -> None:
        """A connection ended (``lost``: it had been up); paho's thread."""
        self._resync = True
        if lost and self._inflight:
            # paho would reconnect by itself and send its unacknowledged window again as it
            # was, however old by then: it stops here, and the pump starts a fresh client
            client.disconnect()
            self._wake.set()

    def hold(self, held: HeldQueue, item: Held) -> None:
        """Keeps ``item`` for the pump; a full queue loses its oldest, which is said and
        counted (``held_dropped``), as the outbox does with its rows."""
        lost = held.put(item)
        if lost is None:
            return
        self.held_dropped += 1  # from the capture loop's or the command worker's thread
        if held.overflow_said:  # said at the first loss, until the queue has emptied
            logger.debug("mqtt held_dropped topic=%s dropped=%d", lost[0], self.held_dropped)
            return
        held.overflow_said = True
        logger.warning(
            "mqtt held_dropped topic=%s dropped=%d: %d messages wait in memory for the link; the "
            "oldest went, and each one more goes until the link is back (counted in stats' "
            "held_dropped)",
            lost[0], self.held_dropped, held.limit,
        )  # fmt: skip

    def pending(self) -> bool:
        """Whether anything waits to go out: outbox rows or held messages."""
        return bool(self.outbox.depth() > len(self._gone) or self.held or self.held_decisions)

    def forget(self) -> None:
        """The client was replaced, and what it had in flight dropped: every row still in the
        outbox (the unacknowledged ones) is handed over again, oldest first, through
        :meth:`_send_pending`'s expiry check."""
        while True:  # its acknowledgements name its own packet ids
            try:
                self._acks.get_nowait()
            except queue.Empty:
                break
        self._inflight.clear()
        self._resync = False
        self._last_handed = 0

    # -- the pump thread --------------------------------------------------------------------
    def run(self) -> None:
        link = self._link
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._drain_acks()
                if link.fallback:
                    self._fall_back()
                elif (
                    self._resync
                    and self._inflight
                    and not link.connected.is_set()
                    and time.monotonic() >= link.retry_at
                ):
                    # the rows go out again from the outbox, those past their expiry dropped
                    # the outage has had its WARNING
                    logger.info("mqtt link lost with %d in flight", len(self._inflight))
                    self._renew()
                if link.connected.is_set():
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
                self._discard(row, "refused")
            else:
                delivered.append(row)
        self._forget(delivered)

    def _forget(self, delivered: list[int]) -> None:
        """Delete the delivered rows, with those an earlier try could not."""
        if not delivered:
            return
        rows = [*self._gone, *delivered]
        try:
            self.outbox.ack(*rows)
        except sqlite3.Error as e:
            self._cannot_forget(e, delivered)
            return
        self._gone.clear()
        ended = self._stuck.written()
        if ended is not None:
            logger.info(
                "outbox forgets sent rows again kind=%s path=%s", ended[0], self.outbox.path
            )

    def _discard(self, row: int, counter: str) -> None:
        try:
            self.outbox.discard(row, counter)
        except sqlite3.Error as e:
            self._cannot_forget(e, [row])

    def _cannot_forget(self, err: sqlite3.Error, rows: list[int]) -> None:
        """The outbox refused to delete rows it is done with. Raised, it stopped the pump's
        round before the held messages and newer rows went out, and a row past its expiry that
        could not be dropped stopped every row behind it: they are kept aside in memory
        instead, once per episode said at WARNING."""
        self._gone.update(rows)
        kind, what = any_write_error(err)
        if not self._stuck.refused_now(kind):
            logger.debug(
                "outbox still cannot forget sent rows kind=%s kept=%d", kind, len(self._gone)
            )
            return
        wrong, todo = problem(kind, self.outbox.path)
        logger.warning(
            "outbox cannot forget sent rows kind=%s path=%s: %s — %s; they stay in it and go out "
            "again after a restart (consumers drop repeats by event_id) until you %s",
            kind, self.outbox.path, what, wrong, todo,
        )  # fmt: skip

    def _send_pending(self) -> None:
        if self._resync and self._inflight:
            return  # paho is re-sending the previous window; newer rows wait behind it
        self._resync = False
        room = WINDOW - len(self._inflight)
        if room <= 0:
            return
        client = self._client()
        assert client is not None
        for row in self.outbox.after(self._last_handed, room):
            if row.id in self._gone:  # sent already (a client renewed since hands all again)
                self._last_handed = row.id
                continue
            # a stale decision is dropped on either protocol; only MQTT 5 can tell the broker
            remaining = int(self.cfg.decision_expiry - row.age_s)
            if remaining <= 0:
                self._discard(row.id, "expired")
                self._last_handed = row.id
                continue
            props = None
            if self._link.v5:
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
        self._link.fallback = False
        logger.warning(
            "mqtt broker does not speak MQTT 5; falling back to 3.1.1 until restart "
            '(mqtt.protocol "3.1.1" skips the probe, "5" forbids the fallback)'
        )
        self._link.v5 = False
        self._renew()

    def _send_held(self) -> None:
        """Decisions first: a door or an alarm waits on them, a command's sender can ask again."""
        for held in (self.held_decisions, self.held):
            self._send_from(held)

    def _send_from(self, held: HeldQueue) -> None:
        client = self._client()
        expired, oldest = 0, 0.0
        while client is not None and self._link.connected.is_set():
            item = held.get()
            if item is None:
                break
            topic, payload, qos, properties, added = item
            if added is not None:  # a decision from memory: the outbox's expiry and properties
                age = since_boot() - added
                remaining = int(self.cfg.decision_expiry - age)
                if remaining <= 0:
                    expired, oldest = expired + 1, max(oldest, age)
                    continue
                if self._link.v5:
                    properties = DecisionProperties(remaining, f"{age * 1e3:.2f}")
            client.publish(topic, payload, qos=qos, retain=False, properties=properties)
        if expired:  # one line for those of an outage, not one each
            logger.warning(
                "mqtt unstored decisions dropped count=%d oldest_age_s=%.0f: past "
                "mqtt.decision_expiry",
                expired, oldest,
            )  # fmt: skip
