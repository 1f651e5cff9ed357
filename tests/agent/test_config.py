"""Config loading: every failure is one ConfigError naming the key; secrets never leak."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import ConfigError, load_config, parse_config, redacted

from .conftest import unprivileged

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "firmware_config").glob("*.yaml"))


def write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profiles_load(profile):
    cfg = load_config(profile, env={"PALM_MQTT_PASSWORD": "x"}, check_files=False)
    assert cfg.mqtt.tls is True  # verification on by default in every shipped profile


def test_profiles_exist():
    assert {p.name for p in PROFILES} >= {"default.yaml", "raspberry-pi.yaml", "jetson.yaml"}


def test_default_profile_documents_every_key():
    from agent.config import Config

    text = (ROOT / "firmware_config" / "default.yaml").read_text()
    doc = yaml.safe_load(text)

    def keys(model, prefix=""):
        for name, f in model.model_fields.items():
            sub = f.annotation if isinstance(f.annotation, type) else None
            if sub is not None and hasattr(sub, "model_fields"):
                yield from keys(sub, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    for key in keys(Config):
        node = doc
        for part in key.split("."):
            assert part in node, f"default.yaml does not list {key}"
            node = node[part]


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"mqtt": {"prot": 1883}}, "mqtt.prot: unknown key"),
        ({"mqtt": {"port": "1883"}}, "mqtt.port:"),
        ({"mqtt": {"port": 70000}}, "mqtt.port:"),
        ({"match": {"mode": "palm"}}, "match.mode:"),
        ({"match": {"agreement": {"k": 3, "n": 2}}}, "match.agreement:"),
        ({"camera": {"source": "replay"}}, "camera:"),
        ({"devices": {}}, "devices: unknown key"),
        ({"mqtt": {"tls": "yes"}}, "mqtt.tls:"),
        ({"trigger": {"debounce": 5.5}}, "trigger.debounce:"),
        ({"trigger": {"debounce": -0.1}}, "trigger.debounce:"),
    ],
)
def test_errors_name_the_key(tmp_path, doc, key):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, doc), env={})
    assert str(e.value).startswith(key), str(e.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    doc = {"mqtt": {"tls_ca_certs": str(tmp_path / "ca.pem")}}
    with pytest.raises(ConfigError, match=r"^mqtt\.tls_ca_certs: file .* does not exist"):
        load_config(write(tmp_path, doc), env={})


def test_env_substitution_and_secrets_stay_secret(tmp_path, caplog):
    doc = {"mqtt": {"user": "dev1", "password": "${PALM_MQTT_PASSWORD}"}}
    cfg = load_config(write(tmp_path, doc), env={"PALM_MQTT_PASSWORD": "hunter2"})
    assert cfg.mqtt.secret() == "hunter2"
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(redacted(cfg))
    with pytest.raises(ConfigError, match=r"^mqtt\.password: environment variable PALM_MQTT"):
        load_config(write(tmp_path, doc), env={})
    with pytest.raises(ConfigError, match=r"^mqtt\.user: only \$\{PALM_\*\}"):
        parse_config({"mqtt": {"user": "${HOME}"}}, env={"HOME": "/root"})


def test_password_file_is_read_and_wrong_values_are_not_echoed(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = parse_config({"mqtt": {"password_file": str(pw)}})
    assert cfg.mqtt.secret() == "s3cret"
    with pytest.raises(ConfigError) as e:
        parse_config({"mqtt": {"password": 12345678}})
    assert "12345678" not in str(e.value)
    with pytest.raises(ConfigError, match="either password or password_file"):
        parse_config({"mqtt": {"password": "a", "password_file": str(pw)}})


@pytest.mark.parametrize(
    "mqtt_section",
    [
        {"user": "dev1", "password": "hunter2-SECRET", "tls_client_cert": "/etc/hosts"},
        {"password": "hunter2-SECRET", "password_file": "/etc/hosts"},
    ],
)
def test_a_check_across_the_section_does_not_echo_its_password(mqtt_section):
    with pytest.raises(ConfigError) as e:
        parse_config({"mqtt": mqtt_section}, env={}, check_files=False)
    assert "hunter2" not in str(e.value) and "mqtt" in str(e.value), e.value


def test_a_yaml_error_says_where_without_quoting_the_line(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text('mqtt:\n  user: dev1\n  password: "hunter2-SECRET\n  port: 8883\n')
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+") as e:
        load_config(path)
    assert "hunter2" not in str(e.value), e.value


@pytest.mark.parametrize(
    ("layout", "mode", "refused"),
    [("print", "multi", "needs vein frames"), ("vein", "print", "needs print frames"),
     ("print", "cross", None), ("vein", "centroid", None), ("switched", "multi", None)],
)  # fmt: skip
def test_a_mode_the_camera_cannot_feed_is_refused(layout, mode, refused):
    """Every capture of it would be dropped as a probe without the frames it needs."""
    doc = {"camera": {"layout": layout, "source": "replay", "replay_path": "x"},
           "match": {"mode": mode}}  # fmt: skip
    if layout == "switched":
        doc["camera"]["illumination"] = {"print_pin": 17, "vein_pin": 27}
    if refused is None:
        assert parse_config(doc, env={}, check_files=False).match.mode == mode
    else:
        with pytest.raises(ConfigError, match=refused):
            parse_config(doc, env={}, check_files=False)


def test_a_read_timeout_shorter_than_a_frame_is_refused():
    """Each wait for the next frame would time out, and three in a row reopen the camera: a
    replay at 0.25 fps with the 1 s default played its first image for ever."""
    doc = {"camera": {"layout": "print", "source": "replay", "replay_path": "x", "fps": 0.25},
           "match": {"mode": "print"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"read_timeout 1.0 s is not longer than a frame"):
        parse_config(doc, env={}, check_files=False)
    doc["camera"]["read_timeout"] = 5
    assert parse_config(doc, env={}, check_files=False).camera.fps == 0.25


PI_CAMERA = "camera:\n  source: picamera2\n  fps: 15\n  controls:\n"


@pytest.mark.parametrize(
    ("lights", "refused"),
    [
        ("    print: {Exposure: 8000}\n    vein: {Exposure: 8000}\n",
         "camera.controls.print: Value error, unknown camera control Exposure; the ones "
         "accepted: AeEnable (true/false), ExposureTime (microseconds, integer 1-1000000), "
         "AnalogueGain (>= 1.0), ColourGains ([red, blue])"),
        ("    print: {ExposureTime: 8000.5}\n    vein: {ExposureTime: 20000}\n",
         "camera.controls.print.ExposureTime: Input should be a valid integer"),
        ("    print: {ExposureTime: 0}\n    vein: {ExposureTime: 20000}\n",
         "camera.controls.print.ExposureTime: Input should be greater than 0"),
        ("    print: {AnalogueGain: 1.0}\n    vein: {AnalogueGain: 0.5}\n",
         "camera.controls.vein.AnalogueGain: Input should be greater than or equal to 1"),
        ("    print: {AeEnable: off}\n    vein: {AeEnable: 'no'}\n",
         "camera.controls.vein.AeEnable: Input should be a valid boolean"),
        ("    print: {ColourGains: [1.5]}\n    vein: {ColourGains: [1.5, 2]}\n",
         "camera.controls.print.ColourGains.1: Field required"),
        ("    print: {ExposureTime: 8000}\n",
         "print sets ['ExposureTime'] and vein sets none; one camera keeps"),
    ],
)  # fmt: skip
def test_a_bad_camera_control_is_refused_in_one_line(tmp_path, lights, refused):
    """A misspelt name would fail in the driver at the first switch, a wrong value would reach
    the sensor; both stop the config from loading, the accepted names listed."""
    path = tmp_path / "agent.yaml"
    path.write_text(PI_CAMERA + lights)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={}, check_files=False)
    assert refused in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_read_timeout_too_short_for_a_control_switch_is_refused(tmp_path):
    """A switch may drop up to 6 frames until libcamera applies the controls: at 5 fps that is
    1.4 s, and the default 1 s read_timeout failed every switch (three closed the camera)."""
    lights = "    print: {ExposureTime: 8000}\n    vein: {ExposureTime: 20000}\n"
    path = tmp_path / "agent.yaml"
    path.write_text(PI_CAMERA.replace("fps: 15", "fps: 5") + lights)
    with pytest.raises(ConfigError, match=r"read_timeout 1.0 s is too short .* \(1.4 s\)"):
        load_config(path, env={}, check_files=False)
    path.write_text(PI_CAMERA.replace("fps: 15", "fps: 5\n  read_timeout: 1.5") + lights)
    assert load_config(path, env={}, check_files=False).camera.read_timeout == 1.5


def test_camera_controls_reach_picamera2_as_libcamera_takes_them(tmp_path, caplog):
    lights = ("    print: {AeEnable: false, ExposureTime: 8000, AnalogueGain: 1, "
              "ColourGains: [1.5, 2]}\n"
              "    vein: {AeEnable: false, ExposureTime: 20000, AnalogueGain: 4.0, "
              "ColourGains: [1.0, 1.0]}\n")  # fmt: skip
    path = tmp_path / "agent.yaml"
    path.write_text(PI_CAMERA + lights)
    with caplog.at_level("WARNING"):
        cfg = load_config(path, env={}, check_files=False)
    assert cfg.camera.controls.libcamera() == {
        "print": {"AeEnable": False, "ExposureTime": 8000, "AnalogueGain": 1.0,
                  "ColourGains": (1.5, 2.0)},
        "vein": {"AeEnable": False, "ExposureTime": 20000, "AnalogueGain": 4.0,
                 "ColourGains": (1.0, 1.0)},
    }  # fmt: skip
    assert caplog.records == []


def test_an_exposure_longer_than_a_frame_is_warned_of(tmp_path, caplog):
    """At 15 fps a frame lasts 66667 us: an 80000 us exposure cannot be had at that rate."""
    path = tmp_path / "agent.yaml"
    path.write_text(
        PI_CAMERA + "    print: {ExposureTime: 8000}\n    vein: {ExposureTime: 80000}\n"
    )
    with caplog.at_level("WARNING", logger="agent.config_sections"):
        load_config(path, env={}, check_files=False)
    (record,) = caplog.records
    assert "exposure_longer_than_frame key=camera.controls.vein.ExposureTime" in record.message
    assert "exposure_us=80000 frame_us=66667 fps=15" in record.message


def test_an_opencv_camera_refuses_controls_it_cannot_apply_in_their_units():
    doc = {
        "camera": {
            "source": "opencv",
            "controls": {"print": {"ExposureTime": 8000}, "vein": {"ExposureTime": 20000}},
        }
    }
    with pytest.raises(ConfigError, match=r"applied through source picamera2 only; .* v4l2-ctl"):
        parse_config(doc, env={}, check_files=False)
    doc["camera"]["source"] = "picamera2"
    assert parse_config(doc, env={}, check_files=False).camera.controls.vein.ExposureTime == 20000


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """PyYAML keeps the last: a ``bundle:`` section pasted below a profile (as deploy-pi.md shows
    one) silently dropped the profile's own runtime, precision and threads."""
    path = tmp_path / "agent.yaml"
    path.write_text(
        "bundle:\n  runtime: tflite\n  threads: 4\nmqtt:\n  port: 8883\n"
        "bundle:\n  path: /opt/palm-agent/bundle.tar\n"
    )
    with pytest.raises(ConfigError, match=r"bundle: given twice, at lines 1 and 6"):
        load_config(path, env={})
    path.write_text("mqtt:\n  port: 8883\n  user: a\n  port: 1883\n")
    with pytest.raises(ConfigError, match=r"port: given twice, at lines 2 and 4"):
        load_config(path, env={})


