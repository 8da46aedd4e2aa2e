//! `xarena run --shard`, `merge`, `compare` and `history` end to end, on a tiny sweep.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{stderr, stdout, tmp, xarena, QUICK};
use xarena_reports::load::read_results;

/// Two cheap variants at three lengths, 6 cases, unless `extra` names variants (clap
/// appends a list given twice rather than replacing it).
fn run_sweep(out: &Path, extra: &[&str]) -> Output {
    let sweep: &[&str] = if extra.contains(&"--variants") {
        &[]
    } else {
        &["--variants", "empty,vanilla", "--seq", "16,32,64"]
    };
    xarena()
        .arg("run")
        .args(QUICK)
        .args(sweep)
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = read_results(dir)
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.case_id)
        .collect();
    ids.sort();
    ids
}

fn runs_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("runs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn compare(base: &Path, new: &Path, extra: &[&str]) -> Output {
    xarena()
        .arg("compare")
        .arg(base)
        .arg(new)
        .args(extra)
        .output()
        .unwrap()
}

/// A copy of a results file with each record changed by `edit`.
fn edited(from: &Path, to: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let text = std::fs::read_to_string(from.join("results.jsonl")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        edit(&mut v);
        out.push_str(&serde_json::to_string(&v).unwrap());
        out.push('\n');
    }
    std::fs::write(to, out).unwrap();
}

