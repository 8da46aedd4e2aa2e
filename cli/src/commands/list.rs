//! `xarena list`: the variants with their family, claims, defaults and paper.

use anyhow::Result;
use clap::Args;
use xarena_reports::grid::{Grid, GridCell};
use xarena_reports::table::Format;
use xarena_variants::registry;

#[derive(Args)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    format: Format,
}

/// The registry as a table: a row per variant.
pub fn table() -> Grid {
    let mut t = Grid::new(
        [
            "variant", "family", "time", "memory", "causal", "decode", "scopes", "defaults",
            "paper",
        ]
        .map(String::from)
        .to_vec(),
    )
    .all_left();
    for e in registry() {
        let i = &e.info;
        let row: [String; 9] = [
            i.name.to_string(),
            i.family.to_string(),
            i.time.to_string(),
            i.memory.to_string(),
            if i.supports_causal { "yes" } else { "no" }.to_string(),
            i.decode.map_or("no".into(), |d| d.state.to_string()),
            i.scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            e.defaults().to_string(),
            i.paper.to_string(),
        ];
        t.push(row.map(GridCell::from).to_vec());
    }
    t
}

pub fn run(args: ListArgs) -> Result<()> {
    if args.format == Format::Json {
        let infos: Vec<_> = registry()
            .iter()
            .map(|e| serde_json::json!({"info": e.info, "defaults": e.defaults()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(());
    }
    println!("{}", table().render(args.format));
    Ok(())
}
