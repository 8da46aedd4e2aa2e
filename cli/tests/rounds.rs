//! `xarena run --rounds R`: every case visited R times, interleaved, each visit its own
//! worker; the record keeps every round and the interval of their median; a resumed run
//! goes on from the rounds already made; a failed visit ends its case.

mod common;

use common::{run_quick, stderr, tmp, xarena};
use serde_json::Value;
use std::path::Path;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const CASES: &[&str] = &["--variants", "empty,vanilla", "--seq", "16,32"];

#[test]
fn rounds_are_interleaved_and_each_record_keeps_them_with_an_interval() {
    let out = tmp("rounds");
    let o = run_quick(&[CASES, &["--rounds", "3"]].concat(), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let records = lines(&out.join("results.jsonl"));
    assert_eq!(records.len(), 4);
    for r in &records {
        assert_eq!(r["status"], "ok", "{r}");
        let visits = r["rounds"]["visits"].as_array().unwrap();
        let rounds: Vec<u64> = visits
            .iter()
            .map(|v| v["round"].as_u64().unwrap())
            .collect();
        assert_eq!(rounds, [0, 1, 2], "{r}");
        let mut medians: Vec<f64> = visits
            .iter()
            .map(|v| v["latency"]["median_s"].as_f64().unwrap())
            .collect();
        medians.sort_by(f64::total_cmp);
        let i = &r["rounds"]["interval"];
        // Three rounds: the extremes, covering 75%; the latency is the middle one.
        assert_eq!(i["low_s"].as_f64().unwrap(), medians[0], "{r}");
        assert_eq!(i["high_s"].as_f64().unwrap(), medians[2], "{r}");
        assert_eq!(i["coverage"].as_f64().unwrap(), 0.75);
        assert_eq!(
            r["latency"]["median_s"].as_f64().unwrap(),
            medians[1],
            "{r}"
        );
        // Every visit saw the machine.
        for v in visits {
            assert!(v["machine"]["wall_s"].as_f64().unwrap() > 0.0, "{v}");
            assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1, "{v}");
        }
    }
    // Each visit in visits.jsonl, round by round; the rounds' orders are not all the same.
    let visits = lines(&out.join("visits.jsonl"));
    assert_eq!(visits.len(), 12);
    let order = |round: u64| -> Vec<String> {
        visits
            .iter()
            .filter(|v| v["round"] == round)
            .map(|v| v["record"]["case_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(order(0).len(), 4);
    assert!(
        order(1) != order(0) || order(2) != order(0),
        "every round in the sweep's order"
    );
    for r in 1..3 {
        assert!(
            visits.iter().position(|v| v["round"] == r - 1).unwrap()
                < visits.iter().position(|v| v["round"] == r).unwrap()
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_resumed_run_goes_on_from_the_rounds_already_made() {
    let first = tmp("rounds-first");
    let o = run_quick(&[CASES, &["--rounds", "3"]].concat(), &first, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // As if killed during round 2: its visits of rounds 0 and 1 kept, no record yet.
    let out = tmp("rounds-resume");
    std::fs::create_dir_all(&out).unwrap();
    let kept: Vec<Value> = lines(&first.join("visits.jsonl"))
        .into_iter()
        .filter(|v| v["round"].as_u64().unwrap() < 2)
        .collect();
    let text: String = kept.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(out.join("visits.jsonl"), &text).unwrap();
    std::fs::write(out.join("results.jsonl"), "").unwrap();
    // A new run may not take a directory holding rounds.
    let o = run_quick(&[CASES, &["--rounds", "3"]].concat(), &out, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already holds results"),
        "{}",
        stderr(&o)
    );
    let o = run_quick(&[CASES, &["--rounds", "3", "--resume"]].concat(), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        lines(&out.join("visits.jsonl")).len(),
        12,
        "one new round each"
    );
    let records = lines(&out.join("results.jsonl"));
    assert_eq!(records.len(), 4);
    for r in &records {
        let visits = r["rounds"]["visits"].as_array().unwrap();
        assert_eq!(visits.len(), 3, "{r}");
        let planted = kept
            .iter()
            .find(|v| v["round"] == 0 && v["record"]["case_id"] == r["case_id"])
            .unwrap();
        assert_eq!(visits[0]["started_at"], planted["record"]["started_at"]);
    }
    for d in [first, out] {
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn a_failed_visit_ends_its_case_and_bad_rounds_are_refused() {
    let out = tmp("rounds-fault");
    let o = run_quick(
        &[CASES, &["--rounds", "2"]].concat(),
        &out,
        &[("XARENA_FAULT", "panic@vanilla")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let records = lines(&out.join("results.jsonl"));
    assert_eq!(records.len(), 4);
    for r in &records {
        if r["key"]["variant"] == "vanilla" {
            assert_eq!(r["status"], "error", "{r}");
            assert!(r.get("rounds").is_none(), "{r}");
        } else {
            assert_eq!(r["rounds"]["visits"].as_array().unwrap().len(), 2, "{r}");
        }
    }
    // vanilla's cases visited once each, empty's twice.
    assert_eq!(lines(&out.join("visits.jsonl")).len(), 2 + 4);
    std::fs::remove_dir_all(&out).unwrap();

    for bad in ["0", "101"] {
        let out = tmp("rounds-bad");
        let o = run_quick(&[CASES, &["--rounds", bad]].concat(), &out, &[]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("`rounds`: must be 1 to 100"),
            "{}",
            stderr(&o)
        );
        assert!(!out.exists(), "nothing written for a refused sweep");
    }
    let sweep = tmp("rounds-sweep.toml");
    std::fs::write(&sweep, "rounds = 0\n").unwrap();
    let o = xarena()
        .args(["run", "--sweep"])
        .arg(&sweep)
        .args(["--out", "/nonexistent/never"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("rounds"), "{}", stderr(&o));
    std::fs::remove_file(&sweep).unwrap();
}

#[test]
fn a_malformed_slowdown_knob_fails_the_case_by_name() {
    let out = tmp("rounds-knob");
    let o = run_quick(
        &["--variants", "empty", "--seq", "16"],
        &out,
        &[("XARENA_TEST_SLOWDOWN", "lots@empty")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = &lines(&out.join("results.jsonl"))[0];
    assert_eq!(r["status"], "error");
    let m = r["message"].as_str().unwrap();
    assert!(
        m.contains("XARENA_TEST_SLOWDOWN") && m.contains("lots"),
        "{m}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
