//! Loaders for the official LRA data that a user has downloaded. Nothing is fetched
//! here: a missing file is an error naming it and what to download.
//!
//! * ListOps: `basic_{train,val,test}.tsv` from `lra_release/listops-1000/` of
//!   <https://storage.googleapis.com/long-range-arena/lra_release.gz>, read with
//!   [`crate::listops::tokenize`] (the same ids as the generator).
//! * Text (IMDb, byte level): the `aclImdb/` directory of
//!   <https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz>; tokens = bytes + 1,
//!   cut at `max_len` (LRA's released config: 1000; the paper's text task: 4K); label 1
//!   positive. As in LRA, the test reviews are also the validation split.
//! * Image (CIFAR-10, grayscale): the `cifar-10-batches-bin/` directory of
//!   <https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz>; grey levels as
//!   `tf.image.rgb_to_grayscale` computes them on uint8 images, tokens = grey + 1, row by
//!   row. LRA takes 90% / 10% of the training set as train / valid (in TFDS's order);
//!   here the first 45,000 / last 5,000 images of the batches, in file order.
//!
//! * Retrieval (AAN): `new_aan_pairs.{train,eval,test}.tsv` from `lra_release/tsv_data/`
//!   of the LRA release; tab-separated `label id1 id2 text1 text2` without a header
//!   (label `0`/`1`, possibly written `1.0`); each text at byte level (bytes + 1) cut at
//!   `max_len` (LRA: 4000) and padded with 0 to it; an example's tokens are the first
//!   document then the second (`2 * max_len`), which the two-tower classifier splits.
//!
//! The official Pathfinder images are not read: [`crate::pathfinder`] draws them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::listops;
use crate::task::{Example, Split};

fn need(path: &Path, fetch: &str) -> Result<()> {
    if !path.exists() {
        bail!("missing {}: {fetch}", path.display());
    }
    Ok(())
}

const LRA_RELEASE: &str =
    "download https://storage.googleapis.com/long-range-arena/lra_release.gz, \
     unpack it and pass its lra_release/listops-1000 directory";

/// LRA's ListOps files in `dir` (`basic_train.tsv`, `basic_val.tsv`, `basic_test.tsv`).
pub fn listops(dir: &Path) -> Result<Split> {
    let read = |name: &str| -> Result<Vec<Example>> {
        let path = dir.join(name);
        need(&path, LRA_RELEASE)?;
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{} line {}", path.display(), i + 1);
            if i == 0 && line.starts_with("Source") {
                continue;
            }
            if line.trim().is_empty() {
                continue;
            }
            let (source, target) = line
                .rsplit_once('\t')
                .with_context(|| format!("{}: no tab between expression and value", at()))?;
            let tokens = listops::tokenize(source).with_context(at)?;
            let label: u32 = target
                .trim()
                .parse()
                .with_context(|| format!("{}: value {target:?}", at()))?;
            ensure!(label < 10, "{}: value {label} is not a digit", at());
            out.push(Example { tokens, label });
        }
        Ok(out)
    };
    Ok(Split {
        train: read("basic_train.tsv")?,
        valid: read("basic_val.tsv")?,
        test: read("basic_test.tsv")?,
    })
}

const ACL_IMDB: &str = "download https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz, \
     unpack it and pass its aclImdb directory";

