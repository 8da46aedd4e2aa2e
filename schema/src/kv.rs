//! The KV-cache track's records: one line of `kv.jsonl` per case (policy x compression
//! ratio x context x task), written by `xarena kv bench`, read by its report.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::load::{read_versioned, LoadError};
use crate::record::Environment;

pub const KV_SCHEMA_VERSION: u32 = 1;

/// The records file inside a `kv bench` directory.
pub const KV_FILE: &str = "kv.jsonl";

/// One case: a policy at a compression ratio on one task at one context length, over
/// `examples` prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvRecord {
    /// The record format's version (`KV_SCHEMA_VERSION`).
    pub schema: u32,
    /// `policy|ratio|context|task`: unique within a run, the key of resuming.
    pub case_id: String,
    /// The model directory's name and a hash of its config and weights.
    pub model: String,
    /// A hash of the model's config and weights: records of different weights never mix.
    pub model_fingerprint: String,
    /// The registry name (`full`, `h2o`, `namm`, ...).
    pub policy: String,
    /// The policy with its settings (`h2o:budget=128,recent=64`).
    pub policy_label: String,
    /// Fraction of the context removed (kvpress's compression ratio); `None` for `full`
    /// and `namm`, which take no budget.
    pub ratio: Option<f64>,
    /// Tokens kept per KV head: kvpress's `int((1 - ratio) x context)`.
    pub budget: Option<usize>,
    /// Prompt tokens.
    pub context: usize,
    /// The task (`passkey`, `niah-single-1`, ...).
    pub task: String,
    /// Prompts scored.
    pub examples: usize,
    /// Prompts' seed (the test stream of `xarena_datasets::lm_tasks`).
    pub seed: u64,
    /// Prompt tokens per prefill call (the policy acts after each).
    pub chunk: usize,
    /// `kvpress` when the whole prompt was prefilled at once, the policy applied once and
    /// the cache then grew while decoding; absent for the chunked protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Fraction of the scored answer tokens right, greedy decoding, mean over examples.
    pub score: f64,
    /// The full cache's score on the same prompts.
    pub full_score: f64,
    /// `score / full_score`; `None` when the full cache scores 0.
    pub normalized_score: Option<f64>,
    /// Cached tokens / tokens seen, averaged over layers and KV heads: sampled after
    /// every forward call and averaged (mean) or maximised (peak) over the sequence, and
    /// at the end of the sequence (final); means over examples (peak: the largest).
    pub mean_retained_fraction: f64,
    /// At the end of the sequence.
    pub final_retained_fraction: f64,
    /// The largest over the sequence.
    pub peak_retained_fraction: f64,
    /// The most bytes of keys and values held at once (largest over examples).
    pub peak_kv_bytes: u64,
    /// Mean per example: prefill wall time and the policy's part of it.
    pub prefill_seconds: f64,
    /// The policy's part of the prefill time.
    pub prefill_policy_seconds: f64,
    /// Per decoded token: wall time, the policy's part and the rest (the forward).
    pub decode_seconds_per_token: f64,
    /// The policy's part of each decoded token's time.
    pub decode_policy_seconds_per_token: f64,
    /// The rest: the model's forward pass.
    pub decode_forward_seconds_per_token: f64,
    /// The evolved NAMM's directory name and generation, for `namm` cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namm: Option<String>,
    /// UTC time the case finished.
    pub finished: String,
    /// The machine and software the case ran on.
    pub env: Environment,
}

/// The records of every run directory (its `kv.jsonl`) or `.jsonl` file given, and the
/// paths whose last line was cut short (left out).
pub fn load_kv(paths: &[PathBuf]) -> Result<(Vec<KvRecord>, Vec<PathBuf>), LoadError> {
    let mut all = Vec::new();
    let mut cut = Vec::new();
    for p in paths {
        let file = if p.is_dir() {
            p.join(KV_FILE)
        } else {
            p.clone()
        };
        let (records, truncated) = read_kv(&file)?;
        all.extend(records);
        if truncated {
            cut.push(file);
        }
    }
    Ok((all, cut))
}

/// One records file; a score or fraction outside 0..=1 is refused with its line.
pub fn read_kv(file: &Path) -> Result<(Vec<KvRecord>, bool), LoadError> {
    let check = |r: &KvRecord| {
        for (name, v) in [
            ("score", r.score),
            ("full_score", r.full_score),
            ("mean_retained_fraction", r.mean_retained_fraction),
            ("final_retained_fraction", r.final_retained_fraction),
            ("peak_retained_fraction", r.peak_retained_fraction),
        ] {
            if !(0.0..=1.0 + 1e-9).contains(&v) {
                return Err(format!("{name} {v} is not a fraction between 0 and 1"));
            }
        }
        Ok(())
    };
    read_versioned(file, KV_SCHEMA_VERSION, check)
}
