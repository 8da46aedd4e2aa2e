//! `xarena`: run sweeps of efficient-attention cases, list the variants, report results.
//!
//! The command line only: this file parses and dispatches; each subcommand's arguments
//! and execution are in `commands/` (or, for `check` and `kv`, beside their code).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use xarena_bench::worker;

mod commands;

use commands::{compare, history, leaderboard, list, lra, merge, quality, report, run, train};

#[derive(Parser)]
#[command(
    name = "xarena",
    version,
    about = "Efficient transformers, measured honestly on LibTorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sweep of cases (defaults: the quick CPU sweep) and print the table.
    Run(Box<run::RunArgs>),
    /// List the variants with their family, complexity and paper.
    List(list::ListArgs),
    /// The report of results (run directories or .jsonl files): environment, LRA-style
    /// efficiency tables, published figures beside them, accuracy; or, with --out, all
    /// formats and the SVG plots written into a directory.
    Report(report::ReportArgs),
    /// The leaderboard page (report.html) from run directories: a section per setting,
    /// ratios within one run (or runs whose environments match, said so), the answer per
    /// length, crossovers against sdpa, per-family plots with bands.
    Leaderboard(leaderboard::LeaderboardArgs),
    /// Approximation error against exact attention on the same inputs and projections
    /// (a quality proxy that needs no training; see bench/src/quality.rs).
    Quality(quality::QualityArgs),
    /// Compare two runs case by case: regressions and improvements in latency and peak
    /// memory, status changes, cases on one side only. Exit status: 0 no regression,
    /// 1 a regression, 2 bad input.
    Compare(compare::CompareArgs),
    /// Combine the results of several runs (the shards of a sweep) into one run
    /// directory, each case once.
    Merge(merge::MergeArgs),
    /// Results over many runs in an SQLite database: ingest them, show a variant's trend.
    #[command(subcommand)]
    History(history::HistoryCommand),
    /// Train a variant as a sequence classifier on a task and record its held-out
    /// accuracy (DIR/accuracy.jsonl) with the checkpoint (DIR/model.safetensors).
    Train(train::TrainCliArgs),
    /// Train a matrix of variants x tasks (the LRA accuracy table), resumable: each
    /// finished (variant, task) is recorded at once in DIR/accuracy.jsonl.
    Lra(lra::LraCliArgs),
    /// The KV-cache memory track: train a small decoder LM on long-context decoding
    /// tasks, evolve a NAMM for it, benchmark cache policies, report.
    #[command(subcommand)]
    Kv(xarena_kvcache::commands::cli::KvCommand),
    /// The correctness check alone: each variant's forward and backward at a small N on
    /// the device, finite and (exact variants) equal to the CPU float32 result within the
    /// dtype's tolerance. Exit status 1 when any fails.
    Check(xarena_bench::check::CheckArgs),
    /// Print the environment a run would record, as JSON.
    Env,
    /// Serve cases on stdin (started by `run`; not for direct use).
    #[command(hide = true)]
    Worker,
    /// Measure one device's peak matmul rate and copy bandwidth, as JSON (started by
    /// `run`; not for direct use).
    #[command(hide = true)]
    Roofline(xarena_bench::roofline::RooflineArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        // Its own exit codes, for CI gates: 1 is a regression, so an error is 2 (as clap's
        // usage errors are).
        Command::Compare(args) => {
            return match compare::run(args) {
                Ok(false) => ExitCode::SUCCESS,
                Ok(true) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("xarena: error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Merge(args) => merge::run(args),
        Command::Leaderboard(args) => leaderboard::run(args),
        Command::History(c) => history::run(c),
        Command::Run(args) => run::run(*args),
        Command::List(args) => list::run(args),
        Command::Report(args) => report::run(args),
        Command::Quality(args) => quality::run(args),
        Command::Train(args) => train::run(args),
        Command::Lra(args) => lra::run(args),
        Command::Kv(c) => xarena_kvcache::commands::cli::run(c),
        Command::Check(args) => xarena_bench::check::command(args),
        Command::Env => {
            let env = xarena_measure::env::capture(i64::from(tch::get_num_threads()));
            serde_json::to_string_pretty(&env)
                .context("serialising")
                .map(|s| println!("{s}"))
        }
        Command::Worker => worker::serve(),
        Command::Roofline(args) => xarena_bench::roofline::command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xarena: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
