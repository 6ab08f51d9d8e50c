#!/usr/bin/env bash
# Install everything cardpay and its tests need, from the package registries only; idempotent.
#   .venv/               Python 3.11 virtualenv with cardpay (editable) and the pinned dependencies
#   node_modules/        Anvil (@foundry-rs/anvil) and solc (solcjs), pinned by package-lock.json
#   ~/.cache/cardpay/    Apache Kafka broker jars, fetched with Maven (tools/kafka/pom.xml)
#   chromium             Debian's chromium and chromium-driver, for the finance page's browser test
#                        (apt-get, as root or with sudo; CARDPAY_SKIP_BROWSER=1 skips it)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing Python packages (constraints.txt)"
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,bench]'

echo "setup: installing Anvil and solc from npm (package-lock.json)"
npm ci --no-audit --no-fund --loglevel=error

if [ "${CARDPAY_SKIP_KAFKA:-0}" != "1" ]; then
  echo "setup: fetching the Kafka broker jars with Maven"
  .venv/bin/python -c "from cardpay.devstack.kafka_broker import ensure_kafka_jars; print(ensure_kafka_jars())"
fi
if [ "${CARDPAY_SKIP_BROWSER:-0}" != "1" ] && \
   { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
  echo "setup: installing chromium and chromium-driver with apt-get (CARDPAY_SKIP_BROWSER=1 skips)"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if ! command -v sudo >/dev/null; then
      echo "setup: chromium is missing and this is not root: install chromium and chromium-driver, or set CARDPAY_SKIP_BROWSER=1" >&2
      exit 1
    fi
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "setup: done"
