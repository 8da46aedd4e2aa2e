//! Statistics over samples and records: latency summaries, scaling exponents, ratios
//! against the reference variant.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::schema::{Latency, Mode, Record, Setting, Status};

/// The value at quantile `q` (0..=1) of sorted samples, interpolating linearly between
/// the closest ranks (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of no samples");
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Summarises per-iteration times in seconds.
pub fn summarise(samples: &[f64], warmup_iterations: u64) -> Latency {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Latency {
        median_s: quantile(&s, 0.5),
        p10_s: quantile(&s, 0.1),
        p90_s: quantile(&s, 0.9),
        mean_s: s.iter().sum::<f64>() / s.len() as f64,
        min_s: s[0],
        max_s: s[s.len() - 1],
        iterations: s.len() as u64,
        warmup_iterations,
        per_sample: 1,
        device: None,
    }
}

/// A least-squares line through (ln x, ln y): y ~ c x^exponent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    pub exponent: f64,
    /// Coefficient of determination of the log-log fit.
    pub r2: f64,
    pub points: usize,
}

/// Fits y ~ c x^k over the points with positive x and y; `None` with fewer than two
/// distinct x.
pub fn fit_power_law(points: &[(f64, f64)]) -> Option<Fit> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    let n = logs.len() as f64;
    if logs.len() < 2 {
        return None;
    }
    let mx = logs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = logs.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = logs.iter().map(|p| (p.1 - my).powi(2)).sum();
    let exponent = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    Some(Fit {
        exponent,
        r2,
        points: logs.len(),
    })
}

/// The variant every ratio is taken against.
pub const REFERENCE: &str = "vanilla";

/// One cell: a variant at one sequence length.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub status: Status,
    pub latency_s: Option<f64>,
    pub peak_bytes: Option<u64>,
    /// Reference latency over this latency (above 1: faster than the reference).
    pub speedup: Option<f64>,
    /// This peak memory over the reference's (below 1: smaller).
    pub memory_ratio: Option<f64>,
    /// FLOPs of one iteration, as computed.
    pub flops: Option<u64>,
    pub flops_per_s: Option<f64>,
    /// Trainable parameters.
    pub params: Option<u64>,
    /// Achieved FLOP/s over the run's matmul peak for the device and dtype.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_fraction: Option<f64>,
    /// NVML reported a performance-limiting clock reason around the case.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub throttled: bool,
    /// Device time per iteration (CUDA events), where recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_s: Option<f64>,
    /// The latency is within [`LAUNCH_BOUND_FACTOR`] of the [`FLOOR`] variant's at this
    /// length: the harness's own dispatch and synchronisation, not the variant's work,
    /// sets it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub launch_bound: bool,
    /// `--rounds`: the interval of the median over rounds, and its coverage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<(f64, f64, f64)>,
    /// Why this latency is not to be trusted alone ([`instability`]); empty when it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unstable: Vec<String>,
}

/// An interval wider than this fraction of its median marks a case unstable.
pub const UNSTABLE_WIDTH: f64 = 0.20;
/// The case's threads waited for a CPU more than this fraction of the timed wall time.
pub const BUSY_WAIT: f64 = 0.10;
/// The hypervisor stole more than this fraction of the CPUs' time.
pub const BUSY_STEAL: f64 = 0.05;
/// The load average was above this many times the logical CPUs.
pub const BUSY_LOAD: f64 = 2.0;

/// Why a case's latency is not to be trusted alone: its rounds disagree (interval wider
/// than [`UNSTABLE_WIDTH`] of the median) or the machine was busy while it was timed
/// (run-queue wait, steal or load average past [`BUSY_WAIT`], [`BUSY_STEAL`],
/// [`BUSY_LOAD`]; with rounds, in any visit). Empty for a steady case, and for records
/// made before these were measured.
pub fn instability(r: &Record) -> Vec<String> {
    let mut why = Vec::new();
    if let (Some(rounds), Some(l)) = (&r.rounds, &r.latency) {
        let i = &rounds.interval;
        if l.median_s > 0.0 && (i.high_s - i.low_s) / l.median_s > UNSTABLE_WIDTH {
            why.push(format!(
                "rounds disagree ({:.0}% wide interval)",
                100.0 * (i.high_s - i.low_s) / l.median_s
            ));
        }
    }
    let states: Vec<&crate::schema::MachineState> = match &r.rounds {
        Some(rounds) => rounds
            .visits
            .iter()
            .filter_map(|v| v.machine.as_ref())
            .collect(),
        None => r.machine.iter().collect(),
    };
    let most = |f: &dyn Fn(&crate::schema::MachineState) -> Option<f64>| {
        states
            .iter()
            .filter_map(|m| f(m))
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))))
    };
    if let Some(w) = most(&|m| m.wait_fraction()).filter(|&w| w > BUSY_WAIT) {
        why.push(format!("waited for a CPU {:.0}% of the time", 100.0 * w));
    }
    if let Some(s) = most(&|m| m.steal_fraction).filter(|&s| s > BUSY_STEAL) {
        why.push(format!("{:.0}% steal", 100.0 * s));
    }
    let load = most(&|m| {
        let l = m
            .load_before
            .into_iter()
            .chain(m.load_after)
            .fold(0.0, f64::max);
        Some(l / m.cpus.max(1) as f64)
    });
    if let Some(l) = load.filter(|&l| l > BUSY_LOAD) {
        why.push(format!("load {l:.1}x the CPUs"));
    }
    why
}

