#!/usr/bin/env python3
"""SmolLM2-135M's tokenizer in xarena against Hugging Face's PyPI `tokenizers`, on varied strings.

What it checks
--------------
xarena builds the tokenizer from the GGUF's own metadata (kvcache/src/model/tokenizer.rs,
through the Rust `tokenizers` crate). Set against it here, written independently:

* (a) the reference: PyPI's `tokenizers` (its onig regex engine, where the Rust build uses
  fancy-regex) built from the vocabulary, merges and token types that llama.cpp's own `gguf`
  package reads from the same file; the pre-tokenizer as llama.cpp defines `smollm` (every
  digit split off, `\\p{N}`, then GPT-2's regex, no prefix space), which is also what the
  model's own tokenizer.json says (`Digits(individual_digits=True)` + `ByteLevel`); control
  tokens (type 3) added as special tokens. Token ids must be equal on every string.
* (b) the same strings through the `tokenizer.json` that `xarena kv convert` writes, read by
  xarena again and by transformers' `AutoTokenizer` (the directory loads like any Hugging
  Face checkpoint): ids must be equal too, and the chat template must render.
* (c) for information, transformers' own GGUF tokenizer loader: it maps `smollm` to plain
  GPT-2 splitting (no digit split), so it differs where whitespace precedes a digit.

The strings (default 4000, seeded): English words and sentences, contractions, punctuation,
numbers, whitespace runs (spaces, tabs, newlines, trailing), code, accented Latin, Greek,
Cyrillic, Arabic, Devanagari, CJK, Korean, emoji with ZWJ and skin tones, combining marks,
control characters, random code points from many blocks, and chat-template markup with the
special tokens (whole, broken, adjacent).

Set-up (pinned; nothing fetched at run time):

    bash ci/setup.sh && bash ci/setup-smollm2.sh
    pip install --target /tmp/tf transformers==5.23.0 tokenizers==0.23.3
    pip install --no-deps --target /tmp/tf gguf==0.19.0
    cargo build -p xarena-cli
    # torch only for (c): transformers' GGUF reader imports it
    PYTHONPATH=$(cat .libtorch-site):/tmp/tf python3 comparisons/smollm2_tokenizer.py --out docs/results/smollm2-tokenizer/result.json

Prints one JSON object (counts of strings, tokens and mismatches, the first mismatches).
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import gguf
import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

WORDS = (
    "the of and to in is was for that on as with by he it at from his an were are which this "
    "be or has had but not first one their its new after who they have her she two been other "
    "when there all during into school time may years more most only over city some world "
    "would where later up such used many can state about national out known university united "
    "then made Hello World Python Rust tokenizer caching attention transformer SmolLM llama "
    "I'm you're we've they'll she'd it's don't CAN'T Won't O'Neil rock'n'roll"
).split()
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "—", "–", "«", "»", "“", "”", "‘", "’", "•", "€", "£", "¥", "©", "°", "±", "×", "÷"]
SCRIPTS = [
    "café naïve façade jalapeño Übermaß smørrebrød Ångström",
    "Γειά σου κόσμε, αλφάβητο",
    "Привет, мир! Съешь же ещё этих мягких французских булок",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, यह एक परीक्षण है",
    "你好，世界。这是一个测试句子，包含中文标点！",
    "日本語のテキスト、カタカナとひらがな。東京都",
    "안녕하세요 세계, 한국어 문장입니다.",
    "ภาษาไทย สวัสดีครับ",
    "עברית שלום עולם",
    "Tiếng Việt có dấu: Xin chào thế giới",
]
EMOJI = ["🦀", "👩‍💻", "👍🏽", "🇫🇷", "❤️", "😀😃😄", "🧑‍🤝‍🧑", "✅", "🚀🔥", "👨‍👩‍👧‍👦", "☕️", "🤖"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<jupyter_code>", "<empty_output>"]
BROKEN = ["<|im_start|", "<|im_start", "|im_end|>", "<|im_end >", "< |endoftext|>", "<|IM_START|>", "<im_start>"]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 3.14; }",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "<div class=\"x\">&nbsp;&lt;tag&gt;</div>",
    "$ cargo build --release 2>&1 | tee log.txt",
    "x=1;y=2\r\nz=x+y\r\n",
]
BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
          (0x1100, 0x11FF), (0x2000, 0x206F), (0x2190, 0x23FF), (0x3000, 0x30FF), (0x4E00, 0x9FFF),
          (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF), (0x10000, 0x1007F), (0x0, 0x1F)]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", "\t\t", "\u00a0", "\u3000", "    ", "\n\n\n"]


def number(rng):
    kind = rng.randrange(7)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randrange(1, 12)))
    if kind == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randrange(0, 6)}f}"
    if kind == 2:
        return f"{rng.randrange(1900, 2100)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    if kind == 3:
        return f"{rng.uniform(0, 1):.3e}"
    if kind == 4:
        return f"+1 ({rng.randrange(100, 999)}) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"
    if kind == 5:
        return f"{rng.randrange(0, 100)}%"
    return "١٢٣ ٤٥ ²³ ½ Ⅻ ①"[rng.randrange(0, 14):]


def piece(rng):
    kind = rng.randrange(12)
    if kind <= 2:
        return rng.choice(WORDS)
    if kind == 3:
        return rng.choice(PUNCT)
    if kind == 4:
        return number(rng)
    if kind == 5:
        return rng.choice(WHITESPACE)
    if kind == 6:
        s = rng.choice(SCRIPTS)
        i = rng.randrange(len(s))
        return s[i:i + rng.randrange(1, 20)]
    if kind == 7:
        return rng.choice(EMOJI)
    if kind == 8:
        return rng.choice(SPECIALS + BROKEN)
    if kind == 9:
        lo, hi = rng.choice(BLOCKS)
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randrange(1, 6)))
    if kind == 10:
        return rng.choice(["e\u0301", "n\u0303", "a\u0308\u0304", "\u200b", "\ufeff", "\u200d"])
    return rng.choice(CODE)


def chat(rng):
    msgs = []
    for i in range(rng.randrange(1, 4)):
        role = ["system", "user", "assistant"][i % 3]
        content = "".join(piece(rng) if rng.random() < 0.5 else " " + rng.choice(WORDS) for _ in range(rng.randrange(1, 12)))
        msgs.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    if rng.random() < 0.5:
        msgs.append("<|im_start|>assistant\n")
    return "".join(msgs)


def strings(n, seed):
    rng = random.Random(seed)
    fixed = [
        "", " ", "  ", "\n", "a", "Hello world", " Hello world", "Hello  world ", "hello\n\nworld\n",
        "12", " 12", "  12", "a1b2c3", "3.14159", "1,000,000", "2024-01-01T00:00:00Z",
        "I'm here; you're there. They'll see. It's 'quoted'.", "'S 'T 'RE",
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|><|im_end|><|endoftext|>", "text<|im_end|>text", "<|im_start|", " <|im_end|> ",
        "\t\tindented\n\t\tcode", "trailing spaces   ", "   leading spaces",
        "🦀 Rust 🦀", "👨‍👩‍👧‍👦", "中文，English，日本語", "\u0000\u0001\u001f\u007f",
    ]
    out = list(fixed)
    while len(out) < n:
        kind = rng.randrange(4)
        if kind == 0:
            out.append(chat(rng))
        elif kind == 1:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 30))) + rng.choice([".", "!", "?", "", "\n"]))
        else:
            out.append("".join(piece(rng) for _ in range(rng.randrange(1, 25))))
    return out[:n]


def field_list(reader, key):
    f = reader.fields[key]
    return [f.contents(i) for i in range(len(f.data))]


def reference_tokenizer(path):
    """(a): built here from the GGUF's metadata as llama.cpp's `gguf` package reads it."""
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    pre = reader.fields["tokenizer.ggml.pre"].contents()
    assert pre == "smollm", pre
    tokens = field_list(reader, "tokenizer.ggml.tokens")
    types = field_list(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in field_list(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types) if ty == 3])
    # Bytes whose token the vocabulary lacks: BPE without byte fallback drops them (here as in
    # the model's own tokenizer), so a string holding one cannot decode back to itself.
    spelled = set(tokens)
    missing = [b for b in range(256) if bytes_to_unicode()[b] not in spelled]
    info = {"tokens": len(tokens), "merges": len(merges), "control_tokens": sum(ty == 3 for ty in types),
            "pre": pre, "bytes_without_a_token": [f"{b:#04x}" for b in missing]}
    return tok, info, bytes(missing)


def bytes_to_unicode():
    """GPT-2's byte-to-character table, written out here."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def xarena_ids(xarena, source, texts):
    p = subprocess.run(
        [xarena, "kv", "tokenize", source],
        input="".join(json.dumps(t) + "\n" for t in texts),
        capture_output=True, text=True, check=True,
    )
    return [json.loads(line) for line in p.stdout.splitlines()]


