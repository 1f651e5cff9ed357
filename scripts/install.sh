#!/usr/bin/env bash
# Install palm-agent on a device: a venv, the config and the hardened systemd unit.
#
#   sudo scripts/install.sh [--profile raspberry-pi|jetson|default] [--prefix DIR]
#                           [--venv DIR] [--dry-run]
#
# --prefix DIR  install under DIR instead of / (packaging, tests); systemctl is not run
# --venv DIR    use an existing venv (it must provide bin/palm-agent) instead of creating one
# --dry-run     print what would be done and change nothing
# An existing agent.yaml is never overwritten.
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
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

PROFILE_FILE="$SRC/firmware_config/$PROFILE.yaml"
[[ -f "$PROFILE_FILE" ]] || { echo "install.sh: no profile $PROFILE_FILE" >&2; exit 2; }

case "$PROFILE" in
    raspberry-pi) EXTRAS="tflite,pi" ;;
    *) EXTRAS="onnx" ;;
esac

APP_DIR="/opt/palm-agent"
ETC_DIR="$PREFIX/etc/palm-agent"
UNIT_DIR="$PREFIX/etc/systemd/system"
[[ -n "$VENV" ]] || VENV="$PREFIX$APP_DIR/venv"
# the unit names the path the service will see (without the packaging prefix)
if [[ -n "$PREFIX" && "$VENV" == "$PREFIX"* ]]; then RUNTIME_VENV="${VENV#"$PREFIX"}"; else RUNTIME_VENV="$VENV"; fi

run() {
    echo "+ $*"
    if [[ $DRY -eq 0 ]]; then "$@"; fi
}

if [[ ! -x "$VENV/bin/palm-agent" ]]; then
    run python3 -m venv "$VENV"
    run "$VENV/bin/pip" install --quiet -c "$SRC/constraints.txt" "$SRC[$EXTRAS]"
fi

run install -d -m 0755 "$ETC_DIR" "$UNIT_DIR"
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

if [[ -z "$PREFIX" ]]; then
    run systemctl daemon-reload
    run systemctl enable palm-agent.service
    echo "edit /etc/palm-agent/agent.yaml, then: systemctl start palm-agent"
fi
