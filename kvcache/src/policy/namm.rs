//! `namm`: a Neural Attention Memory Model (Cetin et al. 2024, "An Evolved Universal
//! Transformer Memory", arXiv 2410.13166), with the backward-attention memory network
//! (BAM) of the paper's reference configuration (SakanaAI/evo-memory,
//! `cfgs/run/namm_bam_i1.yaml`).
//!
//! Every `update_every` tokens, for each layer and KV head, each cached token is described
//! by the attention it received since the last update: the magnitude spectrogram of that
//! attention series (short-time Fourier transform, periodic Hann window, the previous
//! update's last `n_fft - hop` values prepended), reduced over its frames by an exponential
//! moving average kept with the token, normalised by running statistics, with a sinusoidal
//! encoding of the token's age in front. A small network scores every token from these
//! features, each token attending only to itself and to later tokens. Which tokens go is
//! [`Selection`]'s: by default the reference's shared count (every head of a layer keeps as
//! many tokens as the head that evicts least, its highest-scoring ones), or per head (each
//! head drops exactly its tokens scoring below zero). One parameter vector serves every
//! layer and head; it is evolved with
//! CMA-ES ([`crate::cmaes`]) from all zeros, which score every token 0 and so
//! keep everything.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

const NAME: &str = "namm";

/// Built from trained parameters ([`Namm::new`]), so no constructor by name.
pub const INFO: PolicyInfo = PolicyInfo {
    name: NAME,
    paper: "Cetin et al. 2024, An Evolved Universal Transformer Memory (arXiv:2410.13166)",
    keeps: "tokens a small evolved network scores above zero from their attention spectrogram",
    budgeted: false,
    build: None,
};
/// Floor of the normalising standard deviation (the reference's clamp).
const MIN_STD: f64 = 1e-7;

/// How the scores decide what a layer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// The reference's (`memory_policy/base_dynamic.py`, `threshold_score_idxs`): per layer,
    /// `d` = the fewest tokens any head scores below zero; every head keeps its `n - d`
    /// highest-scoring tokens (in order; ties keep the later token). So every head keeps as
    /// many as the head that evicts least, some of them below zero. The reference's mask of
    /// those (`new_mask`) only feeds statistics and auxiliary losses: attention still reads
    /// every kept row, as here.
    #[default]
    SharedCount,
    /// Each head keeps exactly its tokens scoring zero or more (xarena before the shared
    /// count; the figures in `docs/results/kv-cpu` were produced with it).
    PerHead,
}

impl Selection {
    pub fn name(self) -> &'static str {
        match self {
            Selection::SharedCount => "shared-count",
            Selection::PerHead => "per-head",
        }
    }
}

/// The policy's settings; the defaults are the reference configuration (see each field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NammConfig {
    /// Tokens between two updates (`memory_policy_fixed_delay: 512`); a multiple of `hop`.
    pub update_every: i64,
    /// STFT window length (`n_fft: 32`); even, so the one-sided spectrum has
    /// `n_fft / 2 + 1` bins.
    pub n_fft: i64,
    /// STFT hop (`hop_length: 16`); the previous update's last `n_fft - hop` attention
    /// values are prepended to the next series.
    pub hop: i64,
    /// EMA coefficient per query step (`embedding_ema_coeff: 0.99`): `ema_coeff^hop` per
    /// frame.
    pub ema_coeff: f64,
    /// Width of the age encoding (`recency_embed_dim: 8`); even (sines then cosines).
    pub recency_dim: i64,
    /// Largest period base of the age encoding (`recency_max_freq: 50000`).
    pub recency_max_freq: f64,
    /// The BAM's attention width (`scoring_attn_hidden_dim: 32`, one head).
    pub hidden_dim: i64,
    /// Normalise the spectrogram features by running statistics
    /// (`emb_online_output_normalization: true`).
    pub normalize: bool,
    /// How the scores select the kept tokens (the reference's shared count).
    pub selection: Selection,
}

