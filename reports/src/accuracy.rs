//! Task accuracy records (the LRA track writes them; none exist yet): their schema, the
//! loader for a run directory's `accuracy.jsonl`, and the accuracy table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::anchors;
use crate::grid::{Grid, GridCell};
use crate::load::{read_versioned, LoadError};
use crate::schema::Environment;

pub const ACCURACY_SCHEMA_VERSION: u32 = 1;

/// The accuracy file inside a run directory.
pub const ACCURACY_FILE: &str = "accuracy.jsonl";

/// One trained model evaluated on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyRecord {
    pub schema: u32,
    /// The task, by LRA's names where it is one of theirs: listops, text, retrieval,
    /// image, pathfinder, path-x (generated tasks by their CLI names).
    pub task: String,
    /// The variant's label, as in the efficiency records (`local(window=64)`).
    pub variant: String,
    /// Fraction of the test examples classified correctly, 0 to 1.
    pub accuracy: f64,
    /// Training steps taken.
    pub steps: u64,
    pub seed: u64,
    pub env: Environment,
    /// What training measured (`xarena train` writes them; optional for other writers):
    /// steps per second, the training loop's peak memory and its wall time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_seconds: Option<f64>,
    /// The training preset (`tiny`, `lra`), when the writer names one: LRA's published
    /// figure is shown beside runs at LRA's settings only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
}

/// The accuracy records of every run directory given that has an `accuracy.jsonl`
/// (files given directly are results files and are skipped). An accuracy outside 0..=1
/// is refused with the line that holds it.
pub fn load_accuracy(paths: &[PathBuf]) -> Result<Vec<AccuracyRecord>, LoadError> {
    let mut all = Vec::new();
    for p in paths.iter().filter(|p| p.is_dir()) {
        let file = p.join(ACCURACY_FILE);
        if file.exists() {
            all.extend(read_accuracy(&file)?);
        }
    }
    Ok(all)
}

pub fn read_accuracy(file: &Path) -> Result<Vec<AccuracyRecord>, LoadError> {
    let check = |r: &AccuracyRecord| {
        if (0.0..=1.0).contains(&r.accuracy) {
            Ok(())
        } else {
            Err(format!(
                "accuracy {} is not a fraction between 0 and 1",
                r.accuracy
            ))
        }
    };
    Ok(read_versioned(file, ACCURACY_SCHEMA_VERSION, check)?.0)
}

/// LRA's task order first, then any other task by name.
fn task_order(tasks: &mut [String]) {
    const LRA: [&str; 7] = [
        "listops",
        "text",
        "retrieval",
        "image",
        "pathfinder",
        "pathfinder-64",
        "path-x",
    ];
    tasks.sort_by_key(|t| {
        (
            LRA.iter().position(|l| l == t).unwrap_or(LRA.len()),
            t.clone(),
        )
    });
}

/// Mean accuracy per (variant, task) over seeds, in percent, with the number of seeds.
pub fn means(records: &[AccuracyRecord]) -> BTreeMap<(String, String), (f64, usize)> {
    let mut sums: BTreeMap<(String, String), (f64, usize)> = BTreeMap::new();
    for r in records {
        let e = sums.entry((r.variant.clone(), r.task.clone())).or_default();
        e.0 += r.accuracy * 100.0;
        e.1 += 1;
    }
    sums.into_iter()
        .map(|(k, (s, n))| (k, (s / n as f64, n)))
        .collect()
}

/// Variants in order of first appearance.
pub fn variants(records: &[AccuracyRecord]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        if !out.contains(&r.variant) {
            out.push(r.variant.clone());
        }
    }
    out
}

