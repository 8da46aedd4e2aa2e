//! The training loop: seeded mini-batches, AdamW, linear warm-up then cosine or linear
//! decay, gradient clipping by global norm, held-out accuracy, checkpoints.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use super::classifier::{Classifier, ModelSpec};
use super::device::{clip_grad_norm, upload, LossLog, LOSS_READ_EVERY};
use super::{Example, TaskData};
use xarena_measure::memory;

/// The learning rate's decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decay {
    /// Half a cosine from the peak to `min_lr_ratio x peak`.
    Cosine,
    /// A straight line to the same floor.
    Linear,
    /// `lr x sqrt(warmup / step)` after warm-up (Flax's `rsqrt_decay`, LRA's text
    /// tasks); `min_lr_ratio` is not used.
    Rsqrt,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch: i64,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: u64,
    pub decay: Decay,
    /// The learning rate at the last step, as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay (on every parameter).
    pub weight_decay: f64,
    /// Gradients are scaled down when their global L2 norm exceeds this (0: no clipping).
    pub clip_norm: f64,
    /// Seeds the initial weights, dropout and the order of mini-batches.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 300,
            batch: 32,
            lr: 1e-3,
            warmup_steps: 30,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            clip_norm: 1.0,
            seed: 0,
        }
    }
}

impl TrainConfig {
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.steps >= 1 && self.batch >= 1,
            "training: steps and batch must be at least 1"
        );
        anyhow::ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "training: lr must be positive"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "training: min_lr_ratio must be in [0, 1]"
        );
        anyhow::ensure!(
            self.weight_decay >= 0.0 && self.clip_norm >= 0.0,
            "training: weight_decay and clip_norm must be >= 0"
        );
        Ok(())
    }

    /// The learning rate of step `step` (0-based): linear warm-up over `warmup_steps` to
    /// `lr`, then the decay to `min_lr_ratio x lr` at the last step.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let shape = match self.decay {
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            Decay::Linear => 1.0 - t,
            Decay::Rsqrt => {
                return self.lr * (self.warmup_steps.max(1) as f64 / (step + 1) as f64).sqrt()
            }
        };
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape)
    }
}

/// A built classifier with its parameters.
pub struct Trained {
    pub vs: nn::VarStore,
    pub model: Classifier,
}

/// File names inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MODEL_FILE: &str = "model.json";

impl Trained {
    /// A fresh model: weights from `seed` (LibTorch's generator is seeded first).
    pub fn init(spec: &ModelSpec, seed: u64, device: Device) -> Result<Trained> {
        spec.check()?;
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        let model = Classifier::new(&vs.root(), spec)?;
        Ok(Trained { vs, model })
    }

