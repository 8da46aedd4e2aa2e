//! One writer per output directory: `xarena run`, `kv bench`, `kv evolve`, `lra` and
//! `train` hold an exclusive `flock` on `DIR/.lock` from before they check the directory
//! until they end, so two invocations started together cannot both find it empty (or
//! both resume it) and write every record twice. A second writer is refused at once,
//! naming the pid that holds the directory.
//!
//! The lock belongs to the open file, not to the file's presence: a `.lock` left by a
//! finished or killed run holds nothing, and the kernel drops the lock of a killed
//! process. Child processes (workers) do not inherit it: std opens files close-on-exec.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The lock file inside a locked directory; readers and emptiness checks ignore it.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive lock on a directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    // Closing the file releases the lock.
    _file: File,
    dir: PathBuf,
    created: bool,
}

impl DirLock {
    /// Creates `dir` if needed and locks it; `flag` (`--out`) names it in the refusal.
    /// Whoever takes the lock checks the directory's contents after this, not before.
    pub fn acquire(dir: &Path, flag: &str) -> Result<DirLock> {
        if dir.exists() && !dir.is_dir() {
            bail!("{flag} {}: exists and is not a directory", dir.display());
        }
        let created = !dir.exists();
        let path = dir.join(LOCK_FILE);
        // A holder that gives its directory up removes the lock file while holding it
        // (`discard_if_unused`): a lock taken on the removed file guards nothing, so the
        // file is opened again.
        for _ in 0..100 {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    bail!(
                        "{} is in use by another xarena ({}); wait for it or name another {flag}",
                        dir.display(),
                        holder(&path).map_or("pid unknown".to_string(), |p| format!("pid {p}"))
                    );
                }
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .and_then(|()| file.flush())
                .with_context(|| format!("writing {}", path.display()))?;
            return Ok(DirLock {
                _file: file,
                dir: dir.to_path_buf(),
                created,
            });
        }
        bail!(
            "{}: could not lock it (its lock file keeps being replaced)",
            path.display()
        )
    }

    /// For a command that writes its directory elsewhere and renames it into place: an
    /// empty `dir` may still hold a lock file (its writer ended before writing), which
    /// the rename cannot replace. Refused if a writer still holds it; else removed, under
    /// the lock returned, to hold until the rename.
    pub fn take_over_empty(dir: &Path, flag: &str) -> Result<Option<DirLock>> {
        let path = dir.join(LOCK_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let lock = DirLock::acquire(dir, flag)?;
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        Ok(Some(lock))
    }

    /// Gives the directory up, removing it if this lock created it and nothing but the
    /// lock file was written there (a command that failed before its first output).
    pub fn discard_if_unused(self) {
        if !self.created {
            return;
        }
        let only_lock = fs::read_dir(&self.dir).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == LOCK_FILE)
        });
        if only_lock {
            // Removed while still held, so that no one locks it in between.
            let _ = fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// Whether the open `file` is still the one at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The pid the holder wrote into the lock file. It writes it just after locking, so an
/// empty file is read again for a moment.
fn holder(path: &Path) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut text = String::new();
        let read = File::open(path).and_then(|mut f| f.read_to_string(&mut text));
        if let Ok(pid) = text.trim().parse() {
            return Some(pid);
        }
        if read.is_err() || Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("xarena-lock-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_ends() {
        let dir = tmp("second");
        let first = DirLock::acquire(&dir, "--out").unwrap();
        let pid = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock locks belong to the open file, so a second open in this process is
        // refused as another process would be.
        let err = format!("{:#}", DirLock::acquire(&dir, "--out").unwrap_err());
        assert_eq!(
            err,
            format!(
                "{} is in use by another xarena (pid {}); wait for it or name another --out",
                dir.display(),
                std::process::id()
            )
        );
        drop(first);
        // The lock file stays; it holds nothing once its holder is gone.
        assert!(dir.join(LOCK_FILE).exists());
        let again = DirLock::acquire(&dir, "--out").unwrap();
        again.discard_if_unused();
        // Not created by `again`: kept.
        assert!(dir.join(LOCK_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_created_for_nothing_is_removed_and_a_file_is_refused() {
        let dir = tmp("discard");
        DirLock::acquire(&dir, "--out").unwrap().discard_if_unused();
        assert!(!dir.exists());

        let lock = DirLock::acquire(&dir, "--out").unwrap();
        fs::write(dir.join("x"), "kept").unwrap();
        lock.discard_if_unused();
        assert!(dir.join("x").exists());
        fs::remove_dir_all(&dir).unwrap();

        // A lock file left in an otherwise empty directory is taken over and removed,
        // unless its writer is still there.
        drop(DirLock::acquire(&dir, "--out").unwrap());
        let held = DirLock::acquire(&dir, "--out").unwrap();
        assert!(DirLock::take_over_empty(&dir, "OUT_DIR").is_err());
        drop(held);
        let taken = DirLock::take_over_empty(&dir, "OUT_DIR").unwrap();
        assert!(taken.is_some() && !dir.join(LOCK_FILE).exists());
        fs::remove_dir(&dir).unwrap();
        assert!(DirLock::take_over_empty(&dir, "OUT_DIR").unwrap().is_none());

        fs::write(&dir, "a file").unwrap();
        let err = DirLock::acquire(&dir, "--out").unwrap_err().to_string();
        assert!(err.contains("exists and is not a directory"), "{err}");
        fs::remove_file(&dir).unwrap();
    }
}