impl Default for NammConfig {
    fn default() -> Self {
        NammConfig {
            update_every: 512,
            n_fft: 32,
            hop: 16,
            ema_coeff: 0.99,
            recency_dim: 8,
            recency_max_freq: 50000.0,
            hidden_dim: 32,
            normalize: true,
            selection: Selection::SharedCount,
        }
    }
}

impl NammConfig {
    pub fn validate(&self) -> Result<(), VariantError> {
        VariantError::positive(NAME, "update_every", self.update_every)?;
        VariantError::positive(NAME, "n_fft", self.n_fft)?;
        VariantError::positive(NAME, "hop", self.hop)?;
        VariantError::positive(NAME, "hidden_dim", self.hidden_dim)?;
        let bad = |m: String| Err(VariantError::config(NAME, m));
        if self.n_fft % 2 != 0 {
            return bad(format!("n_fft must be even, got {}", self.n_fft));
        }
        if self.hop > self.n_fft {
            return bad(format!(
                "hop ({}) must not exceed n_fft ({})",
                self.hop, self.n_fft
            ));
        }
        if self.update_every % self.hop != 0 {
            return bad(format!(
                "update_every ({}) must be a multiple of hop ({})",
                self.update_every, self.hop
            ));
        }
        if !(self.ema_coeff > 0.0 && self.ema_coeff < 1.0) {
            return bad(format!(
                "ema_coeff must lie strictly between 0 and 1, got {}",
                self.ema_coeff
            ));
        }
        if self.recency_dim < 0 || self.recency_dim % 2 != 0 {
            return bad(format!(
                "recency_dim must be even and non-negative, got {}",
                self.recency_dim
            ));
        }
        if !(self.recency_max_freq.is_finite() && self.recency_max_freq > 0.0) {
            return bad(format!(
                "recency_max_freq must be positive, got {}",
                self.recency_max_freq
            ));
        }
        Ok(())
    }

    /// Frequency bins of the one-sided spectrum.
    pub fn bins(&self) -> i64 {
        self.n_fft / 2 + 1
    }

    /// Features per token: the age encoding, then the spectrogram bins.
    pub fn input_dim(&self) -> i64 {
        self.recency_dim + self.bins()
    }

    /// Attention values carried from one update to the next.
    fn tail(&self) -> i64 {
        self.n_fft - self.hop
    }
}

/// Running per-bin mean and (population) variance of the EMA spectrogram features, merged
/// update after update (Chan et al.'s pairwise formulas, as the reference). The evolution
/// shares one instance among a population's policies ([`SharedNormStats`]), collects it
/// during its first generation and then freezes it; a checkpoint stores it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NormStats {
    /// Per bin; empty until the first update.
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    /// Tokens (feature rows) merged so far.
    pub count: u64,
    /// When set, updates read the statistics but no longer change them.
    pub frozen: bool,
}

/// One set of statistics shared by several policies (a population, every evaluation).
pub type SharedNormStats = Arc<Mutex<NormStats>>;

impl NormStats {
    pub fn shared(self) -> SharedNormStats {
        Arc::new(Mutex::new(self))
    }

    pub fn freeze(&mut self, frozen: bool) {
        self.frozen = frozen;
    }

    /// Adds a batch with its own mean, variance and count.
    pub fn merge(&mut self, mean: &[f64], var: &[f64], count: u64) {
        if count == 0 {
            return;
        }
        if self.count == 0 {
            self.mean = mean.to_vec();
            self.var = var.to_vec();
            self.count = count;
            return;
        }
        let total = self.count + count;
        let a = self.count as f64 / total as f64;
        let b = 1.0 - a;
        for i in 0..self.mean.len() {
            let d = mean[i] - self.mean[i];
            self.var[i] = a * self.var[i] + b * var[i] + d * d * a * b;
            self.mean[i] = a * self.mean[i] + b * mean[i];
        }
        self.count = total;
    }
}

/// One tensor of the flat parameter vector: `name`, `shape`, and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamBlock {
    pub name: &'static str,
    pub shape: Vec<i64>,
    pub offset: usize,
}

