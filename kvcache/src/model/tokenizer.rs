//! The tokenizer a GGUF file describes, as a Hugging Face [`tokenizers::Tokenizer`].
//!
//! A GGUF has no `tokenizer.json`: llama.cpp keeps the vocabulary (`tokenizer.ggml.tokens`),
//! the merges (`tokenizer.ggml.merges`, each `"a b"`), each token's type
//! (`tokenizer.ggml.token_type`) and the name of the pre-tokenizer (`tokenizer.ggml.pre`) in
//! its metadata. Only byte-level BPE (`tokenizer.ggml.model` = `gpt2`) is built here:
//!
//! - the model: BPE over the vocabulary and merges, no unknown token, no dropout;
//! - the pre-tokenizer: GPT-2's split regex with no prefix space (llama.cpp's `gpt-2`), and
//!   for the StarCoder family (`smollm` among them) every digit split off first, as
//!   llama.cpp's `\p{N}` before that regex and the models' own `tokenizer.json`
//!   (`Digits { individual_digits: true }`) do; any other name is refused, naming it;
//! - the decoder and post-processor: byte-level;
//! - control tokens (type 3, e.g. `<|im_start|>`) as special added tokens and user-defined
//!   ones (type 4) as plain added tokens, so each is one id wherever it appears in the text.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::gguf::{GgufFile, GgufValue};

/// llama.cpp's token types (`enum llama_token_type`).
pub const TOKEN_TYPE_CONTROL: u64 = 3;
pub const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// The `tokenizer.ggml.pre` names whose split is GPT-2's regex after every digit is cut off
/// (llama.cpp's `llm_tokenizer_bpe`: `\p{N}`, then GPT-2's regex).
pub const DIGIT_SPLIT_PRE: [&str; 7] = [
    "starcoder",
    "refact",
    "command-r",
    "smollm",
    "codeshell",
    "exaone",
    "minerva",
];
/// The names whose split is GPT-2's regex alone.
pub const GPT2_PRE: [&str; 2] = ["gpt-2", "gpt2"];

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable bytes stand for
/// themselves, the others are moved to U+0100 onwards in byte order.
pub fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        *slot = if printable {
            char::from(b as u8)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    table
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    let path = file.path.display();
    let value = file
        .get(key)
        .with_context(|| format!("{path}: no `{key}` in the metadata"))?;
    let array = value
        .as_array()
        .with_context(|| format!("{path}: `{key}` is not an array"))?;
    array
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .with_context(|| format!("{path}: `{key}`[{i}] is not a string"))
        })
        .collect()
}

fn flag(file: &GgufFile, key: &str) -> bool {
    matches!(file.get(key), Some(GgufValue::Bool(true)))
}

/// The tokenizer of `file` (see the module's documentation).
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let path = file.path.display();
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .with_context(|| format!("{path}: no string `tokenizer.ggml.model` in the metadata"))?;
    if model != "gpt2" {
        bail!("{path}: tokenizer `{model}` is not supported (only byte-level BPE, `gpt2`)");
    }
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("gpt-2");
    let digits = if DIGIT_SPLIT_PRE.contains(&pre) {
        true
    } else if GPT2_PRE.contains(&pre) {
        false
    } else {
        bail!(
            "{path}: pre-tokenizer `{pre}` is not supported (supported: {})",
            GPT2_PRE
                .iter()
                .chain(&DIGIT_SPLIT_PRE)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    for key in [
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token",
    ] {
        if flag(file, key) {
            bail!("{path}: `{key}` is true, and adding tokens around the text is not supported");
        }
    }

    // Tokens spelled outside the byte alphabet (never in a well-formed byte-level file) are
    // respelled from their UTF-8 bytes, as transformers' GGUF loader does.
    let table = byte_chars();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let tokens: Vec<String> = strings(file, "tokenizer.ggml.tokens")?
        .into_iter()
        .map(|t| {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.to_string()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            }
        })
        .collect();
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if vocab.insert(t.clone(), id as u32).is_some() {
            bail!("{path}: token {t:?} appears twice in `tokenizer.ggml.tokens`");
        }
    }
    let merges = strings(file, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                Ok((a.to_string(), b.to_string()))
            }
            _ => bail!("{path}: merge {i} {m:?} is not two tokens separated by one space"),
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("{path}: building the BPE model: {e}"))?;

    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .with_context(|| format!("{path}: `tokenizer.ggml.token_type` is not an array"))?
            .iter()
            .map(|t| {
                t.as_u64()
                    .with_context(|| format!("{path}: a token type is not an integer"))
            })
            .collect::<Result<_>>()?,
    };
    if !types.is_empty() && types.len() != tokens.len() {
        bail!(
            "{path}: {} token types for {} tokens",
            types.len(),
            tokens.len()
        );
    }

    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = if digits {
        Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
    } else {
        byte_level.into()
    };
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_post_processor(Some(byte_level))
        .with_decoder(Some(ByteLevelDecoder::default()));
    let added = |kind: u64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == kind)
            .map(|(token, _)| AddedToken::from(token.clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
        .map_err(|e| anyhow::anyhow!("{path}: adding the control tokens: {e}"))?;
    tokenizer
        .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(|e| anyhow::anyhow!("{path}: adding the user-defined tokens: {e}"))?;
    Ok(tokenizer)
}

/// The token `tokenizer.ggml.{name}_token_id` names, if any.
fn special_token(file: &GgufFile, name: &str) -> Option<String> {
    let id = file
        .get(&format!("tokenizer.ggml.{name}_token_id"))?
        .as_u64()?;
    let tokens = file.get("tokenizer.ggml.tokens")?.as_array()?;
    Some(tokens.get(id as usize)?.as_str()?.to_string())
}

/// What `xarena kv convert` writes beside the weights: the tokenizer, and
/// `tokenizer_config.json`'s contents (the special tokens by name and the chat template).
pub struct TokenizerFiles {
    pub tokenizer: Tokenizer,
    pub config: serde_json::Value,
}

impl TokenizerFiles {
    /// `None` when `file` describes no tokenizer (no `tokenizer.ggml.model`).
    pub fn from_gguf(file: &GgufFile) -> Result<Option<TokenizerFiles>> {
        if file.get("tokenizer.ggml.model").is_none() {
            return Ok(None);
        }
        let tokenizer = tokenizer_from_gguf(file)?;
        let mut config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
        });
        for (name, key) in [
            ("bos", "bos_token"),
            ("eos", "eos_token"),
            ("unknown", "unk_token"),
            ("padding", "pad_token"),
        ] {
            if let Some(token) = special_token(file, name) {
                config[key] = json!(token);
            }
        }
        if let Some(template) = file
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
        {
            config["chat_template"] = json!(template);
        }
        Ok(Some(TokenizerFiles { tokenizer, config }))
    }

    /// Writes `dir/tokenizer.json` and `dir/tokenizer_config.json`, so that `dir` loads
    /// like any Hugging Face checkpoint.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json_path = dir.join("tokenizer.json");
        self.tokenizer
            .save(&json_path, false)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", json_path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        std::fs::write(
            &config_path,
            serde_json::to_string_pretty(&self.config)? + "\n",
        )
        .with_context(|| format!("writing {}", config_path.display()))
    }
}
