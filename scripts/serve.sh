#!/usr/bin/env bash
# Runs endless on a fresh Debian 12 machine: installs what is missing, builds in release and
# serves the player on http://127.0.0.1:8080 (settings: config.toml; extra flags pass through,
# e.g. bash scripts/serve.sh --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
extra_packages=()
source scripts/setup.sh

cargo build --release -p endless-streamer
exec "$CARGO_TARGET_DIR/release/endless" --config config.toml "$@" serve