impl ParamBlock {
    pub fn len(&self) -> usize {
        self.shape.iter().product::<i64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The flat vector, in order (the reference's order, so its checkpoints map one to one);
/// weights are `[in, out]` row-major and act as `x @ W + b`. With `e` =
/// [`NammConfig::input_dim`] and `h` = `hidden_dim`:
/// - `qkv.weight [e, 3h]`, `qkv.bias [3h]`: output columns are the query, key and value;
/// - `out.weight [h, 2e]`, `out.bias [2e]`: columns `..e` are the residual `r`, `e..` the
///   multiplicative `m` of `x * (1 + m) + r`;
/// - `score.weight [e, 1]`, `score.bias [1]`: the linear score.
///
/// The default (`e` = 8 + 17 = 25, `h` = 32): 25·96 + 96 + 32·50 + 50 + 25 + 1 = 4172.
pub fn param_layout(cfg: &NammConfig) -> Vec<ParamBlock> {
    let (e, h) = (cfg.input_dim(), cfg.hidden_dim);
    let shapes: [(&'static str, Vec<i64>); 6] = [
        ("qkv.weight", vec![e, 3 * h]),
        ("qkv.bias", vec![3 * h]),
        ("out.weight", vec![h, 2 * e]),
        ("out.bias", vec![2 * e]),
        ("score.weight", vec![e, 1]),
        ("score.bias", vec![1]),
    ];
    let mut offset = 0;
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let block = ParamBlock {
                name,
                shape,
                offset,
            };
            offset += block.len();
            block
        })
        .collect()
}

/// The periodic Hann window folded into the real and imaginary DFT rows:
/// `[n_fft, 2 * bins]`, so that `frames @ M` gives the real parts then the imaginary parts
/// of the one-sided spectrum of each windowed frame.
pub fn windowed_dft(n_fft: i64, device: Device) -> Tensor {
    let n = n_fft as usize;
    let bins = n / 2 + 1;
    let mut m = vec![0f64; n * 2 * bins];
    for t in 0..n {
        let phase = 2.0 * std::f64::consts::PI * t as f64 / n as f64;
        let w = 0.5 - 0.5 * phase.cos();
        for k in 0..bins {
            let a = phase * k as f64;
            m[t * 2 * bins + k] = w * a.cos();
            m[t * 2 * bins + bins + k] = -w * a.sin();
        }
    }
    Tensor::from_slice(&m)
        .view([n_fft, 2 * bins as i64])
        .to_kind(Kind::Float)
        .to_device(device)
}

/// Magnitude spectrogram of each row of `series` `[rows, len]`: frames of `n_fft` values
/// every `hop` (no centering, no padding), periodic Hann window, one-sided, unnormalised
/// (`torch.stft(center=False, normalized=False, onesided=True).abs()`). Returns
/// `[rows, frames, n_fft / 2 + 1]` with `frames = 1 + (len - n_fft) / hop`.
pub fn spectrogram(series: &Tensor, n_fft: i64, hop: i64) -> Tensor {
    let dft = windowed_dft(n_fft, series.device()).to_kind(series.kind());
    spectrogram_with(series, &dft, n_fft, hop)
}

fn spectrogram_with(series: &Tensor, dft: &Tensor, n_fft: i64, hop: i64) -> Tensor {
    let bins = n_fft / 2 + 1;
    let parts = series.unfold(1, n_fft, hop).matmul(dft);
    let re = parts.narrow(2, 0, bins);
    let im = parts.narrow(2, bins, bins);
    (&re * &re + &im * &im).sqrt()
}

/// The age encoding `[len, dim]`: `sin(age * f_i)` then `cos(age * f_i)`, with
/// `f_i = max_freq^(-i / (dim / 2))`, computed in float64 (ages reach tens of thousands).
pub fn recency_encoding(age: &Tensor, dim: i64, max_freq: f64) -> Tensor {
    encode_age(age, &recency_freqs(dim, max_freq, age.device()))
}

/// The age encoding's frequencies `[dim / 2]` (f64) on `device`.
fn recency_freqs(dim: i64, max_freq: f64, device: Device) -> Tensor {
    let half = dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| max_freq.powf(-(i as f64) / half as f64))
        .collect();
    Tensor::from_slice(&freqs).to_device(device)
}

fn encode_age(age: &Tensor, freqs: &Tensor) -> Tensor {
    let angles = age.to_kind(Kind::Double).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[angles.sin(), angles.cos()], 1).to_kind(Kind::Float)
}

