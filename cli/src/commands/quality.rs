//! `xarena quality`: approximation error against exact attention on the same inputs and
//! projections (a proxy that needs no training; the work is in `xarena_bench::quality`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use xarena_reports::grid::{Grid, GridCell};
use xarena_reports::table::Format;
use xarena_schema::Dtype;
use xarena_variants::VariantSpec;

#[derive(Args)]
pub struct QualityArgs {
    /// Variants (attention scope), comma separated, with parameters as in `run`.
    #[arg(long, value_delimiter = ',', required = true)]
    variants: Vec<VariantSpec>,
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096])]
    seq: Vec<i64>,
    #[arg(long, default_value_t = 1)]
    batch: i64,
    #[arg(long, default_value_t = 8)]
    heads: i64,
    #[arg(long, default_value_t = 64)]
    head_dim: i64,
    #[arg(long)]
    causal: bool,
    /// The variant's dtype (the reference is always float64).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Score multipliers. At 1, the random projections' own scores (std about 2: fairly
    /// peaked); 0.25 is nearly flat attention, larger is peakier.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0])]
    qk_scale: Vec<f64>,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Also append the records to this JSON-lines file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// terminal, md, html, csv or json.
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    format: Format,
}

pub fn run(args: QualityArgs) -> Result<()> {
    use xarena_bench::quality::{measure, QualityCase};
    use xarena_variants::Shape;
    for (what, v) in [
        ("batch", args.batch),
        ("heads", args.heads),
        ("head-dim", args.head_dim),
    ] {
        anyhow::ensure!(v >= 1, "--{what} must be at least 1, got {v}");
    }
    if let Some(n) = args.seq.iter().find(|&&n| n < 1) {
        anyhow::bail!("--seq: lengths must be at least 1, got {n}");
    }
    if let Some(s) = args.qk_scale.iter().find(|&&s| !(s.is_finite() && s > 0.0)) {
        anyhow::bail!("--qk-scale: scales must be positive, got {s}");
    }
    // Every variant is checked before anything runs, so a typo costs nothing.
    for spec in &args.variants {
        spec.normalized()?;
    }
    let kind = xarena_measure::device::tch_kind(args.dtype);
    let shape = |seq_len| Shape {
        batch: args.batch,
        seq_len,
        heads: args.heads,
        head_dim: args.head_dim,
        causal: args.causal,
    };
    // It computes in this process: a size it cannot hold is refused now, not killed (or
    // failed in an allocation) after the smaller ones.
    let free = xarena_measure::memory::available_memory();
    for &seq_len in &args.seq {
        xarena_bench::quality::check_fits(&shape(seq_len), &free)
            .map_err(|e| anyhow::anyhow!("--seq {seq_len}: {e}"))?;
    }
    let mut out = match &args.out {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    };
    let mut records = Vec::new();
    for &qk_scale in &args.qk_scale {
        for &seq_len in &args.seq {
            for spec in &args.variants {
                let case = QualityCase {
                    spec: spec.clone(),
                    shape: shape(seq_len),
                    kind,
                    qk_scale,
                    seed: args.seed,
                };
                let r = measure(&case)
                    .map_err(|e| anyhow::anyhow!("{} at N={seq_len}: {e}", spec.name))?;
                if let Some(f) = out.as_mut() {
                    use std::io::Write;
                    writeln!(f, "{}", serde_json::to_string(&r)?)?;
                    f.flush()?;
                }
                eprintln!(
                    "{} N={seq_len} qk_scale={qk_scale} (score std {:.2}): error {:.3e} of \
                     the output, {:.3e} of a value",
                    r.label, r.score_std, r.rel_error, r.value_error
                );
                records.push(r);
            }
        }
    }
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    let columns: Vec<(f64, i64)> = args
        .qk_scale
        .iter()
        .flat_map(|&q| args.seq.iter().map(move |&n| (q, n)))
        .collect();
    let mut header = vec!["error: output (value)".to_string()];
    // The score spread depends on the scale (and barely on N): shown per column.
    header.extend(columns.iter().map(|(q, n)| {
        let std = records
            .iter()
            .find(|r| r.seq_len == *n && r.qk_scale == *q)
            .map_or(f64::NAN, |r| r.score_std);
        format!("N={n}, qk x{q} (score std {std:.1})")
    }));
    let mut t = Grid::new(header);
    for spec in &args.variants {
        let label = spec.normalized()?.label();
        let mut row = vec![label.clone()];
        for (q, n) in &columns {
            let r = records
                .iter()
                .find(|r| r.label == label && r.seq_len == *n && r.qk_scale == *q);
            row.push(r.map_or("-".into(), |r| {
                format!("{:.2e} ({:.2e})", r.rel_error, r.value_error)
            }));
        }
        t.push(row.into_iter().map(GridCell::from).collect());
    }
    println!("{}", t.render(args.format));
    if args.format.style().is_none() {
        return Ok(());
    }
    println!(
        "Error: ||y - y_exact|| / ||y_exact||, and in brackets / ||y_self|| (each token's own \
         value through the output projection: the error in units of a value vector, which \
         flat attention does not inflate). Reference: vanilla in float64, same projections \
         and inputs. Random weights: a proxy for approximation quality, not task accuracy; \
         learned parts (linformer's projections, sinkhorn's sorter) are untrained here. Score \
         std: the spread of the exact scores q.k / sqrt(d), how peaked the attention is."
    );
    Ok(())
}
