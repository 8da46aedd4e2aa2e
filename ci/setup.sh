#!/usr/bin/env bash
# Installs LibTorch (the PyPI wheel torch==2.11.0, the version tch 0.24 binds) into a
# cache outside the repository, once, and points the build at it through the
# `.libtorch` link that `.cargo/config.toml` names. A LIBTORCH set by the user wins.
#
#   bash ci/setup.sh            # install if missing, link, print the LibTorch path
#   XARENA_CACHE=/big/disk bash ci/setup.sh
set -euo pipefail

TORCH_VERSION=2.11.0
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${XARENA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xarena}
site="$cache/torch-$TORCH_VERSION"

log() { printf 'xarena setup: %s\n' "$*" >&2; }

if [ -n "${LIBTORCH:-}" ]; then
  libtorch=$LIBTORCH
  [ -d "$libtorch/lib" ] || { log "LIBTORCH=$libtorch has no lib/ directory"; exit 1; }
  log "using LIBTORCH from the environment: $libtorch"
else
  if [ ! -f "$site/.complete" ]; then
    command -v python3 >/dev/null || { log "python3 is needed to install torch==$TORCH_VERSION"; exit 1; }
    mkdir -p "$cache"
    # One installer at a time: a second set-up waits rather than corrupting the cache.
    exec 9>"$cache/.lock"
    flock 9
    if [ ! -f "$site/.complete" ]; then
      log "installing torch==$TORCH_VERSION into $site (about 4.6 GB, once)"
      rm -rf "$site.partial"
      # --target keeps the system Python untouched and needs no venv module.
      python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$site.partial" "torch==$TORCH_VERSION"
      rm -rf "$site"
      mv "$site.partial" "$site"
      touch "$site/.complete"
    fi
    flock -u 9
  fi
  libtorch="$site/torch"
fi

[ -f "$libtorch/lib/libtorch_cpu.so" ] || { log "no libtorch_cpu.so under $libtorch/lib"; exit 1; }
ln -sfn "$libtorch" "$repo/.libtorch"
# The Python side (comparisons/pytorch_baseline.py) imports the same torch from here.
printf '%s\n' "$(dirname "$libtorch")" >"$repo/.libtorch-site"
echo "$libtorch"
