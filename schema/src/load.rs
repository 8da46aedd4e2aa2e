//! Reading results files: a run directory (its `results.jsonl`) or a JSON-lines file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::record::{Record, SCHEMA_VERSION};

/// The results file inside a run directory.
pub const RESULTS_FILE: &str = "results.jsonl";

#[derive(Debug, Error)]
pub enum LoadError {
    // The I/O error is part of the message and deliberately not its `source`: `{:#}`
    // prints the chain, which would name it twice.
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}: not a result record: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: schema version {found}, this xarena reads version {expected}")]
    Schema {
        path: PathBuf,
        line: usize,
        found: String,
        expected: u32,
    },
}

/// The records of one file, and whether its last line was cut short (a run killed while
/// writing it), in which case that line is left out.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    pub truncated_tail: bool,
}

/// `path` itself when it is a file, else the results file inside the directory.
pub fn results_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(RESULTS_FILE)
    } else {
        path.to_path_buf()
    }
}

pub fn read_results(path: &Path) -> Result<Loaded, LoadError> {
    let (records, truncated_tail) =
        read_versioned(&results_path(path), SCHEMA_VERSION, Record::check)?;
    Ok(Loaded {
        records,
        truncated_tail,
    })
}

/// JSON lines whose objects carry `"schema": expected` and pass `check`, and whether a
/// last line cut short (a run killed while writing it) was left out.
pub fn read_versioned<T: DeserializeOwned>(
    path: &Path,
    expected: u32,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<(Vec<T>, bool), LoadError> {
    let path = path.to_path_buf();
    let text = std::fs::read_to_string(&path).map_err(|error| LoadError::Io {
        path: path.clone(),
        error,
    })?;
    // A byte-order mark (some editors on Windows write one) is not part of the JSON.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let ends_cleanly = text.is_empty() || text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut truncated_tail = false;
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let last = i + 1 == lines.len();
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // Only JSON that ends early is a line cut by a kill: anything else (plain
            // text, a stray byte) is a file that is not ours, and an error.
            Err(e) if last && !ends_cleanly && e.classify() == serde_json::error::Category::Eof => {
                truncated_tail = true;
                break;
            }
            Err(e) => {
                return Err(LoadError::Parse {
                    path,
                    line: i + 1,
                    message: e.to_string(),
                })
            }
        };
        match value.get("schema").and_then(|s| s.as_u64()) {
            Some(v) if v == u64::from(expected) => {}
            other => {
                return Err(LoadError::Schema {
                    path,
                    line: i + 1,
                    found: other.map_or("missing".into(), |v| v.to_string()),
                    expected,
                })
            }
        }
        let record = serde_json::from_value(value)
            .map_err(|e| e.to_string())
            .and_then(|r| check(&r).map(|()| r))
            .map_err(|message| LoadError::Parse {
                path: path.clone(),
                line: i + 1,
                message,
            })?;
        out.push(record);
    }
    Ok((out, truncated_tail))
}

/// Every record of every path, in order.
pub fn load_records(paths: &[PathBuf]) -> Result<Vec<Record>, LoadError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_results(p)?.records);
    }
    Ok(all)
}
