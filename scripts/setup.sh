#!/usr/bin/env bash
# Install everything cardpay and its tests need, from the package registries only; idempotent.
#   .venv/               Python 3.11 virtualenv with cardpay (editable) and the pinned dependencies
#   node_modules/        Anvil (@foundry-rs/anvil), solc (solcjs) and Safe v1.3.0's build
#                        (@gnosis.pm/safe-contracts), pinned by package-lock.json
#   ~/.cache/cardpay/    Apache Kafka broker jars, fetched with Maven (tools/kafka/pom.xml)
#   Debian packages      chromium and chromium-driver, for the finance page's browser test
#                        (apt-get, as root or with sudo; CARDPAY_SKIP_BROWSER=1 skips them);
#                        docker-compose, which validates docker/compose.yaml (no engine needed)
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

echo "setup: installing Anvil, solc and the Safe contracts from npm (package-lock.json)"
npm ci --no-audit --no-fund --loglevel=error

if [ "${CARDPAY_SKIP_KAFKA:-0}" != "1" ]; then
  echo "setup: fetching the Kafka broker jars with Maven"
  .venv/bin/python -c "from cardpay.devstack.kafka_broker import ensure_kafka_jars; print(ensure_kafka_jars())"
fi
# Debian packages the tests use, each installed only when its command is missing:
#   command:package ...
DEBIAN_NEEDS=(
  /usr/bin/promtool:prometheus         # promtool tests docker/prometheus/alerts.yml
  /usr/bin/docker-compose:docker-compose  # validates docker/compose.yaml
)
if [ "${CARDPAY_SKIP_BROWSER:-0}" != "1" ]; then
  DEBIAN_NEEDS+=(/usr/bin/chromium:chromium /usr/bin/chromedriver:chromium-driver)
fi
MISSING=()
for need in "${DEBIAN_NEEDS[@]}"; do
  [ -x "${need%%:*}" ] || MISSING+=("${need#*:}")
done
if [ "${#MISSING[@]}" -gt 0 ]; then
  echo "setup: installing ${MISSING[*]} with apt-get (CARDPAY_SKIP_BROWSER=1 skips the browser)"
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if ! command -v sudo >/dev/null; then
      echo "setup: ${MISSING[*]} missing and this is not root: install them with apt-get, or set CARDPAY_SKIP_BROWSER=1 for the browser" >&2
      exit 1
    fi
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}" >/dev/null
  if [[ " ${MISSING[*]} " == *" prometheus "* ]]; then
    # the package may start a Prometheus service on :9090; the tests start their own
    $SUDO service prometheus stop >/dev/null 2>&1 || true
  fi
fi
echo "setup: done"
