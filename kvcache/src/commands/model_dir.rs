//! A model directory: a Llama-format checkpoint (`config.json` + `model.safetensors`, as
//! `crate::llama` reads it) and, when `xarena kv train` made it,
//! `train.json` (the tasks it learned and their settings).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::llama::{self, CONFIG_FILE};
use crate::{load_checkpoint, DecoderLm, LmConfig};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Tensor};
use xarena_datasets::lm_tasks::{LmTask, LmTaskConfig};
use xarena_reports::schema::Environment;

/// What `xarena kv train` writes beside the checkpoint, last.
pub const TRAIN_FILE: &str = "train.json";
pub const TRAIN_SCHEMA_VERSION: u32 = 1;

/// `train.json`: how the model was trained and how it scores with a full cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainInfo {
    pub schema: u32,
    pub tasks: Vec<LmTask>,
    /// The tasks' shared settings (vocabulary, passkey digits, pairs, queries).
    pub task_config: LmTaskConfig,
    /// The longest prompt trained on.
    pub context: usize,
    /// The held-out prompts' length (`kv evolve`'s default context).
    pub eval_context: usize,
    /// The shortest prompt trained on (lengths are drawn between the two).
    pub min_context: usize,
    /// The model's preset name with any overrides (`small`, `small+layers=2`).
    pub preset: String,
    pub steps: u64,
    pub batch: i64,
    pub lr: f64,
    pub warmup_steps: u64,
    /// Loss weight of the tokens that are not answers (0: answers only).
    pub prompt_weight: f64,
    pub seed: u64,
    /// Mean loss over the last 10% of steps.
    pub final_loss: f64,
    pub train_seconds: f64,
    pub parameters: i64,
    /// Held-out score per task: greedy decoding with the full cache, prompts of
    /// `eval_context` tokens from the test stream.
    pub held_out: BTreeMap<String, f64>,
    pub held_out_examples: usize,
    /// Per task, the score of guessing.
    pub chance: BTreeMap<String, f64>,
    pub env: Environment,
}

/// A loaded model directory.
pub struct LoadedModel {
    pub dir: PathBuf,
    pub vs: VarStore,
    pub lm: DecoderLm,
    pub cfg: LmConfig,
    /// `train.json`, when the directory has one.
    pub train: Option<TrainInfo>,
    /// A hash of the config and the weights (see [`fingerprint`]).
    pub fingerprint: String,
    pub parameters: i64,
}

impl LoadedModel {
    /// The task settings the model was trained with (the defaults for a checkpoint from
    /// elsewhere).
    pub fn task_config(&self) -> LmTaskConfig {
        self.train
            .as_ref()
            .map_or_else(LmTaskConfig::default, |t| t.task_config.clone())
    }

    /// The directory's name, as records show the model.
    pub fn label(&self) -> String {
        self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |n| n.to_string_lossy().into(),
        )
    }

    /// Refuses a vocabulary too small for the tasks' tokens.
    pub fn check_tasks(&self, tasks: &LmTaskConfig) -> Result<()> {
        let need = i64::from(tasks.vocab_size());
        anyhow::ensure!(
            self.cfg.vocab_size >= need,
            "model {}: its vocabulary ({} tokens) is smaller than the tasks' ({need})",
            self.dir.display(),
            self.cfg.vocab_size
        );
        Ok(())
    }
}

/// Loads `dir` (errors name the missing or bad file), on `device`, without gradients.
pub fn load_model(dir: &Path, device: Device) -> Result<LoadedModel> {
    anyhow::ensure!(
        dir.is_dir(),
        "--model {}: not a directory (a model directory holds {CONFIG_FILE} and \
         {})",
        dir.display(),
        llama::WEIGHTS_FILE
    );
    let (mut vs, lm, cfg) =
        load_checkpoint(dir, device).with_context(|| format!("loading model {}", dir.display()))?;
    vs.freeze();
    let train_path = dir.join(TRAIN_FILE);
    let train = if train_path.is_file() {
        let info: TrainInfo = super::read_json(&train_path)?;
        anyhow::ensure!(
            info.schema == TRAIN_SCHEMA_VERSION,
            "{}: schema {} (this xarena reads {TRAIN_SCHEMA_VERSION})",
            train_path.display(),
            info.schema
        );
        Some(info)
    } else {
        None
    };
    let parameters = vs
        .variables()
        .values()
        .map(|t: &Tensor| t.numel() as i64)
        .sum();
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        fingerprint: fingerprint(dir)?,
        vs,
        lm,
        cfg,
        train,
        parameters,
    })
}

/// A hash of `config.json` and the weight files (names, sizes, and their first and last
/// MiB: enough to tell checkpoints apart without reading gigabytes).
pub fn fingerprint(dir: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut h = Sha256::new();
    let config = dir.join(CONFIG_FILE);
    h.update(std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?);
    for path in llama::weight_files(dir)? {
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        let len = f.metadata()?.len();
        h.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(len.to_le_bytes());
        const PART: u64 = 1 << 20;
        let mut buf = Vec::new();
        if len <= 2 * PART {
            f.read_to_end(&mut buf)?;
        } else {
            f.by_ref().take(PART).read_to_end(&mut buf)?;
            f.seek(SeekFrom::Start(len - PART))?;
            f.read_to_end(&mut buf)?;
        }
        h.update(&buf);
    }
    Ok(format!("{:x}", h.finalize())[..16].to_string())
}

/// The named model shapes of `xarena kv train` (`vocab_size` is set from the tasks).
pub fn preset(name: &str) -> Result<LmConfig> {
    let base = LmConfig::default();
    Ok(match name {
        // The in-suite model: big enough to learn the three tasks in CPU minutes.
        "small" => LmConfig {
            hidden_size: 128,
            intermediate_size: 352,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 4096,
            ..base
        },
        // Another shape (width, depth, heads) for zero-shot transfer and tests.
        "tiny" => LmConfig {
            hidden_size: 64,
            intermediate_size: 176,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 4096,
            ..base
        },
        other => anyhow::bail!("unknown model preset `{other}` (presets: small, tiny)"),
    })
}
