//! Cases run in worker processes, so that an out-of-memory, a crash or a hang costs one
//! case and the sweep goes on.
//!
//! The supervisor starts `xarena worker` and writes one [`Request`] per line to its
//! stdin; the worker answers each with one line on stdout, `XARENA-RESULT <json>`.
//! Anything else the worker prints (LibTorch warnings) is passed over. A worker that
//! dies without answering, or runs past the time limit, is killed and the case recorded
//! as `oom`, `error` or `timeout`. By default each case gets a fresh worker, so the CPU
//! memory baseline and allocator state of one case never leak into the next.
//!
//! Every child process the runner starts (workers, `xarena roofline`) is tied to it with
//! [`spawn_tied`]: the kernel kills the child when the supervisor dies, whatever kills it
//! (SIGKILL included), and a SIGINT or SIGTERM to the supervisor kills its children before
//! the supervisor itself dies of that signal. A worker also ends itself when its case
//! runs well past the supervisor's timeout, in case nobody is left to kill it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use xarena_reports::schema::Status;

use crate::case::{self, Outcome, Request};

const RESULT_PREFIX: &str = "XARENA-RESULT ";

/// Environment variable for tests of the failure paths: a comma-separated list of
/// `<fault>@<variant>` makes a worker `panic`, `abort`, `hang` or `exit` on that
/// variant's cases, `poison` its process (that case fails and so does every later case in
/// the same worker, as after a CUDA device-side assert or illegal access), or (`nan`)
/// make the device check (bench/src/check.rs) see a non-finite output.
pub const FAULT_ENV: &str = "XARENA_FAULT";

/// Environment variable for measuring the regression gate (`docs/results/gate`): a
/// comma-separated list of `<fraction>@<variant>` makes every timed iteration of that
/// variant's cases slower by the fraction (after each step the worker spins for that
/// fraction of the step's own time), a known slowdown for `compare` to catch.
pub const SLOWDOWN_ENV: &str = "XARENA_TEST_SLOWDOWN";

/// The slowdown injected for `variant`: a finite fraction in [0, 10].
pub fn injected_slowdown(variant: &str) -> Result<Option<f64>, String> {
    let Ok(spec) = std::env::var(SLOWDOWN_ENV) else {
        return Ok(None);
    };
    for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
        let (fraction, v) = item
            .split_once('@')
            .ok_or_else(|| format!("{SLOWDOWN_ENV}: `{item}` is not <fraction>@<variant>"))?;
        let f: f64 = fraction
            .trim()
            .parse()
            .map_err(|_| format!("{SLOWDOWN_ENV}: `{fraction}` in `{item}` is not a number"))?;
        if !(0.0..=10.0).contains(&f) {
            return Err(format!("{SLOWDOWN_ENV}: {f} in `{item}` is not in [0, 10]"));
        }
        if v.trim() == variant {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// Set by the `poison` fault: the worker's state is unusable from then on.
static POISONED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The fault injected for `variant`, if any.
pub fn injected_fault(variant: &str) -> Option<String> {
    let spec = std::env::var(FAULT_ENV).ok()?;
    spec.split(',')
        .filter_map(|f| f.split_once('@'))
        .find(|(_, v)| *v == variant)
        .map(|(fault, _)| fault.to_string())
}

fn inject_fault(req: &Request) {
    let fault = injected_fault(&req.case.key.variant);
    match fault.as_deref().unwrap_or_default() {
        "panic" => panic!("injected fault"),
        "abort" => std::process::abort(),
        "exit" => std::process::exit(3),
        "poison" => POISONED.store(true, std::sync::atomic::Ordering::SeqCst),
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {}
    }
}

/// Makes the child that `cmd` starts die with this process: the kernel sends it SIGKILL
/// when the thread that spawned it ends (call it from the main thread, as the runner
/// does), and a child whose parent died before that was set up exits at once.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (prctl, getppid, _exit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between fork and prctl: the child has been re-parented, and
            // no death signal will come.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Pids of the live children to kill on SIGINT or SIGTERM (0: a free slot). Atomics,
/// because the signal handler reads them and may take no lock.
static TIED: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];
static HANDLERS: Once = Once::new();

extern "C" fn kill_children_and_die(sig: libc::c_int) {
    for slot in &TIED {
        let pid = slot.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill, signal and raise are async-signal-safe.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // Die of the signal itself, so the shell sees it (exit status 130 or 143) and a
    // script running xarena stops too; every finished case is already on disk.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Installs [`kill_children_and_die`] for SIGINT and SIGTERM, except where a signal is
/// ignored (as SIGINT is for a background job of a script): that choice is kept.
fn install_handlers() {
    HANDLERS.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: plain sigaction calls with zeroed, then filled, structures.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction == libc::SIG_IGN
                {
                    continue;
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = kill_children_and_die as *const () as libc::sighandler_t;
                libc::sigemptyset(&mut new.sa_mask);
                libc::sigaction(sig, &new, std::ptr::null_mut());
            }
        }
    });
}

