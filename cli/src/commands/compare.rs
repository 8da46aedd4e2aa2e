//! `xarena compare`: two runs case by case, for CI gates (exit 1 on a regression).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use xarena_reports::table::Format;

#[derive(Args)]
pub struct CompareArgs {
    /// The baseline: a run directory or a results file.
    base: PathBuf,
    /// The run to judge against it.
    new: PathBuf,
    /// Least change of median latency that counts, in percent (default 50: reruns on a
    /// shared VM move by up to 35%); the runs' own spread can raise it per case (see
    /// docs/guides/compare.md).
    #[arg(long)]
    threshold: Option<f64>,
    /// Least change of median latency that counts when both runs have rounds (their
    /// intervals over rounds must not overlap), in percent (default 5).
    #[arg(long)]
    rounds_threshold: Option<f64>,
    /// Least change of median latency that counts, in microseconds (default 1).
    #[arg(long)]
    latency_floor: Option<f64>,
    /// Least change of peak memory that counts, in percent (default 10).
    #[arg(long)]
    memory_threshold: Option<f64>,
    /// Least change of peak memory that counts, in MiB (default 4: allocator granularity
    /// on small cases).
    #[arg(long)]
    memory_floor: Option<f64>,
    /// terminal, md or json.
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    format: Format,
}

/// Ok(true) when NEW regressed.
pub fn run(args: CompareArgs) -> Result<bool> {
    use xarena_reports::compare::{compare, render, Thresholds};
    let format = args
        .format
        .only("compare", &[Format::Terminal, Format::Md, Format::Json])
        .map_err(anyhow::Error::msg)?;
    for (flag, v) in [
        ("--threshold", args.threshold),
        ("--latency-floor", args.latency_floor),
        ("--rounds-threshold", args.rounds_threshold),
        ("--memory-threshold", args.memory_threshold),
        ("--memory-floor", args.memory_floor),
    ] {
        if let Some(v) = v {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{flag} must be a number >= 0, got {v}"
            );
        }
    }
    let d = Thresholds::default();
    let thresholds = Thresholds {
        latency: args.threshold.map_or(d.latency, |p| p / 100.0),
        latency_floor_s: args.latency_floor.map_or(d.latency_floor_s, |us| us * 1e-6),
        rounds_latency: args
            .rounds_threshold
            .map_or(d.rounds_latency, |p| p / 100.0),
        memory: args.memory_threshold.map_or(d.memory, |p| p / 100.0),
        memory_floor_bytes: args.memory_floor.map_or(d.memory_floor_bytes, |mib| {
            (mib * (1u64 << 20) as f64) as u64
        }),
    };
    let read = |path: &PathBuf| -> Result<Vec<xarena_reports::Record>> {
        let loaded = xarena_reports::load::read_results(path)?;
        if loaded.truncated_tail {
            eprintln!(
                "xarena: {}: last line cut short (a run killed while writing); left out",
                path.display()
            );
        }
        Ok(loaded.records)
    };
    let (base, new) = (read(&args.base)?, read(&args.new)?);
    let c = compare(&base, &new, thresholds).map_err(|e| match e {
        xarena_reports::compare::CompareError::Empty(side) => anyhow::anyhow!(
            "{side} ({}) holds no records",
            if side == "BASE" {
                &args.base
            } else {
                &args.new
            }
            .display()
        ),
        e => e.into(),
    })?;
    match format.style() {
        Some(style) => print!("{}", render(&c, style)),
        None => println!("{}", serde_json::to_string_pretty(&c)?),
    }
    Ok(c.has_regression())
}
