//! Long-context tasks for a decoder LM: a prompt, then answer tokens a greedy decode must
//! produce (the KV-cache memory track, `xarena kv`). Every task hides what the answer
//! needs somewhere in the prompt, among filler, so a cache policy that drops it loses the
//! answer.
//!
//! * [`LmTask::Passkey`] (`passkey`): `BOS` filler with `KEY d1 .. dm` at a depth, then
//!   `ASK`; answer = `d1 .. dm`.
//! * [`LmTask::Recall`] (`recall`, associative recall): `pairs` key-value bindings `k v`
//!   scattered in order among filler, then `QUERY k`; answer = k's value.
//! * [`LmTask::Mqar`] (`mqar`, multi-query associative recall, Arora et al. 2023, "Zoology:
//!   Measuring and Improving Recall in Efficient Language Models", arXiv:2312.04927): the
//!   same bindings, then `QUERY k_1` and the model answers `v_1`, is given `k_2`, answers
//!   `v_2`, ...: several keys queried in a row, the keys given, the values scored.
//!
//! One vocabulary serves all three (so one model learns them together): [`PAD`], [`BOS`],
//! [`KEY`], [`ASK`], [`QUERY`], the ten digits (passkey digits and recall values), then
//! `keys` key tokens, then `filler_words` filler words. Filler never holds a digit or a
//! key, so the only digits and keys in a prompt are the ones the answer needs.
//!
//! An example's prompt is exactly `context` tokens long. Examples are drawn from ChaCha8
//! streams keyed by (seed, split, task), integers only, so a seed gives the same prompts
//! on every platform. [`LmTask::solve`] recomputes an answer from the prompt (and, for
//! MQAR, the given keys) alone.

use anyhow::{bail, ensure, Context, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::task::{distinct, rng, uniform};

/// Padding (never generated; batches of different lengths pad with it).
pub const PAD: u32 = 0;
/// Begins every prompt.
pub const BOS: u32 = 1;
/// Marks the passkey.
pub const KEY: u32 = 2;
/// Ends a passkey prompt: "what was the passkey?".
pub const ASK: u32 = 3;
/// Starts the recall questions.
pub const QUERY: u32 = 4;
/// The digits 0-9 are `DIGIT0..DIGIT0 + 10`.
pub const DIGIT0: u32 = 5;
const KEY0: u32 = DIGIT0 + 10;

/// The settings every task shares; the defaults are the in-suite model's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LmTaskConfig {
    /// Filler words (default 32).
    pub filler_words: u32,
    /// Key tokens of the recall tasks (default 32; at least `pairs`).
    pub keys: u32,
    /// Digits of the passkey (default 2), 1 to 8.
    pub passkey_digits: u32,
    /// Where the passkey sits, in per mille of the free room: 0 at the start, 1000 right
    /// before `ASK`; `None` (the default) draws it uniformly per example.
    pub passkey_depth_permille: Option<u32>,
    /// Bindings per recall prompt (default 8).
    pub pairs: u32,
    /// Keys queried per MQAR prompt (default 4; at most `pairs`, distinct).
    pub queries: u32,
}

impl Default for LmTaskConfig {
    fn default() -> Self {
        LmTaskConfig {
            filler_words: 32,
            keys: 32,
            passkey_digits: 2,
            passkey_depth_permille: None,
            pairs: 8,
            queries: 4,
        }
    }
}

impl LmTaskConfig {
    /// Token ids are below this.
    pub fn vocab_size(&self) -> u32 {
        KEY0 + self.keys + self.filler_words
    }

    fn key_token(&self, k: u32) -> u32 {
        KEY0 + k
    }

    fn filler_token(&self, w: u32) -> u32 {
        KEY0 + self.keys + w
    }

