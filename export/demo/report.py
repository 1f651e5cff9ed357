"""The demo's closing summary: measurements, whether decisions were right, where things are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from export.demo.frames import Shot


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def parity_table(text: str) -> list[str]:
    """The parity table of ``palm-export export``'s output, from its header line on: the
    converters print notes of their own first ("Relu partition has more than one output
    node", once per model), which are no part of the table the summary shows."""
    lines = text.strip().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("file ")), 0)
    return lines[start:]


def _row(p: dict[str, Any]) -> dict[str, Any]:
    shot: Shot = p["shot"]
    doc = p["decision"] or {}
    decision = doc.get("decision") or ("no reply" if not p["reply"].get("ok") else "missing")
    if shot.role == "genuine":
        correct = decision == "granted" and doc.get("subject") == shot.label
    else:
        correct = decision in ("unknown", "denied")
    return {
        "shown": shot.label,
        "role": shot.role,
        "sample": shot.sample,
        "decision": decision,
        "subject": doc.get("subject"),
        "distances": doc.get("distances"),
        "threshold": doc.get("threshold"),
        "reason": doc.get("reason") or (p["reply"].get("error") or {}).get("message"),
        "latency_ms": doc.get("latency_ms"),
        "round_trip_ms": p["reply"].get("_round_trip_ms"),
        "correct": bool(correct),
    }


def build(
    out: Path,
    eval_dir: Path,
    bundle: Path,
    shots: list[Shot],
    live: dict[str, Any],
    times: dict[str, float],
    parity_text: str,
) -> dict[str, Any]:
    rows = [_row(p) for p in live["probes"]]
    gen = [r for r in rows if r["role"] == "genuine"]
    imp = [r for r in rows if r["role"] == "impostor"]
    lat = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    rtt = [r["round_trip_ms"] for r in rows if r["round_trip_ms"] is not None]
    report = json.loads((eval_dir / "report.json").read_text())
    stats = live.get("stats") or {}
    return {
        "evaluation": report,
        "parity_table": parity_table(parity_text),
        "enroll": live["enroll"],
        "listed": live.get("listed"),
        "decisions": {
            "rows": rows,
            "all_received": all(r["decision"] not in ("missing", "no reply") for r in rows),
            "genuine_granted": sum(r["correct"] for r in gen),
            "genuine": len(gen),
            "impostor_denied": sum(r["correct"] for r in imp),
            "impostor": len(imp),
        },
        "latency_ms": {
            "frame_to_decision_p50": _pct(lat, 50),
            "frame_to_decision_p95": _pct(lat, 95),
            "capture_command_round_trip_p50": _pct(rtt, 50),
            "capture_command_round_trip_p95": _pct(rtt, 95),
            "stages_mean_last_stats": stats.get("latency_ms"),
        },
        "daemon": {
            "online_s": live.get("online_s"),
            "exit_code": live.get("agent_exit"),
            "availability_after_stop": live.get("availability_after_stop"),
        },
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "artefacts": {
            "data set": str(out / "data"),
            "checkpoint": str(out / "train" / "best.pt"),
            "evaluation": str(eval_dir / "report.json"),
            "DET plots": ", ".join(sorted(str(p) for p in eval_dir.glob("det_*.png"))[:1])
            + f" (+{max(0, len(list(eval_dir.glob('det_*.png'))) - 1)} more in {eval_dir})",
            "bundle": str(bundle),
            "replayed frames": str(out / "replay"),
            "device config / log": f"{live['config']} / {out / 'device' / 'agent.log'}",
            "broker log": live.get("broker_log", str(out / "broker" / "mosquitto.log")),
            "this summary": str(out / "summary.json"),
        },
    }


def render(s: dict[str, Any]) -> str:
    from export.evaluate import format_table

    d = s["decisions"]
    lines = ["Evaluation of the trained network on held-out captures (Hamming = on device):"]
    lines += ["  " + ln for ln in format_table(s["evaluation"]).splitlines()]
    if s["parity_table"]:
        lines += ["", "Export parity (device runtimes vs the training framework):"]
        lines += ["  " + ln for ln in s["parity_table"]]
    lines += ["", "Enrollment over MQTT:"]
    for e in s["enroll"]:
        res = e.get("result") or {}
        what = f"spread {res.get('spread')}" if e["ok"] else e["error"]["message"][:90]
        lines.append(f"  {res.get('subject', '?'):<6} {'ok' if e['ok'] else 'FAILED'}  {what}")
    lines += ["", "Decisions received on palm/dev1/decision:"]
    lines.append(
        f"  {'shown':<6}{'role':<10}{'decision':<10}{'subject':<9}{'dist':<16}{'thr':>4}"
        f"{'ms':>8}  ok"
    )
    for r in d["rows"]:
        dist = ",".join(f"{k[0]}{v}" for k, v in (r["distances"] or {}).items())
        lines.append(
            f"  {r['shown']:<6}{r['role']:<10}{r['decision']:<10}{r['subject'] or '-':<9}"
            f"{dist:<16}{r['threshold'] if r['threshold'] is not None else '-':>4}"
            f"{r['latency_ms'] if r['latency_ms'] is not None else '-':>8}  "
            f"{'yes' if r['correct'] else 'NO'}"
        )
    lines.append(
        f"  genuine granted {d['genuine_granted']}/{d['genuine']}, "
        f"impostors denied {d['impostor_denied']}/{d['impostor']}"
    )
    lat = s["latency_ms"]
    lines += [
        "",
        f"Latency: frame->decision p50 {lat['frame_to_decision_p50']} ms, "
        f"p95 {lat['frame_to_decision_p95']} ms; capture command round trip p50 "
        f"{lat['capture_command_round_trip_p50']} ms; stage means {lat['stages_mean_last_stats']}",
        f"Daemon: online after {s['daemon']['online_s']} s, exit code "
        f"{s['daemon']['exit_code']}, availability after stop: "
        f"{s['daemon']['availability_after_stop']}",
        "Wall time per step (s): " + ", ".join(f"{k} {v}" for k, v in s["times_s"].items()),
        "",
        "Artefacts:",
    ]
    lines += [f"  {k:<20}{v}" for k, v in s["artefacts"].items()]
    return "\n".join(lines)
