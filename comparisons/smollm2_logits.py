#!/usr/bin/env python3
"""SmolLM2-135M through xarena against Hugging Face's `transformers`, on a fixed prompt.

What it checks
--------------
`xarena kv convert` turns llama.cpp's GGUF (Q4_1 matrices, a Q8_0 embedding, F32 norms;
Q and K rows permuted for llama.cpp's rotary layout) into a Hugging Face checkpoint, and
xarena's `DecoderLm` runs it. Two independent codes are set against that:

* (a) `LlamaForCausalLM` on the converted checkpoint (OUT/config.json +
  model.safetensors): the same weights, another implementation of the decoder. Checks
  xarena's forward pass and that the checkpoint is one transformers reads as meant.
* (b) `LlamaForCausalLM.from_pretrained(dir, gguf_file=...)`: transformers' own GGUF
  loading, which dequantises with llama.cpp's `gguf` package and undoes the Q/K
  permutation itself. Checks xarena's GGUF reader tensor by tensor, then the logits.

The prompt is tokenised by transformers' tokenizer built from the GGUF's metadata.

Set-up (pinned; nothing fetched at run time):

    bash ci/setup.sh && bash ci/setup-smollm2.sh
    pip install --target /tmp/tf transformers==5.23.0
    pip install --no-deps --target /tmp/tf gguf==0.19.0 accelerate==1.15.0
    cargo build -p xarena-cli
    PYTHONPATH=$(cat .libtorch-site):/tmp/tf python3 comparisons/smollm2_logits.py

Prints one JSON object (the diffs, the argmax agreement, the prompt and its ids).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM

PROMPT = (
    "<|im_start|>user\nWhat is the capital of France, and why is it famous?<|im_end|>\n"
    "<|im_start|>assistant\nThe capital of France is"
)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", help="the .gguf (default: what ci/setup-smollm2.sh prints)")
    ap.add_argument("--xarena", default=os.path.join(repo, "target/debug/xarena"))
    ap.add_argument("--work", help="a directory for the converted checkpoint (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    gguf = args.gguf or subprocess.run(
        ["bash", os.path.join(repo, "ci/setup-smollm2.sh")],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or tempfile.mkdtemp(prefix="xarena-smollm2-")
    hf_dir = os.path.join(work, "hf")
    if not os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        subprocess.run([args.xarena, "kv", "convert", gguf, hf_dir], check=True)

    gdir, gname = os.path.split(gguf)
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]

    out = os.path.join(work, "xarena-logits.safetensors")
    cmd = [args.xarena, "kv", "logits", "--model", hf_dir, "--out", out,
           "--tokens", ",".join(map(str, ids))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    subprocess.run(cmd, check=True)
    ours = load_file(out)["logits"].double()

    x = torch.tensor([ids])
    result = {"gguf": gguf, "prompt": PROMPT, "ids": ids, "tokens": len(ids),
              "torch": torch.__version__}
    import transformers
    result["transformers"] = transformers.__version__

    def logits(model):
        model.eval()
        with torch.no_grad():
            return model(x).logits[0].double()

    def compare(name, theirs):
        d = (ours - theirs).abs()
        result[name] = {
            "max_abs_diff": d.max().item(),
            "mean_abs_diff": d.mean().item(),
            "logit_scale": theirs.abs().max().item(),
            "argmax_agree": int((ours.argmax(-1) == theirs.argmax(-1)).sum()),
        }

    converted = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    compare("vs_transformers_on_converted", logits(converted))

    direct = LlamaForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    compare("vs_transformers_gguf_loader", logits(direct))
    # Tensor by tensor: xarena's conversion against gguf-py's dequantisation.
    mine = load_file(os.path.join(hf_dir, "model.safetensors"))
    theirs = direct.state_dict()
    worst, worst_name = 0.0, None
    for name, t in mine.items():
        d = (t.double() - theirs[name].double()).abs().max().item()
        if d > worst:
            worst, worst_name = d, name
    result["weights_vs_gguf_py"] = {"tensors": len(mine), "max_abs_diff": worst,
                                    "worst": worst_name}
    result["greedy_next"] = tok.decode([int(ours[-1].argmax())])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
