//! `xarena leaderboard`: the leaderboard page (docs/leaderboard/) from run directories:
//! a section per setting, ratios within one run (or runs whose environments match, said
//! so), the answer per length, crossovers against sdpa, the LRA layout when accuracy
//! records are given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use xarena_reports::accuracy;
use xarena_reports::leaderboard::{
    arxiv_url, load_quality, load_runs, Leaderboard, VariantMeta, DEFAULT_ACCURACY_BOUND,
    DEFAULT_QUALITY_BOUND,
};
use xarena_variants::registry;

#[derive(Args)]
pub struct LeaderboardArgs {
    /// Run directories (or results files); one section per setting they measured.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where to write report.html and leaderboard.json (created; one that already holds
    /// either, such as a `report --out` directory, is refused unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace report.html and leaderboard.json in --out (nothing else there is touched).
    #[arg(long)]
    force: bool,
    /// `xarena quality` output (quality.jsonl or its directory) for the quality bound.
    #[arg(long)]
    quality: Option<PathBuf>,
    /// The largest quality-proxy error (relative output error) a variant may have to be
    /// "the fastest within the bound".
    #[arg(long, default_value_t = DEFAULT_QUALITY_BOUND)]
    quality_bound: f64,
    /// With accuracy records: the most points of mean accuracy below exact attention's a
    /// variant may lose to be "the fastest within the bound".
    #[arg(long, default_value_t = DEFAULT_ACCURACY_BOUND)]
    accuracy_bound: f64,
    /// Directories with accuracy.jsonl (`xarena lra`): LRA's Table 1 and Figure 3.
    #[arg(long)]
    accuracy: Vec<PathBuf>,
}

/// Papers without an arXiv id in their citation, by variant.
const ARXIV: [(&str, &str); 8] = [
    ("vanilla", "1706.03762"),
    ("local", "1802.05751"),
    ("memory-compressed", "1801.10198"),
    ("bigbird", "2007.14062"),
    ("reformer", "2001.04451"),
    ("routing", "2003.05997"),
    ("sinkhorn", "2002.11296"),
    ("performer", "2009.14794"),
];

fn meta() -> BTreeMap<String, VariantMeta> {
    registry()
        .iter()
        .map(|e| {
            let name = e.info.name;
            let paper_url = ARXIV
                .iter()
                .find(|(v, _)| *v == name)
                .map(|(_, id)| format!("https://arxiv.org/abs/{id}"))
                .or_else(|| arxiv_url(e.info.paper));
            (
                name.to_string(),
                VariantMeta {
                    paper: e.info.paper.to_string(),
                    paper_url,
                },
            )
        })
        .collect()
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: LeaderboardArgs) -> Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("{} exists and is not a directory", args.out.display());
    }
    // Checked before anything is read, so a mistaken --out costs nothing.
    let ours = ["report.html", "leaderboard.json"];
    let present: Vec<&str> = ours
        .into_iter()
        .filter(|f| args.out.join(f).exists())
        .collect();
    if !args.force && !present.is_empty() {
        bail!(
            "{} already holds {}: pass --force to replace it (a `report --out` directory's \
             report.html would be lost), or choose another --out",
            args.out.display(),
            present.join(" and ")
        );
    }
    let runs = load_runs(&args.runs)?;
    let quality = match &args.quality {
        Some(p) => load_quality(p)?,
        None => Vec::new(),
    };
    for p in &args.accuracy {
        if !p.join(accuracy::ACCURACY_FILE).exists() {
            bail!("{}: no {} in it", p.display(), accuracy::ACCURACY_FILE);
        }
    }
    let acc = accuracy::load_accuracy(&args.accuracy)?;
    let mut lb = Leaderboard::build(&runs, quality, args.quality_bound, meta(), acc)?;
    lb.set_accuracy_bound(args.accuracy_bound);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write(&args.out.join("report.html"), &lb.html()?)?;
    write(&args.out.join("leaderboard.json"), &lb.json())?;
    eprintln!(
        "xarena: wrote report.html and leaderboard.json into {}: {} setting(s)",
        args.out.display(),
        lb.sections.len()
    );
    Ok(())
}
