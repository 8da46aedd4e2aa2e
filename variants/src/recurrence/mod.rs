//! Recurrence: a language model that reads its input segment by segment and carries a
//! cache of earlier hidden states from one segment to the next (Transformer-XL), possibly
//! compressed (Compressive Transformer).
//!
//! The pieces both variants share live here: the segment plan (which earlier tokens a
//! segment sees), the pre-norm layer with Transformer-XL's relative positional attention,
//! the stack of such layers, and the token-by-token decoder.
//!
//! # Semantics
//!
//! Token t lies in segment s = t / segment. It attends to, in this order on the key axis:
//! the compressed memory (compressive only), the memory (the layer inputs of the
//! `memory` tokens before the segment, detached), and the tokens of its own segment up to
//! itself. Relative distances are index differences on that key axis, as in the
//! reference implementations, where [compressed ; memory ; segment] is one sequence.
//!
//! A stack is evaluated layer by layer over the whole input: layer l's memory only
//! depends on layer l's inputs of earlier tokens, so this is the same function as the
//! papers' segment-major loop, and each layer loops over its segments.

pub mod compressive;
pub mod transformer_xl;

use tch::{nn, Kind, Tensor};

use crate::attention::{share, tensor_bytes, LayerDecoder, Norm};
use crate::block::FFN_MULT;
use crate::flops::{self, FlopCount};

/// Sizes of the recurrence: segment length, memory, compressed memory and rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub segment: i64,
    pub memory: i64,
    /// Slots of compressed memory (0: Transformer-XL).
    pub compressed: i64,
    /// Tokens per compressed slot.
    pub rate: i64,
}

/// What one segment sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// First token and length of the segment.
    pub start: i64,
    pub len: i64,
    /// First token of the memory; the memory is `[mem_lo, start)`.
    pub mem_lo: i64,
    /// Compressed slots `[groups_lo, groups_hi)`; slot g compresses tokens
    /// `[g * rate, (g + 1) * rate)`.
    pub groups_lo: i64,
    pub groups_hi: i64,
}

impl Span {
    /// Keys before the segment: compressed slots and memory.
    pub fn prefix(&self) -> i64 {
        self.groups_hi - self.groups_lo + self.start - self.mem_lo
    }
}

impl Plan {
    /// Keys one query can see at most: the relative-position table's length.
    pub fn max_keys(&self) -> i64 {
        self.compressed + self.memory + self.segment
    }

    /// What the segment holding token `t` sees. Tokens before the memory have been
    /// evicted; every complete group of `rate` evicted tokens has been compressed (a
    /// remainder waits for its group to fill, which never happens when segment and memory
    /// are multiples of the rate, the paper's setting), and the last `compressed` slots
    /// are kept.
    pub fn span_of(&self, t: i64, n: i64) -> Span {
        let start = t / self.segment * self.segment;
        let mem_lo = (start - self.memory).max(0);
        let groups_hi = if self.compressed > 0 {
            mem_lo / self.rate
        } else {
            0
        };
        Span {
            start,
            len: self.segment.min(n - start),
            mem_lo,
            groups_lo: (groups_hi - self.compressed).max(0),
            groups_hi,
        }
    }

    /// Every segment of an `n`-token input.
    pub fn spans(&self, n: i64) -> Vec<Span> {
        (0..n)
            .step_by(self.segment as usize)
            .map(|t| self.span_of(t, n))
            .collect()
    }

    /// Compressed slots the input's segments use: `[0, groups)`.
    pub fn groups(&self, n: i64) -> i64 {
        self.spans(n).iter().map(|s| s.groups_hi).max().unwrap_or(0)
    }
}

