//! Files the commands write: new output directories, and atomic writes (a reader sees
//! the old file or the new one, never a part), shared by `xarena train`, `lra` and `kv`.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::lock::LOCK_FILE;

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
    anyhow::ensure!(
        is_empty_dir(dir).with_context(|| format!("{flag} {}", dir.display()))?,
        "{flag} {}: not empty; name a new or empty directory{hint}",
        dir.display()
    );
    Ok(())
}

/// Whether the directory `dir` holds nothing but, perhaps, a lock file (`.lock`, left by
/// a writer that took it and ended before writing anything).
pub fn is_empty_dir(dir: &Path) -> Result<bool> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_name() != LOCK_FILE {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced, then
/// renamed: a reader sees the old file or the new one, never a part. On any error (a
/// full disk) the temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let write = || -> Result<()> {
        let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Leaves a JSON-lines file that a killed writer may have cut ending in a complete line,
/// so that the next append starts a line of its own: a last line cut short (`truncated`,
/// as the loader found it) is dropped, byte for byte everything before it kept; a last
/// line that is whole but lacks its newline gets one. Says so on stderr when it cuts.
pub fn repair_jsonl_tail(path: &Path, truncated: bool) -> Result<()> {
    let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if truncated {
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        write_atomic(path, &text[..keep])?;
        eprintln!(
            "xarena: {}: last line cut short (a run killed while writing); left out",
            path.display()
        );
    } else if !text.is_empty() && !text.ends_with(b"\n") {
        fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"\n"))
            .with_context(|| format!("appending to {}", path.display()))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("xarena-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // The rename fails: the target is a directory that is not empty.
        let target = dir.join("out");
        fs::create_dir_all(target.join("inside")).unwrap();
        let err = format!("{:#}", write_atomic(&target, b"text").unwrap_err());
        assert!(err.contains(&target.display().to_string()), "{err}");
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["out"], "{left:?}");

        // A directory holding only a lock file counts as empty.
        assert!(is_empty_dir(&target.join("inside")).unwrap());
        fs::write(target.join("inside").join(LOCK_FILE), "1\n").unwrap();
        check_new_dir(&target.join("inside"), "--out", "").unwrap();
        fs::write(target.join("inside").join("x"), "").unwrap();
        assert!(check_new_dir(&target.join("inside"), "--out", "").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
