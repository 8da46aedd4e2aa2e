//! `xarena run`: cases -> isolated workers -> records, with progress.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use xarena_reports::schema::{Environment, Record, Status, SCHEMA_VERSION};

use crate::case::Request;
use crate::check::Policy;
use crate::roofline;
use crate::rounds::VisitLine;
use crate::store::Store;
use crate::sweep::{Case, Shard, Sweep};
use crate::worker::Supervisor;
use xarena_measure::{env, nvml};

#[derive(Serialize)]
struct RunLog<'a> {
    run_id: &'a str,
    started_at: String,
    argv: Vec<String>,
    sweep: &'a Sweep,
    /// `--shard i/n`: this invocation ran that slice of the sweep's cases.
    shard: Option<Shard>,
    /// Cases of this invocation (of its shard), including those skipped.
    cases: usize,
    skipped: usize,
    env: &'a Environment,
}

/// Totals of a finished run.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: usize,
    pub skipped: usize,
    pub ok: usize,
    pub failed: usize,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Runs every case not yet in `store`, appending a record as each ends (with `rounds`,
/// each visit to `visits.jsonl` and the case's record after its last round).
pub fn run(
    sweep: &Sweep,
    cases: Vec<Case>,
    mut store: Store,
    done: std::collections::HashSet<String>,
    reuse_worker: bool,
    shard: Option<Shard>,
    check: Policy,
) -> Result<RunSummary> {
    let threads = if sweep.threads > 0 {
        sweep.threads
    } else {
        i64::from(tch::get_num_threads())
    };
    // One NVML handle for the run: the environment's GPU list and each CUDA case's state.
    let mut gpus = nvml::GpuWatch::init().ok();
    let mut environment = env::capture_with(threads, gpus.as_ref().map(|g| g.nvml()));
    let run_id = format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        std::process::id()
    );
    let todo: Vec<Case> = cases
        .iter()
        .filter(|c| !done.contains(&c.id))
        .cloned()
        .collect();
    let mut summary = RunSummary {
        skipped: cases.len() - todo.len(),
        ..Default::default()
    };
    // The roofline of each (device, dtype) still to run, before the run is logged.
    let mut pairs: Vec<(String, xarena_reports::schema::Dtype)> = Vec::new();
    for c in &todo {
        let pair = (c.key.device.clone(), c.key.dtype);
        if sweep.roofline.wants(&pair.0) && !pairs.contains(&pair) {
            pairs.push(pair);
        }
    }
    if !pairs.is_empty() {
        environment.roofline = roofline::measure_peaks(
            &std::env::current_exe()?,
            &pairs,
            threads,
            Duration::from_secs_f64(sweep.timeout_s),
        );
    }
    store.log_run(&RunLog {
        run_id: &run_id,
        started_at: now(),
        argv: std::env::args().collect(),
        sweep,
        shard,
        cases: cases.len(),
        skipped: summary.skipped,
        env: &environment,
    })?;

    let rounds = sweep.rounds.max(1);
    let bar = ProgressBar::new(todo.len() as u64 * u64::from(rounds));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
            .expect("valid template"),
    );
    let tty = std::io::stderr().is_terminal();
    if summary.skipped > 0 {
        bar.println(format!(
            "resuming: {} case(s) already recorded",
            summary.skipped
        ));
    }
    // Rounds already made by an earlier invocation (`--resume`) of the cases still to do.
    let mut visits: HashMap<String, Vec<VisitLine>> = HashMap::new();
    if rounds > 1 {
        for v in store.visits()? {
            if todo.iter().any(|c| c.id == v.record.case_id) {
                visits.entry(v.record.case_id.clone()).or_default().push(v);
            }
        }
    }
    let exe: PathBuf = std::env::current_exe()?;
    let mut supervisor = Supervisor::new(exe, reuse_worker);
    let timeout = Duration::from_secs_f64(sweep.timeout_s);
    let mut ended: HashSet<String> = HashSet::new();
    for round in 0..rounds {
        for i in crate::rounds::order(todo.len(), round) {
            let case = &todo[i];
            let made = visits.get(&case.id).map_or(0, Vec::len);
            if ended.contains(&case.id)
                || visits
                    .get(&case.id)
                    .is_some_and(|v| v.iter().any(|v| v.round == round))
            {
                bar.inc(1);
                continue;
            }
            let label = if rounds > 1 {
                format!("{} (round {}/{rounds})", case.describe(), round + 1)
            } else {
                case.describe()
            };
            bar.set_message(label.clone());
            let visit = visit(
                case,
                sweep,
                threads,
                check,
                &mut supervisor,
                gpus.as_mut(),
                timeout,
                &run_id,
                &environment,
            );
            let status = visit.status;
            let line = match (&visit.latency, &visit.message) {
                (Some(l), _) => format!(
                    "{label}  {}",
                    xarena_reports::table::format_seconds(l.median_s)
                ),
                (None, m) => format!("{label}  {status}: {}", m.as_deref().unwrap_or("")),
            };
            if tty {
                bar.println(line);
            } else {
                eprintln!("{line}");
            }
            bar.inc(1);
            // The case's record: at once with one round or after a failed visit (its
            // later rounds are skipped); after its last round otherwise.
            let record = if rounds == 1 {
                Some(visit)
            } else {
                let v = VisitLine {
                    round,
                    record: visit,
                };
                store.append_visit(&v)?;
                if status != Status::Ok {
                    Some(v.record)
                } else {
                    let list = visits.entry(case.id.clone()).or_default();
                    list.push(v);
                    (made + 1 == rounds as usize).then(|| {
                        let mut r = crate::rounds::combine(std::mem::take(list));
                        derive_rates(&mut r, &environment);
                        r
                    })
                }
            };
            let Some(record) = record else { continue };
            store.append(&record)?;
            ended.insert(case.id.clone());
            summary.ran += 1;
            if record.status == Status::Ok {
                summary.ok += 1;
            } else {
                summary.failed += 1;
            }
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// FLOP/s and the fraction of the roofline's peak, from the record's median latency.
fn derive_rates(r: &mut Record, environment: &Environment) {
    r.flops_per_s = match (&r.latency, r.flops) {
        (Some(l), Some(f)) if l.median_s > 0.0 && f > 0 => Some(f as f64 / l.median_s),
        _ => None,
    };
    let peak = roofline::peak_for(&environment.roofline, &r.key.device, r.key.dtype);
    r.peak_fraction = roofline::peak_fraction(r.flops_per_s, peak);
}

/// One visit of a case: a worker runs it, and its record is made.
#[allow(clippy::too_many_arguments)]
fn visit(
    case: &Case,
    sweep: &Sweep,
    threads: i64,
    check: Policy,
    supervisor: &mut Supervisor,
    gpus: Option<&mut nvml::GpuWatch>,
    timeout: Duration,
    run_id: &str,
    environment: &Environment,
) -> Record {
    let started_at = now();
    let t0 = Instant::now();
    let req = Request {
        case: case.clone(),
        timing: sweep.timing,
        threads,
        check: check.applies(&case.key.device),
        check_only: false,
    };
    let (outcome, gpu) = nvml::around(gpus, &case.key.device, || supervisor.run(&req, timeout));
    let status = outcome.status.unwrap_or(Status::Error);
    let min_bytes = outcome.memory.as_ref().and_then(|m| {
        roofline::min_bytes(
            &case.key,
            m.static_bytes,
            outcome.params,
            outcome.state_bytes,
        )
    });
    let mut record = Record {
        schema: SCHEMA_VERSION,
        run_id: run_id.to_string(),
        case_id: case.id.clone(),
        key: case.key.clone(),
        label: case.label.clone(),
        status,
        message: outcome.message,
        claims: case.claims.clone(),
        latency: outcome.latency,
        memory: outcome.memory,
        flops: outcome.flops,
        flops_per_s: None,
        params: outcome.params,
        state_bytes: outcome.state_bytes,
        backend: outcome.backend,
        peak_fraction: None,
        intensity: roofline::intensity(outcome.flops, min_bytes),
        gpu,
        check: outcome.check,
        machine: outcome.machine,
        rounds: None,
        started_at,
        wall_s: t0.elapsed().as_secs_f64(),
        env: environment.clone(),
    };
    derive_rates(&mut record, environment);
    record
}