/// `d_model` sinusoids (sin over the first half, cos over the second, as in
/// Transformer-XL) at positions `len - 1, ..., 0`: descending, so that the last `k` rows
/// are the distances a query at the end of a `k`-key axis has to each key.
fn sinusoids(len: i64, d: i64, kind: Kind, device: tch::Device) -> Tensor {
    let opts = (Kind::Double, device);
    let pos = Tensor::arange(len, opts).flip([0]).unsqueeze(1);
    let inv_freq = (Tensor::arange_start_step(0, d, 2, opts) * (-(10000f64.ln()) / d as f64))
        .exp()
        .unsqueeze(0);
    let angles = pos * inv_freq;
    // An odd width drops the last cosine.
    Tensor::cat(&[angles.sin(), angles.cos()], 1)
        .narrow(1, 0, d)
        .to_kind(kind)
}

/// Transformer-XL's relative shift: `x[.., i, c]` holds the score of query i against
/// distance `K - 1 - c`; the result's `[.., i, j]` holds it against distance
/// `P + i - j` (P = K - Q keys before the queries), for every j <= P + i. Entries above
/// that diagonal are junk and must be masked. Done by padding one zero column on the
/// left and reading the buffer with rows of length Q instead of K + 1.
pub(crate) fn rel_shift(x: &Tensor) -> Tensor {
    let size = x.size();
    let (b, h, q, k) = (size[0], size[1], size[2], size[3]);
    x.constant_pad_nd([1, 0])
        .reshape([b, h, k + 1, q])
        .narrow(2, 1, k)
        .reshape([b, h, q, k])
}

/// One pre-norm layer: x + RelAttention(LN(x) | LN(cache)), then + FFN(LN(.)) with the
/// 4x GELU FFN of [`crate::EncoderBlock`]. Projections are bias-free, as in the papers'
/// code. Parameters: `ln1`, `q`, `kv`, `r` (W_r, the relative-position projection), `u`
/// and `v` (the content and position biases, `[heads, head_dim]`), `out`, `ln2`, `ff1`,
/// `ff2`.
pub(crate) struct RelLayer {
    ln1: Norm,
    q: nn::Linear,
    kv: nn::Linear,
    r: nn::Linear,
    u: Tensor,
    v: Tensor,
    out: nn::Linear,
    ln2: Norm,
    ff1: nn::Linear,
    ff2: nn::Linear,
    /// `[max_keys, d]` sinusoids, descending positions (a buffer, not trained).
    pos: Tensor,
    heads: i64,
    head_dim: i64,
}

impl RelLayer {
    pub fn new(vs: &nn::Path, heads: i64, head_dim: i64, max_keys: i64) -> RelLayer {
        let d = heads * head_dim;
        let bare = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        RelLayer {
            ln1: Norm::new(&(vs / "ln1"), d),
            q: nn::linear(vs / "q", d, d, bare),
            kv: nn::linear(vs / "kv", d, 2 * d, bare),
            r: nn::linear(vs / "r", d, d, bare),
            // The reference code's init for the biases.
            u: vs.randn("u", &[heads, head_dim], 0.0, 0.02),
            v: vs.randn("v", &[heads, head_dim], 0.0, 0.02),
            out: nn::linear(vs / "out", d, d, bare),
            ln2: Norm::new(&(vs / "ln2"), d),
            ff1: nn::linear(vs / "ff1", d, FFN_MULT * d, Default::default()),
            ff2: nn::linear(vs / "ff2", FFN_MULT * d, d, Default::default()),
            pos: sinusoids(max_keys, d, vs.kind(), vs.device()),
            heads,
            head_dim,
        }
    }

    /// A second handle on the same parameters, for a decoder.
    fn share(&self) -> RelLayer {
        RelLayer {
            ln1: self.ln1.share(),
            q: share(&self.q),
            kv: share(&self.kv),
            r: share(&self.r),
            u: self.u.shallow_clone(),
            v: self.v.shallow_clone(),
            out: share(&self.out),
            ln2: self.ln2.share(),
            ff1: share(&self.ff1),
            ff2: share(&self.ff2),
            pos: self.pos.shallow_clone(),
            heads: self.heads,
            head_dim: self.head_dim,
        }
    }

    fn d(&self) -> i64 {
        self.heads * self.head_dim
    }

