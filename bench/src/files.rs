//! Files the commands write: new output directories, and atomic writes (a reader sees
//! the old file or the new one, never a part), shared by `xarena train`, `lra` and `kv`.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// `dir` must not exist, or be an empty directory; `flag` names it in the error, `hint`
/// (may be empty) ends it.
pub fn check_new_dir(dir: &Path, flag: &str, hint: &str) -> Result<()> {
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
        "{flag} {}: not empty; name a new or empty directory{hint}",
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
