//! DEMO/TEST TASK, to be replaced by the datasets crate's generators once they are wired
//! in: associative recall.
//!
//! A sequence holds `pairs` (key, value) pairs with distinct keys, then pad tokens, then
//! one of its keys again as the query in the last position; the label is the value that
//! followed that key. Token ids: 0 pad, 1..=keys keys, then the values. Chance is
//! 1 / values. Every example is a pure function of the seed.

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
            self.pairs >= 1 && 2 * self.pairs < self.seq_len,
            "{NAME}: needs 1 <= pairs and 2 x pairs + 1 <= seq_len (got {} pairs, seq_len {})",
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

    pub fn vocab(&self) -> u32 {
        1 + self.keys + self.values
    }

    fn example(&self, rng: &mut ChaCha8Rng) -> Example {
        // The first `pairs` entries of a partial Fisher-Yates shuffle: distinct keys.
        let mut keys: Vec<u32> = (1..=self.keys).collect();
        for i in 0..self.pairs {
            let j = rng.gen_range(i..keys.len());
            keys.swap(i, j);
        }
        let mut tokens = vec![0u32; self.seq_len];
        let mut values = Vec::with_capacity(self.pairs);
        for (i, &k) in keys[..self.pairs].iter().enumerate() {
            let v = rng.gen_range(0..self.values);
            tokens[2 * i] = k;
            tokens[2 * i + 1] = 1 + self.keys + v;
            values.push(v);
        }
        let q = rng.gen_range(0..self.pairs);
        tokens[self.seq_len - 1] = keys[q];
        Example {
            tokens,
            label: values[q],
        }
    }

    /// The train and test splits (independent draws from one seeded stream).
    pub fn generate(&self) -> Result<TaskData> {
        self.check()?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let train = (0..self.train_size).map(|_| self.example(&mut rng)).collect();
        let test = (0..self.test_size).map(|_| self.example(&mut rng)).collect();
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
        let other = RecallConfig { seed: 1, ..c.clone() }.generate().unwrap();
        assert_ne!(a.train, other.train);
        for e in &a.train {
            let q = e.tokens[c.seq_len - 1];
            let at = e.tokens[..2 * c.pairs].iter().position(|&t| t == q).unwrap();
            assert_eq!(at % 2, 0, "the query is a key");
            assert_eq!(e.tokens[at + 1], 1 + c.keys + e.label);
            assert!(e.tokens[2 * c.pairs..c.seq_len - 1].iter().all(|&t| t == 0));
        }
    }

    #[test]
    fn impossible_configs_are_refused() {
        let c = RecallConfig {
            pairs: 40,
            ..Default::default()
        };
        assert!(c.generate().unwrap_err().to_string().contains("pairs"));
    }
}
