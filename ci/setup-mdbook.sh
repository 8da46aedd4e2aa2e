#!/usr/bin/env bash
# Installs mdBook (crates.io, pinned, --locked), which builds the book in docs/, into a
# cache outside the repository, once. Prints the mdbook binary's path on success.
#
#   bash ci/setup-mdbook.sh                    # install if missing, print the path
#   "$(bash ci/setup-mdbook.sh)" build docs    # the site, in target/book/
set -euo pipefail

MDBOOK_VERSION=0.4.52
cache=${XARENA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xarena}
root="$cache/mdbook-$MDBOOK_VERSION"
bin="$root/bin/mdbook"

log() { printf 'xarena setup-mdbook: %s\n' "$*" >&2; }

if [ ! -x "$bin" ]; then
  command -v cargo >/dev/null || { log "cargo is needed to install mdbook $MDBOOK_VERSION"; exit 1; }
  mkdir -p "$cache"
  # One installer at a time, as in setup.sh.
  exec 9>"$cache/.lock-mdbook"
  flock 9
  if [ ! -x "$bin" ]; then
    log "installing mdbook $MDBOOK_VERSION into $root (about 3 minutes on 2 cores, once)"
    # Only the search feature: building the book needs neither `serve` nor `watch`
    # (their web server and file watcher would double the build time).
    # Quiet unless it fails.
    out=$(mktemp)
    if ! cargo install --quiet --locked --no-default-features --features search \
         --version "$MDBOOK_VERSION" --root "$root.partial" mdbook >"$out" 2>&1; then
      cat "$out" >&2; rm -f "$out"
      log "cargo install mdbook $MDBOOK_VERSION failed (output above)"; exit 1
    fi
    rm -f "$out"
    rm -rf "$root"
    mv "$root.partial" "$root"
  fi
  flock -u 9
fi
echo "$bin"
