//! The leaderboard page (`xarena leaderboard`): the page a researcher opens to choose an
//! attention mechanism. One section per setting (device, dtype, mode, scope, batch),
//! chosen with a `<select>`; in each, ratios only between cases of one run, or of runs
//! whose environments match (then every row names its run, date and commit); small
//! multiples per survey family with `vanilla` and `sdpa` as references and a band around
//! each line; the answer per length (fastest, smallest, fastest within a quality bound)
//! and each variant's crossover against `sdpa` with its interval.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use maud::{html, Markup, PreEscaped, DOCTYPE};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::accuracy::{self, AccuracyRecord};
use crate::analysis::{crossover, efficiency_tables, Crossover, EfficiencyTable, FLOOR};
use crate::load::{read_results, LoadError};
use crate::lra::lra_views;
use crate::publish::{page_head, SORT_JS};
use crate::schema::{Environment, Record, Setting, Status};
use crate::table::{format_bytes, format_seconds, instability_warning};

/// The exact reference every crossover is taken against (the fused kernel: the one to
/// beat).
pub const CROSSOVER_REFERENCE: &str = "sdpa";
/// The references drawn in every family's panel.
pub const REFERENCES: [&str; 2] = ["vanilla", "sdpa"];
/// The quality-proxy bound by default: relative output error against exact attention
/// (`xarena quality`, qk x0.25).
pub const DEFAULT_QUALITY_BOUND: f64 = 0.75;
/// The quality-proxy records' score scale the bound is read at.
pub const QUALITY_QK_SCALE: f64 = 0.25;
/// The accuracy bound by default: points of mean accuracy below exact attention's.
pub const DEFAULT_ACCURACY_BOUND: f64 = 5.0;

#[derive(Debug, Error)]
pub enum LeaderboardError {
    #[error("{path}: {error}")]
    Load { path: PathBuf, error: LoadError },
    #[error("{0}: no such directory or results file")]
    Missing(PathBuf),
    #[error("{0}: no records")]
    Empty(PathBuf),
    /// Runs of one setting measured in different environments (the message names both
    /// runs, their paths and what differs).
    #[error(
        "{0}; a leaderboard compares cases of one run, or of runs whose environments \
         match: give one of them"
    )]
    Mixed(String),
    #[error("{path}: {error}")]
    Quality { path: PathBuf, error: String },
    #[error("drawing a plot: {0}")]
    Plot(String),
}

/// A variant's paper (citation and a link) and source file, from the registry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VariantMeta {
    pub paper: String,
    pub paper_url: Option<String>,
}

/// The fields of an `xarena quality` record the page uses.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct QualityPoint {
    pub label: String,
    pub seq_len: i64,
    pub qk_scale: f64,
    pub rel_error: f64,
    #[serde(default)]
    pub exact: bool,
}