def compare(texts, ours, theirs):
    """How many strings' ids differ, and where the first few part ways."""
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert len(ours) == len(theirs) == len(texts)
    def first(i):
        at = next((k for k, (a, b) in enumerate(zip(ours[i], theirs[i])) if a != b), min(len(ours[i]), len(theirs[i])))
        return {"text": texts[i], "from_token": at, "ids": ours[i][at:at + 6], "reference_ids": theirs[i][at:at + 6]}

    return {"mismatches": len(bad), "first_mismatches": [first(i) for i in bad[:3]]}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", help="the .gguf (default: what ci/setup-smollm2.sh prints)")
    ap.add_argument("--xarena", default=os.path.join(repo, "target/debug/xarena"))
    ap.add_argument("-n", type=int, default=4000, help="how many strings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON object here")
    args = ap.parse_args()
    path = args.gguf or subprocess.run(
        ["bash", os.path.join(repo, "ci/setup-smollm2.sh")],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]

    texts = strings(args.n, args.seed)
    ref, info, missing = reference_tokenizer(path)
    theirs = [e.ids for e in ref.encode_batch(texts)]
    ours = xarena_ids(args.xarena, path, texts)
    result = {
        "gguf": path.replace(os.path.expanduser("~"), "~"),
        "tokenizers": tokenizers.__version__,
        "gguf_package": getattr(gguf, "__version__", None) or "0.19.0",
        **info,
        "strings": len(texts),
        "seed": args.seed,
        "characters": sum(len(t) for t in texts),
        "token_ids": sum(len(i) for i in theirs),
        "vs_pypi_tokenizers": compare(texts, ours, theirs),
    }
    # Every string must decode back to itself, unless it holds a byte the vocabulary lacks.
    lossy = [any(b in missing for b in t.encode("utf-8")) for t in texts]
    failed = [ref.decode(i, skip_special_tokens=False) != t for t, i in zip(texts, theirs)]
    result["strings_with_a_byte_without_a_token"] = sum(lossy)
    result["round_trip_failures_other_strings"] = sum(f and not lo for f, lo in zip(failed, lossy))

    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "hf")
        subprocess.run([args.xarena, "kv", "convert", path, out], check=True, capture_output=True)
        result["vs_converted_tokenizer_json_in_xarena"] = compare(
            texts, xarena_ids(args.xarena, os.path.join(out, "tokenizer.json"), texts), theirs)
        try:
            import transformers
            from transformers import AutoTokenizer
            hf = AutoTokenizer.from_pretrained(out)
            result["transformers"] = transformers.__version__
            result["vs_converted_in_transformers"] = compare(
                texts, [hf(t, add_special_tokens=True)["input_ids"] for t in texts], theirs)
            result["chat_template"] = hf.apply_chat_template(
                [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
            gguf_hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
            result["info_transformers_gguf_loader"] = compare(
                texts, [gguf_hf(t, add_special_tokens=False)["input_ids"] for t in texts], theirs)
        except ImportError as e:
            result["transformers"] = f"not installed ({e})"

    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
    ok = (result["vs_pypi_tokenizers"]["mismatches"] == 0
          and result["vs_converted_tokenizer_json_in_xarena"]["mismatches"] == 0
          and result.get("vs_converted_in_transformers", {}).get("mismatches", 0) == 0
          and result["round_trip_failures_other_strings"] == 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
