#!/usr/bin/env bash
# Installs the public PyTorch implementations that comparisons/pypi_baselines.py times against
# xarena's variants (local, reformer, routing, sinkhorn, linformer, performer,
# nystromformer, linear-transformer, set-transformer, switch, moe-top2), once, into a
# cache outside the repository, and prints that directory (put it on PYTHONPATH after
# `.libtorch-site`).
#
#   bash ci/setup-baselines.sh            # install if missing, print the directory
#   XARENA_CACHE=/big/disk bash ci/setup-baselines.sh
#
# Every package is pinned and installed with --no-deps, so pip never pulls in a second
# torch (torch comes from `.libtorch-site`, written by ci/setup.sh) or numpy. The list
# below is the closure of what the baselines import, found by installing each with
# --no-deps into a scratch directory and importing it.
set -euo pipefail

PACKAGES=(
  # The baselines.
  local-attention==1.11.2
  reformer-pytorch==1.4.4
  routing-transformer==1.6.1
  sinkhorn-transformer==0.11.4
  linformer==0.2.3
  performer-pytorch==1.1.4    # also imports distutils (3.11's, or setuptools' shim)
  nystrom-attention==0.0.14
  linear-attention-transformer==0.19.1
  isab-pytorch==0.3.0
  # What they import (all pure Python).
  einops==0.8.2
  hyper-connections==0.4.11   # imported by local_attention.transformer
  torch-einops-utils==0.2.0   # declared by hyper-connections
  axial-positional-embedding==0.3.12
  product-key-memory==0.3.0
  colt5-attention==0.11.2     # imported by product_key_memory
  mixture-of-experts==0.2.3   # a baseline (switch, moe-top2) and imported by routing
  packaging==26.3             # imported by product_key_memory
)

cache=${XARENA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xarena}
site="$cache/baselines"

log() { printf 'xarena setup-baselines: %s\n' "$*" >&2; }

# A different pin list means a different install: the marker records the list.
wanted=$(printf '%s\n' "${PACKAGES[@]}")
installed() { [ -f "$site/.complete" ] && [ "$(cat "$site/.complete")" = "$wanted" ]; }

if ! installed; then
  command -v python3 >/dev/null || { log "python3 is needed"; exit 1; }
  mkdir -p "$cache"
  # One installer at a time: a second set-up waits rather than corrupting the cache.
  exec 9>"$cache/.lock"
  flock 9
  if ! installed; then
    log "installing ${#PACKAGES[@]} pinned packages into $site (a few MB, once)"
    rm -rf "$site.partial"
    # --target keeps the system Python untouched and needs no venv module.
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --no-deps --target "$site.partial" "${PACKAGES[@]}"
    if [ -d "$site.partial/torch" ]; then
      log "torch ended up in $site.partial; refusing to use it"
      exit 1
    fi
    rm -rf "$site"
    mv "$site.partial" "$site"
    printf '%s\n' "$wanted" >"$site/.complete"
  fi
  flock -u 9
fi

echo "$site"