    /// W_r R for every distance of the table, `[heads, max_keys, head_dim]`, descending
    /// distances; the last `k` rows serve a `k`-key axis.
    fn rel_table(&self) -> Tensor {
        let keys = self.pos.size()[0];
        self.pos
            .apply(&self.r)
            .view([keys, self.heads, self.head_dim])
            .transpose(0, 1)
    }

    /// `[b, n, d] -> [b, heads, n, head_dim]`.
    fn heads_of(&self, x: &Tensor) -> Tensor {
        let (b, n, _) = x.size3().expect("[batch, seq, d_model]");
        x.view([b, n, self.heads, self.head_dim]).transpose(1, 2)
    }

    /// Keys and values of normalised inputs, each `[b, heads, n, head_dim]`.
    fn keys_values(&self, normed: &Tensor) -> (Tensor, Tensor) {
        let (b, n, _) = normed.size3().expect("[batch, seq, d_model]");
        let kv = normed
            .apply(&self.kv)
            .view([b, n, 2, self.heads, self.head_dim])
            .permute([2, 0, 3, 1, 4]);
        (kv.get(0), kv.get(1))
    }

    /// The two score terms of relative attention, already scaled by 1/sqrt(head_dim):
    /// content (q + u) k^T, aligned with the keys, and position (q + v) r^T, whose column
    /// c is distance `K - 1 - c` (see [`rel_shift`]).
    fn score_terms(&self, q: &Tensor, k: &Tensor, rel: &Tensor) -> (Tensor, Tensor) {
        let scale = (self.head_dim as f64).powf(-0.5);
        let bias = |b: &Tensor| b.view([1, self.heads, 1, self.head_dim]);
        let content = ((q + bias(&self.u)) * scale).matmul(&k.transpose(-2, -1));
        let position = ((q + bias(&self.v)) * scale).matmul(&rel.transpose(-2, -1));
        (content, position)
    }

    /// The residual and the FFN around an attention output `[b, heads, n, head_dim]`.
    fn finish(&self, x: &Tensor, attn: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().expect("[batch, seq, d_model]");
        let h = x + attn.transpose(1, 2).reshape([b, n, d]).apply(&self.out);
        let f = self
            .ln2
            .forward(&h)
            .apply(&self.ff1)
            .gelu("none")
            .apply(&self.ff2);
        h + f
    }

    /// The layer on one segment `x` (`[b, Q, d]`, layer inputs) after the `prefix`
    /// (`[b, P, d]`: compressed memory and memory, already detached). Scores are
    /// `[b, heads, Q, P + Q]`; `rel` is [`RelLayer::rel_table`].
    fn segment(&self, x: &Tensor, prefix: &Tensor, rel: &Tensor) -> Tensor {
        let q_len = x.size()[1];
        let p = prefix.size()[1];
        let k_len = p + q_len;
        let hx = self.ln1.forward(x);
        let q = self.heads_of(&hx.apply(&self.q));
        let (k, v) = self.keys_values(&Tensor::cat(&[self.ln1.forward(prefix), hx], 1));
        let table = rel.size()[1];
        let rel = rel.narrow(1, table - k_len, k_len);
        let (content, position) = self.score_terms(&q, &k, &rel);
        let future = Tensor::ones([q_len, k_len], (Kind::Bool, x.device())).triu(p + 1);
        let scores = (content + rel_shift(&position)).masked_fill(&future, f64::NEG_INFINITY);
        let attn = scores.softmax(-1, scores.kind()).matmul(&v);
        self.finish(x, &attn)
    }

    /// FLOPs of [`RelLayer::segment`] for Q queries after P prefix keys.
    fn segment_flops(&self, batch: u64, q: u64, p: u64) -> u64 {
        let (d, h, dh) = (self.d() as u64, self.heads as u64, self.head_dim as u64);
        let k = p + q;
        let projections = flops::matmul(batch, q, d, d) // q
            + flops::matmul(batch, k, d, 2 * d) // k, v of prefix and segment
            + flops::matmul(batch, q, d, d); // out
        let scores = 2 * flops::matmul(batch * h, q, dh, k) // content and position
            + flops::matmul(batch * h, q, k, dh);
        let ffn = 2 * flops::matmul(batch, q, d, FFN_MULT as u64 * d);
        projections + scores + ffn
    }

