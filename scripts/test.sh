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
# The STOMP browser test runs stomp.js from RabbitMQ's web-STOMP examples plugin (it
# skips without it).  Without an installed rabbitmq-server, take the file out of the
# Debian package: downloaded and unpacked into a cache, never installed (no service,
# no Erlang), and handed to the test in BAEDAL_STOMP_JS.
STOMP_JS_INSTALLED=/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_web_stomp_examples-*/priv/stomp.js
if [ -z "${BAEDAL_STOMP_JS:-}" ] && ! compgen -G "$STOMP_JS_INSTALLED" >/dev/null; then
  stomp_cache=${XDG_CACHE_HOME:-$HOME/.cache}/baedal/rabbitmq-server
  find_stomp_js() {
    { find "$stomp_cache/extracted" -path '*/rabbitmq_web_stomp_examples-*/priv/stomp.js' 2>/dev/null || true; } | sort | tail -n 1
  }
  stomp_js=$(find_stomp_js)
  if [ -z "$stomp_js" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 \
      && [ "$(id -u)" = 0 ] && [ -z "${BAEDAL_NO_APT:-}" ]; then
    mkdir -p "$stomp_cache"
    (cd "$stomp_cache" && rm -rf rabbitmq-server_*.deb extracted && apt-get update -qq \
      && apt-get download -qq rabbitmq-server && dpkg-deb -x rabbitmq-server_*.deb extracted) \
      || echo "warning: could not fetch stomp.js from rabbitmq-server; the STOMP browser test will be skipped" >&2
    stomp_js=$(find_stomp_js)
  fi
  if [ -n "$stomp_js" ]; then
    export BAEDAL_STOMP_JS="$stomp_js"
  fi
fi
mkdir -p test-artifacts
.venv/bin/ruff check src tests bench
# The stream and queue-log read paths and the MQTT codec once more without the optional C speed-ups (baedal/_speedups,
# built by the editable install when a compiler is there): the pure-Python fallback
# must pass the same tests.
if [ $# -eq 0 ]; then
  BAEDAL_NO_SPEEDUPS=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/unit/test_stream_fast_paths.py tests/unit/storage tests/fuzz/test_stream_record_fuzz.py \
    tests/fuzz/test_queue_log_fuzz.py \
    tests/interop/test_streams.py tests/interop/test_stream_publish_paths.py \
    tests/unit/test_mqtt_fast_paths.py tests/fuzz/test_mqtt_codec_fuzz.py tests/interop/test_mqtt_paho.py
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
