//! The shared traits and the multi-head wrapper.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::flops::{self, FlopCount};

/// The shape a variant is built for. Some variants have parameters that depend on the
/// sequence length (Linformer's projections), so a variant is built per shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub batch: i64,
    pub seq_len: i64,
    pub heads: i64,
    pub head_dim: i64,
    /// Autoregressive masking: query i sees keys j <= i only.
    pub causal: bool,
}

impl Shape {
    pub fn d_model(&self) -> i64 {
        self.heads * self.head_dim
    }

    /// Batch x heads: the number of independent attention problems.
    pub(crate) fn bh(&self) -> u64 {
        (self.batch * self.heads) as u64
    }
}

/// The core of an attention mechanism, on per-head tensors.
///
/// `q`, `k`, `v` are `[batch, heads, seq_len, head_dim]`; the result has the shape of `q`.
/// Causality and every size come from the [`Shape`] the variant was built for.
/// LibTorch errors (out of memory) surface as panics from tch's operators; the runner
/// catches them per case.
pub trait Attention: Send {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor;

    /// FLOPs of one `attend` at the built shape (conventions in [`crate::flops`]).
    fn flops(&self) -> FlopCount;

    /// Which kernel the computation dispatches to, where that is a choice the library
    /// makes (fused SDPA's backends).
    fn backend(&self) -> Option<String> {
        None
    }

    /// Causal decoding: the state after a context whose keys and values are `k`, `v`
    /// (`[batch, heads, N, head_dim]`), able to take `capacity` more tokens; `None` for
    /// a variant that cannot decode token by token. Called only on variants built
    /// causal.
    fn decoder(&self, _k: &Tensor, _v: &Tensor, _capacity: i64) -> Option<Box<dyn Decoder>> {
        None
    }

    /// FLOPs of one decoding step after a context of `context` tokens, per the shape's
    /// batch and heads; `None` when the variant cannot decode.
    fn decode_flops(&self, _context: i64) -> Option<FlopCount> {
        None
    }
}

/// Incremental causal decoding of an attention core: what a generating model keeps
/// between tokens (a KV cache, a window of it, a recurrent state).
pub trait Decoder: Send {
    /// `q`, `k`, `v` `[batch, heads, 1, head_dim]` of the next token; returns its output
    /// `[batch, heads, 1, head_dim]`, equal to the causal forward's row for that position,
    /// and takes the token into the state.
    fn step(&mut self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor;
    /// Back to the state right after the context, so that every timed step is the token
    /// after a context of exactly N (the runner calls it outside the timed region).
    fn reset(&mut self);
    /// Bytes the state holds now (what grows, or does not, with the context).
    fn state_bytes(&self) -> u64;
}

/// Incremental decoding of a whole [`Layer`]: one `[batch, 1, d_model]` token at a time.
pub trait LayerDecoder: Send {
    fn step(&mut self, x: &Tensor) -> Tensor;
    /// See [`Decoder::reset`].
    fn reset(&mut self);
    fn state_bytes(&self) -> u64;
}

/// Bytes of a tensor's elements.
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// A sequence layer: `[batch, seq_len, d_model] -> [batch, seq_len, d_model]`. What the
/// runner measures. Attention variants reach it through [`MultiHeadAttention`] or
/// [`crate::EncoderBlock`]; variants that replace a whole block or model implement it
/// directly.
pub trait Layer: Send {
    fn forward(&self, x: &Tensor) -> Tensor;
    fn flops(&self) -> FlopCount;
    fn backend(&self) -> Option<String> {
        None
    }

    /// Causal decoding after the context `x` (`[batch, N, d_model]`), with room for
    /// `capacity` more tokens; `None` when the layer cannot decode.
    fn decoder(&self, _x: &Tensor, _capacity: i64) -> Option<Box<dyn LayerDecoder>> {
        None
    }

    /// FLOPs of one decoding step after `context` tokens.
    fn decode_flops(&self, _context: i64) -> Option<FlopCount> {
        None
    }
}

/// Multi-head attention around any [`Attention`] core: a fused Q/K/V projection, the
/// core per head, and the output projection.
pub struct MultiHeadAttention {
    qkv: nn::Linear,
    out: nn::Linear,
    core: Box<dyn Attention>,
    shape: Shape,
}

impl MultiHeadAttention {
    pub fn new(vs: nn::Path, shape: Shape, core: Box<dyn Attention>) -> Self {
        let d = shape.d_model();
        MultiHeadAttention {
            qkv: nn::linear(&vs / "qkv", d, 3 * d, Default::default()),
            out: nn::linear(&vs / "out", d, d, Default::default()),
            core,
            shape,
        }
    }

