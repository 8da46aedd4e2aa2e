//! The CI and cluster files, checked without a GPU, GitHub or Slurm: the nightly
//! workflow's structure; every `xarena` command line in the workflow and in ci/**/*.sh
//! against the real CLI (`xarena <sub> --help`); the shell scripts' syntax (and
//! shellcheck where it is installed); the nightly sweep preset; and what the cluster
//! scripts launch, with stand-ins for xarena and sbatch.

// These tests sit beside the CI files they test; they run as tests of the `xarena` CLI
// package (cli/Cargo.toml), which builds the binary they drive.
#[path = "../../cli/tests/common/mod.rs"]
mod common;

use common::commands::{invocations, Cli, Invocation};
use common::{files_with, repo};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xarena_bench::sweep::{Sweep, SweepFile};
use xarena_reports::schema::{Dtype, Mode};
use yaml_rust2::{Yaml, YamlLoader};

const WORKFLOW: &str = ".github/workflows/nightly-gpu.yml";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn workflow() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(WORKFLOW)).expect("the workflow is YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

fn shell_scripts() -> Vec<PathBuf> {
    // The CI's scripts and the comparisons against PyTorch and PyPI.
    let mut out = files_with(&repo().join("ci"), "sh");
    out.extend(files_with(&repo().join("comparisons"), "sh"));
    out
}

/// Every `run:` script of every job's steps.
fn workflow_runs(doc: &Yaml) -> Vec<String> {
    let mut runs = Vec::new();
    if let Some(jobs) = doc["jobs"].as_hash() {
        for job in jobs.values() {
            for step in job["steps"].as_vec().into_iter().flatten() {
                if let Some(run) = step["run"].as_str() {
                    runs.push(run.to_string());
                }
            }
        }
    }
    runs
}

fn all_invocations() -> Vec<Invocation> {
    let mut all = Vec::new();
    for run in workflow_runs(&workflow()) {
        all.extend(invocations(&run, WORKFLOW));
    }
    for script in shell_scripts() {
        let rel = script.strip_prefix(repo()).unwrap().display().to_string();
        all.extend(invocations(
            &std::fs::read_to_string(&script).unwrap(),
            &rel,
        ));
    }
    all
}

#[test]
fn command_lines_are_found_where_they_run() {
    let text = r#"
# xarena compare A B   (a comment: not a command)
echo "xarena shard $i of $n"
xarena run --sweep s.toml \
    --out "$RUN" --reuse-worker > log 2>&1
x=$(xarena env); FOO=1 ./target/release/xarena history ingest "$DB" "$RUN" --flag=1
if [ -n "$A" ]; then xarena report "$RUN" --format md,html --out ${{ vars.OUT || 'site' }}; fi
cargo build -p xarena-cli && exec "$bin" list --format json | tee out
xarena() { "$bin" "$@"; }
"#;
    let got: Vec<Vec<String>> = invocations(text, "t")
        .into_iter()
        .map(|i| i.words)
        .collect();
    let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            words("run --sweep s.toml --out $RUN --reuse-worker"),
            words("env"),
            words("history ingest $DB $RUN --flag=1"),
            words("report $RUN --format md,html --out EXPR"),
        ]
    );
}

#[test]
fn the_checker_finds_unknown_subcommands_and_flags() {
    let mut cli = Cli::new();
    let inv = |words: &str| Invocation {
        source: "t".into(),
        words: words.split(' ').map(String::from).collect(),
    };
    assert_eq!(
        cli.problems(&inv("run --sweep x --out y --reuse-worker --no-report")),
        Vec::<String>::new()
    );
    assert_eq!(
        cli.problems(&inv("run --sweep x --no-such-flag --out=y")),
        vec!["t: `xarena run` has no flag --no-such-flag".to_string()]
    );
    // `--min` is a prefix of real flags (`--min-time`), not a flag.
    assert_eq!(cli.problems(&inv("run --min 3")).len(), 1);
    let p = cli.problems(&inv("frobnicate --x"));
    assert!(
        p.len() == 1 && p[0].contains("no subcommand `frobnicate`"),
        "{p:?}"
    );
}

