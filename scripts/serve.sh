#!/usr/bin/env bash
# Set up Baedal in a local virtual environment and start the broker.
#   ./scripts/serve.sh                  # amqp://guest:guest@127.0.0.1:5672/, data in ./baedal-data
#   ./scripts/serve.sh --port 5673      # any `baedal serve` flags
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q .
exec .venv/bin/baedal serve "$@"
