//! The accuracy table and the training table, from `accuracy.jsonl` records (their type
//! and loading are in `xarena_schema::accuracy`).

use std::collections::BTreeMap;

use crate::anchors;
use crate::grid::{Grid, GridCell};

pub use xarena_schema::accuracy::{
    load_accuracy, read_accuracy, AccuracyRecord, ACCURACY_FILE, ACCURACY_SCHEMA_VERSION,
};

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

/// Each variant's accuracy averaged over the tasks it has, in [`variants`] order.
pub fn mean_per_variant(records: &[AccuracyRecord]) -> Vec<(String, f64)> {
    let means = means(records);
    variants(records)
        .into_iter()
        .map(|v| {
            let got: Vec<f64> = means
                .iter()
                .filter(|((x, _), _)| *x == v)
                .map(|(_, (m, _))| *m)
                .collect();
            let mean = got.iter().sum::<f64>() / got.len().max(1) as f64;
            (v, mean)
        })
        .collect()
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
    let mut rows = Vec::new();
    // The header mentions the paper only when some cell shows its figure.
    let mut any_paper = false;
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
                    any_paper |= !paper.is_empty();
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
        rows.push(row);
    }
    let title = if any_paper {
        "accuracy % (LRA paper)"
    } else {
        "accuracy %"
    };
    let mut header = vec![title.to_string()];
    header.extend(tasks.iter().cloned());
    header.extend(["average".to_string(), "steps".to_string()]);
    let mut grid = Grid::new(header);
    for row in rows {
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
