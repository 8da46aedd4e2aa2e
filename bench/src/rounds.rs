//! `--rounds R`: every case visited R times, interleaved, and the visits combined into one
//! record whose latency is the median over rounds with a distribution-free interval.
//!
//! A shared machine drifts over minutes (another job starts, the host steals time), so
//! the iterations of one visit vary less than visits do: a case's uncertainty is read
//! from its rounds. Each round visits the cases in another order (round 0 in the sweep's,
//! later rounds shuffled from the round number), so a busy minute falls on different
//! cases each round instead of on one case R times.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use xarena_reports::schema::{Record, Status};
use xarena_schema::record::{Interval, Rounds, Visit};

/// The confidence the interval aims at; with few rounds it covers less, and says so.
pub const TARGET_COVERAGE: f64 = 0.95;

/// The order round `round` visits `n` cases in.
pub fn order(n: usize, round: u32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if round > 0 {
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(u64::from(round)));
    }
    idx
}

/// P(Binomial(n, 1/2) <= j).
fn binomial_half_cdf(n: usize, j: usize) -> f64 {
    // C(n, i) / 2^n term by term, so nothing overflows for any n the runner allows.
    let mut term = 0.5f64.powi(n as i32);
    let mut sum = 0.0;
    for i in 0..=j.min(n) {
        sum += term;
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    sum
}

/// The order-statistics interval for the median of `values` (not empty): ranks `k` and
/// `n + 1 - k` with the largest `k` whose coverage `1 - 2 P(B <= k - 1)` is still at
/// least [`TARGET_COVERAGE`], or the extremes (k = 1) when none is.
pub fn interval(values: &[f64]) -> Interval {
    assert!(!values.is_empty(), "an interval of no rounds");
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let coverage = |k: usize| 1.0 - 2.0 * binomial_half_cdf(n, k - 1);
    let mut k = 1;
    while k < n.div_ceil(2) && coverage(k + 1) >= TARGET_COVERAGE {
        k += 1;
    }
    Interval {
        low_s: v[k - 1],
        high_s: v[n - k],
        coverage: if n == 1 { 0.0 } else { coverage(k) },
        method: "order-statistics".into(),
    }
}

/// The median of `values` (not empty): the mean of the two middle ones when even.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One visit as `visits.jsonl` keeps it until the case's last round, so that a resumed
/// run goes on from the rounds already made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisitLine {
    pub round: u32,
    pub record: Record,
}

/// The case's record from its visits (all `ok`, at least one): the visit with the lower
/// middle median gives the memory, counts and iteration statistics; `latency.median_s`
/// is the median over rounds and `rounds` keeps every visit with the interval; the
/// machine state is the busiest visit's (by run-queue wait). Rates that depend on the
/// latency are left to the caller to recompute.
pub fn combine(mut visits: Vec<VisitLine>) -> Record {
    assert!(!visits.is_empty(), "combine: no visits");
    visits.sort_by_key(|v| v.round);
    let medians: Vec<f64> = visits
        .iter()
        .map(|v| v.record.latency.as_ref().map_or(f64::NAN, |l| l.median_s))
        .collect();
    let mut by_median: Vec<usize> = (0..visits.len()).collect();
    by_median.sort_by(|&a, &b| medians[a].total_cmp(&medians[b]));
    let middle = by_median[(visits.len() - 1) / 2];
    let mut record = visits[middle].record.clone();
    record.started_at = visits[0].record.started_at.clone();
    record.wall_s = visits.iter().map(|v| v.record.wall_s).sum();
    record.machine = visits
        .iter()
        .filter_map(|v| v.record.machine.clone())
        .max_by(|a, b| {
            let w = |m: &xarena_schema::record::MachineState| m.wait_fraction().unwrap_or(0.0);
            w(a).total_cmp(&w(b))
        });
    if let Some(l) = record.latency.as_mut() {
        l.median_s = median(&medians);
        l.iterations = visits
            .iter()
            .filter_map(|v| v.record.latency.as_ref())
            .map(|l| l.iterations)
            .sum();
    }
    record.rounds = Some(Rounds {
        interval: interval(&medians),
        visits: visits
            .into_iter()
            .filter_map(|v| {
                let latency = v.record.latency?;
                Some(Visit {
                    round: v.round,
                    started_at: v.record.started_at,
                    latency,
                    machine: v.record.machine,
                })
            })
            .collect(),
    });
    debug_assert!(record.status == Status::Ok);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_extremes_until_enough_rounds_cover_95_percent() {
        let i = interval(&[3.0, 1.0, 2.0]);
        assert_eq!((i.low_s, i.high_s), (1.0, 3.0));
        assert!((i.coverage - 0.75).abs() < 1e-12);
        assert!((interval(&[1.0, 2.0, 3.0, 4.0, 5.0]).coverage - 0.9375).abs() < 1e-12);
        // Six rounds: the extremes cover 1 - 2/64 = 0.969; ranks 2 and 5 only 0.781.
        let six = interval(&[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]);
        assert_eq!((six.low_s, six.high_s), (1.0, 6.0));
        assert!((six.coverage - (1.0 - 2.0 / 64.0)).abs() < 1e-12);
        // Twenty: ranks 6 and 15 (coverage 0.9586), as binomial tables give.
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let i = interval(&v);
        assert_eq!((i.low_s, i.high_s), (6.0, 15.0));
        assert!((i.coverage - 0.958610).abs() < 1e-5, "{}", i.coverage);
        assert_eq!(interval(&[2.0]).coverage, 0.0);
    }

    #[test]
    fn rounds_visit_every_case_once_in_another_order() {
        let r0 = order(20, 0);
        assert_eq!(r0, (0..20).collect::<Vec<_>>());
        let (r1, r2) = (order(20, 1), order(20, 2));
        for r in [&r1, &r2] {
            let mut s = r.clone();
            s.sort();
            assert_eq!(s, r0);
        }
        assert!(r1 != r0 && r2 != r1);
        assert_eq!(order(20, 1), r1, "the same round, the same order");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
