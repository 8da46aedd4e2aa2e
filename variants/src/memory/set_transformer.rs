//! `set-transformer`: the induced set attention block, ISAB (Lee et al. 2019), as an
//! attention core. m learned inducing points I (per head, m x d) first query the
//! sequence, H = Attn(I, K, V), an m-slot summary; then every token queries the
//! summary, out = Attn(Q, H W_k, H W_v), with learned per-head d x d maps W_k, W_v (the
//! second attention's own key and value projections). Both score matrices are N x m:
//! time O(N m d + m d^2), memory O(N m).
//!
//! Choices: the paper's MAB wraps each attention in a residual, a layer norm and a
//! row-wise FFN; here the core is the two attentions, and the encoder block supplies the
//! residual, norm and FFN around the whole (as for every other core). The inducing points
//! start as the reference initialises its `[1, m, dim]` parameter (Xavier uniform, bound
//! sqrt(6 / ((m + 1) d))); W_k and W_v like PyTorch's nn.Linear (uniform, bound
//! 1 / sqrt(d)), without biases. Not causal: every inducing point reads the whole
//! sequence.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::exact::vanilla::softmax_attention;
use crate::flops::{self, FlopCount};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

/// Default: 32 inducing points (the paper uses 16 or 32).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Inducing points m.
    pub inducing: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config { inducing: 32 }
    }
}

pub struct SetTransformer {
    shape: Shape,
    m: i64,
    /// `[heads, m, d]`: the inducing points. Public (as are the maps) so that tests can
    /// set them; they are the VarStore's variables `inducing`, `w_k`, `w_v`.
    pub inducing: Tensor,
    /// `[heads, d, d]`: keys of the summary, H W_k.
    pub w_k: Tensor,
    /// `[heads, d, d]`: values of the summary, H W_v.
    pub w_v: Tensor,
}

impl SetTransformer {
    /// H = Attn(I, K, V), `[b, h, m, d]`: what the inducing points read from the sequence.
    pub fn summary(&self, k: &Tensor, v: &Tensor) -> Tensor {
        softmax_attention(&self.inducing.unsqueeze(0), k, v, None)
    }
}

impl AttentionVariant for SetTransformer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "set-transformer",
        family: Family::NeuralMemory,
        time: "O(N m d)",
        memory: "O(N m)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Lee et al. 2019, Set Transformer: A Framework for Attention-based \
                Permutation-Invariant Neural Networks (ICML, arXiv:1810.00825), ISAB",
        supports_causal: false,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("set-transformer", "inducing", config.inducing)?;
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let (h, m, d) = (shape.heads, config.inducing, shape.head_dim);
        let xavier = (6.0 / ((m + 1) * d) as f64).sqrt();
        let linear = (d as f64).powf(-0.5);
        Ok(SetTransformer {
            shape: *shape,
            m,
            inducing: vs.uniform("inducing", &[h, m, d], -xavier, xavier),
            w_k: vs.uniform("w_k", &[h, d, d], -linear, linear),
            w_v: vs.uniform("w_v", &[h, d, d], -linear, linear),
        })
    }
}

impl Attention for SetTransformer {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let h = self.summary(k, v);
        softmax_attention(q, &h.matmul(&self.w_k), &h.matmul(&self.w_v), None)
    }

    /// Per batch and head: the inducing points' scores and read (m d N + m N d), the
    /// summary's two maps (2 m d d), the tokens' scores and read (N d m + N m d).
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, m) = (s.seq_len as u64, s.head_dim as u64, self.m as u64);
        let bh = s.bh();
        let induce = flops::matmul(bh, m, d, n) + flops::matmul(bh, m, n, d);
        let maps = 2 * flops::matmul(bh, m, d, d);
        let read = flops::matmul(bh, n, d, m) + flops::matmul(bh, n, m, d);
        FlopCount::forward(induce + maps + read)
    }
}
