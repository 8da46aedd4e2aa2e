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
}