    /// FLOPs of one decoding step against `keys` cached keys (itself included).
    fn step_flops(&self, batch: u64, keys: u64) -> u64 {
        let (d, h, dh) = (self.d() as u64, self.heads as u64, self.head_dim as u64);
        let projections = flops::matmul(batch, 1, d, 4 * d); // q, k, v, out
        let scores =
            2 * flops::matmul(batch * h, 1, dh, keys) + flops::matmul(batch * h, 1, keys, dh);
        let ffn = 2 * flops::matmul(batch, 1, d, FFN_MULT as u64 * d);
        projections + scores + ffn
    }

    /// FLOPs of the relative table: W_r on every distance, once per forward.
    fn table_flops(&self) -> u64 {
        let d = self.d() as u64;
        flops::matmul(1, self.pos.size()[0] as u64, d, d)
    }

    /// Content-only attention of the normalised queries `h` over the normalised memory
    /// `m` with this layer's projections, all detached: the attention the compressive
    /// transformer's reconstruction loss compares (its gradient reaches only what
    /// produced `m`).
    fn content_attention(&self, h: &Tensor, m: &Tensor) -> Tensor {
        let ln = self.ln1.detached();
        let norm = |x: &Tensor| ln.forward(x);
        let q = self.heads_of(&norm(h).linear(&self.q.ws.detach(), None::<Tensor>));
        let (mb, mn, _) = m.size3().expect("[batch, seq, d_model]");
        let kv = norm(m)
            .linear(&self.kv.ws.detach(), None::<Tensor>)
            .view([mb, mn, 2, self.heads, self.head_dim])
            .permute([2, 0, 3, 1, 4]);
        crate::exact::vanilla::softmax_attention(&q, &kv.get(0), &kv.get(1), None)
    }
}

/// The strided 1-D convolution that maps `rate` memories to one compressed memory
/// (kernel = stride = rate), the compressive transformer's best compression function.
pub(crate) struct Compressor {
    /// `[d, d, rate]` and `[d]`, created by `nn::conv1d` (its default init) and kept as
    /// tensors so that a decoder can share them.
    ws: Tensor,
    bs: Tensor,
    rate: i64,
}

impl Compressor {
    pub fn new(vs: &nn::Path, d: i64, rate: i64) -> Compressor {
        let conv = nn::conv1d(vs, d, d, rate, Default::default());
        Compressor {
            ws: conv.ws,
            bs: conv.bs.expect("a bias"),
            rate,
        }
    }

    /// `[b, G * rate, d] -> [b, G, d]`.
    pub fn compress(&self, x: &Tensor) -> Tensor {
        x.transpose(1, 2)
            .conv1d(&self.ws, Some(&self.bs), [self.rate], [0], [1], 1)
            .transpose(1, 2)
    }

    fn share(&self) -> Compressor {
        Compressor {
            ws: self.ws.shallow_clone(),
            bs: self.bs.shallow_clone(),
            rate: self.rate,
        }
    }

    /// FLOPs of compressing `groups` slots: one (rate d) x d product each.
    fn flops(&self, batch: u64, groups: u64, d: u64) -> u64 {
        flops::matmul(batch, groups, self.rate as u64 * d, d)
    }
}