#[test]
fn shards_merge_into_the_unsharded_sweep_and_a_rerun_compares_clean() {
    let full = tmp("full");
    let o = run_sweep(&full, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (s0, s1) = (tmp("shard0"), tmp("shard1"));
    for (dir, shard) in [(&s0, "0/2"), (&s1, "1/2")] {
        let o = run_sweep(dir, &["--shard", shard]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("shard {shard}: 3 of the sweep's 6")));
        let log = runs_lines(dir);
        let (i, n) = shard.split_once('/').unwrap();
        assert_eq!(log[0]["shard"]["index"], i.parse::<u64>().unwrap());
        assert_eq!(log[0]["shard"]["count"], n.parse::<u64>().unwrap());
    }
    // The slices are disjoint and together the sweep.
    let (a, b) = (ids(&s0), ids(&s1));
    assert!(a.iter().all(|id| !b.contains(id)), "{a:?} {b:?}");

    // Resuming a shard with another slice is refused; with its own, nothing is left.
    let o = run_sweep(&s0, &["--shard", "1/2", "--resume"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("was run with --shard 0/2"),
        "{}",
        stderr(&o)
    );
    let o = run_sweep(&s0, &["--resume"]);
    assert!(!o.status.success(), "unsharded resume of a shard");
    let o = run_sweep(&s0, &["--shard", "0/2", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("0 ran"), "{}", stderr(&o));

    let merged = tmp("merged");
    let o = xarena()
        .arg("merge")
        .arg(&merged)
        .args([&s0, &s1])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let got = ids(&merged);
    assert_eq!(got, ids(&full), "the merged shards are the unsharded sweep");
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 6, "no duplicates");
    let csv = std::fs::read_to_string(merged.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "a header and six rows:\n{csv}");
    // runs.jsonl: both shards' invocations (the resume too), then the merge.
    let log = runs_lines(&merged);
    assert_eq!(log.len(), 4);
    let last = &log[3];
    assert_eq!(last["cases"], 6);
    assert_eq!(last["inputs"].as_array().unwrap().len(), 2);
    assert!(last["shard"].is_null());
    // A merged directory resumes as a whole.
    let o = run_sweep(&merged, &["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("0 ran"), "{}", stderr(&o));

    // The merged shards compare case by case with the unsharded run. Timing between two
    // real runs depends on the machine's load (a busy CI box moved a 33 us case by 77 %),
    // so the threshold here is wide: the test checks the pairing, not the speed; a run
    // compared with itself must be clean at the default threshold.
    let o = compare(&full, &merged, &["--threshold", "10000"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("6 case(s) in both"), "{}", stdout(&o));
    let o = compare(&full, &full, &["--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cases = c["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    assert!(cases.iter().all(|c| c["verdict"] == "unchanged"));
}

#[test]
fn merge_refuses_conflicts_unless_told_and_never_an_existing_directory() {
    let (a, b) = (tmp("conflict-a"), tmp("conflict-b"));
    for dir in [&a, &b] {
        let o = run_sweep(dir, &["--variants", "vanilla", "--seq", "16"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let run_id = |d: &Path| read_results(d).unwrap().records[0].run_id.clone();
    let (ra, rb) = (run_id(&a), run_id(&b));
    assert_ne!(ra, rb);

    let out = tmp("conflict-out");
    let merge = |extra: &[&str]| {
        xarena()
            .arg("merge")
            .arg(&out)
            .args([&a, &b])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = merge(&[]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&ra) && err.contains(&rb), "{err}");
    assert!(err.contains("--prefer"), "{err}");
    assert!(!out.exists(), "a failed merge writes nothing");

    let o = merge(&["--prefer", "newest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_results(&out).unwrap().records;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].run_id, rb, "b ran after a");

    // OUT_DIR now holds results: refused, and left as it was.
    let before = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let o = merge(&["--prefer", "first"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not an empty directory"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl")).unwrap(),
        before
    );

    // The same run given twice is no conflict.
    let twice = tmp("conflict-twice");
    let o = xarena()
        .arg("merge")
        .arg(&twice)
        .args([&a, &a])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_results(&twice).unwrap().records.len(), 1);

    let o = xarena()
        .arg("merge")
        .arg(tmp("conflict-missing"))
        .arg("/nonexistent/shard")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/shard"), "{}", stderr(&o));
}

#[test]
fn compare_flags_a_doubled_latency_and_a_failed_case() {
    let base = tmp("cmp-base");
    let o = run_sweep(&base, &["--variants", "vanilla", "--seq", "16,32"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A steady measurement (every statistic the median): tiny cases on a busy machine
    // can spread past +-50%, and the spread rule (unit-tested in reports' compare) would
    // then rightly call a doubling noise. This test is about the command.
    let results = base.join("results.jsonl");
    edited(&base, &results, |v| {
        let m = v["latency"]["median_s"].as_f64().unwrap();
        for q in ["p10_s", "p90_s", "mean_s", "min_s", "max_s"] {
            v["latency"][q] = m.into();
        }
    });
    let slow = tmp("cmp-slow.jsonl");
    edited(&base, &slow, |v| {
        for q in ["median_s", "p10_s", "p90_s", "mean_s", "min_s", "max_s"] {
            let x = v["latency"][q].as_f64().unwrap();
            v["latency"][q] = (2.0 * x).into();
        }
    });
    let o = compare(&base, &slow, &[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("regression"), "{text}");
    assert!(text.contains("+100.0%"), "{text}");
    // The other way round it is an improvement, not a failure.
    let o = compare(&slow, &base, &["--format", "md"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("| improvement"), "{}", stdout(&o));
    // Above the threshold: not flagged.
    let o = compare(&base, &slow, &["--threshold", "150"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    let failed = tmp("cmp-oom.jsonl");
    edited(&base, &failed, |v| {
        v["status"] = "oom".into();
        v["latency"] = serde_json::Value::Null;
        v["memory"] = serde_json::Value::Null;
    });
    let o = compare(&base, &failed, &["--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(c["cases"][0]["verdict"], "regression");
    assert_eq!(c["cases"][0]["new_status"], "oom");
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let base = tmp("bad-base");
    let o = run_sweep(&base, &["--variants", "vanilla", "--seq", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let other = tmp("bad-schema.jsonl");
    edited(&base, &other, |v| v["schema"] = 99.into());

    for (args, needle) in [
        (
            vec![base.display().to_string(), other.display().to_string()],
            "schema version 99",
        ),
        (
            vec![base.display().to_string(), "/nonexistent/new".into()],
            "/nonexistent/new",
        ),
        (
            vec![
                base.display().to_string(),
                base.display().to_string(),
                "--threshold=-5".into(),
            ],
            "--threshold must be a number >= 0",
        ),
    ] {
        let o = xarena().arg("compare").args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }

    for (shard, needle) in [
        ("2/2", "below the count"),
        ("0/0", "at least 1"),
        ("-1/2", "not a whole number"),
        ("half", "expected i/n"),
    ] {
        let out = tmp("bad-shard");
        let o = run_sweep(&out, &[&format!("--shard={shard}")]);
        assert!(!o.status.success(), "--shard {shard}");
        assert!(stderr(&o).contains(needle), "{shard}: {}", stderr(&o));
        assert!(!out.exists(), "--shard {shard} wrote {}", out.display());
    }

    let o = xarena()
        .args(["merge", "/tmp/never-written"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("schema version 99"), "{}", stderr(&o));
    assert!(!Path::new("/tmp/never-written").exists());
    // Plain text is not "a last line cut short": merge and history refuse it.
    let junk = tmp("junk.jsonl");
    std::fs::write(&junk, "these are not results").unwrap();
    let merged = tmp("junk-merged");
    let o = xarena()
        .arg("merge")
        .arg(&merged)
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a result record"), "{}", stderr(&o));
    assert!(!merged.exists());
    let db = tmp("junk.sqlite");
    let o = xarena()
        .args(["history", "ingest"])
        .arg(&db)
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a result record"), "{}", stderr(&o));

    // An edited key no longer matches its case id, and a negative time is refused.
    for (name, edit, needle) in [
        (
            "edited-key",
            (|v: &mut serde_json::Value| v["key"]["seq_len"] = 64.into())
                as fn(&mut serde_json::Value),
            "hash of its key",
        ),
        (
            "negative",
            |v: &mut serde_json::Value| v["latency"]["median_s"] = (-1.0).into(),
            "latency.median_s -1",
        ),
    ] {
        let bad = tmp(&format!("{name}.jsonl"));
        edited(&base, &bad, edit);
        let o = xarena().arg("report").arg(&bad).output().unwrap();
        assert!(!o.status.success(), "{name}");
        assert!(stderr(&o).contains(needle), "{name}: {}", stderr(&o));
    }
}

#[test]
fn history_ingests_once_and_shows_the_trend() {
    let (a, b) = (tmp("hist-a"), tmp("hist-b"));
    for dir in [&a, &b] {
        let o = run_sweep(dir, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let db = tmp("hist.sqlite");
    let ingest = |paths: &[&PathBuf]| {
        xarena()
            .args(["history", "ingest"])
            .arg(&db)
            .args(paths)
            .output()
            .unwrap()
    };
    let o = ingest(&[&a]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("6 record(s) added from 1 run(s), 0 already"));
    // Again, with the second run: only the second run's records are new.
    let o = ingest(&[&a, &b]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("6 record(s) added from 1 run(s), 6 already"),
        "{}",
        stderr(&o)
    );
    let o = ingest(&[&b]);
    assert!(stderr(&o).contains("0 record(s) added"), "{}", stderr(&o));

    let show = |extra: &[&str]| {
        xarena()
            .args(["history", "show"])
            .arg(&db)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = show(&["--variant", "vanilla", "--seq", "32", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let points: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(points.len(), 2, "one row per run");
    let runs: Vec<_> = points.iter().map(|p| p["run_id"].clone()).collect();
    let expect = |d: &Path| read_results(d).unwrap().records[0].run_id.clone();
    assert_eq!(runs, vec![expect(&a), expect(&b)], "oldest first");
    assert!(points.iter().all(|p| p["median_s"].as_f64().unwrap() > 0.0));
    assert!(points
        .iter()
        .all(|p| p["case"].as_str().unwrap().starts_with("vanilla N=32")));

    let o = show(&[
        "--variant",
        "vanilla",
        "--mode",
        "forward",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for n in ["N=16", "N=32", "N=64"] {
        assert!(text.contains(&format!("vanilla {n} ")), "{text}");
    }
    assert!(text.contains("median latency"), "{text}");

    let o = show(&["--variant", "nosuch"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("variants there: empty, vanilla"),
        "{}",
        stderr(&o)
    );
    let o = show(&["--variant", "vanilla", "--mode", "train"]);
    assert!(!o.status.success());

    // A results file of another schema adds nothing; a database of another schema is
    // refused.
    let other = tmp("hist-schema.jsonl");
    edited(&a, &other, |v| v["schema"] = 99.into());
    let o = ingest(&[&b, &other]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("schema version 99"), "{}", stderr(&o));
    let o = xarena()
        .args([
            "history",
            "show",
            "/nonexistent/db.sqlite",
            "--variant",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}
