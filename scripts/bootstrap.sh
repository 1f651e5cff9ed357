#!/usr/bin/env bash
# Create (or update) .venv with everything the tests, the training and the demo need.
# Idempotent: a second run only checks (pip runs again only when the venv's Python, the
# constraints, the package metadata or this script changed: offline, a re-run still works; delete
# .venv/.bootstrap-stamp to force it). Installs mosquitto with apt-get when it is missing
# and we are allowed to (root, or passwordless sudo); where we are not, it says so and goes on:
# the demo then runs the pure-Python amqtt broker from .venv, the MQTT tests need mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    if ! { $SUDO apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"; }; then
        echo "bootstrap: could not install ${need_apt[*]} (needs root or passwordless sudo):" \
            "the demo will use the amqtt broker; the tests need them installed" >&2
    fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# what the installs below depend on; the package's own code is installed editable
stamp="$(.venv/bin/python -c 'import sys; print(sys.version)' |
    cat - constraints.txt pyproject.toml setup.cfg setup.py scripts/bootstrap.sh | sha256sum)"
if [ "$(cat .venv/.bootstrap-stamp 2>/dev/null)" != "$stamp" ] ||
    ! .venv/bin/python -I -c 'import torch, onnxruntime, agent, export' 2>/dev/null; then
    rm -f .venv/.bootstrap-stamp
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first, pinned, so that nothing later pulls a CUDA build in its place
    .venv/bin/python -m pip install -q -c constraints.txt torch
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[train,tflite,onnx,dev]"
    echo "$stamp" > .venv/.bootstrap-stamp
fi
echo "bootstrap: .venv ready ($(.venv/bin/python -c 'import torch, onnxruntime; print("torch", torch.__version__, "onnxruntime", onnxruntime.__version__)'))"
