//! `xarena lra`: the matrix of variants x tasks, resumable cell by cell.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use xarena_variants::VariantSpec;

use super::train::RunCliArgs;

#[derive(Args)]
pub struct LraCliArgs {
    /// Variants with parameters, comma separated (each needs a block scope).
    #[arg(long, value_delimiter = ',', required = true)]
    variants: Vec<VariantSpec>,
    /// Tasks, comma separated: listops, pathfinder, pathfinder-64, path-x,
    /// associative-recall, passkey, selective-copy, text, retrieval, image; each with
    /// parameters of its data as in `train --task` (`listops:tokens=lra`).
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// The matrix directory; an existing one is resumed.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    run: RunCliArgs,
}

pub fn run(args: LraCliArgs) -> Result<()> {
    use xarena_training::matrix::{run_matrix, CellOutcome, MatrixArgs};
    let matrix = MatrixArgs {
        variants: args.variants,
        tasks: args.tasks,
        out: args.out.clone(),
        settings: args.run.settings()?,
    };
    let cells = run_matrix(&matrix, |cell| match &cell.outcome {
        CellOutcome::Skipped(l) => eprintln!(
            "xarena lra: {} on {}: done earlier ({:.1}%)",
            cell.variant,
            cell.task,
            100.0 * l.accuracy
        ),
        CellOutcome::Trained(l, r) => eprintln!(
            "xarena lra: {} on {}: {:.1}% (train {:.1}%) in {:.0} s, {:.1} steps/s",
            cell.variant,
            cell.task,
            100.0 * l.accuracy,
            100.0 * r.train_accuracy,
            r.train_seconds,
            r.steps_per_s
        ),
        CellOutcome::Failed(e) => {
            eprintln!("xarena lra: {} on {}: FAILED: {e}", cell.variant, cell.task)
        }
    })?;
    let failed = cells
        .iter()
        .filter(|c| matches!(c.outcome, CellOutcome::Failed(_)))
        .count();
    eprintln!(
        "xarena lra: {} of {} cells done; `xarena report {}` shows the table",
        cells.len() - failed,
        cells.len(),
        args.out.display()
    );
    anyhow::ensure!(
        failed == 0,
        "{failed} cell(s) failed (listed in {}/failures.jsonl); rerun the same command to \
         retry them",
        args.out.display()
    );
    Ok(())
}
