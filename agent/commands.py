"""Remote commands: small handlers registered by name, each with a strict argument model.

A request is one JSON object ``{"cmd": "<verb>", "id": "<optional>", "args": {...}}``. Every
request gets exactly one reply document; anything malformed (not UTF-8, not JSON, not an object,
an unknown verb, wrong argument types, an oversize payload) is an error reply, never an exception,
so a hostile or buggy controller cannot stop the device. The handlers only validate and delegate
to a :class:`CommandContext` (the daemon), which owns the state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

REPLY_SCHEMA = 1
SUBJECT = r"^[A-Za-z0-9._@-]{1,64}$"


class CommandError(Exception):
    """A command that was well-formed but could not be carried out; the message is for the user."""


class DuplicateError(CommandError):
    """An enrollment refused because the palm matches an enrolled subject: its own error code,
    so that a UI can offer to send it again with ``allow_duplicate``."""


class ReloadRefused(CommandError):
    """A bundle a reload would not take (bad hashes or signature, other network weights than
    the templates', no model for the mode); the running one is kept."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"reload failed, keeping the current bundle: {reason}")


class CommandContext(Protocol):
    def enroll(
        self, subject: str, captures: int | None, allow_duplicate: bool
    ) -> dict[str, Any]: ...
    def revoke(self, subject: str) -> dict[str, Any]: ...
    def list_subjects(self) -> dict[str, Any]: ...
    def set_mode(
        self, mode: str | None, identify: bool | None, subject: str | None
    ) -> dict[str, Any]: ...
    def reload(self) -> dict[str, Any]: ...
    def capture(self) -> dict[str, Any]: ...
    def rekey(self) -> dict[str, Any]: ...


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoArgs(_Args):
    pass


class SubjectArgs(_Args):
    subject: str = Field(pattern=SUBJECT)


class EnrollArgs(SubjectArgs):
    captures: int | None = Field(None, ge=1, le=50)
    allow_duplicate: bool = False


class ModeArgs(_Args):
    mode: Literal["print", "vein", "multi", "cross", "centroid"] | None = None
    identify: bool | None = None
    subject: str | None = Field(None, pattern=SUBJECT)


Handler = Callable[[CommandContext, Any], dict[str, Any]]


@dataclass(frozen=True)
class Command:
    name: str
    args: type[_Args]
    handler: Handler


REGISTRY: dict[str, Command] = {}


def command(name: str, args: type[_Args] = NoArgs) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        REGISTRY[name] = Command(name, args, fn)
        return fn

    return register


@command("enroll", EnrollArgs)
def _enroll(ctx: CommandContext, a: EnrollArgs) -> dict[str, Any]:
    return ctx.enroll(a.subject, a.captures, a.allow_duplicate)


@command("revoke", SubjectArgs)
def _revoke(ctx: CommandContext, a: SubjectArgs) -> dict[str, Any]:
    return ctx.revoke(a.subject)


@command("list")
def _list(ctx: CommandContext, a: NoArgs) -> dict[str, Any]:
    return ctx.list_subjects()


@command("mode", ModeArgs)
def _mode(ctx: CommandContext, a: ModeArgs) -> dict[str, Any]:
    if a.mode is None and a.identify is None and a.subject is None:
        raise CommandError("mode needs at least one of: mode, identify, subject")
    return ctx.set_mode(a.mode, a.identify, a.subject)


@command("reload")
def _reload(ctx: CommandContext, a: NoArgs) -> dict[str, Any]:
    return ctx.reload()


@command("capture")
def _capture(ctx: CommandContext, a: NoArgs) -> dict[str, Any]:
    return ctx.capture()


@command("rekey")
def _rekey(ctx: CommandContext, a: NoArgs) -> dict[str, Any]:
    return ctx.rekey()


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "schema": REPLY_SCHEMA,
        "ok": False,
        **extra,
        "error": {"code": code, "message": message},
    }


class Dispatcher:
    """Payload bytes -> one reply document; the only entry point for remote commands."""

    def __init__(self, ctx: CommandContext, max_payload: int = 4096) -> None:
        self.ctx = ctx
        self.max_payload = max_payload

    def __call__(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.max_payload:
            return _error(
                "too_large", f"payload is {len(payload)} bytes; the limit is {self.max_payload}"
            )
        try:
            req = json.loads(payload.decode("utf-8"))
        except UnicodeDecodeError:
            return _error("bad_encoding", "payload is not UTF-8")
        except (ValueError, RecursionError) as e:
            return _error("bad_json", f"payload is not JSON: {str(e)[:120]}")
        if not isinstance(req, dict):
            return _error("bad_request", f"expected a JSON object, got {type(req).__name__}")
        rid = req.get("id")
        echo: dict[str, Any] = {}
        if isinstance(rid, str | int) and not isinstance(rid, bool) and len(str(rid)) <= 128:
            echo["id"] = rid
        elif rid is not None:
            return _error("bad_request", "id must be a string or integer of at most 128 characters")
        unknown = sorted(set(req) - {"cmd", "id", "args"})
        if unknown:
            return _error(
                "bad_request", f"unknown field(s): {', '.join(map(str, unknown))[:120]}", **echo
            )
        verb = req.get("cmd")
        if not isinstance(verb, str):
            return _error("bad_request", "cmd must be a string naming a command", **echo)
        cmd = REGISTRY.get(verb)
        if cmd is None:
            known = ", ".join(sorted(REGISTRY))
            return _error(
                "unknown_command", f"unknown command {verb[:40]!r}; known: {known}", **echo
            )
        echo["cmd"] = verb
        raw_args = req.get("args", {})
        if not isinstance(raw_args, dict):
            return _error("invalid_args", "args must be a JSON object", **echo)
        try:
            args = cmd.args.model_validate(raw_args)
        except ValidationError as e:
            detail = "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'args'}: {err['msg']}" for err in e.errors()
            )
            return _error("invalid_args", detail[:400], **echo)
        try:
            result = cmd.handler(self.ctx, args)
        except DuplicateError as e:
            return _error("duplicate", str(e), **echo)
        except CommandError as e:
            return _error("failed", str(e), **echo)
        except Exception as e:
            logger.exception("command failed cmd=%s", verb)
            return _error("internal", f"{type(e).__name__}: {str(e)[:200]}", **echo)
        logger.info("command done cmd=%s", verb)
        return {"schema": REPLY_SCHEMA, "ok": True, **echo, "result": result}
