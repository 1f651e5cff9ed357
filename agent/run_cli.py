"""``palm-agent run`` (the service) and ``palm-agent enroll SUBJECT`` (on the device).

Everything is built from the validated config before anything starts, so a bad config, a missing
bundle or a foreign key file stops the process with one message and exit code 2 (systemd's
Restart=on-failure then backs off) instead of a half-started daemon.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli import parse_number

if TYPE_CHECKING:
    from agent.config import Config

EXIT_CONFIG = 2
logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run the daemon (systemd: Type=notify)")
    run.add_argument("--config", required=True, type=Path, help="YAML config (firmware_config/)")
    run.set_defaults(func=cmd_run)
    en = subparsers.add_parser("enroll", help="enroll a subject from the device's camera")
    en.add_argument(
        "subject", type=_subject, help="label of the subject to enroll ([A-Za-z0-9._@-], 1-64)"
    )
    en.add_argument("--config", required=True, type=Path, help="YAML config (firmware_config/)")
    en.add_argument(
        "--captures", type=_captures, default=None, help="good captures per modality (1-50)"
    )
    en.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="enroll even if the palm matches an enrolled subject (different people the device "
        "cannot tell apart; a WARNING names both)",
    )
    en.set_defaults(func=cmd_enroll)


def _subject(text: str) -> str:
    """The enroll command's label: what the MQTT commands accept (a label enrolled here with a
    space or 65 characters could not be named by the MQTT revoke, list or mode commands)."""
    import re

    from agent.commands import SUBJECT

    if not re.match(SUBJECT, text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a subject label: 1-64 of A-Z a-z 0-9 . _ @ -"
        )
    return text


def _captures(text: str) -> int:
    """The enroll command's --captures: the range the config and the MQTT command allow."""
    n = parse_number(text, int)
    if not 1 <= n <= 50:
        raise argparse.ArgumentTypeError(f"{n} is not between 1 and 50")
    return n


def build(config: Path | Config, with_reporter: bool = True) -> Any:
    """Config (a file, or one already loaded) -> a ready :class:`agent.daemon.Daemon` (not yet
    running)."""
    from agent.config import Config, load_config

    # first: a bad config is reported before anything loads
    cfg = config if isinstance(config, Config) else load_config(config)
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
    from agent.store import StoreError, TemplateStore

    bundle = load_configured_bundle(cfg)
    # after the bundle: a start refused for its bundle leaves no new key behind
    key = DeviceKey.load_or_create(cfg.store.key_path)
    store = TemplateStore(cfg.store.path, Protector(key, bundle.bits))
    reporter = None
    if with_reporter:
        try:
            outbox = Outbox(cfg.outbox.path, cfg.outbox.max_messages)
        except (sqlite3.Error, OSError) as e:
            damaged = "malformed" in str(e) or "not a database" in str(e)
            raise StoreError(
                f"outbox {cfg.outbox.path}: {e}"
                + (
                    "; it holds only decisions not yet sent to the broker: move it and its -wal "
                    "and -shm files aside, and an empty one is made at the next start"
                    if damaged
                    else ""
                )
            ) from None
        from agent import __version__ as version

        reporter = MqttReporter(cfg.mqtt, cfg.device.id, outbox, cfg.device.name, version)
    report = (
        (lambda event, fields: reporter.error({"event": event, **fields})) if reporter else None
    )
    first = [bundle]
    with _gpio(f"camera.layout {cfg.camera.layout!r}"):
        camera = Camera(cfg.camera, report)
    daemon = Daemon(
        cfg,
        reporter,  # type: ignore[arg-type]
        camera,
        store,
        # the first engine takes the bundle read above; a reload reads and checks its own
        load_engine=lambda per_capture: BundleEngine(
            cfg, store, first.pop() if first else None, per_capture
        ),
        rekey=lambda: rekey_store(store, Path(cfg.store.key_path)),
        notifier=Notifier(),
    )
    with _gpio("trigger.button_pin / leds"):
        _wire_gpio(daemon, cfg)
    return daemon


class GpioError(RuntimeError):
    """The config asks for GPIO pins that gpiozero cannot drive on this machine."""