/// Every `xarena` command line of the nightly workflow and of ci/**/*.sh uses subcommands
/// and flags the CLI has. (On a branch without `compare`, `merge`, `history`,
/// `run --shard` and `report --out` this fails, naming each.)
#[test]
fn xarena_command_lines_exist_in_the_cli() {
    let all = all_invocations();
    let sources: BTreeSet<&str> = all.iter().map(|i| i.source.as_str()).collect();
    for expected in [
        WORKFLOW,
        "ci/multi-gpu.sh",
        "ci/slurm/sweep-array.sh",
        "ci/slurm/merge-report.sh",
    ] {
        assert!(
            sources.contains(expected),
            "no xarena command found in {expected}"
        );
    }
    let mut cli = Cli::new();
    let mut problems: Vec<String> = all.iter().flat_map(|i| cli.problems(i)).collect();
    // Sweep files named on a command line exist.
    for inv in &all {
        if let Some(at) = inv.words.iter().position(|w| w == "--sweep") {
            let file = &inv.words[at + 1];
            if !file.starts_with('$') && !repo().join(file).is_file() {
                problems.push(format!("{}: no sweep file {file}", inv.source));
            }
        }
    }
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// The workflow's structure.

fn steps(doc: &Yaml) -> Vec<Yaml> {
    doc["jobs"]["bench"]["steps"]
        .as_vec()
        .expect("jobs.bench.steps")
        .clone()
}

fn position(steps: &[Yaml], what: &str, pred: impl Fn(&Yaml) -> bool) -> usize {
    steps
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("the workflow has no step that {what}"))
}

fn uses(step: &Yaml, action: &str) -> bool {
    step["uses"]
        .as_str()
        .is_some_and(|u| u.starts_with(&format!("{action}@")))
}

fn runs(step: &Yaml, text: &str) -> bool {
    step["run"].as_str().is_some_and(|r| r.contains(text))
}

#[test]
fn the_workflow_runs_nightly_and_by_hand_on_a_gpu_runner() {
    let doc = workflow();
    let on = &doc["on"];
    let cron = on["schedule"][0]["cron"]
        .as_str()
        .expect("on.schedule[0].cron");
    assert_eq!(cron.split_whitespace().count(), 5, "cron `{cron}`");
    assert!(
        on["workflow_dispatch"].as_hash().is_some(),
        "on.workflow_dispatch"
    );
    let job = &doc["jobs"]["bench"];
    let labels: Vec<&str> = job["runs-on"]
        .as_vec()
        .expect("runs-on is a list of labels")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for label in ["self-hosted", "linux", "gpu"] {
        assert!(labels.contains(&label), "runs-on {labels:?} lacks {label}");
    }
    assert!(job["timeout-minutes"].as_i64().is_some(), "timeout-minutes");
    assert_eq!(doc["permissions"]["pages"].as_str(), Some("write"));
    assert_eq!(doc["permissions"]["id-token"].as_str(), Some("write"));
}

#[test]
fn every_action_is_pinned_to_a_commit() {
    let doc = workflow();
    let mut seen = 0;
    for step in steps(&doc) {
        if let Some(u) = step["uses"].as_str() {
            seen += 1;
            let (_, rev) = u.split_once('@').unwrap_or_else(|| panic!("{u}: no @"));
            assert!(
                rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit()),
                "{u}: pin a full commit hash, not `{rev}`"
            );
        }
    }
    assert!(seen >= 5, "{seen} actions");
}

