#!/usr/bin/env bash
# Install everything cardpay and its tests need, from the package registries only; idempotent.
#   .venv/               Python 3.11 virtualenv with cardpay (editable) and the pinned dependencies
#   node_modules/        Anvil (@foundry-rs/anvil) and solc (solcjs), pinned by package-lock.json
#   ~/.cache/cardpay/    Apache Kafka broker jars, fetched with Maven (tools/kafka/pom.xml)
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
echo "setup: done"
