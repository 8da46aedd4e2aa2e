//! `xarena history`: results of many runs (the nightlies) in one SQLite file, and a
//! variant's trend over them.
//!
//! A record is stored once per (run id, case id): ingesting the same results again adds
//! nothing, and a merged directory's records keep the runs they came from. The database
//! carries its schema version; a database of another version is refused, not misread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use xarena_reports::grid::{Grid, GridCell};
use xarena_reports::load::{read_results, results_path};
use xarena_reports::schema::Mode;
use xarena_reports::table::{format_bytes, format_seconds, Style};

/// The version of the tables below; a change to them bumps it.
pub const HISTORY_SCHEMA: i64 = 1;

const CREATE: &str = "
CREATE TABLE xarena_history (version INTEGER NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    -- The earliest case start of the run seen so far (RFC 3339, UTC).
    started_at TEXT NOT NULL,
    git_commit TEXT,
    xarena_version TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    hostname TEXT,
    env TEXT NOT NULL
);
CREATE TABLE results (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    case_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    label TEXT NOT NULL,
    params TEXT NOT NULL,
    seq_len INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    heads INTEGER NOT NULL,
    head_dim INTEGER NOT NULL,
    causal INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    device TEXT NOT NULL,
    mode TEXT NOT NULL,
    scope TEXT NOT NULL,
    status TEXT NOT NULL,
    message TEXT,
    median_s REAL,
    p10_s REAL,
    p90_s REAL,
    peak_bytes INTEGER,
    state_bytes INTEGER,
    started_at TEXT NOT NULL,
    -- The whole record as the runner wrote it.
    record TEXT NOT NULL,
    PRIMARY KEY (run_id, case_id)
);
CREATE INDEX results_by_variant ON results (variant, seq_len);
";

/// How long a command waits for another that holds the database (an ingest of many
/// runs) before it gives up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Opens `path`, creating the database if `create` and it does not exist, and checks its
/// schema version.
pub fn open(path: &Path, create: bool) -> Result<Connection> {
    if !create && !path.exists() {
        bail!("history database {}: no such file", path.display());
    }
    let flags = if create {
        OpenFlags::default()
    } else {
        OpenFlags::default() & !OpenFlags::SQLITE_OPEN_CREATE
    };
    let mut conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening history database {}", path.display()))?;
    let what = || format!("history database {}", path.display());
    // Another ingest may hold the database: wait for it rather than fail.
    conn.busy_timeout(BUSY_TIMEOUT).with_context(what)?;
    let list_tables = |c: &Connection| -> rusqlite::Result<Vec<String>> {
        c.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
            .query_map([], |r| r.get(0))?
            .collect()
    };
    let tables = if create {
        // Looked at and created under SQLite's write lock (BEGIN IMMEDIATE), so that of
        // several ingests into a new database one creates the tables and the others
        // find them.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .with_context(what)?;
        let tables = list_tables(&tx).with_context(what)?;
        if tables.is_empty() {
            tx.execute_batch(&format!(
                "{CREATE} INSERT INTO xarena_history (version) VALUES ({HISTORY_SCHEMA});"
            ))
            .with_context(what)?;
        }
        tx.commit().with_context(what)?;
        if tables.is_empty() {
            return Ok(conn);
        }
        tables
    } else {
        list_tables(&conn).with_context(what)?
    };
    if !tables.iter().any(|t| t == "xarena_history") {
        bail!(
            "{}: not an xarena history database (no xarena_history table)",
            what()
        );
    }
    let version: Option<i64> = conn
        .query_row("SELECT version FROM xarena_history", [], |r| r.get(0))
        .optional()
        .with_context(what)?;
    match version {
        Some(HISTORY_SCHEMA) => Ok(conn),
        Some(v) => bail!(
            "{}: history schema version {v}, this xarena reads version {HISTORY_SCHEMA}",
            what()
        ),
        None => bail!("{}: no schema version recorded", what()),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    pub added: usize,
    pub present: usize,
    pub runs: usize,
}

/// Adds the records of `results` (run directories or results files), all or nothing.
pub fn ingest(db: &Path, results: &[PathBuf]) -> Result<Ingested> {
    // Every file is read (and its schema checked) before the database is touched.
    let mut records = Vec::new();
    for path in results {
        let loaded = read_results(path)?;
        if loaded.truncated_tail {
            eprintln!(
                "xarena: {}: last line cut short; left out",
                results_path(path).display()
            );
        }
        records.extend(loaded.records);
    }
    let mut conn = open(db, true)?;
    // One write transaction from the first read on: a concurrent ingest waits for it
    // (busy timeout) instead of failing on a lock upgrade.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .with_context(|| format!("history database {}", db.display()))?;
    let mut out = Ingested::default();
    let mut runs = HashSet::new();
    {
        let mut add_run = tx.prepare(
            "INSERT INTO runs (run_id, started_at, git_commit, xarena_version, torch_version, \
             hostname, env) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (run_id) DO UPDATE SET started_at = min(started_at, excluded.started_at)",
        )?;
        let mut existing =
            tx.prepare("SELECT record FROM results WHERE run_id = ?1 AND case_id = ?2")?;
        let mut add = tx.prepare(
            "INSERT INTO results (run_id, case_id, variant, label, params, seq_len, batch, \
             heads, head_dim, causal, dtype, device, mode, scope, status, message, median_s, \
             p10_s, p90_s, peak_bytes, state_bytes, started_at, record) VALUES (?1, ?2, ?3, \
             ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
             ?21, ?22, ?23)",
        )?;
        for r in &records {
            let json = serde_json::to_string(r)?;
            let stored: Option<String> = existing
                .query_row(params![r.run_id, r.case_id], |row| row.get(0))
                .optional()?;
            if let Some(stored) = stored {
                if stored != json {
                    bail!(
                        "run {} case {} ({}) is already in {} with other values; nothing \
                         was added",
                        r.run_id,
                        r.case_id,
                        r.label,
                        db.display()
                    );
                }
                out.present += 1;
                continue;
            }
            let e = &r.env;
            add_run.execute(params![
                r.run_id,
                r.started_at,
                e.git_commit,
                e.xarena_version,
                e.torch_version,
                e.hostname,
                serde_json::to_string(e)?,
            ])?;
            runs.insert(r.run_id.clone());
            let k = &r.key;
            let l = r.latency.as_ref();
            add.execute(params![
                r.run_id,
                r.case_id,
                k.variant,
                r.label,
                serde_json::to_string(&k.params)?,
                k.seq_len,
                k.batch,
                k.heads,
                k.head_dim,
                k.causal,
                k.dtype.to_string(),
                k.device,
                k.mode.to_string(),
                k.scope.to_string(),
                r.status.to_string(),
                r.message,
                l.map(|l| l.median_s),
                l.map(|l| l.p10_s),
                l.map(|l| l.p90_s),
                // Fallible: a count past i64 is an error, never a wrapped -1 (records
                // are checked on load, so it does not happen).
                r.memory.as_ref().map(|m| m.peak_bytes),
                r.state_bytes,
                r.started_at,
                json,
            ])?;
            out.added += 1;
        }
    }
    tx.commit()
        .with_context(|| format!("writing history database {}", db.display()))?;
    out.runs = runs.len();
    Ok(out)
}

