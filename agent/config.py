"""The daemon's configuration: typed models, validated once at start.

A device that starts half-configured fails later and far from the cause, so every key is checked
here: an unknown key, a wrong type, a missing referenced file or an unset ``${PALM_*}`` variable
is one :class:`ConfigError` whose message names the key path (``mqtt.port: ...``). Secrets are
:class:`pydantic.SecretStr` so that they never reach a log line or a repr.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ID = r"^[A-Za-z0-9_-]{1,64}$"

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem, named by its key path, that stops the daemon from starting."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def duration(
    default: Any, unit: str, most: float, *, gt: float | None = None, ge: float | None = None
) -> Any:
    """A time setting in ``unit`` (s, ms or us), at most ``most``: without an upper bound a value
    written in milliseconds where seconds are meant (``trigger.cooldown: 1000``) loaded, and the
    device waited 16 minutes between captures. ``most`` is more than a deployment needs, so a
    value over it is a wrong unit or a typo; the error names the bound and the unit."""
    return Field(default, gt=gt, ge=ge, le=most, json_schema_extra={"unit": unit})


def _plain(number: float) -> str:
    """A number as a user writes it: 60, not 60.0."""
    return str(int(number)) if float(number).is_integer() else str(number)


def _in_order(model: BaseModel, low: str, high: str, what: str) -> None:
    """Refuses a back-off whose first wait (``low``) is longer than its cap (``high``): it waited
    the long time once and the short one ever after, the reverse of what was meant."""
    first, most = getattr(model, low), getattr(model, high)
    if first > most:
        raise PydanticCustomError(
            "inverted_pair",
            "{first} s is over {high} ({most} s): {what} starts at {low} and doubles up to "
            "{high}; lower {low} or raise {high}",
            {
                "key": low,
                "first": _plain(first),
                "most": _plain(most),
                "low": low,
                "high": high,
                "what": what,
            },
        )


class DeviceConfig(_Model):
    id: str = Field("palm-01", pattern=_ID)
    name: str = "Palm reader"


class HomeAssistantConfig(_Model):
    enabled: bool = False
    discovery_prefix: str = "homeassistant"


class MqttConfig(_Model):
    host: str = "localhost"
    port: int = Field(8883, ge=1, le=65535)
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    topic_prefix: str = Field("palm", pattern=r"^[^#+\s]+$")
    client_id: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    tls: bool = True
    tls_ca_certs: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_insecure: bool = False
    keepalive: int = duration(30, "s", 3600, ge=5)
    qos: Literal[0, 1] = 1
    stats_interval: float = duration(30.0, "s", 3600, gt=0)
    decision_expiry: int = duration(3600, "s", 86400, ge=1)
    reconnect_min: float = duration(1.0, "s", 60, gt=0)
    reconnect_max: float = duration(60.0, "s", 600, gt=0)
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        if (self.tls_client_cert is None) != (self.tls_client_key is None):
            raise ValueError("tls_client_cert and tls_client_key go together")
        return self

    @model_validator(mode="after")
    def _back_off_in_order(self) -> MqttConfig:
        _in_order(self, "reconnect_min", "reconnect_max", "the broker's reconnect back-off")
        return self

    def secret(self) -> str | None:
        """The broker password, read from its file at connect time so a rotated file is used."""
        if self.password_file is not None:
            return Path(self.password_file).read_text(encoding="utf-8").strip()
        return self.password.get_secret_value() if self.password is not None else None


class OutboxConfig(_Model):
    path: str = "/var/lib/palm-agent/outbox.sqlite"
    max_messages: int = Field(10000, ge=1)
    flush_timeout: float = duration(5.0, "s", 60, ge=0)


class CommandsConfig(_Model):
    max_payload: int = Field(4096, ge=64, le=1 << 20)


class BundleConfig(_Model):
    path: str = "/var/lib/palm-agent/bundle"
    public_key: str | None = None
    runtime: Literal["onnx", "tflite"] = "onnx"
    precision: Literal["fp32", "int8"] = "fp32"
    threads: int = Field(2, ge=1, le=64)
    # two-model modes (multi, cross, centroid): run a capture's print and vein models at once,
    # each on half of ``threads``, rather than one after the other on all of them
    concurrent: bool = True
    # onnxruntime's graph optimisations: "all" includes the layout pass that keeps a reordered
    # copy of fp32 weights (fastest); "extended" skips it, for a device short of memory
    # (docs/dataflow.md: a res18 fp32 model 112 instead of 204-211 MB, 20-25% slower)
    onnx_optimization: Literal["all", "extended"] = "all"


class StoreConfig(_Model):
    path: str = "/var/lib/palm-agent/templates.sqlite"
    key_path: str = "/var/lib/palm-agent/device.key"


class AgreementConfig(_Model):
    k: int = Field(1, ge=1)
    n: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _k_le_n(self) -> AgreementConfig:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        return self


class MatchConfig(_Model):
    mode: Literal["print", "vein", "multi", "cross", "centroid"] = "multi"
    identify: bool = True
    subject: str | None = None
    fmr: Literal["0.01", "0.001", "0.0001", "eer"] = "0.001"
    threshold: int | None = Field(None, ge=0)
    fusion: Literal["mean", "both"] = "mean"
    agreement: AgreementConfig = AgreementConfig()

    @model_validator(mode="after")
    def _verify_needs_subject(self) -> MatchConfig:
        if not self.identify and self.subject is None:
            raise ValueError("1:1 verification (identify: false) needs a subject")
        return self


class IlluminationConfig(_Model):
    print_pin: int | None = 17
    vein_pin: int | None = 27
    settle_ms: int = duration(50, "ms", 1000, ge=0)
    active_high: bool = True


_Gain = Annotated[float, Field(ge=0.0, le=32.0)]  # libcamera's range for a colour gain
# frames a read may drop after a switch of exposure or gain until its metadata shows them
# (libcamera delays a sensor control by two or three frames; agent.capture.picamera2_source)
CONTROL_SETTLE_FRAMES = 6


class LightControls(_Model):
    """One light's fixed exposure and gain, under libcamera's own control names so that
    picamera2's documentation reads the same. Auto exposure brightens the dark vein frame until
    the veins fade; a small set that the daemon checks, rather than any control passed through
    to fail in the driver at the first switch."""

    AeEnable: bool | None = None
    ExposureTime: int | None = duration(None, "us", 1_000_000, gt=0)  # at most 1 s
    AnalogueGain: float | None = Field(None, ge=1.0)
    # (red, blue): the pipeline reads the luminance, which white balance moves as it adapts to
    # white or 850 nm light; fixed gains keep a modality's frames alike
    ColourGains: tuple[_Gain, _Gain] | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in cls.model_fields)
            if unknown:
                raise ValueError(
                    f"unknown camera control {', '.join(unknown)}; the ones accepted: "
                    "AeEnable (true/false), ExposureTime (microseconds, integer 1-1000000), "
                    "AnalogueGain (>= 1.0), ColourGains ([red, blue])"
                )
            gains = data.get("ColourGains")
            if isinstance(gains, list):  # YAML has no tuple
                data = {**data, "ColourGains": tuple(gains)}
        return data

    def libcamera(self) -> dict[str, Any]:
        """The controls set, as picamera2's ``set_controls`` takes them."""
        return self.model_dump(exclude_none=True)


