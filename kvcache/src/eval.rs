//! Decoding one prompt under a cache policy and scoring the answer: the prompt in chunks
//! (the policy sees every chunk and evicts as it goes), then the answer token by token,
//! greedy (given tokens, MQAR's later keys, are fed as they are). Every answer token is
//! fed back, so each example has at least one decoding step to time.

use std::time::Instant;

use crate::{CachePolicy, DecoderLm, Session, SessionStats};
use serde::{Deserialize, Serialize};
use tch::Tensor;
use xarena_datasets::lm_tasks::LmExample;

/// What decoding one example measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The answer the model gave (given tokens copied).
    pub produced: Vec<u32>,
    /// Fraction of the scored answer tokens right.
    pub score: f64,
    /// Wall time of the prefill (the policy's work included) and the policy's share.
    pub prefill_seconds: f64,
    pub prefill_policy_seconds: f64,
    /// Decoding steps, their wall time and the policy's share.
    pub decode_steps: u64,
    pub decode_seconds: f64,
    pub decode_policy_seconds: f64,
    /// The session's statistics at the end (`retained_fraction`: the cache kept then).
    pub stats: SessionStats,
}

fn argmax(logits: &Tensor) -> u32 {
    logits.argmax(-1, false).int64_value(&[]) as u32
}

/// How a prompt meets the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The prompt in chunks, the policy after each chunk and each decoded token, so the
    /// cache stays within its budget the whole time (the NAMM paper's setting).
    #[default]
    Chunked,
    /// kvpress's: the whole prompt in one call, the policy once after it, then decoding
    /// with the cache growing and no further eviction.
    Kvpress,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Chunked => "chunked",
            Protocol::Kvpress => "kvpress",
        })
    }
}

/// Decodes `ex` with `policy` (reset first), prefilling `chunk` tokens per call; gives
/// the policy back for the next example.
pub fn decode(
    lm: &DecoderLm,
    policy: Box<dyn CachePolicy>,
    ex: &LmExample,
    chunk: usize,
) -> (Decoded, Box<dyn CachePolicy>) {
    decode_under(lm, policy, ex, chunk, Protocol::Chunked)
}

/// A session after its prompt: the last logits, the prefill's wall time and the
/// statistics then.
struct Prefilled<'a> {
    session: Session<'a>,
    logits: Tensor,
    prefill_seconds: f64,
    after_prefill: SessionStats,
}

/// Prefills `prompt` under `protocol`: in chunks of `chunk` with the policy after each,
/// or (kvpress) in one call, compressed once, the policy then left out while decoding.
fn prefill<'a>(
    lm: &'a DecoderLm,
    policy: Box<dyn CachePolicy>,
    prompt: &[u32],
    chunk: usize,
    protocol: Protocol,
) -> Prefilled<'a> {
    let prompt: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let mut session = Session::new(lm, policy);
    let chunk = match protocol {
        Protocol::Chunked => chunk,
        Protocol::Kvpress => prompt.len(),
    };
    let t = Instant::now();
    let logits = session.prefill(&prompt, chunk);
    if protocol == Protocol::Kvpress {
        session.set_evicting(false);
    }
    let prefill_seconds = t.elapsed().as_secs_f64();
    let after_prefill = session.stats();
    Prefilled {
        session,
        logits,
        prefill_seconds,
        after_prefill,
    }
}

/// As [`decode`], under `protocol` (`chunk` is used by [`Protocol::Chunked`] only).
pub fn decode_under(
    lm: &DecoderLm,
    policy: Box<dyn CachePolicy>,
    ex: &LmExample,
    chunk: usize,
    protocol: Protocol,
) -> (Decoded, Box<dyn CachePolicy>) {
    answer_tokens(prefill(lm, policy, &ex.prompt, chunk, protocol), ex)
}

