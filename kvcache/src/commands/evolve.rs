//! `xarena kv evolve`: CMA-ES over a NAMM's parameters with the model frozen (Cetin et al.
//! 2024). A member's fitness is the model's score with the NAMM managing its cache
//! divided by the full cache's score on the same prompts, averaged over the stage's tasks
//! (minus `memory_weight` x the mean fraction of the cache kept, 0 by default as in the
//! paper). The search starts at the zero vector, which scores every token 0 and so keeps
//! everything.
//!
//! Stages add tasks (incremental learning). By default, as the reference
//! (SakanaAI/evo-memory), a stage continues the previous stage's CMA-ES (mean, covariance,
//! step size, evolution paths; [`StageStart::Continue`]); `--stage-start restart` starts a
//! fresh one (σ₀, an identity covariance) at the previous stage's mean, as xarena did
//! before. By default the prompts are drawn anew every generation (seed + the generation's
//! number in the whole run, [`PromptSampling::Resample`]), as the reference's task sampler
//! does; `--prompts fixed` keeps the seed's prompts for the whole run, as xarena did
//! before. A member's fitness is normalised by the full cache's score on the same prompts.
//! The normalisation statistics of the NAMM's features are collected once, while the zero
//! mean is evaluated on the seed's prompts of the first stage before generation 0, then
//! frozen for every member after. `evolve.json` (`setup`) and `namm.json` record which
//! behaviours (and which [`Selection`]) were used.
//!
//! After every generation the whole state is checkpointed: `evolve.json` (the settings,
//! the stage, CMA-ES's state without its two n x n matrices, the statistics, the best
//! member, the fitness history) and `cmaes-<generation>.f64` (C and B, raw little-endian
//! float64, about 280 MB at NAMM's 4172 parameters), and the result `namm.json` (the
//! mean: the paper evaluates the mean, not the best member). Each file is written to a
//! temporary name and renamed; `evolve.json`, written after the matrices it names, is the
//! commit point, so a run killed at any moment resumes (`--resume`) from its last
//! generation exactly: prompts are a function of the seed and the generation, the
//! statistics frozen, and CMA-ES's samples keyed by generation.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::policy::namm::{Namm, NammConfig, NormStats, Selection, SharedNormStats};
use crate::policy::Full;
use crate::DecoderLm;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};
use xarena_datasets::lm_tasks::{LmExample, LmSplit, LmTask, LmTaskConfig};

use super::model_dir::{load_model, LoadedModel};
use super::{check_new_dir, read_json, write_atomic, write_json_atomic};
use crate::cmaes::{Cmaes, CmaesSettings};
use crate::eval::decode_all;

pub const EVOLVE_FILE: &str = "evolve.json";
pub const NAMM_FILE: &str = "namm.json";
/// 2: the selection, stage start and prompt sampling recorded (schema 1 files were made
/// per head, restarting at the mean, on fixed prompts, and are read as such).
pub const EVOLVE_SCHEMA_VERSION: u32 = 2;
pub const NAMM_SCHEMA_VERSION: u32 = 2;

/// How a stage after the first starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StageStart {
    /// The previous stage's CMA-ES goes on: mean, covariance, step size, evolution paths
    /// and generation count (the reference's).
    #[default]
    Continue,
    /// A fresh CMA-ES (σ₀, identity covariance, zero paths) at the previous stage's mean
    /// (xarena before; the figures in `docs/results/kv-cpu`).
    Restart,
}

/// Which prompts a generation is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PromptSampling {
    /// New prompts every generation, drawn with seed + the generation's number in the
    /// whole run (the reference's).
    #[default]
    Resample,
    /// The seed's prompts for every generation (xarena before; the figures in
    /// `docs/results/kv-cpu`).
    Fixed,
}

impl PromptSampling {
    /// The seed of the prompts of generation `generation` (counted over the whole run).
    pub fn seed(self, seed: u64, generation: u64) -> u64 {
        match self {
            PromptSampling::Resample => seed.wrapping_add(generation),
            PromptSampling::Fixed => seed,
        }
    }
}

