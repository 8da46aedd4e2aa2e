//! `linformer`: keys and values projected along the sequence axis from N to k rows by
//! learned k x N matrices E and F (Wang et al. 2020), so the score matrix is N x k. E and
//! F are shared across heads (the paper's headwise sharing); `share_kv` uses one matrix
//! for both (its key-value sharing). Time O(N k d), memory O(N k). Not causal: a row of E
//! mixes every position. The matrices are N wide, so a layer is built for one length.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Projected length k.
    pub k: i64,
    /// One projection for keys and values (the paper's "key-value sharing").
    pub share_kv: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            k: 256,
            share_kv: false,
        }
    }
}

pub struct Linformer {
    shape: Shape,
    k: i64,
    /// `[k, N]`, shared across heads (the paper's headwise sharing).
    e: Tensor,
    f: Tensor,
}

impl AttentionVariant for Linformer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "linformer",
        family: Family::LowRank,
        time: "O(N k d)",
        memory: "O(N k)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Wang et al. 2020, Linformer: Self-Attention with Linear Complexity \
                (arXiv:2006.04768)",
        supports_causal: false,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("linformer", "k", config.k)?;
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        // nn.Linear's default init for an N -> k map.
        let bound = (n as f64).powf(-0.5);
        let e = vs.uniform("e", &[config.k, n], -bound, bound);
        let f = if config.share_kv {
            e.shallow_clone()
        } else {
            vs.uniform("f", &[config.k, n], -bound, bound)
        };
        Ok(Linformer {
            shape: *shape,
            k: config.k,
            e,
            f,
        })
    }
}

impl Attention for Linformer {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        // [k, N] @ [b, h, N, d] -> [b, h, k, d]
        let k = self.e.matmul(k);
        let v = self.f.matmul(v);
        crate::exact::vanilla::softmax_attention(q, &k, &v, None)
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, k) = (s.seq_len as u64, s.head_dim as u64, self.k as u64);
        let projections = 2 * flops::matmul(s.bh(), k, n, d);
        let attention = flops::matmul(s.bh(), n, d, k) + flops::matmul(s.bh(), n, k, d);
        FlopCount::forward(projections + attention)
    }
}