def test_a_config_that_is_no_text_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"is not a file \(pass --config FILE\)"):
        load_config(tmp_path)
    path = tmp_path / "agent.yaml"
    path.write_bytes(b"\xff\xfemqtt: {}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text"):
        load_config(path)


def test_files_the_daemon_cannot_read_stop_it_at_start(tmp_path):
    """A TLS key that is root's alone passed the start check (it exists) and stopped the daemon
    at connect, after the models had loaded, with a bare PermissionError naming no file."""
    key = tmp_path / "device-tls.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nhunter2-SECRET\n")
    cert = tmp_path / "device.crt"
    cert.write_text("cert")
    key.chmod(0)
    cfg = write(tmp_path, {"mqtt": {"tls_client_cert": str(cert), "tls_client_key": str(key)}})
    out = unprivileged(
        "import sys\nfrom agent.config import ConfigError, load_config\n"
        f"try:\n    load_config({str(cfg)!r}, env={{}})\n"
        "except ConfigError as e:\n    sys.exit(str(e))\n"
    )
    said = out.stderr.strip()
    assert out.returncode == 1, said
    assert said.startswith(f"mqtt.tls_client_key: file {key} cannot be read"), said
    assert "LoadCredential=" in said and "hunter2" not in said

    cfg.chmod(0)
    out = unprivileged(
        "import sys\nfrom agent.config import ConfigError, load_config\n"
        f"try:\n    load_config({str(cfg)!r}, env={{}})\n"
        "except ConfigError as e:\n    sys.exit(str(e))\n"
    )
    assert out.returncode == 1 and out.stderr.startswith(f"config file {cfg} cannot be read")


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_profiles_hand_private_files_over_as_credentials(profile):
    """The service runs as a dynamic user: a private file it reads (the TLS key, a password file)
    is either root's alone, and unreadable to it, or readable by every local user. The Pi profile
    pointed tls_client_key at /etc/palm-agent/device.key."""
    cfg = load_config(profile, env={"PALM_MQTT_PASSWORD": "x"}, check_files=False)
    for key in ("tls_client_key", "password_file"):
        value = getattr(cfg.mqtt, key)
        assert value is None or value.startswith("/run/credentials/palm-agent.service/"), (
            key,
            value,
        )