    /// `[b, n, d] -> (q, k, v)`, each `[b, heads, n, head_dim]`.
    pub fn split_heads(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, n, _) = x.size3().expect("input must be [batch, seq_len, d_model]");
        let s = &self.shape;
        let qkv = x
            .apply(&self.qkv)
            .view([b, n, 3, s.heads, s.head_dim])
            .permute([2, 0, 3, 1, 4]);
        (qkv.get(0), qkv.get(1), qkv.get(2))
    }
}

impl Layer for MultiHeadAttention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().expect("input must be [batch, seq_len, d_model]");
        let (q, k, v) = self.split_heads(x);
        let y = self.core.attend(&q, &k, &v);
        y.transpose(1, 2).reshape([b, n, d]).apply(&self.out)
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (b, n, d) = (s.batch as u64, s.seq_len as u64, s.d_model() as u64);
        let projections = flops::matmul(b, n, d, 3 * d) + flops::matmul(b, n, d, d);
        FlopCount::forward(projections) + self.core.flops()
    }

    fn backend(&self) -> Option<String> {
        self.core.backend()
    }

    fn decoder(&self, x: &Tensor, capacity: i64) -> Option<Box<dyn LayerDecoder>> {
        let (_, k, v) = self.split_heads(x);
        let core = self.core.decoder(&k, &v, capacity)?;
        Some(Box::new(MhaDecoder {
            qkv: share(&self.qkv),
            out: share(&self.out),
            shape: self.shape,
            core,
        }))
    }

    fn decode_flops(&self, context: i64) -> Option<FlopCount> {
        let s = &self.shape;
        let (b, d) = (s.batch as u64, s.d_model() as u64);
        let projections = flops::matmul(b, 1, d, 3 * d) + flops::matmul(b, 1, d, d);
        Some(FlopCount::forward(projections) + self.core.decode_flops(context)?)
    }
}

/// The same parameters, not a copy (tch's layers are neither `Clone` nor `Sync`), for a
/// decoder that shares its layer's weights.
pub(crate) fn share(l: &nn::Linear) -> nn::Linear {
    nn::Linear {
        ws: l.ws.shallow_clone(),
        bs: l.bs.as_ref().map(Tensor::shallow_clone),
    }
}

/// Layer norm over the model width as plain tensors, so that a decoder can share them
/// (`nn::LayerNorm`'s config is private). Named as `nn::layer_norm` names its parameters,
/// so checkpoints are the same.
pub(crate) struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    pub(crate) fn new(vs: &nn::Path, d: i64) -> Norm {
        Norm {
            w: vs.ones("weight", &[d]),
            b: vs.zeros("bias", &[d]),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(self.w.size(), Some(&self.w), Some(&self.b), 1e-5, true)
    }

    pub(crate) fn share(&self) -> Norm {
        Norm {
            w: self.w.shallow_clone(),
            b: self.b.shallow_clone(),
        }
    }

    /// The same values outside the autograd graph.
    pub(crate) fn detached(&self) -> Norm {
        Norm {
            w: self.w.detach(),
            b: self.b.detach(),
        }
    }
}

/// [`MultiHeadAttention`]'s projections around a core's [`Decoder`].
struct MhaDecoder {
    qkv: nn::Linear,
    out: nn::Linear,
    shape: Shape,
    core: Box<dyn Decoder>,
}

impl LayerDecoder for MhaDecoder {
    fn step(&mut self, x: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().expect("token must be [batch, 1, d_model]");
        let s = &self.shape;
        let qkv = x
            .apply(&self.qkv)
            .view([b, n, 3, s.heads, s.head_dim])
            .permute([2, 0, 3, 1, 4]);
        let y = self.core.step(&qkv.get(0), &qkv.get(1), &qkv.get(2));
        y.transpose(1, 2).reshape([b, n, d]).apply(&self.out)
    }

    fn reset(&mut self) {
        self.core.reset()
    }

    fn state_bytes(&self) -> u64 {
        self.core.state_bytes()
    }
}
