//! `xarena leaderboard` end to end on the runs it is published from
//! (docs/results/leaderboard-cpu-*), and its refusals: a missing path, a path without
//! records, two runs of one setting from different environments.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;

use common::{repo, stderr, tmp, xarena};

/// `xarena leaderboard INPUTS... [FLAGS...] --out OUT`.
fn leaderboard<S: AsRef<OsStr>>(inputs: &[S], flags: &[&str], out: &Path) -> Output {
    xarena()
        .arg("leaderboard")
        .args(inputs)
        .args(flags)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn published() -> Vec<String> {
    ["forward-b1", "train-b1", "forward-b4"]
        .iter()
        .map(|s| {
            repo()
                .join(format!("docs/results/leaderboard-cpu-{s}"))
                .display()
                .to_string()
        })
        .collect()
}

#[test]
fn the_published_runs_make_a_section_per_setting() {
    let out = tmp("leaderboard");
    let quality = repo().join("docs/results/quality").display().to_string();
    let o = leaderboard(&published(), &["--quality", &quality], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("<section class=\"setting\"").count(), 3);
    assert!(html.contains("<figure class=\"panel\""));
    assert!(html.contains("fastest with quality error"));
    assert!(out.join("leaderboard.json").exists());
}

#[test]
fn bad_input_is_an_error_naming_its_path() {
    let out = tmp("leaderboard-bad");
    let missing = tmp("no-such-run");
    let o = leaderboard(&[&missing], &[], &out);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&missing.display().to_string()),
        "{}",
        stderr(&o)
    );

    let empty = tmp("empty-run");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("results.jsonl"), "").unwrap();
    let o = leaderboard(&[&empty], &[], &out);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&empty.display().to_string()),
        "{}",
        stderr(&o)
    );

    // The same setting measured on another host: refused, naming both paths.
    let first = &published()[0];
    let text = std::fs::read_to_string(format!("{first}/results.jsonl")).unwrap();
    let other = tmp("other-host");
    std::fs::create_dir_all(&other).unwrap();
    // Only vanilla again: its rows would come from the other host, the rest from the first.
    let moved: Vec<String> = text
        .lines()
        .filter(|l| l.contains("\"label\":\"vanilla\""))
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["env"]["hostname"] = "elsewhere".into();
            v["run_id"] = "other-run".into();
            v.to_string()
        })
        .collect();
    std::fs::write(other.join("results.jsonl"), moved.join("\n") + "\n").unwrap();
    let o = leaderboard(&[Path::new(first), &other], &[], &out);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(first.as_str()) && err.contains(&other.display().to_string()),
        "{err}"
    );
    assert!(err.contains("different environments"), "{err}");
}

/// An --out that holds a page (a `report --out` directory, or an earlier leaderboard) is
/// refused before anything is read, its files untouched; --force replaces only ours.
#[test]
fn an_out_holding_a_page_is_refused_without_force() {
    let out = tmp("leaderboard-existing");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.html"), "the run's report").unwrap();
    std::fs::write(out.join("report.md"), "kept").unwrap();
    let run = &published()[0];
    let o = leaderboard(&[run], &[], &out);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&out.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("report.html")).unwrap(),
        "the run's report"
    );
    let o = leaderboard(&[run], &["--force"], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(out.join("report.html"))
        .unwrap()
        .contains("<section class=\"setting\""));
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        "kept"
    );
}
