//! `xarena train`: everything checked first, then training, then the checkpoint, and
//! `accuracy.jsonl` last, written atomically (a temporary file renamed into place), so a
//! failed or killed run never leaves an accuracy file that looks complete.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tch::Device;
use xarena_schema::accuracy::{AccuracyRecord, ACCURACY_FILE, ACCURACY_SCHEMA_VERSION};
use xarena_variants::VariantSpec;

use super::classifier::ModelSpec;
use super::data::task_data;
use super::presets::preset;
use super::trainer::{train, TrainReport, Trained};
use xarena_measure::env;
use xarena_schema::files::{check_new_dir, write_atomic};
use xarena_schema::lock::DirLock;

/// The training configuration beside the checkpoint.
pub const TRAIN_FILE: &str = "train.json";

pub struct TrainArgs {
    pub task: String,
    pub variant: VariantSpec,
    pub out: PathBuf,
    pub settings: RunSettings,
}

/// What every run of `xarena train` and of an `xarena lra` matrix is given besides its
/// task and variant.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub preset: String,
    pub seed: u64,
    pub device: Device,
    /// Overrides the preset's number of steps.
    pub steps: Option<u64>,
    /// LRA's downloaded files, for text, retrieval and image.
    pub data_dir: Option<PathBuf>,
    /// Where generated task data is cached.
    pub cache_dir: PathBuf,
}

/// The most training steps a run may ask for; more is a typo (days per million steps on
/// the tiny preset's CPU pace).
pub const MAX_STEPS: u64 = 100_000_000;

impl RunSettings {
    /// The numeric settings, checked before anything is written (by `train` and by every
    /// `lra` matrix before its directory exists).
    pub fn check(&self) -> Result<()> {
        if let Some(steps) = self.steps {
            anyhow::ensure!(
                (1..=MAX_STEPS).contains(&steps),
                "--steps must be 1 to {MAX_STEPS}, got {steps}"
            );
        }
        Ok(())
    }
}

fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

/// Checks everything, trains, writes `DIR/{model.safetensors, model.json, train.json}`
/// and then `DIR/accuracy.jsonl`.
pub fn train_command(args: &TrainArgs) -> Result<(AccuracyRecord, TrainReport)> {
    // Every input is checked before any work or any file.
    args.settings.check()?;
    let mut preset = preset(&args.settings.preset, &args.task)?;
    let variant = args.variant.normalized()?;
    preset.train.seed = args.settings.seed;
    if let Some(steps) = args.settings.steps {
        preset.train.steps = steps;
        preset.train.warmup_steps = preset.train.warmup_steps.min(steps / 10);
    }
    check_new_dir(&args.out, "--out", "")?;
    let data = task_data(
        &preset,
        args.settings.data_dir.as_deref(),
        &args.settings.cache_dir,
    )?;
    let spec = ModelSpec {
        variant: variant.clone(),
        config: preset.model.clone(),
        vocab: data.vocab,
        classes: data.classes,
        seq_len: data.seq_len,
        batch: preset.train.batch,
        towers: data.towers,
    };
    spec.check()?;

    // Held while training and writing; checked again under it, as another `xarena train`
    // may have taken the directory since the check above.
    let lock = DirLock::acquire(&args.out, "--out")?;
    let trained = check_new_dir(&args.out, "--out", "")
        .and_then(|()| train(&spec, &data, &preset.train, args.settings.device));
    let (trained, report): (Trained, TrainReport) = match trained {
        Ok(t) => t,
        Err(e) => {
            // Nothing was written: no directory is left behind.
            lock.discard_if_unused();
            return Err(e);
        }
    };
    trained.save(&args.out)?;
    let train_json = serde_json::json!({
        "task": args.task,
        "preset": preset,
        "majority_baseline": data.majority_baseline(),
        "report": report,
    });
    let train_path = args.out.join(TRAIN_FILE);
    fs::write(
        &train_path,
        serde_json::to_string_pretty(&train_json)? + "\n",
    )
    .with_context(|| format!("writing {}", train_path.display()))?;
    let line = AccuracyRecord {
        schema: ACCURACY_SCHEMA_VERSION,
        task: args.task.clone(),
        variant: variant.label(),
        accuracy: report.accuracy,
        steps: report.steps,
        seed: args.settings.seed,
        env: env::capture(i64::from(tch::get_num_threads())),
        preset: Some(preset.name.clone()),
        device: Some(device_name(args.settings.device)),
        train_accuracy: Some(report.train_accuracy),
        final_loss: Some(report.final_loss),
        train_seconds: Some(report.train_seconds),
        steps_per_s: Some(report.steps_per_s),
        peak_memory_bytes: report.peak_memory_bytes,
        memory_method: Some(report.memory_method.clone()),
        parameters: Some(report.parameters),
    };
    let text = serde_json::to_string(&line)? + "\n";
    write_atomic(&args.out.join(ACCURACY_FILE), text.as_bytes())?;
    Ok((line, report))
}