/// The network's tensors on one device.
struct Net {
    device: Device,
    w_qkv: Tensor,
    b_qkv: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    w_score: Tensor,
    b_score: Tensor,
    dft: Tensor,
    /// The age encoding's frequencies, uploaded once.
    freqs: Tensor,
    /// The EMA's frame weights `[1, frames, 1]` for the last number of frames asked (the
    /// same at every update but a last partial one), uploaded once per change.
    ema_weights: Option<(i64, Tensor)>,
}

impl Net {
    fn new(cfg: &NammConfig, params: &[f32], device: Device) -> Net {
        let t: Vec<Tensor> = param_layout(cfg)
            .iter()
            .map(|b| {
                Tensor::from_slice(&params[b.offset..b.offset + b.len()])
                    .view(b.shape.as_slice())
                    .to_device(device)
            })
            .collect();
        let [w_qkv, b_qkv, w_out, b_out, w_score, b_score]: [Tensor; 6] =
            t.try_into().expect("six parameter blocks");
        Net {
            device,
            w_qkv,
            b_qkv,
            w_out,
            b_out,
            w_score,
            b_score,
            dft: windowed_dft(cfg.n_fft, device),
            freqs: recency_freqs(cfg.recency_dim, cfg.recency_max_freq, device),
            ema_weights: None,
        }
    }

    /// Frame `j` of `frames` weighs `a^(frames-1-j) (1-a)`, with `a` the EMA coefficient
    /// per frame. Computed on the host (as it always was, so the figures stay the same).
    fn ema_weights(&mut self, frames: i64, per_frame: f64) -> Tensor {
        match &self.ema_weights {
            Some((f, w)) if *f == frames => w.shallow_clone(),
            _ => {
                let weights: Vec<f32> = (0..frames)
                    .map(|j| (per_frame.powi((frames - 1 - j) as i32) * (1.0 - per_frame)) as f32)
                    .collect();
                let w = Tensor::from_slice(&weights)
                    .to_device(self.device)
                    .view([1, frames, 1]);
                self.ema_weights = Some((frames, w.shallow_clone()));
                w
            }
        }
    }

    /// Scores `[n]` of the features `x` `[n, e]` of one head's tokens, oldest first.
    fn scores(&self, x: &Tensor, hidden: i64) -> Tensor {
        let n = x.size()[0];
        let e = x.size()[1];
        let qkv = x.matmul(&self.w_qkv) + &self.b_qkv;
        // Token i attends to tokens j >= i: reversed, that is the ordinary causal mask,
        // which the fused kernels take without an n x n mask.
        let part = |i: i64| {
            qkv.narrow(1, i * hidden, hidden)
                .flip([0])
                .view([1, 1, n, hidden])
        };
        let att = Tensor::scaled_dot_product_attention(
            &part(0),
            &part(1),
            &part(2),
            None::<Tensor>,
            0.0,
            true,
            None,
            false,
        )
        .view([n, hidden])
        .flip([0]);
        let o = att.matmul(&self.w_out) + &self.b_out;
        let r = o.narrow(1, 0, e);
        let m = o.narrow(1, e, e);
        let h = x * (m + 1.0) + r;
        h.matmul(&self.w_score).view([n]) + &self.b_score
    }
}

/// What one KV head keeps between updates.
#[derive(Default)]
struct HeadState {
    /// Attention rows `[queries, len]` since the last update, each as long as the cache
    /// was then (shorter than now: the cache only grows between updates).
    pending: Vec<Tensor>,
    /// `[tokens at the last update, bins]`: the EMA of each token's spectrogram.
    ema: Option<Tensor>,
    /// `[tokens at the last update, n_fft - hop]`: each token's last attention values.
    tail: Option<Tensor>,
}

#[derive(Default)]
struct LayerState {
    /// Query rows in `pending` (the same for every head).
    pending_rows: i64,
    heads: Vec<HeadState>,
}

