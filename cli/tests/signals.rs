//! A supervisor's workers die with it, whatever ends it: SIGTERM, SIGINT (Ctrl-C) or
//! SIGKILL, and a worker hung in its case too. Each test starts a real `xarena run`,
//! waits for its `xarena worker`, signals the supervisor alone and checks in /proc that
//! the worker is gone.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{tmp, xarena};
use xarena_bench::case::Request;
use xarena_bench::sweep::Sweep;

/// Two variants at two lengths, each case warming up for 30 s: the worker is busy for
/// much longer than the deadlines below.
const BUSY: &[&str] = &[
    "--variants",
    "vanilla,local",
    "--seq",
    "64,128",
    "--batch",
    "1",
    "--heads",
    "2",
    "--head-dim",
    "8",
    "--min-time",
    "0.05",
    "--threads",
    "1",
    "--no-report",
];

/// How long a worker may outlive its supervisor: generous, the fix makes it immediate.
const GONE_WITHIN: Duration = Duration::from_secs(20);

fn start(extra: &[&str], out: &Path, env: &[(&str, &str)]) -> Child {
    let mut c = xarena();
    c.arg("run")
        .args(BUSY)
        .args(extra)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().expect("xarena starts")
}

/// State, parent and start time (in clock ticks since boot) of a process, from
/// /proc/PID/stat; `None` once it is gone.
fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let fields: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

fn is_worker(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).nth(1) == Some(b"worker".as_slice()))
        .unwrap_or(false)
}

/// The supervisor's `xarena worker` child (pid and start time), once it exists.
fn wait_for_worker(supervisor: &mut Child) -> (u32, u64) {
    let sup = supervisor.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = supervisor.try_wait() {
            panic!("the supervisor ended before starting a worker: {status}");
        }
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some((_, ppid, start)) = stat(pid) {
                if ppid == sup && is_worker(pid) {
                    return (pid, start);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = supervisor.kill();
    panic!("no worker appeared under supervisor {sup}");
}

/// Gone: no such process, a zombie (not yet reaped by its new parent), or the pid reused.
fn gone(pid: u32, start: u64) -> bool {
    match stat(pid) {
        None => true,
        Some((state, _, started)) => state == 'Z' || state == 'X' || started != start,
    }
}

fn assert_gone_soon(pid: u32, start: u64, what: &str) {
    let deadline = Instant::now() + GONE_WITHIN;
    while Instant::now() < deadline {
        if gone(pid, start) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill on the pid checked just above to be our worker (same start time).
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    panic!("worker {pid} still alive {GONE_WITHIN:?} after {what}");
}

fn signal_supervisor(sig: i32, name: &str, extra: &[&str], env: &[(&str, &str)]) {
    let out = tmp(name);
    let mut supervisor = start(extra, &out, env);
    let (worker, started) = wait_for_worker(&mut supervisor);
    // SAFETY: kill on our own child's pid, which it keeps until we wait for it.
    assert_eq!(unsafe { libc::kill(supervisor.id() as i32, sig) }, 0);
    let status = supervisor.wait().expect("the supervisor is waited for");
    assert!(!status.success(), "{name}: {status}");
    // SIGINT and SIGTERM: the supervisor dies of the signal itself (a shell shows
    // 130 or 143), after killing its worker.
    assert_eq!(status.signal(), Some(sig), "{name}: {status}");
    assert_gone_soon(worker, started, &format!("{name} to its supervisor"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_sigterm_to_the_supervisor_ends_its_worker() {
    signal_supervisor(libc::SIGTERM, "sigterm", &["--warmup", "30"], &[]);
}

#[test]
fn a_sigint_to_the_supervisor_ends_its_worker() {
    signal_supervisor(libc::SIGINT, "sigint", &["--warmup", "30"], &[]);
}

#[test]
fn a_sigkill_to_the_supervisor_ends_its_worker() {
    signal_supervisor(libc::SIGKILL, "sigkill", &["--warmup", "30"], &[]);
}

#[test]
fn a_hung_worker_dies_with_its_killed_supervisor() {
    signal_supervisor(
        libc::SIGKILL,
        "hung",
        &["--warmup", "0", "--timeout", "30"],
        &[("XARENA_FAULT", "hang@vanilla")],
    );
}

/// A worker whose case runs past its timeout with no supervisor left to kill it (here:
/// its requests come from the test, which does not) ends itself shortly after.
#[test]
fn a_hung_worker_left_alone_ends_itself_after_its_timeout() {
    let case = Sweep {
        variants: vec!["vanilla".parse().unwrap()],
        seq: vec![16],
        batch: vec![1],
        heads: vec![2],
        head_dim: vec![8],
        ..Sweep::default()
    }
    .cases()
    .unwrap()
    .remove(0);
    let req = Request {
        case,
        timing: Default::default(),
        threads: 1,
        check: false,
        check_only: false,
    };
    let mut line = serde_json::to_value(&req).unwrap();
    line.as_object_mut()
        .unwrap()
        .insert("timeout_s".into(), serde_json::json!(0.5));
    let mut worker = xarena()
        .arg("worker")
        .env("XARENA_FAULT", "hang@vanilla")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("xarena worker starts");
    // Stdin stays open: the worker is not told to stop, it must notice the deadline.
    let mut stdin = worker.stdin.take().unwrap();
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + GONE_WITHIN;
    let status = loop {
        if let Some(s) = worker.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            let _ = worker.wait();
            panic!("the worker still runs {GONE_WITHIN:?} after a 0.5 s timeout");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(124), "{status}");
    drop(stdin);
}
