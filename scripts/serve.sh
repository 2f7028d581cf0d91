#!/usr/bin/env bash
# Runs endless on a fresh Debian 12 machine: installs what is missing, builds in release and
# serves the player on http://127.0.0.1:8080 (settings: config.toml; extra flags pass through,
# e.g. bash scripts/serve.sh --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
extra_packages=()
source scripts/setup.sh

cargo build --release -p endless-streamer
# The model source (--source model) reads prompts with all-MiniLM-L6-v2; the world does not
# need it, so serving goes on without it.
bash scripts/fetch-minilm.sh || echo "warning: no all-MiniLM-L6-v2; only the world source (the default) will work" >&2
exec "$CARGO_TARGET_DIR/release/endless" --config config.toml "$@" serve
