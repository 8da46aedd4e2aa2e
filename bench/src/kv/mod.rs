//! The KV-cache memory track (issue 5) on the runner's side: `xarena kv train | evolve |
//! bench | report`.
//!
//! Data flows one way: [`train`] (a small Llama-architecture decoder trained on the
//! decoding tasks of `xarena_datasets::lm_tasks`, saved in Hugging Face's layout) ->
//! [`evolve`] (CMA-ES, [`cmaes`], over a NAMM's parameters with the model frozen) ->
//! [`bench`] (policies x compression ratios x contexts x tasks, one record per case,
//! `xarena_reports::kv`). [`eval`] decodes one prompt under a policy for all three;
//! [`model`] loads a model directory.

pub mod bench;
pub mod cli;
pub mod cmaes;
pub mod eval;
pub mod evolve;
pub mod model;
pub mod train;

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// `dir` must not exist, or be an empty directory; `flag` names it in the error.
pub fn check_new_dir(dir: &Path, flag: &str) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    anyhow::ensure!(
        dir.is_dir(),
        "{flag} {}: exists and is not a directory",
        dir.display()
    );
    let mut entries =
        fs::read_dir(dir).with_context(|| format!("{flag} {}: reading it", dir.display()))?;
    anyhow::ensure!(
        entries.next().is_none(),
        "{flag} {}: not empty; name a new or empty directory (or pass --resume where the \
         command has it)",
        dir.display()
    );
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced, then
/// renamed: a reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    {
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

/// As [`write_atomic`], for a value as pretty JSON with a final newline.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    write_atomic(path, text.as_bytes())
}

/// Reads a JSON file, naming it in the error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