    /// Writes `model.safetensors` and `model.json` (the [`ModelSpec`] that rebuilds it)
    /// into `dir`, which must exist.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let spec = serde_json::to_string_pretty(self.model.spec())?;
        std::fs::write(dir.join(MODEL_FILE), spec + "\n")
            .with_context(|| format!("writing {}", dir.join(MODEL_FILE).display()))?;
        self.vs
            .save(dir.join(WEIGHTS_FILE))
            .with_context(|| format!("writing {}", dir.join(WEIGHTS_FILE).display()))
    }

    /// Rebuilds the model from `dir/model.json` and loads `dir/model.safetensors` (the
    /// rebuild reseeds LibTorch's generator with 0 before the weights are replaced).
    pub fn load(dir: &Path, device: Device) -> Result<Trained> {
        let path = dir.join(MODEL_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let spec: ModelSpec =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut t = Trained::init(&spec, 0, device)?;
        t.vs.load(dir.join(WEIGHTS_FILE))
            .with_context(|| format!("loading {}", dir.join(WEIGHTS_FILE).display()))?;
        Ok(t)
    }

    /// Logits for `examples`, in order, padded to the built batch and evaluated without
    /// gradients.
    pub fn logits(&self, examples: &[Example]) -> Tensor {
        let spec = self.model.spec();
        let batch = spec.batch as usize;
        let device = self.vs.device();
        if examples.is_empty() {
            return Tensor::zeros([0, i64::from(spec.classes)], (Kind::Float, device));
        }
        let parts: Vec<Tensor> = examples
            .chunks(batch)
            .map(|chunk| {
                let refs: Vec<&Example> =
                    (0..batch).map(|i| &chunk[i.min(chunk.len() - 1)]).collect();
                let (tokens, _) = to_tensors(&refs, device);
                tch::no_grad(|| self.model.forward_t(&tokens, false)).narrow(
                    0,
                    0,
                    chunk.len() as i64,
                )
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// The fraction of `examples` classified correctly.
    pub fn accuracy(&self, examples: &[Example]) -> f64 {
        if examples.is_empty() {
            return 0.0;
        }
        let predicted = self.logits(examples).argmax(-1, false);
        let labels = Tensor::from_slice(
            &examples
                .iter()
                .map(|e| i64::from(e.label))
                .collect::<Vec<_>>(),
        )
        .to_device(predicted.device());
        let correct = predicted
            .eq_tensor(&labels)
            .sum(Kind::Int64)
            .int64_value(&[]);
        correct as f64 / examples.len() as f64
    }
}

/// Tokens `[b, N]` and labels `[b]`, int64 on `device`.
fn to_tensors(examples: &[&Example], device: Device) -> (Tensor, Tensor) {
    let n = examples[0].tokens.len() as i64;
    let flat: Vec<i64> = examples
        .iter()
        .flat_map(|e| e.tokens.iter().map(|&t| i64::from(t)))
        .collect();
    let labels: Vec<i64> = examples.iter().map(|e| i64::from(e.label)).collect();
    (
        upload(
            Tensor::from_slice(&flat).view([examples.len() as i64, n]),
            device,
        ),
        upload(Tensor::from_slice(&labels), device),
    )
}

/// What a training run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Held-out (test split) accuracy after the last step, 0 to 1.
    pub accuracy: f64,
    /// Accuracy on (up to) as many training examples as the test split holds.
    pub train_accuracy: f64,
    pub steps: u64,
    /// Mean cross-entropy over the last 10% of steps.
    pub final_loss: f64,
    pub train_seconds: f64,
    pub steps_per_s: f64,
    /// Peak memory of the training loop above what was held before it, and how it was
    /// measured (`cpu-rss` or `cuda-allocator`, measure/src/memory.rs).
    pub peak_memory_bytes: Option<u64>,
    pub memory_method: String,
    pub parameters: i64,
}

/// Trains a fresh classifier for `spec` on `task` and evaluates it on the test split.
pub fn train(
    spec: &ModelSpec,
    task: &TaskData,
    cfg: &TrainConfig,
    device: Device,
) -> Result<(Trained, TrainReport)> {
    task.validate()?;
    cfg.check()?;
    anyhow::ensure!(
        spec.batch == cfg.batch,
        "the model is built for batch {} but training uses {}",
        spec.batch,
        cfg.batch
    );
    anyhow::ensure!(
        spec.vocab == task.vocab && spec.classes == task.classes && spec.seq_len == task.seq_len,
        "the model's vocab/classes/seq_len do not match task `{}`",
        task.name
    );
    let trained = Trained::init(spec, cfg.seed, device)?;
    let parameters: i64 = trained
        .vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .map(|n| n as i64)
        .sum();
    let mut opt = nn::AdamW {
        wd: cfg.weight_decay,
        ..Default::default()
    }
    .build(&trained.vs, cfg.lr_at(0))?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let batch = cfg.batch as usize;
    let tail = (cfg.steps / 10).max(1);
    let mut tail_loss = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let vars = opt.trainable_variables();
    // Batches in the order of the draws, whether drawn at their step or one ahead.
    let mut draw = || {
        let picked: Vec<&Example> = (0..batch)
            .map(|_| &task.train[rng.gen_range(0..task.train.len())])
            .collect();
        to_tensors(&picked, device)
    };
    let mut losses = LossLog::default();
    let start = Instant::now();
    let probe = memory::probe(device, || {
        let mut next = None;
        for step in 0..cfg.steps {
            opt.set_lr(cfg.lr_at(step));
            let (tokens, labels) = next.take().unwrap_or_else(&mut draw);
            // On CUDA the next batch is built and on its way while this step runs.
            if device.is_cuda() && step + 1 < cfg.steps {
                next = Some(draw());
            }
            let logits = trained.model.forward_t(&tokens, true);
            let loss = logits.cross_entropy_for_logits(&labels);
            // Kept on the device: reading it would wait for the step to finish.
            losses.push(step, &loss);
            opt.zero_grad();
            loss.backward();
            if cfg.clip_norm > 0.0 {
                clip_grad_norm(&vars, cfg.clip_norm);
            }
            opt.step();
            if losses.len() < LOSS_READ_EVERY && step + 1 < cfg.steps {
                continue;
            }
            // A non-finite loss stops the run when read (up to LOSS_READ_EVERY steps
            // late), named with the step it appeared at.
            for (s, value) in losses.read() {
                if !value.is_finite() {
                    failure = Some(anyhow::anyhow!("the loss is {value} at step {s}"));
                    return;
                }
                if s + tail >= cfg.steps {
                    tail_loss.push(value);
                }
            }
        }
    });
    let train_seconds = start.elapsed().as_secs_f64();
    if let Some(e) = failure {
        return Err(e);
    }
    let peak_memory_bytes = match probe {
        Ok(p) => Some(p.peak_bytes),
        Err(e) => {
            eprintln!("xarena: peak memory not measured: {e}");
            None
        }
    };
    let accuracy = trained.accuracy(&task.test);
    let seen = &task.train[..task.train.len().min(task.test.len())];
    let train_accuracy = trained.accuracy(seen);
    let report = TrainReport {
        accuracy,
        train_accuracy,
        steps: cfg.steps,
        final_loss: tail_loss.iter().sum::<f64>() / tail_loss.len().max(1) as f64,
        train_seconds,
        steps_per_s: cfg.steps as f64 / train_seconds.max(1e-9),
        peak_memory_bytes,
        memory_method: memory::method(device).to_string(),
        parameters,
    };
    Ok((trained, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_the_floor() {
        for decay in [Decay::Cosine, Decay::Linear] {
            let c = TrainConfig {
                steps: 100,
                warmup_steps: 10,
                lr: 1.0,
                min_lr_ratio: 0.1,
                decay,
                ..Default::default()
            };
            assert!((c.lr_at(0) - 0.1).abs() < 1e-12);
            assert!((c.lr_at(9) - 1.0).abs() < 1e-12);
            assert!((c.lr_at(10) - 1.0).abs() < 1e-12);
            assert!((c.lr_at(100) - 0.1).abs() < 1e-12);
            let lrs: Vec<f64> = (10..100).map(|s| c.lr_at(s)).collect();
            assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{decay:?} decays");
        }
        let c = TrainConfig {
            steps: 100,
            warmup_steps: 10,
            lr: 1.0,
            decay: Decay::Rsqrt,
            ..Default::default()
        };
        assert!((c.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(39) - 0.5).abs() < 1e-12, "sqrt(10 / 40)");
    }
}