@pytest.mark.parametrize(
    ("section", "key"),
    [("store", "path"), ("store", "key_path"), ("outbox", "path"), ("bundle", "path"),
     ("mqtt", "tls_ca_certs")],
)  # fmt: skip
def test_a_relative_path_is_refused_naming_the_key(tmp_path, monkeypatch, section, key):
    """A relative store path was taken from the working directory: the service's is
    /run/palm-agent, emptied at every stop, so each restart began an empty store under a new key
    (every enrollment gone), and a command by hand used a store of its own folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.crt").write_text("ca")  # found from here, as a command by hand finds it
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {section: {key: "ca.crt"}}), env={})
    said = str(e.value)
    assert said.startswith(f"{section}.{key}: 'ca.crt' is a relative path"), said
    assert "/run/palm-agent" in said


def test_a_relative_path_in_a_section_the_command_does_not_use_is_left_alone(tmp_path):
    """``palm-agent enroll`` never reads the broker's files, as it never reads their variables."""
    doc = {"mqtt": {"tls_ca_certs": "${PALM_CA}", "password_file": "broker.pw"}}
    cfg = load_config(write(tmp_path, doc), env={}, unused=("mqtt",))
    assert cfg.mqtt.password_file == "broker.pw"


@pytest.mark.parametrize(
    ("text", "said"),
    [("match:\n  fmr: 0.001\n", 'match.fmr: Input should be'),
     ("mqtt:\n  protocol: 5\n", "mqtt.protocol: Input should be")],
)  # fmt: skip
def test_a_choice_written_as_a_bare_number_is_told_to_quote_it(tmp_path, text, said):
    """``fmr: 0.001`` without quotes was refused as "should be '0.001' (got 0.001)", which
    reads as the value it asks for: YAML made the number, and the message now says so."""
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    key, value = text.split()[1:3]
    assert str(e.value).startswith(said), e.value
    assert str(e.value).endswith(f'quote it, {key} "{value}"'), e.value
    path.write_text(text.replace(value, f'"{value}"'))
    load_config(path, env={})


