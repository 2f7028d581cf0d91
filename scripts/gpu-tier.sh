#!/usr/bin/env bash
# Trains the gpu tier (models/gpu: 256², the tiny VAE and the cpu tier's denoiser) in one call of a
# lent GPU machine, which has CUDA but no Rust, no network and a 64 MiB working tree, and lends
# a session 15 minutes of device time: one ~9-minute command, so everything it needs is made
# here first and it checkpoints by time, not by step count. Four verbs:
#
#   bash scripts/gpu-tier.sh prepare   # here: builds endless-model --features cuda, packs it and
#                                      # the text encoder into .device/ (git-ignored), ~40 MB
#   bash scripts/gpu-tier.sh train     # there: run it through the device tool from the repo
#                                      # root with carry [".device"]; writes into $OUT
#   bash scripts/gpu-tier.sh smoke     # there, first, if the time allows: 90 s that say whether
#                                      # CUDA runs (it did on the H200; not worth it then)
#   bash scripts/gpu-tier.sh land DIR  # here: DIR is what came back from $OUT; assembles the
#                                      # exported pipeline in models/gpu
#
# `train` trains the VAE from scratch for VAE_SECONDS (0 by default: on the H200 compiling its
# kernels took most of a minute, and the cpu tier's VAE reconstructs 256² at 27 dB), measures
# it against the cpu tier's VAE (`models/cpu`, which runs at any size) on the same held-out
# clips at the tier's size and keeps the better, so that a run whose VAE learns too little in
# its time still trains a denoiser on a working one; then trains the denoiser on it (on the cpu
# tier's VAE, from INIT resized to the tier's size: the shipped gpu tier, or the cpu tier where
# none ships; else the medium preset from scratch) for
# DEN_SECONDS (`--time-limit`: each stops after the first step past its limit, with a
# checkpoint; each rendered clip in REUSE batches, 2 by default: on the H200 the step waited
# for its data three quarters of the time even so), exports both in f16, streams 20 s of video
# with the export (its speed, and a contact sheet), measures it with `eval` on 24 held-out
# prompts (EVAL_SECONDS at most; about 3 minutes on the H200) and writes to $OUT what the
# machine can send back (at most 8 files of at most 16 MB): vae.safetensors, the denoiser in
# parts of 15 MB, meta.tar.gz (the configs, pipeline.json, the sheet, both runs' loss.csv, the
# evaluation's report) and log.txt. The runs live in RUNS
# (/tmp/endless-gpu), outside the working tree, which the device tool copies afresh for every
# call: a second `train` on the machine while it is still warm (it is handed back after 30 s
# idle) resumes the denoiser for another DEN_SECONDS and exports that. Everything is an
# environment setting, so that a dry run on the CPU exercises the same path in a minute:
#
#   DEVICE=cpu SIZE=64x64 VAE_SECONDS=20 DEN_SECONDS=20 BIN=$CARGO_TARGET_DIR/release/endless-model \
#     ENDLESS_MINILM_DIR=~/.cache/endless/minilm OUT=/tmp/gpu-out RUNS=/tmp/gpu-runs \
#     bash scripts/gpu-tier.sh train
set -euo pipefail

cd "$(dirname "$0")/.."
verb="${1:-}"
carry=.device

unpack() { # into folder $1: the binary and the text encoder that `prepare` packed, unless given
  if [ -z "${BIN:-}" ]; then
    gzip -dc "$carry/endless-model.gz" >"$1/endless-model" && chmod +x "$1/endless-model"
    BIN="$1/endless-model"
  fi
  if [ -z "${ENDLESS_MINILM_DIR:-}" ]; then
    tar -C "$1" -xzf "$carry/minilm.tar.gz"
    export ENDLESS_MINILM_DIR="$1/minilm"
  fi
}

