#!/usr/bin/env bash
# Install palm-agent on a device: a venv, the config and the hardened systemd unit.
#
#   sudo scripts/install.sh [--profile raspberry-pi|jetson|default] [--prefix DIR]
#                           [--venv DIR] [--dry-run]
#
# --prefix DIR  install under DIR instead of / (packaging, tests); systemctl and groupadd
#               are not run
# --venv DIR    use an existing venv (it must provide bin/palm-agent) instead of creating one
# --dry-run     print what would be done and change nothing
# An existing agent.yaml is never overwritten. Run again after `git pull` to upgrade: the venv
# it made gets this checkout again (a venv given with --venv is yours to upgrade).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=""
PROFILE="default"
VENV=""
DRY=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --profile) PROFILE="${2:?--profile needs a name}"; shift 2 ;;
        --venv) VENV="${2:?--venv needs a directory}"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;  # the comment above
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

[[ -z "$PREFIX" ]] || PREFIX="$(realpath -m -- "$PREFIX")"
PROFILE_FILE="$SRC/firmware_config/$PROFILE.yaml"
[[ -f "$PROFILE_FILE" ]] || { echo "install.sh: no profile $PROFILE_FILE" >&2; exit 2; }

VENV_ARGS=()
case "$PROFILE" in
    # picamera2 needs libcamera's Python bindings, which Raspberry Pi OS ships only as an apt
    # package (python3-picamera2, with python3-lgpio for gpiozero): the venv must see them
    raspberry-pi) EXTRAS="tflite,pi"; VENV_ARGS=(--system-site-packages) ;;
    *) EXTRAS="onnx" ;;
esac

APP_DIR="/opt/palm-agent"
ETC_DIR="$PREFIX/etc/palm-agent"
UNIT_DIR="$PREFIX/etc/systemd/system"
OWN_VENV=0
if [[ -z "$VENV" ]]; then
    VENV="$PREFIX$APP_DIR/venv"
    OWN_VENV=1
fi
# ExecStart= must be an absolute path: a relative --venv made a unit systemd refuses to load
VENV="$(realpath -m -- "$VENV")"
# the unit names the path the service will see (without the packaging prefix)
if [[ -n "$PREFIX" && "$VENV" == "$PREFIX"* ]]; then RUNTIME_VENV="${VENV#"$PREFIX"}"; else RUNTIME_VENV="$VENV"; fi

run() {
    echo "+ $*"
    if [[ $DRY -eq 0 ]]; then "$@"; fi
}

# the venv this script made is brought to this checkout every time (an upgrade); it used to be
# left alone once bin/palm-agent existed, so a re-run after `git pull` kept the old code
if [[ $OWN_VENV -eq 1 || ! -x "$VENV/bin/palm-agent" ]]; then
    [[ -x "$VENV/bin/python" ]] || run python3 -m venv ${VENV_ARGS[@]+"${VENV_ARGS[@]}"} "$VENV"
    run "$VENV/bin/pip" install --quiet -c "$SRC/constraints.txt" "$SRC[$EXTRAS]"
fi

# the unit's SupplementaryGroups=: systemd refuses to start a service whose group is missing
# (status 216/GROUP); Raspberry Pi OS has both, a Jetson or a plain Debian may lack gpio
if [[ -z "$PREFIX" ]]; then
    for group in $(sed -n 's/^SupplementaryGroups=//p' "$SRC/systemd/palm-agent.service"); do
        getent group "$group" >/dev/null || run groupadd --system "$group"
    done
fi

run install -d -m 0755 "$ETC_DIR" "$UNIT_DIR" "$PREFIX/usr/local/bin"
# `palm-agent` on the PATH, as the docs type it (sudo palm-agent gallery ..., palm-agent enroll)
run ln -sfn "$RUNTIME_VENV/bin/palm-agent" "$PREFIX/usr/local/bin/palm-agent"
if [[ -e "$ETC_DIR/agent.yaml" ]]; then
    echo "keeping existing $ETC_DIR/agent.yaml"
else
    # world-readable: the service runs as a dynamic user, and the file holds no secret
    # (secrets go in an EnvironmentFile that systemd, as root, reads for the service)
    run install -m 0644 "$PROFILE_FILE" "$ETC_DIR/agent.yaml"
fi

UNIT="$UNIT_DIR/palm-agent.service"
echo "+ write $UNIT (ExecStart=$RUNTIME_VENV/bin/palm-agent)"
if [[ $DRY -eq 0 ]]; then
    sed "s#/opt/palm-agent/venv#$RUNTIME_VENV#g" "$SRC/systemd/palm-agent.service" > "$UNIT"
    chmod 0644 "$UNIT"
fi
# a profile's own drop-in (the Jetson's CSI cameras need nvargus-daemon's socket and devices)
if [[ -f "$SRC/systemd/$PROFILE.conf" ]]; then
    run install -D -m 0644 "$SRC/systemd/$PROFILE.conf" "$UNIT_DIR/palm-agent.service.d/$PROFILE.conf"
fi

if [[ -z "$PREFIX" ]]; then
    run systemctl daemon-reload
    run systemctl enable palm-agent.service
    if [[ $DRY -eq 0 ]] && systemctl is-active --quiet palm-agent.service; then
        echo "palm-agent is running the version it started with: systemctl restart palm-agent"
    else
        echo "edit /etc/palm-agent/agent.yaml and hand the service its broker password" \
            "(docs/deploy-pi.md#secrets-and-tls), then: systemctl start palm-agent"
    fi
fi
