#!/usr/bin/env bash
# The test command: installs LibTorch if missing (ci/setup.sh), then checks formatting,
# lints and runs every test of the workspace. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh >/dev/null
bash ci/setup-slurm.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