/// What `history show` selects: a variant, optionally one length, mode, device.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub variant: String,
    pub seq: Option<i64>,
    pub mode: Option<Mode>,
    pub device: Option<String>,
}

/// One result of the variant in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub case_id: String,
    /// Label, shape and setting.
    pub case: String,
    pub started_at: String,
    pub git_commit: Option<String>,
    pub run_id: String,
    pub status: String,
    pub median_s: Option<f64>,
    pub p10_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub peak_bytes: Option<i64>,
}

/// The variant's results, grouped by case (same key), oldest first within a case.
pub fn show(db: &Path, filter: &Filter) -> Result<Vec<Point>> {
    let conn = open(db, false)?;
    // `cuda` is recorded as `cuda:0`.
    let device = filter.device.as_deref().map(|d| match d {
        "cuda" => "cuda:0".to_string(),
        d => d.to_string(),
    });
    let mut stmt = conn.prepare(
        "SELECT r.case_id, r.label, r.seq_len, r.batch, r.heads, r.head_dim, r.dtype, \
         r.device, r.mode, r.scope, r.causal, r.started_at, runs.git_commit, r.run_id, \
         r.status, r.median_s, r.p10_s, r.p90_s, r.peak_bytes \
         FROM results r JOIN runs USING (run_id) \
         WHERE r.variant = ?1 AND (?2 IS NULL OR r.seq_len = ?2) \
         AND (?3 IS NULL OR r.mode = ?3) AND (?4 IS NULL OR r.device = ?4) \
         ORDER BY r.device, r.dtype, r.mode, r.scope, r.batch, r.heads, r.head_dim, \
         r.causal, r.label, r.seq_len, r.started_at, r.run_id",
    )?;
    let points = stmt
        .query_map(
            params![
                filter.variant,
                filter.seq,
                filter.mode.map(|m| m.to_string()),
                device
            ],
            |row| {
                let causal: bool = row.get(10)?;
                let case = format!(
                    "{} N={} b={} h={}x{} {} {} {} {}{}",
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, String>(7)?,
                    row.get::<_, String>(8)?,
                    row.get::<_, String>(9)?,
                    if causal { " causal" } else { "" }
                );
                Ok(Point {
                    case_id: row.get(0)?,
                    case,
                    started_at: row.get(11)?,
                    git_commit: row.get(12)?,
                    run_id: row.get(13)?,
                    status: row.get(14)?,
                    median_s: row.get(15)?,
                    p10_s: row.get(16)?,
                    p90_s: row.get(17)?,
                    peak_bytes: row.get(18)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", db.display()))?;
    if points.is_empty() {
        let variants: Vec<String> = conn
            .prepare("SELECT DISTINCT variant FROM results ORDER BY variant")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        bail!(
            "no results for variant `{}` with these filters in {} (variants there: {})",
            filter.variant,
            db.display(),
            if variants.is_empty() {
                "none".to_string()
            } else {
                variants.join(", ")
            }
        );
    }
    Ok(points)
}

/// One table per case: the runs oldest first, with the change of the median from the
/// run before.
pub fn render(points: &[Point], style: Style) -> String {
    let mut out = String::new();
    let mut start = 0;
    while start < points.len() {
        let case = &points[start].case_id;
        let end = start
            + points[start..]
                .iter()
                .take_while(|p| &p.case_id == case)
                .count();
        let mut t = Grid::new(
            [
                "date (UTC)",
                "commit",
                "run",
                "status",
                "median latency",
                "p10-p90",
                "vs previous",
                "peak memory",
            ]
            .map(String::from)
            .to_vec(),
        )
        .all_left();
        let mut previous: Option<f64> = None;
        for p in &points[start..end] {
            let change = match (previous, p.median_s) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:+.1}%", (b / a - 1.0) * 100.0),
                _ => String::new(),
            };
            previous = p.median_s.or(previous);
            let row: [String; 8] = [
                p.started_at
                    .get(..16)
                    .unwrap_or(&p.started_at)
                    .replace('T', " "),
                p.git_commit
                    .as_deref()
                    .map_or("-".into(), |c| c.chars().take(10).collect()),
                p.run_id.clone(),
                p.status.clone(),
                p.median_s.map_or("-".into(), format_seconds),
                match (p.p10_s, p.p90_s) {
                    (Some(a), Some(b)) => format!("{} - {}", format_seconds(a), format_seconds(b)),
                    _ => "-".into(),
                },
                change,
                p.peak_bytes
                    .map_or("-".into(), |b| format_bytes(b.max(0) as u64)),
            ];
            t.push(row.map(GridCell::from).to_vec());
        }
        out.push_str(&match style {
            Style::Markdown => format!(
                "#### {}\n\n{}\n\n",
                style.inline(&points[start].case),
                t.text(style)
            ),
            Style::Terminal => format!("{}\n{}\n\n", points[start].case, t.text(style)),
        });
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "xarena-history-{}-{name}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn concurrent_creators_of_a_new_database_all_succeed() {
        let db = tmp("concurrent");
        // Another writer holds the new, still empty database while the openers start,
        // so that they all find it empty before any can create the tables: each must
        // then wait its turn and find the tables the first one created.
        let mut holder = Connection::open(&db).unwrap();
        let held = holder
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        std::thread::scope(|s| {
            let opens: Vec<_> = (0..4)
                .map(|_| s.spawn(|| open(&db, true).map(|_| ())))
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(300));
            held.commit().unwrap();
            for o in opens {
                o.join().unwrap().unwrap();
            }
        });
        let versions: i64 = Connection::open(&db)
            .unwrap()
            .query_row("SELECT count(*) FROM xarena_history", [], |r| r.get(0))
            .unwrap();
        assert_eq!(versions, 1);
    }

    #[test]
    fn a_database_of_another_version_or_kind_is_refused() {
        let db = tmp("version");
        open(&db, true).unwrap();
        // Opening again finds the version it wrote.
        open(&db, false).unwrap();
        Connection::open(&db)
            .unwrap()
            .execute("UPDATE xarena_history SET version = 7", [])
            .unwrap();
        let err = open(&db, false).unwrap_err().to_string();
        assert!(err.contains("history schema version 7"), "{err}");

        let other = tmp("other");
        Connection::open(&other)
            .unwrap()
            .execute("CREATE TABLE t (x)", [])
            .unwrap();
        let err = open(&other, true).unwrap_err().to_string();
        assert!(err.contains("not an xarena history database"), "{err}");

        let text = tmp("text");
        std::fs::write(&text, "just text, long enough to be read as a header page....................................................").unwrap();
        assert!(open(&text, false).is_err());

        let err = open(&tmp("missing"), false).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
    }
}
