"""Vision -> decision with a real bundle, store and onnxruntime; enrollment; k-of-n agreement."""

from __future__ import annotations

import itertools
import time

import pytest

from agent.config import parse_config
from agent.decide import Agreement, BundleEngine, Probe, Settings
from agent.enroll import EnrollError, enroll
from agent.protect import DeviceKey, Protector
from agent.store import TemplateStore

from .conftest import onnx_threads, palm_roi, watch_infer


@pytest.fixture
def engine_store(palm_bundle, tmp_path):
    cfg = parse_config(
        {
            "device": {"id": "bench"},
            "bundle": {"path": str(palm_bundle), "threads": 1},
            "roi": {"already_roi": True},
        },
        check_files=False,
    )
    store = TemplateStore(
        tmp_path / "t.sqlite", Protector(DeviceKey.load_or_create(tmp_path / "k"), 32)
    )
    engine = BundleEngine(cfg, store)
    yield engine, store
    engine.close()
    store.close()


def frames(subject: int, i: int) -> dict:
    return {"print": palm_roi(subject, i), "vein": palm_roi(subject + 50, i)}


def grabber(engine, subjects):
    counter = itertools.count()
    cycle = itertools.cycle(subjects)
    return lambda: engine.vision(frames(next(cycle), next(counter)))


def test_enroll_then_identify_and_verify(engine_store):
    engine, store = engine_store
    out = enroll(
        "alice", ("print", "vein"), grabber(engine, [0]), store, 4, 10, 5.0,
        matcher=engine.matcher,
    )  # fmt: skip
    assert out["captures"] == {"print": 4, "vein": 4} and max(out["spread"].values()) <= 10
    ident = Settings("multi", True, None)
    doc = engine.decide(engine.vision(frames(0, 99)), ident, time.monotonic())
    assert (doc["decision"], doc["subject"]) == ("granted", "alice")
    assert doc["distances"]["print"] <= doc["threshold"]
    doc = engine.decide(engine.vision(frames(1, 99)), ident, time.monotonic())
    assert (doc["decision"], doc["subject"]) == ("unknown", None)
    claim = Settings("vein", False, "alice")
    doc = engine.decide(engine.vision(frames(1, 98)), claim, time.monotonic())
    assert doc["decision"] == "denied" and doc["claimed"] == "alice"
    doc = engine.decide(
        engine.vision(frames(0, 98)), Settings("cross", True, None), time.monotonic()
    )
    assert set(doc["distances"]) == {"print_vs_vein", "vein_vs_print"}


def test_enroll_refuses_inconsistent_captures(engine_store):
    engine, store = engine_store
    with pytest.raises(EnrollError, match="inconsistent print captures"):
        enroll(
            "mallory", ("print", "vein"), grabber(engine, [0, 1]), store, 4, 3, 5.0,
            matcher=engine.matcher,
        )  # fmt: skip
    assert store.list() == []


def test_enroll_reports_why_it_timed_out(engine_store):
    engine, store = engine_store
    with pytest.raises(EnrollError, match=r"timeout.*no_hand"):
        enroll(
            "bob", ("print",), lambda: Probe(rejected="no_hand"), store, 3, 5, 0.2,
            matcher=engine.matcher,
        )  # fmt: skip


def doc(decision: str, subject: str | None) -> dict:
    return {"decision": decision, "subject": subject}


def test_agreement_k_of_n():
    a = Agreement(k=2, n=3)
    assert a.push(doc("granted", "alice")) is None
    assert a.push(doc("unknown", None)) is None
    out = a.push(doc("granted", "alice"))
    assert out["decision"] == "granted" and out["agreement"]["votes"] == 2
    assert a.push(doc("granted", "bob")) is None
    assert a.push(doc("unknown", None)) is None
    out = a.push(doc("granted", "alice"))  # three frames, no two agree: nobody is granted
    assert out["decision"] == "unknown" and out["subject"] is None
    assert out["reason"] == "no_agreement" and out["agreement"]["votes"] == 1
    assert a.push(doc("error", None))["decision"] == "error"  # errors are not held back
    assert Agreement().push(doc("denied", None))["decision"] == "denied"


