//! The tokenizer built from a GGUF's metadata, on a tiny byte-level vocabulary written here:
//! the merges apply in rank order, every byte round-trips through decode, control tokens
//! are single ids wherever they appear, digits are split one by one for `smollm` and not
//! for `gpt-2`, and unsupported files are refused by name.

use xarena_kvcache::model::gguf::{GgufFile, GgufValue};
use xarena_kvcache::model::tokenizer::{byte_chars, tokenizer_from_gguf};

mod common;
use common::gguf_writer::gguf_bytes;

const SPECIALS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];
const USER: &str = "<think>";
const MERGES: [&str; 9] = [
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "e l", "1 2", "Ġ Ġ",
];

/// The 256 byte tokens (id = byte), the two control tokens, one user-defined token, then
/// one token per merge.
fn tokens() -> Vec<String> {
    let mut t: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    t.extend(SPECIALS.iter().map(|s| s.to_string()));
    t.push(USER.to_string());
    t.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    t
}

fn meta(pre: &str, model: &str) -> Vec<(&'static str, GgufValue)> {
    let tokens = tokens();
    let types: Vec<GgufValue> = (0..tokens.len())
        .map(|i| {
            GgufValue::I32(match i {
                256 | 257 => 3,
                258 => 4,
                _ => 1,
            })
        })
        .collect();
    vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("tokenizer.ggml.model", GgufValue::String(model.into())),
        ("tokenizer.ggml.pre", GgufValue::String(pre.into())),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
        ),
        ("tokenizer.ggml.token_type", GgufValue::Array(types)),
        (
            "tokenizer.ggml.merges",
            GgufValue::Array(
                MERGES
                    .iter()
                    .map(|m| GgufValue::String(m.to_string()))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(256)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(257)),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(false)),
    ]
}

fn file(meta: &[(&str, GgufValue)]) -> GgufFile {
    GgufFile::parse("tok.gguf", gguf_bytes(3, meta, &[], 32)).unwrap()
}

fn ids_of(pieces: &[&str]) -> Vec<u32> {
    let tokens = tokens();
    pieces
        .iter()
        .map(|p| tokens.iter().position(|t| t == p).unwrap() as u32)
        .collect()
}

fn encode(tok: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, true).unwrap().get_ids().to_vec()
}

#[test]
fn merges_apply_in_rank_order() {
    let tok = tokenizer_from_gguf(&file(&meta("smollm", "gpt2"))).unwrap();
    assert_eq!(encode(&tok, "hello"), ids_of(&["hello"]));
    assert_eq!(
        encode(&tok, "hello world"),
        ids_of(&["hello", "Ġw", "or", "l", "d"])
    );
    // "h e" outranks "e l": "hel" is he + l, not h + el; "el" alone still merges.
    assert_eq!(encode(&tok, "hel"), ids_of(&["he", "l"]));
    assert_eq!(encode(&tok, "el"), ids_of(&["el"]));
    // Merges never cross the pre-tokenizer's pieces: "o" + " w" stay apart.
    assert_eq!(encode(&tok, "o w"), ids_of(&["o", "Ġw"]));
}

#[test]
fn every_byte_round_trips_through_decode() {
    let tok = tokenizer_from_gguf(&file(&meta("smollm", "gpt2"))).unwrap();
    let texts = [
        "hello world",
        "  leading and trailing  ",
        "tabs\tand\nnew\r\nlines\n\n",
        "café naïve Ünïcödé",
        "日本語のテキスト、中文。",
        "emoji 🦀👩‍💻 and ZWJ",
        "\u{0}\u{1}\u{7f} controls",
        "mixed 12 34.5e-6 <tags> & 'quotes' \"double\"",
    ];
    for text in texts {
        let ids = encode(&tok, text);
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            text,
            "{text:?} -> {ids:?}"
        );
    }
    // A byte outside ASCII is its own token when nothing merges it: é is C3 A9.
    assert_eq!(encode(&tok, "é"), vec![0xc3, 0xa9]);
}

#[test]
fn control_and_user_defined_tokens_are_single_ids() {
    let tok = tokenizer_from_gguf(&file(&meta("smollm", "gpt2"))).unwrap();
    let text = "<|im_start|>user\nhello<|im_end|>\n<think>hello";
    let ids = encode(&tok, text);
    let mut want = vec![256];
    want.extend(ids_of(&["u", "s", "e", "r", "Ċ", "hello"]));
    want.push(257);
    want.extend(ids_of(&["Ċ"]));
    want.push(258);
    want.extend(ids_of(&["hello"]));
    assert_eq!(ids, want);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    // Control tokens are special (skipped on request); the user-defined one is not.
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhello\n<think>hello");
    // Not added around the text (add_bos_token is false).
    assert_eq!(encode(&tok, "hello"), ids_of(&["hello"]));
}

#[test]
fn digits_are_split_one_by_one_for_smollm_not_for_gpt2() {
    let smollm = tokenizer_from_gguf(&file(&meta("smollm", "gpt2"))).unwrap();
    let gpt2 = tokenizer_from_gguf(&file(&meta("gpt-2", "gpt2"))).unwrap();
    assert_eq!(encode(&smollm, "12"), ids_of(&["1", "2"]));
    assert_eq!(encode(&gpt2, "12"), ids_of(&["12"]));
    // Two spaces before a digit: smollm's digit split leaves "  " whole (one merged
    // token); GPT-2's regex gives " " and " 1".
    assert_eq!(encode(&smollm, "  1"), ids_of(&["ĠĠ", "1"]));
    assert_eq!(encode(&gpt2, "  1"), ids_of(&["Ġ", "Ġ", "1"]));
}

#[test]
fn unsupported_tokenizers_are_refused_by_name() {
    let e = tokenizer_from_gguf(&file(&meta("llama-bpe", "gpt2")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tok.gguf") && e.contains("`llama-bpe`"), "{e}");
    let e = tokenizer_from_gguf(&file(&meta("smollm", "llama")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`llama`"), "{e}");
    let mut m = meta("smollm", "gpt2");
    m.retain(|(k, _)| *k != "tokenizer.ggml.add_bos_token");
    m.push(("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)));
    let e = tokenizer_from_gguf(&file(&m)).unwrap_err().to_string();
    assert!(e.contains("add_bos_token"), "{e}");
    let mut m = meta("smollm", "gpt2");
    m.retain(|(k, _)| *k != "tokenizer.ggml.merges");
    m.push((
        "tokenizer.ggml.merges",
        GgufValue::Array(vec![GgufValue::String("abc".into())]),
    ));
    let e = tokenizer_from_gguf(&file(&m)).unwrap_err().to_string();
    assert!(e.contains("merge 0 \"abc\""), "{e}");
}