/// IMDb reviews at byte level from the `aclImdb` directory `dir`, each cut at `max_len`
/// bytes. Files are read in name order.
pub fn imdb(dir: &Path, max_len: usize) -> Result<Split> {
    ensure!(max_len > 0, "max_len must be positive");
    let read = |part: &str| -> Result<Vec<Example>> {
        let mut out = Vec::new();
        for (class, label) in [("neg", 0), ("pos", 1)] {
            let sub = dir.join(part).join(class);
            need(&sub, ACL_IMDB)?;
            let mut files: Vec<PathBuf> = fs::read_dir(&sub)
                .with_context(|| format!("list {}", sub.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
            files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
            files.sort();
            ensure!(!files.is_empty(), "no .txt reviews in {}", sub.display());
            for f in files {
                let bytes = fs::read(&f).with_context(|| format!("read {}", f.display()))?;
                let tokens = bytes.iter().take(max_len).map(|&b| b as u32 + 1).collect();
                out.push(Example { tokens, label });
            }
        }
        Ok(out)
    };
    let train = read("train")?;
    let test = read("test")?;
    Ok(Split {
        train,
        valid: test.clone(),
        test,
    })
}

const CIFAR: &str = "download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, \
     unpack it and pass its cifar-10-batches-bin directory";

/// One CIFAR-10 colour pixel as `tf.image.rgb_to_grayscale` turns a uint8 image grey:
/// to [0, 1], weighted 0.2989 / 0.5870 / 0.1140, back to uint8 by `x * 255.5` truncated.
pub fn grey(r: u8, g: u8, b: u8) -> u8 {
    let f = |v: u8| v as f64 / 255.0;
    let y = 0.2989 * f(r) + 0.5870 * f(g) + 0.1140 * f(b);
    (y * 255.5).clamp(0.0, 255.0) as u8
}

fn cifar_batch(path: &Path) -> Result<Vec<Example>> {
    const RECORD: usize = 1 + 3 * 1024;
    need(path, CIFAR)?;
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    ensure!(
        !bytes.is_empty() && bytes.len() % RECORD == 0,
        "{}: {} bytes, not a whole number of {RECORD}-byte records",
        path.display(),
        bytes.len()
    );
    bytes
        .chunks(RECORD)
        .enumerate()
        .map(|(i, rec)| {
            let label = rec[0] as u32;
            ensure!(label < 10, "{} record {i}: label {label}", path.display());
            let (r, g, b) = (&rec[1..1025], &rec[1025..2049], &rec[2049..]);
            let tokens = (0..1024)
                .map(|p| grey(r[p], g[p], b[p]) as u32 + 1)
                .collect();
            Ok(Example { tokens, label })
        })
        .collect()
}

/// CIFAR-10 in grey from the `cifar-10-batches-bin` directory `dir`: the training
/// batches' first 90% as train, the last 10% as valid, `test_batch.bin` as test.
pub fn cifar10(dir: &Path) -> Result<Split> {
    let mut train = Vec::new();
    for i in 1..=5 {
        train.extend(cifar_batch(&dir.join(format!("data_batch_{i}.bin")))?);
    }
    let valid = train.split_off(train.len() * 9 / 10);
    let test = cifar_batch(&dir.join("test_batch.bin"))?;
    Ok(Split { train, valid, test })
}

const AAN: &str = "download https://storage.googleapis.com/long-range-arena/lra_release.gz, \
     unpack it and pass its lra_release/tsv_data directory";

/// Byte tokens of `text` cut at `max_len`, padded with 0 to `max_len`.
fn bytes_padded(text: &str, max_len: usize) -> impl Iterator<Item = u32> + '_ {
    let cut = text.as_bytes().iter().take(max_len).map(|&b| b as u32 + 1);
    cut.chain(std::iter::repeat(crate::task::PAD)).take(max_len)
}

/// The AAN document pairs in `dir` (`new_aan_pairs.{train,eval,test}.tsv`), each example
/// the two documents, `max_len` tokens each, one after the other; label 1 when the first
/// cites the second.
pub fn aan(dir: &Path, max_len: usize) -> Result<Split> {
    ensure!(max_len > 0, "max_len must be positive");
    let read = |name: &str| -> Result<Vec<Example>> {
        let path = dir.join(name);
        need(&path, AAN)?;
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{} line {}", path.display(), i + 1);
            let cols: Vec<&str> = line.splitn(5, '\t').collect();
            ensure!(
                cols.len() == 5,
                "{}: {} tab-separated columns, expected 5 (label id1 id2 text1 text2)",
                at(),
                cols.len()
            );
            let label: f64 = cols[0]
                .trim()
                .parse()
                .with_context(|| format!("{}: label {:?}", at(), cols[0]))?;
            ensure!(
                label == 0.0 || label == 1.0,
                "{}: label {label} is neither 0 nor 1",
                at()
            );
            let mut tokens = Vec::with_capacity(2 * max_len);
            tokens.extend(bytes_padded(cols[3], max_len));
            tokens.extend(bytes_padded(cols[4], max_len));
            out.push(Example {
                tokens,
                label: label as u32,
            });
        }
        ensure!(!out.is_empty(), "{}: no document pairs", path.display());
        Ok(out)
    };
    Ok(Split {
        train: read("new_aan_pairs.train.tsv")?,
        valid: read("new_aan_pairs.eval.tsv")?,
        test: read("new_aan_pairs.test.tsv")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::test_util::temp_dir;

    #[test]
    fn listops_files_are_read_and_missing_ones_named() {
        let dir = temp_dir("lra-listops");
        let err = listops(&dir).unwrap_err().to_string();
        assert!(
            err.contains("basic_train.tsv") && err.contains("lra_release"),
            "{err}"
        );
        let body = "Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n( ( [SM 5 ) 6 ) ] )\t1\n";
        for name in ["basic_train.tsv", "basic_val.tsv", "basic_test.tsv"] {
            fs::write(dir.join(name), body).unwrap();
        }
        let split = listops(&dir).unwrap();
        assert_eq!(split.sizes().total(), 6);
        for ex in &split.train {
            assert_eq!(
                listops::parse(&ex.tokens).unwrap().value(),
                ex.label,
                "the file's value is the expression's"
            );
        }
        assert_eq!(listops::to_text(&split.test[0].tokens), "[MAX 2 9 ]");
        fs::write(dir.join("basic_val.tsv"), "Source\tTarget\n[MAX 2 9 ]\tx\n").unwrap();
        let err = format!("{:#}", listops(&dir).unwrap_err());
        assert!(err.contains("basic_val.tsv line 2"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn imdb_reviews_are_bytes_with_labels() {
        let dir = temp_dir("lra-imdb");
        let err = imdb(&dir, 10).unwrap_err().to_string();
        assert!(err.contains("neg") && err.contains("aclImdb"), "{err}");
        for part in ["train", "test"] {
            for class in ["neg", "pos"] {
                let sub = dir.join(part).join(class);
                fs::create_dir_all(&sub).unwrap();
                fs::write(sub.join("1_1.txt"), format!("{class} review, long enough")).unwrap();
                fs::write(sub.join("0_2.txt"), "ab").unwrap();
            }
        }
        let split = imdb(&dir, 10).unwrap();
        assert_eq!(split.sizes(), crate::task::Sizes::new(4, 4, 4));
        // Name order: 0_2.txt first; neg (0) then pos (1).
        assert_eq!(
            split.train[0].tokens,
            vec![b'a' as u32 + 1, b'b' as u32 + 1]
        );
        assert_eq!(split.train[0].label, 0);
        assert_eq!(split.train[1].tokens.len(), 10, "cut at max_len");
        assert_eq!(split.train[1].tokens[0], b'n' as u32 + 1);
        assert_eq!(split.train[3].label, 1);
        assert_eq!(split.train[3].tokens[0], b'p' as u32 + 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn aan_pairs_are_two_padded_documents() {
        let dir = temp_dir("lra-aan");
        let err = aan(&dir, 4).unwrap_err().to_string();
        assert!(
            err.contains("new_aan_pairs.train.tsv") && err.contains("tsv_data"),
            "{err}"
        );
        let body = "1.0\tp1\tp2\tabcdef\txy\n0\tp3\tp4\tq\tlonger text\n";
        for part in ["train", "eval", "test"] {
            fs::write(dir.join(format!("new_aan_pairs.{part}.tsv")), body).unwrap();
        }
        let split = aan(&dir, 4).unwrap();
        assert_eq!(split.sizes(), crate::task::Sizes::new(2, 2, 2));
        let t = |c: u8| c as u32 + 1;
        assert_eq!(split.train[0].label, 1);
        assert_eq!(
            split.train[0].tokens,
            vec![t(b'a'), t(b'b'), t(b'c'), t(b'd'), t(b'x'), t(b'y'), 0, 0]
        );
        assert_eq!(split.test[1].label, 0);
        assert_eq!(split.test[1].tokens[..4], [t(b'q'), 0, 0, 0]);
        fs::write(dir.join("new_aan_pairs.eval.tsv"), "2\ta\tb\tc\td\n").unwrap();
        let err = format!("{:#}", aan(&dir, 4).unwrap_err());
        assert!(
            err.contains("eval.tsv line 1") && err.contains("neither"),
            "{err}"
        );
        fs::write(dir.join("new_aan_pairs.eval.tsv"), "1\ta\tb\n").unwrap();
        let err = format!("{:#}", aan(&dir, 4).unwrap_err());
        assert!(err.contains("3 tab-separated columns"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cifar_pixels_turn_grey_like_tensorflow() {
        // Hand-computed: white stays 255; grey 100 gives 100.19 -> 100; pure red
        // 0.2989 * 255.5 = 76.37 -> 76; pure green 149.98 -> 149; pure blue 29.13 -> 29.
        assert_eq!(grey(255, 255, 255), 255);
        assert_eq!(grey(100, 100, 100), 100);
        assert_eq!(grey(255, 0, 0), 76);
        assert_eq!(grey(0, 255, 0), 149);
        assert_eq!(grey(0, 0, 255), 29);
        assert_eq!(grey(0, 0, 0), 0);

        let dir = temp_dir("lra-cifar");
        let err = cifar10(&dir).unwrap_err().to_string();
        assert!(
            err.contains("data_batch_1.bin") && err.contains("cifar-10"),
            "{err}"
        );
        // Two records per batch: label b, red channel = pixel index mod 256, the rest 0.
        let record = |label: u8| {
            let mut rec = vec![label];
            rec.extend((0..1024).map(|p| (p % 256) as u8));
            rec.extend(std::iter::repeat_n(0u8, 2048));
            rec
        };
        for i in 1..=5 {
            let mut bytes = record(i as u8);
            bytes.extend(record(9));
            fs::write(dir.join(format!("data_batch_{i}.bin")), bytes).unwrap();
        }
        fs::write(dir.join("test_batch.bin"), record(3)).unwrap();
        let split = cifar10(&dir).unwrap();
        assert_eq!(split.sizes(), crate::task::Sizes::new(9, 1, 1));
        assert_eq!(split.train[0].label, 1);
        assert_eq!(split.valid[0].label, 9);
        let t = &split.test[0];
        assert_eq!(t.label, 3);
        assert_eq!(t.tokens.len(), 1024);
        assert_eq!(t.tokens[255], grey(255, 0, 0) as u32 + 1);
        assert_eq!(t.tokens[256], 1, "red 0 -> grey 0 -> token 1");
        fs::write(dir.join("test_batch.bin"), [1u8, 2, 3]).unwrap();
        let err = cifar10(&dir).unwrap_err().to_string();
        assert!(err.contains("whole number"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
