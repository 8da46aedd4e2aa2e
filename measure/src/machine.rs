//! The machine around a measurement, from Linux's `/proc`: the load average, the
//! worker's CPU time and run-queue wait, and steal time. A case timed while other jobs
//! held its CPUs is slower for reasons of its own; these say when that happened.

use std::time::Instant;

use xarena_schema::record::MachineState;

/// What `/proc` says at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    load: Option<f64>,
    cpu_s: Option<f64>,
    wait_s: Option<f64>,
    /// (steal, total) jiffies over all CPUs.
    stat: Option<(u64, u64)>,
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The process's CPU time, all threads.
fn process_cpu_seconds() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// The run-queue wait of every thread of this process (schedstat's second field, in
/// nanoseconds), summed. Threads that ended are not counted, so the difference of two
/// readings can only miss time, not invent it.
fn runqueue_wait_seconds() -> Option<f64> {
    let mut ns: u64 = 0;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let Ok(s) = std::fs::read_to_string(path) else {
            continue;
        };
        ns += s.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// Parses the aggregate `cpu` line of `/proc/stat`: (steal, total) jiffies.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
    // already inside user and nice, so the total stops at steal.
    let steal = *fields.get(7)?;
    Some((steal, fields.iter().take(8).sum()))
}

impl Snapshot {
    pub fn take() -> Snapshot {
        Snapshot {
            at: Instant::now(),
            load: load_average(),
            cpu_s: process_cpu_seconds(),
            wait_s: runqueue_wait_seconds(),
            stat: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| parse_proc_stat(&s)),
        }
    }

    /// The state between `self` (before) and now.
    pub fn since(&self) -> MachineState {
        let now = Snapshot::take();
        let diff = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0));
        let steal_fraction = match (self.stat, now.stat) {
            (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
                Some(s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        MachineState {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_before: self.load,
            load_after: now.load,
            wall_s: now.at.duration_since(self.at).as_secs_f64(),
            cpu_s: diff(self.cpu_s, now.cpu_s),
            runqueue_wait_s: diff(self.wait_s, now.wait_s),
            steal_fraction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_gives_steal_over_the_total_without_guest_time() {
        let stat = "cpu  100 5 50 800 10 0 5 30 40 0\ncpu0 1 2 3 4 5 6 7 8 9 0\nintr 1\n";
        assert_eq!(parse_proc_stat(stat), Some((30, 1000)));
        assert_eq!(parse_proc_stat("cpu0 1 2\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x\n"), None);
    }

    #[test]
    fn a_busy_loop_uses_cpu_time_and_the_readings_are_consistent() {
        let before = Snapshot::take();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let m = before.since();
        assert!(m.wall_s >= 0.05, "{m:?}");
        // Linux gives all three, and the busy loop ran on the CPU for some of the 50 ms
        // (other test threads of this process count too, so no upper bound holds).
        let cpu = m.cpu_s.expect("CLOCK_PROCESS_CPUTIME_ID");
        assert!(cpu > 0.01, "{m:?}");
        assert!(m.runqueue_wait_s.expect("schedstat") >= 0.0, "{m:?}");
        assert!(m.load_before.is_some() && m.cpus >= 1, "{m:?}");
    }
}
