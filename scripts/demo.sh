#!/usr/bin/env bash
# The main job end to end on this machine: environment, synthetic palms, training on the CPU,
# evaluation, an int8 bundle, a private mosquitto, the daemon on replayed frames, enrollment and
# decisions over MQTT, and a summary. Artefacts go to runs/demo/ (a second run reuses them).
#   ./scripts/demo.sh                 # ~12 minutes on 2 cores
#   ./scripts/demo.sh --fresh         # regenerate, retrain, re-export
#   ./scripts/demo.sh --help          # every option (ids, minutes, runtime, mode, ...)
# PALM_SKIP_BOOTSTRAP=1 skips the environment step when .venv is known to be ready.
set -euo pipefail
cd "$(dirname "$0")/.."
# the options first, with the system Python: --help or a typo must not wait for the environment
"${PYTHON:-python3}" -m export.demo.args "$@" || exit $?
for arg in "$@"; do
    case "$arg" in -h | --help) exit 0 ;; esac
done
if [ "${PALM_SKIP_BOOTSTRAP:-0}" != 1 ]; then
    echo "=== [0/7] environment (scripts/bootstrap.sh) ==="
    bash scripts/bootstrap.sh
fi
exec .venv/bin/python -m export.demo "$@"