@pytest.mark.parametrize(("section", "key"), [("outbox", "path"), ("store", "key_path")])
def test_a_state_file_named_twice_is_refused(tmp_path, section, key):
    """An outbox path pasted from the store's line made the outbox's tables inside the template
    store; a key path that was the store's was told to chmod 600 the database."""
    store = "/var/lib/palm-agent/templates.sqlite"
    doc = {"store": {"path": store}}
    doc.setdefault(section, {})[key] = "/var/lib/palm-agent/./templates.sqlite"
    with pytest.raises(ConfigError) as e:
        parse_config(doc, env={}, check_files=False)
    assert str(e.value).startswith(f"{section}.{key}: {store} is also store.path"), e.value


# every time setting, a value over its bound (the default written in milliseconds where there is
# one) and what the refusal says after "KEY: VALUE "
OVER_BOUND = [
    ("mqtt.keepalive", 30000, "is over 3600 s; times are in seconds: did you mean 30?"),
    ("mqtt.stats_interval", 30000, "is over 3600 s; times are in seconds: did you mean 30.0?"),
    ("mqtt.decision_expiry", 3600000, "is over 86400 s; times are in seconds: did you mean 3600?"),
    ("mqtt.reconnect_min", 1000, "is over 60 s; times are in seconds: did you mean 1.0?"),
    ("mqtt.reconnect_max", 60000, "is over 600 s; times are in seconds: did you mean 60.0?"),
    ("outbox.flush_timeout", 5000, "is over 60 s; times are in seconds: did you mean 5.0?"),
    ("camera.read_timeout", 1000, "is over 10 s; times are in seconds: did you mean 1.0?"),
    ("camera.reopen_min", 500, "is over 60 s; times are in seconds: did you mean 0.5?"),
    ("camera.reopen_max", 30000, "is over 600 s; times are in seconds: did you mean 30.0?"),
    ("camera.illumination.settle_ms", 50000, "is over 1000 ms"),
    ("camera.controls.print.ExposureTime", 8000000, "is over 1000000 us"),
    ("camera.controls.vein.ExposureTime", 1000001, "is over 1000000 us"),
    ("trigger.cooldown", 1000, "is over 60 s; times are in seconds: did you mean 1.0?"),
    ("trigger.debounce", 200, "is over 5 s; times are in seconds: did you mean 0.2?"),
    ("enroll.timeout", 30000, "is over 600 s; times are in seconds: did you mean 30.0?"),
    # no hint where the value in milliseconds would be refused too
    ("mqtt.keepalive", 3601, "is over 3600 s"),
    ("mqtt.stats_interval", 7200000, "is over 3600 s"),
]


