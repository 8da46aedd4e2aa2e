//! The common API of the LRA-style tasks: examples, splits, the `Task` trait, seeded
//! random streams and the on-disk cache of generated data.
//!
//! Every generator draws from ChaCha8 (`rand_chacha`), seeded from a `u64`, and samples
//! only fixed-width integers (never `usize`), so a seed gives the same data on every
//! platform. Generated splits are cached as JSON lines under
//! `<cache root>/<task name>/<hash>.jsonl`, where the hash covers the task's name, its
//! parameters, the seed and [`CACHE_FORMAT`]; a file is written to a temporary name and
//! renamed into place, so a partial file is never taken as complete.

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped whenever the file layout or any generator's output for given parameters changes,
/// so older cache files are no longer found.
pub const CACHE_FORMAT: u32 = 1;

/// Token id 0 is padding in every task; generators never emit it.
pub const PAD: u32 = 0;

/// One classification example: a token sequence (ids below the task's vocabulary size,
/// never [`PAD`]) and its class (below the task's number of classes). The retrieval task,
/// when it comes, will add a second sequence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub label: u32,
}

/// How many examples each split holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
}

impl Sizes {
    pub fn new(train: usize, valid: usize, test: usize) -> Self {
        Sizes { train, valid, test }
    }
    pub fn total(&self) -> usize {
        self.train + self.valid + self.test
    }
}

/// The three splits of a task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    pub train: Vec<Example>,
    pub valid: Vec<Example>,
    pub test: Vec<Example>,
}

impl Split {
    /// Cuts `all` into train, valid and test, in that order, by `sizes`.
    pub fn from_sizes(mut all: Vec<Example>, sizes: Sizes) -> Split {
        assert_eq!(all.len(), sizes.total(), "examples and sizes disagree");
        let test = all.split_off(sizes.train + sizes.valid);
        let valid = all.split_off(sizes.train);
        Split {
            train: all,
            valid,
            test,
        }
    }

    pub fn sizes(&self) -> Sizes {
        Sizes::new(self.train.len(), self.valid.len(), self.test.len())
    }

    /// Train, valid and test with their names.
    pub fn parts(&self) -> [(&'static str, &[Example]); 3] {
        [
            ("train", &self.train),
            ("valid", &self.valid),
            ("test", &self.test),
        ]
    }
}

/// A generated task.
pub trait Task {
    /// Stable name, also the cache subdirectory (`listops`, `passkey`, ...).
    fn name(&self) -> &'static str;
    /// Token ids are below this (id 0 is padding).
    fn vocab_size(&self) -> u32;
    /// Labels are below this.
    fn num_classes(&self) -> u32;
    /// No sequence is longer than this.
    fn max_len(&self) -> usize;
    /// How many examples each split holds.
    fn sizes(&self) -> Sizes;
    /// Every parameter that changes the data, as JSON (part of the cache key).
    fn params(&self) -> serde_json::Value;
    /// The checked parameters, or what is wrong with them.
    fn validate(&self) -> Result<()>;
    /// The splits for `seed`; the same for the same parameters and seed.
    fn generate(&self, seed: u64) -> Result<Split>;
}

/// A ChaCha8 stream for `seed`; different `stream`s of one seed are independent, so a
/// generator can give each split its own stream (changing one split's size then leaves
/// the others unchanged).
pub fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// A `u32` uniform in `lo..hi` (platform-independent, unlike sampling `usize`).
pub fn uniform(r: &mut ChaCha8Rng, lo: u32, hi: u32) -> u32 {
    use rand::Rng;
    r.gen_range(lo..hi)
}

/// `n` distinct values from `0..range`, in drawn order (a partial Fisher-Yates shuffle).
pub fn distinct(r: &mut ChaCha8Rng, n: u32, range: u32) -> Vec<u32> {
    assert!(n <= range);
    let mut pool: Vec<u32> = (0..range).collect();
    for i in 0..n {
        let j = uniform(r, i, range);
        pool.swap(i as usize, j as usize);
    }
    pool.truncate(n as usize);
    pool
}

/// The JSON the cache key hashes.
fn key_json(task: &dyn Task, seed: u64) -> serde_json::Value {
    serde_json::json!({
        "format": CACHE_FORMAT,
        "task": task.name(),
        "params": task.params(),
        "sizes": task.sizes(),
        "seed": seed,
    })
}

/// Where `task`'s data for `seed` is cached under `cache_root`.
pub fn cache_path(task: &dyn Task, seed: u64, cache_root: &Path) -> PathBuf {
    let key = key_json(task, seed).to_string();
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    cache_root.join(task.name()).join(format!("{hex}.jsonl"))
}

#[derive(Serialize, Deserialize)]
struct Header {
    key: serde_json::Value,
    sizes: Sizes,
}

/// The task's splits for `seed`: read from the cache under `cache_root` when a complete
/// file for these parameters is there, otherwise generated and written there. A file
/// that cannot be read back whole (or whose header names other parameters) is
/// regenerated and replaced.
pub fn load_or_generate(task: &dyn Task, seed: u64, cache_root: &Path) -> Result<Split> {
    task.validate()
        .with_context(|| format!("task {}", task.name()))?;
    let path = cache_path(task, seed, cache_root);
    if path.exists() {
        if let Ok(split) = read_cache(&path, &key_json(task, seed)) {
            return Ok(split);
        }
    }
    let split = task.generate(seed)?;
    write_cache(&path, &key_json(task, seed), &split)?;
    Ok(split)
}

/// Reads a cache file; errors when it is incomplete or for another key.
pub fn read_cache(path: &Path, key: &serde_json::Value) -> Result<Split> {
    let file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let header: Header = match lines.next() {
        Some(line) => serde_json::from_str(&line?).context("cache header")?,
        None => bail!("{}: empty cache file", path.display()),
    };
    if &header.key != key {
        bail!("{}: cache file for other parameters", path.display());
    }
    let mut all = Vec::with_capacity(header.sizes.total());
    for (i, line) in lines.enumerate() {
        let line = line?;
        let ex: Example = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}", path.display(), i + 2))?;
        all.push(ex);
    }
    if all.len() != header.sizes.total() {
        bail!(
            "{}: {} examples, the header says {}",
            path.display(),
            all.len(),
            header.sizes.total()
        );
    }
    Ok(Split::from_sizes(all, header.sizes))
}