/// The [`crate::Layer`] of a variant that is a [`SegmentStack`] and the shape it was
/// built for (Transformer-XL, the compressive transformer): forward, FLOPs and decoding
/// are the stack's. Each variant's file says what its count includes.
macro_rules! segment_stack_layer {
    ($variant:ty) => {
        impl $crate::attention::Layer for $variant {
            fn forward(&self, x: &tch::Tensor) -> tch::Tensor {
                self.stack.forward(x)
            }

            fn flops(&self) -> $crate::flops::FlopCount {
                self.stack.flops(self.shape.batch, self.shape.seq_len)
            }

            fn decoder(
                &self,
                x: &tch::Tensor,
                _capacity: i64,
            ) -> Option<Box<dyn $crate::attention::LayerDecoder>> {
                Some(self.stack.decoder(x))
            }

            fn decode_flops(&self, context: i64) -> Option<$crate::flops::FlopCount> {
                Some(self.stack.decode_flops(self.shape.batch, context))
            }
        }
    };
}
pub(crate) use segment_stack_layer;

/// A stack of [`RelLayer`]s with their plan, and, for the compressive transformer, one
/// compressor per layer.
pub(crate) struct SegmentStack {
    pub layers: Vec<RelLayer>,
    pub compressors: Vec<Compressor>,
    pub plan: Plan,
}

impl SegmentStack {
    /// `layers` layers under `layer{i}`; compressors under
    /// `layer{i}.compressor` when the plan has compressed memory.
    pub fn new(vs: &nn::Path, layers: i64, heads: i64, head_dim: i64, plan: Plan) -> SegmentStack {
        let d = heads * head_dim;
        let mut stack = SegmentStack {
            layers: Vec::new(),
            compressors: Vec::new(),
            plan,
        };
        for i in 0..layers {
            let p = vs / format!("layer{i}");
            stack
                .layers
                .push(RelLayer::new(&p, heads, head_dim, plan.max_keys()));
            if plan.compressed > 0 {
                stack
                    .compressors
                    .push(Compressor::new(&(&p / "compressor"), d, plan.rate));
            }
        }
        stack
    }

    /// The compressed memory of layer `i`'s input `x`: slots `[0, groups)`, computed from
    /// detached inputs and detached themselves (the compressor is trained only by the
    /// reconstruction loss, as in the paper).
    fn compressed(&self, i: usize, x: &Tensor, groups: i64) -> Option<Tensor> {
        (groups > 0).then(|| {
            self.compressors[i]
                .compress(&x.narrow(1, 0, groups * self.plan.rate).detach())
                .detach()
        })
    }

    /// Layer `i` over a whole input `[b, n, d]`, segment by segment.
    fn layer_forward(&self, i: usize, x: &Tensor) -> Tensor {
        let layer = &self.layers[i];
        let n = x.size()[1];
        let rel = layer.rel_table();
        let cm = self.compressed(i, x, self.plan.groups(n));
        let outs: Vec<Tensor> = self
            .plan
            .spans(n)
            .iter()
            .map(|s| {
                let memory = x.narrow(1, s.mem_lo, s.start - s.mem_lo).detach();
                let prefix = match &cm {
                    Some(cm) => Tensor::cat(
                        &[cm.narrow(1, s.groups_lo, s.groups_hi - s.groups_lo), memory],
                        1,
                    ),
                    None => memory,
                };
                layer.segment(&x.narrow(1, s.start, s.len), &prefix, &rel)
            })
            .collect();
        Tensor::cat(&outs, 1)
    }

    /// The input of every layer and the output of the last: `n_layers + 1` tensors.
    pub fn hidden_states(&self, x: &Tensor) -> Vec<Tensor> {
        let mut hs = vec![x.shallow_clone()];
        for i in 0..self.layers.len() {
            let next = self.layer_forward(i, hs.last().unwrap());
            hs.push(next);
        }
        hs
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.hidden_states(x).pop().unwrap()
    }

    /// Forward FLOPs for an input of `batch` x `n` tokens: per layer, every segment
    /// against its prefix, the relative table, and the compression of the slots used.
    pub fn flops(&self, batch: i64, n: i64) -> FlopCount {
        let b = batch as u64;
        let groups = self.plan.groups(n) as u64;
        let per_layer: u64 = self
            .plan
            .spans(n)
            .iter()
            .map(|s| self.layers[0].segment_flops(b, s.len as u64, s.prefix() as u64))
            .sum::<u64>()
            + self.layers[0].table_flops()
            + self
                .compressors
                .first()
                .map_or(0, |c| c.flops(b, groups, self.layers[0].d() as u64));
        FlopCount::forward(per_layer * self.layers.len() as u64)
    }