/// The CMA-ES a stage after the first starts with, from the previous stage's.
pub fn next_stage(prev: Cmaes, start: StageStart, settings: &CmaesSettings) -> Result<Cmaes> {
    match start {
        StageStart::Continue => Ok(prev),
        StageStart::Restart => Cmaes::with_mean(prev.mean().to_vec(), settings.clone()),
    }
}

fn legacy_stage_start() -> StageStart {
    StageStart::Restart
}

fn legacy_prompts() -> PromptSampling {
    PromptSampling::Fixed
}

/// Everything `xarena kv evolve` takes.
#[derive(Debug, Clone)]
pub struct EvolveArgs {
    pub model: PathBuf,
    /// The tasks of each stage, in order (a single stage: `--tasks`).
    pub stages: Vec<Vec<LmTask>>,
    /// Generations per stage (one value: every stage).
    pub generations: Vec<u64>,
    pub out: PathBuf,
    pub population: usize,
    pub sigma: f64,
    pub update_every: i64,
    /// The NAMM's attention width (`hidden_dim`; 32 in the paper).
    pub namm_hidden: i64,
    /// Prompts per task, the same for every member of a generation.
    pub examples: usize,
    /// Prompt length; `None`: the model's held-out context (256 without `train.json`).
    pub context: Option<usize>,
    pub chunk: usize,
    pub seed: u64,
    pub memory_weight: f64,
    /// How the NAMM's scores select tokens.
    pub selection: Selection,
    pub stage_start: StageStart,
    pub prompts: PromptSampling,
    pub resume: bool,
    /// Stop after the generation that ends past this many minutes (resumable).
    pub max_minutes: Option<f64>,
    pub device: Device,
}

impl Default for EvolveArgs {
    fn default() -> Self {
        EvolveArgs {
            model: PathBuf::new(),
            stages: vec![vec![LmTask::Passkey]],
            generations: vec![4],
            out: PathBuf::new(),
            population: 32,
            sigma: 0.065,
            update_every: 32,
            namm_hidden: NammConfig::default().hidden_dim,
            examples: 8,
            context: None,
            chunk: 32,
            seed: 0,
            memory_weight: 0.0,
            selection: Selection::default(),
            stage_start: StageStart::default(),
            prompts: PromptSampling::default(),
            resume: false,
            max_minutes: None,
            device: Device::Cpu,
        }
    }
}

/// What must be the same for a run to resume: a checkpoint of other settings is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvolveSetup {
    pub model: String,
    pub model_fingerprint: String,
    pub stages: Vec<Vec<LmTask>>,
    pub cmaes: CmaesSettings,
    pub namm: NammConfig,
    pub task_config: LmTaskConfig,
    pub examples: usize,
    pub context: usize,
    pub chunk: usize,
    pub seed: u64,
    pub memory_weight: f64,
    /// Absent (schema 1): `restart`.
    #[serde(default = "legacy_stage_start")]
    pub stage_start: StageStart,
    /// Absent (schema 1): `fixed`.
    #[serde(default = "legacy_prompts")]
    pub prompts: PromptSampling,
}

/// One generation's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationLog {
    pub stage: usize,
    /// Within the stage, from 0.
    pub generation: u64,
    pub fitness_max: f64,
    pub fitness_mean: f64,
    pub fitness_min: f64,
    /// The mean's fitness after this generation's update, and its cache kept.
    pub mean_fitness: f64,
    pub mean_retained: f64,
    /// Per task: the mean's score / the full cache's.
    pub mean_ratios: BTreeMap<String, f64>,
    pub sigma: f64,
    /// The seed of this generation's prompts, and the full cache's score per task on
    /// them (absent with fixed prompts: `EvolveState::full_scores`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_seed: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub full_scores: BTreeMap<String, f64>,
    pub seconds: f64,
}

/// The best member ever evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestMember {
    pub stage: usize,
    pub generation: u64,
    pub fitness: f64,
    pub params: Vec<f64>,
}

