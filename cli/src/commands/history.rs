//! `xarena history`: results over many runs in SQLite; ingest runs, show a trend.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use xarena_reports::table::Format;
use xarena_schema::Mode;

#[derive(Subcommand)]
pub enum HistoryCommand {
    /// Add the records of run directories or results files to DB (created if missing);
    /// records already there are skipped.
    Ingest {
        db: PathBuf,
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
    /// A variant's results over the runs in DB, a table per case, oldest first.
    Show {
        db: PathBuf,
        #[arg(long)]
        variant: String,
        /// Only this sequence length.
        #[arg(long)]
        seq: Option<i64>,
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// cpu, cuda or cuda:N.
        #[arg(long)]
        device: Option<String>,
        /// terminal, md or json.
        #[arg(long, value_enum, default_value_t = Format::Terminal)]
        format: Format,
    },
}

pub fn run(command: HistoryCommand) -> Result<()> {
    use xarena_bench::history;
    match command {
        HistoryCommand::Ingest { db, results } => {
            let n = history::ingest(&db, &results)?;
            eprintln!(
                "xarena: {} record(s) added from {} run(s), {} already in {}",
                n.added,
                n.runs,
                n.present,
                db.display()
            );
        }
        HistoryCommand::Show {
            db,
            variant,
            seq,
            mode,
            device,
            format,
        } => {
            let filter = history::Filter {
                variant,
                seq,
                mode,
                device,
            };
            let format = format
                .only(
                    "history show",
                    &[Format::Terminal, Format::Md, Format::Json],
                )
                .map_err(anyhow::Error::msg)?;
            let points = history::show(&db, &filter)?;
            match format.style() {
                Some(style) => print!("{}", history::render(&points, style)),
                None => println!("{}", serde_json::to_string_pretty(&points)?),
            }
        }
    }
    Ok(())
}
