#!/usr/bin/env bash
# Builds the release binary and puts it, with the commit it was built from, in .gpu/
# (ignored by git) for carrying to a GPU machine (docs/gpu.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh >/dev/null
cargo build --release --locked -p xarena-bench
mkdir -p .gpu
cp target/release/xarena .gpu/xarena
commit=$(git rev-parse HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
echo "$commit" >.gpu/COMMIT
echo ".gpu/xarena ($commit)"
