//! `strided`: dilated attention, the strided pattern of the Sparse Transformer (Child et
//! al. 2019): query i sees keys j with (i - j) mod s = 0. Positions are regrouped by their
//! residue mod s (a reshape and a transpose, no gather), and each of the s groups of
//! N / s tokens attends within itself: time O(N^2 / s d), memory O(N^2 / s). The default
//! stride, ceil(sqrt(N)), gives O(N sqrt(N)). The groups go through the shared fused
//! kernel (`variants/src/fused.rs`) as s blocks of ceil(N / s) queries and keys.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::fused::{block_softmax, Backends, BlockMask};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Stride s; 0 picks ceil(sqrt(N)), the paper's choice.
    pub stride: i64,
}

pub struct Strided {
    shape: Shape,
    stride: i64,
    /// Tokens per residue group, m = ceil(N / s).
    group: i64,
    /// `[1, s, m, m]`: keys attended (not padding, not in the future when causal). The
    /// padding is at the end of the short groups, so this is never a mask: SDPA's causal
    /// triangle, or the full groups and the short ones in two unmasked calls.
    mask: BlockMask,
    backends: Backends,
}

/// The stride a config asks for at length `n`.
pub fn resolve_stride(stride: i64, n: i64) -> i64 {
    let s = if stride == 0 {
        (n as f64).sqrt().ceil() as i64
    } else {
        stride
    };
    s.clamp(1, n.max(1))
}

impl Strided {
    pub fn stride(&self) -> i64 {
        self.stride
    }

    /// How the pattern reaches SDPA (for tests).
    pub fn mask(&self) -> &BlockMask {
        &self.mask
    }
}

impl AttentionVariant for Strided {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "strided",
        family: Family::FixedPatterns,
        time: "O(N^2 / s d); O(N^1.5 d) at s = sqrt(N)",
        memory: "O(N^2 / s); O(N^1.5) at s = sqrt(N)",
        time_exponent: 1.5,
        memory_exponent: 1.5,
        paper: "Child et al. 2019, Generating Long Sequences with Sparse Transformers \
                (arXiv:1904.10509), the strided pattern",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        if config.stride < 0 {
            return Err(VariantError::config(
                "strided",
                format!("stride must be >= 0 (0: sqrt(N)), got {}", config.stride),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let stride = resolve_stride(config.stride, n);
        let group = (n + stride - 1) / stride;
        let opts = (Kind::Int64, tch::Device::Cpu);
        // Position of member t of residue group r: r + t * s.
        let pos = Tensor::arange(stride, opts).view([stride, 1, 1])
            + Tensor::arange(group, opts).view([1, 1, group]) * stride;
        let padding = pos.ge(n);
        let mut hidden = padding.expand([stride, group, group], false);
        if shape.causal {
            let t = Tensor::arange(group, opts);
            let future = t.view([1, group]).gt_tensor(&t.view([group, 1]));
            hidden = hidden.logical_or(&future);
        }
        let live = padding.logical_not().view([stride, group]);
        let visible = hidden.logical_not().unsqueeze(0);
        Ok(Strided {
            shape: *shape,
            stride,
            group,
            mask: BlockMask::new(&visible, Some(&live), vs.kind(), vs.device()),
            backends: Backends::default(),
        })
    }
}

impl Strided {
    /// `[b, h, N, d] -> [b, h, s, m, d]`: group r holds positions r, r + s, r + 2s, ...
    fn regroup(&self, x: &Tensor) -> Tensor {
        let (b, h, n, d) = x.size4().expect("[batch, heads, seq, head_dim]");
        x.constant_pad_nd([0, 0, 0, self.stride * self.group - n])
            .view([b, h, self.group, self.stride, d])
            .transpose(2, 3)
    }
}

impl Attention for Strided {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (b, h, n, d) = q.size4().expect("[batch, heads, seq, head_dim]");
        // Every query sees its group's first member (position r < s <= N), so no row is
        // fully hidden.
        let g = |x: &Tensor| self.regroup(x);
        block_softmax(&g(q), &g(k), &g(v), &self.mask, &self.backends)
            .transpose(2, 3)
            .reshape([b, h, self.stride * self.group, d])
            .narrow(2, 0, n)
    }

    fn backend(&self) -> Option<String> {
        self.backends.get()
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (m, d) = (self.group as u64, s.head_dim as u64);
        let groups = s.bh() * self.stride as u64;
        FlopCount::forward(flops::matmul(groups, m, d, m) + flops::matmul(groups, m, m, d))
    }
}