/// The policy: one parameter vector for every layer and head, per-token state per layer
/// and head.
pub struct Namm {
    cfg: NammConfig,
    params: Vec<f32>,
    stats: SharedNormStats,
    net: Option<Net>,
    layers: Vec<LayerState>,
}

impl Namm {
    /// A policy with fresh, unfrozen statistics.
    pub fn new(cfg: NammConfig, params: &[f32]) -> Result<Namm, VariantError> {
        Self::with_stats(cfg, params, NormStats::default().shared())
    }

    /// A policy that reads and (unless frozen) updates the given statistics.
    pub fn with_stats(
        cfg: NammConfig,
        params: &[f32],
        stats: SharedNormStats,
    ) -> Result<Namm, VariantError> {
        cfg.validate()?;
        let expected = Self::num_params(&cfg);
        if params.len() != expected {
            return Err(VariantError::Params {
                variant: NAME.to_string(),
                message: format!(
                    "expected {expected} parameters for this configuration, got {}",
                    params.len()
                ),
            });
        }
        if let Some(i) = params.iter().position(|p| !p.is_finite()) {
            return Err(VariantError::Params {
                variant: NAME.to_string(),
                message: format!("parameter {i} is not finite ({})", params[i]),
            });
        }
        {
            let s = stats.lock().unwrap_or_else(|e| e.into_inner());
            let bins = cfg.bins() as usize;
            if s.count > 0 && (s.mean.len() != bins || s.var.len() != bins) {
                return Err(VariantError::config(
                    NAME,
                    format!(
                        "the normalisation statistics hold {} bins, this configuration has {bins}",
                        s.mean.len()
                    ),
                ));
            }
        }
        Ok(Namm {
            cfg,
            params: params.to_vec(),
            stats,
            net: None,
            layers: Vec::new(),
        })
    }

    /// Length of the flat parameter vector (see [`param_layout`]).
    pub fn num_params(cfg: &NammConfig) -> usize {
        param_layout(cfg).iter().map(ParamBlock::len).sum()
    }

