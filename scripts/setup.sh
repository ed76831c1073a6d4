#!/usr/bin/env bash
# Sets up everything deit needs on a fresh Debian/Ubuntu machine with Python 3.11; safe to run again.
#   scripts/setup.sh          runtime: the Fashion-MNIST package, .venv, torch, deit
#   scripts/setup.sh --test   the same plus the test extras (pytest, transformers, onnxscript, onnxruntime)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

# 1. The embedded default data set, from Debian (needs root or sudo; otherwise say how to get it).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" != none ]; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; pass --data-dir to deit (see README)" >&2
  else
    echo "setup: no root/sudo: install dataset-fashion-mnist yourself or pass --data-dir (see README)" >&2
  fi
fi

# 2. A virtual environment with pinned torch (installed from local disk on our machines) and deit.
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.deit-setup${extras:+-test}"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  case "$(uname -m)" in
    aarch64) .venv/bin/python -m pip install -q torch==2.9.1 torchvision==0.24.1 ;;
    *)       .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 ;;
  esac
  .venv/bin/python -m pip install -q -e ".${extras}"
  echo "$want" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch, deit; print("torch", torch.__version__, "deit", deit.__version__)'))"
