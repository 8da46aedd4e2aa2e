//! `xarena lra`: every (variant, task) of a matrix trained in turn, resumable.
//!
//! Layout of `--out DIR`:
//! * `DIR/matrix.json`: the preset and seed (a resumed matrix must use the same ones);
//! * `DIR/runs/<task>/<variant>/`: one `xarena train` output each (checkpoint,
//!   `train.json`, its `accuracy.jsonl` written last, so a run without it is unfinished);
//! * `DIR/accuracy.jsonl`: every finished run's line, rebuilt (atomically) after each
//!   run, which `xarena report DIR` reads;
//! * `DIR/failures.jsonl`: the runs that failed and why (the others go on).
//!
//! Resuming skips finished runs and starts unfinished ones afresh.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xarena_variants::{find, Scope, VariantSpec};

use super::command::{train_command, RunSettings, TrainArgs};
use super::presets::preset;
use super::trainer::TrainReport;
use xarena_schema::accuracy::{read_accuracy, AccuracyRecord, ACCURACY_FILE};
use xarena_schema::files::{is_empty_dir, write_atomic};
use xarena_schema::lock::DirLock;

pub const MATRIX_FILE: &str = "matrix.json";
pub const FAILURES_FILE: &str = "failures.jsonl";

pub struct MatrixArgs {
    pub variants: Vec<VariantSpec>,
    pub tasks: Vec<String>,
    pub out: PathBuf,
    pub settings: RunSettings,
}

/// What a matrix is, so that a resumed run cannot mix settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MatrixSpec {
    preset: String,
    seed: u64,
    steps: Option<u64>,
}

/// One (variant, task) of the matrix and what became of it.
pub enum CellOutcome {
    /// Finished in an earlier invocation.
    Skipped(AccuracyRecord),
    Trained(AccuracyRecord, TrainReport),
    Failed(String),
}

pub struct MatrixCell {
    pub task: String,
    pub variant: String,
    pub outcome: CellOutcome,
}

/// A file-system-safe directory name for a variant label (`local(window=16)`).
pub fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn run_dir(out: &Path, task: &str, variant: &str) -> PathBuf {
    out.join("runs").join(slug(task)).join(slug(variant))
}

/// Checks every input before any training: tasks, preset, variants.
fn check(args: &MatrixArgs) -> Result<Vec<VariantSpec>> {
    if args.variants.is_empty() || args.tasks.is_empty() {
        bail!("--variants and --tasks each need at least one entry");
    }
    args.settings.check()?;
    for t in &args.tasks {
        let p = preset(&args.settings.preset, t)?;
        if p.data.needs_files() && args.settings.data_dir.is_none() {
            bail!(
                "task `{t}` reads LRA's downloaded files: pass --data-dir (nothing is \
                 downloaded)"
            );
        }
    }
    if let Some(d) = &args.settings.data_dir {
        if !d.is_dir() {
            bail!("--data-dir {}: not a directory", d.display());
        }
    }
    let mut variants = Vec::new();
    for v in &args.variants {
        let v = v.normalized()?;
        find(&v.name)?.check_scope(Scope::Block).with_context(|| {
            format!(
                "variant `{}` cannot be trained: the classifier stacks encoder blocks",
                v.name
            )
        })?;
        variants.push(v);
    }
    Ok(variants)
}