    fn is_key(&self, t: u32) -> bool {
        (KEY0..KEY0 + self.keys).contains(&t)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.filler_words >= 1, "filler_words must be at least 1");
        ensure!(
            (1..=8).contains(&self.passkey_digits),
            "passkey_digits must be 1 to 8, got {}",
            self.passkey_digits
        );
        if let Some(d) = self.passkey_depth_permille {
            ensure!(
                d <= 1000,
                "passkey_depth_permille must be 0 to 1000, got {d}"
            );
        }
        ensure!(self.pairs >= 1, "pairs must be at least 1");
        ensure!(
            self.keys >= self.pairs,
            "keys ({}) must be at least pairs ({}): the keys of a prompt are distinct",
            self.keys,
            self.pairs
        );
        ensure!(
            (1..=self.pairs).contains(&self.queries),
            "queries must be 1 to pairs ({}), got {}",
            self.pairs,
            self.queries
        );
        Ok(())
    }
}

/// One prompt and what follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LmExample {
    /// What the model reads before answering (`context` tokens).
    pub prompt: Vec<u32>,
    /// The tokens after the prompt, in order: the ones to produce and the given ones.
    pub answer: Vec<u32>,
    /// Per answer token: true when it is given to the model (MQAR's later keys), false
    /// when the model must produce it (scored).
    pub given: Vec<bool>,
}

impl LmExample {
    /// Answer tokens the model must produce.
    pub fn scored(&self) -> usize {
        self.given.iter().filter(|g| !**g).count()
    }

    /// The whole sequence, prompt then answer (training's input).
    pub fn tokens(&self) -> Vec<u32> {
        let mut t = self.prompt.clone();
        t.extend(&self.answer);
        t
    }

    /// The fraction of scored answer tokens `produced` gets right, `produced` holding one
    /// token per answer token (what is at a given position is ignored).
    pub fn score(&self, produced: &[u32]) -> f64 {
        let scored = self.scored();
        if scored == 0 {
            return 0.0;
        }
        let right = self
            .answer
            .iter()
            .zip(&self.given)
            .zip(produced)
            .filter(|((a, g), p)| !**g && a == p)
            .count();
        right as f64 / scored as f64
    }
}

/// Which part of the data a stream feeds: training, evolution (the NAMM's fitness) and
/// evaluation use disjoint streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LmSplit {
    Train,
    Valid,
    Test,
}

/// The tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LmTask {
    Passkey,
    Recall,
    Mqar,
}

/// The task names, as the command line takes them.
pub const LM_TASKS: &[&str] = &["passkey", "recall", "mqar"];

impl std::fmt::Display for LmTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for LmTask {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "passkey" => LmTask::Passkey,
            "recall" | "associative-recall" => LmTask::Recall,
            "mqar" => LmTask::Mqar,
            other => bail!("unknown task `{other}` (tasks: {})", LM_TASKS.join(", ")),
        })
    }
}

