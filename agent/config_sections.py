"""The config's sections: one typed model each, and the checks within a section.

Each key's type, range and default are here (firmware_config/default.yaml explains them);
:mod:`agent.config` reads a file into :class:`Config` and words a failure as one line naming the
key. A time setting is declared with :func:`duration`, which bounds it and names its unit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError

_ID = r"^[A-Za-z0-9_-]{1,64}$"

logger = logging.getLogger(__name__)


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


def plain(number: float) -> str:
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
                "first": plain(first),
                "most": plain(most),
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
    # seconds after a press in which further presses are a bouncing contact, not a new press
    debounce: float = duration(0.2, "s", 5, ge=0)

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