/// `evolve.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvolveState {
    pub schema: u32,
    pub setup: EvolveSetup,
    /// Generations per stage the last invocation asked for.
    pub generations: Vec<u64>,
    /// The stage under way, and its completed generations.
    pub stage: usize,
    pub stage_generation: u64,
    /// CMA-ES without C and B (they are in `matrices`).
    pub cmaes: Cmaes,
    pub matrices: String,
    pub stats: NormStats,
    /// The full cache's score per task on the seed's prompts.
    pub full_scores: BTreeMap<String, f64>,
    pub best: Option<BestMember>,
    pub history: Vec<GenerationLog>,
    pub finished: bool,
}

/// `namm.json`: an evolved NAMM, ready for `kv bench --namm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvolvedNamm {
    pub schema: u32,
    pub config: NammConfig,
    /// Frozen normalisation statistics.
    pub stats: NormStats,
    /// The CMA-ES mean, in the order of `namm::param_layout`.
    pub params: Vec<f32>,
    /// Where it comes from: model, stages, generations done, the mean's last fitness.
    pub model: String,
    pub model_fingerprint: String,
    pub stages: Vec<Vec<LmTask>>,
    pub generations: u64,
    pub fitness: Option<f64>,
    /// How it was evolved (absent, schema 1: `restart` and `fixed`); the selection is in
    /// `config`.
    #[serde(default = "legacy_stage_start")]
    pub stage_start: StageStart,
    #[serde(default = "legacy_prompts")]
    pub prompts: PromptSampling,
}

impl EvolvedNamm {
    /// Reads `path` (a `namm.json`, or a directory holding one).
    pub fn read(path: &Path) -> Result<EvolvedNamm> {
        let file = if path.is_dir() {
            path.join(NAMM_FILE)
        } else {
            path.to_path_buf()
        };
        anyhow::ensure!(
            file.is_file(),
            "--namm {}: no {NAMM_FILE} there (xarena kv evolve writes it)",
            path.display()
        );
        let mut n: EvolvedNamm = read_json(&file)?;
        anyhow::ensure!(
            n.schema == NAMM_SCHEMA_VERSION || n.schema == 1,
            "{}: schema {} (this xarena reads 1 and {NAMM_SCHEMA_VERSION})",
            file.display(),
            n.schema
        );
        if n.schema == 1 {
            // Made before the selection was a setting: per head.
            n.config.selection = Selection::PerHead;
        }
        // Builds it once, so a bad file fails here, before any work.
        n.policy()?;
        Ok(n)
    }

    /// A fresh policy with the frozen statistics.
    pub fn policy(&self) -> Result<Namm> {
        let mut stats = self.stats.clone();
        stats.freeze(true);
        Ok(Namm::with_stats(
            self.config.clone(),
            &self.params,
            stats.shared(),
        )?)
    }
}

fn to_f32(params: &[f64]) -> Vec<f32> {
    params.iter().map(|&p| p as f32).collect()
}

/// One member's evaluation.
struct Fitness {
    fitness: f64,
    retained: f64,
    ratios: BTreeMap<String, f64>,
}

/// A generation's prompts and the model, for evaluating members.
struct Evaluator<'a> {
    lm: &'a DecoderLm,
    namm: NammConfig,
    prompts: BTreeMap<LmTask, Vec<LmExample>>,
    chunk: usize,
    memory_weight: f64,
}

/// The prompts of every task in `tasks` drawn with `seed`.
pub fn draw_prompts(
    tasks: &[LmTask],
    task_config: &LmTaskConfig,
    context: usize,
    examples: usize,
    seed: u64,
) -> Result<BTreeMap<LmTask, Vec<LmExample>>> {
    tasks
        .iter()
        .map(|&t| {
            t.examples(task_config, context, examples, seed, LmSplit::Valid)
                .map(|xs| (t, xs))
        })
        .collect()
}

