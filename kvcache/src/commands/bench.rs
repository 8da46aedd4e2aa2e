//! `xarena kv bench`: policies x compression ratios x contexts x tasks on a frozen model.
//!
//! A budgeted policy keeps `(1 - ratio) x context` tokens per KV head (kvpress's
//! compression ratio: the fraction of the context removed); `full` and `namm` take no
//! budget and run once per (context, task), NAMM's achieved ratio being measured. `full`
//! always runs first: it is the reference of every normalised score. Every case decodes
//! the same prompts (the test stream of the tasks), and its record is appended to
//! `DIR/kv.jsonl` and flushed as soon as its (context, task) finishes: the cases of one
//! (context, task) run together, and under `--protocol kvpress` each prompt is
//! prefilled once for all of them (the prompt's forward pass is the same whatever a
//! policy evicts afterwards; the records equal those of separate prefills, the prefill
//! time being the shared one plus the policy's own). Everything (policies, budgets,
//! tasks, contexts, the model, the NAMM) is checked before the first case; a directory
//! with records is refused unless `--resume`, which skips the cases already recorded
//! (a last line cut short by a kill is dropped) and refuses another model, NAMM or
//! prompt set.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::policy::{build_policy, policy_info, policy_names, POLICIES};
use crate::CachePolicy;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Device;
use xarena_datasets::lm_tasks::{LmExample, LmSplit, LmTask, LmTaskConfig, LM_TASKS};
use xarena_datasets::ruler::{self, RulerTask};
use xarena_reports::kv::{read_kv, KvRecord, KV_FILE, KV_SCHEMA_VERSION};

use super::evolve::EvolvedNamm;
use super::model_dir::{load_model, LoadedModel};
use super::ruler_text::RulerText;
use super::{check_new_dir, read_json, write_json_atomic};
use crate::eval::{
    decode_all_shared, decode_all_under, decode_text_all_shared, decode_text_all_under, Protocol,
    TextPrompt, Totals,
};
use xarena_measure::env;
use xarena_schema::lock::DirLock;

/// The run's settings beside the records: a resume must match them.
pub const RUN_FILE: &str = "kv-run.json";

/// A task of `kv bench`: a token-level one ([`LmTask`], the models trained here) or a
/// RULER text task ([`RulerTask`], a model directory with a tokenizer.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BenchTask {
    Lm(LmTask),
    Ruler(RulerTask),
}

impl BenchTask {
    pub fn name(&self) -> &'static str {
        match self {
            BenchTask::Lm(t) => t.name(),
            BenchTask::Ruler(t) => t.name(),
        }
    }
}

impl std::fmt::Display for BenchTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BenchTask {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Ok(t) = s.parse::<LmTask>() {
            return Ok(BenchTask::Lm(t));
        }
        RulerTask::parse(s.trim())
            .map(BenchTask::Ruler)
            .with_context(|| {
                format!(
                    "unknown task `{s}` (tasks: {}; RULER, on a model with a tokenizer: {})",
                    LM_TASKS.join(", "),
                    RulerTask::ALL.map(|t| t.name()).join(", ")
                )
            })
    }
}

/// The prompts of one (task, context).
enum Prompts {
    Lm(Vec<LmExample>),
    Text(Vec<TextPrompt>),
}

/// The file RULER cases write their outputs to, one JSON line per example.
pub const RULER_OUTPUTS_FILE: &str = "ruler-outputs.jsonl";

/// Everything `xarena kv bench` takes.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub model: PathBuf,
    pub policies: Vec<String>,
    pub namm: Option<PathBuf>,
    pub ratios: Vec<f64>,
    pub contexts: Vec<usize>,
    pub tasks: Vec<BenchTask>,
    pub examples: usize,
    pub chunk: usize,
    /// How prompts meet the policy (chunked, or kvpress's compress-once).
    pub protocol: Protocol,
    pub seed: u64,
    pub out: PathBuf,
    pub resume: bool,
    pub device: Device,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            model: PathBuf::new(),
            // Every policy buildable by name (not `namm`, which needs --namm).
            policies: POLICIES
                .iter()
                .filter(|p| p.build.is_some())
                .map(|p| p.name.to_string())
                .collect(),
            namm: None,
            ratios: vec![0.25, 0.5, 0.75, 0.875],
            contexts: vec![256, 512],
            tasks: vec![
                BenchTask::Lm(LmTask::Passkey),
                BenchTask::Lm(LmTask::Recall),
                BenchTask::Lm(LmTask::Mqar),
            ],
            examples: 20,
            chunk: 32,
            protocol: Protocol::Chunked,
            seed: 0,
            out: PathBuf::new(),
            resume: false,
            device: Device::Cpu,
        }
    }
}

