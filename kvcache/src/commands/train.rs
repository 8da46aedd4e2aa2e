//! `xarena kv train`: a small Llama-architecture decoder trained from scratch on the
//! decoding tasks (passkey, recall, MQAR), so the cache policies have a model that needs
//! what they might evict.
//!
//! Each step takes one task (in turn) and one prompt length (drawn log-uniformly between
//! `min_context` and `context`: short prompts teach the lookup within seconds, and a
//! model that learned it there reads it back from hundreds of tokens), a batch of fresh examples from the task's training stream,
//! and the next-token loss on the answer tokens the model must produce (the prompt's
//! tokens, random filler, weigh `prompt_weight`, 0 by default: they cannot be learned and
//! only slow the answers down). AdamW, linear warm-up then cosine decay, clipping: the
//! classifier trainer's schedule (`xarena_training::trainer::TrainConfig`).
//!
//! Everything is checked first; the model is written into a temporary sibling directory
//! and renamed into place with `train.json` (the held-out full-cache score per task)
//! inside, so `--out` either holds a complete model or nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::policy::Full;
use crate::{save_checkpoint, DecoderLm, LmConfig};
use anyhow::{Context, Result};
use rand::Rng;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use xarena_datasets::lm_tasks::{LmExample, LmSplit, LmTask, LmTaskConfig};

use super::model_dir::{preset, TrainInfo, TRAIN_FILE, TRAIN_SCHEMA_VERSION};
use super::{check_new_dir, write_json_atomic};
use crate::eval::decode_all;
use xarena_measure::env;
use xarena_training::device::{clip_grad_norm, upload, LossLog, LOSS_READ_EVERY};
use xarena_training::trainer::{Decay, TrainConfig};

/// Everything `xarena kv train` takes.
#[derive(Debug, Clone)]
pub struct KvTrainArgs {
    pub tasks: Vec<LmTask>,
    pub task_config: LmTaskConfig,
    pub context: usize,
    /// The held-out prompts' length; `None`: `context`.
    pub eval_context: Option<usize>,
    /// `None`: the shortest context every task fits in, at least 16.
    pub min_context: Option<usize>,
    pub out: PathBuf,
    /// A preset of [`preset`].
    pub config: String,
    pub layers: Option<i64>,
    pub hidden: Option<i64>,
    pub heads: Option<i64>,
    pub kv_heads: Option<i64>,
    pub steps: u64,
    pub batch: i64,
    pub lr: f64,
    pub prompt_weight: f64,
    pub seed: u64,
    /// Held-out examples per task for the final score.
    pub eval_examples: usize,
    /// Print progress every this many steps (0: never).
    pub log_every: u64,
    pub device: Device,
}

impl Default for KvTrainArgs {
    fn default() -> Self {
        KvTrainArgs {
            tasks: vec![LmTask::Passkey, LmTask::Recall, LmTask::Mqar],
            task_config: LmTaskConfig::default(),
            context: 128,
            eval_context: None,
            min_context: None,
            out: PathBuf::from("results/kv/model"),
            config: "small".into(),
            layers: None,
            hidden: None,
            heads: None,
            kv_heads: None,
            steps: 3000,
            batch: 16,
            lr: 1e-3,
            prompt_weight: 0.0,
            seed: 0,
            eval_examples: 100,
            log_every: 100,
            device: Device::Cpu,
        }
    }
}

