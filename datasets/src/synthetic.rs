//! Synthetic long-context tasks, framed as classification of one token sequence.
//!
//! * [`AssociativeRecall`] (`associative-recall`): `k1 v1 k2 v2 ... kn vn QUERY kq`, the
//!   keys distinct within a sequence, the query one of them; label = its value.
//! * [`Passkey`] (`passkey`): filler, then `KEY d1 .. dm` at a chosen depth, more filler,
//!   `QUERY` at the end; label = the whole passkey `d1..dm` read as a number (10^m
//!   classes; m = 1 by default, so ten). The filler holds digits too, so only the
//!   `KEY` marker tells the passkey apart.
//! * [`SelectiveCopy`] (`selective-copy`): `m` data tokens scattered at random positions
//!   among noise tokens, then `QUERY IDX_j`; label = the j-th data token in order of
//!   position (copying all of them in order is the `m` questions j = 0..m-1).
//!
//! Each split draws from its own ChaCha8 stream of the seed (train 0, valid 1, test 2).
//! Labels are uniform over the classes by construction. Each task's `answer` recomputes
//! the label from the tokens alone, for tests and sanity checks.

use anyhow::{bail, ensure, Context, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::task::{distinct, rng, uniform, Example, Sizes, Split, Task};

/// Default splits of the synthetic tasks.
pub const SYNTHETIC_SIZES: Sizes = Sizes {
    train: 10_000,
    valid: 1_000,
    test: 1_000,
};

/// Draws each split from its own stream.
fn by_split(sizes: Sizes, seed: u64, mut one: impl FnMut(&mut ChaCha8Rng) -> Example) -> Split {
    let mut part = |n: usize, stream: u64| {
        let mut r = rng(seed, stream);
        (0..n).map(|_| one(&mut r)).collect::<Vec<_>>()
    };
    Split {
        train: part(sizes.train, 0),
        valid: part(sizes.valid, 1),
        test: part(sizes.test, 2),
    }
}

// ---------------------------------------------------------------------------------------

/// Key-value pairs, then a query key; label = its value.
///
/// Ids: 0 padding, 1 `QUERY`, `2..2+num_values` the values, then the keys, then (the
/// fused layout only) one token per (key, value) binding.
///
/// Two layouts. The usual one writes each pair as two tokens (`k v`), so answering takes
/// two attention hops (find the key, read the token after it). The fused layout writes
/// each binding as one token (`b(k, v)`), so one content-based hop answers: a small model
/// learns it within a CPU budget (the two-token layout did not, at the `tiny` preset's
/// size, in 6,000 steps), and it still needs retrieval across the whole sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssociativeRecall {
    /// Pairs per sequence; the length is `2 * num_pairs + 2` (default 256: 514 tokens).
    pub num_pairs: u32,
    /// Distinct key tokens (at least `num_pairs`; default 1024).
    pub num_keys: u32,
    /// Value tokens = classes (default 10).
    pub num_values: u32,
    /// One token per binding instead of two (default false).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fused: bool,
    /// Blank tokens between the last pair and `QUERY` up to this length (default none),
    /// so the query sits far from the pairs whatever their number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_to: Option<u32>,
    pub sizes: Sizes,
}

impl Default for AssociativeRecall {
    fn default() -> Self {
        AssociativeRecall {
            num_pairs: 256,
            num_keys: 1024,
            num_values: 10,
            fused: false,
            pad_to: None,
            sizes: SYNTHETIC_SIZES,
        }
    }
}

impl AssociativeRecall {
    pub const QUERY: u32 = 1;

