#!/usr/bin/env bash
# The test command: installs LibTorch if missing (ci/setup.sh) and mdBook (ci/setup-mdbook.sh),
# then checks formatting, lints, runs every test of the workspace (the manual's links,
# generated pages and commands among them: cli/tests/docs.rs), builds the book and runs
# the `cargo bench` lines the manual shows. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash ci/setup.sh >/dev/null
bash ci/setup-slurm.sh >/dev/null
mdbook=$(bash ci/setup-mdbook.sh)
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# The book: mdBook refuses a chapter it cannot find or an include it cannot read.
"$mdbook" build docs
# Every `cargo bench` line in a fenced block of the manual, as a reader types it, with
# the dev profile (the test build's artifacts, instead of a release build of LibTorch's
# bindings) and the cases cut to one length, so that a flag criterion or cargo refuses
# fails here.
bench_lines=$(find README.md docs -name '*.md' -exec awk '/^ *```/ { fenced = !fenced; next } fenced' {} + |
  grep -oE '^ *([A-Z_]+=[^ ]+ )*cargo bench .*' | sed 's/^ *//' | sort -u)
[ -n "$bench_lines" ] || { echo "ci/test.sh: no cargo bench line found in the manual" >&2; exit 1; }
while IFS= read -r line; do
  echo "ci/test.sh: $line" >&2
  XARENA_BENCH_SEQ=64 XARENA_BENCH_VARIANTS=vanilla \
    bash -c "${line/cargo bench/cargo bench --locked --profile dev}" >/dev/null
done <<<"$bench_lines"