impl KvTrainArgs {
    /// The model's config: the preset, the overrides, the tasks' vocabulary.
    pub fn model_config(&self) -> Result<(LmConfig, String)> {
        let mut cfg = preset(&self.config)?;
        let mut label = self.config.clone();
        for (name, value, field) in [
            ("layers", self.layers, &mut cfg.num_hidden_layers),
            ("hidden", self.hidden, &mut cfg.hidden_size),
            ("heads", self.heads, &mut cfg.num_attention_heads),
            ("kv-heads", self.kv_heads, &mut cfg.num_key_value_heads),
        ] {
            if let Some(v) = value {
                *field = v;
                label.push_str(&format!("+{name}={v}"));
            }
        }
        if self.hidden.is_some() {
            // SwiGLU's usual 8/3 width, rounded to 16.
            cfg.intermediate_size = (cfg.hidden_size * 8 / 3 + 15) / 16 * 16;
        }
        cfg.vocab_size = i64::from(self.task_config.vocab_size());
        cfg.max_position_embeddings = cfg
            .max_position_embeddings
            .max(self.context.max(self.eval_context()) as i64 * 2);
        cfg.check().context("the model's shape")?;
        Ok((cfg, label))
    }

    pub fn eval_context(&self) -> usize {
        self.eval_context.unwrap_or(self.context)
    }

    pub fn min_context(&self) -> usize {
        self.min_context.unwrap_or_else(|| {
            self.tasks
                .iter()
                .map(|t| t.min_context(&self.task_config))
                .max()
                .unwrap_or(1)
                .max(16)
                .min(self.context)
        })
    }

    pub fn schedule(&self) -> TrainConfig {
        TrainConfig {
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            warmup_steps: (self.steps / 10).max(1),
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            clip_norm: 1.0,
            seed: self.seed,
        }
    }

    /// Every check that needs no work.
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(!self.tasks.is_empty(), "--tasks: name at least one task");
        self.task_config.validate()?;
        for t in &self.tasks {
            let least = t.min_context(&self.task_config);
            for (flag, c) in [
                ("--context", self.context),
                ("--eval-context", self.eval_context()),
            ] {
                anyhow::ensure!(
                    c >= least,
                    "{flag} {c}: task {t} needs at least {least} tokens"
                );
            }
        }
        let min = self.min_context();
        anyhow::ensure!(
            min <= self.context,
            "--min-context {min} exceeds --context {}",
            self.context
        );
        for t in &self.tasks {
            let least = t.min_context(&self.task_config);
            anyhow::ensure!(
                min >= least,
                "--min-context {min}: task {t} needs at least {least} tokens"
            );
        }
        anyhow::ensure!(
            self.prompt_weight.is_finite() && self.prompt_weight >= 0.0,
            "--prompt-weight must be >= 0, got {}",
            self.prompt_weight
        );
        anyhow::ensure!(
            self.eval_examples >= 1,
            "--eval-examples must be at least 1"
        );
        self.schedule().check()?;
        self.model_config()?;
        check_new_dir(&self.out, "--out", "")
    }
}

/// Input tokens, targets and per-position loss weights of a batch of equal-length
/// examples: `[b, len - 1]` each.
fn batch_tensors(xs: &[LmExample], prompt_weight: f64, device: Device) -> (Tensor, Tensor, Tensor) {
    let len = xs[0].prompt.len() + xs[0].answer.len();
    let mut tokens = Vec::with_capacity(xs.len() * len);
    let mut weights = Vec::with_capacity(xs.len() * (len - 1));
    for x in xs {
        tokens.extend(x.tokens().iter().map(|&t| i64::from(t)));
        // Position i predicts token i + 1.
        let p = x.prompt.len();
        for i in 0..len - 1 {
            let target = i + 1;
            let w = if target >= p && !x.given[target - p] {
                1.0
            } else {
                prompt_weight
            };
            weights.push(w as f32);
        }
    }
    let t = upload(
        Tensor::from_slice(&tokens).view([xs.len() as i64, len as i64]),
        device,
    );
    let w = upload(
        Tensor::from_slice(&weights).view([xs.len() as i64, len as i64 - 1]),
        device,
    );
    let n = len as i64 - 1;
    (t.narrow(1, 0, n), t.narrow(1, 1, n), w)
}

