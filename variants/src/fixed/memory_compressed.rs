//! `memory-compressed`: the decoder attention of Liu et al. 2018 (Generating Wikipedia by
//! Summarizing Long Sequences). Half the heads run memory-compressed attention: keys and
//! values are compressed along the sequence by a strided convolution (kernel = stride =
//! c), so scores are N x N/c. The other half run the paper's local attention: blocks of b
//! tokens attending within themselves. Time O(N^2 / c d + N b d), memory O(N^2 / c + N b):
//! still quadratic, c times smaller.
//!
//! Causal: a query sees a compressed slot only when every position the slot summarises
//! is at or before it; a query with no such slot yet (the first c - 1) gets zeros from
//! the compressed heads. The local heads run on the shared block-sparse engine
//! (`variants/src/sparse.rs`).

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;
use crate::sparse::BlockPattern;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Compression c: the convolution's kernel and stride (the paper uses 3).
    pub compression: i64,
    /// Block length of the local heads (the paper uses 256).
    pub block: i64,
    /// Heads given to local attention; 0 gives half (rounded down).
    pub local_heads: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            compression: 3,
            block: 256,
            local_heads: 0,
        }
    }
}

pub struct MemoryCompressed {
    shape: Shape,
    c: i64,
    slots: i64,
    local_heads: i64,
    /// `[d, d, c]` convolutions of keys and of values, shared by the compressed heads.
    conv_k: Tensor,
    conv_v: Tensor,
    /// `[N, slots]`, true where a slot is hidden from a query (causal only).
    hidden: Option<Tensor>,
    /// `[N, 1]`: 1 where a query sees at least one slot (causal only).
    sees_any: Option<Tensor>,
    local: BlockPattern,
}

fn local_heads(config: &Config, heads: i64) -> i64 {
    if config.local_heads == 0 {
        heads / 2
    } else {
        config.local_heads
    }
}

impl MemoryCompressed {
    pub fn conv_weights(&self) -> (&Tensor, &Tensor) {
        (&self.conv_k, &self.conv_v)
    }

    /// `[b, h, N, d] -> [b, h, ceil(N / c), d]` through the strided convolution.
    pub fn compress(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let (b, h, n, d) = x.size4().expect("[batch, heads, seq, head_dim]");
        let x = x
            .constant_pad_nd([0, 0, 0, self.slots * self.c - n])
            .reshape([b * h, self.slots * self.c, d])
            .transpose(1, 2);
        x.conv1d(w, None::<Tensor>, [self.c], [0], [1], 1)
            .transpose(1, 2)
            .reshape([b, h, self.slots, d])
    }

    fn compressed(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let d = q.size()[3];
        let k = self.compress(k, &self.conv_k);
        let v = self.compress(v, &self.conv_v);
        let mut scores = (q * (d as f64).powf(-0.5)).matmul(&k.transpose(-2, -1));
        if let Some(h) = &self.hidden {
            scores = scores.masked_fill(h, f64::NEG_INFINITY);
        }
        let out = scores.softmax(-1, scores.kind()).matmul(&v);
        match &self.sees_any {
            Some(any) => out * any,
            None => out,
        }
    }
}

impl AttentionVariant for MemoryCompressed {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "memory-compressed",
        family: Family::FixedPatterns,
        time: "O(N^2 / c d + N b d)",
        memory: "O(N^2 / c + N b)",
        time_exponent: 2.0,
        memory_exponent: 2.0,
        paper: "Liu et al. 2018, Generating Wikipedia by Summarizing Long Sequences (ICLR), \
                memory-compressed and local attention",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "block=8";

    fn check(config: &Config, shape: &Shape) -> Result<(), VariantError> {
        VariantError::positive("memory-compressed", "compression", config.compression)?;
        VariantError::positive("memory-compressed", "block", config.block)?;
        let local = local_heads(config, shape.heads);
        if local < 0 || local >= shape.heads {
            return Err(VariantError::config(
                "memory-compressed",
                format!(
                    "local_heads must leave at least one compressed head: {local} of {} heads",
                    shape.heads
                ),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let c = config.compression.min(n);
        let slots = (n + c - 1) / c;
        let d = shape.head_dim;
        // nn.Conv1d's default init.
        let bound = ((d * c) as f64).powf(-0.5);
        let conv_k = vs.uniform("conv_k", &[d, d, c], -bound, bound);
        let conv_v = vs.uniform("conv_v", &[d, d, c], -bound, bound);
        let (hidden, sees_any) = if shape.causal {
            let opts = (Kind::Int64, tch::Device::Cpu);
            let last = (Tensor::arange(slots, opts) + 1) * c - 1;
            let hidden = last
                .view([1, slots])
                .gt_tensor(&Tensor::arange(n, opts).view([n, 1]));
            let any = hidden.logical_not().any_dim(1, true).to_kind(vs.kind());
            // A row that sees nothing is unmasked (its output is zeroed) to keep softmax finite.
            let hidden = hidden.logical_and(&any.to_kind(Kind::Bool));
            (
                Some(hidden.to_device(vs.device())),
                Some(any.to_device(vs.device())),
            )
        } else {
            (None, None)
        };
        let local = BlockPattern::block_diagonal(
            n,
            config.block.min(n),
            shape.causal,
            (vs.kind(), vs.device()),
        );
        Ok(MemoryCompressed {
            shape: *shape,
            c,
            slots,
            local_heads: local_heads(&config, shape.heads),
            conv_k,
            conv_v,
            hidden,
            sees_any,
            local,
        })
    }
}

impl Attention for MemoryCompressed {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let heads = q.size()[1];
        let (a, b) = (self.local_heads, heads - self.local_heads);
        let part = |t: &Tensor, start: i64, len: i64| t.narrow(1, start, len);
        let compressed = self.compressed(&part(q, a, b), &part(k, a, b), &part(v, a, b));
        if a == 0 {
            return compressed;
        }
        let local = self
            .local
            .attend(&part(q, 0, a), &part(k, 0, a), &part(v, 0, a));
        Tensor::cat(&[local, compressed], 1)
    }

    fn backend(&self) -> Option<String> {
        self.local.backend()
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, c, slots) = (
            s.seq_len as u64,
            s.head_dim as u64,
            self.c as u64,
            self.slots as u64,
        );
        let batch = s.batch as u64;
        let (a, b) = (self.local_heads as u64, (s.heads - self.local_heads) as u64);
        // Two convolutions: each output slot is a (d x c d) product, per head.
        let conv = 2 * flops::matmul(batch * b, slots, c * d, d);
        let scores = flops::matmul(batch * b, n, d, slots) + flops::matmul(batch * b, n, slots, d);
        let local = self.local.flops(batch * a, s.head_dim).forward;
        FlopCount::forward(conv + scores + local)
    }
}