impl Evaluator<'_> {
    /// The full cache's score per task on the current prompts.
    fn full_scores(&self, tasks: &[LmTask]) -> BTreeMap<String, f64> {
        tasks
            .iter()
            .map(|t| {
                let (totals, _) = decode_all(self.lm, Box::new(Full), &self.prompts[t], self.chunk);
                (t.name().to_string(), totals.score())
            })
            .collect()
    }

    fn fitness(
        &self,
        params: &[f64],
        stats: &SharedNormStats,
        tasks: &[LmTask],
        full: &BTreeMap<String, f64>,
    ) -> Result<Fitness> {
        let mut policy: Box<dyn crate::CachePolicy> = Box::new(Namm::with_stats(
            self.namm.clone(),
            &to_f32(params),
            stats.clone(),
        )?);
        let mut ratios = BTreeMap::new();
        let mut retained = Vec::new();
        for t in tasks {
            let (totals, p) = decode_all(self.lm, policy, &self.prompts[t], self.chunk);
            policy = p;
            retained.push(totals.mean_retained());
            let f = full[t.name()];
            if f > 0.0 {
                ratios.insert(t.name().to_string(), totals.score() / f);
            }
        }
        let n = ratios.len().max(1) as f64;
        let retained = retained.iter().sum::<f64>() / retained.len().max(1) as f64;
        Ok(Fitness {
            fitness: ratios.values().sum::<f64>() / n - self.memory_weight * retained,
            retained,
            ratios,
        })
    }
}

impl EvolveArgs {
    fn check(&self) -> Result<()> {
        anyhow::ensure!(!self.stages.is_empty(), "name at least one stage of tasks");
        for (i, s) in self.stages.iter().enumerate() {
            anyhow::ensure!(!s.is_empty(), "--stages: stage {} has no task", i + 1);
        }
        anyhow::ensure!(
            self.generations.len() == 1 || self.generations.len() == self.stages.len(),
            "--generations: one value, or one per stage ({} stages, {} values)",
            self.stages.len(),
            self.generations.len()
        );
        anyhow::ensure!(
            self.generations.iter().all(|&g| g >= 1),
            "--generations must be at least 1"
        );
        anyhow::ensure!(self.examples >= 1, "--examples must be at least 1");
        anyhow::ensure!(self.chunk >= 1, "--chunk must be at least 1");
        anyhow::ensure!(
            self.memory_weight.is_finite() && self.memory_weight >= 0.0,
            "--memory-weight must be >= 0, got {}",
            self.memory_weight
        );
        if let Some(m) = self.max_minutes {
            anyhow::ensure!(m > 0.0, "--max-minutes must be positive, got {m}");
        }
        Ok(())
    }

    fn generations_of(&self, stage: usize) -> u64 {
        if self.generations.len() == 1 {
            self.generations[0]
        } else {
            self.generations[stage]
        }
    }

    fn namm_config(&self) -> NammConfig {
        NammConfig {
            update_every: self.update_every,
            hidden_dim: self.namm_hidden,
            selection: self.selection,
            ..NammConfig::default()
        }
    }

    fn cmaes_settings(&self) -> CmaesSettings {
        CmaesSettings {
            population: self.population,
            sigma0: self.sigma,
            seed: self.seed,
            ..CmaesSettings::default()
        }
    }
}

/// The file of the matrices after `generation` completed generations in all.
fn matrices_name(total_generations: usize) -> String {
    format!("cmaes-{total_generations:05}.f64")
}

fn write_matrices(path: &Path, cov: &[f64], basis: &[f64]) -> Result<()> {
    // Through LibTorch: one copy each way, fast even in a debug build (a loop over 35M
    // values is not). LibTorch's layout is the machine's, little-endian on x86 and ARM.
    let bytes = |v: &[f64]| -> Result<Vec<u8>> {
        let t = Tensor::from_slice(v);
        let mut buf = vec![0u8; 8 * v.len()];
        t.f_copy_data_u8(&mut buf, v.len())?;
        Ok(buf)
    };
    let mut all = bytes(cov)?;
    all.extend_from_slice(&bytes(basis)?);
    write_atomic(path, &all)
}

