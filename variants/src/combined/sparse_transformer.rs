//! `sparse-transformer`: the Sparse Transformer's strided factorisation (Child et al.
//! 2019), with the two patterns on separate heads (the paper's multi-head integration):
//! half the heads attend locally, to keys within distance l, the other half strided, to
//! keys at multiples of l; two layers together reach every position. l defaults to
//! ceil(sqrt(N)), giving O(N sqrt(N)) time and memory. The local heads are a `local`
//! core with window l - 1 (keys at distance below l), the strided heads a `strided` core
//! with stride l.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::fixed::local::{self, Local};
use crate::fixed::strided::{self, resolve_stride, Strided};
use crate::flops::FlopCount;
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The pattern's length l: the local window and the stride; 0 picks ceil(sqrt(N)).
    pub stride: i64,
    /// Heads given to the local pattern; the rest are strided. 0 gives half (rounded up).
    pub local_heads: i64,
}

pub struct SparseTransformer {
    local_heads: i64,
    local: Local,
    strided: Strided,
}

fn split(config: &Config, heads: i64) -> i64 {
    if config.local_heads == 0 {
        (heads + 1) / 2
    } else {
        config.local_heads
    }
}

impl AttentionVariant for SparseTransformer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "sparse-transformer",
        family: Family::CombinedPatterns,
        time: "O(N sqrt(N) d)",
        memory: "O(N sqrt(N))",
        time_exponent: 1.5,
        memory_exponent: 1.5,
        paper: "Child et al. 2019, Generating Long Sequences with Sparse Transformers \
                (arXiv:1904.10509), strided factorisation on split heads",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, shape: &Shape) -> Result<(), VariantError> {
        Strided::check(
            &strided::Config {
                stride: config.stride,
            },
            shape,
        )?;
        let local = split(config, shape.heads);
        if local < 1 || local >= shape.heads {
            return Err(VariantError::config(
                "sparse-transformer",
                format!(
                    "needs at least one local and one strided head: local_heads {local} of {} heads",
                    shape.heads
                ),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let l = resolve_stride(config.stride, shape.seq_len);
        let local_heads = split(&config, shape.heads);
        let local_shape = Shape {
            heads: local_heads,
            ..*shape
        };
        let strided_shape = Shape {
            heads: shape.heads - local_heads,
            ..*shape
        };
        // A window of l - 1 keys each side: A(1) = {j : |i - j| < l}.
        let local = Local::new(
            local::Config {
                window: (l - 1).max(1),
            },
            &local_shape,
            &vs / "local",
        )?;
        let strided = Strided::new(
            strided::Config { stride: l },
            &strided_shape,
            &vs / "strided",
        )?;
        Ok(SparseTransformer {
            local_heads,
            local,
            strided,
        })
    }
}

impl Attention for SparseTransformer {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let heads = q.size()[1];
        let (a, b) = (self.local_heads, heads - self.local_heads);
        let part = |t: &Tensor, start: i64, len: i64| t.narrow(1, start, len);
        let y_local = self
            .local
            .attend(&part(q, 0, a), &part(k, 0, a), &part(v, 0, a));
        let y_strided = self
            .strided
            .attend(&part(q, a, b), &part(k, a, b), &part(v, a, b));
        Tensor::cat(&[y_local, y_strided], 1)
    }

    /// Local heads first, then strided, as they run.
    fn backend(&self) -> Option<String> {
        crate::fused::join_backends(&[self.local.backend(), self.strided.backend()])
    }

    fn flops(&self) -> FlopCount {
        self.local.flops() + self.strided.flops()
    }
}
