//! A run's results directory: `results.jsonl` (one record per case, appended and flushed
//! as each case ends), `results.csv` (the same, flat), and `runs.jsonl` (one line per
//! invocation: its sweep, command line and environment).
//!
//! A run killed half way keeps every finished case; `--resume` reads them back, repairs
//! what the kill cut (see [`Store::open`]), and skips the cases already recorded. The
//! directory's writer holds its lock (`xarena_schema::lock`) for the whole run.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xarena_reports::load::{read_results, RESULTS_FILE};
use xarena_reports::Record;

use crate::sweep::Shard;
use xarena_schema::files::{repair_jsonl_tail, write_atomic};

pub const CSV_FILE: &str = "results.csv";
pub const RUNS_FILE: &str = "runs.jsonl";
/// `--rounds`: each visit of a case whose rounds are not all made yet
/// ([`crate::rounds::VisitLine`]); a resumed run goes on from them.
pub const VISITS_FILE: &str = "visits.jsonl";

/// The flat CSV row of a record.
#[derive(Serialize)]
struct ResultsCsvRow<'a> {
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

impl<'a> ResultsCsvRow<'a> {
    fn of(r: &'a Record) -> ResultsCsvRow<'a> {
        let k = &r.key;
        let ms =
            |f: fn(&xarena_reports::schema::Latency) -> f64| r.latency.as_ref().map(|l| f(l) * 1e3);
        ResultsCsvRow {
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

/// Checks that `dir` may take this run: before anything is written, and again once the
/// directory is locked (another writer may have filled it in between).
pub fn check_target(dir: &Path, resume: bool) -> Result<()> {
    let results = dir.join(RESULTS_FILE);
    if dir.exists() && !dir.is_dir() {
        bail!("--out {}: exists and is not a directory", dir.display());
    }
    // Rounds made before a kill are results too: a case's visits wait in visits.jsonl
    // until its last round.
    if !resume && (holds_results(&results)? || holds_results(&dir.join(VISITS_FILE))?) {
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

/// Whether the results file exists and holds more than whitespace (a run stopped before
/// its first case leaves it empty: no results to protect).
fn holds_results(results: &Path) -> Result<bool> {
    let file = match File::open(results) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", results.display())),
    };
    // Reads only up to the first record, not a whole large file.
    for byte in std::io::BufReader::new(file).bytes() {
        let byte = byte.with_context(|| format!("reading {}", results.display()))?;
        if !byte.is_ascii_whitespace() {
            return Ok(true);
        }
    }
    Ok(false)
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
    ///
    /// A run killed while writing leaves its files as they were at that moment; they are
    /// repaired before anything is appended: a last line of `results.jsonl` cut short is
    /// dropped, a last record without its newline gets one, and `results.csv` (a row cut
    /// short, a header missing) is rewritten from `results.jsonl` when the two disagree.
    pub fn open(dir: &Path) -> Result<(Store, HashSet<String>)> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let results = dir.join(RESULTS_FILE);
        let records = repair_jsonl(&results)?;
        let csv_path = dir.join(CSV_FILE);
        repair_csv(&csv_path, &records)?;
        let done = records.iter().map(|r| r.case_id.clone()).collect();
        let jsonl = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&results)
            .with_context(|| format!("opening {}", results.display()))?;
        let csv_is_new = !csv_path.exists()
            || fs::metadata(&csv_path)
                .with_context(|| format!("reading {}", csv_path.display()))?
                .len()
                == 0;
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
        let path = |name: &str| self.dir.join(name).display().to_string();
        self.jsonl
            .write_all(line.as_bytes())
            .and_then(|()| self.jsonl.flush())
            .with_context(|| format!("appending to {}", path(RESULTS_FILE)))?;
        self.csv
            .serialize(ResultsCsvRow::of(record))
            .map_err(anyhow::Error::from)
            .and_then(|()| self.csv.flush().map_err(Into::into))
            .with_context(|| format!("appending to {}", path(CSV_FILE)))?;
        Ok(())
    }

    /// Appends one visit of a case measured in rounds to `visits.jsonl`.
    pub fn append_visit(&mut self, visit: &crate::rounds::VisitLine) -> Result<()> {
        let path = self.dir.join(VISITS_FILE);
        let line = serde_json::to_string(visit)? + "\n";
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.flush()))
            .with_context(|| format!("appending to {}", path.display()))
    }

    /// The visits recorded so far (a last line cut by a kill is dropped, and the file
    /// left ending in a complete line).
    pub fn visits(&self) -> Result<Vec<crate::rounds::VisitLine>> {
        let path = self.dir.join(VISITS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut out = Vec::new();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut truncated = false;
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<crate::rounds::VisitLine>(line) {
                Ok(v) => {
                    v.record
                        .check()
                        .map_err(|m| anyhow::anyhow!("{} line {}: {m}", path.display(), i + 1))?;
                    out.push(v)
                }
                Err(e) if i + 1 == lines.len() && e.is_eof() => truncated = true,
                Err(e) => bail!("{} line {}: {e}", path.display(), i + 1),
            }
        }
        repair_jsonl_tail(&path, truncated)?;
        Ok(out)
    }

    /// Appends this invocation's description to `runs.jsonl`.
    pub fn log_run(&self, run: &impl Serialize) -> Result<()> {
        let path = self.dir.join(RUNS_FILE);
        let line = serde_json::to_string(run)? + "\n";
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .with_context(|| format!("appending to {}", path.display()))
    }
}

/// Reads `results.jsonl` back (if there is one) and leaves it ending in a complete
/// line, so that the next record starts on its own line.
fn repair_jsonl(results: &Path) -> Result<Vec<Record>> {
    if !results.exists() {
        return Ok(Vec::new());
    }
    let loaded = read_results(results)?;
    repair_jsonl_tail(results, loaded.truncated_tail)?;
    Ok(loaded.records)
}

/// `results.csv` as it should be for `records`: empty when there are none, else a
/// header and a row per record.
fn csv_text(records: &[Record]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in records {
        w.serialize(ResultsCsvRow::of(r))?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{}", e.error()))
}

/// Rewrites `results.csv` from the records of `results.jsonl` unless it already says
/// the same (a row cut by a kill, a missing header, a row too many or too few).
fn repair_csv(path: &Path, records: &[Record]) -> Result<()> {
    let want = csv_text(records)?;
    let have = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if have != want {
        write_atomic(path, &want)?;
        if !have.is_empty() {
            eprintln!(
                "xarena: {}: did not match {RESULTS_FILE} (a run killed while writing); \
                 rewritten from it",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as a run writes one.
    fn record() -> Record {
        let text = include_str!("../../docs/results/pypi-compare/xarena-1/results.jsonl");
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }

    #[test]
    fn an_append_that_fails_names_the_file() {
        let dir = std::env::temp_dir().join(format!("xarena-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (mut store, _) = Store::open(&dir).unwrap();
        // As on a full disk.
        store.jsonl = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let err = format!("{:#}", store.append(&record()).unwrap_err());
        assert!(
            err.starts_with(&format!(
                "appending to {}",
                dir.join(RESULTS_FILE).display()
            )),
            "{err}"
        );
        assert!(err.contains("No space left on device"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