@contextmanager
def _gpio(what: str) -> Iterator[None]:
    """gpiozero's failure as one line: ``what`` needs pins, and why each pin factory it tried
    could not drive them (gpiozero says why only in warnings, before a bare "Unable to load any
    default pin factory!")."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            yield
        except Exception as e:
            module = type(e).__module__
            missing = isinstance(e, ImportError) and e.name == "gpiozero"
            if not (missing or module.startswith("gpiozero")):
                raise
            tried = [
                str(w.message) for w in seen if type(w.message).__name__ == "PinFactoryFallback"
            ]
            raise GpioError(
                f"{what} needs GPIO pins, which gpiozero cannot drive here: {e}"
                + (f" ({'; '.join(tried)})" if tried else "")
                + ". On a Pi the venv needs lgpio (apt python3-lgpio, seen by a venv made with "
                "--system-site-packages, as scripts/install.sh --profile raspberry-pi makes "
                "it); without GPIO use camera.layout dual, print or vein, and no button or LEDs"
            ) from None
    for w in seen:
        logger.warning("gpio %s", w.message)


def _wire_gpio(daemon: Any, cfg: Any) -> None:
    """A GPIO button as the trigger and LEDs for the outcome (gpiozero, only when configured)."""
    if cfg.trigger.kind == "button":
        from gpiozero import Button

        # gpiozero wants None, not 0, for no filtering; the daemon debounces presses as well
        button = Button(cfg.trigger.button_pin, bounce_time=cfg.trigger.debounce or None)
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

    return (
        ConfigError, BundleError, KeyFileError, StoreError, GpioError, FileNotFoundError,
        ValueError,
    )  # fmt: skip


def hold_store(store_path: str | Path, over_mqtt: str = "enroll") -> int:
    """Take the lock that makes one process the user of a template store, its camera and its
    device id: a second ``palm-agent run`` beside the service fought it for the broker (the same
    client id: each connect closed the other's, once a second), the camera and the outbox, and
    ``palm-agent enroll`` beside it for the camera. Returns the lock's descriptor (held until
    closed, or the process ends); raises :class:`agent.store.StoreError` naming the holder and
    ``over_mqtt``, the command to send the running one instead.

    ``flock`` on ``STORE.lock`` beside the store, not on the database itself: closing any other
    descriptor of a SQLite file drops that process's own locks on it.
    """
    import fcntl

    from agent.store import StoreError
    from agent.store_unwritable import on_read_only

    store = Path(store_path)
    lock = store.with_name(store.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError:  # another user's (the service's or root's): locking needs no write
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if (said := on_read_only(lock)) is not None:
            raise StoreError(f"{lock}: cannot open the store's lock: {said}") from None
        if isinstance(e, PermissionError):  # a command by hand without sudo
            raise StoreError(
                f"{lock}: this process (uid {os.geteuid()}) cannot open the store's lock: "
                f"{e.strerror}; the state folder is another user's (the service's, or root's): "
                "run a command by hand as root (sudo)"
            ) from None
        raise StoreError(f"{lock}: cannot open the store's lock: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            holder = ""
        os.close(fd)
        who = f"another palm-agent (pid {holder})" if holder.isdigit() else "another palm-agent"
        raise StoreError(
            f"{who} is using the template store {store} (lock {lock}): one process per store "
            "and camera; stop it first (the service: systemctl stop palm-agent), or "
            f"{over_mqtt} over MQTT while it runs"
        ) from None
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o644)  # the service's user and root can each take it after the other
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # opened read-only: locked all the same, without the pid
    return fd


def _verbose(args: argparse.Namespace) -> None:
    """``palm-agent -v``: debug logging over the config's ``logging.level`` (build sets that)."""
    if getattr(args, "verbose", False):
        logging.getLogger().setLevel(logging.DEBUG)


def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler

    from agent.config import load_config

    # systemd's watchdog ends a hung daemon with SIGABRT: each thread's stack goes to the journal,
    # so the restart says where it hung (the camera, a model, the broker)
    faulthandler.enable()
    lock = None
    try:
        cfg = load_config(args.config)
        lock = hold_store(cfg.store.path)
        daemon = build(cfg)
        _verbose(args)
    except _startup_errors() as e:
        print(f"palm-agent: {e}", file=sys.stderr)
        if lock is not None:
            os.close(lock)
        return EXIT_CONFIG
    try:
        return daemon.run()
    finally:
        os.close(lock)


def cmd_enroll(args: argparse.Namespace) -> int:
    from agent.commands import CommandError
    from agent.config import load_config
    from agent.store_damage import EXIT_STORE_DAMAGED, damage, damaged

    lock = None
    try:
        # no broker here: its section is checked, but its password and files need not be there
        cfg = load_config(args.config, unused=("mqtt",))
        lock = hold_store(cfg.store.path)
        daemon = build(cfg, with_reporter=False)
        _verbose(args)
    except _startup_errors() as e:
        print(f"palm-agent: {e}", file=sys.stderr)
        if lock is not None:
            os.close(lock)
        return EXIT_CONFIG
    try:
        result = daemon.enroll_now(args.subject, args.captures, args.allow_duplicate)
    except CommandError as e:
        print(f"palm-agent: {e}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as e:
        # damaged past what the check at open reads, or under the enrollment: the daemon's line
        what = damage(e)
        if what is None:
            raise
        print(f"palm-agent: store damaged: {damaged(cfg.store.path, what)}", file=sys.stderr)
        return EXIT_STORE_DAMAGED
    finally:
        daemon.close()
        os.close(lock)
    print(json.dumps(result))
    return 0
