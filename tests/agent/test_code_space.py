"""Templates and the network that made them: a code matches only codes of the same weights.

A bundle from a retrained model (same bits) was taken over an enrolled store, and then every
palm was "unknown" with nothing in the log to say why. The store records the weights' digest
(the manifest's ``weights_sha256``) and refuses other weights at start, at a reload and at an
enrollment; bundles of the same weights (another format or precision) are taken.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.manifest import BundleError

from .conftest import make_bundle, on_main
from .test_daemon import NoBroker, agent_config, write_replay
from .test_run_cli import _cli

A, B = "a" * 64, "b" * 64


def _same_weights_other_bundle(root: Path) -> Path:
    """Bundle A's network in a bundle of its own, as an int8 or TFLite export of the same
    checkpoint is: another manifest (another model_hash), the same weights' digest."""
    make_bundle(root, weights_sha256=A)
    manifest = root / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["created"] = "another export of the same checkpoint"
    manifest.write_text(json.dumps(doc))
    return root


def _stats(cfg_dir: Path) -> dict:
    out = _cli("gallery", "stats", "--db", cfg_dir / "templates.sqlite", "--key",
               cfg_dir / "device.key")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_a_start_or_enrollment_with_other_weights_than_the_templates_is_refused(
    running_broker, tmp_path
):
    a = make_bundle(tmp_path / "a", weights_sha256=A)
    b = make_bundle(tmp_path / "b", seed=1, weights_sha256=B)
    replay = write_replay(tmp_path / "r", [0] * 4)
    cfg = agent_config(tmp_path, running_broker, "dev40", a, replay)
    assert _cli("enroll", "alice", "--config", cfg).returncode == 0
    assert _stats(tmp_path)["weights_sha256"] == A  # palm-agent gallery stats shows it

    cfg = agent_config(tmp_path, running_broker, "dev40", b, replay)
    for argv in (("run", "--config", cfg), ("enroll", "bob", "--config", cfg)):
        out = _cli(*argv)
        said = out.stderr.strip().splitlines()[-1]  # after the bundle's INFO lines
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert said.startswith("palm-agent: /"), said
        assert (
            f"holds templates made with other network weights ({A[:12]}) than the bundle {b} "
            f"({B[:12]}): codes of different weights never match"
        ) in said, said
        assert "deploy the bundle the templates were enrolled with" in said, said
        assert "move templates.sqlite and its -wal and -shm files aside" in said, said
    assert _stats(tmp_path)["weights_sha256"] == A  # the refused bundle recorded nothing

    # the same weights in another bundle (another format or precision of one checkpoint)
    cfg = agent_config(tmp_path, running_broker, "dev40", _same_weights_other_bundle(
        tmp_path / "a-int8"), replay)  # fmt: skip
    out = _cli("enroll", "bob", "--config", cfg, "--allow-duplicate")
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_reload_to_other_weights_is_refused_and_the_running_bundle_kept(running_broker, tmp_path):
    """SIGHUP, the reload command and a mode change that loads the models again: the bundle of
    other weights is refused, and decisions go on granting the enrolled subject."""
    from agent.run_cli import build

    a = make_bundle(tmp_path / "a", weights_sha256=A)
    b = make_bundle(tmp_path / "b", seed=1, weights_sha256=B)
    live = tmp_path / "live"
    live.symlink_to(a)
    replay = write_replay(tmp_path / "r", [0] * 4)
    daemon = build(agent_config(tmp_path, running_broker, "dev41", live, replay))
    try:
        assert daemon.enroll_now("alice")["subject"] == "alice"
        doc = daemon._capture_and_decide(explicit=True)
        assert (doc["decision"], doc["subject"]) == ("granted", "alice"), doc
        engine = daemon.engine
        live.unlink()
        live.symlink_to(b)  # a retrained model deployed over the enrolled store
        said = on_main(daemon, daemon.reload)
        assert isinstance(said, str), said
        assert said.startswith(
            "reload failed, keeping the current bundle: "
            f"{tmp_path / 'templates.sqlite'} holds templates made with other network weights "
            f"({A[:12]}) than the bundle {live} ({B[:12]})"
        ), said
        assert daemon.engine is engine
        said = on_main(daemon, lambda: daemon.set_mode("print", None, None))  # reloads
        assert isinstance(said, str) and "other network weights" in said, said
        assert daemon.engine is engine and daemon.settings.mode == "multi"
        doc = daemon._capture_and_decide(explicit=True)
        assert (doc["decision"], doc["subject"]) == ("granted", "alice"), doc
        assert daemon.store.stats()["weights_sha256"] == A

        live.unlink()
        live.symlink_to(_same_weights_other_bundle(tmp_path / "a-int8"))
        reloaded = on_main(daemon, daemon.reload)
        assert reloaded["model_hash"] != engine.model_hash  # another bundle, taken
        doc = daemon._capture_and_decide(explicit=True)
        assert (doc["decision"], doc["subject"]) == ("granted", "alice"), doc

        # nobody enrolled any more: the store takes the new network's digest
        daemon.store.revoke("alice")
        live.unlink()
        live.symlink_to(b)
        assert len(on_main(daemon, daemon.reload)["model_hash"]) == 64
        assert daemon.store.stats()["weights_sha256"] == B
    finally:
        daemon.close()


