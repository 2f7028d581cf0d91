#!/usr/bin/env bash
# Runs endless on a fresh Debian 12 machine: installs what is missing, builds in release and
# serves the player on http://127.0.0.1:8080 (settings: config.toml; extra flags pass through,
# e.g. bash scripts/serve.sh --listen 0.0.0.0:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
extra_packages=()
source scripts/setup.sh

cargo build --release -p endless-streamer
# The model (the default source) reads prompts with all-MiniLM-L6-v2. Without it (no network
# on first run) the service can still serve the procedural world, and says so; flags given
# here come after, so an explicit --source still decides.
fallback=()
if ! bash scripts/fetch-minilm.sh; then
  echo "warning: no all-MiniLM-L6-v2, so no model: serving the procedural world (--source world) instead" >&2
  fallback=(--source world)
fi
exec "$CARGO_TARGET_DIR/release/endless" --config config.toml "${fallback[@]}" "$@" serve
