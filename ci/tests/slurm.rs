//! ci/slurm/ on a real Slurm: a one-node cluster (Debian's slurm-wlm and munge, installed
//! by ci/setup-slurm.sh) started in a temporary directory, the sweep's job array from
//! ci/slurm/submit.sh over four CPU shards, the merge job chained after it, and the merged
//! run equal, case for case, to the same sweep run unsharded. Every daemon the test starts
//! is stopped again, also when it fails. Needs root: slurmd runs each job as its user.

// These tests sit beside the CI files they test; they run as tests of the `xarena` CLI
// package (cli/Cargo.toml), which builds the binary they drive.
#[path = "../../cli/tests/common/mod.rs"]
mod common;

use common::repo;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SWEEP: &str = "ci/sweeps/slurm-cpu.toml";
const SHARDS: usize = 4;
/// Set on every process the test starts; inherited by the jobs. Finds what is left.
const MARKER: &str = "XARENA_SLURM_TEST";

/// Installs Slurm if missing; fails, naming the set-up step, where it cannot.
fn setup() -> String {
    let script = repo().join("ci/setup-slurm.sh");
    let why = match Command::new("bash").arg(&script).output() {
        Ok(o) if o.status.success() => return String::from_utf8_lossy(&o.stdout).trim().into(),
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    panic!(
        "this test needs Slurm and MUNGE: run `bash ci/setup-slurm.sh` (it installs Debian's \
         slurm-wlm and munge packages with apt-get, as root). The script said: {why}"
    )
}

/// A command by name, also from /usr/sbin (Debian's daemons) where PATH lacks it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run `bash ci/setup-slurm.sh`"))
}

/// Two free local ports (both held while asked for, so they differ).
fn free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
    (port(&a), port(&b))
}

fn short_hostname() -> String {
    let full = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("the hostname");
    full.trim()
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_string()
}

/// Memory for the node's RealMemory: half the machine's, so that slurmd, which measures
/// it, never finds less than configured and drains the node.
fn real_memory_mb() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    (kb / 1024 / 2).max(1)
}

