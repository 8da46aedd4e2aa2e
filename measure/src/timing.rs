//! Repeated timed samples with the device synchronised around each.
//!
//! Warm-up runs until both a minimum time and a minimum count have passed (the first
//! iterations pay for lazy initialisation: kernels, allocator pools, thread pools). The
//! warm-up's typical iteration sets how many timed samples fill `min_time`, within
//! `[min_iters, max_iters]`, so fast cases run many and timer resolution doesn't dominate,
//! and slow cases still give a spread.
//!
//! On a GPU a synchronisation costs tens of microseconds and starts every sample with an
//! empty launch queue, so a host clock around one short iteration measures the dispatch
//! of its kernels rather than their work. Short cases there run K iterations between two
//! synchronisations (each sample their mean, as in a real loop that never waits), and
//! CUDA events on the case's stream give the device's own time beside the host's.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::Device;

use xarena_reports::analysis::{quantile, summarise};
use xarena_reports::schema::{DeviceTime, Latency};

use super::shim::CudaTimer;

/// On CUDA, a sample lasts at least this long unless the config says otherwise: about 100
/// synchronisations' worth, so their cost is within 1% of the sample.
pub const CUDA_MIN_SAMPLE_S: f64 = 2e-3;

/// At most this many iterations between two synchronisations.
pub const MAX_PER_SAMPLE: u64 = 256;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimingConfig {
    /// Warm-up lasts at least this long...
    pub warmup_s: f64,
    /// ...and at least this many iterations.
    pub warmup_iters: u64,
    /// Timed samples fill at least this long...
    pub min_time_s: f64,
    /// ...with at least and at most this many samples.
    pub min_iters: u64,
    pub max_iters: u64,
    /// A sample lasts at least this long: a shorter iteration runs K times between two
    /// synchronisations. `None`: the device's default ([`CUDA_MIN_SAMPLE_S`] on CUDA,
    /// one iteration per sample on the CPU, where nothing is synchronised).
    #[serde(default)]
    pub min_sample_s: Option<f64>,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            warmup_s: 0.2,
            warmup_iters: 2,
            min_time_s: 1.0,
            min_iters: 5,
            max_iters: 1000,
            min_sample_s: None,
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

/// Iterations per sample (K) for an iteration of `per_iter` seconds. 1 when the config
/// and device ask for no batching, or when the step needs its `setup` before every
/// iteration (`batchable` false: decode mode).
pub fn per_sample_for(
    config: &TimingConfig,
    device: Device,
    per_iter: f64,
    batchable: bool,
) -> u64 {
    let min = config.min_sample_s.unwrap_or(match device {
        Device::Cuda(_) => CUDA_MIN_SAMPLE_S,
        _ => 0.0,
    });
    if !batchable || min <= 0.0 || per_iter >= min {
        return 1;
    }
    if per_iter <= 0.0 {
        return MAX_PER_SAMPLE;
    }
    ((min / per_iter).ceil() as u64).clamp(1, MAX_PER_SAMPLE)
}

/// How many timed samples of `per_sample` iterations fill `min_time` at `per_iter` seconds
/// an iteration.
pub fn iterations_for(config: &TimingConfig, per_iter: f64, per_sample: u64) -> u64 {
    let per = per_iter * per_sample.max(1) as f64;
    let wanted = if per > 0.0 {
        (config.min_time_s / per).ceil() as u64
    } else {
        config.max_iters
    };
    wanted.clamp(
        config.min_iters.max(1),
        config.max_iters.max(config.min_iters.max(1)),
    )
}

/// Times samples on one device: the host clock, and CUDA events where the device is a GPU.
pub struct Sampler {
    device: Device,
    events: Option<CudaTimer>,
}

impl Sampler {
    pub fn new(device: Device) -> Sampler {
        let events = match device {
            // Without events the host time still stands; the record then has no device time.
            Device::Cuda(i) => CudaTimer::new(i).ok(),
            _ => None,
        };
        Sampler { device, events }
    }

    /// `setup`, then `k` iterations of `f` between two synchronisations: host and device
    /// seconds per iteration.
    pub fn sample(
        &mut self,
        k: u64,
        setup: &mut impl FnMut(),
        f: &mut impl FnMut(),
    ) -> (f64, Option<f64>) {
        let k = k.max(1);
        setup();
        synchronize(self.device);
        let start = Instant::now();
        let started = self.events.as_mut().map(|e| e.start().is_ok());
        for _ in 0..k {
            f();
        }
        let stopped = self.events.as_mut().map(|e| e.stop().is_ok());
        synchronize(self.device);
        let host = start.elapsed().as_secs_f64() / k as f64;
        let device = match (&self.events, started, stopped) {
            (Some(e), Some(true), Some(true)) => e.elapsed_s().ok().map(|s| s / k as f64),
            _ => None,
        };
        (host, device)
    }
}

/// The timed samples after warm-up, each after `setup`: `samples` of `per_sample`
/// iterations.
pub fn measure(
    device: Device,
    samples: u64,
    per_sample: u64,
    warmup: u64,
    setup: &mut impl FnMut(),
    f: &mut impl FnMut(),
) -> Latency {
    let mut sampler = Sampler::new(device);
    let (host, dev): (Vec<f64>, Vec<Option<f64>>) = (0..samples)
        .map(|_| sampler.sample(per_sample, setup, f))
        .unzip();
    summarise_samples(&host, &dev, per_sample, warmup)
}

/// Host statistics over the samples, with the device's beside them when every sample
/// has one.
pub fn summarise_samples(
    host: &[f64],
    device: &[Option<f64>],
    per_sample: u64,
    warmup: u64,
) -> Latency {
    let mut latency = summarise(host, warmup);
    latency.per_sample = per_sample.max(1);
    latency.iterations = host.len() as u64 * latency.per_sample;
    let dev: Option<Vec<f64>> = device.iter().copied().collect();
    if let Some(mut d) = dev.filter(|d| !d.is_empty()) {
        d.sort_by(f64::total_cmp);
        latency.device = Some(DeviceTime {
            median_s: quantile(&d, 0.5),
            p10_s: quantile(&d, 0.1),
            p90_s: quantile(&d, 0.9),
            method: "cuda-events".into(),
        });
    }
    latency
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
        assert_eq!(iterations_for(&c, 0.1, 1), 10);
        assert_eq!(iterations_for(&c, 1.0, 1), 5);
        assert_eq!(iterations_for(&c, 1e-6, 1), 100);
        assert_eq!(iterations_for(&c, 0.0, 1), 100);
        // Samples of 4 iterations: a quarter as many samples fill the same time.
        assert_eq!(iterations_for(&c, 0.01, 4), 25);
    }

    #[test]
    fn short_cases_batch_on_cuda_and_not_on_the_cpu() {
        let c = TimingConfig::default();
        let cuda = Device::Cuda(0);
        // 20 us an iteration: 100 of them fill the 2 ms sample.
        assert_eq!(per_sample_for(&c, cuda, 20e-6, true), 100);
        assert_eq!(per_sample_for(&c, cuda, 1e-9, true), MAX_PER_SAMPLE);
        assert_eq!(per_sample_for(&c, cuda, 5e-3, true), 1);
        // Decode needs its setup before every step.
        assert_eq!(per_sample_for(&c, cuda, 20e-6, false), 1);
        assert_eq!(per_sample_for(&c, Device::Cpu, 20e-6, true), 1);
        let forced = TimingConfig {
            min_sample_s: Some(1e-3),
            ..c
        };
        assert_eq!(per_sample_for(&forced, Device::Cpu, 1e-4, true), 10);
        let off = TimingConfig {
            min_sample_s: Some(0.0),
            ..c
        };
        assert_eq!(per_sample_for(&off, cuda, 1e-6, true), 1);
    }

    #[test]
    fn batched_samples_run_k_iterations_and_report_per_iteration_time() {
        let (mut calls, mut setups) = (0, 0);
        let lat = measure(Device::Cpu, 3, 7, 2, &mut || setups += 1, &mut || {
            calls += 1;
            std::thread::sleep(Duration::from_millis(1));
        });
        assert_eq!((calls, setups), (21, 3));
        assert_eq!((lat.iterations, lat.per_sample), (21, 7));
        // Each sample is a mean per iteration: at least the 1 ms each slept.
        assert!(lat.min_s >= 1e-3, "{lat:?}");
        // No events on the CPU.
        assert!(lat.device.is_none());
    }

    #[test]
    fn device_time_is_kept_only_when_every_sample_has_one() {
        let host = [3e-3, 1e-3, 2e-3];
        let lat = summarise_samples(&host, &[Some(2e-3), Some(0.5e-3), Some(1e-3)], 4, 1);
        let d = lat.device.expect("device time");
        assert_eq!((d.median_s, d.method.as_str()), (1e-3, "cuda-events"));
        assert_eq!(
            (lat.median_s, lat.iterations, lat.per_sample),
            (2e-3, 12, 4)
        );
        let partial = summarise_samples(&host, &[Some(2e-3), None, Some(1e-3)], 1, 1);
        assert!(partial.device.is_none());
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
