//! `cargo bench`: criterion benches per variant and sequence length, through the same
//! case code the runner uses (`Prepared`), so the two measure the same step.
//!
//! Short on the CPU by default. Environment variables choose the sizes:
//! `XARENA_BENCH_VARIANTS` (default: vanilla,sdpa,local,linformer,performer),
//! `XARENA_BENCH_SEQ` (default: 256,1024), `XARENA_BENCH_BATCH` (default: 1),
//! `XARENA_BENCH_MODE` (forward or train), `XARENA_BENCH_DEVICE` (default: cuda when
//! present, else cpu). On CUDA every iteration ends with a device synchronisation.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use xarena_bench::case::Prepared;
use xarena_bench::measure::timing::synchronize;
use xarena_bench::sweep::Sweep;
use xarena_reports::schema::Mode;

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

fn sweep() -> Sweep {
    let default_device = if tch::Cuda::is_available() {
        "cuda"
    } else {
        "cpu"
    };
    let mode = match env_list("XARENA_BENCH_MODE", "forward")[0].as_str() {
        "train" => Mode::Train,
        _ => Mode::Forward,
    };
    Sweep {
        variants: env_list(
            "XARENA_BENCH_VARIANTS",
            "vanilla,sdpa,local,linformer,performer",
        )
        .iter()
        .map(|v| v.parse().expect("a variant spec"))
        .collect(),
        seq: numbers("XARENA_BENCH_SEQ", "256,1024"),
        batch: numbers("XARENA_BENCH_BATCH", "1"),
        device: env_list("XARENA_BENCH_DEVICE", default_device),
        mode: vec![mode],
        ..Sweep::default()
    }
}

fn variants(c: &mut Criterion) {
    let cases = sweep()
        .cases()
        .unwrap_or_else(|e| panic!("bench sweep: {e}"));
    let mut group = c.benchmark_group("attention");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for case in &cases {
        let prepared = Prepared::new(case).unwrap_or_else(|e| panic!("{}: {e}", case.describe()));
        let k = &case.key;
        group.throughput(Throughput::Elements((k.batch * k.seq_len) as u64));
        let id = BenchmarkId::new(
            format!("{}/{}/{}/{}", case.label, k.device, k.dtype, k.mode),
            k.seq_len,
        );
        group.bench_function(id, |b| {
            b.iter(|| {
                prepared.step();
                synchronize(prepared.device);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, variants);
criterion_main!(benches);