fn read_matrices(path: &Path, dim: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let n2 = dim * dim;
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() == 16 * n2,
        "{}: {} bytes, two {dim} x {dim} float64 matrices need {}",
        path.display(),
        bytes.len(),
        16 * n2
    );
    let t = Tensor::f_from_data_size(&bytes, &[2 * n2 as i64], Kind::Double)?;
    let cov = Vec::<f64>::try_from(&t.narrow(0, 0, n2 as i64))?;
    let basis = Vec::<f64>::try_from(&t.narrow(0, n2 as i64, n2 as i64))?;
    Ok((cov, basis))
}

/// Writes the checkpoint (matrices, then `evolve.json`, then `namm.json`) and removes
/// older matrices files.
fn checkpoint(out: &Path, state: &mut EvolveState, fitness: Option<f64>) -> Result<()> {
    let total: usize = state.history.len();
    let name = matrices_name(total);
    let (cov, basis) = state.cmaes.take_matrices();
    let written = write_matrices(&out.join(&name), &cov, &basis).and_then(|()| {
        state.matrices = name.clone();
        write_json_atomic(&out.join(EVOLVE_FILE), &*state)
    });
    state.cmaes.put_matrices(cov, basis)?;
    written?;
    for entry in fs::read_dir(out)? {
        let entry = entry?;
        let f = entry.file_name().to_string_lossy().to_string();
        if f.starts_with("cmaes-") && f.ends_with(".f64") && f != name {
            fs::remove_file(entry.path())?;
        }
    }
    let namm = EvolvedNamm {
        schema: NAMM_SCHEMA_VERSION,
        config: state.setup.namm.clone(),
        stats: state.stats.clone(),
        params: to_f32(state.cmaes.mean()),
        model: state.setup.model.clone(),
        model_fingerprint: state.setup.model_fingerprint.clone(),
        stages: state.setup.stages.clone(),
        generations: total as u64,
        fitness,
        stage_start: state.setup.stage_start,
        prompts: state.setup.prompts,
    };
    write_json_atomic(&out.join(NAMM_FILE), &namm)
}

/// Reads a checkpoint back, matrices included.
pub fn read_state(out: &Path) -> Result<EvolveState> {
    let path = out.join(EVOLVE_FILE);
    anyhow::ensure!(
        path.is_file(),
        "--resume: {} has no {EVOLVE_FILE} (not an evolve run, or it never finished a \
         generation)",
        out.display()
    );
    let mut state: EvolveState = read_json(&path)?;
    anyhow::ensure!(
        state.schema == EVOLVE_SCHEMA_VERSION || state.schema == 1,
        "{}: schema {} (this xarena reads 1 and {EVOLVE_SCHEMA_VERSION})",
        path.display(),
        state.schema
    );
    if state.schema == 1 {
        // Made before the selection was a setting: per head (the stage start and the
        // prompts read as `restart` and `fixed` by their serde defaults).
        state.setup.namm.selection = Selection::PerHead;
    }
    let (cov, basis) = read_matrices(&out.join(&state.matrices), state.cmaes.dim())?;
    state.cmaes.put_matrices(cov, basis)?;
    Ok(state)
}

/// What `evolve` did in this invocation.
pub struct EvolveOutcome {
    pub state: EvolveState,
    pub generations_run: u64,
    /// Stopped by `--max-minutes` before the last generation.
    pub stopped_early: bool,
}