/// The weighted mean next-token cross-entropy.
fn loss(lm: &DecoderLm, inputs: &Tensor, targets: &Tensor, weights: &Tensor) -> Tensor {
    let logp = lm.forward(inputs).log_softmax(-1, Kind::Float);
    let nll = -logp
        .gather(-1, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    (nll * weights).sum(Kind::Float) / weights.sum(Kind::Float).clamp_min(1e-9)
}

/// Teacher-forced accuracy on the scored answer tokens (for progress lines; the held-out
/// score decodes greedily instead).
fn forced_accuracy(lm: &DecoderLm, xs: &[LmExample], device: Device) -> f64 {
    tch::no_grad(|| {
        let (inputs, targets, w) = batch_tensors(xs, 0.0, device);
        let hit = lm.forward(&inputs).argmax(-1, false).eq_tensor(&targets);
        let w = w.gt(0.5);
        let right = hit.logical_and(&w).sum(Kind::Int64).int64_value(&[]);
        right as f64 / w.sum(Kind::Int64).int64_value(&[]).max(1) as f64
    })
}

/// What `kv train` did.
pub struct TrainedLm {
    pub info: TrainInfo,
    pub out: PathBuf,
}

/// Checks everything, trains, writes the model directory.
pub fn train_command(args: &KvTrainArgs) -> Result<TrainedLm> {
    args.check()?;
    let (cfg, label) = args.model_config()?;
    let schedule = args.schedule();
    let device = args.device;
    let min_context = args.min_context();

    tch::manual_seed(args.seed as i64);
    let vs = nn::VarStore::new(device);
    let lm = DecoderLm::new(&vs.root(), &cfg)?;
    let parameters: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    let mut opt = nn::AdamW {
        wd: schedule.weight_decay,
        ..Default::default()
    }
    .build(&vs, schedule.lr_at(0))?;
    let mut streams: Vec<_> = args
        .tasks
        .iter()
        .map(|t| t.stream(args.seed, LmSplit::Train))
        .collect();
    let mut lengths = xarena_datasets::task::rng(args.seed, 1 << 20);
    let probe: Vec<Vec<LmExample>> = args
        .tasks
        .iter()
        .map(|t| {
            t.examples(
                &args.task_config,
                args.context,
                64,
                args.seed,
                LmSplit::Valid,
            )
        })
        .collect::<Result<_>>()?;
    eprintln!(
        "xarena kv train: {label} ({parameters} parameters), tasks {}, prompts of \
         {min_context}-{} tokens, {} steps of {}",
        args.tasks
            .iter()
            .map(LmTask::name)
            .collect::<Vec<_>>()
            .join(","),
        args.context,
        schedule.steps,
        schedule.batch
    );
    let tail = (schedule.steps / 10).max(1);
    let mut tail_loss = Vec::new();
    let vars = opt.trainable_variables();
    // Step `step`'s batch; the draws stay in step order whether made at the step or one
    // ahead of it.
    let mut draw = |step: u64| {
        let k = step as usize % args.tasks.len();
        let task = args.tasks[k];
        // Log-uniform: most steps short (cheap, and the lookup is learned there), enough
        // long ones for it to hold at length.
        let u: f64 = lengths.gen();
        let n = ((min_context as f64) * (args.context as f64 / min_context as f64).powf(u))
            .round()
            .clamp(min_context as f64, args.context as f64) as usize;
        let xs: Vec<LmExample> = (0..schedule.batch)
            .map(|_| task.draw(&args.task_config, n, &mut streams[k]))
            .collect();
        batch_tensors(&xs, args.prompt_weight, device)
    };
    let mut next = None;
    let mut losses = LossLog::default();
    let mut value = f64::NAN;
    let start = Instant::now();
    for step in 0..schedule.steps {
        opt.set_lr(schedule.lr_at(step));
        let (inputs, targets, w) = next.take().unwrap_or_else(|| draw(step));
        // On CUDA the next batch is built and on its way while this step runs.
        if device.is_cuda() && step + 1 < schedule.steps {
            next = Some(draw(step + 1));
        }
        let l = loss(&lm, &inputs, &targets, &w);
        // Kept on the device: reading it would wait for the step to finish.
        losses.push(step, &l);
        opt.zero_grad();
        l.backward();
        clip_grad_norm(&vars, schedule.clip_norm);
        opt.step();
        let log =
            args.log_every > 0 && ((step + 1) % args.log_every == 0 || step + 1 == schedule.steps);
        if log || losses.len() >= LOSS_READ_EVERY || step + 1 == schedule.steps {
            // A non-finite loss stops the run when read (up to LOSS_READ_EVERY steps
            // late), named with the step it appeared at.
            for (s, v) in losses.read() {
                anyhow::ensure!(v.is_finite(), "the loss is {v} at step {s}");
                if s + tail >= schedule.steps {
                    tail_loss.push(v);
                }
                value = v;
            }
        }
        if log {
            let acc: Vec<String> = args
                .tasks
                .iter()
                .zip(&probe)
                .map(|(t, xs)| format!("{t} {:.2}", forced_accuracy(&lm, xs, device)))
                .collect();
            eprintln!(
                "  step {:>5}  {:>6.1} s  loss {value:.3}  held-out (teacher-forced): {}",
                step + 1,
                start.elapsed().as_secs_f64(),
                acc.join(", ")
            );
        }
    }
    let train_seconds = start.elapsed().as_secs_f64();

    // The held-out score as the benchmark measures it: greedy decoding, full cache.
    let mut held_out = BTreeMap::new();
    let mut chance = BTreeMap::new();
    for task in &args.tasks {
        let xs = task.examples(
            &args.task_config,
            args.eval_context(),
            args.eval_examples,
            args.seed,
            LmSplit::Test,
        )?;
        let (totals, _) = decode_all(&lm, Box::new(Full), &xs, 64);
        held_out.insert(task.name().to_string(), totals.score());
        chance.insert(task.name().to_string(), task.chance());
    }
    let info = TrainInfo {
        schema: TRAIN_SCHEMA_VERSION,
        tasks: args.tasks.clone(),
        task_config: args.task_config.clone(),
        context: args.context,
        eval_context: args.eval_context(),
        min_context,
        preset: label,
        steps: schedule.steps,
        batch: schedule.batch,
        lr: schedule.lr,
        warmup_steps: schedule.warmup_steps,
        prompt_weight: args.prompt_weight,
        seed: args.seed,
        final_loss: tail_loss.iter().sum::<f64>() / tail_loss.len().max(1) as f64,
        train_seconds,
        parameters,
        held_out,
        held_out_examples: args.eval_examples,
        chance,
        env: env::capture(i64::from(tch::get_num_threads())),
    };
    write_model_dir(&args.out, &vs, &cfg, &info)?;
    Ok(TrainedLm {
        info,
        out: args.out.clone(),
    })
}

/// Writes the checkpoint and `train.json` into a temporary sibling of `out`, then
/// renames it to `out` (an empty `out` is removed first).
pub fn write_model_dir(
    out: &Path,
    vs: &nn::VarStore,
    cfg: &LmConfig,
    info: &TrainInfo,
) -> Result<()> {
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: no directory name", out.display()))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(p) = parent {
        fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let tmp = out.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    let write = || -> Result<()> {
        save_checkpoint(&tmp, vs, cfg)?;
        write_json_atomic(&tmp.join(TRAIN_FILE), info)?;
        check_new_dir(out, "--out", "")?;
        let _held = xarena_schema::lock::DirLock::take_over_empty(out, "--out")?;
        if out.exists() {
            fs::remove_dir(out)
                .with_context(|| format!("replacing the empty {}", out.display()))?;
        }
        fs::rename(&tmp, out)
            .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
    };
    // Nothing half-written is left beside `out` (a full disk, a directory taken since).
    write().inspect_err(|_| {
        let _ = fs::remove_dir_all(&tmp);
    })
}
