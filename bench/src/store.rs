//! A run's results directory: `results.jsonl` (one record per case, appended and flushed
//! as each case ends), `results.csv` (the same, flat), and `runs.jsonl` (one line per
//! invocation: its sweep, command line and environment).
//!
//! A run killed half way keeps every finished case; `--resume` reads them back, drops a
//! last line cut short by the kill, and skips the cases already recorded.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xarena_reports::load::{read_results, RESULTS_FILE};
use xarena_reports::Record;

use crate::sweep::Shard;

pub const CSV_FILE: &str = "results.csv";
pub const RUNS_FILE: &str = "runs.jsonl";

/// The flat CSV row of a record.
#[derive(Serialize)]
struct Row<'a> {
    case_id: &'a str,
    variant: &'a str,
    label: &'a str,
    params: String,
    seq_len: i64,
    batch: i64,
    heads: i64,
    head_dim: i64,
    causal: bool,
    dtype: String,
    device: &'a str,
    mode: String,
    scope: String,
    status: String,
    message: String,
    median_ms: Option<f64>,
    p10_ms: Option<f64>,
    p90_ms: Option<f64>,
    iterations: Option<u64>,
    peak_bytes: Option<u64>,
    baseline_bytes: Option<u64>,
    static_bytes: Option<u64>,
    flops: Option<u64>,
    gflops_per_s: Option<f64>,
    params_count: Option<u64>,
    backend: &'a str,
    started_at: &'a str,
    /// Decode mode's state; last, so older files' columns keep their places.
    state_bytes: Option<u64>,
}

impl<'a> Row<'a> {
    fn of(r: &'a Record) -> Row<'a> {
        let k = &r.key;
        let ms =
            |f: fn(&xarena_reports::schema::Latency) -> f64| r.latency.as_ref().map(|l| f(l) * 1e3);
        Row {
            case_id: &r.case_id,
            variant: &k.variant,
            label: &r.label,
            params: serde_json::to_string(&k.params).unwrap_or_default(),
            seq_len: k.seq_len,
            batch: k.batch,
            heads: k.heads,
            head_dim: k.head_dim,
            causal: k.causal,
            dtype: k.dtype.to_string(),
            device: &k.device,
            mode: k.mode.to_string(),
            scope: k.scope.to_string(),
            status: r.status.to_string(),
            // One line per case, for tools that read CSV line by line.
            message: r.message.as_deref().unwrap_or("").replace('\n', " | "),
            median_ms: ms(|l| l.median_s),
            p10_ms: ms(|l| l.p10_s),
            p90_ms: ms(|l| l.p90_s),
            iterations: r.latency.as_ref().map(|l| l.iterations),
            peak_bytes: r.memory.as_ref().map(|m| m.peak_bytes),
            baseline_bytes: r.memory.as_ref().map(|m| m.baseline_bytes),
            static_bytes: r.memory.as_ref().map(|m| m.static_bytes),
            flops: r.flops,
            gflops_per_s: r.flops_per_s.map(|f| f / 1e9),
            params_count: r.params,
            backend: r.backend.as_deref().unwrap_or(""),
            started_at: &r.started_at,
            state_bytes: r.state_bytes,
        }
    }
}

pub struct Store {
    dir: PathBuf,
    jsonl: File,
    csv: csv::Writer<File>,
}

/// Checks, before anything is written, that `dir` may take this run.
pub fn check_target(dir: &Path, resume: bool) -> Result<()> {
    let results = dir.join(RESULTS_FILE);
    if dir.exists() && !dir.is_dir() {
        bail!("--out {}: exists and is not a directory", dir.display());
    }
    if results.exists() && !resume {
        bail!(
            "--out {}: already holds results; pass --resume to continue that run, or name another --out",
            dir.display()
        );
    }
    if resume && !results.exists() {
        bail!("--resume: no results to resume in {}", dir.display());
    }
    Ok(())
}

/// With `--resume`, checks that the run in `dir` was sliced as this invocation asks:
/// resuming shard 0/2 with 1/2 (or with none) would mix two slices in one directory.
/// The last line of `runs.jsonl` says (every invocation in a directory has the same
/// shard; `xarena merge` ends with a line with none, as its directory holds the whole).
pub fn check_resume_shard(dir: &Path, shard: Option<Shard>) -> Result<()> {
    let path = dir.join(RUNS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        // A directory from before runs were logged: nothing to check against.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty()) else {
        return Ok(());
    };
    let value: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("{}: last line is not JSON", path.display()))?;
    // Lines written before shards existed have no `shard`: unsharded.
    let recorded: Option<Shard> = match value.get("shard") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value(v.clone())
                .with_context(|| format!("{}: unreadable `shard`", path.display()))?,
        ),
    };
    if recorded != shard {
        let show =
            |s: Option<Shard>| s.map_or("no --shard".to_string(), |s| format!("--shard {s}"));
        bail!(
            "--resume: {} was run with {}, this is {}; resume it with the same --shard",
            dir.display(),
            show(recorded),
            show(shard)
        );
    }
    Ok(())
}

impl Store {
    /// Opens the directory for appending; returns the ids of cases already recorded.
    pub fn open(dir: &Path) -> Result<(Store, HashSet<String>)> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let results = dir.join(RESULTS_FILE);
        let mut done = HashSet::new();
        if results.exists() {
            let loaded = read_results(&results)?;
            if loaded.truncated_tail {
                // Rewrite without the cut line, so appends start on a fresh line.
                let mut text = String::new();
                for r in &loaded.records {
                    text.push_str(&serde_json::to_string(r)?);
                    text.push('\n');
                }
                let tmp = dir.join(".results.jsonl.tmp");
                fs::write(&tmp, text)?;
                fs::rename(&tmp, &results)?;
            }
            done = loaded.records.iter().map(|r| r.case_id.clone()).collect();
        }
        let jsonl = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results)
            .with_context(|| format!("opening {}", results.display()))?;
        let csv_path = dir.join(CSV_FILE);
        let csv_is_new = !csv_path.exists() || fs::metadata(&csv_path)?.len() == 0;
        let csv_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&csv_path)
            .with_context(|| format!("opening {}", csv_path.display()))?;
        let csv = csv::WriterBuilder::new()
            .has_headers(csv_is_new)
            .from_writer(csv_file);
        Ok((
            Store {
                dir: dir.to_path_buf(),
                jsonl,
                csv,
            },
            done,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record to both files and flushes them.
    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.jsonl.write_all(line.as_bytes())?;
        self.jsonl.flush()?;
        self.csv.serialize(Row::of(record))?;
        self.csv.flush()?;
        Ok(())
    }

    /// Appends this invocation's description to `runs.jsonl`.
    pub fn log_run(&self, run: &impl Serialize) -> Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(RUNS_FILE))?;
        writeln!(f, "{}", serde_json::to_string(run)?)?;
        Ok(())
    }
}