class CameraControls(_Model):
    print: LightControls = LightControls()
    vein: LightControls = LightControls()

    def libcamera(self) -> dict[str, dict[str, Any]]:
        return {"print": self.print.libcamera(), "vein": self.vein.libcamera()}


class CameraConfig(_Model):
    source: Literal["replay", "opencv", "picamera2"] = "opencv"
    layout: Literal["switched", "dual", "print", "vein"] = "switched"
    device: str = "/dev/video0"
    vein_device: str | None = None
    camera_num: int = Field(0, ge=0)
    vein_camera_num: int = Field(1, ge=0)
    format: Literal["YUV420", "RGB888", "BGR888"] = "YUV420"
    replay_path: str | None = None
    vein_replay_path: str | None = None
    loop: bool = False
    replay_cache_mb: float = Field(64.0, ge=0)
    width: int = Field(640, ge=16)
    height: int = Field(480, ge=16)
    fps: float = Field(15.0, gt=0)
    read_timeout: float = duration(1.0, "s", 10, gt=0)
    illumination: IlluminationConfig = IlluminationConfig()
    controls: CameraControls = CameraControls()
    reopen_min: float = duration(0.5, "s", 60, gt=0)
    reopen_max: float = duration(30.0, "s", 600, gt=0)

    @property
    def modalities(self) -> tuple[str, ...]:
        """What a capture of this layout gives: both under switched light or two cameras."""
        return ("print", "vein") if self.layout in ("switched", "dual") else (self.layout,)

    @model_validator(mode="after")
    def _complete(self) -> CameraConfig:
        if self.source == "replay" and self.replay_path is None:
            raise ValueError("source 'replay' needs replay_path")
        if self.layout == "dual" and self.source == "replay" and self.vein_replay_path is None:
            raise ValueError("layout 'dual' with source 'replay' needs vein_replay_path")
        if self.layout == "dual" and self.source == "opencv" and self.vein_device is None:
            raise ValueError("layout 'dual' with source 'opencv' needs vein_device")
        light = self.illumination
        if self.layout == "switched" and (light.print_pin is None or light.vein_pin is None):
            raise ValueError("layout 'switched' needs illumination.print_pin and vein_pin")
        if self.read_timeout <= 1 / self.fps:
            # every wait for the next frame would time out, and three in a row count as a
            # failed camera (closed and reopened)
            raise ValueError(
                f"read_timeout {self.read_timeout} s is not longer than a frame at {self.fps} "
                f"fps ({1 / self.fps:.3g} s): raise read_timeout or fps"
            )
        self._check_controls()
        return self

    @model_validator(mode="after")
    def _back_off_in_order(self) -> CameraConfig:
        _in_order(self, "reopen_min", "reopen_max", "the camera's reopen back-off")
        return self

    def _check_controls(self) -> None:
        lights = self.controls.libcamera()
        if self.source == "opencv" and any(lights.values()):
            # OpenCV's CAP_PROP_EXPOSURE / CAP_PROP_GAIN take each driver's own units (V4L2:
            # 100 us steps on a UVC camera, other scales elsewhere): a value in microseconds
            # would be something else on every camera, and ignoring it would leave auto
            # exposure on while the config says otherwise
            raise ValueError(
                "camera.controls are applied through source picamera2 only; for a V4L2 camera "
                "fix exposure and gain with v4l2-ctl (docs/deploy-pi.md#exposure-and-gain) and "
                "leave camera.controls empty"
            )
        if self.layout == "switched" and lights["print"].keys() != lights["vein"].keys():
            raise ValueError(
                f"camera.controls: print sets {sorted(lights['print']) or 'none'} and vein sets "
                f"{sorted(lights['vein']) or 'none'}; one camera keeps a control one light set "
                "when the other light comes on, so set the same controls for both"
            )
        if self.layout == "switched" and any(lights.values()):
            # a read after a switch takes the frames libcamera needs to apply the new controls
            # (at most CONTROL_SETTLE_FRAMES dropped) and the frame itself: a timeout shorter
            # than that failed every switch, and three in a row closed the camera
            need = (CONTROL_SETTLE_FRAMES + 1) / self.fps
            if self.read_timeout <= need:
                raise ValueError(
                    f"read_timeout {self.read_timeout} s is too short for camera.controls at "
                    f"{self.fps} fps: a light switch may wait {CONTROL_SETTLE_FRAMES + 1} frames "
                    f"({need:.3g} s) for its controls; raise read_timeout or fps"
                )
        frame_us = 1e6 / self.fps
        for light, controls in lights.items():
            exposure = controls.get("ExposureTime")
            if exposure is not None and exposure > frame_us:
                logger.warning(
                    "config exposure_longer_than_frame key=camera.controls.%s.ExposureTime "
                    "exposure_us=%d frame_us=%.0f fps=%g hint=%s",
                    light, exposure, frame_us, self.fps,
                    "the camera shortens the exposure to the frame or lowers the frame rate; "
                    "lower ExposureTime or camera.fps",
                )  # fmt: skip