    /// The attention-reconstruction loss of the last compression the forward on `x`
    /// performed, averaged over layers: for each layer, the compression that produced
    /// the last slots a segment of `x` used, the mean squared difference between the
    /// content attention of that segment's queries (the segment whose step evicted the
    /// tokens) over the tokens and over their compression. Everything but the compressor
    /// is detached. `None` when no compression took place.
    pub fn reconstruction_loss(&self, x: &Tensor) -> Option<Tensor> {
        let n = x.size()[1];
        let spans = self.plan.spans(n);
        // The last pair of consecutive segments whose slots grew: the first one's step
        // compressed the slots [lo, hi).
        let (evicting, lo, hi) = spans
            .windows(2)
            .rev()
            .find(|w| w[1].groups_hi > w[0].groups_hi)
            .map(|w| (w[0], w[0].groups_hi, w[1].groups_hi))?;
        let hs = self.hidden_states(x);
        let losses: Vec<Tensor> = self
            .layers
            .iter()
            .zip(&self.compressors)
            .zip(&hs)
            .map(|((layer, compressor), h)| {
                let h = h.detach();
                let rate = self.plan.rate;
                let old = h.narrow(1, lo * rate, (hi - lo) * rate);
                let queries = h.narrow(1, evicting.start, evicting.len);
                let want = layer.content_attention(&queries, &old);
                let got = layer.content_attention(&queries, &compressor.compress(&old));
                (got - want).square().mean(Kind::Float)
            })
            .collect();
        Some(Tensor::stack(&losses, 0).mean(Kind::Float))
    }

    /// The decoder after the context `x` (`[b, N, d]`).
    pub fn decoder(&self, x: &Tensor) -> Box<dyn LayerDecoder> {
        let n = x.size()[1];
        let hs = self.hidden_states(x);
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let layer = layer.share();
                let compressor = self.compressors.get(i).map(Compressor::share);
                let cache = LayerCache::new(&layer, compressor, &hs[i], n, self.plan);
                let rel = layer.rel_table();
                (layer, cache, rel)
            })
            .collect();
        let mut dec = SegmentDecoder {
            layers,
            plan: self.plan,
            pos: n,
            start: Vec::new(),
            start_pos: n,
        };
        dec.start = dec.layers.iter().map(|(_, c, _)| c.snapshot()).collect();
        Box::new(dec)
    }

    /// FLOPs of one decoding step after `context` tokens: per layer, one token's
    /// projections, its scores against the keys it sees, and its FFN. The compression and
    /// cache reorganisation at segment boundaries (once per segment) are not counted.
    pub fn decode_flops(&self, batch: i64, context: i64) -> FlopCount {
        let s = self.plan.span_of(context, context + 1);
        let keys = s.prefix() + context - s.start + 1;
        let layer = &self.layers[0];
        FlopCount::forward(layer.step_flops(batch as u64, keys as u64) * self.layers.len() as u64)
    }
}

/// One layer's decoding state: keys and values of everything the next token sees
/// ([compressed ; memory ; own segment so far]) in a buffer of `max_keys` rows, and, for
/// the compressive transformer, the layer inputs not yet compressed.
struct LayerCache {
    k: Tensor,
    v: Tensor,
    /// Rows in use in `k`, `v`.
    len: i64,
    /// Compressed slots held at the front of `k`, `v`.
    slots: i64,
    /// Compressive only: the compressor, and `[b, rows, d]` layer inputs of the tokens
    /// from `hidden_lo` on (evicted ones awaiting a full group, memory, segment).
    compressor: Option<Compressor>,
    hidden: Option<Tensor>,
    hidden_lo: i64,
}

/// The state after the context, for [`LayerDecoder::reset`].
struct Snapshot {
    k: Tensor,
    v: Tensor,
    len: i64,
    slots: i64,
    hidden: Option<Tensor>,
    hidden_lo: i64,
}