    fn value_token(&self, v: u32) -> u32 {
        2 + v
    }
    fn key_token(&self, k: u32) -> u32 {
        2 + self.num_values + k
    }
    fn binding_token(&self, k: u32, v: u32) -> u32 {
        2 + self.num_values + self.num_keys + k * self.num_values + v
    }
    /// The blank filler of `pad_to`: the last id.
    fn blank_token(&self) -> u32 {
        self.vocab_size() - 1
    }
    /// Tokens of the pairs and the query, without filler.
    fn unpadded_len(&self) -> usize {
        let per_pair = if self.fused { 1 } else { 2 };
        per_pair * self.num_pairs as usize + 2
    }
    /// The tokens without the blank filler.
    fn strip_blanks(&self, tokens: &[u32]) -> Vec<u32> {
        if self.pad_to.is_none() {
            return tokens.to_vec();
        }
        let blank = self.blank_token();
        tokens.iter().copied().filter(|&t| t != blank).collect()
    }

    /// The label recomputed from the tokens: the value after the query key's pair.
    pub fn answer(&self, tokens: &[u32]) -> Result<u32> {
        let stripped = self.strip_blanks(tokens);
        let tokens = stripped.as_slice();
        if self.fused {
            return self.answer_fused(tokens);
        }
        let n = tokens.len();
        ensure!(
            n >= 4 && n & 1 == 0 && tokens[n - 2] == Self::QUERY,
            "not pairs + QUERY key"
        );
        let q = tokens[n - 1];
        let mut found = None;
        for pair in tokens[..n - 2].chunks(2) {
            if pair[0] == q {
                ensure!(found.is_none(), "query key {q} appears twice");
                found = Some(pair[1]);
            }
        }
        let v = found.context("query key not among the pairs")?;
        ensure!(
            v >= 2 && v < 2 + self.num_values,
            "token {v} is not a value"
        );
        Ok(v - 2)
    }

    fn answer_fused(&self, tokens: &[u32]) -> Result<u32> {
        let n = tokens.len();
        ensure!(
            n >= 3 && tokens[n - 2] == Self::QUERY,
            "not bindings + QUERY key"
        );
        let key = tokens[n - 1]
            .checked_sub(2 + self.num_values)
            .filter(|&k| k < self.num_keys)
            .context("the last token is not a key")?;
        let first = self.binding_token(0, 0);
        let mut found = None;
        for &t in &tokens[..n - 2] {
            let b = t
                .checked_sub(first)
                .context("a token before QUERY is no binding")?;
            ensure!(
                b < self.num_keys * self.num_values,
                "token {t} is no binding"
            );
            if b / self.num_values == key {
                ensure!(found.is_none(), "key {key} is bound twice");
                found = Some(b % self.num_values);
            }
        }
        found.context("query key not among the bindings")
    }
}

impl Task for AssociativeRecall {
    fn name(&self) -> &'static str {
        "associative-recall"
    }
    fn vocab_size(&self) -> u32 {
        let bindings = if self.fused {
            self.num_keys * self.num_values
        } else {
            0
        };
        2 + self.num_values + self.num_keys + bindings + u32::from(self.pad_to.is_some())
    }
    fn num_classes(&self) -> u32 {
        self.num_values
    }
    fn max_len(&self) -> usize {
        self.unpadded_len().max(self.pad_to.unwrap_or(0) as usize)
    }
    fn sizes(&self) -> Sizes {
        self.sizes
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain fields")
    }
    fn validate(&self) -> Result<()> {
        ensure!(self.num_pairs >= 1, "num_pairs must be at least 1");
        ensure!(
            self.num_keys >= self.num_pairs,
            "num_keys {} < num_pairs {}: keys must be distinct",
            self.num_keys,
            self.num_pairs
        );
        ensure!(self.num_values >= 2, "num_values must be at least 2");
        if let Some(n) = self.pad_to {
            ensure!(
                n as usize >= self.unpadded_len(),
                "pad_to {n} is shorter than the {} tokens of the pairs and the query",
                self.unpadded_len()
            );
        }
        Ok(())
    }
    fn generate(&self, seed: u64) -> Result<Split> {
        self.validate()?;
        Ok(by_split(self.sizes, seed, |r| {
            let keys = distinct(r, self.num_pairs, self.num_keys);
            let mut tokens = Vec::with_capacity(self.max_len());
            let mut values = Vec::with_capacity(keys.len());
            for &k in &keys {
                let v = uniform(r, 0, self.num_values);
                values.push(v);
                if self.fused {
                    tokens.push(self.binding_token(k, v));
                } else {
                    tokens.push(self.key_token(k));
                    tokens.push(self.value_token(v));
                }
            }
            let q = uniform(r, 0, self.num_pairs) as usize;
            tokens.resize(self.max_len() - 2, self.blank_token());
            tokens.push(Self::QUERY);
            tokens.push(self.key_token(keys[q]));
            Example {
                tokens,
                label: values[q],
            }
        }))
    }
}

