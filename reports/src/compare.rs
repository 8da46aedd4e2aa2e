//! Comparing two sets of results case by case (`xarena compare BASE NEW`): latency and
//! peak-memory regressions and improvements, status changes, cases on one side only.
//!
//! The latency rule asks for more than a moved median, because the same case rerun on the
//! same machine moves too (10-20% on a shared VM). NEW is slower than BASE when both
//!
//! 1. `new.median > base.median * (1 + max(threshold, spread))`, where `spread` is the
//!    sum of both runs' relative half-widths, `(p90 - p10) / (2 median)`: a noisy case
//!    must move further than a steady one; and
//! 2. `new.p10 > base.p90`: the two runs' middle 80% of iterations do not overlap, so
//!    most of NEW's iterations are slower than most of BASE's.
//!
//! When both runs measured the case in rounds (`--rounds`), their intervals decide
//! instead: NEW is slower when its interval of the median over rounds lies wholly above
//! BASE's and its median rose by more than `rounds_latency` (and the floor). With 3
//! rounds on each side, under no change the six round medians are exchangeable and the
//! three of NEW are all above the three of BASE with probability 1/20: the intervals
//! alone false-alarm 5% of the time one way, and the small least change takes away
//! what moves by less than any user would act on (docs/results/gate measures both
//! rates on the CI machine).
//!
//! Faster is the same rule with the sides swapped. Peak memory moves less (it is the
//! working memory of one iteration, not a time), so it has its own relative threshold and
//! an absolute floor: allocator and page granularity make a few hundred KiB of difference
//! on tiny cases without meaning anything.

use std::collections::{BTreeMap, HashMap};

use crate::grid::{Grid, GridCell};
use serde::Serialize;
use thiserror::Error;

use crate::schema::{Environment, Interval, Latency, Record, Status};
use crate::table::{format_bytes, format_seconds, Style};

/// How far a case must move to count, as fractions (0.1 = 10%).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Least relative latency change; the spread of the runs can raise it per case.
    pub latency: f64,
    /// Least absolute latency change, in seconds: below a microsecond a case is function
    /// call overhead (the `empty` baseline), where tens of nanoseconds are half of it.
    pub latency_floor_s: f64,
    /// Least relative latency change when both runs have rounds (their intervals decide).
    pub rounds_latency: f64,
    /// Least relative change of peak memory.
    pub memory: f64,
    /// Least absolute change of peak memory, in bytes.
    pub memory_floor_bytes: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        // The same cases rerun a minute apart on the shared CI VM moved by up to 35%
        // with disjoint p10-p90 intervals (docs/results/pytorch-compare, 5 rounds), and
        // peak memory by up to 8.1 MiB (1.4% of 560 MiB, vanilla at N = 2048); see
        // docs/guides/compare.md.
        Thresholds {
            latency: 0.50,
            latency_floor_s: 1e-6,
            rounds_latency: ROUNDS_LATENCY,
            memory: 0.10,
            memory_floor_bytes: 4 << 20,
        }
    }
}

/// The default least latency change with rounds on both sides: see docs/results/gate for
/// the false-alarm rate and power it gives on the CI machine.
pub const ROUNDS_LATENCY: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Regression,
    Improvement,
    /// Failed in both, with another status (timeout -> oom): neither better nor worse.
    Changed,
    Unchanged,
}

impl Verdict {
    /// A metric's verdict from whether NEW is beyond BASE the slow way or the fast way.
    fn of(worse: bool, better: bool) -> Verdict {
        if worse {
            Verdict::Regression
        } else if better {
            Verdict::Improvement
        } else {
            Verdict::Unchanged
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Regression => "regression",
            Verdict::Improvement => "improvement",
            Verdict::Changed => "changed",
            Verdict::Unchanged => "unchanged",
        })
    }
}

/// One metric of one case in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricChange {
    pub base: f64,
    pub new: f64,
    /// new / base.
    pub ratio: f64,
    /// The relative change this case had to exceed (latency: the threshold or the spread).
    pub allowed: f64,
    pub verdict: Verdict,
    /// Latency: `rounds` when both runs' intervals over rounds decided, else `spread`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
}