/// Reads `quality.jsonl` (a file, or a directory holding one).
pub fn load_quality(path: &Path) -> Result<Vec<QualityPoint>, LeaderboardError> {
    let file = if path.is_dir() {
        path.join("quality.jsonl")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|e| LeaderboardError::Quality {
        path: file.clone(),
        error: e.to_string(),
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| LeaderboardError::Quality {
                path: file.clone(),
                error: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// One run a section draws on.
#[derive(Debug, Clone, Serialize)]
pub struct RunRef {
    pub run_id: String,
    pub path: PathBuf,
    /// The earliest case's start (RFC 3339).
    pub started_at: String,
    pub commit: String,
}

impl RunRef {
    pub fn describe(&self) -> String {
        format!(
            "run {} ({}, commit {})",
            self.run_id,
            self.started_at.get(..10).unwrap_or(&self.started_at),
            short_commit(&self.commit)
        )
    }
}

fn short_commit(c: &str) -> String {
    let dirty = c.ends_with("-dirty");
    let base = c.trim_end_matches("-dirty");
    format!(
        "{}{}",
        base.get(..10).unwrap_or(base),
        if dirty { "-dirty" } else { "" }
    )
}

/// Where a variant crosses `sdpa`: at the medians, and at the ends of the intervals (the
/// optimistic end: the variant's low against sdpa's high; the pessimistic: the reverse).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CrossoverSpan {
    pub median: Option<Crossover>,
    pub early: Option<Crossover>,
    pub late: Option<Crossover>,
    /// The ends come from `--rounds` intervals (else from p10-p90).
    pub from_rounds: bool,
}

/// The answer at one length.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub seq_len: i64,
    pub fastest: Option<(String, f64)>,
    pub smallest: Option<(String, u64)>,
    /// The fastest whose quality error is within the bound: label, latency, error.
    pub fastest_within: Option<(String, f64, f64)>,
    /// Others whose band (interval, else p10-p90) overlaps the fastest's: not told apart
    /// from it by this run.
    pub ties: Vec<String>,
    /// With accuracy records: the fastest whose mean accuracy is within the accuracy
    /// bound of exact attention's (exact rows count as vanilla's): label, latency,
    /// accuracy.
    pub fastest_accurate: Option<(String, f64, f64)>,
}

/// One setting as measured by one run, or by runs whose environments match.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub setting: Setting,
    pub runs: Vec<RunRef>,
    pub table: EfficiencyTable,
    /// The run (index into `runs`) of each row.
    pub run_of: BTreeMap<String, usize>,
    pub family_of: BTreeMap<String, String>,
    pub exact: BTreeSet<String>,
    /// The band around each row's latency at each length: (low, high), the rounds'
    /// interval where there is one, else p10-p90.
    pub bands: BTreeMap<String, BTreeMap<i64, (f64, f64, bool)>>,
    pub answers: Vec<Answer>,
    pub crossovers: BTreeMap<String, CrossoverSpan>,
    /// Runs given with records of this setting whose every row was replaced by a run
    /// given later: named on the page, nothing of theirs shown.
    pub superseded: Vec<(String, PathBuf)>,
}

impl Section {
    pub fn joined(&self) -> bool {
        self.runs.len() > 1
    }

    /// The median latency of `label`'s case at `n`, where it has one.
    fn latency(&self, label: &str, n: i64) -> Option<f64> {
        self.table
            .rows
            .iter()
            .find(|r| r.label == label)
            .and_then(|r| r.cells.get(&n))
            .and_then(|c| c.latency_s)
    }

    /// Families in order of first row, without the exact reference and the floor.
    pub fn families(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for row in &self.table.rows {
            let fam = self.family_of.get(&row.label).cloned().unwrap_or_default();
            if fam == "exact" || fam == "baseline" || REFERENCES.contains(&row.label.as_str()) {
                continue;
            }
            match out.iter_mut().find(|(f, _)| *f == fam) {
                Some((_, v)) => v.push(row.label.clone()),
                None => out.push((fam, vec![row.label.clone()])),
            }
        }
        out
    }

    /// Rank by latency at the longest length every ranked row has (1: fastest).
    pub fn ranks(&self) -> BTreeMap<String, usize> {
        let n = self.table.seq_lens.last().copied();
        let mut lat: Vec<(String, f64)> = self
            .table
            .rows
            .iter()
            .filter(|r| r.label != FLOOR)
            .filter_map(|r| {
                let c = r.cells.get(&n?)?;
                Some((r.label.clone(), c.latency_s?))
            })
            .collect();
        lat.sort_by(|a, b| a.1.total_cmp(&b.1));
        lat.into_iter()
            .enumerate()
            .map(|(i, (l, _))| (l, i + 1))
            .collect()
    }
}

/// The environment fields two runs must share for their cases to be compared.
fn environment_key(e: &Environment) -> Vec<(&'static str, String)> {
    vec![
        ("host", format!("{:?}", e.hostname)),
        ("CPU", e.cpu_model.clone()),
        ("logical CPUs", e.logical_cpus.to_string()),
        ("threads", e.threads.to_string()),
        ("LibTorch", e.torch_version.clone()),
        ("CUDA", format!("{:?}", e.cuda_runtime)),
        (
            "GPUs",
            e.gpus
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]
}

/// What differs between two environments, or `None` where they match.
pub fn environment_difference(a: &Environment, b: &Environment) -> Option<String> {
    let diff: Vec<String> = environment_key(a)
        .into_iter()
        .zip(environment_key(b))
        .filter(|(x, y)| x.1 != y.1)
        .map(|(x, y)| format!("{}: {} vs {}", x.0, x.1, y.1))
        .collect();
    (!diff.is_empty()).then(|| diff.join("; "))
}

/// The records of one run directory (or results file), with its path.
#[derive(Debug, Clone)]
pub struct RunInput {
    pub path: PathBuf,
    pub records: Vec<Record>,
}

/// Loads each path on its own, so that each run keeps its path. A missing path or one
/// without records is an error naming it.
pub fn load_runs(paths: &[PathBuf]) -> Result<Vec<RunInput>, LeaderboardError> {
    paths
        .iter()
        .map(|p| {
            if !p.exists() {
                return Err(LeaderboardError::Missing(p.clone()));
            }
            let records = read_results(p)
                .map_err(|error| LeaderboardError::Load {
                    path: p.clone(),
                    error,
                })?
                .records;
            if records.is_empty() {
                return Err(LeaderboardError::Empty(p.clone()));
            }
            Ok(RunInput {
                path: p.clone(),
                records,
            })
        })
        .collect()
}

/// The whole page's data.
#[derive(Debug, Clone, Serialize)]
pub struct Leaderboard {
    pub sections: Vec<Section>,
    pub quality: Vec<QualityPoint>,
    pub quality_bound: f64,
    pub accuracy_bound: f64,
    pub meta: BTreeMap<String, VariantMeta>,
    #[serde(skip)]
    pub accuracy: Vec<AccuracyRecord>,
}

impl Leaderboard {
    /// Sections from the runs: per setting, the runs that measured it. Runs of one
    /// setting are joined only where their environments match (each row then names its
    /// run); otherwise an error names both paths. A variant in several runs of a setting
    /// takes all its lengths from the run given last.
    pub fn build(
        runs: &[RunInput],
        quality: Vec<QualityPoint>,
        quality_bound: f64,
        meta: BTreeMap<String, VariantMeta>,
        accuracy: Vec<AccuracyRecord>,
    ) -> Result<Self, LeaderboardError> {
        // setting -> label -> run index (the last run that has the label wins).
        let mut settings: BTreeMap<Setting, BTreeMap<String, usize>> = BTreeMap::new();
        for (i, run) in runs.iter().enumerate() {
            for r in &run.records {
                settings
                    .entry(r.key.setting())
                    .or_default()
                    .insert(r.label.clone(), i);
            }
        }
        let mut sections = Vec::new();
        for (setting, labels) in settings {
            let used: BTreeSet<usize> = labels.values().copied().collect();
            let used: Vec<usize> = used.into_iter().collect();
            // Every run id of the setting, in the runs used: a results file may hold
            // several (merged) runs.
            let mut refs: Vec<RunRef> = Vec::new();
            let mut envs: Vec<(&Environment, usize)> = Vec::new();
            let mut records: Vec<Record> = Vec::new();
            let mut run_of = BTreeMap::new();
            for (label, &i) in &labels {
                for r in runs[i]
                    .records
                    .iter()
                    .filter(|r| &r.label == label && r.key.setting() == setting)
                {
                    let k = match refs.iter().position(|x| x.run_id == r.run_id) {
                        Some(k) => k,
                        None => {
                            refs.push(RunRef {
                                run_id: r.run_id.clone(),
                                path: runs[i].path.clone(),
                                started_at: r.started_at.clone(),
                                commit: r.env.git_commit.clone().unwrap_or_else(|| "?".into()),
                            });
                            envs.push((&r.env, i));
                            refs.len() - 1
                        }
                    };
                    if r.started_at < refs[k].started_at {
                        refs[k].started_at = r.started_at.clone();
                    }
                    run_of.insert(label.clone(), k);
                    records.push(r.clone());
                }
            }
            let superseded: Vec<(String, PathBuf)> = runs
                .iter()
                .enumerate()
                .filter(|(i, _)| !used.contains(i))
                .filter_map(|(_, run)| {
                    let r = run.records.iter().find(|r| r.key.setting() == setting)?;
                    Some((r.run_id.clone(), run.path.clone()))
                })
                .collect();
            for k in 1..envs.len() {
                if let Some(what) = environment_difference(envs[0].0, envs[k].0) {
                    return Err(LeaderboardError::Mixed(format!(
                        "{setting}: runs {} ({}) and {} ({}) measured it in different \
                         environments ({what})",
                        refs[0].run_id,
                        runs[envs[0].1].path.display(),
                        refs[k].run_id,
                        runs[envs[k].1].path.display(),
                    )));
                }
            }
            // A label measured twice in one run (resumed): the last record wins, as in
            // the reports.
            let table = efficiency_tables(&records)
                .into_iter()
                .next()
                .expect("one setting's records make one table");
            let family_of = records
                .iter()
                .map(|r| (r.label.clone(), r.claims.family.clone()))
                .collect();
            let exact = records
                .iter()
                .filter(|r| r.claims.exact)
                .map(|r| r.label.clone())
                .collect();
            let mut bands: BTreeMap<String, BTreeMap<i64, (f64, f64, bool)>> = BTreeMap::new();
            for r in records.iter().filter(|r| r.status == Status::Ok) {
                let Some(l) = &r.latency else { continue };
                let band = match &r.rounds {
                    Some(x) => (x.interval.low_s, x.interval.high_s, true),
                    None => (l.p10_s, l.p90_s, false),
                };
                bands
                    .entry(r.label.clone())
                    .or_default()
                    .insert(r.key.seq_len, band);
            }
            let mut s = Section {
                setting,
                runs: refs,
                table,
                run_of,
                family_of,
                exact,
                bands,
                answers: Vec::new(),
                crossovers: BTreeMap::new(),
                superseded,
            };
            s.answers = answers(&s, &quality, quality_bound);
            s.crossovers = crossovers(&s);
            sections.push(s);
        }
        let mut lb = Leaderboard {
            sections,
            quality,
            quality_bound,
            accuracy_bound: DEFAULT_ACCURACY_BOUND,
            meta,
            accuracy,
        };
        lb.set_accuracy_bound(DEFAULT_ACCURACY_BOUND);
        Ok(lb)
    }

    /// Mean accuracy over tasks per variant name (its label's part before parameters).
    pub fn mean_accuracy(&self) -> BTreeMap<String, f64> {
        accuracy::mean_per_variant(&self.accuracy)
            .into_iter()
            .map(|(v, mean)| (variant_of(&v).to_string(), mean))
            .collect()
    }

    /// Sets the accuracy bound (points below exact attention's mean accuracy) and
    /// recomputes each length's fastest variant within it.
    pub fn set_accuracy_bound(&mut self, bound: f64) {
        self.accuracy_bound = bound;
        let acc = self.mean_accuracy();
        let exact_acc = acc.get("vanilla").copied();
        for s in &mut self.sections {
            for a in &mut s.answers {
                let n = a.seq_len;
                a.fastest_accurate = exact_acc.and_then(|reference| {
                    s.table
                        .rows
                        .iter()
                        .filter_map(|r| {
                            let c = r.cells.get(&n)?;
                            let t = c.latency_s.filter(|_| c.status == Status::Ok)?;
                            let got = if s.exact.contains(&r.label) {
                                reference
                            } else {
                                *acc.get(variant_of(&r.label))?
                            };
                            (got >= reference - bound).then(|| (r.label.clone(), t, got))
                        })
                        .min_by(|x, y| x.1.total_cmp(&y.1))
                });
            }
        }
    }
}

/// A row's quality-proxy error: 0 for exact attention, else the largest relative error
/// of its `xarena quality` records at [`QUALITY_QK_SCALE`] (over the lengths measured).
pub fn quality_error(label: &str, exact: bool, quality: &[QualityPoint]) -> Option<f64> {
    if exact {
        return Some(0.0);
    }
    quality
        .iter()
        .filter(|q| q.label == label && (q.qk_scale - QUALITY_QK_SCALE).abs() < 1e-9)
        .map(|q| q.rel_error)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))
}

