//! One writer per directory, and files a killed run left behind repaired on resume
//! (issue 14, items 3 to 5): `xarena run` and `lra` lock their --out, concurrent
//! `history ingest`s into a new database all succeed, and `--resume` repairs a last
//! record without its newline and a cut CSV row.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, tmp, xarena, QUICK};
use xarena_reports::load::read_results;
use xarena_schema::lock::DirLock;

fn quick_run(out: &Path, args: &[&str]) -> Command {
    let mut c = xarena();
    c.arg("run").args(QUICK).args(args).arg("--out").arg(out);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn spawn(mut c: Command) -> Child {
    c.spawn().expect("xarena starts")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// The case ids of `dir`'s results, each checked to appear once.
fn ids_once(dir: &Path) -> HashSet<String> {
    let records = read_results(dir).unwrap().records;
    let ids: HashSet<String> = records.iter().map(|r| r.case_id.clone()).collect();
    assert_eq!(ids.len(), records.len(), "a case recorded twice in {dir:?}");
    ids
}

/// `results.csv`: its header and rows, each checked to have the header's field count.
fn csv_rows(dir: &Path) -> (csv::StringRecord, Vec<csv::StringRecord>) {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(dir.join("results.csv"))
        .unwrap();
    let header = r.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert_ne!(&row[0], "case_id", "a second header");
    }
    (header, rows)
}

/// The message a refused second writer gives.
fn in_use(dir: &Path, pid: u32) -> String {
    format!(
        "{} is in use by another xarena (pid {pid}); wait for it or name another --out",
        dir.display()
    )
}

#[test]
fn two_runs_started_together_into_one_new_out_one_wins() {
    // One case that hangs until its timeout: the winner holds the directory for two seconds
    // at least, with no record written yet (so the loser passes the emptiness check and
    // meets the lock, as happened 1 time in 5 before the lock).
    let args = ["--variants", "vanilla", "--seq", "16", "--timeout", "2"];
    for round in 0..5 {
        let out = tmp(&format!("race-{round}"));
        let both: Vec<Child> = (0..2)
            .map(|_| {
                let mut c = quick_run(&out, &args);
                c.env("XARENA_FAULT", "hang@vanilla");
                spawn(c)
            })
            .collect();
        let pids: Vec<u32> = both.iter().map(|c| c.id()).collect();
        let outs: Vec<Output> = both
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let winners: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} / {}",
            stderr(&outs[0]),
            stderr(&outs[1])
        );
        let (w, l) = (winners[0], 1 - winners[0]);
        assert!(
            stderr(&outs[l]).contains(&in_use(&out, pids[w])),
            "round {round}: {}",
            stderr(&outs[l])
        );
        assert_eq!(ids_once(&out).len(), 1);
        let (_, rows) = csv_rows(&out);
        assert_eq!(rows.len(), 1);
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn a_resume_while_the_run_goes_on_is_refused() {
    let out = tmp("resume-during");
    let args = [
        "--variants",
        "empty,vanilla",
        "--seq",
        "16,32",
        "--timeout",
        "3",
    ];
    let mut c = quick_run(&out, &args);
    c.env("XARENA_FAULT", "hang@vanilla");
    let first = spawn(c);
    // Resuming needs a record to resume from: wait for the first.
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_results(&out).map_or(true, |l| l.records.is_empty()) {
        assert!(Instant::now() < deadline, "the first run recorded nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut resume = quick_run(&out, &args);
    resume.arg("--resume");
    let second = resume.output().unwrap();
    let first_pid = first.id();
    let first = first.wait_with_output().unwrap();
    ok(&first);
    assert!(!second.status.success(), "the second writer ran");
    assert!(
        stderr(&second).contains(&in_use(&out, first_pid)),
        "{}",
        stderr(&second)
    );
    assert_eq!(ids_once(&out).len(), 4);
    assert_eq!(csv_rows(&out).1.len(), 4);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn lra_into_a_directory_another_xarena_holds_is_refused() {
    let out = tmp("lra-held");
    let lock = DirLock::acquire(&out, "--out").unwrap();
    let o = xarena()
        .args(["lra", "--variants", "vanilla", "--tasks", "passkey"])
        .args(["--steps", "1", "--threads", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&in_use(&out, std::process::id())),
        "{}",
        stderr(&o)
    );
    // Nothing was written beside the lock.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [".lock"]);
    drop(lock);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn concurrent_history_ingests_into_a_new_database_all_succeed() {
    let run = tmp("ingest-run");
    ok(&quick_run(&run, &["--variants", "empty", "--seq", "16,32"])
        .output()
        .unwrap());
    for round in 0..3 {
        let db = tmp(&format!("ingest-{round}.sqlite"));
        let all: Vec<Child> = (0..4)
            .map(|_| {
                let mut c = xarena();
                c.args(["history", "ingest"]).arg(&db).arg(&run);
                c.stdout(Stdio::piped()).stderr(Stdio::piped());
                spawn(c)
            })
            .collect();
        for c in all {
            ok(&c.wait_with_output().unwrap());
        }
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM results", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        let versions: i64 = conn
            .query_row("SELECT count(*) FROM xarena_history", [], |r| r.get(0))
            .unwrap();
        assert_eq!(versions, 1);
        std::fs::remove_file(&db).unwrap();
    }
    std::fs::remove_dir_all(&run).unwrap();
}

const TWO: &[&str] = &["--variants", "empty", "--seq", "16,32"];

/// A finished two-case run in `out`, then its last record taken away as a kill would,
/// `results.jsonl` ending with a newline or not.
fn run_then_lose_the_last(out: &Path, newline: bool) {
    ok(&quick_run(out, TWO).output().unwrap());
    let path = out.join("results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(&path, format!("{first}{}", if newline { "\n" } else { "" })).unwrap();
}

#[test]
fn resume_after_a_last_record_without_its_newline() {
    let out = tmp("no-newline");
    run_then_lose_the_last(&out, false);
    let resume = || {
        let mut c = quick_run(&out, TWO);
        c.arg("--resume");
        c.output().unwrap()
    };
    ok(&resume());
    assert!(std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .ends_with('\n'));
    assert_eq!(ids_once(&out).len(), 2);
    // Everything that reads the directory works, and a second resume has nothing to do.
    ok(&xarena().arg("report").arg(&out).output().unwrap());
    let merged = tmp("no-newline-merged");
    ok(&xarena()
        .arg("merge")
        .arg(&merged)
        .arg(&out)
        .output()
        .unwrap());
    assert_eq!(ids_once(&merged).len(), 2);
    let again = resume();
    ok(&again);
    assert!(stderr(&again).contains("0 ran"), "{}", stderr(&again));
    // The files agree now: nothing is rewritten.
    assert!(!stderr(&again).contains("rewritten"), "{}", stderr(&again));
    assert_eq!(ids_once(&out).len(), 2);
    assert_eq!(csv_rows(&out).1.len(), 2);
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&merged).unwrap();
}

#[test]
fn resume_after_a_cut_csv_row_rewrites_the_csv_from_the_records() {
    let out = tmp("cut-csv");
    run_then_lose_the_last(&out, true);
    // The kill cut the CSV's last row half way (the JSONL has lost that record whole).
    let csv = out.join("results.csv");
    let text = std::fs::read(&csv).unwrap();
    std::fs::write(&csv, &text[..text.len() - 30]).unwrap();
    let mut c = quick_run(&out, TWO);
    c.arg("--resume");
    let o = c.output().unwrap();
    ok(&o);
    assert!(stderr(&o).contains("rewritten from it"), "{}", stderr(&o));
    let ids = ids_once(&out);
    let (header, rows) = csv_rows(&out);
    assert_eq!(&header[0], "case_id");
    assert_eq!(rows.len(), 2);
    let csv_ids: HashSet<String> = rows.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(csv_ids, ids);

    // No header at all (a file a tool truncated): rewritten too.
    let text = std::fs::read_to_string(&csv).unwrap();
    let body: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&csv, body).unwrap();
    let mut c = quick_run(&out, TWO);
    c.arg("--resume");
    ok(&c.output().unwrap());
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), text);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_results_file_a_stopped_run_left_empty_holds_no_results() {
    for (i, empty) in ["", "\n  \n"].into_iter().enumerate() {
        let out = tmp(&format!("empty-results-{i}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("results.jsonl"), empty).unwrap();
        // The stopped run may have written the CSV's header before its stop.
        std::fs::write(out.join("results.csv"), "case_id\n").unwrap();
        let o = quick_run(&out, TWO).output().unwrap();
        ok(&o);
        assert_eq!(ids_once(&out).len(), 2);
        assert_eq!(csv_rows(&out).1.len(), 2);
        // No temporary file is left.
        for e in std::fs::read_dir(&out).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            assert!(
                !name.ends_with(".tmp") && !name.ends_with(".partial"),
                "{name}"
            );
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}
