"""Thousands of random and malformed command payloads: always one error reply, never a crash.

The generator is seeded (reproducible) and mutates valid requests as well as producing noise, so
most payloads get past the JSON parser and probe the argument validation.
"""

from __future__ import annotations

import json
import random

from agent.commands import REGISTRY, Dispatcher

VALID = [
    {"cmd": "enroll", "args": {"subject": "alice", "captures": 3}},
    {"cmd": "revoke", "args": {"subject": "alice"}},
    {"cmd": "mode", "args": {"mode": "vein", "identify": False, "subject": "bob"}},
    {"cmd": "list"},
    {"cmd": "capture", "id": 4},
]
NOISE = [None, True, 0, -1, 2**70, 1.5, float("nan"), "", "x" * 300, [], {}, [1, {"a": None}]]


def mutate(rng: random.Random, doc: dict) -> dict:
    """Break exactly one thing so that the request is invalid."""
    d = json.loads(json.dumps(doc))
    choice = rng.randrange(5)
    if choice == 0:
        d["cmd"] = rng.choice([*NOISE, d["cmd"].upper(), d["cmd"] + " ", "reboot"])
    elif choice == 1:
        d[rng.choice(["args", "cmd", "id"])] = rng.choice([n for n in NOISE if n != {}])
    elif choice == 2:
        d.setdefault("args", {})[rng.choice(["subject", "captures", "mode", "zzz"])] = rng.choice(
            [n for n in NOISE if n is not None]
        )
    elif choice == 3:
        d[rng.choice(["verb", "payload", "ARGS"])] = rng.choice(NOISE)
    else:
        d.pop("cmd")
    return d


def payloads(seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            yield rng.randbytes(rng.randrange(0, 200))
        elif kind == 1:
            text = json.dumps(mutate(rng, rng.choice(VALID)))
            cut = rng.randrange(len(text))
            yield (text[:cut] + text[cut + 1 :]).encode()  # one character gone
        elif kind == 2:
            yield json.dumps(mutate(rng, rng.choice(VALID))).encode()
        else:
            yield json.dumps(rng.choice(NOISE)).encode()


def is_valid(payload: bytes) -> bool:
    """True where the mutation happened to leave a request the daemon would carry out."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(doc, dict):
        return False
    rid = doc.pop("id", None)
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, str | int)):
        return False
    if doc.get("args") == {}:
        doc.pop("args")
    return any(doc == {k: v for k, v in x.items() if k != "id"} for x in VALID)


def test_thousands_of_malformed_commands():
    d = Dispatcher(ctx=None, max_payload=256)  # type: ignore[arg-type]
    codes: dict[str, int] = {}
    n = 0
    for p in payloads(seed=7, n=5000):
        if is_valid(p):
            continue
        r = d(p)
        n += 1
        assert r["ok"] is False, (p, r)
        assert r["error"]["code"] != "internal", (p, r)  # no handler was reached by bad input
        json.dumps(r)
        codes[r["error"]["code"]] = codes.get(r["error"]["code"], 0) + 1
    assert n > 4500
    # the generator exercises every layer of validation, not just the JSON parser
    assert {"bad_json", "bad_request", "unknown_command", "invalid_args", "too_large"} <= set(codes)
    assert set(REGISTRY) >= {"enroll", "revoke", "mode"}