def test_an_older_bundle_or_store_without_the_digest(running_broker, tmp_path, caplog):
    """A bundle exported before the digest runs, with a WARNING that nothing could be checked;
    a store enrolled before the record takes the next bundle's digest, then holds to it."""
    from agent.run_cli import build
    from agent.store import StoreError

    old = make_bundle(tmp_path / "old")  # no weights_sha256
    replay = write_replay(tmp_path / "r", [0] * 4)
    caplog.set_level(logging.INFO, logger="agent.store")
    daemon = build(agent_config(tmp_path, NoBroker(), "dev42", old, replay), with_reporter=False)
    try:
        daemon.enroll_now("alice")
        assert daemon.store.stats()["weights_sha256"] is None
    finally:
        daemon.close()
    warned = [r for r in caplog.records if "weights_unchecked" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING, caplog.text
    assert "records no weights_sha256" in warned[0].getMessage()

    caplog.clear()
    a = make_bundle(tmp_path / "a", weights_sha256=A)  # the same network, now with its digest
    daemon = build(agent_config(tmp_path, running_broker, "dev42", a, replay))
    try:
        assert daemon.store.stats()["weights_sha256"] == A
        doc = daemon._capture_and_decide(explicit=True)
        assert (doc["decision"], doc["subject"]) == ("granted", "alice"), doc
    finally:
        daemon.close()
    adopted = [r for r in caplog.records if "weights_recorded" in r.getMessage()]
    assert len(adopted) == 1 and adopted[0].levelno == logging.INFO, caplog.text

    b = make_bundle(tmp_path / "b", seed=1, weights_sha256=B)
    with pytest.raises(StoreError, match="other network weights"):
        build(agent_config(tmp_path, NoBroker(), "dev42", b, replay), with_reporter=False)


def test_weights_unchecked_is_warned_once_per_bundle_and_manifest(running_broker, tmp_path, caplog):
    """A bundle without the digest warned weights_unchecked again at every reload and every
    mode change that loads the models again: once per bundle path and manifest is enough."""
    from agent.run_cli import build

    old = make_bundle(tmp_path / "old")  # no weights_sha256
    replay = write_replay(tmp_path / "r", [0] * 4)
    caplog.set_level(logging.INFO, logger="agent")
    daemon = build(agent_config(tmp_path, running_broker, "dev43", old, replay))

    def warned() -> int:
        return sum(r.getMessage().startswith("store weights_unchecked") for r in caplog.records)

    try:
        daemon.enroll_now("alice")
        for _ in range(3):
            assert len(on_main(daemon, daemon.reload)["model_hash"]) == 64
            assert daemon._capture_and_decide(explicit=True)["decision"] == "granted"
        on_main(daemon, lambda: daemon.set_mode("print", None, None))  # loads them again
        assert warned() == 1, caplog.text
        manifest = old / "manifest.json"  # another export at the same path, also without it
        doc = json.loads(manifest.read_text())
        doc["created"] = "exported again"
        manifest.write_text(json.dumps(doc))
        on_main(daemon, daemon.reload)
        on_main(daemon, daemon.reload)
        assert warned() == 2, caplog.text
    finally:
        daemon.close()


@pytest.mark.parametrize("value", ["abc", 42, "g" * 64, "a" * 63, ["a" * 64]])
def test_a_malformed_weights_digest_is_refused(tmp_path, value):
    from agent.bundle import load_bundle

    root = make_bundle(tmp_path / "b", weights_sha256=A)
    doc = json.loads((root / "manifest.json").read_text())
    doc["weights_sha256"] = value
    (root / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="weights_sha256 must be 64 hex digits"):
        load_bundle(root)
    doc["weights_sha256"] = A.upper()
    (root / "manifest.json").write_text(json.dumps(doc))
    assert load_bundle(root).manifest.weights_sha256 == A


@pytest.mark.parametrize("refused", ["other_weights", "tampered"])
def test_a_reload_signal_refused_is_one_error_line_and_an_event(
    running_broker, subscribe, tmp_path, caplog, refused
):
    """SIGHUP (systemctl reload) to a bundle the daemon will not take: nobody awaits a reply,
    and the refusal was a "pipeline error" traceback and a ``pipeline_error`` event. It is one
    ERROR line naming why and the model kept, a ``reload_refused`` event, and the daemon goes
    on deciding with the running bundle."""
    import os
    import signal

    from agent.run_cli import build

    from .test_daemon import run_beside

    a = make_bundle(tmp_path / "a", weights_sha256=A)
    if refused == "other_weights":
        new = make_bundle(tmp_path / "b", seed=1, weights_sha256=B)
    else:  # a model file changed after export: its hash no longer matches the manifest's
        new = make_bundle(tmp_path / "t", weights_sha256=A)
        with open(new / "print.fp32.onnx", "ab") as f:
            f.write(b"\0")
    live = tmp_path / "live"
    live.symlink_to(a)
    replay = write_replay(tmp_path / "r", [0] * 4)
    cfg = agent_config(tmp_path, running_broker, "dev19", live, replay,
                       trigger={"kind": "command"})  # fmt: skip
    sub = subscribe("palm/dev19/error")
    daemon = build(cfg)
    assert daemon.enroll_now("alice")["subject"] == "alice"
    engine = daemon.engine
    seen: dict[str, object] = {}

    def operator() -> None:
        live.unlink()
        live.symlink_to(new)
        os.kill(os.getpid(), signal.SIGHUP)
        got = sub.wait(lambda m: True, timeout=10)
        seen["event"] = json.loads(got[0][3]) if got else None
        seen["decision"] = daemon.capture()

    caplog.set_level(logging.INFO, logger="agent")
    run_beside(daemon, operator)
    assert daemon.engine is engine  # kept
    assert seen["decision"]["decision"] == "granted", seen
    errors = [x.getMessage() for x in caplog.records if x.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("reload refused signal=SIGHUP reason="), errors
    assert errors[0].endswith(f" keeping model_hash={engine.model_hash}"), errors
    why = "other network weights" if refused == "other_weights" else "print.fp32.onnx"
    assert why in errors[0], errors
    event = seen["event"]
    assert isinstance(event, dict), seen
    assert event["event"] == "reload_refused" and event["signal"] == "SIGHUP", event
    assert event["model_hash"] == engine.model_hash and why in event["reason"], event
