//! Sizes and values refused up front (issue 14, items 6 to 8): every refusal exits
//! non-zero, names the value, and leaves --out uncreated.

mod common;

use std::path::Path;
use std::process::Output;

use common::{run_quick, stderr, tmp, xarena};
use xarena_reports::load::read_results;
use xarena_reports::schema::Status;

/// Asserts a refusal that names `needles` and wrote nothing at `out`.
fn assert_refused(o: &Output, out: &Path, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "accepted: {err}");
    assert!(err.contains("error"), "{err}");
    for n in needles {
        assert!(err.contains(n), "no `{n}` in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{} was created", out.display());
}

fn refused_run(name: &str, args: &[&str], needles: &[&str]) {
    let out = tmp(name);
    let o = run_quick(args, &out, &[]);
    assert_refused(&o, &out, needles);
}

#[test]
fn a_length_whose_element_count_overflows_is_refused() {
    refused_run(
        "seq-max",
        &["--variants", "vanilla", "--seq", "9223372036854775807"],
        &["9223372036854775807", "overflow"],
    );
}

#[test]
fn a_batch_whose_element_count_overflows_is_refused() {
    refused_run(
        "batch-max",
        &[
            "--variants",
            "vanilla",
            "--seq",
            "16",
            "--batch",
            "4611686018427387904",
        ],
        &["4611686018427387904", "overflow"],
    );
}

#[test]
fn a_window_whose_element_count_overflows_is_refused() {
    refused_run(
        "window-max",
        &[
            "--variants",
            "local:window=9223372036854775807",
            "--seq",
            "16",
        ],
        &["window", "9223372036854775807"],
    );
}

#[test]
fn an_integer_parameter_out_of_range_is_named() {
    refused_run(
        "window-range",
        &[
            "--variants",
            "local:window=99999999999999999999",
            "--seq",
            "16",
        ],
        &["window", "99999999999999999999", "integer out of range"],
    );
}

#[test]
fn a_parameter_given_twice_is_refused() {
    refused_run(
        "window-twice",
        &["--variants", "local:window=8:window=16", "--seq", "16"],
        &["window given twice"],
    );
}

#[test]
fn an_infinite_timeout_is_refused() {
    refused_run(
        "timeout-inf",
        &["--variants", "empty", "--seq", "16", "--timeout", "inf"],
        &["timeout", "inf"],
    );
}

#[test]
fn a_timeout_beyond_a_week_is_refused() {
    refused_run(
        "timeout-1e30",
        &["--variants", "empty", "--seq", "16", "--timeout", "1e30"],
        &["timeout", "1000000000000000000000000000000", "604800"],
    );
}

#[test]
fn an_infinite_timeout_in_a_sweep_file_is_refused() {
    let sweep = tmp("timeout-sweep.toml");
    std::fs::write(&sweep, "timeout_s = inf\n").unwrap();
    let sweep = sweep.to_str().unwrap();
    refused_run(
        "timeout-sweep",
        &["--sweep", sweep, "--variants", "empty", "--seq", "16"],
        &["timeout", "inf"],
    );
}

#[test]
fn more_threads_than_four_per_cpu_are_refused() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let out = tmp("threads");
    // Not run_quick: its `--threads 1` may not be given twice.
    let o = xarena()
        .args([
            "run",
            "--variants",
            "empty",
            "--seq",
            "16",
            "--threads",
            "100000",
        ])
        .args(["--batch", "1", "--heads", "2", "--head-dim", "8", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_refused(&o, &out, &["threads", "100000", &format!("{}", 4 * cpus)]);
}

#[test]
fn kv_bench_refuses_contexts_past_any_model() {
    let out = tmp("kv-contexts");
    let o = xarena()
        .args([
            "kv",
            "bench",
            "--model",
            "no-such-model",
            "--policies",
            "full",
        ])
        .args(["--contexts", "256,100000000", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_refused(&o, &out, &["--contexts", "100000000", "1048576"]);
}

#[test]
fn lra_refuses_zero_steps_before_writing() {
    let out = tmp("lra-steps");
    let o = xarena()
        .args(["lra", "--variants", "vanilla", "--tasks", "listops"])
        .args(["--steps", "0", "--threads", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_refused(&o, &out, &["--steps", "0"]);
}

/// 1 x 2 heads x 10^7 tokens: a 10^14-entry score matrix per head.
const HUGE: &[&str] = &["--variants", "vanilla", "--seq", "10000000"];

#[test]
fn a_case_past_the_machine_memory_is_refused_naming_it_and_the_estimate() {
    let out = tmp("oversize");
    let o = run_quick(HUGE, &out, &[]);
    assert_refused(
        &o,
        &out,
        &[
            "vanilla N=10000000 b=1 h=2x8 f32 cpu forward attention",
            "GiB",
            "--allow-oversize",
        ],
    );
}

#[test]
fn an_oversize_case_tried_anyway_ends_as_oom_under_the_worker_cap() {
    // 2 x 25000^2 scores of 4 bytes: 4.7 GiB in one tensor, which the machine could give
    // but the worker's 2 GiB cap must not.
    let limit = (2u64 << 30).to_string();
    let env = [("XARENA_WORKER_MEMORY_LIMIT", limit.as_str())];
    let args = [
        "--variants",
        "vanilla",
        "--seq",
        "25000",
        "--timeout",
        "120",
    ];
    let out = tmp("oversize-cap");
    let o = run_quick(&args, &out, &env);
    assert_refused(
        &o,
        &out,
        &[
            "vanilla N=25000",
            "GiB",
            "limit 2.0 GiB",
            "--allow-oversize",
        ],
    );
    let o = run_quick(&[&args[..], &["--allow-oversize"]].concat(), &out, &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_results(&out).unwrap().records;
    assert_eq!(records.len(), 1);
    let message = records[0].message.as_deref().unwrap_or_default();
    assert_eq!(records[0].status, Status::Oom, "{message}");
    // The allocator's words, without LibTorch's backtrace.
    assert!(message.contains("can't allocate memory"), "{message}");
    assert!(!message.contains("frame #"), "{message}");
}
