//! Repeated timed iterations with the device synchronised around each.
//!
//! Warm-up runs until both a minimum time and a minimum count have passed (the first
//! iterations pay for lazy initialisation: kernels, allocator pools, thread pools). The
//! warm-up's typical iteration sets how many timed iterations fill `min_time`, within
//! `[min_iters, max_iters]`, so fast cases run many iterations and timer resolution and
//! launch overhead don't dominate, and slow cases still give a spread.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::Device;

use xarena_reports::analysis::{quantile, summarise};
use xarena_reports::schema::Latency;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimingConfig {
    /// Warm-up lasts at least this long...
    pub warmup_s: f64,
    /// ...and at least this many iterations.
    pub warmup_iters: u64,
    /// Timed iterations fill at least this long...
    pub min_time_s: f64,
    /// ...with at least and at most this many iterations.
    pub min_iters: u64,
    pub max_iters: u64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            warmup_s: 0.2,
            warmup_iters: 2,
            min_time_s: 1.0,
            min_iters: 5,
            max_iters: 1000,
        }
    }
}

pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One iteration's wall time, the device idle before and after it.
pub fn time_once(device: Device, f: &mut impl FnMut()) -> f64 {
    time_after(device, &mut || {}, f)
}

/// `f`'s wall time, with `setup` run first outside the timed region (decode mode puts its
/// state back to the end of the context there).
pub fn time_after(device: Device, setup: &mut impl FnMut(), f: &mut impl FnMut()) -> f64 {
    setup();
    synchronize(device);
    let start = Instant::now();
    f();
    synchronize(device);
    start.elapsed().as_secs_f64()
}

/// Warm-up; returns the typical iteration time (median after the first) and the count.
pub fn warm_up(
    device: Device,
    config: &TimingConfig,
    setup: &mut impl FnMut(),
    f: &mut impl FnMut(),
) -> (f64, u64) {
    let start = Instant::now();
    let budget = Duration::from_secs_f64(config.warmup_s);
    let mut times = Vec::new();
    while times.len() < config.warmup_iters.max(1) as usize || start.elapsed() < budget {
        times.push(time_after(device, setup, f));
    }
    let mut steady: Vec<f64> = times.iter().skip(1).copied().collect();
    if steady.is_empty() {
        steady = times.clone();
    }
    steady.sort_by(f64::total_cmp);
    (quantile(&steady, 0.5), times.len() as u64)
}

/// How many timed iterations fill `min_time` at `per_iter` seconds each.
pub fn iterations_for(config: &TimingConfig, per_iter: f64) -> u64 {
    let wanted = if per_iter > 0.0 {
        (config.min_time_s / per_iter).ceil() as u64
    } else {
        config.max_iters
    };
    wanted.clamp(
        config.min_iters.max(1),
        config.max_iters.max(config.min_iters.max(1)),
    )
}

/// The timed iterations after warm-up, each after `setup`.
pub fn measure(
    device: Device,
    iterations: u64,
    warmup: u64,
    setup: &mut impl FnMut(),
    f: &mut impl FnMut(),
) -> Latency {
    let samples: Vec<f64> = (0..iterations)
        .map(|_| time_after(device, setup, f))
        .collect();
    summarise(&samples, warmup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iteration_count_fills_min_time_within_bounds() {
        let c = TimingConfig {
            min_time_s: 1.0,
            min_iters: 5,
            max_iters: 100,
            ..Default::default()
        };
        assert_eq!(iterations_for(&c, 0.1), 10);
        assert_eq!(iterations_for(&c, 1.0), 5);
        assert_eq!(iterations_for(&c, 1e-6), 100);
        assert_eq!(iterations_for(&c, 0.0), 100);
    }

    #[test]
    fn warm_up_runs_at_least_the_minimum() {
        let mut n = 0;
        let c = TimingConfig {
            warmup_s: 0.0,
            warmup_iters: 3,
            ..Default::default()
        };
        let mut setups = 0;
        let (_, count) = warm_up(Device::Cpu, &c, &mut || setups += 1, &mut || n += 1);
        assert_eq!((count, n, setups), (3, 3, 3));
    }
}
