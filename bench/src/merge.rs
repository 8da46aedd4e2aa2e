//! `xarena merge OUT_DIR INPUTS...`: the results of several runs (the shards of one
//! sweep) as one run directory, each case once (the rules are in
//! `xarena_reports::merge`).
//!
//! Everything is read and checked before anything is written, and the directory is
//! written under a temporary name and renamed into place, so a failed merge leaves no
//! half-written OUT_DIR and never touches the inputs.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xarena_reports::load::{read_results, results_path, RESULTS_FILE};
use xarena_reports::merge::{merge, Conflict, Input, Prefer};

use crate::store::{Store, RUNS_FILE};
use xarena_schema::files::is_empty_dir;
use xarena_schema::lock::DirLock;

#[derive(Serialize)]
struct InputLog {
    path: String,
    records: usize,
    run_ids: Vec<String>,
}

/// The line `merge` appends to `runs.jsonl` after the input runs' own lines.
#[derive(Serialize)]
struct MergeLog<'a> {
    merged_at: String,
    argv: Vec<String>,
    inputs: Vec<InputLog>,
    prefer: Option<Prefer>,
    /// Conflicts settled by `prefer`.
    resolved: &'a [Conflict],
    /// Identical copies of a record left out.
    duplicates: usize,
    cases: usize,
    /// The merged directory holds the whole of what was merged: not a shard (see
    /// `store::check_resume_shard`).
    shard: Option<()>,
}

#[derive(Debug)]
pub struct MergeSummary {
    pub cases: usize,
    pub inputs: usize,
    pub duplicates: usize,
    pub resolved: Vec<Conflict>,
}

/// The `runs.jsonl` beside an input's results, if there is one.
fn runs_file(input: &Path) -> Option<PathBuf> {
    let results = results_path(input);
    if results.file_name()? != RESULTS_FILE {
        return None;
    }
    let runs = results.parent()?.join(RUNS_FILE);
    runs.exists().then_some(runs)
}

pub fn merge_runs(out: &Path, inputs: &[PathBuf], prefer: Option<Prefer>) -> Result<MergeSummary> {
    if out.exists() {
        // A lock file left by a writer that ended before writing anything counts as empty.
        let empty = out.is_dir() && is_empty_dir(out)?;
        if !empty {
            bail!(
                "OUT_DIR {}: exists and is not an empty directory; merge into a new one",
                out.display()
            );
        }
    }
    let mut loaded = Vec::new();
    let mut logs = Vec::new();
    let mut run_lines = Vec::new();
    for path in inputs {
        let l = read_results(path)?;
        if l.truncated_tail {
            eprintln!(
                "xarena: {}: last line cut short (a run killed while writing); left out",
                results_path(path).display()
            );
        }
        let mut run_ids: Vec<String> = Vec::new();
        for r in &l.records {
            if !run_ids.contains(&r.run_id) {
                run_ids.push(r.run_id.clone());
            }
        }
        logs.push(InputLog {
            path: path.display().to_string(),
            records: l.records.len(),
            run_ids,
        });
        if let Some(runs) = runs_file(path) {
            let text =
                fs::read_to_string(&runs).with_context(|| format!("reading {}", runs.display()))?;
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a JSON line", runs.display(), i + 1))?;
                run_lines.push(v);
            }
        }
        loaded.push(Input {
            name: path.display().to_string(),
            records: l.records,
        });
    }
    if loaded.iter().all(|i| i.records.is_empty()) {
        bail!("no records in any input: nothing to merge");
    }
    let merged = merge(&loaded, prefer)?;

    // A lock file in an empty OUT_DIR: refused if its writer is still there, else removed
    // (under the lock, until the rename) so that the rename can replace the directory.
    let _held = DirLock::take_over_empty(out, "OUT_DIR")?;
    // Written beside OUT_DIR, then renamed onto it (rename replaces an empty directory).
    let name = out
        .file_name()
        .with_context(|| format!("OUT_DIR {}: needs a directory name", out.display()))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.merging-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> Result<()> {
        let (mut store, _) = Store::open(&tmp)?;
        for r in &merged.records {
            store.append(r)?;
        }
        for line in &run_lines {
            store.log_run(line)?;
        }
        store.log_run(&MergeLog {
            merged_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            argv: std::env::args().collect(),
            inputs: logs,
            prefer,
            resolved: &merged.resolved,
            duplicates: merged.duplicates,
            cases: merged.records.len(),
            shard: None,
        })?;
        fs::rename(&tmp, out)
            .with_context(|| format!("moving {} to {}", tmp.display(), out.display()))
    };
    if let Err(e) = write() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(MergeSummary {
        cases: merged.records.len(),
        inputs: inputs.len(),
        duplicates: merged.duplicates,
        resolved: merged.resolved,
    })
}