/// The answer of `ex` after its prompt: greedy, given tokens copied, each fed back.
fn answer_tokens(prefilled: Prefilled, ex: &LmExample) -> (Decoded, Box<dyn CachePolicy>) {
    let Prefilled {
        mut session,
        mut logits,
        prefill_seconds,
        after_prefill,
    } = prefilled;
    let t = Instant::now();
    let mut produced = Vec::with_capacity(ex.answer.len());
    for (&truth, &given) in ex.answer.iter().zip(&ex.given) {
        let token = if given { truth } else { argmax(&logits) };
        produced.push(token);
        logits = session.step(i64::from(token));
    }
    let decode_seconds = t.elapsed().as_secs_f64();
    let score = ex.score(&produced);
    finish(
        session,
        produced,
        score,
        prefill_seconds,
        &after_prefill,
        decode_seconds,
    )
}

/// What a session decoded after its prefill: `produced`, scored `score`, in
/// `decode_seconds`; its statistics and the policy's time from the session, less what
/// the prefill had (`after_prefill`). Gives the policy back.
fn finish(
    session: Session,
    produced: Vec<u32>,
    score: f64,
    prefill_seconds: f64,
    after_prefill: &crate::SessionStats,
    decode_seconds: f64,
) -> (Decoded, Box<dyn CachePolicy>) {
    let stats = session.stats();
    let decoded = Decoded {
        score,
        decode_steps: produced.len() as u64,
        produced,
        prefill_seconds,
        prefill_policy_seconds: after_prefill.policy_seconds,
        decode_seconds,
        decode_policy_seconds: stats.policy_seconds - after_prefill.policy_seconds,
        stats,
    };
    (decoded, session.into_policy())
}

/// A session forked from a shared prefill, decoding with the others.
struct Forked<'a> {
    session: Session<'a>,
    logits: Tensor,
    prefill_seconds: f64,
    after_prefill: crate::SessionStats,
    produced: Vec<u32>,
    done: bool,
}

impl Forked<'_> {
    /// What it decoded (no policy runs while decoding under kvpress's protocol; the
    /// decoding time is its own attention and its share of the batched steps).
    fn decoded(self, score: f64) -> (Decoded, Box<dyn CachePolicy>) {
        let decode_seconds =
            self.session.stats().forward_seconds - self.after_prefill.forward_seconds;
        finish(
            self.session,
            self.produced,
            score,
            self.prefill_seconds,
            &self.after_prefill,
            decode_seconds,
        )
    }
}

/// kvpress's protocol for several policies at once: the prompt prefilled once with the
/// full cache (its attention kept), a session per policy forked from it and compressed
/// as if that policy had prefilled alone ([`Session::fork_compressed`]), then all of
/// them decoded in one batch ([`Session::step_together`]): `choose` gives each step's
/// token from a session's logits, or `None` to stop that session; at most `max_steps`.
/// Each policy's prefill time is the shared prefill's plus its own compression.
fn decode_shared<'a>(
    lm: &'a DecoderLm,
    policies: Vec<Box<dyn CachePolicy>>,
    prompt: &[u32],
    max_steps: usize,
    mut choose: impl FnMut(usize, &Tensor) -> Option<u32>,
) -> Vec<Forked<'a>> {
    let prompt: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let shared = Session::prefill_recorded(lm, &prompt);
    let mut forks: Vec<Forked> = policies
        .into_iter()
        .map(|policy| {
            let session = Session::fork_compressed(&shared, policy, max_steps as i64);
            let after_prefill = session.stats();
            Forked {
                logits: shared.logits.shallow_clone(),
                prefill_seconds: shared.seconds + after_prefill.policy_seconds,
                after_prefill,
                session,
                produced: Vec::with_capacity(max_steps),
                done: false,
            }
        })
        .collect();
    // The prompt's attention is no longer needed.
    drop(shared);
    for step in 0..max_steps {
        let mut tokens = Vec::with_capacity(forks.len());
        for f in forks.iter_mut().filter(|f| !f.done) {
            match choose(step, &f.logits) {
                Some(t) => {
                    f.produced.push(t);
                    tokens.push(i64::from(t));
                }
                None => f.done = true,
            }
        }
        if tokens.is_empty() {
            break;
        }
        let mut active: Vec<&mut Forked> = forks.iter_mut().filter(|f| !f.done).collect();
        let mut sessions: Vec<&mut Session<'a>> =
            active.iter_mut().map(|f| &mut f.session).collect();
        let logits = Session::step_together(&mut sessions, &tokens);
        for (f, l) in active.into_iter().zip(logits) {
            f.logits = l;
        }
    }
    forks
}