/// A case present in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseComparison {
    pub case_id: String,
    pub case: String,
    pub base_run: String,
    pub new_run: String,
    pub base_status: Status,
    pub new_status: Status,
    /// Both ok: median latency, in seconds.
    pub latency: Option<MetricChange>,
    /// Both ok: peak working memory, in bytes.
    pub memory: Option<MetricChange>,
    /// The worst of the status change and the metrics.
    pub verdict: Verdict,
}

/// A case present in one run only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OneSided {
    pub case_id: String,
    pub case: String,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub thresholds: Thresholds,
    /// Cases in both, in BASE's order.
    pub cases: Vec<CaseComparison>,
    pub only_base: Vec<OneSided>,
    pub only_new: Vec<OneSided>,
    /// Environment fields that differ between the runs (`field: base -> new`).
    pub environment: Vec<String>,
}

impl Comparison {
    pub fn count(&self, verdict: Verdict) -> usize {
        self.cases.iter().filter(|c| c.verdict == verdict).count()
    }

    pub fn has_regression(&self) -> bool {
        self.count(Verdict::Regression) > 0
    }
}

#[derive(Debug, Error)]
pub enum CompareError {
    #[error(
        "{side} holds case {case_id} ({case}) twice, from runs {first_run} and {second_run}: \
         compare one run per side (`xarena merge` combines shards)"
    )]
    Duplicate {
        side: &'static str,
        case_id: String,
        case: String,
        first_run: String,
        second_run: String,
    },
    #[error("{0} holds no records")]
    Empty(&'static str),
}

/// A one-line name of a record's case: label, shape and setting.
pub fn describe(r: &Record) -> String {
    r.key.describe(&r.label)
}

fn index<'a>(
    side: &'static str,
    records: &'a [Record],
) -> Result<HashMap<&'a str, &'a Record>, CompareError> {
    if records.is_empty() {
        return Err(CompareError::Empty(side));
    }
    let mut by_id: HashMap<&str, &Record> = HashMap::new();
    for r in records {
        if let Some(first) = by_id.insert(&r.case_id, r) {
            return Err(CompareError::Duplicate {
                side,
                case_id: r.case_id.clone(),
                case: describe(r),
                first_run: first.run_id.clone(),
                second_run: r.run_id.clone(),
            });
        }
    }
    Ok(by_id)
}

/// Relative half-width of the middle 80% of iterations.
fn half_width(l: &Latency) -> f64 {
    if l.median_s > 0.0 {
        (l.p90_s - l.p10_s).max(0.0) / (2.0 * l.median_s)
    } else {
        0.0
    }
}

/// The latency rule of the module documentation.
pub fn compare_latency(base: &Latency, new: &Latency, t: &Thresholds) -> MetricChange {
    let allowed = t.latency.max(half_width(base) + half_width(new));
    let beyond = |lo: &Latency, hi: &Latency| {
        hi.median_s > lo.median_s * (1.0 + allowed)
            && hi.median_s - lo.median_s > t.latency_floor_s
            && hi.p10_s > lo.p90_s
    };
    let (slower, faster) = (beyond(base, new), beyond(new, base));
    MetricChange {
        base: base.median_s,
        new: new.median_s,
        ratio: new.median_s / base.median_s,
        allowed,
        verdict: Verdict::of(slower, faster),
        rule: Some("spread"),
    }
}

/// The latency rule with rounds on both sides (module documentation).
pub fn compare_rounds(
    base: (f64, &Interval),
    new: (f64, &Interval),
    t: &Thresholds,
) -> MetricChange {
    let beyond = |lo: (f64, &Interval), hi: (f64, &Interval)| {
        hi.1.low_s > lo.1.high_s
            && hi.0 > lo.0 * (1.0 + t.rounds_latency)
            && hi.0 - lo.0 > t.latency_floor_s
    };
    let (slower, faster) = (beyond(base, new), beyond(new, base));
    MetricChange {
        base: base.0,
        new: new.0,
        ratio: new.0 / base.0,
        allowed: t.rounds_latency,
        verdict: Verdict::of(slower, faster),
        rule: Some("rounds"),
    }
}