/// The variant whose latency is the harness floor: an identity layer.
pub const FLOOR: &str = "empty";

/// A case within this factor of the floor's latency is marked launch-bound.
pub const LAUNCH_BOUND_FACTOR: f64 = 2.0;

/// Where a variant's latency crosses a reference's, over the lengths measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Crossover {
    /// Faster already at the shortest length measured, and at every length after.
    Below(i64),
    /// Faster from about this length on (log-log interpolation between the two lengths
    /// around the crossing).
    At(f64),
    /// Not faster at the longest length measured.
    Never(i64),
}

/// Crossover of `ratios` (variant latency / reference latency, by N ascending): the
/// length from which the variant stays faster.
pub fn crossover(ratios: &[(i64, f64)]) -> Option<Crossover> {
    let (first, last) = (ratios.first()?, ratios.last()?);
    if last.1 >= 1.0 {
        return Some(Crossover::Never(last.0));
    }
    // The last length at which the variant was not faster.
    let Some(k) = ratios.iter().rposition(|(_, r)| *r >= 1.0) else {
        return Some(Crossover::Below(first.0));
    };
    let ((n0, r0), (n1, r1)) = (ratios[k], ratios[k + 1]);
    let (x0, x1, y0, y1) = ((n0 as f64).ln(), (n1 as f64).ln(), r0.ln(), r1.ln());
    Some(Crossover::At(
        (x0 + (0.0 - y0) * (x1 - x0) / (y1 - y0)).exp(),
    ))
}

/// References a crossover is reported against, when present in the table.
pub const CROSSOVER_REFERENCES: [&str; 2] = [REFERENCE, "sdpa"];

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub label: String,
    pub cells: BTreeMap<i64, Cell>,
    /// Against each of [`CROSSOVER_REFERENCES`] present.
    pub crossovers: Vec<(String, Option<Crossover>)>,
    pub time_fit: Option<Fit>,
    pub memory_fit: Option<Fit>,
    pub time_claim: f64,
    pub memory_claim: f64,
}

/// LRA's efficiency table for one setting: variants x sequence lengths.
#[derive(Debug, Clone, Serialize)]
pub struct EfficiencyTable {
    pub setting: Setting,
    pub seq_lens: Vec<i64>,
    pub rows: Vec<Row>,
}

/// Groups records by setting and builds one table per setting. Where a case appears more
/// than once (merged or resumed runs), the last record wins.
pub fn efficiency_tables(records: &[Record]) -> Vec<EfficiencyTable> {
    let mut by_setting: BTreeMap<Setting, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_setting.entry(r.key.setting()).or_default().push(r);
    }
    by_setting
        .into_iter()
        .map(|(setting, recs)| table_for(setting, &recs))
        .collect()
}

