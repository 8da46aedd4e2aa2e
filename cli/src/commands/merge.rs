//! `xarena merge`: the results of several runs (a sweep's shards) in one run directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct MergeArgs {
    /// A new (or empty) directory for the merged run.
    out_dir: PathBuf,
    /// Run directories or results files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Which record to keep when a case has different results in two inputs (without
    /// it, such a conflict fails the merge).
    #[arg(long, value_enum)]
    prefer: Option<PreferArg>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PreferArg {
    /// The record whose case started last.
    Newest,
    /// The record of the input named first.
    First,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let MergeArgs {
        out_dir: out,
        inputs,
        prefer,
    } = args;
    use xarena_reports::merge::Prefer;
    let prefer = prefer.map(|p| match p {
        PreferArg::Newest => Prefer::Newest,
        PreferArg::First => Prefer::First,
    });
    let s = xarena_bench::merge::merge_runs(&out, &inputs, prefer)?;
    for c in &s.resolved {
        eprintln!("xarena: conflict settled by --prefer: {c}");
    }
    eprintln!(
        "xarena: {} case(s) from {} input(s) -> {} ({} identical copies left out, {} conflict(s) settled)",
        s.cases,
        s.inputs,
        out.display(),
        s.duplicates,
        s.resolved.len()
    );
    Ok(())
}
