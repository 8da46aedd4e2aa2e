//! A task's examples for the trainer: the datasets crate's generators (cached on disk by
//! task, parameters and seed) and its loaders of LRA's files, padded to one length.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xarena_datasets::lra_files;
use xarena_datasets::task::{load_or_generate, Split, Task, PAD};

use super::presets::{DataConfig, Preset};
use super::{Example, TaskData};

/// The seed of every generated task's data: fixed, as LRA's data is, so runs with
/// different training seeds see the same examples.
pub const DATA_SEED: u64 = 0;

/// Where generated data is cached unless `--cache-dir` says otherwise:
/// `$XDG_CACHE_HOME/xarena/tasks`, else `~/.cache/xarena/tasks`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("xarena").join("tasks")
}

/// Every example right-padded with [`PAD`] to `seq_len` (the loaders and ListOps give
/// varying lengths; the classifier is built for one).
pub fn from_split(
    name: &str,
    split: Split,
    vocab: u32,
    classes: u32,
    seq_len: usize,
    towers: u32,
) -> Result<TaskData> {
    let pad = |xs: Vec<xarena_datasets::task::Example>| -> Vec<Example> {
        xs.into_iter()
            .map(|e| {
                let mut tokens = e.tokens;
                if towers == 1 && tokens.len() < seq_len {
                    tokens.resize(seq_len, PAD);
                }
                Example {
                    tokens,
                    label: e.label,
                }
            })
            .collect()
    };
    let data = TaskData {
        name: name.to_string(),
        vocab,
        classes,
        seq_len,
        towers,
        train: pad(split.train),
        test: pad(split.test),
    };
    data.validate()?;
    Ok(data)
}

fn generated(name: &str, task: &dyn Task, cache: &Path) -> Result<TaskData> {
    task.validate()
        .with_context(|| format!("task `{name}`: invalid parameters"))?;
    let split = load_or_generate(task, DATA_SEED, cache)?;
    from_split(
        name,
        split,
        task.vocab_size(),
        task.num_classes(),
        task.max_len(),
        1,
    )
}

/// The directory a files-based task reads: `--data-dir/<sub>` when it exists (one data
/// directory can serve every task), else `--data-dir` itself (the task's own directory).
fn dir(name: &str, data_dir: Option<&Path>, subs: &[&str]) -> Result<PathBuf> {
    let d = data_dir.with_context(|| {
        format!(
            "task `{name}` reads LRA's files: pass --data-dir, a directory holding {} \
             (nothing is downloaded)",
            subs.join(" or ")
        )
    })?;
    let found = subs.iter().map(|s| d.join(s)).find(|p| p.is_dir());
    Ok(found.unwrap_or_else(|| d.to_path_buf()))
}

/// The examples of `preset`'s task.
pub fn task_data(preset: &Preset, data_dir: Option<&Path>, cache: &Path) -> Result<TaskData> {
    let name = preset.task.as_str();
    match &preset.data {
        DataConfig::Listops(t) => generated(name, t, cache),
        DataConfig::Pathfinder(t) => generated(name, t, cache),
        DataConfig::AssociativeRecall(t) => generated(name, t, cache),
        DataConfig::Passkey(t) => generated(name, t, cache),
        DataConfig::SelectiveCopy(t) => generated(name, t, cache),
        DataConfig::Text { max_len } => {
            let d = dir(name, data_dir, &["aclImdb"])?;
            from_split(name, lra_files::imdb(&d, *max_len)?, 257, 2, *max_len, 1)
        }
        DataConfig::Retrieval { max_len } => {
            let d = dir(name, data_dir, &["tsv_data", "lra_release/tsv_data"])?;
            from_split(name, lra_files::aan(&d, *max_len)?, 257, 2, *max_len, 2)
        }
        DataConfig::Image => {
            let d = dir(name, data_dir, &["cifar-10-batches-bin"])?;
            from_split(name, lra_files::cifar10(&d)?, 257, 10, 1024, 1)
        }
    }
}
