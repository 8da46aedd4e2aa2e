//! `sdpa`: LibTorch's fused `scaled_dot_product_attention`, which dispatches to
//! FlashAttention-2 (Dao 2023), the memory-efficient kernel (Rabe & Staats 2021) or cuDNN's
//! on the GPU and to a blocked flash kernel on the CPU. Exact, and O(N) in memory where a
//! fused kernel runs; the strongest exact baseline an X-former has to beat, not only the
//! naive `vanilla`. Which backend LibTorch chose is asked of it inside each call and
//! recorded (the record's `backend`).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{Attention, Decoder, Shape};
use crate::decode::KvCache;
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::fused::Backends;
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct Sdpa {
    shape: Shape,
    /// The backend each call took, asked of LibTorch inside the call (real shapes,
    /// causality and grad mode; nothing allocated).
    backends: Backends,
}

impl AttentionVariant for Sdpa {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "sdpa",
        family: Family::Exact,
        time: "O(N^2 d)",
        memory: "O(N) fused (flash, memory-efficient); O(N^2) on the math fallback",
        time_exponent: 2.0,
        memory_exponent: 1.0,
        paper: "Dao 2023, FlashAttention-2 (arXiv:2307.08691); Rabe & Staats 2021, \
                Self-attention Does Not Need O(n^2) Memory (arXiv:2112.05682)",
        supports_causal: true,
        exact: true,
        decode: Some(crate::info::DecodeInfo {
            state: "O(N d): the KV cache",
            exponent: 1.0,
        }),
        scopes: crate::info::CORE_SCOPES,
    };

    fn new(_: Config, shape: &Shape, _vs: nn::Path) -> Result<Self, VariantError> {
        Ok(Sdpa {
            shape: *shape,
            backends: Backends::default(),
        })
    }
}

impl Attention for Sdpa {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        self.backends.sdpa(q, k, v, None, self.shape.causal)
    }

    /// Fused causal kernels skip the blocks above the diagonal: credit N(N+1)/2 scores.
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d) = (s.seq_len as u64, s.head_dim as u64);
        let full = flops::matmul(s.bh(), n, d, n) + flops::matmul(s.bh(), n, n, d);
        FlopCount::forward(if s.causal {
            full * (n + 1) / (2 * n)
        } else {
            full
        })
    }

    /// What the calls so far took (decoding steps included); `None` before any call.
    fn backend(&self) -> Option<String> {
        self.backends.get()
    }

    fn decoder(&self, k: &Tensor, v: &Tensor, capacity: i64) -> Option<Box<dyn Decoder>> {
        Some(Box::new(KvCache::new(
            k,
            v,
            capacity,
            Some(self.backends.clone()),
        )))
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
