//! `xarena report`: the report of results in every format, or all of them written into a
//! directory with the plots.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use xarena_reports::table::{Format, Style};
use xarena_reports::Report;

#[derive(Args)]
pub struct ReportArgs {
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// What to print (without --out).
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    format: Format,
    /// Write report.md, report.html, report.csv, report.json and the SVG plots into
    /// this directory (created; a non-empty one is refused unless --force).
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --out: write into a non-empty directory, replacing the report's own files
    /// (nothing else there is touched).
    #[arg(long, requires = "out")]
    force: bool,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let report = Report::load(&args.results)?;
    if let Some(dir) = &args.out {
        let written = report.write_dir(dir, args.force)?;
        eprintln!(
            "xarena: wrote {} file(s) into {}: report.md, report.html, report.csv, \
             report.json and {} plot(s)",
            written.len(),
            dir.display(),
            written.len().saturating_sub(4)
        );
        return Ok(());
    }
    match args.format {
        Format::Terminal => print!("{}", report.text(Style::Terminal, false)),
        Format::Md => print!("{}", report.text(Style::Markdown, false)),
        Format::Html => print!("{}", report.html()?),
        Format::Csv => print!("{}", report.csv()?),
        Format::Json => println!("{}", report.json()?),
    }
    Ok(())
}
