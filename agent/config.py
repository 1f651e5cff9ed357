"""The daemon's configuration: read once at start, every failure one line naming the key.

A device that starts half-configured fails later and far from the cause, so every key is checked
here: an unknown key, a wrong type, a value out of range, a missing referenced file or an unset
``${PALM_*}`` variable is one :class:`ConfigError` whose message names the key path
(``mqtt.port: ...``). Secrets are :class:`pydantic.SecretStr` so that they never reach a log
line or a repr. The models themselves are in :mod:`agent.config_sections`; they are imported
from here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from agent.config_sections import (
    CONTROL_SETTLE_FRAMES,
    AgreementConfig,
    BundleConfig,
    CameraConfig,
    CameraControls,
    CommandsConfig,
    Config,
    DeviceConfig,
    EnrollConfig,
    HomeAssistantConfig,
    IlluminationConfig,
    LedConfig,
    LightControls,
    LoggingConfig,
    MatchConfig,
    MqttConfig,
    OutboxConfig,
    QualityConfig,
    RoiSettings,
    StoreConfig,
    TriggerConfig,
    duration,
    mode_lacks,
    plain,
)

__all__ = [
    "CONTROL_SETTLE_FRAMES",
    "AgreementConfig",
    "BundleConfig",
    "CameraConfig",
    "CameraControls",
    "CommandsConfig",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "EnrollConfig",
    "HomeAssistantConfig",
    "IlluminationConfig",
    "LedConfig",
    "LightControls",
    "LoggingConfig",
    "MatchConfig",
    "MqttConfig",
    "OutboxConfig",
    "QualityConfig",
    "RoiSettings",
    "StoreConfig",
    "TriggerConfig",
    "duration",
    "load_config",
    "mode_lacks",
    "parse_config",
    "redacted",
]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """A configuration problem, named by its key path, that stops the daemon from starting."""


# keys whose value names a file that must exist when the daemon starts
_MUST_EXIST = (
    ("mqtt", "password_file"),
    ("mqtt", "tls_ca_certs"),
    ("mqtt", "tls_client_cert"),
    ("mqtt", "tls_client_key"),
    ("bundle", "public_key"),
)


# keys whose value names a file or folder the daemon keeps or reads: a relative one was taken
# from the working directory, which for the service is /run/palm-agent, emptied at every stop (a
# store, key and outbox there were lost, and a fresh empty store with a new key made, at each
# restart), and for a command by hand whatever folder it was started in
_ABSOLUTE = (
    ("store", "path"),
    ("store", "key_path"),
    ("outbox", "path"),
    ("bundle", "path"),
    *_MUST_EXIST,
)


def _substitute(node: Any, path: str, env: dict[str, str], unused: tuple[str, ...] = ()) -> Any:
    """Replace ``${PALM_*}`` references in string values; an unset or foreign name is an error,
    except that an unset one is left as written in the sections ``unused`` (a command that never
    uses them: ``palm-agent enroll`` and the broker's password)."""
    if isinstance(node, dict):
        return {
            k: _substitute(v, f"{path}.{k}" if path else str(k), env, unused)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", env, unused) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if not name.startswith("PALM_"):
            raise ConfigError(f"{path}: only ${{PALM_*}} variables may be referenced, not {name}")
        if name not in env:
            if path.split(".")[0] in unused:
                return m.group(0)
            raise ConfigError(
                f"{path}: environment variable {name} is not set (the service gets it from an "
                "EnvironmentFile= in a drop-in: docs/deploy-pi.md#secrets-and-tls)"
            )
        return env[name]

    return _ENV_REF.sub(repl, node)


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against firmware_config/default.yaml)"
    if err["type"] == "inverted_pair":
        return f"{key}.{err['ctx']['key']}: {err['msg']}"
    field = _field(err["loc"])
    unit = (field.json_schema_extra or {}).get("unit") if field is not None else None
    if err["type"] == "less_than_equal" and isinstance(unit, str):
        bound = plain(err["ctx"]["le"])
        return f"{key}: {err['input']} is over {bound} {unit}{_hint(field, err)}"
    given = _masked(err.get("input"))
    shown = "" if err["type"] == "missing" or "password" in key else f" (got {given!r})"
    if _unquoted(err):
        # "Input should be '0.01', '0.001' ... (got 0.001)": YAML reads 0.001 and 5 as numbers
        shown += f'; YAML reads it as a number: quote it, {key.split(".")[-1]}: "{given}"'
    return f"{key}: {err['msg']}{shown}"


def _field(loc: tuple[int | str, ...]) -> FieldInfo | None:
    """The field an error's key path names, if it is one of the models' own."""
    model: Any = Config
    field = None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
    return field


def _hint(field: FieldInfo, err: dict[str, Any]) -> str:
    """For a setting in seconds over its bound, the value it would be if it was written in
    milliseconds, where that is a value the setting takes."""
    given = err["input"]
    if field.json_schema_extra != {"unit": "s"}:
        return ""
    if field.annotation is int:
        if given % 1000:
            return ""
        meant = given // 1000
    else:
        meant = given / 1000
    for c in field.metadata:
        if (
            (isinstance(c, Gt) and not meant > c.gt)
            or (isinstance(c, Ge) and not meant >= c.ge)
            or (isinstance(c, Le) and not meant <= c.le)
        ):
            return ""
    return f"; times are in seconds: did you mean {meant}?"


def _unquoted(err: dict[str, Any]) -> bool:
    """Whether a choice among strings was given as the number one of them spells."""
    given = err.get("input")
    if err["type"] != "literal_error" or isinstance(given, bool):
        return False
    return isinstance(given, (int, float)) and repr(str(given)) in err["ctx"]["expected"]


def _masked(value: Any) -> Any:
    """``value`` with every password's value hidden: a check across a whole section (the TLS
    pair, password or password_file) reports the section it was given."""
    if isinstance(value, dict):
        return {k: "***" if "password" in str(k) else _masked(v) for k, v in value.items()}
    return value


def parse_config(
    data: Any,
    env: dict[str, str] | None = None,
    check_files: bool = True,
    unused: tuple[str, ...] = (),
) -> Config:
    """A mapping (as read from YAML) -> :class:`Config`, or one :class:`ConfigError`.

    ``unused``: sections the caller will not use (``("mqtt",)`` for ``palm-agent enroll``): they
    are still checked for unknown keys and types, but an unset ``${PALM_*}`` variable or a
    missing file there is not an error.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"(top level): expected a mapping of sections, got {type(data).__name__}")
    data = _substitute(data, "", dict(os.environ) if env is None else env, unused)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err) for err in e.errors()]
        raise ConfigError("; ".join(lines)) from None
    for section, key in _ABSOLUTE:
        value = getattr(getattr(cfg, section), key)
        if value is not None and section not in unused and not Path(value).is_absolute():
            raise ConfigError(
                f"{section}.{key}: {value!r} is a relative path; give the absolute one (such as "
                f"{_example(cfg, section, key)}): the service runs in /run/palm-agent, which is "
                "emptied at every stop, and a command by hand in the folder it was started from"
            )
    # one file for two of them: the outbox's tables were made inside the template store, and
    # a key file that was the store was told to chmod 600, then found to hold the wrong size
    seen: dict[str, str] = {}
    for section, key in (("store", "path"), ("store", "key_path"), ("outbox", "path")):
        path = os.path.normpath(getattr(getattr(cfg, section), key))
        if path in seen:
            raise ConfigError(
                f"{section}.{key}: {path} is also {seen[path]}; each needs a file of its own "
                "(the defaults: /var/lib/palm-agent/templates.sqlite, device.key, outbox.sqlite)"
            )
        seen[path] = f"{section}.{key}"
    if check_files:
        for section, key in _MUST_EXIST:
            value = getattr(getattr(cfg, section), key)
            if value is not None and section not in unused:
                _check_readable(f"{section}.{key}", Path(value))
    return cfg


def _example(cfg: Config, section: str, key: str) -> str:
    """An absolute path for ``section.key``: its default, or the file's name in the config's
    folder."""
    default = getattr(Config.model_fields[section].default, key)
    given = getattr(getattr(cfg, section), key)
    return default if default is not None else f"/etc/palm-agent/{Path(given).name}"


def _check_readable(key: str, path: Path) -> None:
    """A file the daemon reads later (the TLS files at connect time): found unreadable there, it
    stopped the daemon with a bare PermissionError after the models had loaded."""
    if not path.exists():
        raise ConfigError(f"{key}: file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise ConfigError(
            f"{key}: file {path} cannot be read by this process (uid {os.geteuid()}): "
            f"{e.strerror}; the service runs as a dynamic user, so hand it a private file with "
            "LoadCredential= (docs/deploy-pi.md#secrets-and-tls)"
        ) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys: a second ``bundle:`` section pasted at the end of
    a profile silently replaced the profile's own (its runtime, precision and threads)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader reports an unhashable key itself
            if key in seen:
                raise ConfigError(
                    f"{key}: given twice, at lines {seen[key]} and {line}; merge the two into one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(
    path: str | Path,
    env: dict[str, str] | None = None,
    check_files: bool = True,
    unused: tuple[str, ...] = (),
) -> Config:
    """Read and validate a YAML config file; every failure is a :class:`ConfigError`."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist (pass --config FILE)")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a file (pass --config FILE)")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"config file {p} cannot be read by this process (uid {os.geteuid()}): {e.strerror}; "
            "the service runs as a dynamic user: the config must be readable by all (mode 0644), "
            "and so hold no secret"
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        # where and what, without PyYAML's quote of the line (it may hold a password)
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(
            str(part) for part in (getattr(e, "context", None), getattr(e, "problem", None)) if part
        )
        raise ConfigError(f"{p}: not valid YAML{where}: {what or type(e).__name__}") from None
    return parse_config(data, env=env, check_files=check_files, unused=unused)


def redacted(cfg: Config) -> dict[str, Any]:
    """The config as a dict safe to log: secrets stay masked."""
    return cfg.model_dump(mode="json")
