//! The `xarena` binary end to end: failures recorded per case, resume, bad input.

mod common;

use std::path::Path;

use common::{run_quick, stderr, tmp, xarena};
use xarena_reports::load::read_results;
use xarena_reports::schema::Status;

fn statuses(out: &Path) -> Vec<(String, i64, Status, Option<String>)> {
    read_results(out)
        .unwrap()
        .records
        .into_iter()
        .map(|r| (r.key.variant, r.key.seq_len, r.status, r.message))
        .collect()
}

#[test]
fn failing_cases_are_recorded_and_the_sweep_goes_on() {
    let out = tmp("faults");
    let o = run_quick(
        &[
            "--variants",
            "vanilla,local,linformer,performer,sdpa",
            "--seq",
            "32",
            "--timeout",
            "5",
        ],
        &out,
        &[("XARENA_FAULT", "panic@local,hang@linformer,abort@performer")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = statuses(&out);
    let status_of = |v: &str| got.iter().find(|g| g.0 == v).unwrap().clone();
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(status_of("vanilla").2, Status::Ok);
    assert_eq!(
        status_of("sdpa").2,
        Status::Ok,
        "the case after the failures still runs"
    );
    let local = status_of("local");
    assert_eq!(local.2, Status::Error);
    assert!(local.3.unwrap().contains("injected fault"));
    assert_eq!(status_of("linformer").2, Status::Timeout);
    let performer = status_of("performer");
    assert_eq!(performer.2, Status::Error);
    assert!(performer.3.unwrap().contains("signal"));
    // The CSV holds the same cases.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
}

#[test]
fn a_reused_worker_is_replaced_after_a_failure() {
    // `poison` fails its case and every later case of the same process, as a CUDA
    // device-side assert does: with --reuse-worker the cases after it must still run.
    let out = tmp("poisoned");
    let o = run_quick(
        &[
            "--variants",
            "local,vanilla,sdpa",
            "--seq",
            "32",
            "--reuse-worker",
        ],
        &out,
        &[("XARENA_FAULT", "poison@local")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = statuses(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    for (variant, _, status, message) in &got {
        if variant == "local" {
            assert_eq!(*status, Status::Error);
            assert!(message.as_deref().unwrap().contains("poisoned"));
        } else {
            assert_eq!(*status, Status::Ok, "{variant}: {message:?}");
        }
    }
}

#[test]
fn an_allocation_too_large_for_the_machine_is_recorded_as_oom() {
    let out = tmp("oom");
    // 64 x 2^20 tokens x 8 wide is 2 GiB of input, and the score matrix 2^46 entries.
    let o = xarena()
        .args([
            "run",
            "--variants",
            "vanilla",
            "--seq",
            "1048576",
            "--batch",
            "64",
            "--heads",
            "1",
        ])
        .args([
            "--head-dim",
            "8",
            "--no-report",
            "--timeout",
            "120",
            // Refused up front otherwise: this test is of the worker's failure path.
            "--allow-oversize",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got = statuses(&out);
    assert_eq!(got[0].2, Status::Oom, "{got:?}");
}

#[test]
fn resume_skips_finished_cases_and_repairs_a_cut_line() {
    let out = tmp("resume");
    let o = run_quick(&["--variants", "vanilla,empty", "--seq", "16"], &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = read_results(&out).unwrap().records;
    assert_eq!(first.len(), 2);

    // A run killed while writing leaves half a line.
    let results = out.join("results.jsonl");
    let mut text = std::fs::read_to_string(&results).unwrap();
    text.push_str("{\"schema\":1,\"run_id\":\"cut");
    std::fs::write(&results, text).unwrap();

    // Without --resume the directory is refused and left alone.
    let o = run_quick(
        &["--variants", "vanilla,empty", "--seq", "16,24"],
        &out,
        &[],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));

    let o = run_quick(
        &["--variants", "vanilla,empty", "--seq", "16,24", "--resume"],
        &out,
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 ran"), "{}", stderr(&o));
    let all = read_results(&out).unwrap();
    assert!(!all.truncated_tail);
    assert_eq!(all.records.len(), 4);
    // The first two records are untouched, and no case appears twice.
    assert_eq!(all.records[..2], first[..]);
    let mut ids: Vec<_> = all.records.iter().map(|r| r.case_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);

    // Nothing left to do.
    let o = run_quick(
        &["--variants", "vanilla,empty", "--seq", "16,24", "--resume"],
        &out,
        &[],
    );
    assert!(stderr(&o).contains("0 ran"), "{}", stderr(&o));
}

#[test]
fn bad_input_exits_non_zero_names_the_problem_and_writes_nothing() {
    let sweep_dir = tmp("sweeps");
    std::fs::create_dir_all(&sweep_dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = sweep_dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let unknown_field = file("a.toml", "variants = [\"vanilla\"]\nsequence = [1]\n");
    let wrong_type = file("b.toml", "seq = [\"long\"]\n");
    let bad_table = file("c.toml", "variants = [{ window = 3 }]\n");
    let bad_param = file("d.toml", "variants = [{ name = \"local\", window = 0 }]\n");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--variants".into(), "nosuch".into()],
            "unknown variant `nosuch`",
        ),
        (vec!["--seq".into(), "0".into()], "`seq`: must be positive"),
        (vec!["--seq".into(), "x".into()], "invalid value 'x'"),
        (vec!["--dtype".into(), "f64".into()], "invalid value 'f64'"),
        (vec!["--bogus".into()], "unexpected argument '--bogus'"),
        (
            vec!["--variants".into(), "local:window=0".into()],
            "window must be at least 1",
        ),
        (
            vec!["--variants".into(), "local:size=3".into()],
            "unknown field `size`",
        ),
        (
            vec!["--variants".into(), "linformer".into(), "--causal".into()],
            "does not support causal",
        ),
        (vec!["--device".into(), "tpu".into()], "`device`: `tpu`"),
        (
            vec![
                "--variants".into(),
                "sdpa".into(),
                "--mode".into(),
                "decode".into(),
            ],
            "decode mode generates causally",
        ),
        (
            vec![
                "--variants".into(),
                "blockwise".into(),
                "--mode".into(),
                "decode".into(),
                "--causal".into(),
            ],
            "no token-by-token decoder",
        ),
        (
            vec!["--variants".into(), "switch".into()],
            "cannot run at scope `attention` (it runs at: block)",
        ),
        (
            vec![
                "--min-iters".into(),
                "5".into(),
                "--max-iters".into(),
                "2".into(),
            ],
            "min_iters <= max_iters",
        ),
        (
            vec!["--sweep".into(), unknown_field],
            "unknown field `sequence`",
        ),
        (vec!["--sweep".into(), wrong_type], "seq"),
        (vec!["--sweep".into(), bad_table], "needs `name"),
        (
            vec!["--sweep".into(), bad_param],
            "window must be at least 1",
        ),
        (
            vec!["--sweep".into(), "/nonexistent/sweep.toml".into()],
            "/nonexistent/sweep.toml",
        ),
    ];
    if !tch::Cuda::is_available() {
        let mut cuda = cases;
        cuda.push((
            vec!["--device".into(), "cuda".into()],
            "CUDA is not available",
        ));
        check_rejected(&cuda);
    } else {
        check_rejected(&cases);
    }
}

fn check_rejected(cases: &[(Vec<String>, &str)]) {
    for (args, needle) in cases {
        let out = tmp("rejected");
        let o = xarena()
            .arg("run")
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: `{err}` lacks `{needle}`");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[test]
fn report_prints_the_table_and_rejects_bad_files() {
    let out = tmp("report");
    let o = run_quick(
        &["--variants", "vanilla,local:window=8", "--seq", "16,32"],
        &out,
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = xarena()
        .args(["report", "--format", "markdown"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "| vanilla",
        "| local(window=8)",
        "N=16",
        "N=32",
        "(1.00x)",
        "exponent",
    ] {
        assert!(text.contains(needle), "report lacks {needle}:\n{text}");
    }

    let o = xarena()
        .args(["report", "/nonexistent/results"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/results"));

    // A record of another schema version is refused, not misread.
    let other = out.join("other.jsonl");
    let line = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let line = line
        .lines()
        .next()
        .unwrap()
        .replace("\"schema\":1", "\"schema\":99");
    std::fs::write(&other, format!("{line}\n")).unwrap();
    let o = xarena().arg("report").arg(&other).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("schema version 99"), "{}", stderr(&o));
}

#[test]
fn list_names_every_variant_with_its_family() {
    let o = xarena()
        .args(["list", "--format", "markdown"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "vanilla",
        "sdpa",
        "local",
        "linformer",
        "performer",
        "low-rank",
        "kernels",
    ] {
        assert!(text.contains(needle), "{needle}");
    }
}

#[test]
fn decode_records_per_token_latency_and_the_state() {
    let out = tmp("decode");
    let o = run_quick(
        &[
            "--variants",
            "vanilla,local:window=8",
            "--seq",
            "32,64",
            "--mode",
            "decode",
            "--causal",
        ],
        &out,
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_results(&out).unwrap().records;
    assert_eq!(records.len(), 4);
    let state = |variant: &str, n: i64| {
        records
            .iter()
            .find(|r| r.key.variant == variant && r.key.seq_len == n)
            .and_then(|r| r.state_bytes)
            .unwrap()
    };
    // The KV cache doubles with the context; the window's does not move.
    assert_eq!(state("vanilla", 64), 2 * state("vanilla", 32));
    assert_eq!(state("local", 64), state("local", 32));
    for r in &records {
        assert_eq!(r.status, Status::Ok, "{:?}", r.message);
        assert!(r.flops.unwrap() > 0);
    }
}

#[test]
fn quality_measures_and_rejects_bad_input() {
    let o = xarena()
        .args([
            "quality",
            "--variants",
            "sdpa,local:window=4",
            "--seq",
            "32",
        ])
        .args(["--heads", "2", "--head-dim", "8", "--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let records: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = |i: usize| records[i]["rel_error"].as_f64().unwrap();
    assert!(err(0) < 1e-5, "sdpa is exact: {}", err(0));
    assert!(err(1) > 1e-3, "a window of 4 at N = 32 is not: {}", err(1));
    for (args, needle) in [
        (vec!["--variants", "nosuch"], "unknown variant `nosuch`"),
        (vec!["--variants", "sdpa", "--seq", "0"], "--seq"),
        (vec!["--variants", "sdpa", "--qk-scale", "0"], "--qk-scale"),
    ] {
        let o = xarena().arg("quality").args(&args).output().unwrap();
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}