/// Variants x tasks, each cell the mean accuracy in percent over seeds (with the count
/// when more than one), the LRA paper's figure beside it where the variant and the task
/// are in their table, and the average over the variant's tasks.
pub fn accuracy_grid(records: &[AccuracyRecord]) -> Grid {
    let mut tasks: Vec<String> = records.iter().map(|r| r.task.clone()).collect();
    tasks.sort();
    tasks.dedup();
    task_order(&mut tasks);
    let means = means(records);
    let mut header = vec!["accuracy % (LRA paper)".to_string()];
    header.extend(tasks.iter().cloned());
    header.extend(["average".to_string(), "steps".to_string()]);
    let mut grid = Grid::new(header);
    for v in variants(records) {
        let mut row: Vec<GridCell> = vec![v.clone().into()];
        let mut got = Vec::new();
        for t in &tasks {
            row.push(match means.get(&(v.clone(), t.clone())) {
                Some(&(m, n)) => {
                    got.push(m);
                    let seeds = if n > 1 {
                        format!(", {n} seeds")
                    } else {
                        String::new()
                    };
                    let at_lra_settings = records
                        .iter()
                        .filter(|r| r.variant == v && &r.task == t)
                        .all(|r| r.preset.as_deref().is_none_or(|p| p == "lra"));
                    let paper = anchors::lra_accuracy(&v, t)
                        .filter(|_| at_lra_settings)
                        .map_or(String::new(), |p| format!(" ({p:.2})"));
                    GridCell::new(format!("{m:.2}{paper}{seeds}"), Some(m))
                }
                None => GridCell::default(),
            });
        }
        let avg = (!got.is_empty()).then(|| got.iter().sum::<f64>() / got.len() as f64);
        row.push(GridCell::new(
            avg.map_or("-".into(), |a| format!("{a:.2}")),
            avg,
        ));
        let steps: Vec<u64> = records
            .iter()
            .filter(|r| r.variant == v)
            .map(|r| r.steps)
            .collect();
        let (lo, hi) = (steps.iter().min(), steps.iter().max());
        row.push(match (lo, hi) {
            (Some(lo), Some(hi)) if lo == hi => GridCell::new(lo.to_string(), Some(*lo as f64)),
            (Some(lo), Some(hi)) => GridCell::new(format!("{lo}-{hi}"), Some(*hi as f64)),
            _ => GridCell::default(),
        });
        grid.push(row);
    }
    grid
}

/// LRA's efficiency view from real training steps: per (variant, task), steps per second
/// and the training loop's peak memory, each with its ratio to `vanilla` on the same
/// task (speed-up above 1 is faster, memory below 1 is smaller). None when no record
/// carries training measurements.
pub fn training_grid(records: &[AccuracyRecord]) -> Option<Grid> {
    if records.iter().all(|r| r.steps_per_s.is_none()) {
        return None;
    }
    let mut tasks: Vec<String> = records.iter().map(|r| r.task.clone()).collect();
    tasks.sort();
    tasks.dedup();
    task_order(&mut tasks);
    // Mean over seeds of steps/s and peak memory.
    let mean_of = |v: &str, t: &str| -> (Option<f64>, Option<f64>) {
        let rs: Vec<&AccuracyRecord> = records
            .iter()
            .filter(|r| r.variant == v && r.task == t)
            .collect();
        let avg = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        (
            avg(rs.iter().filter_map(|r| r.steps_per_s).collect()),
            avg(rs
                .iter()
                .filter_map(|r| r.peak_memory_bytes.map(|b| b as f64))
                .collect()),
        )
    };
    let mut header = vec!["training: steps/s (x vanilla), peak MiB (x vanilla)".to_string()];
    header.extend(tasks.iter().cloned());
    let mut grid = Grid::new(header);
    let reference: Vec<(Option<f64>, Option<f64>)> =
        tasks.iter().map(|t| mean_of("vanilla", t)).collect();
    for v in variants(records) {
        let mut row: Vec<GridCell> = vec![v.clone().into()];
        for (t, &(ref_speed, ref_mem)) in tasks.iter().zip(&reference) {
            let (speed, mem) = mean_of(&v, t);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!(" ({:.2}x)", a / b),
                _ => String::new(),
            };
            let text = match (speed, mem) {
                (None, None) => String::new(),
                _ => format!(
                    "{}{}, {}{}",
                    speed.map_or("-".into(), |s| format!("{s:.1}")),
                    ratio(speed, ref_speed),
                    mem.map_or("-".into(), |m| format!("{:.0}", m / (1u64 << 20) as f64)),
                    ratio(mem, ref_mem)
                ),
            };
            row.push(GridCell::new(text, speed));
        }
        grid.push(row);
    }
    Some(grid)
}