impl LmTask {
    pub fn name(&self) -> &'static str {
        match self {
            LmTask::Passkey => "passkey",
            LmTask::Recall => "recall",
            LmTask::Mqar => "mqar",
        }
    }

    /// Parses a comma-separated list; empty entries are refused, repeats kept once.
    pub fn parse_list(s: &str) -> Result<Vec<LmTask>> {
        let mut out = Vec::new();
        for part in s.split(',') {
            ensure!(!part.trim().is_empty(), "empty task name in `{s}`");
            let t: LmTask = part.parse()?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn index(&self) -> u64 {
        *self as u64
    }

    /// The shortest prompt the task fits in.
    pub fn min_context(&self, cfg: &LmTaskConfig) -> usize {
        match self {
            // BOS, KEY, the digits, ASK.
            LmTask::Passkey => 3 + cfg.passkey_digits as usize,
            // BOS, the bindings, QUERY and the first key.
            LmTask::Recall | LmTask::Mqar => 3 + 2 * cfg.pairs as usize,
        }
    }

    /// Answer tokens after the prompt (given ones included).
    pub fn answer_len(&self, cfg: &LmTaskConfig) -> usize {
        match self {
            LmTask::Passkey => cfg.passkey_digits as usize,
            LmTask::Recall => 1,
            LmTask::Mqar => 2 * cfg.queries as usize - 1,
        }
    }

    /// Scored answer tokens per example.
    pub fn scored_len(&self, cfg: &LmTaskConfig) -> usize {
        match self {
            LmTask::Passkey => cfg.passkey_digits as usize,
            LmTask::Recall => 1,
            LmTask::Mqar => cfg.queries as usize,
        }
    }

    /// The score of guessing: each scored token is a digit.
    pub fn chance(&self) -> f64 {
        0.1
    }

    fn check(&self, cfg: &LmTaskConfig, context: usize) -> Result<()> {
        cfg.validate()?;
        let least = self.min_context(cfg);
        ensure!(
            context >= least,
            "task {self}: a context of {context} tokens cannot hold the prompt (at least \
             {least} with these settings)"
        );
        Ok(())
    }

    /// The seeded stream of `split` for this task.
    pub fn stream(&self, seed: u64, split: LmSplit) -> ChaCha8Rng {
        let split = match split {
            LmSplit::Train => 0,
            LmSplit::Valid => 1,
            LmSplit::Test => 2,
        };
        rng(seed, split * 16 + self.index())
    }

    /// `n` examples with prompts of `context` tokens from the task's stream of `split`.
    pub fn examples(
        &self,
        cfg: &LmTaskConfig,
        context: usize,
        n: usize,
        seed: u64,
        split: LmSplit,
    ) -> Result<Vec<LmExample>> {
        self.check(cfg, context)?;
        let mut r = self.stream(seed, split);
        Ok((0..n).map(|_| self.draw(cfg, context, &mut r)).collect())
    }

    /// One example with a prompt of `context` tokens drawn from `r` (for training's
    /// endless stream; [`LmTask::examples`] checks the settings first, this panics on
    /// settings that do not fit).
    pub fn draw(&self, cfg: &LmTaskConfig, context: usize, r: &mut ChaCha8Rng) -> LmExample {
        assert!(
            context >= self.min_context(cfg),
            "task {self}: context {context} too short"
        );
        match self {
            LmTask::Passkey => passkey(cfg, context, r),
            LmTask::Recall => recall(cfg, context, 1, r),
            LmTask::Mqar => recall(cfg, context, cfg.queries, r),
        }
    }

    /// The answer recomputed from the prompt and the given answer tokens alone (scored
    /// positions are worked out, given ones copied): a check of the generator.
    pub fn solve(&self, cfg: &LmTaskConfig, ex: &LmExample) -> Result<Vec<u32>> {
        ensure!(
            ex.answer.len() == ex.given.len(),
            "{} answer tokens but {} given flags",
            ex.answer.len(),
            ex.given.len()
        );
        match self {
            LmTask::Passkey => {
                ensure!(
                    ex.prompt.last() == Some(&ASK),
                    "the prompt does not end in ASK"
                );
                let at: Vec<usize> = (0..ex.prompt.len())
                    .filter(|&i| ex.prompt[i] == KEY)
                    .collect();
                let [at] = at[..] else {
                    bail!("{} KEY markers, not one", at.len());
                };
                let m = cfg.passkey_digits as usize;
                let digits = ex
                    .prompt
                    .get(at + 1..at + 1 + m)
                    .context("the passkey is cut short")?;
                ensure!(
                    digits.iter().all(|t| (DIGIT0..DIGIT0 + 10).contains(t)),
                    "the passkey holds a non-digit"
                );
                Ok(digits.to_vec())
            }
            LmTask::Recall | LmTask::Mqar => {
                let n = ex.prompt.len();
                ensure!(
                    n >= 2 && ex.prompt[n - 2] == QUERY,
                    "the prompt does not end in QUERY key"
                );
                // The bindings: each key in the prompt (before QUERY) and the token after.
                let mut value = std::collections::HashMap::new();
                for i in 0..n - 2 {
                    let t = ex.prompt[i];
                    if cfg.is_key(t) {
                        let v = *ex.prompt.get(i + 1).context("a key ends the prompt")?;
                        ensure!(value.insert(t, v).is_none(), "key {t} is bound twice");
                    }
                }
                let lookup = |k: u32| {
                    value
                        .get(&k)
                        .copied()
                        .with_context(|| format!("key {k} is queried but not bound"))
                };
                let mut last_key = ex.prompt[n - 1];
                let mut out = Vec::with_capacity(ex.answer.len());
                for (&a, &given) in ex.answer.iter().zip(&ex.given) {
                    if given {
                        ensure!(cfg.is_key(a), "given token {a} is not a key");
                        last_key = a;
                        out.push(a);
                    } else {
                        out.push(lookup(last_key)?);
                    }
                }
                Ok(out)
            }
        }
    }
}

fn filler(cfg: &LmTaskConfig, r: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| cfg.filler_token(uniform(r, 0, cfg.filler_words)))
        .collect()
}