def _put(doc: dict, key: str, value) -> dict:
    """``doc`` with ``a.b.c: value`` set in its sections."""
    *parents, last = key.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return doc


def _nested(key: str, value) -> dict:
    """A config document setting ``key``; a camera control comes with the picamera2 source and
    a control for the other light, as a switched camera needs the same ones for both."""
    doc = _put({}, key, value)
    if ".controls." in key:
        doc["camera"]["source"] = "picamera2"
        for light in ("print", "vein"):
            _put(doc, f"camera.controls.{light}.ExposureTime", value if light in key else 8000)
    return doc


def _keys(model, prefix=""):
    for name, f in model.model_fields.items():
        if isinstance(f.annotation, type) and hasattr(f.annotation, "model_fields"):
            yield from _keys(f.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_time_setting_has_an_upper_bound():
    """A key named as a time (a timeout, interval, expiry, back-off, ``_ms``, ``Time``) is one
    in OVER_BOUND, with the bound it is refused over: one added without a bound fails here."""
    from agent.config import Config

    looks_like_time = re.compile(
        r"timeout|interval|expiry|cooldown|debounce|keepalive|_ms$|_min$|_max$|Time$"
    )
    times = {key for key in _keys(Config) if looks_like_time.search(key.split(".")[-1])}
    assert times == {key for key, _, _ in OVER_BOUND}


@pytest.mark.parametrize(
    ("key", "given", "said"), OVER_BOUND, ids=[f"{k}={v}" for k, v, _ in OVER_BOUND]
)
def test_a_time_over_its_bound_is_refused_in_one_line(tmp_path, key, given, said):
    """``trigger.cooldown: 1000`` (milliseconds where seconds are meant) loaded, and the device
    waited 16 minutes after each decision; the refusal names the key, the value, the bound and
    the unit, and what the value would be in seconds."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, _nested(key, given)), env={}, check_files=False)
    assert str(e.value) == f"{key}: {given} {said}"


def test_every_time_setting_takes_its_bound(tmp_path):
    bounds = {key: int(re.search(r"is over (\d+)", said)[1]) for key, _, said in OVER_BOUND}
    doc = {"camera": {"source": "picamera2"}}
    for key, bound in bounds.items():
        _put(doc, key, bound)
    cfg = load_config(write(tmp_path, doc), env={}, check_files=False)
    for key, bound in bounds.items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == bound, key


@pytest.mark.parametrize(
    ("section", "low", "high", "what"),
    [("mqtt", "reconnect_min", "reconnect_max", "the broker's reconnect back-off"),
     ("camera", "reopen_min", "reopen_max", "the camera's reopen back-off")],
)  # fmt: skip
def test_a_back_off_whose_minimum_is_over_its_maximum_is_refused(
    tmp_path, section, low, high, what
):
    """The first wait was then the longest, and every later one the maximum."""
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, {section: {low: 45, high: 2.5}}), env={}, check_files=False)
    assert str(e.value) == (
        f"{section}.{low}: 45 s is over {high} (2.5 s): {what} starts at {low} and doubles up to "
        f"{high}; lower {low} or raise {high}"
    )
    cfg = load_config(write(tmp_path, {section: {low: 45, high: 45}}), env={}, check_files=False)
    assert getattr(getattr(cfg, section), low) == getattr(getattr(cfg, section), high) == 45


@pytest.mark.parametrize("command", [["run"], ["enroll", "alice"]])
def test_the_cli_refuses_a_time_over_its_bound_with_one_line_and_status_2(tmp_path, command):
    cfg = write(tmp_path, {"trigger": {"cooldown": 1000}})
    out = subprocess.run(
        [sys.executable, "-m", "agent.cli", *command, "--config", str(cfg)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr == (
        "palm-agent: trigger.cooldown: 1000 is over 60 s; times are in seconds: did you mean 1.0?\n"
    )
    assert "Traceback" not in out.stderr + out.stdout
