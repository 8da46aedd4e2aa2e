//! DEMO/TEST TASK, to be replaced by the datasets crate's generators once they are wired
//! in: associative recall.
//!
//! A sequence holds `pairs` (key, value) bindings with distinct keys, then pad tokens,
//! then a query naming one of those keys in the last position; the label is the value
//! bound to it. Each binding is one token (id `1 + key x values + value`, keys from 0) and
//! the query its own token (`1 + keys x values + key`); 0 is the pad. Answering needs
//! content-based retrieval across the whole sequence (the query's match is up to N - 1
//! positions away), one attention hop: a model that only pools per-token features cannot
//! match query and key, and stays at chance, 1 / values. (Key and value as two tokens,
//! the usual layout, needs two hops and did not learn within a few thousand steps at
//! this size.) Every example is a pure function of the seed.

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Example, TaskData};

/// The task's name in `accuracy.jsonl` and on the command line.
pub const NAME: &str = "associative-recall";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecallConfig {
    pub seq_len: usize,
    pub pairs: usize,
    /// Distinct key tokens to draw each sequence's keys from.
    pub keys: u32,
    /// Distinct value tokens: the classes.
    pub values: u32,
    pub train_size: usize,
    pub test_size: usize,
    /// The data's seed (fixed per preset, so runs with different training seeds see the
    /// same examples, as LRA's fixed data).
    pub seed: u64,
}

impl Default for RecallConfig {
    fn default() -> Self {
        RecallConfig {
            seq_len: 64,
            pairs: 8,
            keys: 16,
            values: 8,
            train_size: 8192,
            test_size: 1024,
            seed: 0,
        }
    }
}

impl RecallConfig {
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.pairs >= 1 && self.pairs < self.seq_len,
            "{NAME}: needs 1 <= pairs < seq_len (got {} pairs, seq_len {})",
            self.pairs,
            self.seq_len
        );
        anyhow::ensure!(
            self.keys as usize >= self.pairs && self.values >= 2,
            "{NAME}: needs keys >= pairs and values >= 2 (got {} keys, {} values)",
            self.keys,
            self.values
        );
        anyhow::ensure!(
            self.train_size >= 1 && self.test_size >= 1,
            "{NAME}: train_size and test_size must be at least 1"
        );
        Ok(())
    }

    /// The token binding `key` to `value` (both from 0).
    pub fn binding(&self, key: u32, value: u32) -> u32 {
        1 + key * self.values + value
    }

    /// The token asking for `key`'s value.
    pub fn query(&self, key: u32) -> u32 {
        1 + self.keys * self.values + key
    }

    pub fn vocab(&self) -> u32 {
        1 + self.keys * self.values + self.keys
    }

    fn example(&self, rng: &mut ChaCha8Rng) -> Example {
        // The first `pairs` entries of a partial Fisher-Yates shuffle: distinct keys.
        let mut keys: Vec<u32> = (0..self.keys).collect();
        for i in 0..self.pairs {
            let j = rng.gen_range(i..keys.len());
            keys.swap(i, j);
        }
        let mut tokens = vec![0u32; self.seq_len];
        let mut values = Vec::with_capacity(self.pairs);
        for (i, &k) in keys[..self.pairs].iter().enumerate() {
            let v = rng.gen_range(0..self.values);
            tokens[i] = self.binding(k, v);
            values.push(v);
        }
        let q = rng.gen_range(0..self.pairs);
        tokens[self.seq_len - 1] = self.query(keys[q]);
        Example {
            tokens,
            label: values[q],
        }
    }

    /// The train and test splits (independent draws from one seeded stream).
    pub fn generate(&self) -> Result<TaskData> {
        self.check()?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let train = (0..self.train_size)
            .map(|_| self.example(&mut rng))
            .collect();
        let test = (0..self.test_size)
            .map(|_| self.example(&mut rng))
            .collect();
        Ok(TaskData {
            name: NAME.to_string(),
            vocab: self.vocab(),
            classes: self.values,
            seq_len: self.seq_len,
            train,
            test,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_seeded_and_well_formed() {
        let c = RecallConfig {
            train_size: 64,
            test_size: 16,
            ..Default::default()
        };
        let a = c.generate().unwrap();
        a.validate().unwrap();
        assert_eq!(a.train, c.generate().unwrap().train);
        let other = RecallConfig {
            seed: 1,
            ..c.clone()
        }
        .generate()
        .unwrap();
        assert_ne!(a.train, other.train);
        for e in &a.train {
            let key = e.tokens[c.seq_len - 1] - c.query(0);
            assert!(key < c.keys, "the last token is a query");
            let bound: Vec<u32> = e.tokens[..c.pairs]
                .iter()
                .copied()
                .filter(|&t| (t - 1) / c.values == key)
                .collect();
            assert_eq!(
                bound,
                vec![c.binding(key, e.label)],
                "one binding answers it"
            );
            let mut keys: Vec<u32> = e.tokens[..c.pairs]
                .iter()
                .map(|t| (t - 1) / c.values)
                .collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), c.pairs, "distinct keys");
            assert!(e.tokens[c.pairs..c.seq_len - 1].iter().all(|&t| t == 0));
        }
    }

    #[test]
    fn impossible_configs_are_refused() {
        let c = RecallConfig {
            pairs: 64,
            ..Default::default()
        };
        assert!(c.generate().unwrap_err().to_string().contains("pairs"));
    }
}
