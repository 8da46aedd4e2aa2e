//! `xarena report`: the report of results in every format, or all of them written into a
//! directory with the plots.

use anyhow::{bail, Result};
use clap::Args;
use xarena_reports::table::{headline_grid, instability_warning, Format, ReportTarget, Style};
use xarena_reports::Report;

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    target: ReportTarget,
    /// Print only the headline at this N: per variant and setting, its speed-up and
    /// memory ratio against vanilla, the N from which it beats sdpa and its exponents
    /// beside the paper's claims (terminal or md).
    #[arg(long, value_name = "N", conflicts_with = "out")]
    headline: Option<i64>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let ReportArgs {
        target: args,
        headline,
    } = args;
    let report = Report::load(&args.results)?;
    if let Some(n) = headline {
        let style = args
            .format
            .only("report --headline", &[Format::Terminal, Format::Md]);
        let style = style
            .map_err(anyhow::Error::msg)?
            .style()
            .expect("a text format");
        let mut printed = Vec::new();
        for table in &report.tables {
            if let Some(grid) = headline_grid(table, n) {
                let heading = match style {
                    Style::Markdown => format!("**{}**\n\n", table.setting),
                    _ => format!("{}\n", table.setting),
                };
                printed.push(format!("{heading}{}", grid.text(style)));
            }
        }
        if printed.is_empty() {
            bail!("--headline {n}: no setting measured vanilla at N = {n}");
        }
        // Every report opens with the run's instability, the headline too.
        if let Some(w) = instability_warning(&report.tables) {
            println!("{}\n", w.trim_end());
        }
        println!("{}", printed.join("\n\n"));
        return Ok(());
    }
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
