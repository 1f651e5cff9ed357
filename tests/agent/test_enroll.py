"""Enrollment's duplicate check, with a real bundle, store and onnxruntime: a palm already
enrolled under another label, or one the device cannot tell apart from an enrolled one at its
configured threshold, is refused before the store writes anything, unless explicitly allowed."""

from __future__ import annotations

import itertools
import logging

import pytest

from agent.config import parse_config
from agent.decide import BundleEngine
from agent.enroll import DuplicatePalm, enroll
from agent.protect import DeviceKey, Protector
from agent.store import TemplateStore

from .conftest import palm_roi


@pytest.fixture
def make_engine(palm_bundle, tmp_path):
    """An engine and store under the ``match`` section given (the bundle's thresholds: print and
    vein 4, 6, 7, 8 bits at FMR 1e-4, 1e-3, 1e-2 and the EER)."""
    made = []

    def make(**match) -> tuple[BundleEngine, TemplateStore]:
        cfg = parse_config(
            {
                "device": {"id": "bench"},
                "bundle": {"path": str(palm_bundle), "threads": 1},
                "roi": {"already_roi": True},
                "match": match,
            },
            check_files=False,
        )
        store = TemplateStore(
            tmp_path / "t.sqlite", Protector(DeviceKey.load_or_create(tmp_path / "k"), 32)
        )
        engine = BundleEngine(cfg, store)
        made.append((engine, store))
        return engine, store

    yield make
    for engine, store in made:
        engine.close()
        store.close()


def enroll_palm(engine, store, label: str, palm: int, first: int = 0, **kw) -> dict:
    """Four captures of ``palm`` (capture noise from ``first`` on), print and vein."""
    n = itertools.count(first)

    def grab():
        i = next(n)
        return engine.vision({"print": palm_roi(palm, i), "vein": palm_roi(palm + 50, i)})

    return enroll(label, ("print", "vein"), grab, store, 4, 10, 5.0, matcher=engine.matcher, **kw)


def test_the_same_palm_under_a_second_label_is_refused_naming_the_first(make_engine):
    engine, store = make_engine()
    enroll_palm(engine, store, "alice", palm=0)
    version = store.version()
    with pytest.raises(DuplicatePalm) as refused:
        enroll_palm(engine, store, "alice2", palm=0, first=10)  # other captures of that palm
    said = str(refused.value)
    assert "'alice2' matches enrolled 'alice'" in said, said
    assert "print: 0 bits from 'alice', threshold 6" in said, said
    assert "revoke 'alice' first" in said and "--allow-duplicate" in said, said
    assert {(m, s) for m, s, _, _ in refused.value.matches} == {
        ("print", "alice"),
        ("vein", "alice"),
    }
    assert [s["label"] for s in store.list()] == ["alice"]
    assert store.version() == version  # nothing written


def test_allowed_the_duplicate_is_enrolled_and_a_warning_names_both(make_engine, caplog):
    engine, store = make_engine()
    enroll_palm(engine, store, "alice", palm=0)
    with caplog.at_level(logging.WARNING, logger="agent.enroll"):
        out = enroll_palm(engine, store, "alice2", palm=0, first=10, allow_duplicate=True)
    assert out["subject"] == "alice2"
    assert [(t["modality"], t["subject"]) for t in out["duplicates"]][:1] == [("print", "alice")]
    assert all(t["distance"] <= t["threshold"] for t in out["duplicates"])
    assert [s["label"] for s in store.list()] == ["alice", "alice2"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "duplicate_allowed subject=alice2 matches=alice modality=print" in w for w in warned
    ), warned


def test_a_different_palm_enrolls_as_before(make_engine, caplog):
    engine, store = make_engine()
    with caplog.at_level(logging.WARNING, logger="agent.enroll"):
        for label, palm in (("alice", 0), ("bob", 1), ("carol", 2)):
            assert enroll_palm(engine, store, label, palm=palm)["duplicates"] == []
    assert [s["label"] for s in store.list()] == ["alice", "bob", "carol"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("match", "threshold"),
    [
        ({"threshold": 7}, 7),  # the config's override
        ({"fmr": "0.01"}, 7),  # the bundle manifest's table
        ({"threshold": 6}, None),
        ({"fmr": "0.001"}, None),
    ],
)
def test_the_check_uses_the_configured_threshold(make_engine, match, threshold):
    """Palms 2 and 26 give print templates 7 bits apart: a device accepting 7 bits cannot tell
    them apart; one accepting 6 (stricter) can, and enrolls the second."""
    engine, store = make_engine(**match)
    enroll_palm(engine, store, "dora", palm=2)
    if threshold is None:
        enroll_palm(engine, store, "gina", palm=26)
        assert [s["label"] for s in store.list()] == ["dora", "gina"]
        return
    with pytest.raises(DuplicatePalm) as refused:
        enroll_palm(engine, store, "gina", palm=26)
    assert refused.value.matches == [("print", "dora", 7, threshold)]
    assert f"print: 7 bits from 'dora', threshold {threshold}" in str(refused.value)