case "$verb" in
prepare)
  target="${CARGO_TARGET_DIR_CUDA:-$HOME/.cache/endless/target-cuda}"
  CARGO_TARGET_DIR="$target" cargo build --release -p endless-model --bin endless-model --features cuda
  mkdir -p "$carry"
  grep -qx "/$carry/" .git/info/exclude 2>/dev/null || echo "/$carry/" >>.git/info/exclude
  strip -o "$carry/endless-model" "$target/release/endless-model"
  gzip -9f "$carry/endless-model"
  rm -rf "$carry/minilm" && "$target/release/endless-model" pack-text --out "$carry/minilm"
  tar -C "$carry" -czf "$carry/minilm.tar.gz" minilm && rm -rf "$carry/minilm"
  ls -l "$carry"
  tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
  carried=$(du -cb "$carry"/* | tail -1 | cut -f1)
  echo "working tree $((tree / 1000000)) MB + $carry $((carried / 1000000)) MB (the limit is 67 MB)"
  ;;

train)
  out="${OUT:?OUT is where the device tool collects what comes back}"
  device="${DEVICE:-cuda}"
  size="${SIZE:-256x256}"
  vae_seconds="${VAE_SECONDS:-0}"
  den_seconds="${DEN_SECONDS:-420}"
  PROMPT="${PROMPT:-a snowy dawn over the ocean, panning left}"
  runs="${RUNS:-/tmp/endless-gpu}"
  log="$out/log.txt"
  mkdir -p "$out" "$runs"
  unpack "$runs"
  { date -u; nvidia-smi 2>&1 || true; } >"$log"
  step() { # name, command...: runs it with its output in the log, timing it
    local name=$1 started=$SECONDS status=0
    shift
    echo "== $name: $*" >>"$log"
    "$@" >>"$log" 2>&1 || status=$?
    echo "== $name: exit $status after $((SECONDS - started)) s" >>"$log"
    return "$status"
  }
  finish() { # whatever there is goes back, also after a failure
    local status=$?
    local meta=()
    for f in "$runs/tier/vae.json" "$runs/tier/denoiser.json" "$runs/tier/pipeline.json" \
      "$runs/tier/sheet.png" "$runs/vae/loss.csv" "$runs/denoiser/loss.csv" \
      "$runs/vae-trained.json" "$runs/vae-cpu.json" "$runs/eval/summary.json" \
      "$runs/eval/report-conditioned.json"; do
      [ -f "$f" ] && meta+=("${f#"$runs"/}")
    done
    [ ${#meta[@]} -gt 0 ] && tar -C "$runs" -czf "$out/meta.tar.gz" "${meta[@]}"
    [ -f "$runs/tier/vae.safetensors" ] && cp "$runs/tier/vae.safetensors" "$out/"
    [ -f "$runs/tier/denoiser.safetensors" ] &&
      split -b 15000000 -d "$runs/tier/denoiser.safetensors" "$out/denoiser.safetensors.part"
    echo "== done: exit $status, $SECONDS s in all" >>"$log"
    ls -l "$out" >>"$log"
  }
  trap finish EXIT
  export RUST_LOG="${RUST_LOG:-info}"
  # How fast this machine's cores render the world at the tier's size, to read the training
  # log's "rendering" against: on the H200 a batch's 8 clips of 13 frames took 0.45 s on 8 of
  # its cores, about 35 ms a frame a core, where a core of the VM renders one in 8 ms.
  step world-bench timeout 60 "$BIN" world-bench --sizes "$size" --frames 104 || true
  # A second call on the still-warm machine goes on with the denoiser of the first, on the VAE
  # the first chose.
  resume=()
  if [ -f "$runs/vae-choice" ] && [ -f "$runs/denoiser/denoiser.json" ]; then
    resume=(--resume)
    vae_seconds=0
  fi
  # A failed VAE run leaves the choice to the cpu tier's VAE rather than ending the call; with
  # VAE_SECONDS=0 (the default: on the H200 the VAE could not learn enough in the call) it is
  # that one.
  [ "$vae_seconds" -gt 0 ] &&
    step vae "$BIN" train-vae --preset tiny --norm-groups 0 --depth-to-time --size "$size" --frames 13 \
      --batch "${VAE_BATCH:-8}" --steps 1000000 --lr 1e-3 --warmup 100 --checkpoint-every 250 \
      --log-every 25 --time-limit "$vae_seconds" --device "$device" --out "$runs/vae" || true
  psnr() { # checkpoint, name: its held-out PSNR at the tier's size in dB; 0 when it has none
    local json="$runs/vae-$2.json"
    [ -f "$1" ] && step "eval-vae $2" "$BIN" eval-vae --vae "$1" --size "$size" --frames 13 \
      --clips "${VAE_EVAL_CLIPS:-16}" --json "$json" --device "$device" >&2 || true
    python3 -c 'import json, math, sys; v = json.load(open(sys.argv[1]))["psnr_mean"]; print(v if math.isfinite(v) else 0)' \
      "$json" 2>/dev/null || echo 0
  }
  if [ ${#resume[@]} -gt 0 ]; then
    vae=$(cat "$runs/vae-choice")
    echo "== going on with $runs/denoiser, on $vae" >>"$log"
  else
    vae="$runs/vae/vae-ema.safetensors"
    trained=0
    [ "$vae_seconds" -gt 0 ] && trained=$(psnr "$vae" trained)
    shipped=$(psnr models/cpu/vae.safetensors cpu)
    if ! awk -v a="$trained" -v b="$shipped" 'BEGIN { exit !(a >= b) }'; then
      vae=models/cpu/vae.safetensors
    fi
    echo "$vae" >"$runs/vae-choice"
    echo "== the denoiser's VAE: $vae (trained $trained dB, cpu tier's $shipped dB)" >>"$log"
  fi
  # The denoiser starts from INIT's, resized to the tier's size, when it runs on INIT's VAE (the
  # same weights): by default the gpu tier's once one has landed in models/gpu, so that GPU
  # sessions add up, or, while none ships, the cpu tier's, which has had hours of training that
  # 7 minutes from scratch do not catch up with; INIT may also be a gpu tier that came back.
  # Otherwise (INIT empty, or a VAE trained here) the medium preset from scratch.
  default_init=models/cpu
  [ -f models/gpu/pipeline.json ] && default_init=models/gpu
  init="${INIT-$default_init}"
  if [ -f "$runs/init/pipeline.json" ] ||
    { [ ${#resume[@]} -eq 0 ] && [ -n "$init" ] && cmp -s "$vae" "$init/vae.safetensors"; }; then
    [ -f "$runs/init/pipeline.json" ] || step resize "$BIN" resize --model "$init" --size "$size" --out "$runs/init"
    start=(--init-from "$runs/init")
    lr="${LR:-1e-4}"
  else
    start=(--preset medium --vae "$vae" --size "$size")
    lr="${LR:-3e-4}"
  fi
  step denoiser "$BIN" train "${resume[@]}" "${start[@]}" \
    --batch "${BATCH:-16}" --reuse "${REUSE:-2}" --steps 1000000 --lr "$lr" --warmup 100 --text-noise 2 \
    --checkpoint-every 250 --log-every 25 --time-limit "$den_seconds" --device "$device" \
    --out "$runs/denoiser"
  step export "$BIN" export --model "$runs/denoiser" --out "$runs/tier"
  # How fast the tier streams there: 20 s of video at the service's 4 steps (the first chunk
  # pays for compiling the kernels), and what it shows.
  step sample timeout 60 "$BIN" sample --model "$runs/tier" --prompt "$PROMPT" --seconds 20 \
    --steps 4 --device "$device" --contact-sheet "$runs/tier/sheet.png"
  # What it makes, measured there as `docs/MODEL_CARD.md` measures the cpu tier, all the
  # prompts' streams in one batch: on the H200, 24 took about 3 minutes and 3 batches of 8 did
  # not finish in 130 s. Its table ends the log.
  rm -rf "$runs/eval"
  step eval timeout "${EVAL_SECONDS:-240}" "$BIN" eval --model "$runs/tier" --cases "${EVAL_CASES:-24}" --clip-seconds 4 \
    --drift-minutes 0 --switch-cases 0 --steps 8 --modes conditioned --batch 24 --seed 1 \
    --device "$device" --out "$runs/eval" || true
  ;;

smoke)
  # A minute's look before `train`: does the CUDA build run here, and how many samples a second
  # do the VAE and the denoiser train at the tier's size (the first steps pay for compiling the
  # kernels, so the rate of the last logged step is the one to read), and does the step wait
  # for its data (the log lines' "waited for")? That decides VAE_SECONDS, DEN_SECONDS and the
  # batch sizes.
  size="${SIZE:-256x256}"
  runs="${RUNS:-runs/smoke}"
  mkdir -p "$runs"
  unpack "$runs"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  started=$SECONDS
  timeout "${SMOKE_SECONDS:-40}" "$BIN" train-vae --preset tiny --norm-groups 0 --depth-to-time \
    --size "$size" --frames 13 --batch "${VAE_BATCH:-8}" --steps 12 --lr 1e-3 --warmup 100 \
    --checkpoint-every 1000 --log-every 2 --device "${DEVICE:-cuda}" --out "$runs/vae" || true
  echo "== vae: $((SECONDS - started)) s"
  started=$SECONDS
  timeout "${SMOKE_SECONDS:-40}" "$BIN" train --preset medium --vae models/cpu/vae.safetensors \
    --size "$size" --batch "${BATCH:-16}" --steps 12 --lr 3e-4 --warmup 100 --text-noise 2 \
    --checkpoint-every 1000 --log-every 2 --device "${DEVICE:-cuda}" --out "$runs/denoiser" || true
  echo "== denoiser: $((SECONDS - started)) s"
  # Both runs render their clips on this machine's CPUs: how fast it renders them.
  timeout 30 "$BIN" world-bench --sizes "$size" --frames 480 || true
  ;;

land)
  from="${2:?land DIR: the folder the device tool brought back}"
  to=models/gpu
  mkdir -p "$to"
  tar -C "$from" -xzf "$from/meta.tar.gz" -O tier/vae.json >"$to/vae.json"
  tar -C "$from" -xzf "$from/meta.tar.gz" -O tier/denoiser.json >"$to/denoiser.json"
  tar -C "$from" -xzf "$from/meta.tar.gz" -O tier/pipeline.json >"$to/pipeline.json"
  cp "$from/vae.safetensors" "$to/"
  cat "$from"/denoiser.safetensors.part* >"$to/denoiser.safetensors"
  ls -l "$to"
  ;;

*)
  echo "usage: $0 prepare | smoke | train | land DIR" >&2
  exit 2
  ;;
esac
