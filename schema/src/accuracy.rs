//! Task accuracy records: one line of `accuracy.jsonl` per trained model evaluated on one
//! task. `xarena train` and `xarena lra` write them; the report reads them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::load::{read_versioned, LoadError};
use crate::record::Environment;

pub const ACCURACY_SCHEMA_VERSION: u32 = 1;

/// The accuracy file inside a run directory.
pub const ACCURACY_FILE: &str = "accuracy.jsonl";

/// One trained model evaluated on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyRecord {
    /// The record format's version (`ACCURACY_SCHEMA_VERSION`).
    pub schema: u32,
    /// The task, by LRA's names where it is one of theirs: listops, text, retrieval,
    /// image, pathfinder, path-x (generated tasks by their CLI names).
    pub task: String,
    /// The variant's label, as in the efficiency records (`local(window=64)`).
    pub variant: String,
    /// Fraction of the test examples classified correctly, 0 to 1.
    pub accuracy: f64,
    /// Training steps taken.
    pub steps: u64,
    /// The training seed (weights and batch order; the task's data is fixed).
    pub seed: u64,
    /// The machine and software trained on.
    pub env: Environment,
    /// What training measured (`xarena train` writes them; optional for other writers):
    /// steps per second, the training loop's peak memory and its wall time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    /// The training preset (`tiny`, `lra`), when the writer names one: LRA's published
    /// figure is shown beside runs at LRA's settings only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Also written by `xarena train` (optional for other writers): the device trained
    /// on, the accuracy on the training examples, the last logged loss, how the peak
    /// memory was measured and the model's trainable parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<i64>,
}

/// The accuracy records of every run directory given that has an `accuracy.jsonl`
/// (files given directly are results files and are skipped). An accuracy outside 0..=1
/// is refused with the line that holds it.
pub fn load_accuracy(paths: &[PathBuf]) -> Result<Vec<AccuracyRecord>, LoadError> {
    let mut all = Vec::new();
    for p in paths.iter().filter(|p| p.is_dir()) {
        let file = p.join(ACCURACY_FILE);
        if file.exists() {
            all.extend(read_accuracy(&file)?);
        }
    }
    Ok(all)
}

pub fn read_accuracy(file: &Path) -> Result<Vec<AccuracyRecord>, LoadError> {
    let check = |r: &AccuracyRecord| {
        if (0.0..=1.0).contains(&r.accuracy) {
            Ok(())
        } else {
            Err(format!(
                "accuracy {} is not a fraction between 0 and 1",
                r.accuracy
            ))
        }
    };
    Ok(read_versioned(file, ACCURACY_SCHEMA_VERSION, check)?.0)
}
