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
from pathlib import Path
from typing import Any

EXIT_CONFIG = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the daemon (systemd: Type=notify)")
    run.add_argument("--config", required=True, type=Path, help="YAML config (firmware_config/)")
    run.set_defaults(func=cmd_run)
    en = subparsers.add_parser("enroll", help="enroll a subject from the device's camera")
    en.add_argument("subject", help="label of the subject to enroll")
    en.add_argument("--config", required=True, type=Path, help="YAML config (firmware_config/)")
    en.add_argument(
        "--captures", type=_captures, default=None, help="good captures per modality (1-50)"
    )
    en.set_defaults(func=cmd_enroll)


def _captures(text: str) -> int:
    """The enroll command's --captures: the range the config and the MQTT command allow."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= 50:
        raise argparse.ArgumentTypeError(f"{n} is not between 1 and 50")
    return n


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

    from agent.capture.camera import Camera
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


def _startup_errors() -> tuple[type[BaseException], ...]:
    from agent.config import ConfigError
    from agent.manifest import BundleError
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
        daemon.close()
    print(json.dumps(result))
    return 0