impl LayerCache {
    /// The cache for the token after the `n` context tokens whose layer inputs are `h`.
    fn new(
        layer: &RelLayer,
        compressor: Option<Compressor>,
        h: &Tensor,
        n: i64,
        plan: Plan,
    ) -> LayerCache {
        let (b, _, d) = h.size3().expect("[batch, seq, d_model]");
        let span = plan.span_of(n, n + 1);
        let rows = plan.max_keys();
        let opts = (h.kind(), h.device());
        let k = Tensor::zeros([b, layer.heads, rows, layer.head_dim], opts);
        let v = k.zeros_like();
        let mut cache = LayerCache {
            k,
            v,
            len: 0,
            slots: 0,
            hidden: None,
            hidden_lo: 0,
            compressor,
        };
        let mut visible = h.narrow(1, span.mem_lo, n - span.mem_lo);
        if let Some(c) = &cache.compressor {
            let slots = span.groups_hi - span.groups_lo;
            // Nothing compressed yet while the context fits in the memory and segment.
            if slots > 0 {
                let cm = c.compress(&h.narrow(1, span.groups_lo * plan.rate, slots * plan.rate));
                visible = Tensor::cat(&[cm, visible], 1);
            }
            cache.slots = slots;
            // Room for the memory, a segment, and up to rate - 1 evicted tokens that wait.
            let buf = Tensor::zeros([b, plan.memory + plan.segment + plan.rate, d], opts);
            cache.hidden_lo = span.groups_hi * plan.rate;
            let kept = n - cache.hidden_lo;
            buf.narrow(1, 0, kept)
                .copy_(&h.narrow(1, cache.hidden_lo, kept));
            cache.hidden = Some(buf);
        }
        cache.len = visible.size()[1];
        let (kk, vv) = layer.keys_values(&layer.ln1.forward(&visible));
        cache.k.narrow(2, 0, cache.len).copy_(&kk);
        cache.v.narrow(2, 0, cache.len).copy_(&vv);
        cache
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            k: self.k.copy(),
            v: self.v.copy(),
            len: self.len,
            slots: self.slots,
            hidden: self.hidden.as_ref().map(Tensor::copy),
            hidden_lo: self.hidden_lo,
        }
    }

    fn restore(&mut self, s: &Snapshot) {
        self.k.copy_(&s.k);
        self.v.copy_(&s.v);
        self.len = s.len;
        self.slots = s.slots;
        if let (Some(h), Some(sh)) = (&mut self.hidden, &s.hidden) {
            h.copy_(sh);
        }
        self.hidden_lo = s.hidden_lo;
    }

    /// At the first token `t` of a new segment: evict what fell out of the memory,
    /// compress the groups that filled, and lay the cache out again as
    /// [compressed ; memory].
    fn new_segment(&mut self, layer: &RelLayer, t: i64, plan: Plan) {
        let span = plan.span_of(t, t + 1);
        // Memory rows currently cached: tokens [t - mem_rows, t).
        let mem_rows = self.len - self.slots;
        let keep = plan.memory.min(mem_rows);
        let mut new_slots = 0;
        let mut fresh: Option<(Tensor, Tensor)> = None;
        if let (Some(c), Some(hidden)) = (&self.compressor, &self.hidden) {
            let done = self.hidden_lo / plan.rate; // slots compressed so far
            let added = span.groups_hi - done;
            if added > 0 {
                let cm = c.compress(&hidden.narrow(1, 0, added * plan.rate));
                fresh = Some(layer.keys_values(&layer.ln1.forward(&cm)));
                // Drop the compressed tokens from the hidden buffer.
                let used = t - self.hidden_lo;
                let consumed = added * plan.rate;
                let rest = hidden.narrow(1, consumed, used - consumed).copy();
                hidden.narrow(1, 0, used - consumed).copy_(&rest);
                self.hidden_lo += consumed;
            }
            new_slots = span.groups_hi - span.groups_lo;
        }
        // New layout: the last kept old slots, the fresh slots, the last `keep` memory
        // rows. More fresh slots than room (a segment longer than rate x compressed)
        // keeps the last of them only.
        let added = fresh.as_ref().map_or(0, |f| f.0.size()[2]);
        let fresh_kept = added.min(new_slots);
        let fresh = fresh.map(|(k, v)| {
            (
                k.narrow(2, added - fresh_kept, fresh_kept),
                v.narrow(2, added - fresh_kept, fresh_kept),
            )
        });
        let old_kept = new_slots - fresh_kept;
        let gather = |buf: &Tensor, fresh: Option<&Tensor>| {
            let mut parts = vec![buf.narrow(2, self.slots - old_kept, old_kept)];
            if let Some(f) = fresh {
                parts.push(f.shallow_clone());
            }
            parts.push(buf.narrow(2, self.len - keep, keep));
            Tensor::cat(&parts, 2)
        };
        let k = gather(&self.k, fresh.as_ref().map(|f| &f.0));
        let v = gather(&self.v, fresh.as_ref().map(|f| &f.1));
        let rows = k.size()[2];
        self.k.narrow(2, 0, rows).copy_(&k);
        self.v.narrow(2, 0, rows).copy_(&v);
        self.len = rows;
        self.slots = new_slots;
    }

    /// Takes the normalised token's key and value (and, compressive, its layer input).
    fn push(&mut self, k: &Tensor, v: &Tensor, x: &Tensor, t: i64) {
        self.k.narrow(2, self.len, 1).copy_(k);
        self.v.narrow(2, self.len, 1).copy_(v);
        self.len += 1;
        if let Some(h) = &self.hidden {
            h.narrow(1, t - self.hidden_lo, 1).copy_(x);
        }
    }

    fn bytes(&self) -> u64 {
        tensor_bytes(&self.k) + tensor_bytes(&self.v) + self.hidden.as_ref().map_or(0, tensor_bytes)
    }
}