#[test]
fn the_workflow_builds_runs_compares_publishes_then_fails_on_regression() {
    let doc = workflow();
    let s = steps(&doc);
    let setup = position(&s, "runs ci/setup.sh", |x| runs(x, "bash ci/setup.sh"));
    let build = position(&s, "builds in release", |x| {
        runs(x, "cargo build --release --locked")
    });
    let sweep = position(&s, "runs the nightly sweep", |x| {
        runs(x, "xarena run --sweep ci/sweeps/nightly-gpu.toml")
    });
    let baseline = position(&s, "fetches the baseline", |x| {
        x["id"].as_str() == Some("baseline")
    });
    let compare = position(&s, "compares", |x| runs(x, "xarena compare"));
    let report = position(&s, "writes the report", |x| runs(x, "xarena report"));
    let history = position(&s, "ingests into the history", |x| {
        runs(x, "xarena history ingest")
    });
    let restore = position(&s, "restores the history", |x| {
        uses(x, "actions/cache/restore")
    });
    let save = position(&s, "saves the history", |x| uses(x, "actions/cache/save"));
    let artifact = position(&s, "uploads an artifact", |x| {
        uses(x, "actions/upload-artifact")
    });
    let pages = position(&s, "uploads the site", |x| {
        uses(x, "actions/upload-pages-artifact")
    });
    let deploy = position(&s, "deploys the site", |x| uses(x, "actions/deploy-pages"));
    let fail = position(&s, "fails on regression", |x| {
        x["if"]
            .as_str()
            .is_some_and(|c| c.contains("steps.compare.outputs.regressed"))
            && runs(x, "exit 1")
    });
    assert!(setup < build && build < sweep && baseline < compare && sweep < compare);
    assert!(compare < report && report < pages && pages < deploy);
    assert!(restore < history && history < save);
    // The report is out before the job fails.
    assert!(
        fail > deploy && fail > artifact,
        "fail on regression comes last"
    );
    // A first run has no baseline: compare only when one was found.
    let cond = s[compare]["if"].as_str().unwrap_or("");
    assert!(
        cond.contains("steps.baseline.outputs.found"),
        "the compare step runs unconditionally: `{cond}`"
    );
    // The published site keeps a baseline for the next night.
    let baseline_kept = s[..pages].iter().any(|x| runs(x, "nightly/site/baseline"));
    assert!(baseline_kept, "no baseline written into the site");
}

// ---------------------------------------------------------------------------------------
// The nightly sweep preset.

