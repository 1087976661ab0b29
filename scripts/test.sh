#!/usr/bin/env bash
# Set up everything the tests need, then run them.  Safe to run on a fresh machine:
#   ./scripts/test.sh            # the whole suite
#   ./scripts/test.sh tests/unit # any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# The console's browser tests drive Debian's Chromium (they skip without it).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -z "${BAEDAL_NO_APT:-}" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
# The Kafka interop tests also drive Debian's kcat (they skip without it).
if ! command -v kcat >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -z "${BAEDAL_NO_APT:-}" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null) \
    || echo "warning: could not install kcat; kcat tests will be skipped" >&2
fi
mkdir -p test-artifacts
.venv/bin/ruff check src tests bench
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