/// Writes `split` to `path` atomically: a temporary file in the same directory, flushed
/// and synced, then renamed over `path`.
pub fn write_cache(path: &Path, key: &serde_json::Value, split: &Split) -> Result<()> {
    let dir = path.parent().context("cache path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.{}.{nanos}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let file = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        let header = Header {
            key: key.clone(),
            sizes: split.sizes(),
        };
        serde_json::to_writer(&mut w, &header)?;
        w.write_all(b"\n")?;
        for (_, part) in split.parts() {
            for ex in part {
                serde_json::to_writer(&mut w, ex)?;
                w.write_all(b"\n")?;
            }
        }
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
            .with_context(|| format!("rename {} -> {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Counts of each label below `num_classes`.
pub fn label_counts(examples: &[Example], num_classes: u32) -> Vec<usize> {
    let mut counts = vec![0; num_classes as usize];
    for ex in examples {
        counts[ex.label as usize] += 1;
    }
    counts
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// A fresh, empty directory under the system's temporary directory.
    pub fn temp_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "xarena-datasets-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A task that counts how often it generates.
    struct Counting {
        n: usize,
        calls: Cell<usize>,
    }

    impl Task for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn vocab_size(&self) -> u32 {
            100
        }
        fn num_classes(&self) -> u32 {
            2
        }
        fn max_len(&self) -> usize {
            8
        }
        fn sizes(&self) -> Sizes {
            Sizes::new(self.n, 2, 1)
        }
        fn params(&self) -> serde_json::Value {
            serde_json::json!({ "n": self.n })
        }
        fn validate(&self) -> Result<()> {
            Ok(())
        }
        fn generate(&self, seed: u64) -> Result<Split> {
            self.calls.set(self.calls.get() + 1);
            let mut r = rng(seed, 0);
            let all = (0..self.sizes().total())
                .map(|_| Example {
                    tokens: (0..8).map(|_| uniform(&mut r, 1, 100)).collect(),
                    label: uniform(&mut r, 0, 2),
                })
                .collect();
            Ok(Split::from_sizes(all, self.sizes()))
        }
    }

    #[test]
    fn cache_is_written_once_and_read_back() {
        let root = test_util::temp_dir("cache");
        let task = Counting {
            n: 5,
            calls: Cell::new(0),
        };
        let a = load_or_generate(&task, 7, &root).unwrap();
        assert_eq!(task.calls.get(), 1);
        assert_eq!(a.sizes(), Sizes::new(5, 2, 1));
        let path = cache_path(&task, 7, &root);
        assert!(
            path.starts_with(root.join("counting")),
            "{}",
            path.display()
        );
        assert!(path.exists());
        // No temporary file left beside it.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        let b = load_or_generate(&task, 7, &root).unwrap();
        assert_eq!(task.calls.get(), 1, "read from the cache, not regenerated");
        assert_eq!(a, b);

        // Another seed or other parameters: another file, generated.
        let c = load_or_generate(&task, 8, &root).unwrap();
        assert_eq!(task.calls.get(), 2);
        assert_ne!(a, c);
        assert_ne!(cache_path(&task, 8, &root), path);
        let other = Counting {
            n: 6,
            calls: Cell::new(0),
        };
        assert_ne!(cache_path(&other, 7, &root), path);
        let d = load_or_generate(&other, 7, &root).unwrap();
        assert_eq!(other.calls.get(), 1);
        assert_eq!(d.train.len(), 6);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn truncated_cache_is_regenerated() {
        let root = test_util::temp_dir("truncated");
        let task = Counting {
            n: 5,
            calls: Cell::new(0),
        };
        let a = load_or_generate(&task, 1, &root).unwrap();
        let path = cache_path(&task, 1, &root);
        let text = fs::read_to_string(&path).unwrap();
        // Drop the last two lines, as a killed writer without the rename would have.
        let cut: Vec<&str> = text.lines().collect();
        fs::write(&path, cut[..cut.len() - 2].join("\n")).unwrap();
        assert!(read_cache(&path, &key_json(&task, 1)).is_err());
        let b = load_or_generate(&task, 1, &root).unwrap();
        assert_eq!(task.calls.get(), 2, "regenerated");
        assert_eq!(a, b);
        assert!(read_cache(&path, &key_json(&task, 1)).is_ok());
        // A file holding another key is refused.
        assert!(read_cache(&path, &key_json(&task, 2)).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn streams_differ_and_repeat() {
        let draw = |seed, stream| {
            let mut r = rng(seed, stream);
            (0..16)
                .map(|_| uniform(&mut r, 0, 1000))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3, 0), draw(3, 0));
        assert_ne!(draw(3, 0), draw(3, 1));
        assert_ne!(draw(3, 0), draw(4, 0));
    }
}