@pytest.mark.parametrize("identify", [True, False])
def test_a_lone_grant_that_ends_a_window_without_agreement_grants_nobody(identify):
    """k-of-n with mixed subjects: three frames granting three people, or two strangers and
    then one false match, release a refusal, not the last frame's grant with one vote."""
    for window in (
        [("granted", "alice"), ("granted", "bob"), ("granted", "carol")],
        [("unknown", None), ("unknown", None), ("granted", "mallory")],
    ):
        a = Agreement(k=2, n=3)
        outs = [a.push({**doc(d, s), "identify": identify}) for d, s in window]
        assert outs[:2] == [None, None]
        out = outs[2]
        assert out["decision"] == ("unknown" if identify else "denied"), out
        assert out["subject"] is None and out["reason"] == "no_agreement"
        assert out["agreement"] == {"k": 2, "n": 3, "votes": 1}
    # a window ending in a refusal releases that refusal as it was
    a = Agreement(k=2, n=2)
    a.push({**doc("granted", "alice"), "identify": identify, "reason": "match"})
    out = a.push({**doc("unknown", None), "identify": identify, "reason": "no_match"})
    assert out["decision"] == "unknown" and out["reason"] == "no_match"


def test_quality_gate_names_the_reason_and_nothing_is_hashed(engine_store):
    import numpy as np

    engine, _ = engine_store
    dark = engine.vision({"print": np.full((128, 128), 10, np.uint8)})
    assert dark.rejected == "too_dark" and dark.codes == {}
    flat = engine.vision({"print": np.full((128, 128), 128, np.uint8), "vein": palm_roi(50, 1)})
    assert flat.rejected == "blurred" and set(flat.codes) == {"vein"}
    assert flat.quality["print"]["ok"] is False and flat.quality["vein"]["ok"] is True


def _counting_searches(palm_bundle, tmp_path, monkeypatch, layout, shared=None):
    """(engine, store, calls, search): an engine for ``layout`` whose ROI searches append to
    ``calls``; ``search`` is the real one."""
    from agent import roi

    cfg = parse_config(
        {
            "device": {"id": "bench"},
            "bundle": {"path": str(palm_bundle), "threads": 1},
            "camera": {
                "source": "replay",
                "replay_path": "x",
                "vein_replay_path": "y",
                "layout": layout,
            },
            "roi": {"shared": shared},
        },
        check_files=False,
    )
    store = TemplateStore(
        tmp_path / "t.sqlite", Protector(DeviceKey.load_or_create(tmp_path / "k"), 32)
    )
    calls: list[int] = []
    search = roi.extract
    monkeypatch.setattr(roi, "extract", lambda *a, **k: calls.append(1) or search(*a, **k))
    return BundleEngine(cfg, store), store, calls, search


@pytest.mark.parametrize(
    ("layout", "shared", "searches"),
    [("switched", None, 1), ("dual", None, 2), ("dual", True, 1), ("switched", False, 2)],
)
def test_one_roi_search_per_capture_when_the_frames_share_a_sensor(
    palm_bundle, tmp_path, monkeypatch, layout, shared, searches
):
    from export.synth.hands import render_hand_frame

    engine, store, calls, search = _counting_searches(
        palm_bundle, tmp_path, monkeypatch, layout, shared
    )
    capture = {m: render_hand_frame(4, 2, seed=5, modality=m)[0] for m in ("print", "vein")}
    try:
        probe = engine.vision(capture)
        assert len(calls) == searches
        assert set(probe.codes) == {"print", "vein"}, probe.quality
        # each stage timed apart, the model alone in "infer" ("capture": the wait for a frame
        # still arriving, none here)
        assert set(probe.timings) == {"capture", "roi", "quality", "convert", "infer"}
        assert all(ms > 0 for ms in probe.timings.values()), probe.timings
        # the shared search changes the cost, not the codes: each frame's own ROI hashes alike
        for m, frame in capture.items():
            own = search(frame, engine.roi_config)
            assert engine.backends[m].hash([own.roi])[0] == probe.codes[m]
    finally:
        engine.close()
        store.close()


@pytest.mark.parametrize(("layout", "scene", "reason"),
                         [("switched", 70, "no_hand"), ("dual", 70, "no_hand"),
                          ("switched", 12, "too_dark")])  # fmt: skip
