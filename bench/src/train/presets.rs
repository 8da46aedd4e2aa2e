//! Named sizes for a training run: the task's size, the classifier and the schedule.

use anyhow::Result;
use serde::Serialize;

use super::model::{ClassifierConfig, Pooling, Positions};
use super::recall::RecallConfig;
use super::trainer::{Decay, TrainConfig};

/// The presets `xarena train --preset` knows. An `lra` preset (LRA's sizes) is not
/// defined yet: it comes with the datasets crate's LRA tasks.
pub const PRESETS: &[&str] = &["tiny"];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preset {
    pub name: String,
    /// The demo task's size under this preset.
    pub recall: RecallConfig,
    pub model: ClassifierConfig,
    pub train: TrainConfig,
}

/// `tiny`: N = 64 (8 bindings, 8 values: chance 12.5%), width 64 (4 heads x 16), 2
/// blocks, 1000 steps of 32 at a peak lr of 1e-3; under a minute for `vanilla` on 2 CPU
/// cores.
fn tiny() -> Preset {
    Preset {
        name: "tiny".into(),
        recall: RecallConfig {
            seq_len: 64,
            pairs: 8,
            keys: 16,
            values: 8,
            train_size: 65536,
            test_size: 1024,
            seed: 0,
        },
        model: ClassifierConfig {
            heads: 4,
            head_dim: 16,
            layers: 2,
            pooling: Pooling::Mean,
            positions: Positions::Learned,
            dropout: 0.0,
        },
        train: TrainConfig {
            steps: 2000,
            batch: 32,
            lr: 2e-3,
            warmup_steps: 100,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            clip_norm: 1.0,
            seed: 0,
        },
    }
}

pub fn preset(name: &str) -> Result<Preset> {
    match name {
        "tiny" => Ok(tiny()),
        other => anyhow::bail!("unknown preset `{other}` (presets: {})", PRESETS.join(", ")),
    }
}
