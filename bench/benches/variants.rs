//! `cargo bench`: criterion benches per variant and sequence length, through the same
//! case code the runner uses (`Prepared`), so the two measure the same step.
//!
//! Short on the CPU by default. Environment variables choose the cases:
//! `XARENA_BENCH_VARIANTS` (default: vanilla,sdpa,local,linformer,performer),
//! `XARENA_BENCH_SEQ` (default: 256,1024), `XARENA_BENCH_BATCH` (default: 1),
//! `XARENA_BENCH_DTYPE` (f32, bf16 or f16; default f32),
//! `XARENA_BENCH_MODE` (forward, train or decode; default forward),
//! `XARENA_BENCH_SCOPE` (attention, block or model; default attention),
//! `XARENA_BENCH_CAUSAL` (0 or 1; decode is always causal),
//! `XARENA_BENCH_DEVICE` (default: cuda when present, else cpu). A value that is not one
//! of these stops the bench with a message naming the variable. Every iteration is timed
//! alone, the device synchronised before and after it, as the runner does; criterion's
//! own flags (`--warm-up-time`, `--measurement-time`, `--sample-size`) override the
//! short defaults set here.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::de::DeserializeOwned;
use xarena_bench::case::Prepared;
use xarena_bench::sweep::Sweep;
use xarena_measure::timing::synchronize;
use xarena_reports::schema::{Dtype, Mode, Scope};

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn numbers(name: &str, default: &str) -> Vec<i64> {
    env_list(name, default)
        .iter()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name}: `{s}` is not a number"))
        })
        .collect()
}

/// A list of the schema's lowercase names (`bf16`, `decode`, `block`), parsed by the
/// schema's own serde names so the bench accepts exactly what a sweep file does.
fn names<T: DeserializeOwned>(name: &str, default: &str, expected: &str) -> Vec<T> {
    env_list(name, default)
        .iter()
        .map(|s| {
            serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
                .unwrap_or_else(|_| panic!("{name}: `{s}` is not one of {expected}"))
        })
        .collect()
}

fn sweep() -> Sweep {
    let default_device = if tch::Cuda::is_available() {
        "cuda"
    } else {
        "cpu"
    };
    let mode: Vec<Mode> = names("XARENA_BENCH_MODE", "forward", "forward, train, decode");
    let causal = match std::env::var("XARENA_BENCH_CAUSAL").as_deref() {
        Err(_) | Ok("" | "0") => false,
        Ok("1") => true,
        Ok(other) => panic!("XARENA_BENCH_CAUSAL: `{other}` is not 0 or 1"),
    };
    Sweep {
        variants: env_list(
            "XARENA_BENCH_VARIANTS",
            "vanilla,sdpa,local,linformer,performer",
        )
        .iter()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("XARENA_BENCH_VARIANTS: `{v}`: {e}"))
        })
        .collect(),
        seq: numbers("XARENA_BENCH_SEQ", "256,1024"),
        batch: numbers("XARENA_BENCH_BATCH", "1"),
        dtype: names::<Dtype>("XARENA_BENCH_DTYPE", "f32", "f32, bf16, f16"),
        device: env_list("XARENA_BENCH_DEVICE", default_device),
        scope: names::<Scope>("XARENA_BENCH_SCOPE", "attention", "attention, block, model"),
        // Decoding needs a causal model; the sweep refuses it otherwise.
        causal: vec![causal || mode.contains(&Mode::Decode)],
        mode,
        ..Sweep::default()
    }
}

fn variants(c: &mut Criterion) {
    let cases = sweep()
        .cases()
        .unwrap_or_else(|e| panic!("bench sweep: {e}"));
    let mut group = c.benchmark_group("xarena");
    for case in &cases {
        let prepared = Prepared::new(case).unwrap_or_else(|e| panic!("{}: {e}", case.describe()));
        let k = &case.key;
        // Decode generates one token per sequence; the other modes process all N.
        let tokens = match k.mode {
            Mode::Decode => k.batch,
            _ => k.batch * k.seq_len,
        };
        group.throughput(Throughput::Elements(tokens as u64));
        let id = BenchmarkId::new(
            format!(
                "{}/{}/{}/{}/{}",
                case.label, k.scope, k.device, k.dtype, k.mode
            ),
            k.seq_len,
        );
        group.bench_function(id, |b| {
            // Timed one step at a time: decode must reset its state to the end of the
            // context before each step, and that reset must stay outside the measurement.
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    prepared.setup();
                    synchronize(prepared.device);
                    let start = Instant::now();
                    prepared.step();
                    synchronize(prepared.device);
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Set on the Criterion value rather than the group so that criterion's command-line
    // flags, applied after this, can override them.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = variants
}
criterion_main!(benches);