/// Runs (or resumes) the matrix, task by task; `progress` hears each cell as it ends.
pub fn run_matrix(
    args: &MatrixArgs,
    mut progress: impl FnMut(&MatrixCell),
) -> Result<Vec<MatrixCell>> {
    let variants = check(args)?;
    let spec = MatrixSpec {
        preset: args.settings.preset.clone(),
        seed: args.settings.seed,
        steps: args.settings.steps,
    };
    // Refused before anything is written, then checked again under the lock (held until
    // the matrix ends): another `xarena lra` may have taken the directory in between.
    check_out(&args.out, &spec)?;
    let _lock = DirLock::acquire(&args.out, "--out")?;
    if check_out(&args.out, &spec)? {
        write_atomic(
            &args.out.join(MATRIX_FILE),
            (serde_json::to_string_pretty(&spec)? + "\n").as_bytes(),
        )?;
    }

    let mut cells = Vec::new();
    for task in &args.tasks {
        for variant in &variants {
            let label = variant.label();
            let dir = run_dir(&args.out, task, &label);
            let outcome = match finished(&dir)? {
                Some(line) => CellOutcome::Skipped(line),
                None => {
                    if dir.exists() {
                        // Killed before its accuracy file: start it afresh.
                        fs::remove_dir_all(&dir)
                            .with_context(|| format!("removing {}", dir.display()))?;
                    }
                    let run = train_command(&TrainArgs {
                        task: task.clone(),
                        variant: variant.clone(),
                        out: dir.clone(),
                        settings: args.settings.clone(),
                    });
                    match run {
                        Ok((line, report)) => CellOutcome::Trained(line, report),
                        Err(e) => {
                            let message = format!("{e:#}");
                            record_failure(&args.out, task, &label, &message)?;
                            CellOutcome::Failed(message)
                        }
                    }
                }
            };
            let cell = MatrixCell {
                task: task.clone(),
                variant: label,
                outcome,
            };
            if !matches!(cell.outcome, CellOutcome::Failed(_)) {
                collect(&args.out)?;
            }
            progress(&cell);
            cells.push(cell);
        }
    }
    Ok(cells)
}

/// Whether `out` may take the matrix `spec`: a new (or empty) directory, true, or one
/// holding the same matrix, false.
fn check_out(out: &Path, spec: &MatrixSpec) -> Result<bool> {
    let spec_path = out.join(MATRIX_FILE);
    if spec_path.exists() {
        let text = fs::read_to_string(&spec_path)
            .with_context(|| format!("reading {}", spec_path.display()))?;
        let old: MatrixSpec = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", spec_path.display()))?;
        if &old != spec {
            bail!(
                "{} holds a matrix with preset {}, seed {}, steps {:?}; resume it with \
                 the same settings or pick another --out",
                out.display(),
                old.preset,
                old.seed,
                old.steps
            );
        }
        return Ok(false);
    }
    if out.exists() {
        if !out.is_dir() {
            bail!("--out {}: exists and is not a directory", out.display());
        }
        if !is_empty_dir(out)? {
            bail!(
                "--out {}: not empty and not an `xarena lra` directory",
                out.display()
            );
        }
    }
    Ok(true)
}

/// A run directory's accuracy line, if the run finished.
fn finished(dir: &Path) -> Result<Option<AccuracyRecord>> {
    let file = dir.join(ACCURACY_FILE);
    if !file.exists() {
        return Ok(None);
    }
    let mut lines = read_accuracy(&file)?;
    anyhow::ensure!(!lines.is_empty(), "{}: empty", file.display());
    Ok(Some(lines.swap_remove(0)))
}

/// Rebuilds `DIR/accuracy.jsonl` from every finished run, in a stable order.
fn collect(out: &Path) -> Result<()> {
    let mut files = Vec::new();
    let runs = out.join("runs");
    for task in sorted_dirs(&runs)? {
        for variant in sorted_dirs(&task)? {
            let f = variant.join(ACCURACY_FILE);
            if f.exists() {
                files.push(f);
            }
        }
    }
    let mut all = String::new();
    for f in files {
        all.push_str(&fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?);
    }
    write_atomic(&out.join(ACCURACY_FILE), all.as_bytes())
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

fn record_failure(out: &Path, task: &str, variant: &str, message: &str) -> Result<()> {
    use std::io::Write;
    let line = serde_json::json!({ "task": task, "variant": variant, "error": message });
    let path = out.join(FAILURES_FILE);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))
}