#[test]
fn the_nightly_sweep_covers_every_family_with_an_attention_scope() {
    let path = repo().join("ci/sweeps/nightly-gpu.toml");
    let file = SweepFile::read(&path).expect("the nightly sweep parses");
    assert_eq!(file.device.as_deref(), Some(&["cuda".to_string()][..]));
    let mut sweep = Sweep::default();
    sweep.apply_file(file).unwrap();
    assert_eq!(sweep.batch, vec![8]);
    assert_eq!(sweep.seq.iter().max(), Some(&16384));
    for d in [Dtype::Bf16, Dtype::F16] {
        assert!(sweep.dtype.contains(&d), "{d:?}");
    }
    for m in [Mode::Forward, Mode::Train] {
        assert!(sweep.mode.contains(&m), "{m:?}");
    }
    // Names, parameters and scopes are checked by building the cases, on the CPU here.
    sweep.device = vec!["cpu".into()];
    let cases = sweep
        .cases()
        .unwrap_or_else(|e| panic!("nightly sweep: {e}"));
    assert!(!cases.is_empty());
    let registry = xarena_variants::registry();
    let family_of = |name: &str| {
        registry
            .iter()
            .find(|e| e.info.name == name)
            .map(|e| e.info.family)
    };
    let covered: BTreeSet<String> = sweep
        .variants
        .iter()
        .filter_map(|v| family_of(&v.name))
        .map(|f| f.to_string())
        .collect();
    let wanted: BTreeSet<String> = registry
        .iter()
        .filter(|e| e.info.scopes.contains(&xarena_variants::Scope::Attention))
        .map(|e| e.info.family.to_string())
        .collect();
    let missing: Vec<_> = wanted.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "families not in the nightly sweep: {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The shell scripts.

#[test]
fn every_script_parses_and_passes_shellcheck_where_installed() {
    let scripts = shell_scripts();
    assert!(scripts.len() >= 9, "{scripts:?}");
    for s in &scripts {
        let o = Command::new("bash").arg("-n").arg(s).output().unwrap();
        assert!(
            o.status.success(),
            "bash -n {}: {}",
            s.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    match Command::new("shellcheck").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let o = Command::new("shellcheck").args(&scripts).output().unwrap();
            assert!(
                o.status.success(),
                "shellcheck:\n{}",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        _ => eprintln!("shellcheck is not installed: syntax checked with bash -n only"),
    }
}

/// A scratch directory with a stand-in `xarena` that logs its arguments, one call a line,
/// and makes `--out DIR/results.jsonl` for `run` (failing for the shard in STUB_FAIL).
struct Stub {
    dir: PathBuf,
}

impl Stub {
    fn new(name: &str) -> Stub {
        let dir = std::env::temp_dir().join(format!("xarena-ci-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let stub = dir.join("bin/xarena");
        std::fs::write(
            &stub,
            r#"#!/usr/bin/env bash
line="$*"
# Which GPUs a run was given: one per shard on a multi-GPU node.
[ "$1" = run ] && [ -n "${CUDA_VISIBLE_DEVICES+set}" ] && line="$line [gpus=$CUDA_VISIBLE_DEVICES]"
echo "$line" >> "$STUB_LOG"
[ "$1" = run ] || exit 0
out=; shard=
while [ $# -gt 0 ]; do
  case "$1" in --out) out=$2 ;; --shard) shard=$2 ;; esac
  shift
done
[ "$shard" = "${STUB_FAIL:-none}" ] && { echo "stub: shard $shard fails" >&2; exit 3; }
mkdir -p "$out" && touch "$out/results.jsonl"
"#,
        )
        .unwrap();
        Stub::executable(&stub);
        Stub { dir }
    }

    fn executable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(&self.dir.display().to_string(), "TMP"))
            .collect()
    }

    fn script(&self, script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new("bash");
        c.arg(repo().join(script))
            .args(args)
            .current_dir(repo())
            .env("XARENA_BIN", self.dir.join("bin/xarena"))
            .env("STUB_LOG", self.dir.join("log"))
            .env_remove("CUDA_VISIBLE_DEVICES")
            .env_remove("STUB_FAIL");
        for var in [
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_MIN",
            "SLURM_ARRAY_TASK_MAX",
            "SLURM_SUBMIT_DIR",
            "XARENA_DEVICE",
            "XARENA_SLURM_GRES",
            "XARENA_SLURM_CPUS",
        ] {
            c.env_remove(var);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SWEEP: &str = "ci/sweeps/nightly-gpu.toml";

#[test]
fn multi_gpu_runs_one_shard_per_visible_gpu_then_merges() {
    let stub = Stub::new("multi");
    let run = stub.path("run");
    let o = stub.script(
        "ci/multi-gpu.sh",
        &[SWEEP, &run, "--min-time", "0.1"],
        &[("CUDA_VISIBLE_DEVICES", "3,5")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stub.log();
    assert_eq!(log.len(), 4, "{log:?}");
    let mut shards = log[..2].to_vec();
    shards.sort();
    // Every shard sees only its own GPU, as cuda:0: the device is part of a case's key,
    // so all shards must name the same one for their slices to partition one sweep.
    for (i, (shard, gpu)) in shards.iter().zip(["3", "5"]).enumerate() {
        assert_eq!(
            *shard,
            format!(
                "run --sweep {SWEEP} --shard {i}/2 --device cuda:0 --out TMP/run/shard-{i} \
                 --reuse-worker --no-report --min-time 0.1 [gpus={gpu}]"
            )
        );
    }
    assert_eq!(
        log[2],
        "merge TMP/run/merged TMP/run/shard-0 TMP/run/shard-1"
    );
    assert_eq!(log[3], "report TMP/run/merged --out TMP/run/report --force");
}

#[test]
fn multi_gpu_merges_nothing_when_a_shard_fails_and_resumes_it() {
    let stub = Stub::new("multi-fail");
    let run = stub.path("run");
    let o = stub.script(
        "ci/multi-gpu.sh",
        &[SWEEP, &run],
        &[("CUDA_VISIBLE_DEVICES", "0,1"), ("STUB_FAIL", "1/2")],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("shard 1 failed") && err.contains("nothing merged"),
        "{err}"
    );
    assert!(!stub.log().iter().any(|l| l.starts_with("merge")));

    // Again: shard 0 finished and resumes (skipping its cases), shard 1 starts afresh.
    let o = stub.script(
        "ci/multi-gpu.sh",
        &[SWEEP, &run],
        &[("CUDA_VISIBLE_DEVICES", "0,1")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stub.log();
    let again: Vec<&String> = log[2..].iter().filter(|l| l.starts_with("run")).collect();
    assert_eq!(again.len(), 2, "{log:?}");
    for l in again {
        assert_eq!(l.contains("--resume"), l.contains("--shard 0/2"), "{l}");
    }
    assert!(log.iter().any(|l| l.starts_with("merge")));
}

#[test]
fn multi_gpu_refuses_bad_input() {
    let stub = Stub::new("multi-bad");
    let run = stub.path("run");
    let o = stub.script("ci/multi-gpu.sh", &[SWEEP], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("usage: ci/multi-gpu.sh SWEEP RUN_DIR"));
    let o = stub.script(
        "ci/multi-gpu.sh",
        &[SWEEP, &run],
        &[("CUDA_VISIBLE_DEVICES", "")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no GPU visible"), "{}", stderr(&o));
    let o = stub.script(
        "ci/multi-gpu.sh",
        &["ci/sweeps/nope.toml", &run],
        &[("CUDA_VISIBLE_DEVICES", "0")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no sweep file ci/sweeps/nope.toml"));
    assert!(stub.log().is_empty(), "{:?}", stub.log());
}

fn slurm_env<'a>(task: &'a str, count: &'a str, repo: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("SLURM_ARRAY_TASK_ID", task),
        ("SLURM_ARRAY_TASK_COUNT", count),
        ("SLURM_ARRAY_TASK_MIN", "0"),
        ("SLURM_ARRAY_TASK_MAX", "3"),
        ("SLURM_SUBMIT_DIR", repo),
    ]
}

#[test]
fn a_slurm_array_task_runs_its_shard_on_its_gpu() {
    let stub = Stub::new("array");
    let run = stub.path("run");
    let root = repo().display().to_string();
    let o = stub.script(
        "ci/slurm/sweep-array.sh",
        &[SWEEP, &run, "--timeout", "60"],
        &slurm_env("2", "4", &root),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stub.log(),
        vec![format!(
            "run --sweep {SWEEP} --shard 2/4 --device cuda:0 --out TMP/run/shard-2 \
             --reuse-worker --no-report --timeout 60"
        )]
    );
    // Requeued: the shard resumes.
    let o = stub.script(
        "ci/slurm/sweep-array.sh",
        &[SWEEP, &run],
        &slurm_env("2", "4", &root),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stub.log()[1].ends_with("--resume"), "{:?}", stub.log());

    // Outside an array, or an array that is not 0..N-1: refused, nothing run.
    let o = stub.script("ci/slurm/sweep-array.sh", &[SWEEP, &run], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a Slurm array task"));
    let mut env = slurm_env("2", "4", &root);
    env[2] = ("SLURM_ARRAY_TASK_MIN", "1");
    let o = stub.script("ci/slurm/sweep-array.sh", &[SWEEP, &run], &env);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("must be 0-3"), "{}", stderr(&o));
    assert_eq!(stub.log().len(), 2);
}

#[test]
fn a_slurm_array_task_runs_on_the_cpu_when_told() {
    let stub = Stub::new("array-cpu");
    let run = stub.path("run");
    let root = repo().display().to_string();
    let mut env = slurm_env("0", "4", &root);
    env.push(("XARENA_DEVICE", "cpu"));
    let o = stub.script("ci/slurm/sweep-array.sh", &[SWEEP, &run], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stub.log(),
        vec![format!(
            "run --sweep {SWEEP} --shard 0/4 --device cpu --out TMP/run/shard-0 \
             --reuse-worker --no-report"
        )]
    );
}

#[test]
fn the_merge_job_merges_every_shard_or_names_the_missing_ones() {
    let stub = Stub::new("merge");
    let run = stub.path("run");
    std::fs::create_dir_all(stub.dir.join("run/shard-0")).unwrap();
    std::fs::write(stub.dir.join("run/shard-0/results.jsonl"), "").unwrap();
    let o = stub.script("ci/slurm/merge-report.sh", &[&run, "2"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("shard-1"), "{}", stderr(&o));
    assert!(stub.log().is_empty());

    std::fs::create_dir_all(stub.dir.join("run/shard-1")).unwrap();
    std::fs::write(stub.dir.join("run/shard-1/results.jsonl"), "").unwrap();
    let o = stub.script("ci/slurm/merge-report.sh", &[&run, "2"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stub.log(),
        vec![
            "merge TMP/run/merged TMP/run/shard-0 TMP/run/shard-1".to_string(),
            "report TMP/run/merged --out TMP/run/report --force".to_string(),
        ]
    );
    let o = stub.script("ci/slurm/merge-report.sh", &[&run, "two"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("positive integer"));
}

#[test]
fn submit_queues_the_array_then_the_merge_after_it() {
    let stub = Stub::new("submit");
    // A stand-in sbatch: logs its arguments, answers job ids as --parsable does.
    let sbatch = stub.dir.join("bin/sbatch");
    std::fs::write(
        &sbatch,
        "#!/usr/bin/env bash\necho \"sbatch $*\" >> \"$STUB_LOG\"\n\
         if [[ \"$*\" == *--array* ]]; then echo '4242;cluster'; else echo 4243; fi\n",
    )
    .unwrap();
    Stub::executable(&sbatch);
    let path = format!(
        "{}:{}",
        stub.dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = stub.path("run");
    let o = stub.script(
        "ci/slurm/submit.sh",
        &[SWEEP, "4", &run, "--min-time", "0.5"],
        &[("PATH", &path)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let root = repo().display().to_string();
    assert_eq!(
        stub.log(),
        vec![
            format!(
                "sbatch --parsable --chdir={root} --array=0-3 --output=TMP/run/logs/shard-%a.out \
                 ci/slurm/sweep-array.sh {SWEEP} TMP/run --min-time 0.5"
            ),
            format!(
                "sbatch --parsable --chdir={root} --dependency=afterok:4242 \
                 --kill-on-invalid-dep=yes --output=TMP/run/logs/merge.out \
                 ci/slurm/merge-report.sh TMP/run 4"
            ),
        ]
    );
    assert!(stub.dir.join("run/logs").is_dir());
    let o = stub.script(
        "ci/slurm/submit.sh",
        &[SWEEP, "0", &run],
        &[("PATH", &path)],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("SHARDS must be a positive integer"));
}

/// A stand-in sbatch that also logs the XARENA_DEVICE its job would inherit.
fn sbatch_stub(stub: &Stub) -> String {
    let sbatch = stub.dir.join("bin/sbatch");
    std::fs::write(
        &sbatch,
        "#!/usr/bin/env bash\necho \"sbatch $* [device=${XARENA_DEVICE-unset}]\" >> \"$STUB_LOG\"\n\
         if [[ \"$*\" == *--array* ]]; then echo 4242; else echo 4243; fi\n",
    )
    .unwrap();
    Stub::executable(&sbatch);
    format!(
        "{}:{}",
        stub.dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn submit_asks_cpu_nodes_for_no_gpu_and_the_cpus_given() {
    let stub = Stub::new("submit-cpu");
    let path = sbatch_stub(&stub);
    let run = stub.path("run");
    let root = repo().display().to_string();
    let o = stub.script(
        "ci/slurm/submit.sh",
        &[SWEEP, "2", &run],
        &[
            ("PATH", &path),
            ("XARENA_DEVICE", "cpu"),
            ("XARENA_SLURM_CPUS", "2"),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // A gres the cluster lacks makes sbatch refuse the job: none asked on the CPU. The
    // merge job asks for no GPU anyway.
    assert_eq!(
        stub.log(),
        vec![
            format!(
                "sbatch --parsable --chdir={root} --array=0-1 --output=TMP/run/logs/shard-%a.out \
                 --gres=none --cpus-per-task=2 ci/slurm/sweep-array.sh {SWEEP} TMP/run \
                 [device=cpu]"
            ),
            format!(
                "sbatch --parsable --chdir={root} --dependency=afterok:4242 \
                 --kill-on-invalid-dep=yes --output=TMP/run/logs/merge.out \
                 ci/slurm/merge-report.sh TMP/run 2 [device=cpu]"
            ),
        ]
    );

    // By default the jobs run on cuda:0 with the script's GPU; XARENA_SLURM_GRES names
    // another.
    let stub = Stub::new("submit-gres");
    let path = sbatch_stub(&stub);
    let run = stub.path("run");
    let o = stub.script(
        "ci/slurm/submit.sh",
        &[SWEEP, "2", &run],
        &[("PATH", &path), ("XARENA_SLURM_GRES", "gpu:a100:1")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stub.log();
    assert!(
        log[0].contains("--output=TMP/run/logs/shard-%a.out --gres=gpu:a100:1 ci/slurm/")
            && log[0].ends_with("[device=cuda:0]"),
        "{log:?}"
    );

    for (var, value, why) in [
        (
            "XARENA_SLURM_CPUS",
            "0",
            "XARENA_SLURM_CPUS must be a positive integer",
        ),
        (
            "XARENA_DEVICE",
            "gpu",
            "XARENA_DEVICE must be cpu, cuda or cuda:N",
        ),
    ] {
        let stub = Stub::new("submit-bad");
        let path = sbatch_stub(&stub);
        let run = stub.path("run");
        let o = stub.script(
            "ci/slurm/submit.sh",
            &[SWEEP, "2", &run],
            &[("PATH", &path), (var, value)],
        );
        assert_eq!(o.status.code(), Some(2), "{var}={value}");
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
        assert!(stub.log().is_empty(), "nothing submitted: {:?}", stub.log());
    }
}

/// The PyPI baselines set each package up from xarena's own defaults, read from
/// `xarena list --format json`, not from a copy that could drift.
#[test]
fn the_pypi_baselines_take_xarenas_defaults_from_the_registry() {
    let site = std::fs::read_to_string(repo().join(".libtorch-site"))
        .expect(".libtorch-site (bash ci/setup.sh writes it)");
    let listed = Command::new(env!("CARGO_BIN_EXE_xarena"))
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let registry: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let default = |variant: &str, param: &str| {
        registry
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["info"]["name"] == variant)
            .map(|e| e["defaults"][param].clone())
            .unwrap_or_else(|| panic!("{variant} not listed"))
    };
    let script = "import json, pypi_baselines as p; print(json.dumps([p.LOCAL_WINDOW, \
                  p.REFORMER_BUCKET, p.REFORMER_ROUNDS, p.SINKHORN_BLOCK, p.SINKHORN_ITERS, \
                  p.SINKHORN_TEMPERATURE, p.LINFORMER_K, p.PERFORMER_FEATURES, \
                  p.NYSTROM_LANDMARKS, p.NYSTROM_PINV_ITERS, p.NYSTROM_CONV_KERNEL, \
                  p.ISAB_INDUCING, p.MOE_EXPERTS, p.MOE_FFN_MULT, p.SWITCH_CAPACITY]))";
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(repo().join("comparisons"))
        .env("PYTHONPATH", site.trim())
        .env("XARENA_BIN", env!("CARGO_BIN_EXE_xarena"))
        .env_remove("XARENA_DEFAULTS")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let used: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let expected = serde_json::Value::Array(vec![
        default("local", "window"),
        default("reformer", "bucket_size"),
        default("reformer", "rounds"),
        default("sinkhorn", "block"),
        default("sinkhorn", "iterations"),
        default("sinkhorn", "temperature"),
        default("linformer", "k"),
        default("performer", "features"),
        default("nystromformer", "landmarks"),
        default("nystromformer", "iterations"),
        default("nystromformer", "conv_kernel"),
        default("set-transformer", "inducing"),
        default("moe-top2", "experts"),
        default("moe-top2", "ffn_mult"),
        default("switch", "capacity_factor"),
    ]);
    assert_eq!(used, expected);
}