def test_a_capture_whose_first_frame_shows_no_hand_ends_there(
    palm_bundle, tmp_path, monkeypatch, layout, scene, reason
):
    """Nobody in front of the reader (a lit empty scene, or nothing lit at all): the other
    frame is neither read nor searched. A hand in the first frame and none in the second still
    has both judged."""
    import numpy as np

    from export.synth.hands import render_hand_frame

    engine, store, calls, _ = _counting_searches(palm_bundle, tmp_path, monkeypatch, layout)
    empty = np.random.default_rng(0).normal(scene, 4, (480, 640)).clip(0, 255).astype(np.uint8)
    hand = render_hand_frame(4, 2, seed=5, modality="vein")[0]

    class Frames(dict):
        """Records which frames the engine reads, in the order it reads them."""

        def __init__(self, frames):
            super().__init__(frames)
            self.read = []

        def __getitem__(self, m):
            self.read.append(m)
            return super().__getitem__(m)

    try:
        frames = Frames({"print": empty, "vein": hand})
        probe = engine.vision(frames)
        assert probe.rejected == reason and not probe.codes
        assert frames.read == ["print"] and len(calls) == 1
        assert list(probe.quality) == ["print"]
        frames = Frames({"vein": hand, "print": empty})
        probe = engine.vision(frames)
        assert frames.read == ["vein", "print"]
        assert set(probe.quality) == {"print", "vein"}, probe.quality
        assert probe.quality["vein"]["ok"], probe.quality
    finally:
        engine.close()
        store.close()


@pytest.mark.parametrize("concurrent", [True, False])
def test_a_captures_two_models_run_at_once_on_half_the_threads_and_hash_alike(
    palm_bundle, tmp_path, concurrent
):
    """bundle.concurrent: the print model runs on the worker while this thread takes the vein
    frame through its stages and its model; the codes are those of each model run alone."""
    cfg = parse_config(
        {
            "device": {"id": "bench"},
            "bundle": {"path": str(palm_bundle), "threads": 2, "concurrent": concurrent},
            "roi": {"already_roi": True},
        },
        check_files=False,
    )
    store = TemplateStore(
        tmp_path / "t.sqlite", Protector(DeviceKey.load_or_create(tmp_path / "k"), 32)
    )
    engine = BundleEngine(cfg, store)
    single = BundleEngine(cfg, store, per_capture=("print",))
    runs = {m: watch_infer(backend) for m, backend in engine.backends.items()}
    try:
        assert {onnx_threads(b) for b in engine.backends.values()} == {1 if concurrent else 2}
        assert engine.runner.concurrent is concurrent
        # one model per capture: it keeps all the threads
        assert onnx_threads(single.backends["print"]) == 2 and not single.runner.concurrent
        for i in range(3):
            capture = frames(i, 7)
            probe = engine.vision(capture)
            assert set(probe.codes) == {"print", "vein"}
            for m, roi in capture.items():  # each model alone, on all the threads
                assert probe.codes[m] == single.backends[m].hash([roi])[0]
        ran_on = {m: r[-1][0] for m, r in runs.items()}
        assert ran_on["vein"] == "MainThread"
        worker = ran_on["print"].startswith("infer")
        assert worker if concurrent else ran_on["print"] == "MainThread"
    finally:
        engine.close()
        single.close()
        store.close()


def test_a_model_left_running_by_a_failed_capture_never_runs_twice_at_once(palm_bundle):
    """A capture that fails after its print model went to the worker leaves it running; the
    next capture's run of that model, on this thread, waits for it."""
    from agent.inference import open_backend
    from agent.inference.concurrent import Runner

    backend = open_backend(palm_bundle / "print.fp32.onnx", threads=1)
    runner = Runner(concurrent=True)
    runs = watch_infer(backend)
    x = backend.feed([palm_roi(1, 1)] * 32)  # a few milliseconds of work
    try:
        for _ in range(5):
            runner.start(backend, x, last=False)  # never collected
            runner.start(backend, x, last=True)()
        spans = sorted((t0, t1) for _, t0, t1 in runs)
        assert len(spans) == 10
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    finally:
        runner.close()
        backend.close()


def test_a_bundle_whose_bits_are_not_its_models_outputs_is_refused(palm_bundle, tmp_path):
    """16 and 32 bits both pack into one uint32 word, so a manifest edited from 32 to 16 bits
    passes the centroids' check; the models' outputs tell, before a probe is hashed wrongly."""
    import json
    import shutil

    from agent.manifest import BundleError

    root = tmp_path / "bundle"
    shutil.copytree(palm_bundle, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["bits"] = 16
    (root / "manifest.json").write_text(json.dumps(manifest))
    cfg = parse_config(
        {"device": {"id": "bench"}, "bundle": {"path": str(root), "threads": 1}},
        check_files=False,
    )
    store = TemplateStore(
        tmp_path / "t.sqlite", Protector(DeviceKey.load_or_create(tmp_path / "k"), 16)
    )
    with pytest.raises(
        BundleError, match=r"bits is 16, but the onnx/fp32 models give \{'print': 32"
    ):
        BundleEngine(cfg, store)
    store.close()