fn digit(r: &mut ChaCha8Rng) -> u32 {
    DIGIT0 + uniform(r, 0, 10)
}

fn passkey(cfg: &LmTaskConfig, context: usize, r: &mut ChaCha8Rng) -> LmExample {
    let m = cfg.passkey_digits as usize;
    // BOS, KEY + digits, ASK: the rest is filler, split by the passkey's depth.
    let room = context - 3 - m;
    let at = match cfg.passkey_depth_permille {
        Some(d) => (room as u64 * u64::from(d) + 500) / 1000,
        None => u64::from(uniform(r, 0, room as u32 + 1)),
    } as usize;
    let digits: Vec<u32> = (0..m).map(|_| digit(r)).collect();
    let fill = filler(cfg, r, room);
    let mut prompt = Vec::with_capacity(context);
    prompt.push(BOS);
    prompt.extend(&fill[..at]);
    prompt.push(KEY);
    prompt.extend(&digits);
    prompt.extend(&fill[at..]);
    prompt.push(ASK);
    debug_assert_eq!(prompt.len(), context);
    LmExample {
        prompt,
        given: vec![false; m],
        answer: digits,
    }
}

fn recall(cfg: &LmTaskConfig, context: usize, queries: u32, r: &mut ChaCha8Rng) -> LmExample {
    let pairs = cfg.pairs as usize;
    let keys = distinct(r, cfg.pairs, cfg.keys);
    let values: Vec<u32> = (0..pairs).map(|_| digit(r)).collect();
    // BOS, the bindings, QUERY and a key: the rest is filler, the bindings at sorted
    // random cut points of it (several may share one, then they are adjacent).
    let room = context - 3 - 2 * pairs;
    let mut cuts: Vec<u32> = (0..pairs).map(|_| uniform(r, 0, room as u32 + 1)).collect();
    cuts.sort_unstable();
    let fill = filler(cfg, r, room);
    let mut prompt = Vec::with_capacity(context);
    prompt.push(BOS);
    let mut from = 0;
    for (i, &cut) in cuts.iter().enumerate() {
        prompt.extend(&fill[from..cut as usize]);
        from = cut as usize;
        prompt.push(cfg.key_token(keys[i]));
        prompt.push(values[i]);
    }
    prompt.extend(&fill[from..]);
    let asked = distinct(r, queries, cfg.pairs);
    prompt.push(QUERY);
    prompt.push(cfg.key_token(keys[asked[0] as usize]));
    debug_assert_eq!(prompt.len(), context);
    let mut answer = Vec::new();
    let mut given = Vec::new();
    for (j, &q) in asked.iter().enumerate() {
        if j > 0 {
            answer.push(cfg.key_token(keys[q as usize]));
            given.push(true);
        }
        answer.push(values[q as usize]);
        given.push(false);
    }
    LmExample {
        prompt,
        answer,
        given,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_have_the_context_length_and_solve_back() {
        let cfg = LmTaskConfig::default();
        for task in [LmTask::Passkey, LmTask::Recall, LmTask::Mqar] {
            for context in [task.min_context(&cfg), 64, 257] {
                let xs = task.examples(&cfg, context, 50, 3, LmSplit::Test).unwrap();
                for x in &xs {
                    assert_eq!(x.prompt.len(), context);
                    assert_eq!(x.answer.len(), task.answer_len(&cfg));
                    assert_eq!(x.scored(), task.scored_len(&cfg));
                    assert_eq!(task.solve(&cfg, x).unwrap(), x.answer);
                    assert!(x.tokens().iter().all(|&t| t != PAD && t < cfg.vocab_size()));
                }
            }
        }
    }
}