/// A child process tied to this one (see [`spawn_tied`]); it is forgotten by the signal
/// handler when dropped, so drop it only once it has been waited for or killed.
pub struct Tied(Child);

impl Deref for Tied {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Tied {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Tied {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        for slot in &TIED {
            let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// Starts `cmd` tied to this process: it dies when this process dies ([`die_with_parent`])
/// and is killed by this process's SIGINT or SIGTERM handler. Every child process of the
/// runner is started this way.
pub fn spawn_tied(cmd: &mut Command) -> std::io::Result<Tied> {
    install_handlers();
    die_with_parent(cmd);
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // No free slot (more than 16 children at once) leaves the death signal alone to act.
    for slot in &TIED {
        if slot
            .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            break;
        }
    }
    Ok(Tied(child))
}

/// A request as the supervisor sends it: the case, and the time it has before the
/// supervisor kills the worker.
#[derive(Serialize, Deserialize)]
struct Envelope {
    #[serde(flatten)]
    req: Request,
    #[serde(default)]
    timeout_s: Option<f64>,
}

/// How long past the supervisor's timeout a worker waits before ending itself: half the
/// timeout, within 1 to 10 s. The supervisor kills it at the timeout (and records
/// `timeout`), so this fires only when nobody is left to.
fn watchdog_grace(timeout: Duration) -> Duration {
    (timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Ends the worker when a case runs past its deadline.
struct Watchdog {
    deadline: Mutex<Option<Instant>>,
    changed: Condvar,
}

impl Watchdog {
    fn start() -> Arc<Watchdog> {
        let dog = Arc::new(Watchdog {
            deadline: Mutex::new(None),
            changed: Condvar::new(),
        });
        let d = dog.clone();
        std::thread::spawn(move || {
            let mut deadline = d.deadline.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                deadline = match *deadline {
                    None => d.changed.wait(deadline).unwrap_or_else(|e| e.into_inner()),
                    Some(t) if Instant::now() >= t => {
                        let msg = b"xarena worker: the case ran past its timeout and nobody \
                                    killed the worker; exiting\n";
                        // SAFETY: a raw write and _exit: the main thread is stuck in the
                        // case and may hold any lock, stdout's and stderr's included.
                        unsafe {
                            libc::write(2, msg.as_ptr().cast(), msg.len());
                            libc::_exit(124);
                        }
                    }
                    Some(t) => {
                        d.changed
                            .wait_timeout(deadline, t.saturating_duration_since(Instant::now()))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            }
        });
        dog
    }

    fn set(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        self.changed.notify_one();
    }
}

/// The worker's side: answer requests until stdin closes.
pub fn serve() -> anyhow::Result<()> {
    xarena_measure::memory::steady_state_allocator();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let watchdog = Watchdog::start();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Envelope { req, timeout_s } = serde_json::from_str(&line)?;
        // An unrepresentable timeout (too large for an Instant) sets no deadline.
        let deadline = timeout_s
            .and_then(|t| Duration::try_from_secs_f64(t).ok())
            .and_then(|t| Instant::now().checked_add(t.checked_add(watchdog_grace(t))?));
        watchdog.set(deadline);
        cap_address_space(&req);
        inject_fault(&req);
        let outcome = if POISONED.load(std::sync::atomic::Ordering::SeqCst) {
            Outcome::failed(
                Status::Error,
                "injected fault: the worker's device context is poisoned",
            )
        } else {
            case::run(&req)
        };
        watchdog.set(None);
        writeln!(
            stdout,
            "{RESULT_PREFIX}{}",
            serde_json::to_string(&outcome)?
        )?;
        stdout.flush()?;
    }
    Ok(())
}

/// Environment variable: the bytes a worker may map for a CPU case beyond what it has
/// mapped when the case starts (LibTorch's libraries); 0 for no cap. Default: the memory
/// available when the case starts.
pub const MEMORY_LIMIT_ENV: &str = "XARENA_WORKER_MEMORY_LIMIT";

/// The soft RLIMIT_AS the worker started with, restored for CUDA cases.
static START_LIMIT: std::sync::OnceLock<Option<libc::rlimit>> = std::sync::OnceLock::new();

/// Caps the worker's address space (RLIMIT_AS) for a CPU case, so that a case the
/// up-front estimate let through (or --allow-oversize) fails its allocation, recorded as
/// `oom`, instead of driving the machine into swap or the kernel's OOM killer. CUDA cases
/// run uncapped: the driver reserves far more address space than it uses.
fn cap_address_space(req: &Request) {
    let start = *START_LIMIT.get_or_init(|| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        (unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } == 0).then_some(r)
    });
    let Some(start) = start else { return };
    let cap = if req.case.key.device == "cpu" {
        cpu_address_space(req.threads).map_or(start.rlim_cur, |c| c.min(start.rlim_max))
    } else {
        start.rlim_cur
    };
    let r = libc::rlimit {
        rlim_cur: cap,
        rlim_max: start.rlim_max,
    };
    // SAFETY: setrlimit reads the struct; lowering or restoring the soft limit within the
    // hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &r) } != 0 {
        eprintln!(
            "xarena worker: cannot set RLIMIT_AS: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// What a CPU case may map in all: what is mapped now, the budget (the environment's
/// or the available memory), and room for the threads' stacks and malloc arenas, which
/// reserve address space they barely touch.
fn cpu_address_space(threads: i64) -> Option<u64> {
    const HEADROOM: u64 = 512 << 20;
    const PER_THREAD: u64 = 128 << 20;
    let budget = match std::env::var(MEMORY_LIMIT_ENV) {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => return None,
            Ok(b) => b,
            Err(_) => {
                eprintln!("xarena worker: {MEMORY_LIMIT_ENV}={v} is not a number of bytes; no cap");
                return None;
            }
        },
        Err(_) => {
            use sysinfo::{MemoryRefreshKind, RefreshKind, System};
            System::new_with_specifics(
                RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
            )
            .available_memory()
        }
    };
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mapped_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // LibTorch's intra-op and inter-op pools.
    let threads = if threads > 0 { threads as u64 } else { cpus } * 2;
    Some(
        (mapped_kib * 1024)
            .saturating_add(budget)
            .saturating_add(HEADROOM + threads * PER_THREAD),
    )
}

enum Event {
    Line(String),
    Closed,
}

struct Worker {
    child: Tied,
    stdin: Option<ChildStdin>,
    events: Receiver<Event>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    fn start(exe: &PathBuf) -> std::io::Result<Worker> {
        let mut child = spawn_tied(
            Command::new(exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Event::Line(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(Event::Closed);
        });
        // Keep the end of stderr for the record of a crash.
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == 20 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(Worker {
            stdin: child.stdin.take(),
            child,
            events,
            stderr_tail,
        })
    }

    fn stderr(&self) -> String {
        let t = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Lets the worker finish on its own (stdin closed), killing it if it lingers.
    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

/// Describes how a worker died without answering.
fn death(status: Option<ExitStatus>, stderr: &str) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let tail = if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", case::short_message(stderr))
    };
    match status.and_then(|s| s.signal()) {
        Some(libc::SIGKILL) => Outcome::failed(
            Status::Oom,
            format!("worker killed by SIGKILL, usually the kernel's out-of-memory killer{tail}"),
        ),
        // An allocation failure that aborts (Rust's alloc error, C++'s bad_alloc) under the
        // worker's address-space cap is still out of memory.
        Some(sig) => Outcome::failed(
            if case::is_oom(stderr) {
                Status::Oom
            } else {
                Status::Error
            },
            format!("worker died of signal {sig}{tail}"),
        ),
        None => {
            let code = status.and_then(|s| s.code());
            let status = if case::is_oom(stderr) {
                Status::Oom
            } else {
                Status::Error
            };
            Outcome::failed(
                status,
                format!("worker exited with code {code:?} without a result{tail}"),
            )
        }
    }
}

/// Whether a reused worker may take the next case. Not after a failure: a CUDA
/// device-side assert or illegal access poisons the process's context for good, and an
/// error caught on the CPU may have left LibTorch's state half-changed, so the next case
/// gets a fresh process (a restart costs well under a second; failures are rare).
fn keep_worker(reuse: bool, status: Option<Status>) -> bool {
    reuse && status == Some(Status::Ok)
}

/// Hands cases to workers and turns every way a worker can fail into an outcome.
pub struct Supervisor {
    exe: PathBuf,
    /// Keep one worker across cases (faster start, on CUDA above all) instead of a fresh
    /// process per case.
    reuse: bool,
    worker: Option<Worker>,
}

impl Supervisor {
    pub fn new(exe: PathBuf, reuse: bool) -> Supervisor {
        Supervisor {
            exe,
            reuse,
            worker: None,
        }
    }

    pub fn run(&mut self, req: &Request, timeout: Duration) -> Outcome {
        let mut worker = match self.worker.take() {
            Some(w) => w,
            None => match Worker::start(&self.exe) {
                Ok(w) => w,
                Err(e) => {
                    return Outcome::failed(Status::Error, format!("cannot start a worker: {e}"))
                }
            },
        };
        let line = serde_json::to_string(&Envelope {
            req: req.clone(),
            timeout_s: Some(timeout.as_secs_f64()),
        })
        .expect("requests serialise");
        let sent = worker
            .stdin
            .as_mut()
            .map(|s| writeln!(s, "{line}").and_then(|_| s.flush()));
        if !matches!(sent, Some(Ok(()))) {
            let status = worker.child.wait().ok();
            return death(status, &worker.stderr());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match worker.events.recv_timeout(left) {
                Ok(Event::Line(l)) => {
                    let Some(json) = l.strip_prefix(RESULT_PREFIX) else {
                        continue;
                    };
                    let outcome: Outcome = serde_json::from_str(json).unwrap_or_else(|e| {
                        Outcome::failed(Status::Error, format!("unreadable worker result: {e}"))
                    });
                    if keep_worker(self.reuse, outcome.status) {
                        self.worker = Some(worker);
                    } else {
                        worker.finish();
                    }
                    return outcome;
                }
                Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    let status = worker.child.wait().ok();
                    // Let the stderr reader drain what the worker printed last.
                    std::thread::sleep(Duration::from_millis(50));
                    return death(status, &worker.stderr());
                }
                Err(RecvTimeoutError::Timeout) => {
                    worker.kill();
                    return Outcome::failed(
                        Status::Timeout,
                        format!(
                            "no result within {:.0} s; worker killed",
                            timeout.as_secs_f64()
                        ),
                    );
                }
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_worker_is_ended_after_any_failure() {
        assert!(keep_worker(true, Some(Status::Ok)));
        for bad in [Status::Error, Status::Oom, Status::Timeout] {
            assert!(!keep_worker(true, Some(bad)), "{bad}");
        }
        assert!(!keep_worker(true, None));
        assert!(!keep_worker(false, Some(Status::Ok)));
    }

    #[test]
    fn an_abort_on_a_failed_allocation_is_oom() {
        use std::os::unix::process::ExitStatusExt;
        let abort = Some(ExitStatus::from_raw(libc::SIGABRT));
        let oom = death(abort, "memory allocation of 5000000000 bytes failed");
        assert_eq!(oom.status, Some(Status::Oom));
        let crash = death(abort, "assertion failed");
        assert_eq!(crash.status, Some(Status::Error));
    }
}
