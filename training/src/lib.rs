//! Training the variants as sequence classifiers, and the LRA matrix: the accuracy track.
//! `xarena train` and `xarena lra` are thin callers of [`command`] and [`matrix`].
//!
//! Data flows one way: task -> trainer -> accuracy record. A task's examples
//! ([`TaskData`], made by [`data`] under a [`presets::Preset`]) -> [`classifier::Classifier`]
//! (token embedding + positions, L encoder blocks of the variant, pooling, a linear head)
//! -> [`trainer::train`] (AdamW, warm-up then decay, clipping, held-out accuracy, peak
//! memory; [`device`] keeps the GPU fed) -> [`command::train_command`] (the checkpoint and
//! the `xarena_schema::AccuracyRecord` line of `accuracy.jsonl`, written last and
//! atomically).
//!
//! The trainer depends on no task generator: a task is plain [`Example`]s, which
//! [`data`] makes from the datasets crate's generators and loaders under a
//! [`presets::Preset`]. [`matrix`] runs `xarena lra`: variants x tasks, resumable.

pub mod classifier;
pub mod command;
pub mod data;
pub mod device;
pub mod matrix;
pub mod presets;
pub mod trainer;

use std::fmt;

/// One labelled token sequence: the datasets' own type, padded for the trainer.
pub use xarena_datasets::task::Example;

/// A classification task as the trainer sees it: every sequence exactly
/// `towers x seq_len` tokens below `vocab`, every label below `classes`.
#[derive(Debug, Clone)]
pub struct TaskData {
    /// The task's name as written into `accuracy.jsonl` (LRA's names where it is one).
    pub name: String,
    pub vocab: u32,
    pub classes: u32,
    pub seq_len: usize,
    /// 2 for two-document tasks (retrieval), else 1.
    pub towers: u32,
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

/// What is wrong with a task's data, naming the split and the example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError(pub String);

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DataError {}

impl TaskData {
    /// Checks sizes, lengths, token ids and labels before anything is built.
    pub fn validate(&self) -> Result<(), DataError> {
        let err = |m: String| Err(DataError(format!("task `{}`: {m}", self.name)));
        if self.vocab == 0 || self.classes < 2 || self.seq_len == 0 {
            return err(format!(
                "needs vocab >= 1, classes >= 2 and seq_len >= 1 (got {}, {}, {})",
                self.vocab, self.classes, self.seq_len
            ));
        }
        for (split, xs) in [("train", &self.train), ("test", &self.test)] {
            if xs.is_empty() {
                return err(format!("the {split} split is empty"));
            }
            for (i, e) in xs.iter().enumerate() {
                if e.tokens.len() != self.seq_len * self.towers as usize {
                    return err(format!(
                        "{split} example {i} has {} tokens, not {} x seq_len = {}",
                        e.tokens.len(),
                        self.towers,
                        self.seq_len
                    ));
                }
                if let Some(t) = e.tokens.iter().find(|&&t| t >= self.vocab) {
                    return err(format!(
                        "{split} example {i} has token {t}, outside the vocabulary of {}",
                        self.vocab
                    ));
                }
                if e.label >= self.classes {
                    return err(format!(
                        "{split} example {i} has label {}, not below classes = {}",
                        e.label, self.classes
                    ));
                }
            }
        }
        Ok(())
    }

    /// Accuracy of always answering the most frequent training label on the test split:
    /// the floor a trained model has to beat.
    pub fn majority_baseline(&self) -> f64 {
        let mut counts = vec![0usize; self.classes as usize];
        for e in &self.train {
            counts[e.label as usize] += 1;
        }
        let top = (0..counts.len()).max_by_key(|&c| counts[c]).unwrap_or(0) as u32;
        let hits = self.test.iter().filter(|e| e.label == top).count();
        hits as f64 / self.test.len().max(1) as f64
    }
}
