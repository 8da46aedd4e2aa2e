//! `vanilla`: softmax attention that materialises the N x N score matrix (Vaswani et al.
//! 2017). The reference for exactness and the baseline of every speed-up and memory ratio.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Decoder, Shape};
use crate::decode::KvCache;
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct Vanilla {
    shape: Shape,
    /// `[N, N]`, true above the diagonal (future keys), when causal.
    future: Option<Tensor>,
}

impl AttentionVariant for Vanilla {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "vanilla",
        family: Family::Exact,
        time: "O(N^2 d)",
        memory: "O(N^2)",
        time_exponent: 2.0,
        memory_exponent: 2.0,
        paper: "Vaswani et al. 2017, Attention Is All You Need (NeurIPS)",
        supports_causal: true,
        exact: true,
        decode: Some(crate::info::DecodeInfo {
            state: "O(N d): the KV cache",
            exponent: 1.0,
        }),
        scopes: crate::info::CORE_SCOPES,
    };

    fn new(_: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let future = shape
            .causal
            .then(|| Tensor::ones([n, n], (Kind::Bool, vs.device())).triu(1));
        Ok(Vanilla {
            shape: *shape,
            future,
        })
    }
}

/// Exact attention on per-head tensors; `future` masks keys after each query. Public so
/// tests can run it in float64 as the reference.
pub fn softmax_attention(q: &Tensor, k: &Tensor, v: &Tensor, future: Option<&Tensor>) -> Tensor {
    let scale = (q.size()[3] as f64).powf(-0.5);
    // Scaling q (N x d) is cheaper than scaling the scores (N x N).
    let scores = (q * scale).matmul(&k.transpose(-2, -1));
    let scores = match future {
        Some(m) => scores.masked_fill(m, f64::NEG_INFINITY),
        None => scores,
    };
    scores.softmax(-1, scores.kind()).matmul(v)
}

impl Attention for Vanilla {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        softmax_attention(q, k, v, self.future.as_ref())
    }

    /// The masked product is dense: causal or not, all N^2 scores are computed.
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d) = (s.seq_len as u64, s.head_dim as u64);
        FlopCount::forward(flops::matmul(s.bh(), n, d, n) + flops::matmul(s.bh(), n, n, d))
    }

    fn decoder(&self, k: &Tensor, v: &Tensor, capacity: i64) -> Option<Box<dyn Decoder>> {
        Some(Box::new(KvCache::new(k, v, capacity, None)))
    }

    /// One query against the N + 1 cached keys.
    fn decode_flops(&self, context: i64) -> Option<FlopCount> {
        let s = &self.shape;
        let (n, d) = (context as u64 + 1, s.head_dim as u64);
        Some(FlopCount::forward(
            flops::matmul(s.bh(), 1, d, n) + flops::matmul(s.bh(), 1, n, d),
        ))
    }
}
