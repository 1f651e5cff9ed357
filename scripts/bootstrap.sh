#!/usr/bin/env bash
# Create (or update) .venv with everything the tests, the training and the demo need.
# Idempotent: a second run only checks. Installs mosquitto with apt-get when it is missing
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
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned, so that nothing later pulls a CUDA build in its place
.venv/bin/python -m pip install -q -c constraints.txt torch
.venv/bin/python -m pip install -q -c constraints.txt -e ".[train,tflite,onnx,dev]"
echo "bootstrap: .venv ready ($(.venv/bin/python -c 'import torch, onnxruntime; print("torch", torch.__version__, "onnxruntime", onnxruntime.__version__)'))"
