//! Reading results files: a run directory (its `results.jsonl`) or a JSON-lines file.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::schema::{Record, SCHEMA_VERSION};

/// The results file inside a run directory.
pub const RESULTS_FILE: &str = "results.jsonl";

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a result record: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: schema version {found}, this xarena reads version {SCHEMA_VERSION}")]
    Schema {
        path: PathBuf,
        line: usize,
        found: String,
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
    let path = results_path(path);
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    let ends_cleanly = text.is_empty() || text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Loaded::default();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let last = i + 1 == lines.len();
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if last && !ends_cleanly => {
                out.truncated_tail = true;
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
            Some(v) if v == u64::from(SCHEMA_VERSION) => {}
            other => {
                return Err(LoadError::Schema {
                    path,
                    line: i + 1,
                    found: other.map_or("missing".into(), |v| v.to_string()),
                })
            }
        }
        let record = serde_json::from_value(value).map_err(|e| LoadError::Parse {
            path: path.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.records.push(record);
    }
    Ok(out)
}

/// Every record of every path, in order.
pub fn load_records(paths: &[PathBuf]) -> Result<Vec<Record>, LoadError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_results(p)?.records);
    }
    Ok(all)
}
