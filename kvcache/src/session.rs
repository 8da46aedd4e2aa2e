//! Decoding one sequence (batch 1) with a managed cache: the prompt in chunks, then one
//! token at a time. After every forward call and for every layer the session shows the
//! policy what the call's queries attended to, then drops the rows the policy let go.

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::cache::KvLayerCache;
use crate::model::lm::{rms_norm, DecoderLm};
use crate::policy::{CachePolicy, Observation};

/// What a session has cost so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionStats {
    /// Tokens processed (prompt and generated).
    pub tokens_seen: i64,
    /// Forward calls (prefill chunks and steps).
    pub calls: u64,
    /// Bytes of cached keys and values now, all layers.
    pub kv_bytes: u64,
    /// The most the cache held at any moment, counted after each layer appended its call's
    /// tokens (before the policy evicted) and after each eviction.
    pub peak_kv_bytes: u64,
    /// Cached tokens / tokens seen, averaged over layers and KV heads, sampled after each
    /// call: the latest sample (now), the mean and the largest.
    pub retained_fraction: f64,
    pub mean_retained_fraction: f64,
    pub peak_retained_fraction: f64,
    /// Time inside `CachePolicy::update` and the eviction gathers.
    pub policy_seconds: f64,
    /// The rest of the forward calls' time.
    pub forward_seconds: f64,
}

/// A decoding session over a [`DecoderLm`] with a cache policy.
pub struct Session<'a> {
    lm: &'a DecoderLm,
    policy: Box<dyn CachePolicy>,
    layers: Vec<KvLayerCache>,
    last_logits: Option<Tensor>,
    stats: SessionStats,
    /// Sum of retained-fraction samples, for the mean.
    retained_sum: f64,
    /// Running bytes of the whole cache, updated as layers append and evict.
    bytes_now: u64,
    precise_timing: bool,
    /// Whether the policy is asked after each call; off, the cache only grows (kvpress's
    /// protocol decodes so after compressing the prefill once).
    evicting: bool,
    /// Per layer, per KV head, the attention of the calls made while recording
    /// ([`Session::prefill_recorded`]).
    recorded: Option<Vec<Vec<Tensor>>>,
}

/// Shows `policy` one layer's call (its attention over the layer's cache) and drops the
/// rows it lets go; the cache's bytes after.
fn evict(
    policy: &mut dyn CachePolicy,
    cache: &mut KvLayerCache,
    layer: usize,
    attention: &[Tensor],
    now: i64,
) -> u64 {
    let keys = cache.keys();
    let positions = cache.positions();
    let keep = policy.update(&Observation {
        layer,
        attention,
        keys: &keys,
        positions: &positions,
        now,
    });
    // The views go before the retain rewrites the buffers under them.
    drop((keys, positions));
    cache.retain(&keep);
    cache.bytes()
}

fn first_precise(sessions: &[&mut Session]) -> bool {
    sessions.first().is_some_and(|s| s.precise_timing)
}

/// A prompt prefilled once with the full cache, its attention kept, from which sessions
/// under different policies are forked ([`Session::fork_compressed`]): kvpress's protocol
/// compresses only after the whole prompt, and the prompt's forward pass does not depend
/// on what a layer's policy evicts after it, so one prefill serves every policy.
pub struct SharedPrefill<'a> {
    session: Session<'a>,
    attention: Vec<Vec<Tensor>>,
    /// The logits `[vocab]` of the prompt's last token.
    pub logits: Tensor,
    /// Wall time of the prefill (no policy).
    pub seconds: f64,
}