/// The test's cluster: munged, slurmctld and slurmd as children of the test, with their
/// configuration, state and logs in one temporary directory.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
    stopped: bool,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("xarena-slurm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["munge", "state", "spool", "log", "runs"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let mut cluster = Cluster {
            conf: dir.join("slurm.conf"),
            dir,
            daemons: Vec::new(),
            stopped: false,
        };
        cluster.start_munge();
        cluster.write_conf();
        let ctld = cluster.daemon("slurmctld", &["-D", "-i"]);
        cluster.daemons.push(("slurmctld", ctld));
        let slurmd = cluster.daemon("slurmd", &["-D"]);
        cluster.daemons.push(("slurmd", slurmd));
        cluster.wait_for_idle_node();
        cluster
    }

    fn start_munge(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let munge = self.dir.join("munge");
        // munged refuses a key others can read, and a socket directory others cannot
        // enter.
        let mut key = vec![0u8; 1024];
        File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .expect("random bytes for the MUNGE key");
        let key_path = munge.join("munge.key");
        std::fs::write(&key_path, key).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o711)).unwrap();
        let arg = |flag: &str, name: &str| format!("--{flag}={}", munge.join(name).display());
        let child = self.spawn(
            "munged",
            &[
                "-F".to_string(),
                arg("key-file", "munge.key"),
                arg("socket", "munge.socket"),
                arg("pid-file", "munged.pid"),
                arg("log-file", "munged.log"),
                arg("seed-file", "munged.seed"),
            ],
        );
        self.daemons.push(("munged", child));
        self.wait("munged's socket", Duration::from_secs(20), |c| {
            c.dir.join("munge/munge.socket").exists()
        });
    }

    fn write_conf(&self) {
        let d = |rel: &str| self.dir.join(rel).display().to_string();
        let host = short_hostname();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
        let (ctld_port, slurmd_port) = free_ports();
        let conf = format!(
            "# Written by ci/tests/slurm.rs: one node, no accounting, no cgroups.\n\
             ClusterName=xarena-test\n\
             SlurmctldHost={host}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={slurmd_port}\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={socket}\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={log}/slurmctld.pid\n\
             SlurmdPidFile={log}/slurmd.pid\n\
             SlurmctldLogFile={log}/slurmctld.log\n\
             SlurmdLogFile={log}/slurmd.log\n\
             SchedulerType=sched/backfill\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN\n\
             PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            socket = d("munge/munge.socket"),
            state = d("state"),
            spool = d("spool"),
            log = d("log"),
            mem = real_memory_mb(),
        );
        std::fs::write(&self.conf, conf).unwrap();
    }

    /// A command against this cluster only: an outer Slurm's settings (were the tests
    /// themselves run in a Slurm job) are removed.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars() {
            if ["SLURM_", "SBATCH_", "SQUEUE_", "SINFO_", "SCONTROL_"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                c.env_remove(k);
            }
        }
        c.env("SLURM_CONF", &self.conf).env(MARKER, &self.dir);
        c
    }

    fn spawn(&self, name: &str, args: &[String]) -> Child {
        let log = |ext: &str| File::create(self.dir.join(format!("log/{name}.{ext}"))).unwrap();
        self.command(tool(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(log("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"))
    }

    fn daemon(&self, name: &str, args: &[&str]) -> Child {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.spawn(name, &args)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(tool(program)).args(args).output().unwrap()
    }

    fn stdout(&self, program: &str, args: &[&str]) -> String {
        let o = self.run(program, args);
        assert!(
            o.status.success(),
            "{program} {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Polls `done` until it holds; fails with the daemons' logs after `limit`. Fails at
    /// once when a daemon died.
    fn wait(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&mut Cluster) -> bool) {
        let start = Instant::now();
        loop {
            if done(self) {
                return;
            }
            let dead = self
                .daemons
                .iter_mut()
                .find_map(|(name, child)| Some((*name, child.try_wait().ok()??)));
            if let Some((name, status)) = dead {
                panic!(
                    "{name} exited ({status}) while waiting for {what}\n{}",
                    self.logs()
                );
            }
            if start.elapsed() > limit {
                panic!("{what}: not after {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait_for_idle_node(&mut self) {
        self.wait("the node to be idle", Duration::from_secs(60), |c| {
            let o = c.run("sinfo", &["-h", "-N", "-o", "%T"]);
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "idle"
        });
    }

    /// The state of each job of `id` (an array's tasks, or one job), by job id.
    fn job_states(&self, id: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let out = self.stdout("scontrol", &["-o", "show", "job", id]);
        out.lines()
            .map(|line| {
                let fields: BTreeMap<String, String> = line
                    .split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (fields["JobId"].clone(), fields)
            })
            .collect()
    }

    /// Waits until every job of `id` has ended; returns their fields.
    fn wait_for_end(&mut self, id: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let id = id.to_string();
        let mut states = BTreeMap::new();
        self.wait(&format!("job {id} to end"), Duration::from_secs(180), |c| {
            states = c.job_states(&id);
            !states.is_empty()
                && states.values().all(|f| {
                    !matches!(
                        f["JobState"].as_str(),
                        "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"
                    )
                })
        });
        states
    }

    /// The tail of every log, for a failure's message.
    fn logs(&self) -> String {
        let mut out = String::new();
        let mut paths: Vec<PathBuf> = ["log", "munge"]
            .iter()
            .filter_map(|d| std::fs::read_dir(self.dir.join(d)).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "log" || e == "out" || e == "err")
            })
            .collect();
        paths.sort();
        for p in paths {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {}\n{tail}\n", p.display()));
        }
        out
    }

    /// Cancels the jobs, stops the daemons (SIGTERM, then SIGKILL after 15 s) and returns
    /// the processes still running that the test started (none, if all went well).
    fn stop(&mut self) -> Vec<String> {
        self.stopped = true;
        if self.daemons.iter().any(|(n, _)| *n == "slurmctld") {
            let _ = self.run("scancel", &["--user=root"]);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                let o = self.run("squeue", &["-h"]);
                if !o.status.success() || o.stdout.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        // slurmd first, MUNGE last: the others authenticate through it until they exit.
        while let Some((_, mut child)) = self.daemons.pop() {
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) {
                if start.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // slurmstepd and the jobs' processes are not our children: found through /proc.
        let start = Instant::now();
        loop {
            let left = cluster_processes(&self.dir);
            if left.is_empty() || start.elapsed() > Duration::from_secs(15) {
                return left;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let left = self.stop();
            if !left.is_empty() {
                eprintln!("slurm test: still running after the stop: {left:?}");
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("slurm test: its files are kept in {}", self.dir.display());
        }
    }
}

/// Processes (pid and name) of the test's cluster: those whose environment holds
/// MARKER=dir (the daemons, the jobs) and those with a file or working directory in dir
/// (slurmstepd, which clears its environment, keeps slurmd's log open).
fn cluster_processes(dir: &Path) -> Vec<String> {
    let needle = format!("{MARKER}={}", dir.display()).into_bytes();
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && *n != me)
        else {
            continue;
        };
        let proc = entry.path();
        let marked = std::fs::read(proc.join("environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_slice()));
        let inside = |link: PathBuf| std::fs::read_link(link).is_ok_and(|t| t.starts_with(dir));
        let uses_dir = inside(proc.join("cwd"))
            || std::fs::read_dir(proc.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| inside(fd.path()));
        if marked || uses_dir {
            let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
            found.push(format!("{pid} {}", comm.trim()));
        }
    }
    found
}

/// The cases of a results directory: key (as JSON) by case id, and their statuses.
fn cases(dir: &Path) -> (BTreeMap<String, String>, Vec<String>) {
    let path = dir.join("results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut keys = BTreeMap::new();
    let mut statuses = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["case_id"].as_str().expect("a case_id").to_string();
        let key = v["key"].to_string();
        assert!(
            keys.insert(id.clone(), key).is_none(),
            "case {id} twice in {path:?}"
        );
        statuses.push(format!("{id} {}", v["status"].as_str().unwrap_or("?")));
    }
    (keys, statuses)
}

/// `sweep array job A (...) -> ...; merge + report job M -> ...`: (A, M).
fn job_ids(submit_stdout: &str) -> (String, String) {
    let after = |word: &str| {
        submit_stdout
            .split(word)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no '{word}' in {submit_stdout:?}"))
            .to_string()
    };
    (after("sweep array job "), after("merge + report job "))
}

fn submit(cluster: &Cluster, run: &Path, extra: &[&str]) -> (String, String) {
    let o = cluster
        .command("bash")
        .arg(repo().join("ci/slurm/submit.sh"))
        .arg(repo().join(SWEEP))
        .arg(SHARDS.to_string())
        .arg(run)
        .args(extra)
        .current_dir(repo())
        .env("XARENA_BIN", env!("CARGO_BIN_EXE_xarena"))
        .env("XARENA_DEVICE", "cpu")
        .env("XARENA_SLURM_CPUS", "1")
        .env_remove("XARENA_SLURM_GRES")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "submit.sh: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        cluster.logs()
    );
    job_ids(&String::from_utf8_lossy(&o.stdout))
}

#[test]
fn a_sweep_sharded_on_a_real_slurm_merges_into_the_unsharded_run() {
    let version = setup();
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root: it starts slurmd, which runs each job as its user \
         (in CI, `bash ci/test.sh` runs as root)"
    );
    eprintln!("slurm test: {version}");
    let t0 = Instant::now();
    let mut cluster = Cluster::start();
    eprintln!("slurm test: node idle after {:.1?}", t0.elapsed());
    let runs = cluster.dir.join("runs");

    // The sweep in four shards, then the merge after them.
    let sharded = runs.join("sharded");
    let (array, merge) = submit(&cluster, &sharded, &[]);
    let merge_state = cluster.wait_for_end(&merge);
    let tasks = cluster.wait_for_end(&array);
    eprintln!(
        "slurm test: array and merge ended after {:.1?}",
        t0.elapsed()
    );
    let logs = || {
        let mut s = cluster.logs();
        for f in std::fs::read_dir(sharded.join("logs"))
            .into_iter()
            .flatten()
        {
            let p = f.unwrap().path();
            s.push_str(&format!(
                "--- {}\n{}\n",
                p.display(),
                std::fs::read_to_string(&p).unwrap_or_default()
            ));
        }
        s
    };
    let state = |fields: &BTreeMap<String, String>| fields["JobState"].clone();
    assert_eq!(tasks.len(), SHARDS, "{tasks:?}");
    let mut task_ids: Vec<String> = tasks.values().map(|f| f["ArrayTaskId"].clone()).collect();
    task_ids.sort();
    assert_eq!(task_ids, ["0", "1", "2", "3"]);
    for fields in tasks.values() {
        assert_eq!(state(fields), "COMPLETED", "{fields:?}\n{}", logs());
    }
    let merge_fields = &merge_state[&merge];
    assert_eq!(state(merge_fields), "COMPLETED", "{}", logs());
    // Chained after the array: afterok on it, started once every task had ended.
    assert!(
        merge_fields["Dependency"] == "(null)"
            || merge_fields["Dependency"].contains(&format!("afterok:{array}")),
        "{merge_fields:?}"
    );
    for fields in tasks.values() {
        assert!(
            merge_fields["StartTime"] >= fields["EndTime"],
            "the merge started before a shard ended: {merge_fields:?} {fields:?}"
        );
    }
    for i in 0..SHARDS {
        assert!(sharded.join(format!("shard-{i}/results.jsonl")).is_file());
    }
    assert!(sharded.join("report/report.md").is_file(), "{}", logs());

    // The same sweep unsharded, as each shard runs it.
    let unsharded = runs.join("unsharded");
    let o = cluster
        .command(env!("CARGO_BIN_EXE_xarena"))
        .args(["run", "--sweep"])
        .arg(repo().join(SWEEP))
        .args(["--device", "cpu", "--reuse-worker", "--no-report", "--out"])
        .arg(&unsharded)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (merged_keys, merged_status) = cases(&sharded.join("merged"));
    let (whole_keys, whole_status) = cases(&unsharded);
    assert_eq!(whole_keys.len(), 6, "the sweep's six cases: {whole_keys:?}");
    assert_eq!(merged_keys, whole_keys, "the merged run's cases and keys");
    for s in merged_status.iter().chain(&whole_status) {
        assert!(s.ends_with(" ok"), "{s}\n{}", logs());
    }
    // Each case ran in exactly one shard.
    let mut from_shards = BTreeMap::new();
    for i in 0..SHARDS {
        for (id, key) in cases(&sharded.join(format!("shard-{i}"))).0 {
            assert!(
                from_shards.insert(id, key).is_none(),
                "a case in two shards"
            );
        }
    }
    assert_eq!(from_shards, whole_keys);

    // A failing shard: the merge job never runs (afterok unmet, --kill-on-invalid-dep).
    let failing = runs.join("failing");
    let (array, merge) = submit(&cluster, &failing, &["--min-time", "not-a-number"]);
    let tasks = cluster.wait_for_end(&array);
    assert!(
        tasks.values().all(|f| f["JobState"] == "FAILED"),
        "{tasks:?}"
    );
    let merge_state = cluster.wait_for_end(&merge);
    assert_eq!(
        merge_state[&merge]["JobState"], "CANCELLED",
        "{merge_state:?}"
    );
    assert!(!failing.join("merged").exists());

    let left = cluster.stop();
    eprintln!("slurm test: cluster stopped after {:.1?}", t0.elapsed());
    assert!(left.is_empty(), "processes left after the stop: {left:?}");
}

/// The leftover check finds a process by the marker in its environment and by a file it
/// holds open in the cluster's directory (as slurmstepd does), and not once it ended.
#[test]
fn the_leftover_check_finds_the_clusters_processes() {
    let dir = std::env::temp_dir().join(format!("xarena-slurm-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marked = Command::new("sleep")
        .arg("60")
        .env(MARKER, &dir)
        .spawn()
        .unwrap();
    let holding = Command::new("sleep")
        .arg("60")
        .env_remove(MARKER)
        .stdout(File::create(dir.join("out")).unwrap())
        .spawn()
        .unwrap();
    let found = cluster_processes(&dir);
    for mut child in [marked, holding] {
        assert!(
            found.contains(&format!("{} sleep", child.id())),
            "{} not in {found:?}",
            child.id()
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(cluster_processes(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}