/// The fastest, the smallest and the fastest within the quality bound at each length.
pub fn answers(s: &Section, quality: &[QualityPoint], bound: f64) -> Vec<Answer> {
    s.table
        .seq_lens
        .iter()
        .map(|&n| {
            let cells: Vec<(&str, &crate::analysis::Cell)> = s
                .table
                .rows
                .iter()
                .filter(|r| r.label != FLOOR)
                .filter_map(|r| r.cells.get(&n).map(|c| (r.label.as_str(), c)))
                .filter(|(_, c)| c.status == Status::Ok)
                .collect();
            let fastest = cells
                .iter()
                .filter_map(|(l, c)| Some((l.to_string(), c.latency_s?)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let smallest = cells
                .iter()
                .filter_map(|(l, c)| Some((l.to_string(), c.peak_bytes?)))
                .min_by_key(|x| x.1);
            let fastest_within = cells
                .iter()
                .filter_map(|(l, c)| {
                    let err = quality_error(l, s.exact.contains(*l), quality)?;
                    (err <= bound).then_some((l.to_string(), c.latency_s?, err))
                })
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let band = |l: &str| s.bands.get(l).and_then(|b| b.get(&n)).copied();
            let ties = match fastest.as_ref().and_then(|(l, _)| band(l)) {
                Some((_, hi, _)) => cells
                    .iter()
                    .filter(|(l, _)| Some(*l) != fastest.as_ref().map(|f| f.0.as_str()))
                    .filter(|(l, _)| band(l).is_some_and(|b| b.0 <= hi))
                    .map(|(l, _)| l.to_string())
                    .collect(),
                None => Vec::new(),
            };
            Answer {
                seq_len: n,
                ties,
                fastest_accurate: None,
                fastest,
                smallest,
                fastest_within,
            }
        })
        .collect()
}

/// Each row's crossover against [`CROSSOVER_REFERENCE`], with the ends of its interval.
pub fn crossovers(s: &Section) -> BTreeMap<String, CrossoverSpan> {
    let Some(reference) = s.bands.get(CROSSOVER_REFERENCE) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (label, band) in &s.bands {
        if label == CROSSOVER_REFERENCE || label == FLOOR {
            continue;
        }
        let mut med = Vec::new();
        let mut early = Vec::new();
        let mut late = Vec::new();
        let mut from_rounds = true;
        for (&n, &(lo, hi, rounds)) in band {
            let (Some(&(rlo, rhi, rr)), Some(m), Some(rm)) = (
                reference.get(&n),
                s.latency(label, n),
                s.latency(CROSSOVER_REFERENCE, n),
            ) else {
                continue;
            };
            from_rounds &= rounds && rr;
            med.push((n, m / rm));
            early.push((n, lo / rhi));
            late.push((n, hi / rlo));
        }
        out.insert(
            label.clone(),
            CrossoverSpan {
                median: crossover(&med),
                early: crossover(&early),
                late: crossover(&late),
                from_rounds,
            },
        );
    }
    out
}

pub fn format_crossover(c: Option<Crossover>) -> String {
    match c {
        None => "-".into(),
        Some(Crossover::Below(n)) => format!("<= {n}"),
        Some(Crossover::At(x)) => format!("~{x:.0}"),
        Some(Crossover::Never(n)) => format!("> {n}"),
    }
}

fn crossover_sort(c: Option<Crossover>) -> f64 {
    match c {
        None => f64::INFINITY,
        Some(Crossover::Below(n)) => n as f64 / 2.0,
        Some(Crossover::At(x)) => x,
        Some(Crossover::Never(n)) => n as f64 * 1e3,
    }
}

impl CrossoverSpan {
    pub fn text(&self) -> String {
        let m = format_crossover(self.median);
        let (e, l) = (format_crossover(self.early), format_crossover(self.late));
        if e == m && l == m {
            m
        } else {
            format!("{m} [{e}, {l}]")
        }
    }
}

/// The paper link for a citation: its first arXiv id.
pub fn arxiv_url(citation: &str) -> Option<String> {
    let i = citation.find("arXiv:")? + "arXiv:".len();
    let id: String = citation[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let id = id.trim_end_matches('.');
    (!id.is_empty()).then(|| format!("https://arxiv.org/abs/{id}"))
}

/// A variant's source file in the repository, from its family (a directory per family)
/// and name.
pub fn source_file(family: &str, variant: &str) -> String {
    let dir = match family {
        "fixed-patterns" => "fixed",
        "combined-patterns" => "combined",
        "learnable-patterns" => "learnable",
        "neural-memory" => "memory",
        "low-rank" => "lowrank",
        "kernels" => "kernel",
        other => other,
    };
    format!("variants/src/{dir}/{}.rs", variant.replace('-', "_"))
}

fn variant_of(label: &str) -> &str {
    label.split('(').next().unwrap_or(label)
}

fn slug(i: usize, s: &Setting) -> String {
    let text: String = format!(
        "{}-{}-{}-{}-b{}",
        s.device, s.dtype, s.mode, s.scope, s.batch
    )
    .chars()
    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
    .collect();
    format!("s{i}-{text}")
}

// ---------------------------------------------------------------- plots

/// Colours with contrast on white, told apart by colour-blind readers (Okabe-Ito and
/// Tableau), and a marker each: within a panel no two variants share either.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];
const REFERENCE_COLOURS: [RGBColor; 2] = [RGBColor(0, 0, 0), RGBColor(120, 120, 120)];
const FONT: &str = "sans-serif";

fn draw_marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    at: (i32, i32),
    kind: usize,
    color: RGBColor,
) -> Result<(), String> {
    let s = 4;
    let style = color.filled();
    let r = match kind % 6 {
        0 => area.draw(&Circle::new(at, s, style)),
        1 => area.draw(&TriangleMarker::new(at, s + 1, style)),
        2 => area.draw(&Rectangle::new(
            [(at.0 - s, at.1 - s), (at.0 + s, at.1 + s)],
            style,
        )),
        3 => area.draw(&Cross::new(at, s, color.stroke_width(2))),
        4 => area.draw(&Circle::new(at, s, color.stroke_width(2))),
        _ => area.draw(&Rectangle::new(
            [(at.0 - s, at.1 - s), (at.0 + s, at.1 + s)],
            color.stroke_width(2),
        )),
    };
    r.map_err(|e| e.to_string())
}

/// One family's panel: latency against N on log-log axes with ticks at the measured
/// lengths, `vanilla` and `sdpa` as references, a band around each line (the rounds'
/// interval, else p10-p90) and the legend beside the plot.
pub fn family_panel(
    s: &Section,
    family: &str,
    labels: &[String],
) -> Result<Option<String>, String> {
    let mut series: Vec<(String, RGBColor, usize)> = Vec::new();
    for (i, r) in REFERENCES.iter().enumerate() {
        if s.bands.contains_key(*r) {
            series.push((r.to_string(), REFERENCE_COLOURS[i], 4 + i));
        }
    }
    for (i, l) in labels.iter().enumerate() {
        series.push((l.clone(), PALETTE[i % PALETTE.len()], i));
    }
    let lens = &s.table.seq_lens;
    let ys: Vec<f64> = series
        .iter()
        .filter_map(|(l, ..)| s.bands.get(l))
        .flat_map(|b| b.values().flat_map(|&(lo, hi, _)| [lo, hi]))
        .filter(|y| *y > 0.0)
        .collect();
    let (Some(&n0), Some(&n1)) = (lens.first(), lens.last()) else {
        return Ok(None);
    };
    if ys.is_empty() || n0 <= 0 {
        return Ok(None);
    }
    let ylo = ys.iter().copied().fold(f64::INFINITY, f64::min) / 1.3;
    let yhi = ys.iter().copied().fold(0.0, f64::max) * 1.3;
    let (xlo, xhi) = (n0 as f64 / 1.2, n1 as f64 * 1.2);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot_area, legend_area) = root.split_horizontally(460);
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(family, (FONT, 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (xlo..xhi)
                    .log_scale()
                    .with_key_points(lens.iter().map(|&n| n as f64).collect()),
                (ylo..yhi).log_scale(),
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("sequence length N")
            .y_desc("latency")
            .light_line_style(WHITE)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format_seconds(*y))
            .label_style((FONT, 11))
            .draw()
            .map_err(|e| e.to_string())?;
        for (label, color, marker) in &series {
            let Some(band) = s.bands.get(label) else {
                continue;
            };
            let mut poly: Vec<(f64, f64)> = band
                .iter()
                .map(|(&n, &(lo, _, _))| (n as f64, lo))
                .collect();
            poly.extend(band.iter().rev().map(|(&n, &(_, hi, _))| (n as f64, hi)));
            chart
                .draw_series(std::iter::once(Polygon::new(
                    poly,
                    color.mix(0.18).filled(),
                )))
                .map_err(|e| e.to_string())?;
            let med: Vec<(f64, f64)> = s
                .table
                .rows
                .iter()
                .find(|r| &r.label == label)
                .map(|r| {
                    r.cells
                        .iter()
                        .filter_map(|(&n, c)| Some((n as f64, c.latency_s?)))
                        .collect()
                })
                .unwrap_or_default();
            chart
                .draw_series(LineSeries::new(med.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            for p in &med {
                draw_marker(&root, chart.backend_coord(p), *marker, *color)?;
            }
        }
        for (i, (label, color, marker)) in series.iter().enumerate() {
            let y = 40 + 20 * i as i32;
            legend_area
                .draw(&PathElement::new(
                    vec![(6, y), (30, y)],
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            let (ox, oy) = legend_area.get_base_pixel();
            draw_marker(&root, (ox + 18, oy + y), *marker, *color)?;
            legend_area
                .draw(&Text::new(label.clone(), (36, y - 7), (FONT, 12)))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Some(svg))
}

// ---------------------------------------------------------------- page

fn fmt_latency(t: f64, band: Option<&(f64, f64, bool)>) -> String {
    match band {
        Some(&(lo, hi, true)) => format!(
            "{} [{}, {}]",
            format_seconds(t),
            format_seconds(lo),
            format_seconds(hi)
        ),
        _ => format_seconds(t),
    }
}

impl Leaderboard {
    fn meta_of(&self, label: &str) -> VariantMeta {
        self.meta
            .get(variant_of(label))
            .cloned()
            .unwrap_or_default()
    }

    fn variant_cell(&self, s: &Section, label: &str) -> Markup {
        let m = self.meta_of(label);
        let family = s.family_of.get(label).cloned().unwrap_or_default();
        html! {
            @if let Some(u) = &m.paper_url {
                a href=(u) title=(m.paper) { (label) }
            } @else {
                span title=(m.paper) { (label) }
            }
            " "
            a.src href=(format!("../../{}", source_file(&family, variant_of(label))))
                title="source file" { "src" }
        }
    }

    fn section_html(&self, idx: usize, s: &Section) -> Result<Markup, LeaderboardError> {
        let ranks = s.ranks();
        let lens = &s.table.seq_lens;
        let mut panels = Vec::new();
        for (family, labels) in s.families() {
            if let Some(svg) = family_panel(s, &family, &labels).map_err(LeaderboardError::Plot)? {
                panels.push((family, svg));
            }
        }
        let mut rows: Vec<&crate::analysis::Row> = s.table.rows.iter().collect();
        rows.sort_by_key(|r| ranks.get(&r.label).copied().unwrap_or(usize::MAX));
        let nmax = lens.last().copied().unwrap_or(0);
        let bound = self.quality_bound;
        Ok(html! {
            section.setting id=(slug(idx, &s.setting)) data-setting=(s.setting.to_string())
                data-device=(s.setting.device) data-dtype=(s.setting.dtype.to_string())
                data-mode=(s.setting.mode.to_string()) data-scope=(s.setting.scope.to_string())
                data-batch=(s.setting.batch) {
                h2 { (s.setting.to_string()) }
                @if s.joined() {
                    p.joined {
                        "Joined " (s.runs.len()) " runs whose environments match (host, CPU, \
                         threads, LibTorch, GPUs); ratios are taken across them and every \
                         row names its run: "
                        @for (k, r) in s.runs.iter().enumerate() {
                            @if k > 0 { "; " }
                            "[" (k + 1) "] " (r.describe())
                        }
                    }
                } @else {
                    p.run { "One " (s.runs[0].describe()) ", from " code { (s.runs[0].path.display().to_string()) } "." }
                }
                @if !s.superseded.is_empty() {
                    p.joined {
                        "Also given for this setting, and replaced for every variant by a run given later (nothing of theirs is shown): "
                        @for (k, (id, path)) in s.superseded.iter().enumerate() {
                            @if k > 0 { "; " }
                            "run " (id) " (" (path.display().to_string()) ")"
                        }
                    }
                }
                h3 { "The answer" }
                table.answer {
                    thead { tr {
                        th { "N" } th { "fastest" } th { "smallest (peak memory)" }
                        th { "fastest with quality error <= " (bound) }
                        @if !self.accuracy.is_empty() { th { "fastest with accuracy within " (self.accuracy_bound) " points of exact" } }
                    } }
                    tbody {
                        @for a in &s.answers {
                            tr {
                                td { (a.seq_len) }
                                td {
                                    @if let Some((l, t)) = &a.fastest { (l) " (" (format_seconds(*t)) ")" } @else { "-" }
                                    @if !a.ties.is_empty() { br; span.ties title=(a.ties.join(", ")) { "tied within the band: " (a.ties.len()) " other(s)" } }
                                }
                                td { @if let Some((l, b)) = &a.smallest { (l) " (" (format_bytes(*b)) ")" } @else { "-" } }
                                td { @if let Some((l, t, e)) = &a.fastest_within { (l) " (" (format_seconds(*t)) ", error " (format!("{e:.2}")) ")" } @else { "-" } }
                                @if !self.accuracy.is_empty() {
                                    td { @if let Some((l, t, acc)) = &a.fastest_accurate { (l) " (" (format_seconds(*t)) ", accuracy " (format!("{acc:.1}")) "%)" } @else { "-" } }
                                }
                            }
                        }
                    }
                }
                h3 { "Per family: latency against N" }
                div.panels {
                    @for (family, svg) in &panels {
                        figure.panel data-family=(family) { (PreEscaped(svg)) }
                    }
                }
                p.note { "Lines: median latency; band: " @if s.bands.values().flat_map(|b| b.values()).any(|b| b.2) { "the interval of the median over rounds (--rounds)" } @else { "p10-p90 of the timed iterations (no rounds in this run)" } "; ticks at the lengths measured; vanilla (black) and sdpa (grey) in every panel." }
                h3 { "Leaderboard" }
                div.scroll {
                    table.sortable.board {
                        thead { tr {
                            th { "variant" } th { "rank" } th { "family" }
                            @if s.joined() { th { "run" } }
                            @for n in lens { th { "N=" (n) } }
                            th { "peak memory N=" (nmax) }
                            th { "crossover vs sdpa" }
                            th { "quality error" }
                        } }
                        tbody {
                            @for r in &rows {
                                @let k = s.run_of.get(&r.label).copied().unwrap_or(0);
                                tr data-label=(r.label) {
                                    td { (self.variant_cell(s, &r.label)) }
                                    @if let Some(rank) = ranks.get(&r.label) { td data-sort=(rank) { (rank) } } @else { td data-sort="Infinity" { "-" } }
                                    td { (s.family_of.get(&r.label).cloned().unwrap_or_default()) }
                                    @if s.joined() {
                                        td.runlabel title=(s.runs[k].describe()) { "[" (k + 1) "] " (s.runs[k].describe()) }
                                    }
                                    @for n in lens {
                                        @match r.cells.get(n) {
                                            Some(c) if c.latency_s.is_some() => {
                                                @let t = c.latency_s.unwrap_or(0.0);
                                                @let band = s.bands.get(&r.label).and_then(|b| b.get(n));
                                                td data-sort=(t) {
                                                    (fmt_latency(t, band))
                                                    @if let Some(x) = s.latency(CROSSOVER_REFERENCE, *n) { " (" (format!("{:.2}x", x / t)) ")" }
                                                    @if !c.unstable.is_empty() { span.unstable title=(c.unstable.join("; ")) { " ~" } }
                                                }
                                            }
                                            Some(c) => { td data-sort="Infinity" { (format!("{:?}", c.status).to_lowercase()) } }
                                            None => { td data-sort="Infinity" { "-" } }
                                        }
                                    }
                                    @match r.cells.get(&nmax).and_then(|c| c.peak_bytes) {
                                        Some(b) => { td data-sort=(b) { (format_bytes(b)) } }
                                        None => { td data-sort="Infinity" { "-" } }
                                    }
                                    @match s.crossovers.get(&r.label) {
                                        Some(c) => { td data-sort=(crossover_sort(c.median)) { (c.text()) } }
                                        None => { td data-sort="Infinity" { "-" } }
                                    }
                                    @match quality_error(&r.label, s.exact.contains(&r.label), &self.quality) {
                                        Some(e) => { td data-sort=(e) { (format!("{e:.2}")) } }
                                        None => { td data-sort="Infinity" { "-" } }
                                    }
                                }
                            }
                        }
                    }
                }
                p.note {
                    "Latency: median per iteration"
                    @if s.bands.values().flat_map(|b| b.values()).any(|b| b.2) { " [interval of the median over rounds]" }
                    "; in brackets the speed-up over sdpa at that length, of the same "
                    @if s.joined() { "environment" } @else { "run" }
                    ". Rank: by latency at N=" (nmax) ". Crossover: the length from which the variant \
                     stays faster than sdpa (log-log interpolation), in brackets at the \
                     optimistic and pessimistic ends of the intervals. Quality error: \
                     ||y - y_exact|| / ||y_exact|| from xarena quality (random weights, qk x"
                    (QUALITY_QK_SCALE) ", the largest over its lengths); 0 for exact attention. \
                     ~: unstable (hover for why)."
                }
            }
        })
    }

    /// The page: self-contained (inline CSS, SVG and script), every string escaped.
    pub fn html(&self) -> Result<String, LeaderboardError> {
        let tables: Vec<EfficiencyTable> = self.sections.iter().map(|s| s.table.clone()).collect();
        let mut sections = Vec::new();
        for (i, s) in self.sections.iter().enumerate() {
            sections.push(self.section_html(i, s)?);
        }
        let lra = lra_views(&tables);
        let fig3 = self.accuracy_figure()?;
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                (page_head("xarena leaderboard", LEADERBOARD_CSS))
                body {
                    h1 { "xarena leaderboard: choosing an attention mechanism" }
                    p {
                        (self.sections.len()) " setting(s). Each setting's ratios come from one \
                         run (or from runs whose environments match, said where so). Made by xarena "
                        (env!("CARGO_PKG_VERSION")) "."
                    }
                    @if let Some(w) = instability_warning(&tables) {
                        p.warning { (w.trim_end()) }
                    }
                    p.choose {
                        label for="setting" { "Setting: " }
                        select id="setting" {
                            @for (i, s) in self.sections.iter().enumerate() {
                                option value=(slug(i, &s.setting)) { (s.setting.to_string()) " - " (s.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>().join(" + ")) }
                            }
                        }
                        noscript { " (without script every setting is shown below)" }
                    }
                    p.dims {
                        @for (dim, values) in self.dimensions() {
                            label { (dim) " " select.dim data-dim=(dim) {
                                @for v in values { option value=(v) { (v) } }
                            } }
                            " "
                        }
                        span #none style="display:none" { "not measured: no run has this combination" }
                    }
                    @for m in &sections { (m) }
                    @if !self.accuracy.is_empty() || !lra.is_empty() {
                        section.lra {
                            h2 { "LRA layout" }
                            @if !self.accuracy.is_empty() {
                                p.joined {
                                    "Joined sources: accuracy from " (self.accuracy.len()) " training record(s) ("
                                    (accuracy_sources(&self.accuracy))
                                    "); speed and memory from "
                                    (self.sections.iter().flat_map(|s| s.runs.iter().map(|r| r.describe())).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join("; "))
                                    ". Speed-ups and memory ratios are taken within each run only."
                                }
                            }
                            div.side {
                                @if !self.accuracy.is_empty() {
                                    div { h3 { "Table 1: accuracy per task and average" } (accuracy::accuracy_grid(&self.accuracy).html()) }
                                }
                                @for v in &lra {
                                    div { h3 { "Table 2: speed and memory against the Transformer (" (v.heading()) ")" } (v.speed.html()) (v.memory.html()) }
                                }
                            }
                            @if let Some(svg) = &fig3 {
                                figure.fig3 { (PreEscaped(svg)) figcaption { "Figure 3: accuracy against speed; the area of each point is its memory against vanilla's." } }
                            }
                        }
                    }
                    script { (PreEscaped(SORT_JS)) (PreEscaped(SELECT_JS)) }
                }
            }
        };
        Ok(page.into_string())
    }

    /// The values of each dimension a reader chooses a setting by.
    pub fn dimensions(&self) -> Vec<(&'static str, Vec<String>)> {
        let pick: [(&'static str, SettingField); 5] = [
            ("device", |s| s.device.clone()),
            ("dtype", |s| s.dtype.to_string()),
            ("mode", |s| s.mode.to_string()),
            ("scope", |s| s.scope.to_string()),
            ("batch", |s| s.batch.to_string()),
        ];
        pick.iter()
            .map(|(dim, f)| {
                let mut v: Vec<String> = Vec::new();
                for s in &self.sections {
                    let x = f(&s.setting);
                    if !v.contains(&x) {
                        v.push(x);
                    }
                }
                (*dim, v)
            })
            .collect()
    }

    /// LRA's Figure 3: mean accuracy against speed-up over vanilla (training setting if
    /// there is one, at its longest length), the area of each point its memory against
    /// vanilla's, a bar across each point for the speed-up's interval (the ends of the
    /// bands: the rounds' intervals, else p10-p90).
    fn accuracy_figure(&self) -> Result<Option<String>, LeaderboardError> {
        if self.accuracy.is_empty() {
            return Ok(None);
        }
        let Some(s) = self
            .sections
            .iter()
            .find(|s| s.setting.mode == crate::schema::Mode::Train)
            .or_else(|| self.sections.first())
        else {
            return Ok(None);
        };
        let Some(&n) = s.table.seq_lens.last() else {
            return Ok(None);
        };
        let row = |label: &str| {
            s.table.rows.iter().find(|r| r.label == label).or_else(|| {
                s.table
                    .rows
                    .iter()
                    .find(|r| variant_of(&r.label) == variant_of(label))
            })
        };
        let band = |label: &str| s.bands.get(label).and_then(|b| b.get(&n)).copied();
        let Some((rlo, rhi, _)) = band("vanilla") else {
            return Ok(None);
        };
        // (label, speed-up, low, high, accuracy, memory ratio)
        let mut points: Vec<(String, f64, f64, f64, f64, f64)> = Vec::new();
        for (v, acc) in accuracy::mean_per_variant(&self.accuracy) {
            let Some(r) = row(&v) else { continue };
            let Some(c) = r.cells.get(&n) else { continue };
            let (Some(sp), Some(mr), Some((lo, hi, _))) =
                (c.speedup, c.memory_ratio, band(&r.label))
            else {
                continue;
            };
            points.push((v.clone(), sp, rlo / hi, rhi / lo, acc, mr));
        }
        if points.is_empty() {
            return Ok(None);
        }
        let xlo = points.iter().map(|p| p.2).fold(f64::INFINITY, f64::min) / 1.3;
        let xhi = points.iter().map(|p| p.3).fold(0.0, f64::max) * 1.3;
        let alo = points.iter().map(|p| p.4).fold(f64::INFINITY, f64::min);
        let ahi = points.iter().map(|p| p.4).fold(f64::NEG_INFINITY, f64::max);
        let (ylo, yhi) = ((alo - 8.0).max(0.0), (ahi + 8.0).min(100.0));
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (780, 420)).into_drawing_area();
            let e = |e: String| LeaderboardError::Plot(e);
            root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
            let (plot_area, legend_area) = root.split_horizontally(520);
            let mut chart = ChartBuilder::on(&plot_area)
                .caption(
                    format!("accuracy vs speed ({}, N={n})", s.setting.mode),
                    (FONT, 15),
                )
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d((xlo..xhi).log_scale(), ylo..yhi)
                .map_err(|x| e(x.to_string()))?;
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .x_desc("speed-up over vanilla (bar: interval)")
                .y_desc("mean accuracy (%)")
                .x_label_formatter(&|x| format!("{x:.2}x"))
                .label_style((FONT, 12))
                .draw()
                .map_err(|x| e(x.to_string()))?;
            for (i, (label, sp, lo, hi, acc, mr)) in points.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(*lo, *acc), (*hi, *acc)],
                        color.stroke_width(2),
                    )))
                    .map_err(|x| e(x.to_string()))?;
                let radius = (16.0 * mr.max(0.0).sqrt()).clamp(3.0, 50.0) as i32;
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (*sp, *acc),
                        radius,
                        color.mix(0.45).filled(),
                    )))
                    .map_err(|x| e(x.to_string()))?;
                let y = 40 + 20 * i as i32;
                legend_area
                    .draw(&Circle::new((12, y), 5, color.mix(0.6).filled()))
                    .map_err(|x| e(x.to_string()))?;
                legend_area
                    .draw(&Text::new(
                        format!("{label}: memory {mr:.2}x"),
                        (22, y - 7),
                        (FONT, 12),
                    ))
                    .map_err(|x| e(x.to_string()))?;
            }
            root.present().map_err(|x| e(x.to_string()))?;
        }
        Ok(Some(svg))
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the leaderboard serialises")
    }
}

