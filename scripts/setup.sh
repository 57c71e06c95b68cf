#!/usr/bin/env bash
# Sourced by quickstart.sh and test.sh: make .venv with edgel2[$EDGEL2_EXTRAS] installed, and
# point EDGEL2_DATA at CIFAR-10 when a packed copy is at hand. Safe to run again (fast when done).
#
#   EDGEL2_EXTRAS the extras to install: train (quickstart.sh) or train,dev (test.sh, the default)
#   EDGEL2_DATA   an image folder or cifar-10-batches-py/ to use as is
#   EDGEL2_PACK   a cifar10-jpeg.npz to unpack into .data/ (default: ../shared/data/cifar10-jpeg.npz)
#   PYTHON        the interpreter that makes the venv (default: python3)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
extras="${EDGEL2_EXTRAS:-train,dev}"
# one stamp per set of extras: [train,dev] holds [train], so a test set-up serves the quick start
stamp=.venv/.edgel2-installed-${extras//,/-}
if [ ! -f "$stamp" ] && [ "$extras" = train ] && [ -f .venv/.edgel2-installed-train-dev ]; then
  stamp=.venv/.edgel2-installed-train-dev
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing edgel2[$extras] into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"

# The headless browser the serve page's test drives: Debian's chromium and its driver (browser
# builds cannot be downloaded here). Installed with the test tools only, and only where apt-get
# runs as root (CI, the dev machines); elsewhere that one test skips.
if [[ ",$extras," == *",dev,"* ]] && ! command -v chromedriver > /dev/null \
    && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  echo "setup: installing chromium and chromium-driver (apt-get)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
    > /dev/null 2>&1 || echo "setup: could not install chromium; the browser test will say so" >&2
fi

if [ -z "${EDGEL2_DATA:-}" ]; then
  pack="${EDGEL2_PACK:-$ROOT/../shared/data/cifar10-jpeg.npz}"
  if [ -f "$pack" ]; then
    dest="$ROOT/.data/cifar10-jpeg"
    if [ ! -f "$dest/.complete" ]; then
      echo "setup: unpacking $pack into $dest" >&2
      rm -rf "$dest" "$dest.partial"
      python "$(dirname "$pack")/cifar10_jpeg.py" unpack "$dest.partial" >&2
      mv "$dest.partial" "$dest" && touch "$dest/.complete"
    fi
    export EDGEL2_DATA="$dest"
  else
    echo "setup: no EDGEL2_DATA and no CIFAR-10 pack found; edgel2 will try to download CIFAR-10" >&2
  fi
fi