// ---------------------------------------------------------------------------------------

/// A passkey hidden in filler and asked for at the end; label = the passkey.
///
/// Ids: 0 padding, 1 `KEY`, 2 `QUERY`, 3-12 the digits 0-9, then `filler_words` filler
/// words. The filler is drawn uniformly from the digits and the filler words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Passkey {
    /// Tokens per sequence (default 1024).
    pub seq_len: u32,
    /// Passkey digits, 1 to 4 (default 1); classes = 10^digits.
    pub digits: u32,
    /// Where the passkey sits: 0.0 right at the start, 1.0 right before `QUERY`; None
    /// (the default) draws it uniformly per example.
    pub depth: Option<f64>,
    /// Filler words besides the digits (default 64).
    pub filler_words: u32,
    pub sizes: Sizes,
}

impl Default for Passkey {
    fn default() -> Self {
        Passkey {
            seq_len: 1024,
            digits: 1,
            depth: None,
            filler_words: 64,
            sizes: SYNTHETIC_SIZES,
        }
    }
}

impl Passkey {
    pub const KEY: u32 = 1;
    pub const QUERY: u32 = 2;
    const DIGIT0: u32 = 3;

    /// Free positions for the `KEY d1..dm` block: 0..=room.
    fn room(&self) -> u32 {
        self.seq_len - self.digits - 2
    }

    /// Index of `KEY` for a depth in [0, 1].
    pub fn position(&self, depth: f64) -> u32 {
        (depth * self.room() as f64).round() as u32
    }

    /// The label recomputed from the tokens: the digits after the one `KEY`.
    pub fn answer(&self, tokens: &[u32]) -> Result<u32> {
        ensure!(tokens.last() == Some(&Self::QUERY), "no QUERY at the end");
        let keys: Vec<usize> = (0..tokens.len())
            .filter(|&i| tokens[i] == Self::KEY)
            .collect();
        let [at] = keys[..] else {
            bail!("{} KEY markers, not one", keys.len());
        };
        let mut value = 0;
        for i in 0..self.digits as usize {
            let t = *tokens.get(at + 1 + i).context("passkey cut")?;
            ensure!(
                (Self::DIGIT0..Self::DIGIT0 + 10).contains(&t),
                "token {t} in the passkey is not a digit"
            );
            value = value * 10 + (t - Self::DIGIT0);
        }
        Ok(value)
    }
}

