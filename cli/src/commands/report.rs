//! `xarena report`: the report of results in every format, or all of them written into a
//! directory with the plots.

use anyhow::Result;
use xarena_reports::table::{Format, ReportTarget, Style};
use xarena_reports::Report;

/// `xarena report`'s arguments: the shared report target.
pub type ReportArgs = ReportTarget;

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