/// Totals over several examples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub examples: u64,
    pub score_sum: f64,
    pub prefill_seconds: f64,
    pub prefill_policy_seconds: f64,
    pub decode_steps: u64,
    pub decode_seconds: f64,
    pub decode_policy_seconds: f64,
    pub mean_retained_sum: f64,
    pub final_retained_sum: f64,
    pub peak_retained: f64,
    pub peak_kv_bytes: u64,
}

impl Totals {
    pub fn add(&mut self, d: &Decoded) {
        self.examples += 1;
        self.score_sum += d.score;
        self.prefill_seconds += d.prefill_seconds;
        self.prefill_policy_seconds += d.prefill_policy_seconds;
        self.decode_steps += d.decode_steps;
        self.decode_seconds += d.decode_seconds;
        self.decode_policy_seconds += d.decode_policy_seconds;
        self.mean_retained_sum += d.stats.mean_retained_fraction;
        self.final_retained_sum += d.stats.retained_fraction;
        self.peak_retained = self.peak_retained.max(d.stats.peak_retained_fraction);
        self.peak_kv_bytes = self.peak_kv_bytes.max(d.stats.peak_kv_bytes);
    }

    fn per_example(&self, sum: f64) -> f64 {
        sum / self.examples.max(1) as f64
    }

    pub fn score(&self) -> f64 {
        self.per_example(self.score_sum)
    }

    pub fn mean_retained(&self) -> f64 {
        self.per_example(self.mean_retained_sum)
    }

    pub fn final_retained(&self) -> f64 {
        self.per_example(self.final_retained_sum)
    }
}

/// Decodes every example with one policy (reset per example) and adds them up.
pub fn decode_all(
    lm: &DecoderLm,
    policy: Box<dyn CachePolicy>,
    examples: &[LmExample],
    chunk: usize,
) -> (Totals, Box<dyn CachePolicy>) {
    decode_all_under(lm, policy, examples, chunk, Protocol::Chunked)
}

/// As [`decode_all`], under `protocol`.
pub fn decode_all_under(
    lm: &DecoderLm,
    mut policy: Box<dyn CachePolicy>,
    examples: &[LmExample],
    chunk: usize,
    protocol: Protocol,
) -> (Totals, Box<dyn CachePolicy>) {
    let mut totals = Totals::default();
    for ex in examples {
        let (d, p) = decode_under(lm, policy, ex, chunk, protocol);
        policy = p;
        totals.add(&d);
    }
    (totals, policy)
}

/// A text prompt (RULER's tasks on a real model): its tokens, the strings the answer must
/// hold, and the most tokens to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct TextPrompt {
    pub tokens: Vec<u32>,
    pub answers: Vec<String>,
    pub max_new: usize,
}

/// Decodes `p` greedily with `policy` (reset first) until a `stop` token or `max_new`
/// tokens; the output, detokenized by `detok`, scored by RULER's string match (the
/// fraction of the answers found in it, case-insensitive).
pub fn decode_text_under(
    lm: &DecoderLm,
    policy: Box<dyn CachePolicy>,
    p: &TextPrompt,
    chunk: usize,
    protocol: Protocol,
    stop: &[u32],
    detok: &dyn Fn(&[u32]) -> String,
) -> (Decoded, String, Box<dyn CachePolicy>) {
    answer_text(
        prefill(lm, policy, &p.tokens, chunk, protocol),
        p,
        stop,
        detok,
    )
}