fn table_for(setting: Setting, recs: &[&Record]) -> EfficiencyTable {
    // Rows in order of first appearance, the reference first.
    let mut labels: Vec<String> = Vec::new();
    let mut latest: BTreeMap<(String, i64), &Record> = BTreeMap::new();
    for r in recs {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
        latest.insert((r.label.clone(), r.key.seq_len), r);
    }
    labels.sort_by_key(|l| l != REFERENCE);
    let mut seq_lens: Vec<i64> = latest.keys().map(|(_, n)| *n).collect();
    seq_lens.sort_unstable();
    seq_lens.dedup();

    let ok = |r: &Record| r.status == Status::Ok;
    let latency = |r: &Record| r.latency.as_ref().filter(|_| ok(r)).map(|l| l.median_s);
    // Decode's memory column is the decoding state (what grows with the context or does
    // not); the step's own working memory is a few rows and says little.
    let peak = |r: &Record| match r.key.mode {
        Mode::Decode => r.state_bytes.filter(|_| ok(r)),
        _ => r.memory.as_ref().filter(|_| ok(r)).map(|m| m.peak_bytes),
    };

    let rows = labels
        .iter()
        .map(|label| {
            let mut cells = BTreeMap::new();
            let mut claims = (f64::NAN, f64::NAN);
            for &n in &seq_lens {
                let Some(r) = latest.get(&(label.clone(), n)) else {
                    continue;
                };
                claims = (r.claims.time_exponent, r.claims.memory_exponent);
                let reference = latest.get(&(REFERENCE.to_string(), n));
                let (lat, mem) = (latency(r), peak(r));
                let speedup = match (reference.and_then(|x| latency(x)), lat) {
                    (Some(base), Some(t)) if t > 0.0 => Some(base / t),
                    _ => None,
                };
                let memory_ratio = match (reference.and_then(|x| peak(x)), mem) {
                    (Some(base), Some(m)) if base > 0 => Some(m as f64 / base as f64),
                    _ => None,
                };
                let floor = latest
                    .iter()
                    .find(|((_, m), f)| *m == n && f.key.variant == FLOOR)
                    .and_then(|(_, f)| latency(f));
                let launch_bound = r.key.variant != FLOOR
                    && matches!((lat, floor), (Some(t), Some(f)) if t < LAUNCH_BOUND_FACTOR * f);
                cells.insert(
                    n,
                    Cell {
                        status: r.status,
                        latency_s: lat,
                        peak_bytes: mem,
                        speedup,
                        memory_ratio,
                        flops: r.flops,
                        flops_per_s: r.flops_per_s.filter(|_| ok(r)),
                        params: r.params,
                        peak_fraction: r.peak_fraction.filter(|_| ok(r)),
                        throttled: r.gpu.as_ref().is_some_and(|g| g.throttled),
                        device_s: r
                            .latency
                            .as_ref()
                            .filter(|_| ok(r))
                            .and_then(|l| l.device.as_ref())
                            .map(|d| d.median_s),
                        launch_bound,
                        interval: r.rounds.as_ref().filter(|_| ok(r)).map(|x| {
                            let i = &x.interval;
                            (i.low_s, i.high_s, i.coverage)
                        }),
                        unstable: if ok(r) { instability(r) } else { Vec::new() },
                    },
                );
            }
            let points = |f: &dyn Fn(&Cell) -> Option<f64>| -> Vec<(f64, f64)> {
                cells
                    .iter()
                    .filter_map(|(n, c)| f(c).map(|y| (*n as f64, y)))
                    .collect()
            };
            let crossovers = CROSSOVER_REFERENCES
                .iter()
                .filter(|r| labels.iter().any(|l| l == *r) && *r != label)
                .map(|reference| {
                    let ratios: Vec<(i64, f64)> = seq_lens
                        .iter()
                        .filter_map(|&n| {
                            let mine = latest.get(&(label.clone(), n)).and_then(|r| latency(r))?;
                            let theirs = latest
                                .get(&(reference.to_string(), n))
                                .and_then(|r| latency(r))?;
                            Some((n, mine / theirs))
                        })
                        .collect();
                    (reference.to_string(), crossover(&ratios))
                })
                .collect();
            Row {
                label: label.clone(),
                crossovers,
                time_fit: fit_power_law(&points(&|c| c.latency_s)),
                memory_fit: fit_power_law(&points(&|c| c.peak_bytes.map(|b| b as f64))),
                cells,
                time_claim: claims.0,
                memory_claim: claims.1,
            }
        })
        .collect();
    EfficiencyTable {
        setting,
        seq_lens,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&s, 0.5), 3.0);
        assert!((quantile(&s, 0.1) - 1.4).abs() < 1e-12);
        assert_eq!(quantile(&[7.0], 0.9), 7.0);
    }

    #[test]
    fn crossovers_interpolate_in_log_log() {
        assert_eq!(
            crossover(&[(512, 0.5), (1024, 0.4)]),
            Some(Crossover::Below(512))
        );
        assert_eq!(
            crossover(&[(512, 2.0), (1024, 1.1)]),
            Some(Crossover::Never(1024))
        );
        // Ratio 2 at 512, 0.5 at 2048: crosses 1 half way in log N, at 1024.
        match crossover(&[(512, 2.0), (2048, 0.5)]) {
            Some(Crossover::At(n)) => assert!((n - 1024.0).abs() < 1e-9, "{n}"),
            other => panic!("{other:?}"),
        }
        // Faster, then slower, then faster again: counted from the last crossing.
        match crossover(&[(512, 0.9), (1024, 1.2), (2048, 0.6)]) {
            Some(Crossover::At(n)) => assert!(n > 1024.0 && n < 2048.0),
            other => panic!("{other:?}"),
        }
        assert_eq!(crossover(&[]), None);
    }

    #[test]
    fn power_law_fits_recover_exponents() {
        let pts: Vec<(f64, f64)> = [256.0, 512.0, 1024.0, 2048.0]
            .iter()
            .map(|&n: &f64| (n, 3.0 * n.powf(1.7)))
            .collect();
        let fit = fit_power_law(&pts).unwrap();
        assert!((fit.exponent - 1.7).abs() < 1e-9 && fit.r2 > 0.999_999);
        assert!(fit_power_law(&pts[..1]).is_none());
        assert!(fit_power_law(&[(2.0, 1.0), (2.0, 3.0)]).is_none());
    }
}
