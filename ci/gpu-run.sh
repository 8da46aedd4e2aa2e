#!/usr/bin/env bash
# Runs an xarena binary built elsewhere on a GPU machine that has PyTorch 2.11.0 in
# python3 but no Rust toolchain (docs/guides/gpu.md). The binary's rpath names the build
# machine's LibTorch, which is absent here, so the loader is pointed at this machine's
# torch/lib; workers inherit it.
#
#   bash ci/gpu-run.sh .gpu/xarena run --sweep ci/sweeps/gpu.toml --out "$OUT/gpu"
set -euo pipefail
bin=${1:?usage: ci/gpu-run.sh BINARY ARGS...}
shift
tl=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$tl${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# No checkout travels with the binary: ci/gpu-pack.sh stores the commit beside it.
if [ -z "${XARENA_GIT_COMMIT:-}" ] && [ -f "$(dirname "$bin")/COMMIT" ]; then
  XARENA_GIT_COMMIT=$(cat "$(dirname "$bin")/COMMIT")
  export XARENA_GIT_COMMIT
fi
exec "$bin" "$@"
