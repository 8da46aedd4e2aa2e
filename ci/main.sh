#!/usr/bin/env bash
# The main job: installs LibTorch if missing (ci/setup.sh), builds the release binary
# and runs a sweep. With no arguments, the quick default sweep on the CPU (the first five
# variants, N = 256..2048, batch 2) that ends with its latency, memory and FLOPs tables
# (the LRA layout needs forward and train runs: `xarena report`); any arguments go
# to `xarena run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh >/dev/null
cargo build --release --locked -p xarena-cli
exec ./target/release/xarena run "$@"
