#!/usr/bin/env bash
# Builds the release binary and puts it, stripped of debug info, with the commit it was
# built from, in .gpu/ (ignored by git) for carrying to a GPU machine (docs/guides/gpu.md).
# What travels is the tracked tree plus .gpu/, and a lent GPU machine takes at most 64 MiB:
# the pack is refused above XARENA_PACK_LIMIT_MIB (default 60), saying what is too big.
#
#   bash ci/gpu-pack.sh            # -> .gpu/xarena, .gpu/COMMIT
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
  printf 'ci/gpu-pack.sh: %s\n' "$*" >&2
  exit 2
}
limit_mib=${XARENA_PACK_LIMIT_MIB:-60}
# XARENA_PACK_BIN packs a binary already built; XARENA_PACK_DIR writes elsewhere (tests).
pack=${XARENA_PACK_DIR:-.gpu}
[[ $limit_mib =~ ^[1-9][0-9]*$ ]] || die "XARENA_PACK_LIMIT_MIB must be a positive whole number of MiB, got '$limit_mib'"
command -v objcopy >/dev/null || die "objcopy not found (Debian: apt-get install binutils): it strips the debug info"

bin=${XARENA_PACK_BIN:-}
if [ -z "$bin" ]; then
  bash ci/setup.sh >/dev/null
  cargo build --release --locked -p xarena-cli
fi
bin=${bin:-target/release/xarena}
[ -x "$bin" ] || die "no binary at $bin"

mkdir -p "$pack"
# The release profile keeps line tables for backtraces here; 90% of the file is debug
# sections, which the GPU machine never reads. Symbols stay, so panics still name functions.
objcopy --strip-debug "$bin" "$pack/xarena.partial"
mv "$pack/xarena.partial" "$pack/xarena"
commit=$(git rev-parse HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
echo "$commit" >"$pack/COMMIT"

# Everything the device tool copies: tracked files, untracked files git does not ignore,
# and the carried pack (counted apart when it is inside the tree but ignored).
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
pack_bytes=$(find "$pack" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tree_bytes + pack_bytes))
limit=$((limit_mib * 1024 * 1024))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
if [ "$total" -gt "$limit" ]; then
  rm -f "$pack/xarena"
  die "the pack would carry $(mib "$total") (binary and $pack/ $(mib "$pack_bytes"), work tree $(mib "$tree_bytes")), over the $limit_mib MiB a GPU machine takes; the packed binary was deleted. Shrink the tree or the binary."
fi
echo "$pack/xarena ($commit): $(mib "$pack_bytes") packed, $(mib "$total") with the work tree (limit $limit_mib MiB)"