/// The greedy answer to `p` after its prompt, until a `stop` token or `max_new` tokens.
fn answer_text(
    prefilled: Prefilled,
    p: &TextPrompt,
    stop: &[u32],
    detok: &dyn Fn(&[u32]) -> String,
) -> (Decoded, String, Box<dyn CachePolicy>) {
    let Prefilled {
        mut session,
        mut logits,
        prefill_seconds,
        after_prefill,
    } = prefilled;
    let t = Instant::now();
    let mut produced = Vec::with_capacity(p.max_new);
    for _ in 0..p.max_new {
        let token = argmax(&logits);
        if stop.contains(&token) {
            break;
        }
        produced.push(token);
        logits = session.step(i64::from(token));
    }
    let decode_seconds = t.elapsed().as_secs_f64();
    let text = detok(&produced);
    let score = xarena_datasets::ruler::string_match_all(&text, &p.answers);
    let (decoded, policy) = finish(
        session,
        produced,
        score,
        prefill_seconds,
        &after_prefill,
        decode_seconds,
    );
    (decoded, text, policy)
}

/// As [`decode_all_under`] for text prompts; also gives each output text.
pub fn decode_text_all_under(
    lm: &DecoderLm,
    mut policy: Box<dyn CachePolicy>,
    prompts: &[TextPrompt],
    chunk: usize,
    protocol: Protocol,
    stop: &[u32],
    detok: &dyn Fn(&[u32]) -> String,
) -> (Totals, Vec<(String, f64)>, Box<dyn CachePolicy>) {
    let mut totals = Totals::default();
    let mut outputs = Vec::with_capacity(prompts.len());
    for p in prompts {
        let (d, text, back) = decode_text_under(lm, policy, p, chunk, protocol, stop, detok);
        policy = back;
        outputs.push((text, d.score));
        totals.add(&d);
    }
    (totals, outputs, policy)
}

/// Several policies' decoding of the same examples under kvpress's protocol, each
/// prompt prefilled once for all of them and their answers decoded in one batch
/// ([`decode_shared`]): what [`decode_all_under`] with [`Protocol::Kvpress`] gives each
/// policy, at one prefill and one pass over the weights per step for all policies.
pub fn decode_all_shared(
    lm: &DecoderLm,
    mut policies: Vec<Box<dyn CachePolicy>>,
    examples: &[LmExample],
) -> (Vec<Totals>, Vec<Box<dyn CachePolicy>>) {
    let mut totals = vec![Totals::default(); policies.len()];
    for ex in examples {
        let forks = decode_shared(lm, policies, &ex.prompt, ex.answer.len(), |step, logits| {
            Some(if ex.given[step] {
                ex.answer[step]
            } else {
                argmax(logits)
            })
        });
        policies = Vec::with_capacity(forks.len());
        for (t, f) in totals.iter_mut().zip(forks) {
            let score = ex.score(&f.produced);
            let (d, p) = f.decoded(score);
            t.add(&d);
            policies.push(p);
        }
    }
    (totals, policies)
}

/// What one policy decoded over several text prompts: totals and each output with its
/// score.
pub type TextOutcome = (Totals, Vec<(String, f64)>);

/// As [`decode_all_shared`] for text prompts (each policy's outputs as
/// [`decode_text_all_under`] gives them).
pub fn decode_text_all_shared(
    lm: &DecoderLm,
    mut policies: Vec<Box<dyn CachePolicy>>,
    prompts: &[TextPrompt],
    stop: &[u32],
    detok: &dyn Fn(&[u32]) -> String,
) -> (Vec<TextOutcome>, Vec<Box<dyn CachePolicy>>) {
    let mut out: Vec<TextOutcome> = (0..policies.len())
        .map(|_| (Totals::default(), Vec::with_capacity(prompts.len())))
        .collect();
    for p in prompts {
        let forks = decode_shared(lm, policies, &p.tokens, p.max_new, |_, logits| {
            Some(argmax(logits)).filter(|t| !stop.contains(t))
        });
        policies = Vec::with_capacity(forks.len());
        for ((totals, outputs), f) in out.iter_mut().zip(forks) {
            let text = detok(&f.produced);
            let score = xarena_datasets::ruler::string_match_all(&text, &p.answers);
            let (d, back) = f.decoded(score);
            outputs.push((text, d.score));
            totals.add(&d);
            policies.push(back);
        }
    }
    (out, policies)
}