/// Peak memory: beyond the relative threshold and the absolute floor, either way.
pub fn compare_memory(base: u64, new: u64, t: &Thresholds) -> MetricChange {
    let (b, n) = (base as f64, new as f64);
    let beyond =
        |lo: f64, hi: f64| hi > lo * (1.0 + t.memory) && hi - lo > t.memory_floor_bytes as f64;
    MetricChange {
        base: b,
        new: n,
        ratio: if b > 0.0 { n / b } else { f64::INFINITY },
        allowed: t.memory,
        verdict: Verdict::of(beyond(b, n), beyond(n, b)),
        rule: None,
    }
}

fn compare_case(base: &Record, new: &Record, t: &Thresholds) -> CaseComparison {
    let (mut latency, mut memory) = (None, None);
    let verdict = match (base.status, new.status) {
        (Status::Ok, Status::Ok) => {
            if let (Some(b), Some(n)) = (&base.latency, &new.latency) {
                latency = Some(match (&base.rounds, &new.rounds) {
                    (Some(rb), Some(rn)) => {
                        compare_rounds((b.median_s, &rb.interval), (n.median_s, &rn.interval), t)
                    }
                    _ => compare_latency(b, n, t),
                });
            }
            if let (Some(b), Some(n)) = (&base.memory, &new.memory) {
                memory = Some(compare_memory(b.peak_bytes, n.peak_bytes, t));
            }
            let verdicts = [&latency, &memory].map(|m| m.as_ref().map(|m| m.verdict));
            if verdicts.contains(&Some(Verdict::Regression)) {
                Verdict::Regression
            } else if verdicts.contains(&Some(Verdict::Improvement)) {
                Verdict::Improvement
            } else {
                Verdict::Unchanged
            }
        }
        (Status::Ok, _) => Verdict::Regression,
        (_, Status::Ok) => Verdict::Improvement,
        (b, n) if b == n => Verdict::Unchanged,
        _ => Verdict::Changed,
    };
    CaseComparison {
        case_id: base.case_id.clone(),
        case: describe(base),
        base_run: base.run_id.clone(),
        new_run: new.run_id.clone(),
        base_status: base.status,
        new_status: new.status,
        latency,
        memory,
        verdict,
    }
}