class RoiSettings(_Model):
    already_roi: bool = False
    mirror_left: bool = False
    min_hand_frac: float = Field(0.03, gt=0, lt=1)
    # one search per capture, its square cut from every modality's frame; None: only when one
    # sensor takes both (camera layout "switched"), where the hand cannot move between frames
    shared: bool | None = None


class QualityConfig(_Model):
    min_frame_p99: float = 40.0
    min_roi_side_px: float = Field(48.0, ge=1)
    min_roi_mean: float = Field(50.0, ge=0, le=255)
    max_roi_mean: float = Field(235.0, ge=0, le=255)
    saturation_level: int = Field(250, ge=1, le=255)
    max_saturated_frac: float = Field(0.05, ge=0, le=1)
    min_laplacian_var: float = Field(6.0, ge=0)


class TriggerConfig(_Model):
    kind: Literal["presence", "button", "command"] = "presence"
    button_pin: int | None = None
    cooldown: float = duration(1.0, "s", 60, ge=0)

    @model_validator(mode="after")
    def _button_needs_pin(self) -> TriggerConfig:
        if self.kind == "button" and self.button_pin is None:
            raise ValueError("trigger 'button' needs button_pin")
        return self


class EnrollConfig(_Model):
    captures: int = Field(5, ge=1, le=50)
    max_spread: int = Field(6, ge=0)
    timeout: float = duration(30.0, "s", 600, gt=0)


class LedConfig(_Model):
    granted_pin: int | None = None
    denied_pin: int | None = None


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def mode_lacks(mode: str, gives: tuple[str, ...]) -> list[str]:
    """The modalities ``mode`` needs that a camera giving ``gives`` lacks: multi needs both,
    print and vein their own; cross and centroid work from either."""
    needs = {"multi": ("print", "vein"), "print": ("print",), "vein": ("vein",)}.get(mode, ())
    return [m for m in needs if m not in gives]


class Config(_Model):
    device: DeviceConfig = DeviceConfig()
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    commands: CommandsConfig = CommandsConfig()
    bundle: BundleConfig = BundleConfig()
    store: StoreConfig = StoreConfig()
    match: MatchConfig = MatchConfig()
    camera: CameraConfig = CameraConfig()
    roi: RoiSettings = RoiSettings()
    quality: QualityConfig = QualityConfig()
    trigger: TriggerConfig = TriggerConfig()
    enroll: EnrollConfig = EnrollConfig()
    leds: LedConfig = LedConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _camera_serves_mode(self) -> Config:
        layout, mode = self.camera.layout, self.match.mode
        lacks = mode_lacks(mode, self.camera.modalities)
        if lacks:
            raise ValueError(
                f"match.mode {mode!r} needs {' and '.join(lacks)} frames, which camera.layout "
                f"{layout!r} does not give: use layout switched or dual, or mode {layout}, "
                "cross or centroid"
            )
        return self


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
        bound = _plain(err["ctx"]["le"])
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