/// Where the accuracy records come from: their commits, presets and devices.
fn accuracy_sources(records: &[AccuracyRecord]) -> String {
    let set: BTreeSet<String> = records
        .iter()
        .map(|r| {
            format!(
                "commit {}, preset {}, {}",
                short_commit(r.env.git_commit.as_deref().unwrap_or("?")),
                r.preset.as_deref().unwrap_or("-"),
                r.device.as_deref().unwrap_or("cpu")
            )
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join("; ")
}

/// One dimension of a setting, as text.
type SettingField = fn(&Setting) -> String;

const LEADERBOARD_CSS: &str = ".panels{display:flex;flex-wrap:wrap;gap:.6em}\
.scroll{overflow-x:auto;max-width:100%}\
table.board{display:table;overflow:visible}\
table.board td:first-child,table.board th:first-child{position:sticky;left:0;background:#fff;z-index:1;border-right:2px solid #999}\
.side{display:flex;gap:2em;align-items:flex-start;overflow-x:auto}.side table{display:table}\
a.src{font-size:.8em;color:#666}.joined{background:#eef;padding:.4em 1em;max-width:60em}\
.unstable{color:#b00}table.answer td{text-align:left}";

/// Shows the chosen setting's section only (without script: all of them).
const SELECT_JS: &str = r#"
(function () {
  var sel = document.getElementById('setting');
  if (!sel) { return; }
  var show = function () {
    document.querySelectorAll('section.setting').forEach(function (s) {
      s.style.display = s.id === sel.value ? '' : 'none';
    });
  };
  if (location.hash) {
    var id = location.hash.slice(1);
    if (document.getElementById(id)) { sel.value = id; }
  }
  var dims = document.querySelectorAll('select.dim');
  var none = document.getElementById('none');
  var fromSection = function () {
    var s = document.getElementById(sel.value);
    if (!s) { return; }
    dims.forEach(function (d) { d.value = s.getAttribute('data-' + d.getAttribute('data-dim')); });
    if (none) { none.style.display = 'none'; }
  };
  dims.forEach(function (d) {
    d.addEventListener('change', function () {
      var hit = Array.prototype.find.call(document.querySelectorAll('section.setting'), function (s) {
        return Array.prototype.every.call(dims, function (x) {
          return s.getAttribute('data-' + x.getAttribute('data-dim')) === x.value;
        });
      });
      if (hit) { sel.value = hit.id; show(); if (none) { none.style.display = 'none'; } }
      else {
        document.querySelectorAll('section.setting').forEach(function (s) { s.style.display = 'none'; });
        if (none) { none.style.display = ''; }
      }
    });
  });
  sel.addEventListener('change', function () { show(); fromSection(); });
  show();
  fromSection();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[allow(clippy::too_many_arguments)]
    fn rec(
        run: &str,
        label: &str,
        family: &str,
        exact: bool,
        n: i64,
        t: f64,
        mem: u64,
        rounds: Option<(f64, f64)>,
        host: &str,
    ) -> Record {
        let mut r: Record = serde_json::from_value(json!({
            "schema": 1, "run_id": run, "case_id": "x",
            "key": {"variant": label, "params": {}, "seq_len": n, "batch": 1, "heads": 8,
                    "head_dim": 64, "causal": false, "dtype": "f32", "device": "cpu",
                    "mode": "forward", "scope": "attention"},
            "label": label, "status": "ok", "message": null,
            "claims": {"family": family, "time": "", "memory": "", "time_exponent": 1.0,
                       "memory_exponent": 1.0, "exact": exact},
            "latency": {"median_s": t, "p10_s": t * 0.9, "p90_s": t * 1.1, "mean_s": t,
                        "min_s": t, "max_s": t, "iterations": 5, "warmup_iterations": 1},
            "memory": {"peak_bytes": mem, "baseline_bytes": 0, "static_bytes": 0, "method": "m"},
            "flops": null, "flops_per_s": null, "params": null, "backend": null,
            "started_at": format!("2026-12-0{}T10:00:00Z", if run == "b" { 2 } else { 1 }),
            "wall_s": 1.0,
            "env": {"hostname": host, "os": "Linux", "cpu_model": "EPYC", "physical_cores": 2,
                    "logical_cpus": 2, "memory_bytes": 1, "threads": 1, "torch_version": "2.11.0",
                    "cuda_available": false, "cuda_runtime": null, "gpus": [],
                    "nvidia_driver": null, "cuda_driver": null, "xarena_version": "0.1.0",
                    "git_commit": format!("commit-{run}")}
        }))
        .unwrap();
        if let Some((lo, hi)) = rounds {
            r.rounds = Some(serde_json::from_value(json!({
                "visits": [], "interval": {"low_s": lo, "high_s": hi, "coverage": 0.75, "method": "order"}
            })).unwrap());
        }
        r.case_id = r.key.id();
        r
    }

    /// vanilla N^2, sdpa N^2 / 2, "lin" linear (crosses sdpa between 1024 and 2048),
    /// "small" slow but tiny.
    fn run_a(host: &str) -> RunInput {
        let mut records = Vec::new();
        for n in [512i64, 1024, 2048, 4096] {
            let q = (n as f64 / 1024.0).powi(2);
            let l = n as f64 / 1024.0;
            records.push(rec(
                "a",
                "vanilla",
                "exact",
                true,
                n,
                0.04 * q,
                1000 * n as u64 * n as u64,
                Some((0.038 * q, 0.042 * q)),
                host,
            ));
            records.push(rec(
                "a",
                "sdpa",
                "exact",
                true,
                n,
                0.02 * q,
                100 * n as u64,
                Some((0.019 * q, 0.021 * q)),
                host,
            ));
            records.push(rec(
                "a",
                "lin",
                "kernels",
                false,
                n,
                0.03 * l,
                500 * n as u64,
                Some((0.025 * l, 0.036 * l)),
                host,
            ));
            records.push(rec(
                "a",
                "small",
                "low-rank",
                false,
                n,
                0.5 * l,
                10 * n as u64,
                None,
                host,
            ));
        }
        RunInput {
            path: PathBuf::from("runs/a"),
            records,
        }
    }

    fn quality() -> Vec<QualityPoint> {
        vec![
            QualityPoint {
                label: "lin".into(),
                seq_len: 1024,
                qk_scale: 0.25,
                rel_error: 1.5,
                exact: false,
            },
            QualityPoint {
                label: "small".into(),
                seq_len: 1024,
                qk_scale: 0.25,
                rel_error: 0.5,
                exact: false,
            },
        ]
    }

    #[test]
    fn the_answer_picks_fastest_smallest_and_fastest_within_the_bound() {
        let lb = Leaderboard::build(&[run_a("h")], quality(), 0.75, BTreeMap::new(), Vec::new())
            .unwrap();
        let s = &lb.sections[0];
        let at = |n: i64| s.answers.iter().find(|a| a.seq_len == n).unwrap();
        assert_eq!(at(512).fastest.as_ref().unwrap().0, "sdpa");
        assert_eq!(at(4096).fastest.as_ref().unwrap().0, "lin");
        assert_eq!(at(4096).smallest.as_ref().unwrap().0, "small");
        // At 1024 sdpa (0.019-0.021) and lin (0.025-0.036) do not overlap; at 2048 sdpa
        // (0.076-0.084) and lin (0.05-0.072) neither: no ties.
        assert!(at(1024).ties.is_empty() && at(2048).ties.is_empty());
        let mut run = run_a("h");
        for r in run.records.iter_mut() {
            if r.label == "lin" && r.key.seq_len == 1024 {
                r.rounds.as_mut().unwrap().interval.low_s = 0.02;
            }
        }
        let lb = Leaderboard::build(&[run], quality(), 0.75, BTreeMap::new(), Vec::new()).unwrap();
        assert_eq!(lb.sections[0].answers[1].ties, vec!["lin".to_string()]);
        // lin's error 1.5 is past the bound: sdpa (exact, error 0) at 4096 (0.32 s) beats small (2 s).
        assert_eq!(at(4096).fastest_within.as_ref().unwrap().0, "sdpa");
        let lb =
            Leaderboard::build(&[run_a("h")], quality(), 2.0, BTreeMap::new(), Vec::new()).unwrap();
        let at4096 = lb.sections[0].answers.last().unwrap().clone();
        assert_eq!(at4096.fastest_within.unwrap().0, "lin");
        assert_eq!(lb.sections[0].ranks()["lin"], 1);
    }

    #[test]
    fn with_accuracy_records_the_answer_names_the_fastest_within_the_accuracy_bound() {
        let env = run_a("h").records[0].env.clone();
        let acc = |variant: &str, a: f64| -> AccuracyRecord {
            serde_json::from_value(json!({"schema": 1, "task": "listops", "variant": variant,
                "accuracy": a, "steps": 10, "seed": 0, "env": env}))
            .unwrap()
        };
        // vanilla 40%, lin(k=2) 37% (within 5 points), small 20%.
        let records = vec![
            acc("vanilla", 0.40),
            acc("lin(k=2)", 0.37),
            acc("small", 0.20),
        ];
        let mut lb =
            Leaderboard::build(&[run_a("h")], quality(), 0.75, BTreeMap::new(), records).unwrap();
        let last = |lb: &Leaderboard| lb.sections[0].answers.last().unwrap().clone();
        let got = last(&lb).fastest_accurate.unwrap();
        assert_eq!(got.0, "lin");
        assert!((got.2 - 37.0).abs() < 1e-9);
        // Within 1 point only exact attention qualifies (sdpa, the faster of the two).
        lb.set_accuracy_bound(1.0);
        assert_eq!(last(&lb).fastest_accurate.unwrap().0, "sdpa");
        assert!(lb
            .html()
            .unwrap()
            .contains("fastest with accuracy within 1 points"));
    }

    #[test]
    fn crossover_against_sdpa_has_an_interval_from_the_rounds() {
        let lb = Leaderboard::build(&[run_a("h")], quality(), 0.75, BTreeMap::new(), Vec::new())
            .unwrap();
        let c = lb.sections[0].crossovers["lin"];
        assert!(c.from_rounds);
        // lin / sdpa = 1.5 * 1024 / n: crosses at n = 1536.
        let Some(Crossover::At(m)) = c.median else {
            panic!("{c:?}")
        };
        assert!((m - 1536.0).abs() < 1.0, "{m}");
        let (Some(Crossover::At(e)), Some(Crossover::At(l))) = (c.early, c.late) else {
            panic!("{c:?}")
        };
        assert!(e < m && m < l, "{e} {m} {l}");
        assert!(c.text().contains('['), "{}", c.text());
        // Without rounds the band is p10-p90, and says so.
        assert!(!lb.sections[0].crossovers["small"].from_rounds);
    }

    #[test]
    fn two_runs_of_one_setting_are_joined_only_with_labels_or_refused() {
        // Run b measures `small` again on the same machine: joined, rows name their run.
        let mut b = run_a("h");
        b.path = PathBuf::from("runs/b");
        b.records = b
            .records
            .into_iter()
            .filter(|r| r.label == "small")
            .map(|mut r| {
                r.run_id = "b".into();
                r.started_at = "2026-12-02T10:00:00Z".into();
                r.env.git_commit = Some("commit-b".into());
                r.case_id = r.key.id();
                r
            })
            .collect();
        let lb = Leaderboard::build(
            &[run_a("h"), b.clone()],
            quality(),
            0.75,
            BTreeMap::new(),
            Vec::new(),
        )
        .unwrap();
        let s = &lb.sections[0];
        assert!(s.joined());
        assert_eq!(s.runs[s.run_of["small"]].run_id, "b");
        assert_eq!(s.runs[s.run_of["lin"]].run_id, "a");
        let page = lb.html().unwrap();
        assert!(page.contains("Joined 2 runs"), "the join is stated");
        assert!(page.contains("run b (2026-12-02, commit commit-b)"));
        // A run whose every row is replaced is named, not silently dropped.
        let lb = Leaderboard::build(
            &[b.clone(), run_a("h")],
            quality(),
            0.75,
            BTreeMap::new(),
            Vec::new(),
        )
        .unwrap();
        assert!(!lb.sections[0].joined());
        assert_eq!(
            lb.sections[0].superseded,
            vec![("b".to_string(), PathBuf::from("runs/b"))]
        );
        assert!(lb.html().unwrap().contains("replaced for every variant"));
        // On another machine: refused, naming both paths.
        for r in &mut b.records {
            r.env.hostname = Some("other".into());
        }
        let err = Leaderboard::build(
            &[run_a("h"), b],
            quality(),
            0.75,
            BTreeMap::new(),
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("runs/a") && err.contains("runs/b") && err.contains("host"),
            "{err}"
        );
    }

    #[test]
    fn the_page_has_a_section_per_setting_panels_with_bands_and_links() {
        let mut run = run_a("h");
        let mut train: Vec<Record> = run
            .records
            .iter()
            .filter(|r| r.key.seq_len <= 1024)
            .cloned()
            .map(|mut r| {
                r.key.mode = crate::schema::Mode::Train;
                r.case_id = r.key.id();
                r
            })
            .collect();
        run.records.append(&mut train);
        let mut meta = BTreeMap::new();
        meta.insert(
            "lin".to_string(),
            VariantMeta {
                paper: "X 2020 (arXiv:2006.16236)".into(),
                paper_url: arxiv_url("X 2020 (arXiv:2006.16236)"),
            },
        );
        let lb = Leaderboard::build(&[run], quality(), 0.75, meta, Vec::new()).unwrap();
        assert_eq!(lb.sections.len(), 2);
        let page = lb.html().unwrap();
        assert_eq!(page.matches("<section class=\"setting\"").count(), 2);
        assert!(page.contains("<select id=\"setting\""));
        assert!(page.contains("https://arxiv.org/abs/2006.16236"));
        assert!(page.contains("../../variants/src/kernel/lin.rs"));
        // Two families (kernels, low-rank) x two settings, each panel with bands.
        assert_eq!(page.matches("<figure class=\"panel\"").count(), 4);
        assert!(page.matches("<polygon").count() >= 4 * 3);
    }

    #[test]
    fn bad_input_names_its_path() {
        let err = load_runs(&[PathBuf::from("/nonexistent/run")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/run"), "{err}");
    }

    #[test]
    fn sources_and_papers() {
        assert_eq!(
            source_file("fixed-patterns", "memory-compressed"),
            "variants/src/fixed/memory_compressed.rs"
        );
        assert_eq!(
            arxiv_url("Dao 2023, FlashAttention-2 (arXiv:2307.08691); R").as_deref(),
            Some("https://arxiv.org/abs/2307.08691")
        );
        assert_eq!(arxiv_url("Vaswani et al. 2017"), None);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (f, v) in [
            ("exact", "vanilla"),
            ("kernels", "linear-transformer"),
            ("neural-memory", "set-transformer"),
            ("low-rank", "nystromformer"),
            ("learnable-patterns", "sinkhorn"),
            ("combined-patterns", "sparse-transformer"),
        ] {
            assert!(root.join(source_file(f, v)).exists(), "{v}");
        }
    }
}