/// Token-by-token decoding of a [`SegmentStack`]: each layer's cache, stepped in order, with
/// its relative table computed once.
struct SegmentDecoder {
    layers: Vec<(RelLayer, LayerCache, Tensor)>,
    plan: Plan,
    /// Position of the next token.
    pos: i64,
    start: Vec<Snapshot>,
    start_pos: i64,
}

impl LayerDecoder for SegmentDecoder {
    fn step(&mut self, x: &Tensor) -> Tensor {
        let t = self.pos;
        let mut x = x.shallow_clone();
        for (layer, cache, rel) in self.layers.iter_mut() {
            if t > 0 && t % self.plan.segment == 0 {
                cache.new_segment(layer, t, self.plan);
            }
            let hx = layer.ln1.forward(&x);
            let q = layer.heads_of(&hx.apply(&layer.q));
            let (k, v) = layer.keys_values(&hx);
            cache.push(&k, &v, &x, t);
            let len = cache.len;
            let table = rel.size()[1];
            // The newest key is at distance 0: the table's last `len` rows line up.
            let (content, position) = layer.score_terms(
                &q,
                &cache.k.narrow(2, 0, len),
                &rel.narrow(1, table - len, len),
            );
            let scores = content + position;
            let attn = scores
                .softmax(-1, scores.kind())
                .matmul(&cache.v.narrow(2, 0, len));
            x = layer.finish(&x, &attn);
        }
        self.pos += 1;
        x
    }

    fn reset(&mut self) {
        for ((_, cache, _), snap) in self.layers.iter_mut().zip(&self.start) {
            cache.restore(snap);
        }
        self.pos = self.start_pos;
    }

    /// The fixed buffers of every layer: `max_keys` key and value rows (and the
    /// compressive transformer's uncompressed inputs); the saved start is bookkeeping.
    fn state_bytes(&self) -> u64 {
        self.layers.iter().map(|(_, c, _)| c.bytes()).sum()
    }
}
