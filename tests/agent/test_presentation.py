"""The daemon's loop over what a reader at a door sees: hands that come and go in front of it,
with a real bundle and replayed captures (in process, driven one capture at a time)."""

from __future__ import annotations

import time

import cv2
import numpy as np

from .test_daemon import agent_config, write_replay


def write_empty(d, index: int) -> None:
    """A capture with nobody in front of the reader: both frames dark."""
    for m in ("print", "vein"):
        cv2.imwrite(str(d / m / f"{index:05d}.png"), np.full((128, 128), 5, np.uint8))


def decisions(daemon, captures: int) -> list[dict]:
    """What the presence loop publishes over ``captures`` captures of a replay played once."""
    docs: list[dict] = []
    daemon.on_decision.append(docs.append)
    for _ in range(captures * 20):
        if daemon._frames >= captures:
            break
        daemon._capture_and_decide(explicit=False)
    assert daemon._frames == captures
    return docs


def test_a_hand_that_leaves_ends_its_agreement_window(running_broker, palm_bundle, tmp_path):
    """Two strangers' frames, then nobody for a while, then alice: her first frame must not be
    outvoted by frames of people who left long ago (k-of-n agrees within one presentation)."""
    from agent.run_cli import build

    cfg = agent_config(
        tmp_path, running_broker, "dev18", palm_bundle, write_replay(tmp_path / "e", [0] * 3)
    )
    daemon = build(cfg, with_reporter=False)
    try:
        daemon.enroll_now("alice")
    finally:
        daemon.close()

    live = write_replay(tmp_path / "live", [1, 2], start=0)
    for i in range(2, 5):
        write_empty(live, i)
    write_replay(live, [0, 0], start=5)
    cfg = agent_config(
        tmp_path, running_broker, "dev18", palm_bundle, live,
        camera={"loop": False}, match={"agreement": {"k": 2, "n": 3}},
    )  # fmt: skip
    daemon = build(cfg)
    try:
        docs = decisions(daemon, 7)
    finally:
        daemon.close()
    assert [(d["decision"], d["subject"]) for d in docs] == [("granted", "alice")], docs
    assert docs[0]["agreement"]["votes"] == 2


def test_an_enrollment_right_after_a_decision_counts_no_missing_frames(
    running_broker, palm_bundle, tmp_path
):
    """An enrollment asked for during the cooldown of a decision waits it out; it counted each
    look during the cooldown as a capture with no frame (19 in a second), as if the camera
    were failing."""
    from agent.run_cli import build

    replay = write_replay(tmp_path / "e", [0] * 4)
    cfg = agent_config(
        tmp_path, running_broker, "dev19", palm_bundle, replay, trigger={"cooldown": 1.0}
    )
    daemon = build(cfg)
    try:
        assert decisions(daemon, 1)[0]["decision"] == "unknown"  # nobody enrolled yet
        t0 = time.monotonic()
        result = daemon.enroll_now("alice")
        assert time.monotonic() - t0 >= 0.9  # the cooldown was waited out
    finally:
        daemon.close()
    assert result["captures"] == {"print": 3, "vein": 3}
    assert result["rejected"] == {}, result