impl Task for Passkey {
    fn name(&self) -> &'static str {
        "passkey"
    }
    fn vocab_size(&self) -> u32 {
        Self::DIGIT0 + 10 + self.filler_words
    }
    fn num_classes(&self) -> u32 {
        10u32.pow(self.digits)
    }
    fn max_len(&self) -> usize {
        self.seq_len as usize
    }
    fn sizes(&self) -> Sizes {
        self.sizes
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain fields")
    }
    fn validate(&self) -> Result<()> {
        ensure!(
            (1..=4).contains(&self.digits),
            "digits must be 1 to 4, not {}",
            self.digits
        );
        ensure!(
            self.seq_len >= self.digits + 2,
            "seq_len {} cannot hold KEY, {} digits and QUERY",
            self.seq_len,
            self.digits
        );
        if let Some(d) = self.depth {
            ensure!((0.0..=1.0).contains(&d), "depth must be in [0, 1], not {d}");
        }
        Ok(())
    }
    fn generate(&self, seed: u64) -> Result<Split> {
        self.validate()?;
        let filler_range = 10 + self.filler_words;
        Ok(by_split(self.sizes, seed, |r| {
            let at = match self.depth {
                Some(d) => self.position(d),
                None => uniform(r, 0, self.room() + 1),
            };
            let label = uniform(r, 0, self.num_classes());
            let mut tokens: Vec<u32> = (0..self.seq_len - 1)
                .map(|_| Self::DIGIT0 + uniform(r, 0, filler_range))
                .collect();
            let at = at as usize;
            tokens[at] = Self::KEY;
            let mut rest = label;
            for i in (0..self.digits as usize).rev() {
                tokens[at + 1 + i] = Self::DIGIT0 + rest % 10;
                rest /= 10;
            }
            tokens.push(Self::QUERY);
            Example { tokens, label }
        }))
    }
}

// ---------------------------------------------------------------------------------------

/// Data tokens scattered among noise, then a question: which is the j-th of them?
///
/// Ids: 0 padding, 1 `QUERY`, `2..2+num_selected` the index tokens `IDX_j`, then
/// `num_data` data tokens (the classes), then `noise_tokens` noise tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectiveCopy {
    /// Tokens per sequence, `QUERY IDX_j` included (default 1024).
    pub seq_len: u32,
    /// Data tokens per sequence (default 16).
    pub num_selected: u32,
    /// Data token kinds = classes (default 10).
    pub num_data: u32,
    /// Noise token kinds (default 1: a blank, as in the Mamba paper's task).
    pub noise_tokens: u32,
    pub sizes: Sizes,
}

impl Default for SelectiveCopy {
    fn default() -> Self {
        SelectiveCopy {
            seq_len: 1024,
            num_selected: 16,
            num_data: 10,
            noise_tokens: 1,
            sizes: SYNTHETIC_SIZES,
        }
    }
}

impl SelectiveCopy {
    pub const QUERY: u32 = 1;

    fn data0(&self) -> u32 {
        2 + self.num_selected
    }

    /// The label recomputed from the tokens: the j-th data token before `QUERY IDX_j`.
    pub fn answer(&self, tokens: &[u32]) -> Result<u32> {
        let n = tokens.len();
        ensure!(
            n >= 2 && tokens[n - 2] == Self::QUERY,
            "no QUERY IDX at the end"
        );
        let idx = tokens[n - 1];
        ensure!(
            idx >= 2 && idx < self.data0(),
            "token {idx} is not an index"
        );
        let j = (idx - 2) as usize;
        let data: Vec<u32> = tokens[..n - 2]
            .iter()
            .copied()
            .filter(|&t| t >= self.data0() && t < self.data0() + self.num_data)
            .collect();
        let t = data
            .get(j)
            .with_context(|| format!("index {j} but {} data tokens", data.len()))?;
        Ok(t - self.data0())
    }
}