impl<'a> Session<'a> {
    /// An empty session; resets the policy for the model's shape.
    pub fn new(lm: &'a DecoderLm, policy: Box<dyn CachePolicy>) -> Session<'a> {
        let mut s = Session {
            lm,
            policy,
            layers: Vec::new(),
            last_logits: None,
            stats: SessionStats::default(),
            retained_sum: 0.0,
            bytes_now: 0,
            precise_timing: lm.device().is_cuda(),
            evicting: true,
            recorded: None,
        };
        s.reset();
        s
    }

    /// Forgets the sequence (cache, statistics, the policy's state).
    pub fn reset(&mut self) {
        let cfg = self.lm.config();
        self.layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                KvLayerCache::new(
                    cfg.num_key_value_heads,
                    cfg.head_dim(),
                    self.lm.kind(),
                    self.lm.device(),
                )
            })
            .collect();
        self.policy.reset(
            cfg.num_hidden_layers as usize,
            cfg.num_key_value_heads as usize,
        );
        self.last_logits = None;
        self.stats = SessionStats::default();
        self.retained_sum = 0.0;
        self.bytes_now = 0;
    }

    /// On CUDA, synchronise the device around the policy's work so that its time is not
    /// charged to the forward pass (or the other way round). On by default on CUDA.
    pub fn set_precise_timing(&mut self, on: bool) {
        self.precise_timing = on;
    }

    /// Asks the policy after each call (the default) or not: then calls only append.
    pub fn set_evicting(&mut self, on: bool) {
        self.evicting = on;
    }

    /// Prefills `tokens` in one call with the full cache, keeping each layer's attention,
    /// for [`Session::fork_compressed`].
    pub fn prefill_recorded(lm: &'a DecoderLm, tokens: &[i64]) -> SharedPrefill<'a> {
        let mut session = Session::new(lm, Box::new(crate::policy::Full));
        session.set_evicting(false);
        session.recorded = Some(Vec::new());
        let t = Instant::now();
        let logits = session.prefill(tokens, tokens.len());
        let seconds = t.elapsed().as_secs_f64();
        let attention = session.recorded.take().expect("recording");
        SharedPrefill {
            session,
            attention,
            logits,
            seconds,
        }
    }

    /// A session under `policy` holding what it would hold had it prefilled the shared
    /// prompt in one call itself: the policy sees each layer's attention once and evicts,
    /// then the cache only grows (kvpress's protocol). Its statistics are the ones that
    /// session would have (the peak counted layer by layer as the forward pass appends
    /// and evicts); the policy's time is measured here, the forward pass's is the shared
    /// prefill's.
    pub fn fork_compressed(
        shared: &SharedPrefill<'a>,
        policy: Box<dyn CachePolicy>,
        headroom: i64,
    ) -> Session<'a> {
        let from = &shared.session;
        let mut s = Session::new(from.lm, policy);
        s.precise_timing = from.precise_timing;
        s.layers = from.layers.iter().map(|l| l.duplicate(headroom)).collect();
        s.last_logits = from.last_logits.as_ref().map(Tensor::shallow_clone);
        s.stats = from.stats.clone();
        let now = s.stats.tokens_seen - 1;
        let device = s.lm.device();
        Self::sync(s.precise_timing, device);
        let t = Instant::now();
        let (mut bytes, mut peak) = (0u64, 0u64);
        for (i, attention) in shared.attention.iter().enumerate() {
            let cache = &mut s.layers[i];
            let full = cache.bytes();
            bytes += full;
            peak = peak.max(bytes);
            bytes = bytes + evict(s.policy.as_mut(), cache, i, attention, now) - full;
        }
        Self::sync(s.precise_timing, device);
        let retained = s.retained_now();
        s.bytes_now = bytes;
        s.stats.peak_kv_bytes = peak;
        s.stats.policy_seconds = t.elapsed().as_secs_f64();
        // The one call's sample, as the session that prefilled alone took it.
        assert_eq!(
            s.stats.calls, 1,
            "fork_compressed: the shared prefill is one call"
        );
        s.stats.retained_fraction = retained;
        s.stats.mean_retained_fraction = retained;
        s.stats.peak_retained_fraction = retained;
        s.retained_sum = retained;
        s.evicting = false;
        s
    }

    /// One decoding step of several sessions over the same model and at the same
    /// position, none evicting (kvpress's protocol after compression): each session's
    /// `token`, each one's logits `[vocab]`. The projections, MLPs and output layer run on
    /// the batch, so the weights, which bound decoding on a CPU, are read once per step
    /// for all; each session attends over its own cache. Each session is charged its own
    /// attention's time and an equal share of the batched work.
    pub fn step_together(sessions: &mut [&mut Session<'a>], tokens: &[i64]) -> Vec<Tensor> {
        assert_eq!(sessions.len(), tokens.len(), "one token per session");
        let Some(first) = sessions.first() else {
            return Vec::new();
        };
        let lm = first.lm;
        let at = first.stats.tokens_seen;
        for s in sessions.iter() {
            assert!(
                std::ptr::eq(s.lm, lm),
                "step_together: sessions of one model"
            );
            assert_eq!(
                s.stats.tokens_seen, at,
                "step_together: sessions at one position"
            );
            assert!(
                !s.evicting && s.recorded.is_none(),
                "step_together: sessions that only append"
            );
        }
        tch::no_grad(|| {
            let start = Instant::now();
            let cfg = lm.config();
            let vocab = cfg.vocab_size;
            if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t >= vocab) {
                panic!("token {bad} is outside the vocabulary (size {vocab})");
            }
            let device = lm.device();
            let b = tokens.len() as i64;
            let ids = Tensor::from_slice(tokens).to_device(device).unsqueeze(1);
            let q_pos = Tensor::arange_start(at, at + 1, (Kind::Int64, device));
            let (cos, sin) = lm.rotary(&q_pos);
            let groups = cfg.kv_groups();
            let eps = cfg.rms_norm_eps;
            let mut own = vec![0.0f64; sessions.len()];
            let mut x = lm.embed(&ids);
            for (i, layer) in lm.layers.iter().enumerate() {
                let h = rms_norm(&x, &layer.input_norm, eps);
                let (q, k, v) = layer.project(&h, cfg, &cos, &sin);
                let mut outs = Vec::with_capacity(sessions.len());
                for (j, s) in sessions.iter_mut().enumerate() {
                    let t = Instant::now();
                    let cache = &mut s.layers[i];
                    let before = cache.bytes();
                    cache.append(&k.get(j as i64), &v.get(j as i64), &q_pos);
                    s.bytes_now = s.bytes_now + cache.bytes() - before;
                    s.stats.peak_kv_bytes = s.stats.peak_kv_bytes.max(s.bytes_now);
                    let (att, _) = cache.attend(&q.get(j as i64), &q_pos, groups);
                    outs.push(att);
                    own[j] += t.elapsed().as_secs_f64();
                }
                x = &x + layer.output(&Tensor::stack(&outs, 0));
                x = &x + layer.mlp(&rms_norm(&x, &layer.post_norm, eps));
            }
            let logits = lm.logits(&x).squeeze_dim(1).to_kind(Kind::Float);
            Self::sync(first_precise(sessions), device);
            let shared = (start.elapsed().as_secs_f64() - own.iter().sum::<f64>()).max(0.0);
            let mut out = Vec::with_capacity(sessions.len());
            for (j, s) in sessions.iter_mut().enumerate() {
                let l = logits.get(j as i64);
                s.last_logits = Some(l.shallow_clone());
                s.count_call(1);
                s.stats.forward_seconds += own[j] + shared / b as f64;
                out.push(l);
            }
            out
        })
    }

    /// Processes `tokens` (appended to whatever the session holds) in calls of `chunk`
    /// tokens; each call's queries attend to the cache and causally to the call itself.
    /// Returns the logits `[vocab]` of the last token.
    pub fn prefill(&mut self, tokens: &[i64], chunk: usize) -> Tensor {
        assert!(!tokens.is_empty(), "prefill: no tokens");
        assert!(chunk >= 1, "prefill: chunk must be at least 1 token");
        let mut last = None;
        for part in tokens.chunks(chunk) {
            last = Some(self.call(part, false));
        }
        last.expect("at least one chunk").select(0, 0)
    }

    /// One forward call over `tokens`: the logits `[len, vocab]` of every one of them
    /// (for perplexity under a policy).
    pub fn extend(&mut self, tokens: &[i64]) -> Tensor {
        assert!(!tokens.is_empty(), "extend: no tokens");
        self.call(tokens, true)
    }

    /// Feeds one token; returns the logits `[vocab]` of the next.
    pub fn step(&mut self, token: i64) -> Tensor {
        self.call(&[token], false).select(0, 0)
    }

    /// Greedy decoding after a prefill: `max_new` tokens, each fed back, so the session
    /// can go on from where it stops.
    pub fn generate_greedy(&mut self, max_new: usize) -> Vec<i64> {
        let mut out = Vec::with_capacity(max_new);
        for _ in 0..max_new {
            let logits = self
                .last_logits
                .as_ref()
                .expect("generate_greedy: prefill first");
            // Read back: the token is this function's output and the next call's input.
            let next = logits.argmax(-1, false).int64_value(&[]);
            out.push(next);
            let _ = self.step(next);
        }
        out
    }

    /// The logits `[vocab]` after the last call, if any.
    pub fn last_logits(&self) -> Option<&Tensor> {
        self.last_logits.as_ref()
    }

    pub fn stats(&self) -> SessionStats {
        let mut s = self.stats.clone();
        s.kv_bytes = self.bytes_now;
        s
    }

    /// Tokens held, `[layer][kv head]`.
    pub fn lens(&self) -> Vec<Vec<i64>> {
        self.layers.iter().map(KvLayerCache::lens).collect()
    }

    /// The positions (`[len_h]` int64) held by one layer's KV head: a copy, as the cache
    /// overwrites its buffers in place.
    pub fn positions(&self, layer: usize, head: usize) -> Tensor {
        self.layers[layer].positions()[head].copy()
    }

    /// The keys (`[len_h, head_dim]`, rotary applied) held by one layer's KV head (a copy).
    pub fn keys(&self, layer: usize, head: usize) -> Tensor {
        self.layers[layer].keys()[head].copy()
    }

    /// Makes room in every layer's cache for `tokens` more tokens, so that decoding them
    /// does not reallocate (the cache otherwise doubles as it fills). A reset forgets it.
    pub fn reserve(&mut self, tokens: i64) {
        for layer in &mut self.layers {
            layer.reserve(tokens);
        }
    }

    /// One layer's cache.
    pub fn layer_cache(&self, layer: usize) -> &KvLayerCache {
        &self.layers[layer]
    }

    pub fn policy(&self) -> &dyn CachePolicy {
        self.policy.as_ref()
    }

    /// Ends the session, giving the policy back (to reuse it on another sequence).
    pub fn into_policy(self) -> Box<dyn CachePolicy> {
        self.policy
    }

    /// The retained fraction now: cached tokens / tokens seen, averaged over layers and
    /// KV heads.
    fn retained_now(&self) -> f64 {
        let cfg = self.lm.config();
        let cached: i64 = self.layers.iter().flat_map(KvLayerCache::lens).sum();
        let slots = (cfg.num_hidden_layers * cfg.num_key_value_heads) as f64;
        cached as f64 / slots / self.stats.tokens_seen as f64
    }

    /// Counts a forward call of `tokens` tokens and samples the retained fraction after it.
    fn count_call(&mut self, tokens: i64) {
        self.stats.tokens_seen += tokens;
        self.stats.calls += 1;
        let retained = self.retained_now();
        self.stats.retained_fraction = retained;
        self.retained_sum += retained;
        self.stats.mean_retained_fraction = self.retained_sum / self.stats.calls as f64;
        self.stats.peak_retained_fraction = self.stats.peak_retained_fraction.max(retained);
    }

    /// Waits for the device when timing precisely on CUDA.
    fn sync(precise: bool, device: Device) {
        if let (true, Device::Cuda(i)) = (precise, device) {
            tch::Cuda::synchronize(i as i64);
        }
    }

    /// One forward call; logits `[c, vocab]` of every token or `[1, vocab]` of the last.
    fn call(&mut self, tokens: &[i64], all_logits: bool) -> Tensor {
        tch::no_grad(|| {
            let start = Instant::now();
            let lm = self.lm;
            let cfg = lm.config();
            let vocab = cfg.vocab_size;
            if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t >= vocab) {
                panic!("token {bad} is outside the vocabulary (size {vocab})");
            }
            let device = lm.device();
            let c = tokens.len() as i64;
            let first = self.stats.tokens_seen;
            let now = first + c - 1;
            // The call's tokens come from the host; this is its one upload.
            let ids = Tensor::from_slice(tokens).to_device(device).unsqueeze(0);
            let q_pos = Tensor::arange_start(first, first + c, (Kind::Int64, device));
            let (cos, sin) = lm.rotary(&q_pos);
            let groups = cfg.kv_groups();
            let eps = cfg.rms_norm_eps;
            let mut policy_time = 0.0;
            let mut x = lm.embed(&ids);
            for (i, layer) in lm.layers.iter().enumerate() {
                let h = rms_norm(&x, &layer.input_norm, eps);
                let (q, k, v) = layer.project(&h, cfg, &cos, &sin);
                let cache = &mut self.layers[i];
                let before = cache.bytes();
                cache.append(&k.squeeze_dim(0), &v.squeeze_dim(0), &q_pos);
                self.bytes_now = self.bytes_now + cache.bytes() - before;
                self.stats.peak_kv_bytes = self.stats.peak_kv_bytes.max(self.bytes_now);
                let (att, probs) = cache.attend(&q.squeeze_dim(0), &q_pos, groups);
                x = &x + layer.output(&att.unsqueeze(0));
                x = &x + layer.mlp(&rms_norm(&x, &layer.post_norm, eps));

                if let Some(rec) = self.recorded.as_mut() {
                    rec.push(probs);
                    continue;
                }
                if !self.evicting {
                    continue;
                }
                Self::sync(self.precise_timing, device);
                let t = Instant::now();
                let before = cache.bytes();
                self.bytes_now =
                    self.bytes_now + evict(self.policy.as_mut(), cache, i, &probs, now) - before;
                Self::sync(self.precise_timing, device);
                policy_time += t.elapsed().as_secs_f64();
            }
            let x = if all_logits { x } else { x.narrow(1, c - 1, 1) };
            let logits = lm.logits(&x).squeeze_dim(0).to_kind(Kind::Float);
            self.last_logits = Some(logits.get(logits.size()[0] - 1));
            Self::sync(self.precise_timing, device);

            self.count_call(c);
            self.stats.policy_seconds += policy_time;
            self.stats.forward_seconds += start.elapsed().as_secs_f64() - policy_time;
            logits
        })
    }
}