/// `kv-run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSetup {
    pub model: String,
    pub model_fingerprint: String,
    /// The evolved NAMM's directory and a hash of its file.
    pub namm: Option<String>,
    pub task_config: LmTaskConfig,
    pub examples: usize,
    pub chunk: usize,
    /// Absent in runs made before it existed: chunked.
    #[serde(default)]
    pub protocol: Protocol,
    pub seed: u64,
    /// How RULER prompts were made (`plain` or `chatml`); absent without RULER tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruler_template: Option<String>,
}

/// One case before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct KvCase {
    pub policy: String,
    pub ratio: Option<f64>,
    pub budget: Option<usize>,
    pub context: usize,
    pub task: BenchTask,
}

impl KvCase {
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.policy,
            self.ratio.map_or("-".into(), |r| r.to_string()),
            self.context,
            self.task
        )
    }
}

/// Tokens per KV head a ratio leaves of a context: kvpress's `int((1 - ratio) * n)`, the
/// same floating-point product truncated (at least one).
pub fn budget(ratio: f64, context: usize) -> usize {
    (((1.0 - ratio) * context as f64).floor() as usize).max(1)
}

impl BenchArgs {
    /// The cases in the order they run: per context and task, `full` first.
    pub fn cases(&self) -> Vec<KvCase> {
        let mut out = Vec::new();
        for &context in &self.contexts {
            for &task in &self.tasks {
                let mut push = |policy: &str, ratio: Option<f64>| {
                    out.push(KvCase {
                        policy: policy.to_string(),
                        ratio,
                        budget: ratio.map(|r| budget(r, context)),
                        context,
                        task,
                    })
                };
                push("full", None);
                for p in &self.policies {
                    match p.as_str() {
                        "full" => {}
                        "namm" => push("namm", None),
                        _ => {
                            for &r in &self.ratios {
                                push(p, Some(r));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Every check that needs no model.
    fn check(&self) -> Result<()> {
        anyhow::ensure!(!self.policies.is_empty(), "--policies: name at least one");
        for p in &self.policies {
            anyhow::ensure!(
                policy_info(p).is_some(),
                "--policies: unknown cache policy `{p}` (known: {})",
                policy_names().join(", ")
            );
        }
        let has_namm = self.policies.iter().any(|p| p == "namm");
        anyhow::ensure!(
            !has_namm || self.namm.is_some(),
            "--policies namm needs --namm DIR (an evolved NAMM: xarena kv evolve writes one)"
        );
        anyhow::ensure!(
            has_namm || self.namm.is_none(),
            "--namm is given but `namm` is not among --policies"
        );
        let budgeted = self
            .policies
            .iter()
            .any(|p| policy_info(p).is_some_and(|i| i.budgeted));
        anyhow::ensure!(
            !budgeted || !self.ratios.is_empty(),
            "--ratios: the budgeted policies need at least one"
        );
        for &r in &self.ratios {
            anyhow::ensure!(
                (0.0..1.0).contains(&r),
                "--ratios: {r} is not a fraction of the context to remove in [0, 1)"
            );
        }
        anyhow::ensure!(!self.contexts.is_empty(), "--contexts: name at least one");
        for &c in &self.contexts {
            anyhow::ensure!(
                (1..=MAX_CONTEXT).contains(&c),
                "--contexts: {c} tokens is out of range (1 to {MAX_CONTEXT}, and at most \
                 the model's max_position_embeddings)"
            );
        }
        anyhow::ensure!(!self.tasks.is_empty(), "--tasks: name at least one");
        anyhow::ensure!(self.examples >= 1, "--examples must be at least 1");
        anyhow::ensure!(self.chunk >= 1, "--chunk must be at least 1");
        // Every budgeted policy is built at every budget, so a budget one refuses (too
        // small for streaming-llm's sinks) fails now.
        for case in self.cases() {
            if let Some(b) = case.budget {
                build_policy(&case.policy, Some(b)).with_context(|| {
                    format!(
                        "ratio {} at context {}",
                        case.ratio.unwrap_or(0.0),
                        case.context
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// The longest prompt `kv bench` takes (2^20 tokens): beyond any model it can load, and
/// beyond what its prefill finishes in hours on a CPU.
pub const MAX_CONTEXT: usize = 1 << 20;

/// What `bench` did.
pub struct BenchOutcome {
    pub ran: usize,
    pub skipped: usize,
    pub records: Vec<KvRecord>,
}

fn namm_label(path: &Path, n: &EvolvedNamm) -> String {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    format!(
        "{} (generation {}, evolved on {})",
        dir.file_name()
            .map_or_else(|| dir.display().to_string(), |s| s.to_string_lossy().into()),
        n.generations,
        n.model
    )
}

fn namm_hash(n: &EvolvedNamm) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(n)?;
    Ok(format!("{:x}", Sha256::digest(&bytes))[..16].to_string())
}

/// Checks everything, then runs the cases not yet recorded, appending each record.
pub fn bench_command(args: &BenchArgs, mut log: impl FnMut(&KvRecord)) -> Result<BenchOutcome> {
    args.check()?;
    let namm = match &args.namm {
        Some(p) => Some(EvolvedNamm::read(p)?),
        None => None,
    };
    let model: LoadedModel = load_model(&args.model, args.device)?;
    let task_config = model.task_config();
    model.check_tasks(&task_config)?;
    let positions = model.cfg.max_position_embeddings;
    for &c in &args.contexts {
        anyhow::ensure!(
            c as i64 <= positions,
            "--contexts: {c} tokens is past model {}'s max_position_embeddings ({positions})",
            model.dir.display()
        );
        for t in &args.tasks {
            match t {
                BenchTask::Lm(t) => {
                    let least = t.min_context(&task_config);
                    anyhow::ensure!(
                        c >= least,
                        "--contexts: {c} tokens cannot hold task {t} (at least {least})"
                    );
                }
                BenchTask::Ruler(t) => {
                    let end = c + t.max_new_tokens();
                    anyhow::ensure!(
                        end as i64 <= positions,
                        "--contexts: {c} tokens and {t}'s {} answer tokens are past model \
                         {}'s max_position_embeddings ({positions})",
                        t.max_new_tokens(),
                        model.dir.display()
                    );
                }
            }
        }
    }
    let text = if args.tasks.iter().any(|t| matches!(t, BenchTask::Ruler(_))) {
        Some(RulerText::load(&args.model)?)
    } else {
        None
    };
    let setup = RunSetup {
        model: model.label(),
        model_fingerprint: model.fingerprint.clone(),
        namm: match (&namm, &args.namm) {
            (Some(n), Some(p)) => Some(format!("{} {}", namm_label(p, n), namm_hash(n)?)),
            _ => None,
        },
        task_config: task_config.clone(),
        examples: args.examples,
        chunk: args.chunk,
        protocol: args.protocol,
        seed: args.seed,
        ruler_template: text.as_ref().map(|t| t.label().to_string()),
    };
    let records_path = args.out.join(KV_FILE);
    let run_path = args.out.join(RUN_FILE);
    let mut done: BTreeMap<String, KvRecord> = BTreeMap::new();
    let check_fresh = || {
        if args.resume {
            check_new_dir(&args.out, "--out (no kv-run.json to resume)", "")
        } else {
            check_new_dir(&args.out, "--out", " (or pass --resume to continue there)")
        }
    };
    // Refused before anything is written, then checked again under the lock (held until
    // the cases end): another bench may have taken the directory in between.
    if !(args.resume && run_path.is_file()) {
        check_fresh()?;
    }
    let _lock = DirLock::acquire(&args.out, "--out")?;
    if args.resume && run_path.is_file() {
        let before: RunSetup = read_json(&run_path)?;
        anyhow::ensure!(
            before == setup,
            "--resume: {} was run with another model, NAMM or prompt set ({} vs now {}); \
             use a new --out",
            args.out.display(),
            serde_json::to_string(&before)?,
            serde_json::to_string(&setup)?
        );
        if records_path.is_file() {
            let (records, truncated) = read_kv(&records_path)?;
            for r in records {
                done.insert(r.case_id.clone(), r);
            }
            // Appends start on a line of their own.
            xarena_schema::files::repair_jsonl_tail(&records_path, truncated)?;
        }
    } else {
        check_fresh()?;
        write_json_atomic(&run_path, &setup)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&records_path)
        .with_context(|| format!("opening {}", records_path.display()))?;

    let environment = env::capture(i64::from(tch::get_num_threads()));
    let mut ruler_out: Option<std::fs::File> = None;
    let mut outcome = BenchOutcome {
        ran: 0,
        skipped: 0,
        records: Vec::new(),
    };
    // Cases run a (context, task) at a time: under kvpress's protocol every pending
    // policy of the group decodes each prompt from one shared prefill.
    let cases = args.cases();
    let mut at = 0;
    while at < cases.len() {
        let group_len = cases[at..]
            .iter()
            .take_while(|c| (c.context, c.task) == (cases[at].context, cases[at].task))
            .count();
        let group = &cases[at..at + group_len];
        at += group_len;
        let mut pending = Vec::new();
        for case in group {
            match done.get(&case.id()) {
                Some(r) => {
                    outcome.skipped += 1;
                    outcome.records.push(r.clone());
                }
                None => pending.push(case),
            }
        }
        if pending.is_empty() {
            continue;
        }
        let (task, context) = (group[0].task, group[0].context);
        let xs = match task {
            BenchTask::Lm(t) => Prompts::Lm(t.examples(
                &task_config,
                context,
                args.examples,
                args.seed,
                LmSplit::Test,
            )?),
            BenchTask::Ruler(t) => {
                let text = text.as_ref().context("RULER tasks need the tokenizer")?;
                Prompts::Text(ruler_prompts(text, t, context, args)?)
            }
        };
        let mut policies: Vec<Box<dyn CachePolicy>> = Vec::with_capacity(pending.len());
        for case in &pending {
            policies.push(match (case.policy.as_str(), &namm) {
                ("namm", Some(n)) => Box::new(n.policy()?),
                (p, _) => build_policy(p, case.budget)?,
            });
        }
        let labels: Vec<String> = policies.iter().map(|p| p.describe()).collect();
        let shared = args.protocol == Protocol::Kvpress;
        let results: Vec<CaseOutcome> = match &xs {
            Prompts::Lm(xs) if shared => decode_all_shared(&model.lm, policies, xs)
                .0
                .into_iter()
                .map(|t| (t, None))
                .collect(),
            Prompts::Lm(xs) => policies
                .into_iter()
                .map(|p| {
                    (
                        decode_all_under(&model.lm, p, xs, args.chunk, args.protocol).0,
                        None,
                    )
                })
                .collect(),
            Prompts::Text(xs) => {
                let text = text.as_ref().context("RULER tasks need the tokenizer")?;
                let detok = |ids: &[u32]| text.decode(ids).unwrap_or_default();
                let runs: Vec<_> = if shared {
                    decode_text_all_shared(&model.lm, policies, xs, &text.stop, &detok).0
                } else {
                    policies
                        .into_iter()
                        .map(|p| {
                            let (t, o, _) = decode_text_all_under(
                                &model.lm,
                                p,
                                xs,
                                args.chunk,
                                args.protocol,
                                &text.stop,
                                &detok,
                            );
                            (t, o)
                        })
                        .collect()
                };
                runs.into_iter().map(|(t, o)| (t, Some(o))).collect()
            }
        };
        for ((case, label), (totals, outputs)) in pending.into_iter().zip(&labels).zip(results) {
            let id = case.id();
            if let (Some(outputs), Prompts::Text(xs)) = (outputs, &xs) {
                let path = args.out.join(RULER_OUTPUTS_FILE);
                if ruler_out.is_none() {
                    ruler_out = Some(
                        OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&path)
                            .with_context(|| format!("opening {}", path.display()))?,
                    );
                }
                let f = ruler_out.as_mut().expect("opened above");
                for (i, ((output, score), p)) in outputs.iter().zip(xs.iter()).enumerate() {
                    let line = serde_json::json!({
                        "case_id": id,
                        "example": i,
                        "prompt_tokens": p.tokens.len(),
                        "answers": p.answers,
                        "output": output,
                        "score": score,
                    });
                    writeln!(f, "{line}")
                        .with_context(|| format!("appending to {}", path.display()))?;
                }
                f.flush()?;
            }
            let full_score = if case.policy == "full" {
                totals.score()
            } else {
                let full_id = KvCase {
                    policy: "full".into(),
                    ratio: None,
                    budget: None,
                    ..case.clone()
                }
                .id();
                done.get(&full_id)
                    .map(|r| r.score)
                    .context("the full cache's record is missing")?
            };
            let record = make_record(
                case,
                label,
                &totals,
                full_score,
                &model,
                &setup,
                args,
                &environment,
            );
            writeln!(file, "{}", serde_json::to_string(&record)?)
                .and_then(|()| file.flush())
                .and_then(|()| file.sync_data())
                .with_context(|| format!("appending to {}", records_path.display()))?;
            log(&record);
            done.insert(id, record.clone());
            outcome.records.push(record);
            outcome.ran += 1;
        }
    }
    Ok(outcome)
}

/// What one case decoded: its totals, and for RULER tasks each output with its score.
type CaseOutcome = (Totals, Option<Vec<(String, f64)>>);

/// The RULER prompts of one (task, context), tokenized; each at most `context` tokens.
fn ruler_prompts(
    text: &RulerText,
    task: RulerTask,
    context: usize,
    args: &BenchArgs,
) -> Result<Vec<TextPrompt>> {
    let count = |i: &str, p: &str| text.count(i, p);
    let xs = ruler::examples(task, context, args.examples, args.seed, &count)?;
    xs.into_iter()
        .map(|x| {
            let tokens = text.encode(&text.render(&x.input, &x.answer_prefix))?;
            Ok(TextPrompt {
                tokens,
                answers: x.answers,
                max_new: task.max_new_tokens(),
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn make_record(
    case: &KvCase,
    label: &str,
    t: &Totals,
    full_score: f64,
    model: &LoadedModel,
    setup: &RunSetup,
    args: &BenchArgs,
    environment: &xarena_reports::Environment,
) -> KvRecord {
    let steps = t.decode_steps.max(1) as f64;
    let per = |s: f64| s / t.examples.max(1) as f64;
    KvRecord {
        schema: KV_SCHEMA_VERSION,
        case_id: case.id(),
        model: model.label(),
        model_fingerprint: model.fingerprint.clone(),
        policy: case.policy.clone(),
        policy_label: label.to_string(),
        ratio: case.ratio,
        budget: case.budget,
        context: case.context,
        task: case.task.name().to_string(),
        examples: t.examples as usize,
        seed: args.seed,
        chunk: args.chunk,
        protocol: (args.protocol != Protocol::Chunked).then(|| args.protocol.to_string()),
        score: t.score(),
        full_score,
        normalized_score: (full_score > 0.0).then(|| t.score() / full_score),
        mean_retained_fraction: t.mean_retained(),
        final_retained_fraction: t.final_retained(),
        peak_retained_fraction: t.peak_retained,
        peak_kv_bytes: t.peak_kv_bytes,
        prefill_seconds: per(t.prefill_seconds),
        prefill_policy_seconds: per(t.prefill_policy_seconds),
        decode_seconds_per_token: t.decode_seconds / steps,
        decode_policy_seconds_per_token: t.decode_policy_seconds / steps,
        decode_forward_seconds_per_token: (t.decode_seconds - t.decode_policy_seconds) / steps,
        namm: (case.policy == "namm")
            .then(|| setup.namm.clone())
            .flatten(),
        finished: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        env: environment.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_tasks_parse_both_kinds() {
        assert_eq!(
            "passkey".parse::<BenchTask>().unwrap(),
            BenchTask::Lm(LmTask::Passkey)
        );
        assert_eq!(
            "niah_multikey".parse::<BenchTask>().unwrap(),
            BenchTask::Ruler(RulerTask::NiahMultikey)
        );
        assert_eq!("cwe".parse::<BenchTask>().unwrap().to_string(), "cwe");
        let e = "nope".parse::<BenchTask>().unwrap_err().to_string();
        assert!(e.contains("mqar") && e.contains("niah_single"), "{e}");
    }
}
