"""``palm-agent run`` (the service) and ``palm-agent enroll SUBJECT`` (on the device).

Everything is built from the validated config before anything starts, so a bad config, a missing
bundle or a foreign key file stops the process with one message and exit code 2 (systemd's
Restart=on-failure then backs off) instead of a half-started daemon.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from agent.config import CameraConfig
    from agent.daemon import Capture

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the daemon (systemd: Type=notify)")
    run.add_argument("--config", required=True, type=Path, help="YAML config (firmware_config/)")
    run.set_defaults(func=cmd_run)
    en = subparsers.add_parser("enroll", help="enroll a subject from the device's camera")
    en.add_argument("subject", help="label of the subject to enroll")
    en.add_argument("--config", required=True, type=Path, help="YAML config (firmware_config/)")
    en.add_argument("--captures", type=int, default=None, help="good captures per modality")
    en.set_defaults(func=cmd_enroll)


def build(config_path: Path, with_reporter: bool = True) -> Any:
    """Config -> a ready :class:`agent.daemon.Daemon` (not yet running)."""
    from agent.config import load_config

    cfg = load_config(config_path)  # first: a bad config is reported before anything loads
    logging.getLogger().setLevel(cfg.logging.level)

    import cv2

    # OpenCV's worker threads gain nothing on the agent's images (a 320-px search copy, 128-px
    # ROIs; resizing a 1080p frame is no faster with two) and spin after each call: 1.2-1.4 ms
    # of a second core per capture, taken from the inference threads and the MQTT client
    cv2.setNumThreads(1)

    from agent.daemon import Daemon
    from agent.decide import BundleEngine, load_configured_bundle
    from agent.gallery_cli import rekey_store
    from agent.mqtt import MqttReporter
    from agent.notify import Notifier
    from agent.outbox import Outbox
    from agent.protect import DeviceKey, Protector
    from agent.store import TemplateStore

    key = DeviceKey.load_or_create(cfg.store.key_path)
    bundle = load_configured_bundle(cfg)
    store = TemplateStore(cfg.store.path, Protector(key, bundle.bits))
    reporter = None
    if with_reporter:
        outbox = Outbox(cfg.outbox.path, cfg.outbox.max_messages)
        from agent import __version__ as version

        reporter = MqttReporter(cfg.mqtt, cfg.device.id, outbox, cfg.device.name, version)
    report = (
        (lambda event, fields: reporter.error({"event": event, **fields})) if reporter else None
    )
    first = [bundle]
    daemon = Daemon(
        cfg,
        reporter,  # type: ignore[arg-type]
        Camera(cfg.camera, report),
        store,
        # the first engine takes the bundle read above; a reload reads and checks its own
        load_engine=lambda per_capture: BundleEngine(
            cfg, store, first.pop() if first else None, per_capture
        ),
        rekey=lambda: rekey_store(store, Path(cfg.store.key_path)),
        notifier=Notifier(),
    )
    _wire_gpio(daemon, cfg)
    return daemon


def _wire_gpio(daemon: Any, cfg: Any) -> None:
    """A GPIO button as the trigger and LEDs for the outcome (gpiozero, only when configured)."""
    if cfg.trigger.kind == "button":
        from gpiozero import Button

        button = Button(cfg.trigger.button_pin)
        button.when_pressed = daemon.trigger
        daemon.gpio.append(button)
    pins = {"granted": cfg.leds.granted_pin, "denied": cfg.leds.denied_pin}
    if any(p is not None for p in pins.values()):
        from gpiozero import LED

        leds = {k: LED(p) for k, p in pins.items() if p is not None}
        daemon.gpio.extend(leds.values())

        def show(doc: dict[str, Any]) -> None:
            led = leds.get("granted" if doc["decision"] == "granted" else "denied")
            if led is not None:
                led.blink(on_time=1.0, n=1, background=True)

        daemon.on_decision.append(show)


class Camera:
    """agent.capture's rig (switched light, two cameras, or one) as the daemon's frame source."""

    def __init__(self, cam: CameraConfig, report: Any = None) -> None:
        from agent.capture import Reopening, open_source

        def source(which: str) -> Any:
            vein = which == "vein" and cam.layout == "dual"
            if cam.source == "replay":
                path = cam.vein_replay_path if vein else cam.replay_path
                args: dict[str, Any] = {"path": path, "loop": cam.loop, "fps": cam.fps}
                args["cache_mb"] = cam.replay_cache_mb
            elif cam.source == "opencv":
                dev = (cam.vein_device if vein else cam.device) or cam.device
                device: int | str = int(dev) if dev.isdigit() else dev
                args = {"device": device, "width": cam.width, "height": cam.height, "fps": cam.fps}
            else:
                num = cam.vein_camera_num if vein else cam.camera_num
                args = {"camera_num": num, "size": (cam.width, cam.height), "fmt": cam.format}
            src = open_source({"kind": cam.source, **args})
            return Reopening(src, report, (cam.reopen_min, cam.reopen_max))

        self.timeout = cam.read_timeout
        self.state = "opening"
        self._ahead: ThreadPoolExecutor | None = None  # takes a capture's later frames
        self._pending: Future | None = None  # the frames a capture is still taking
        if cam.layout == "dual":
            from agent.capture.illumination import TwoCameras

            self.rig: Any = TwoCameras(source("print"), source("vein"))
            self.modalities: tuple[str, ...] = ("print", "vein")
        elif cam.layout == "switched":
            from agent.capture.illumination import Illumination, SwitchedLight

            light = cam.illumination
            leds = Illumination(
                light.print_pin, light.vein_pin, light.settle_ms / 1e3, light.active_high
            )  # type: ignore[arg-type]
            self.rig = SwitchedLight(source("print"), leds)
            self.modalities = ("print", "vein")
            # the second frame of a capture comes a settle delay and two frame times after the
            # first: a thread takes it while the first goes through the pipeline
            self._ahead = ThreadPoolExecutor(1, thread_name_prefix="capture")
        else:
            self.rig = source(cam.layout)
            self.modalities = (cam.layout,)

    def read(self, modalities: tuple[str, ...]) -> Capture | None:
        from agent.capture import CaptureError
        from agent.daemon import Capture

        if self._pending is not None:  # one read of the rig at a time
            wait([self._pending])
            self._pending = None
        wanted = [m for m in modalities if m in self.modalities] or list(self.modalities)
        order = self.rig.lit_first(wanted) if self._ahead is not None else wanted
        try:
            if len(self.modalities) == 1:
                frames = {self.modalities[0]: self.rig.read(self.timeout)}
            elif self._ahead is not None:
                frames = {order[0]: self.rig.capture(order[0], self.timeout)}
            else:
                frames = self.rig.capture_set(wanted, self.timeout)
        except CaptureError as e:
            self._lost(e)
            return None
        self.state = "ok"
        taken = min(f.timestamp for f in frames.values())
        images = {m: f.image for m, f in frames.items()}
        if self._ahead is None or len(order) == 1:
            return Capture(images, taken)
        rest = self._pending = self._ahead.submit(
            lambda: {m: self.rig.capture(m, self.timeout).image for m in order[1:]}
        )
        return Capture(_Arriving(order, images, rest, self._lost), taken)

    def _lost(self, e: Exception) -> None:
        from agent.capture import EndOfStream

        self.state = "ended" if isinstance(e, EndOfStream) else "unavailable"
        logger.debug("capture no frame: %s", e)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.shutdown(wait=True)
        self.rig.close()
        self.state = "closed"


class _Arriving(Mapping[str, "np.ndarray"]):
    """A capture's frames in the order they are taken: the first at hand, the others still
    being taken on the capture thread; reading one of those waits for it, and raises
    :class:`agent.daemon.FrameLost` when the camera failed to give it."""

    def __init__(
        self,
        order: list[str],
        have: dict[str, np.ndarray],
        rest: Future,
        lost: Callable[[Exception], None],
    ) -> None:
        self._order, self._have, self._rest, self._lost = order, have, rest, lost

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, m: str) -> np.ndarray:
        from agent.capture import CaptureError
        from agent.daemon import FrameLost

        if m not in self._have and m in self._order:
            try:
                self._have.update(self._rest.result())
            except CaptureError as e:
                self._lost(e)
                raise FrameLost(f"no {m} frame: {e}") from e
        return self._have[m]


def _startup_errors() -> tuple[type[BaseException], ...]:
    from agent.bundle import BundleError
    from agent.config import ConfigError
    from agent.protect import KeyFileError
    from agent.store import StoreError

    return (ConfigError, BundleError, KeyFileError, StoreError, FileNotFoundError, ValueError)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        daemon = build(args.config)
    except _startup_errors() as e:
        print(f"palm-agent: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return daemon.run()


def cmd_enroll(args: argparse.Namespace) -> int:
    from agent.commands import CommandError

    try:
        daemon = build(args.config, with_reporter=False)
    except _startup_errors() as e:
        print(f"palm-agent: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = daemon.enroll_now(args.subject, args.captures)
    except CommandError as e:
        print(f"palm-agent: {e}", file=sys.stderr)
        return 1
    finally:
        daemon.source.close()
        daemon.engine.close()
        daemon.store.close()
    print(json.dumps(result))
    return 0
