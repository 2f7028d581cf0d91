#!/usr/bin/env bash
# Runs endless on a fresh Debian 12 machine: installs what is missing, builds in release and
# starts it. Until the streaming service lands (issue 3) this renders a preview of the
# procedural world instead: PROMPT="sunset over the sea" bash scripts/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release -p endless-streamer -p endless-model --features endless-model/gst
bin="$CARGO_TARGET_DIR/release"
"$bin/endless" --config config.toml config >/dev/null

mkdir -p out
prompt="${PROMPT:-a snowy night over the mountains, camera drifting left}"
"$bin/endless-model" world --prompt "$prompt" \
  --then "8:sunset over the ocean" --then "16:during the day while it rains" \
  --seconds 24 --size 512x288 --fps 24 \
  --out out/preview.mp4 --contact-sheet out/preview.png
echo "preview written to out/preview.mp4 and out/preview.png"