    pub fn config(&self) -> &NammConfig {
        &self.cfg
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The statistics this policy normalises with (shared: clone the handle).
    pub fn stats(&self) -> SharedNormStats {
        self.stats.clone()
    }

    fn net(&mut self, device: Device) -> &mut Net {
        if self.net.as_ref().map(|n| n.device) != Some(device) {
            self.net = Some(Net::new(&self.cfg, &self.params, device));
        }
        self.net.as_mut().unwrap()
    }

    /// The network's scores `[n]` for one head's token features `[n, input_dim]` (f32),
    /// oldest token first.
    pub fn scores(&mut self, features: &Tensor) -> Tensor {
        let hidden = self.cfg.hidden_dim;
        tch::no_grad(|| self.net(features.device()).scores(features, hidden))
    }

    /// The EMA spectrogram `[tokens, bins]` of one head's tokens as of the last update
    /// (before normalisation), or `None` before the first.
    pub fn token_ema(&self, layer: usize, head: usize) -> Option<Tensor> {
        let h = self.layers.get(layer)?.heads.get(head)?;
        h.ema.as_ref().map(|t| t.shallow_clone())
    }

    /// Scores, then keeps, for every head of a layer whose pending attention reached
    /// `update_every` rows.
    fn act(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        let cfg = self.cfg.clone();
        let device = obs.attention[0].device();
        let (bins, tail_len, hop) = (cfg.bins(), cfg.tail(), cfg.hop);
        let rows = self.layers[obs.layer].pending_rows;
        // Whole hops only; the rest waits for the next update.
        let used = rows / hop * hop;
        let frames = used / hop;
        let per_frame = cfg.ema_coeff.powi(hop as i32);
        let net = self.net(device);
        let dft = net.dft.shallow_clone();
        let weights = net.ema_weights(frames, per_frame);
        let state = &mut self.layers[obs.layer];
        // The old EMA decays by a^F.
        let decay = per_frame.powi(frames as i32);

        let mut carried = Vec::with_capacity(state.heads.len());
        for (h, head) in state.heads.iter_mut().enumerate() {
            let len = obs.attention[h].size()[1];
            let all = Tensor::zeros([rows, len], (Kind::Float, device));
            let mut row = 0;
            for chunk in head.pending.drain(..) {
                let (q, l) = (chunk.size()[0], chunk.size()[1]);
                assert!(
                    l <= len,
                    "namm: layer {} head {h}: pending attention over {l} tokens, cache holds {len}",
                    obs.layer
                );
                all.narrow(0, row, q)
                    .narrow(1, 0, l)
                    .copy_(&chunk.to_kind(Kind::Float));
                row += q;
            }
            let old = head.ema.as_ref().map_or(0, |t| t.size()[0]);
            assert!(
                old <= len,
                "namm: layer {} head {h}: {old} tokens at the last update, cache holds {len}",
                obs.layer
            );
            let fresh = |w: i64| Tensor::zeros([len - old, w], (Kind::Float, device));
            let tail = match &head.tail {
                Some(t) => Tensor::cat(&[t.shallow_clone(), fresh(tail_len)], 0),
                None => fresh(tail_len),
            };
            let series = Tensor::cat(&[tail, all.narrow(0, 0, used).tr()], 1);
            let mags = spectrogram_with(&series, &dft, cfg.n_fft, hop);
            let recent = (mags * &weights).sum_dim_intlist(1, false, Kind::Float);
            let ema = match &head.ema {
                Some(prev) => recent + Tensor::cat(&[prev * decay, fresh(bins)], 0),
                None => recent,
            };
            head.tail = Some(series.narrow(1, used, tail_len));
            head.ema = Some(ema);
            // A copy, so that the whole buffer is not kept alive by the few rows left.
            carried.push(all.narrow(0, used, rows - used).copy());
        }
        state.pending_rows = rows - used;

        let norm = if cfg.normalize {
            self.normalisation(obs.layer, device)
        } else {
            None
        };
        let net = self.net.as_ref().unwrap();
        let state = &mut self.layers[obs.layer];
        // Every head's scores, the newest token's set to +inf: it always stays (the
        // reference sets it to +max).
        let scores: Vec<Option<Tensor>> = state
            .heads
            .iter()
            .enumerate()
            .map(|(h, head)| {
                let ema = head.ema.as_ref().unwrap();
                let len = ema.size()[0];
                if len == 0 {
                    return None;
                }
                let spec = match &norm {
                    Some((mean, std)) => (ema - mean) / std,
                    None => ema.shallow_clone(),
                };
                let age = obs.now - &obs.positions[h];
                let rec = encode_age(&age, &net.freqs);
                let x = Tensor::cat(&[rec, spec], 1);
                let s = net.scores(&x, cfg.hidden_dim);
                let _ = s.narrow(0, len - 1, 1).fill_(f64::INFINITY);
                Some(s)
            })
            .collect();
        let kept = select(&scores, cfg.selection);
        let mut keep = Vec::with_capacity(state.heads.len());
        for ((head, rest), idx) in state.heads.iter_mut().zip(carried).zip(kept) {
            let Some(idx) = idx else {
                if rest.size()[0] > 0 {
                    head.pending.push(rest);
                }
                keep.push(None);
                continue;
            };
            let ema = head.ema.as_ref().unwrap();
            head.ema = Some(ema.index_select(0, &idx));
            head.tail = head.tail.as_ref().map(|t| t.index_select(0, &idx));
            if rest.size()[0] > 0 {
                head.pending.push(rest.index_select(1, &idx));
            }
            keep.push(Some(idx));
        }
        keep
    }

    /// Merges this layer's EMA features into the statistics (unless frozen) and returns
    /// the mean and floored standard deviation to normalise with, or `None` while the
    /// statistics are empty.
    ///
    /// The statistics live on the host (a population's policies share them, a checkpoint
    /// stores them), so this reads back and uploads once per update, not per token.
    fn normalisation(&self, layer: usize, device: Device) -> Option<(Tensor, Tensor)> {
        let emas: Vec<Tensor> = self.layers[layer]
            .heads
            .iter()
            .filter_map(|h| h.ema.as_ref().map(|t| t.to_kind(Kind::Double)))
            .collect();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        if !stats.frozen && !emas.is_empty() {
            let all = Tensor::cat(&emas, 0);
            let count = all.size()[0];
            if count > 0 {
                let mean = all.mean_dim(0, false, Kind::Double);
                let var = (&all - &mean).square().mean_dim(0, false, Kind::Double);
                let mean = Vec::<f64>::try_from(&mean.to_device(Device::Cpu)).unwrap();
                let var = Vec::<f64>::try_from(&var.to_device(Device::Cpu)).unwrap();
                stats.merge(&mean, &var, count as u64);
            }
        }
        if stats.count == 0 {
            return None;
        }
        let mean = Tensor::from_slice(&stats.mean).to_kind(Kind::Float);
        let std = Tensor::from_slice(&stats.var)
            .sqrt()
            .clamp_min(MIN_STD)
            .to_kind(Kind::Float);
        Some((mean.to_device(device), std.to_device(device)))
    }
}

/// The rows each head of a layer keeps, in order, from its scores `[n]` (`None`: an empty
/// head, or one that keeps every row). Threshold zero (a score of zero stays).
///
/// One host read per head, and needed: whether rows go, and how many stay, sets the
/// cache's shapes. Once per update (every `update_every` tokens), not per token.
pub fn select(scores: &[Option<Tensor>], selection: Selection) -> Vec<Option<Tensor>> {
    match selection {
        Selection::PerHead => scores
            .iter()
            .map(|s| {
                let kept = s.as_ref()?.ge(0.0);
                if kept.all().int64_value(&[]) != 0 {
                    return None;
                }
                Some(kept.nonzero().view([-1]))
            })
            .collect(),
        Selection::SharedCount => {
            // d: the fewest tokens below zero in any head (the reference's
            // `torch.min(first_above_thresh)`); every head drops its d lowest.
            let below: Vec<Option<i64>> = scores
                .iter()
                .map(|s| {
                    s.as_ref()
                        .map(|s| s.lt(0.0).sum(Kind::Int64).int64_value(&[]))
                })
                .collect();
            let d = below.iter().flatten().copied().min().unwrap_or(0);
            scores
                .iter()
                .map(|s| {
                    let s = s.as_ref()?;
                    if d == 0 {
                        return None;
                    }
                    let n = s.size()[0];
                    // Ascending and stable: among equal scores the earlier goes first.
                    let (_, order) = s.sort_stable(true, 0, false);
                    let (idx, _) = order.narrow(0, d, n - d).sort(0, false);
                    Some(idx)
                })
                .collect()
        }
    }
}

impl CachePolicy for Namm {
    fn describe(&self) -> String {
        format!(
            "namm:update_every={},selection={}",
            self.cfg.update_every,
            self.cfg.selection.name()
        )
    }

    fn reset(&mut self, layers: usize, kv_heads: usize) {
        self.layers = (0..layers)
            .map(|_| LayerState {
                pending_rows: 0,
                heads: (0..kv_heads).map(|_| HeadState::default()).collect(),
            })
            .collect();
    }

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        let n_layers = self.layers.len();
        let state = self.layers.get_mut(obs.layer).unwrap_or_else(|| {
            panic!(
                "namm: layer {} observed, reset for {n_layers} layers",
                obs.layer
            )
        });
        let heads = obs.attention.len();
        assert!(
            heads == state.heads.len() && obs.positions.len() == heads,
            "namm: layer {}: {heads} attention and {} position tensors, reset for {} heads",
            obs.layer,
            obs.positions.len(),
            state.heads.len()
        );
        let rows = obs.attention[0].size()[0];
        for (head, att) in state.heads.iter_mut().zip(obs.attention) {
            head.pending.push(att.detach());
        }
        state.pending_rows += rows;
        if state.pending_rows < self.cfg.update_every {
            return (0..heads).map(|_| None).collect();
        }
        tch::no_grad(|| self.act(obs))
    }
}