/// The fields of the environment that make timings incomparable, or explain a change.
fn environment_differences(base: &Environment, new: &Environment) -> Vec<String> {
    let gpus = |e: &Environment| {
        e.gpus
            .iter()
            .map(|g| g.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let fields = [
        ("cpu", base.cpu_model.clone(), new.cpu_model.clone()),
        (
            "logical cpus",
            base.logical_cpus.to_string(),
            new.logical_cpus.to_string(),
        ),
        ("threads", base.threads.to_string(), new.threads.to_string()),
        ("gpus", gpus(base), gpus(new)),
        (
            "torch",
            base.torch_version.clone(),
            new.torch_version.clone(),
        ),
        ("cuda", opt(&base.cuda_runtime), opt(&new.cuda_runtime)),
        ("driver", opt(&base.nvidia_driver), opt(&new.nvidia_driver)),
        ("commit", opt(&base.git_commit), opt(&new.git_commit)),
    ];
    fields
        .into_iter()
        .filter(|(_, b, n)| b != n)
        .map(|(f, b, n)| format!("{f}: {b} -> {n}"))
        .collect()
}

/// Matches the cases of two runs by case id and judges each.
pub fn compare(base: &[Record], new: &[Record], t: Thresholds) -> Result<Comparison, CompareError> {
    let base_ids = index("BASE", base)?;
    let new_ids = index("NEW", new)?;
    let mut cases = Vec::new();
    let mut only_base = Vec::new();
    for b in base {
        match new_ids.get(b.case_id.as_str()) {
            Some(n) => cases.push(compare_case(b, n, &t)),
            None => only_base.push(OneSided {
                case_id: b.case_id.clone(),
                case: describe(b),
                status: b.status,
            }),
        }
    }
    let only_new = new
        .iter()
        .filter(|n| !base_ids.contains_key(n.case_id.as_str()))
        .map(|n| OneSided {
            case_id: n.case_id.clone(),
            case: describe(n),
            status: n.status,
        })
        .collect();
    Ok(Comparison {
        thresholds: t,
        cases,
        only_base,
        only_new,
        environment: environment_differences(&base[0].env, &new[0].env),
    })
}

fn percent(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

/// The cases that moved (regressions first), the one-sided cases, and a summary line.
pub fn render(c: &Comparison, style: Style) -> String {
    let new_table =
        |header: &[&str]| Grid::new(header.iter().map(|h| h.to_string()).collect()).all_left();
    let mut out = String::new();
    let mut moved: Vec<&CaseComparison> = c
        .cases
        .iter()
        .filter(|c| c.verdict != Verdict::Unchanged)
        .collect();
    moved.sort_by_key(|c| c.verdict);
    if !moved.is_empty() {
        let mut t = new_table(&[
            "verdict", "case", "what", "base", "new", "change", "allowed",
        ]);
        for case in moved {
            let mut rows = Vec::new();
            if case.base_status != case.new_status {
                rows.push((
                    case.verdict,
                    "status".to_string(),
                    case.base_status.to_string(),
                    case.new_status.to_string(),
                    String::new(),
                    String::new(),
                ));
            }
            if let Some(m) = &case.latency {
                rows.push((
                    m.verdict,
                    "median latency".to_string(),
                    format_seconds(m.base),
                    format_seconds(m.new),
                    percent(m.ratio),
                    format!("{:.1}%", m.allowed * 100.0),
                ));
            }
            if let Some(m) = &case.memory {
                rows.push((
                    m.verdict,
                    "peak memory".to_string(),
                    format_bytes(m.base as u64),
                    format_bytes(m.new as u64),
                    percent(m.ratio),
                    format!("{:.1}%", m.allowed * 100.0),
                ));
            }
            for (verdict, what, b, n, change, allowed) in rows {
                if verdict == Verdict::Unchanged {
                    continue;
                }
                t.push(
                    [
                        verdict.to_string(),
                        case.case.clone(),
                        what,
                        b,
                        n,
                        change,
                        allowed,
                    ]
                    .map(GridCell::from)
                    .to_vec(),
                );
            }
        }
        out.push_str(&t.text(style));
        out.push_str("\n\n");
    }
    for (title, list) in [("only in BASE", &c.only_base), ("only in NEW", &c.only_new)] {
        if list.is_empty() {
            continue;
        }
        let mut t = new_table(&[title, "status", "case id"]);
        for o in list {
            t.push(
                [o.case.clone(), o.status.to_string(), o.case_id.clone()]
                    .map(GridCell::from)
                    .to_vec(),
            );
        }
        out.push_str(&t.text(style));
        out.push_str("\n\n");
    }
    if !c.environment.is_empty() {
        out.push_str(&format!(
            "Environment differs: {}.\n",
            c.environment.join("; ")
        ));
    }
    let mut counts: BTreeMap<Verdict, usize> = BTreeMap::new();
    for case in &c.cases {
        *counts.entry(case.verdict).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    out.push_str(&format!(
        "{} case(s) in both: {}; {} only in BASE, {} only in NEW. Latency: slower when the \
         median rose by more than max({:.0}%, both runs' relative p10-p90 half-widths \
         added) and by {}, and NEW's p10 is above BASE's p90 (faster: the same, reversed); \
         cases with rounds in both runs: slower when NEW's interval over rounds lies above \
         BASE's and the median rose by more than {:.0}%. Peak memory: a change beyond {:.0}% and {}. Status: ok to a failure is a \
         regression.\n",
        c.cases.len(),
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        },
        c.only_base.len(),
        c.only_new.len(),
        c.thresholds.latency * 100.0,
        format_seconds(c.thresholds.latency_floor_s),
        c.thresholds.rounds_latency * 100.0,
        c.thresholds.memory * 100.0,
        format_bytes(c.thresholds.memory_floor_bytes),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{CaseKey, Claims, Dtype, Memory, Mode, Scope};

    fn latency(median: f64, p10: f64, p90: f64) -> Latency {
        Latency {
            median_s: median,
            p10_s: p10,
            p90_s: p90,
            mean_s: median,
            min_s: p10,
            max_s: p90,
            iterations: 10,
            warmup_iterations: 2,
            per_sample: 1,
            device: None,
        }
    }

    fn env() -> Environment {
        Environment {
            hostname: None,
            os: None,
            cpu_model: "cpu".into(),
            physical_cores: Some(2),
            logical_cpus: 2,
            memory_bytes: 1 << 30,
            threads: 1,
            torch_version: "2.11.0".into(),
            cuda_available: false,
            cuda_runtime: None,
            gpus: vec![],
            nvidia_driver: None,
            cuda_driver: None,
            xarena_version: "0.1.0".into(),
            git_commit: Some("abc".into()),
            tf32: None,
            roofline: vec![],
        }
    }

    fn record(run: &str, seq_len: i64, lat: Option<Latency>, peak: u64) -> Record {
        let key = CaseKey {
            variant: "vanilla".into(),
            params: Default::default(),
            seq_len,
            batch: 1,
            heads: 2,
            head_dim: 8,
            causal: false,
            dtype: Dtype::F32,
            device: "cpu".into(),
            mode: Mode::Forward,
            scope: Scope::Attention,
        };
        Record {
            schema: crate::SCHEMA_VERSION,
            run_id: run.into(),
            case_id: key.id(),
            key,
            label: "vanilla".into(),
            status: if lat.is_some() {
                Status::Ok
            } else {
                Status::Oom
            },
            message: None,
            claims: Claims {
                family: "exact".into(),
                time: "O(N^2 d)".into(),
                memory: "O(N^2)".into(),
                time_exponent: 2.0,
                memory_exponent: 2.0,
                exact: true,
            },
            latency: lat,
            memory: Some(Memory {
                peak_bytes: peak,
                baseline_bytes: 0,
                static_bytes: 0,
                method: "cpu-rss".into(),
            }),
            flops: None,
            flops_per_s: None,
            params: None,
            state_bytes: None,
            backend: None,
            peak_fraction: None,
            intensity: None,
            gpu: None,
            check: None,
            machine: None,
            rounds: None,
            started_at: "2026-01-01T00:00:00.000Z".into(),
            wall_s: 1.0,
            env: env(),
        }
    }

    fn threshold(latency: f64) -> Thresholds {
        Thresholds {
            latency,
            ..Thresholds::default()
        }
    }

    #[test]
    fn a_doubled_latency_is_a_regression_and_halved_an_improvement() {
        let t = Thresholds::default();
        let base = latency(1.0, 0.95, 1.05);
        let twice = latency(2.0, 1.9, 2.1);
        assert_eq!(
            compare_latency(&base, &twice, &t).verdict,
            Verdict::Regression
        );
        assert_eq!(
            compare_latency(&twice, &base, &t).verdict,
            Verdict::Improvement
        );
        assert_eq!(
            compare_latency(&base, &base, &t).verdict,
            Verdict::Unchanged
        );
    }

    #[test]
    fn reruns_on_the_shared_vm_are_not_flagged_by_default() {
        // The largest moves among 20 ordered pairs of 5 reruns of the same cases
        // (docs/results/pytorch-compare): disjoint intervals, medians 31-35% apart.
        let t = Thresholds::default();
        let sdpa = [latency(11.38, 10.80, 12.40), latency(15.38, 14.39, 16.40)];
        let vanilla = [
            latency(433.08, 398.24, 448.69),
            latency(568.90, 498.36, 609.58),
        ];
        for [a, b] in [sdpa, vanilla] {
            assert_eq!(compare_latency(&a, &b, &t).verdict, Verdict::Unchanged);
            assert_eq!(compare_latency(&b, &a, &t).verdict, Verdict::Unchanged);
        }
    }

    fn with_rounds(mut r: Record, medians: &[f64]) -> Record {
        use crate::schema::{Rounds, Visit};
        let visits = medians
            .iter()
            .enumerate()
            .map(|(i, &m)| Visit {
                round: i as u32,
                started_at: String::new(),
                latency: latency(m, m * 0.99, m * 1.01),
                machine: None,
            })
            .collect();
        let mut sorted = medians.to_vec();
        sorted.sort_by(f64::total_cmp);
        r.latency = Some(latency(
            sorted[sorted.len() / 2],
            sorted[0],
            sorted[sorted.len() - 1],
        ));
        r.rounds = Some(Rounds {
            visits,
            interval: Interval {
                low_s: sorted[0],
                high_s: sorted[sorted.len() - 1],
                coverage: 0.75,
                method: "order-statistics".into(),
            },
        });
        r
    }

    #[test]
    fn with_rounds_on_both_sides_the_intervals_decide() {
        let t = Thresholds::default();
        let base = with_rounds(
            record("a", 64, Some(latency(1.0, 1.0, 1.0)), 1 << 20),
            &[1.0, 1.1, 1.05],
        );
        let verdict = |new: &[f64]| {
            let new = with_rounds(record("b", 64, Some(latency(1.0, 1.0, 1.0)), 1 << 20), new);
            let c = compare(std::slice::from_ref(&base), &[new], t).unwrap();
            let l = c.cases[0].latency.clone().unwrap();
            assert_eq!(l.rule, Some("rounds"));
            l.verdict
        };
        // 20% slower, the intervals apart: caught, though the 50% spread rule would not.
        assert_eq!(verdict(&[1.2, 1.26, 1.32]), Verdict::Regression);
        // As slow in the median, but one round overlaps BASE's interval.
        assert_eq!(verdict(&[1.08, 1.26, 1.32]), Verdict::Unchanged);
        // Apart, but by less than the least change (5%).
        assert_eq!(verdict(&[1.101, 1.102, 1.103]), Verdict::Unchanged);
        assert_eq!(verdict(&[0.7, 0.75, 0.8]), Verdict::Improvement);
        // One side without rounds: the spread rule, as before.
        let plain = record("c", 64, Some(latency(1.3, 1.29, 1.31)), 1 << 20);
        let c = compare(std::slice::from_ref(&base), &[plain], t).unwrap();
        let l = c.cases[0].latency.clone().unwrap();
        assert_eq!((l.rule, l.verdict), (Some("spread"), Verdict::Unchanged));
    }

    #[test]
    fn sub_microsecond_moves_are_below_the_floor() {
        // The `empty` baseline: 100 ns of call overhead, 10 ns timer steps.
        let base = latency(100e-9, 90e-9, 101e-9);
        let new = latency(200e-9, 190e-9, 210e-9);
        assert_eq!(
            compare_latency(&base, &new, &threshold(0.1)).verdict,
            Verdict::Unchanged
        );
        let no_floor = Thresholds {
            latency_floor_s: 0.0,
            ..threshold(0.1)
        };
        assert_eq!(
            compare_latency(&base, &new, &no_floor).verdict,
            Verdict::Regression
        );
    }

    #[test]
    fn a_move_within_the_threshold_is_not_flagged() {
        let base = latency(1.0, 0.99, 1.01);
        // 8% slower with tight, disjoint intervals: under the 10% threshold.
        let new = latency(1.08, 1.07, 1.09);
        let m = compare_latency(&base, &new, &threshold(0.1));
        assert_eq!(m.verdict, Verdict::Unchanged);
        assert_eq!(
            compare_latency(&base, &new, &threshold(0.05)).verdict,
            Verdict::Regression
        );
    }

    #[test]
    fn the_spread_of_the_runs_raises_the_bar() {
        // Medians 30% apart, but each run's p10-p90 spans +-20%: the allowed change is
        // 40%, and the intervals overlap.
        let base = latency(1.0, 0.8, 1.2);
        let new = latency(1.3, 1.04, 1.56);
        let m = compare_latency(&base, &new, &threshold(0.1));
        assert!((m.allowed - 0.4).abs() < 1e-12, "{}", m.allowed);
        assert_eq!(m.verdict, Verdict::Unchanged);
    }

    #[test]
    fn overlapping_intervals_are_not_flagged_even_past_the_threshold() {
        // A skewed base (long tail up to 1.6) overlaps a median 50% higher.
        let base = latency(1.0, 0.99, 1.6);
        let new = latency(1.5, 1.45, 1.55);
        let m = compare_latency(&base, &new, &threshold(0.1));
        assert!(m.ratio > 1.0 + m.allowed);
        assert_eq!(m.verdict, Verdict::Unchanged);
    }

    #[test]
    fn memory_needs_both_the_relative_threshold_and_the_floor() {
        let t = Thresholds::default();
        let mib = 1u64 << 20;
        assert_eq!(
            compare_memory(100 * mib, 120 * mib, &t).verdict,
            Verdict::Regression
        );
        assert_eq!(
            compare_memory(120 * mib, 100 * mib, &t).verdict,
            Verdict::Improvement
        );
        assert_eq!(
            compare_memory(100 * mib, 105 * mib, &t).verdict,
            Verdict::Unchanged
        );
        // Rerun noise seen on the CPU: 21 -> 23 MiB, 44 -> 46 MiB.
        assert_eq!(
            compare_memory(21 * mib, 23 * mib, &t).verdict,
            Verdict::Unchanged
        );
        assert_eq!(
            compare_memory(44 * mib, 46 * mib, &t).verdict,
            Verdict::Unchanged
        );
        // Tripled, but by 2 MiB: allocator granularity on a small case.
        assert_eq!(compare_memory(mib, 3 * mib, &t).verdict, Verdict::Unchanged);
    }

    #[test]
    fn status_changes_cases_on_one_side_and_duplicates() {
        let ok = latency(1.0, 0.9, 1.1);
        let base = vec![
            record("a", 16, Some(ok.clone()), 1 << 20),
            record("a", 32, None, 0),
            record("a", 64, Some(ok.clone()), 1 << 20),
        ];
        let mut new = vec![
            record("b", 16, None, 0),
            record("b", 32, Some(ok.clone()), 1 << 20),
            record("b", 128, Some(ok.clone()), 1 << 20),
        ];
        new[1].env.git_commit = Some("def".into());
        let c = compare(&base, &new, Thresholds::default()).unwrap();
        assert_eq!(c.cases.len(), 2);
        assert_eq!(c.cases[0].verdict, Verdict::Regression, "ok -> oom");
        assert_eq!(c.cases[1].verdict, Verdict::Improvement, "oom -> ok");
        assert!(c.has_regression());
        assert_eq!(c.only_base.len(), 1);
        assert_eq!(c.only_base[0].case_id, base[2].case_id);
        assert_eq!(c.only_new.len(), 1);
        assert_eq!(c.only_new[0].case_id, new[2].case_id);
        // Only the first record's environment is compared; here it is the same.
        assert!(c.environment.is_empty(), "{:?}", c.environment);
        let text = render(&c, Style::Markdown);
        assert!(text.contains("| regression"), "{text}");
        assert!(text.contains("only in BASE"), "{text}");

        // A failure that changes kind is neither better nor worse.
        let mut timeout = record("b", 32, None, 0);
        timeout.status = Status::Timeout;
        let c = compare(&base[1..2], &[timeout], Thresholds::default()).unwrap();
        assert_eq!(c.cases[0].verdict, Verdict::Changed);
        assert!(!c.has_regression());

        let twice = vec![base[0].clone(), base[0].clone()];
        let err = compare(&twice, &new, Thresholds::default()).unwrap_err();
        assert!(err.to_string().contains("BASE holds case"), "{err}");
        assert!(compare(&[], &new, Thresholds::default()).is_err());
    }

    #[test]
    fn a_run_compared_with_itself_has_no_findings() {
        let base: Vec<Record> = [16, 32, 64]
            .iter()
            .map(|&n| {
                record(
                    "a",
                    n,
                    Some(latency(n as f64, n as f64 * 0.9, n as f64 * 1.2)),
                    5 << 20,
                )
            })
            .collect();
        let c = compare(&base, &base, Thresholds::default()).unwrap();
        assert_eq!(c.count(Verdict::Unchanged), 3);
        assert!(!c.has_regression());
        assert!(c.only_base.is_empty() && c.only_new.is_empty());
    }

    #[test]
    fn environment_differences_are_named() {
        let a = env();
        let mut b = env();
        b.cpu_model = "other".into();
        b.git_commit = Some("def".into());
        let d = environment_differences(&a, &b);
        assert_eq!(d, vec!["cpu: cpu -> other", "commit: abc -> def"]);
    }
}