impl Task for SelectiveCopy {
    fn name(&self) -> &'static str {
        "selective-copy"
    }
    fn vocab_size(&self) -> u32 {
        self.data0() + self.num_data + self.noise_tokens
    }
    fn num_classes(&self) -> u32 {
        self.num_data
    }
    fn max_len(&self) -> usize {
        self.seq_len as usize
    }
    fn sizes(&self) -> Sizes {
        self.sizes
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain fields")
    }
    fn validate(&self) -> Result<()> {
        ensure!(self.num_selected >= 1, "num_selected must be at least 1");
        ensure!(self.num_data >= 2, "num_data must be at least 2");
        ensure!(self.noise_tokens >= 1, "noise_tokens must be at least 1");
        ensure!(
            self.seq_len >= self.num_selected + 2,
            "seq_len {} cannot hold {} data tokens and QUERY IDX",
            self.seq_len,
            self.num_selected
        );
        Ok(())
    }
    fn generate(&self, seed: u64) -> Result<Split> {
        self.validate()?;
        let body = self.seq_len - 2;
        let noise0 = self.data0() + self.num_data;
        Ok(by_split(self.sizes, seed, |r| {
            let mut tokens: Vec<u32> = (0..body)
                .map(|_| noise0 + uniform(r, 0, self.noise_tokens))
                .collect();
            let mut positions = distinct(r, self.num_selected, body);
            positions.sort_unstable();
            let data: Vec<u32> = (0..self.num_selected)
                .map(|_| uniform(r, 0, self.num_data))
                .collect();
            for (&p, &d) in positions.iter().zip(&data) {
                tokens[p as usize] = self.data0() + d;
            }
            let j = uniform(r, 0, self.num_selected);
            tokens.push(Self::QUERY);
            tokens.push(2 + j);
            Example {
                tokens,
                label: data[j as usize],
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::label_counts;

    /// Shared checks: sizes, lengths, ids within the vocabulary, labels within the
    /// classes and equal to `answer`, every class within 30% of its expected count over
    /// the train split, the same data for the same seed and other data for another.
    fn check(task: &dyn Task, answer: impl Fn(&[u32]) -> Result<u32>, fixed_len: bool) {
        let split = task.generate(9).unwrap();
        assert_eq!(split.sizes(), task.sizes());
        for (name, part) in split.parts() {
            for ex in part {
                assert!(ex.tokens.len() <= task.max_len(), "{name}");
                if fixed_len {
                    assert_eq!(ex.tokens.len(), task.max_len(), "{name}");
                }
                assert!(ex.tokens.iter().all(|&t| t > 0 && t < task.vocab_size()));
                assert!(ex.label < task.num_classes());
                assert_eq!(answer(&ex.tokens).unwrap(), ex.label, "{name}");
            }
        }
        let counts = label_counts(&split.train, task.num_classes());
        let expected = split.train.len() as f64 / task.num_classes() as f64;
        eprintln!("{} train labels: {counts:?}", task.name());
        for (c, &n) in counts.iter().enumerate() {
            assert!(
                (n as f64 - expected).abs() < 0.3 * expected,
                "class {c}: {n} of expected {expected}"
            );
        }
        assert_eq!(split, task.generate(9).unwrap());
        assert_ne!(split.train, task.generate(10).unwrap().train);
    }

    #[test]
    fn associative_recall_labels_balance_and_repeat() {
        let task = AssociativeRecall {
            num_pairs: 40,
            num_keys: 64,
            num_values: 10,
            fused: false,
            pad_to: None,
            sizes: Sizes::new(2000, 100, 100),
        };
        check(&task, |t| task.answer(t), true);
        let fused = AssociativeRecall {
            fused: true,
            ..task.clone()
        };
        check(&fused, |t| fused.answer(t), true);
        let split = fused.generate(3).unwrap();
        assert!(split.train.iter().all(|e| e.tokens.len() == 42));
        let padded = AssociativeRecall {
            pad_to: Some(64),
            ..fused.clone()
        };
        check(&padded, |t| padded.answer(t), true);
        let ex = &padded.generate(3).unwrap().train[0];
        assert_eq!(
            ex.tokens[40],
            padded.vocab_size() - 1,
            "blanks after the pairs"
        );
        assert_eq!(ex.tokens[62], AssociativeRecall::QUERY);
        assert!(AssociativeRecall {
            pad_to: Some(41),
            ..fused.clone()
        }
        .validate()
        .is_err());
        assert!(split
            .train
            .iter()
            .flat_map(|e| &e.tokens)
            .all(|&t| t < fused.vocab_size()));
        // Keys are distinct within each sequence (answer would refuse otherwise, but
        // check it directly too).
        let split = task.generate(1).unwrap();
        for ex in &split.train {
            let mut keys: Vec<u32> = ex.tokens[..ex.tokens.len() - 2]
                .iter()
                .step_by(2)
                .copied()
                .collect();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), 40);
        }
        // The query lands on every pair position, not just a few.
        let mut where_ = vec![0usize; 40];
        for ex in &split.train {
            let q = *ex.tokens.last().unwrap();
            let i = ex.tokens.iter().position(|&t| t == q).unwrap();
            where_[i / 2] += 1;
        }
        assert!(where_.iter().all(|&n| n > 0), "{where_:?}");
    }

    #[test]
    fn passkey_labels_balance_and_repeat() {
        let task = Passkey {
            seq_len: 300,
            sizes: Sizes::new(2000, 100, 100),
            ..Default::default()
        };
        check(&task, |t| task.answer(t), true);
        // Digits also appear in the filler: only the KEY marker finds the passkey.
        let split = task.generate(2).unwrap();
        let digits_in_filler = split.train[0]
            .tokens
            .iter()
            .filter(|&&t| (3..13).contains(&t))
            .count();
        assert!(digits_in_filler > 10, "{digits_in_filler}");
    }

    #[test]
    fn passkey_depth_places_the_key() {
        for (depth, want) in [(0.0, 0usize), (0.5, 48), (1.0, 96)] {
            // room = 100 - 2 - 2 = 96
            let task = Passkey {
                seq_len: 100,
                digits: 2,
                depth: Some(depth),
                sizes: Sizes::new(30, 0, 0),
                ..Default::default()
            };
            let split = task.generate(4).unwrap();
            for ex in &split.train {
                let at = ex.tokens.iter().position(|&t| t == Passkey::KEY).unwrap();
                assert_eq!(at, want, "depth {depth}");
                assert_eq!(task.answer(&ex.tokens).unwrap(), ex.label);
                assert!(ex.label < 100);
            }
        }
        // Two digits: a hundred classes, many of them drawn.
        let task = Passkey {
            seq_len: 64,
            digits: 2,
            sizes: Sizes::new(500, 0, 0),
            ..Default::default()
        };
        let split = task.generate(0).unwrap();
        let counts = label_counts(&split.train, task.num_classes());
        assert!(counts.iter().filter(|&&n| n > 0).count() > 90, "{counts:?}");
        assert!(Passkey {
            depth: Some(1.5),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn selective_copy_labels_balance_and_repeat() {
        let task = SelectiveCopy {
            seq_len: 256,
            num_selected: 8,
            sizes: Sizes::new(2000, 100, 100),
            ..Default::default()
        };
        check(&task, |t| task.answer(t), true);
        let split = task.generate(3).unwrap();
        for ex in &split.train {
            // Exactly num_selected data tokens, the rest noise.
            let data = ex.tokens[..ex.tokens.len() - 2]
                .iter()
                .filter(|&&t| (10..20).contains(&t))
                .count();
            assert_eq!(data, 8);
        }
        // Positions vary: the first data token is not always in the same place.
        let firsts: std::collections::HashSet<usize> = split
            .train
            .iter()
            .map(|e| e.tokens.iter().position(|t| (10..20).contains(t)).unwrap())
            .collect();
        assert!(firsts.len() > 20, "{}", firsts.len());
        // Several noise kinds.
        let noisy = SelectiveCopy {
            noise_tokens: 5,
            seq_len: 128,
            sizes: Sizes::new(1000, 10, 10),
            ..Default::default()
        };
        check(&noisy, |t| noisy.answer(t), true);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(AssociativeRecall {
            num_pairs: 10,
            num_keys: 5,
            ..Default::default()
        }
        .generate(0)
        .is_err());
        assert!(Passkey {
            digits: 5,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SelectiveCopy {
            seq_len: 10,
            num_selected: 9,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