/// Checks everything, then evolves (or resumes), checkpointing every generation.
pub fn evolve_command(args: &EvolveArgs, mut log: impl FnMut(&str)) -> Result<EvolveOutcome> {
    args.check()?;
    let model: LoadedModel = load_model(&args.model, args.device)?;
    let task_config = model.task_config();
    model.check_tasks(&task_config)?;
    let context = args
        .context
        .or_else(|| model.train.as_ref().map(|t| t.eval_context))
        .unwrap_or(256);
    let mut all_tasks: Vec<LmTask> = args.stages.iter().flatten().copied().collect();
    all_tasks.sort();
    all_tasks.dedup();
    for t in &all_tasks {
        let least = t.min_context(&task_config);
        anyhow::ensure!(
            context >= least,
            "--context {context}: task {t} needs at least {least} tokens"
        );
    }
    let namm = args.namm_config();
    namm.validate()?;
    let settings = args.cmaes_settings();
    let dim = Namm::num_params(&namm);
    // Refuses bad CMA-ES settings before any work.
    Cmaes::new(1, settings.clone())?;
    let setup = EvolveSetup {
        model: model.label(),
        model_fingerprint: model.fingerprint.clone(),
        stages: args.stages.clone(),
        cmaes: settings.clone(),
        namm: namm.clone(),
        task_config: task_config.clone(),
        examples: args.examples,
        context,
        chunk: args.chunk,
        seed: args.seed,
        memory_weight: args.memory_weight,
        stage_start: args.stage_start,
        prompts: args.prompts,
    };
    let check_fresh = || {
        if !args.resume {
            check_new_dir(&args.out, "--out", " (or pass --resume to continue there)")
        } else {
            check_new_dir(&args.out, "--out (nothing to resume there)", "")
        }
    };
    // Refused before anything is written, then checked again under the lock (held until
    // the evolution ends): another evolve may have taken the directory in between.
    if !(args.resume && args.out.join(EVOLVE_FILE).exists()) {
        check_fresh()?;
    }
    let _lock = xarena_schema::lock::DirLock::acquire(&args.out, "--out")?;
    let resumed = if args.resume && args.out.join(EVOLVE_FILE).exists() {
        let state = read_state(&args.out)?;
        if state.setup != setup {
            let a = serde_json::to_value(&state.setup)?;
            let b = serde_json::to_value(&setup)?;
            let diff: Vec<String> = a
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                .map(|(k, v)| format!("{k}: checkpoint {v}, now {}", b[k.as_str()]))
                .collect();
            anyhow::bail!(
                "--resume: {} was evolved with other settings ({}); use the same ones or a \
                 new --out",
                args.out.display(),
                diff.join("; ")
            );
        }
        Some(state)
    } else {
        check_fresh()?;
        None
    };

    let draw = |seed: u64| draw_prompts(&all_tasks, &task_config, context, args.examples, seed);
    let prompts = draw(args.seed)?;
    let mut eval = Evaluator {
        lm: &model.lm,
        namm: namm.clone(),
        prompts,
        chunk: args.chunk,
        memory_weight: args.memory_weight,
    };
    let start = Instant::now();

    let mut state = match resumed {
        Some(mut s) => {
            s.generations = args.generations.clone();
            log(&format!(
                "resuming at stage {} generation {} ({} done in all)",
                s.stage + 1,
                s.stage_generation,
                s.history.len()
            ));
            s
        }
        None => {
            let mut full_scores = BTreeMap::new();
            for &t in &all_tasks {
                let (totals, _) =
                    decode_all(&model.lm, Box::new(Full), &eval.prompts[&t], args.chunk);
                full_scores.insert(t.name().to_string(), totals.score());
                log(&format!(
                    "full cache: {t} {:.3} on {} prompts of {context} tokens",
                    totals.score(),
                    args.examples
                ));
            }
            for stage in &args.stages {
                anyhow::ensure!(
                    stage.iter().any(|t| full_scores[t.name()] > 0.0),
                    "the model scores 0 with the full cache on every task of stage {} ({}): \
                     no fitness to normalise (train it longer, or pick other tasks)",
                    stage.iter().map(LmTask::name).collect::<Vec<_>>().join(","),
                    stage.len()
                );
            }
            // The statistics: the zero mean (keeps everything) on the first stage's prompts.
            let stats = NormStats::default().shared();
            let zero = vec![0.0; dim];
            eval.fitness(&zero, &stats, &args.stages[0], &full_scores)?;
            let mut frozen = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
            frozen.freeze(true);
            log(&format!(
                "normalisation statistics from {} feature rows, frozen",
                frozen.count
            ));
            let mut s = EvolveState {
                schema: EVOLVE_SCHEMA_VERSION,
                setup: setup.clone(),
                generations: args.generations.clone(),
                stage: 0,
                stage_generation: 0,
                cmaes: Cmaes::new(dim, settings.clone())?,
                matrices: String::new(),
                stats: frozen,
                full_scores,
                best: None,
                history: Vec::new(),
                finished: false,
            };
            checkpoint(&args.out, &mut s, None)?;
            s
        }
    };

    let stats = state.stats.clone().shared();
    let mut run = 0u64;
    let mut stopped_early = false;
    loop {
        if state.stage_generation >= args.generations_of(state.stage) {
            if state.stage + 1 >= args.stages.len() {
                state.finished = true;
                break;
            }
            // The next stage: the same CMA-ES going on, or a fresh one at this mean.
            state.stage += 1;
            state.stage_generation = 0;
            let prev = std::mem::replace(&mut state.cmaes, Cmaes::new(1, settings.clone())?);
            state.cmaes = next_stage(prev, args.stage_start, &settings)?;
            log(&format!(
                "stage {}: {}",
                state.stage + 1,
                args.stages[state.stage]
                    .iter()
                    .map(LmTask::name)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            continue;
        }
        state.finished = false;
        if let Some(m) = args.max_minutes {
            if run > 0 && start.elapsed().as_secs_f64() > 60.0 * m {
                stopped_early = true;
                break;
            }
        }
        let t0 = Instant::now();
        let tasks = &args.stages[state.stage];
        let (prompt_seed, full) = match args.prompts {
            PromptSampling::Fixed => (None, state.full_scores.clone()),
            PromptSampling::Resample => {
                let seed = args.prompts.seed(args.seed, state.history.len() as u64);
                eval.prompts = draw(seed)?;
                (Some(seed), eval.full_scores(tasks))
            }
        };
        let members = state.cmaes.ask();
        let mut fitness = Vec::with_capacity(members.len());
        for m in &members {
            fitness.push(eval.fitness(m, &stats, tasks, &full)?.fitness);
        }
        let top = (0..fitness.len())
            .max_by(|&a, &b| fitness[a].total_cmp(&fitness[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        if state.best.as_ref().is_none_or(|b| fitness[top] > b.fitness) {
            state.best = Some(BestMember {
                stage: state.stage,
                generation: state.stage_generation,
                fitness: fitness[top],
                params: members[top].clone(),
            });
        }
        state.cmaes.tell(&fitness)?;
        let at_mean = eval.fitness(state.cmaes.mean(), &stats, tasks, &full)?;
        let n = fitness.len() as f64;
        let entry = GenerationLog {
            stage: state.stage,
            generation: state.stage_generation,
            fitness_max: fitness.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            fitness_mean: fitness.iter().sum::<f64>() / n,
            fitness_min: fitness.iter().copied().fold(f64::INFINITY, f64::min),
            mean_fitness: at_mean.fitness,
            mean_retained: at_mean.retained,
            mean_ratios: at_mean.ratios,
            sigma: state.cmaes.sigma(),
            prompt_seed,
            full_scores: if prompt_seed.is_some() {
                full
            } else {
                BTreeMap::new()
            },
            seconds: t0.elapsed().as_secs_f64(),
        };
        log(&format!(
            "stage {} generation {}: fitness max {:.3} mean {:.3} min {:.3}; the mean: {:.3} \
             keeping {:.1}% of the cache; sigma {:.4}; {:.1} s",
            state.stage + 1,
            state.stage_generation + 1,
            entry.fitness_max,
            entry.fitness_mean,
            entry.fitness_min,
            entry.mean_fitness,
            100.0 * entry.mean_retained,
            entry.sigma,
            entry.seconds
        ));
        let mean_fitness = entry.mean_fitness;
        state.history.push(entry);
        state.stage_generation += 1;
        run += 1;
        checkpoint(&args.out, &mut state, Some(mean_fitness))?;
    }
    if state.finished {
        let fitness = state.history.last().map(|h| h.mean_fitness);
        checkpoint(&args.out, &mut state, fitness)?;
    }
    Ok(EvolveOutcome {
        state,
        generations_run: run,
        stopped_early,
    })
}
