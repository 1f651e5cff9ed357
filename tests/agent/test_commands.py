"""Command validation: every malformed request is one error reply with a named cause."""

from __future__ import annotations

import json

import pytest

from agent.commands import REGISTRY, Dispatcher


def reply(payload: bytes, max_payload: int = 4096) -> dict:
    # ctx=None: none of these requests may get as far as a handler
    return Dispatcher(ctx=None, max_payload=max_payload)(payload)  # type: ignore[arg-type]


def test_all_verbs_registered():
    assert set(REGISTRY) == {"enroll", "revoke", "list", "mode", "reload", "capture", "rekey"}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff\xfe", "bad_encoding"),
        (b"{not json", "bad_json"),
        (b"[" * 5000 + b"]" * 5000, "too_large"),
        (b"[1, 2]", "bad_request"),
        (b'"enroll"', "bad_request"),
        (b'{"cmd": 3}', "bad_request"),
        (b'{"cmd": "enroll", "extra": 1}', "bad_request"),
        (b'{"cmd": "enroll", "id": [1]}', "bad_request"),
        (b'{"cmd": "open_door"}', "unknown_command"),
        (b'{"cmd": "enroll"}', "invalid_args"),
        (b'{"cmd": "enroll", "args": {"subject": 5}}', "invalid_args"),
        (b'{"cmd": "enroll", "args": {"subject": "../etc"}}', "invalid_args"),
        (b'{"cmd": "enroll", "args": {"subject": "a", "captures": "5"}}', "invalid_args"),
        (b'{"cmd": "enroll", "args": {"subject": "a", "captures": 0}}', "invalid_args"),
        (b'{"cmd": "revoke", "args": []}', "invalid_args"),
        (b'{"cmd": "list", "args": {"all": true}}', "invalid_args"),
        (b'{"cmd": "mode", "args": {"mode": "palm"}}', "invalid_args"),
        (b'{"cmd": "mode", "args": {"identify": "yes"}}', "invalid_args"),
        (b'{"cmd": "mode", "args": {}}', "failed"),
    ],
)
def test_malformed_requests(payload, code):
    r = reply(payload)
    assert r["ok"] is False and r["error"]["code"] == code, r
    assert r["error"]["message"]
    json.dumps(r)  # every reply can be published as it is


def test_deep_nesting_within_the_size_limit_is_an_error_not_a_crash():
    r = reply(b"[" * 100_000 + b"]" * 100_000, max_payload=1 << 20)
    assert r["error"]["code"] == "bad_json"


def test_id_is_echoed_and_arguments_are_named():
    r = reply(b'{"cmd": "enroll", "id": "abc", "args": {"subject": 1}}')
    assert r["id"] == "abc" and r["cmd"] == "enroll"
    assert r["error"]["message"].startswith("subject:")
