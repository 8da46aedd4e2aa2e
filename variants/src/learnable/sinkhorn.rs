//! `sinkhorn`: Sparse Sinkhorn attention (Tay et al. 2020). Keys are cut into blocks of b;
//! a sorting network scores, from each block's summary (the sum of its keys), where every
//! block should go; Sinkhorn iterations (alternate row and column normalisation in log
//! space, at a temperature) turn the scores into a soft permutation P, doubly stochastic.
//! P re-orders the key and value blocks, and each query block attends to its own block
//! and to the block sorted into its place: scores are [blocks, b, 2b]. Causal: a block
//! may only receive blocks strictly before it, and the sort is normalised per row only
//! (column normalisation would mix in the scores of later blocks, and through them later
//! tokens); the first block receives none, and its own block is masked to earlier
//! positions. Time O(N b d + (N / b)^2 b d) (the soft re-ordering), memory
//! O(N b + (N / b)^2). The [blocks, b, 2b] attention goes through the shared fused kernel
//! (`variants/src/fused.rs`).

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::fused::{block_softmax, Backends, BlockMask};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Block length b.
    pub block: i64,
    /// Sinkhorn iterations.
    pub iterations: i64,
    /// Temperature of the sorting logits.
    pub temperature: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            block: 64,
            iterations: 8,
            temperature: 0.75,
        }
    }
}

pub struct Sinkhorn {
    shape: Shape,
    block: i64,
    blocks: i64,
    iterations: i64,
    temperature: f64,
    /// `[d, blocks]`: the sorting network, one linear map from a block summary to its
    /// scores over destinations.
    sorter: Tensor,
    /// `[1, blocks, b, 2b]`: keys each query attends, sorted block then own block. Not
    /// causal, only the last block's own padding is hidden, at the end of its keys, so no
    /// mask reaches the fused kernel (see [`crate::fused::BlockMask`]).
    mask: BlockMask,
    backends: Backends,
    /// `[blocks, blocks]`, causal only: true where block j may not be sorted into place i
    /// (j >= i).
    future_blocks: Option<Tensor>,
}

/// Sinkhorn normalisation in log space: rows, then columns, `iterations` times.
pub fn sinkhorn(log_p: &Tensor, iterations: i64) -> Tensor {
    let mut p = log_p.shallow_clone();
    for _ in 0..iterations {
        p = &p - p.logsumexp([-1], true);
        p = &p - p.logsumexp([-2], true);
    }
    p.exp()
}

/// The causal sort: a softmax of each row over the blocks `future` leaves (strictly
/// earlier ones); a row with none left is all 0. The normaliser sees hidden entries as a
/// large negative number rather than -inf, so no 0/0 reaches the gradients.
pub fn causal_sort(log_p: &Tensor, future: &Tensor) -> Tensor {
    let floor = if log_p.kind() == Kind::Half {
        -6e4
    } else {
        -1e9
    };
    let lse = log_p.masked_fill(future, floor).logsumexp([-1], true);
    (log_p.masked_fill(future, f64::NEG_INFINITY) - lse).exp()
}

impl AttentionVariant for Sinkhorn {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "sinkhorn",
        family: Family::LearnablePatterns,
        time: "O(N b d + (N/b)^2 b d)",
        memory: "O(N b + (N/b)^2)",
        // At a fixed block size the re-ordering, (N / b)^2 blocks, is the asymptotic term.
        time_exponent: 2.0,
        memory_exponent: 2.0,
        paper: "Tay et al. 2020, Sparse Sinkhorn Attention (ICML)",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "block=8";

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("sinkhorn", "block", config.block)?;
        VariantError::positive("sinkhorn", "iterations", config.iterations)?;
        if !(config.temperature.is_finite() && config.temperature > 0.0) {
            return Err(VariantError::config(
                "sinkhorn",
                format!("temperature must be positive, got {}", config.temperature),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let block = config.block.min(n);
        let blocks = (n + block - 1) / block;
        let bound = (shape.head_dim as f64).powf(-0.5);
        let sorter = vs.uniform("sorter", &[shape.head_dim, blocks], -bound, bound);
        let opts = (Kind::Int64, tch::Device::Cpu);
        let pos = Tensor::arange(blocks * block, opts);
        let padding = pos.ge(n).view([blocks, 1, block]);
        let (own, sorted, future_blocks) = if shape.causal {
            let t = Tensor::arange(block, opts);
            let later = t.view([1, block]).gt_tensor(&t.view([block, 1])); // [b, b]
            let first = Tensor::arange(blocks, opts).eq(0).view([blocks, 1, 1]);
            let bt = Tensor::arange(blocks, opts);
            let future = bt.view([1, blocks]).ge_tensor(&bt.view([blocks, 1]));
            (
                padding.logical_or(&later.unsqueeze(0)),
                first.expand([blocks, block, block], false),
                Some(future.to_device(vs.device())),
            )
        } else {
            (
                padding.expand([blocks, block, block], false),
                padding.zeros_like().expand([blocks, block, block], false),
                None,
            )
        };
        // Padding keys are zero; in the own block they are hidden, in the sorted block
        // they are mixed in at most at the weight P gives the last block's padding. The
        // own block comes last so that its padding ends the row.
        let hidden = Tensor::cat(&[sorted, own], 2);
        let visible = hidden.logical_not().unsqueeze(0);
        let live = pos.lt(n).view([blocks, block]);
        let mask = BlockMask::new(&visible, Some(&live), vs.kind(), vs.device());
        Ok(Sinkhorn {
            shape: *shape,
            block,
            blocks,
            iterations: config.iterations,
            temperature: config.temperature,
            sorter,
            mask,
            backends: Backends::default(),
            future_blocks,
        })
    }
}

impl Sinkhorn {
    /// How the block pattern reaches SDPA (for tests).
    pub fn mask(&self) -> &BlockMask {
        &self.mask
    }

    fn blocks_of(&self, x: &Tensor) -> Tensor {
        let (b, h, n, d) = x.size4().expect("[batch, heads, seq, head_dim]");
        x.constant_pad_nd([0, 0, 0, self.blocks * self.block - n])
            .view([b, h, self.blocks, self.block, d])
    }

    /// The soft permutation of key blocks, `[b, h, blocks, blocks]`: row i says which
    /// blocks are sorted into place i.
    pub fn permutation(&self, k: &Tensor) -> Tensor {
        self.permutation_of_blocks(&self.blocks_of(k))
    }

    /// [`Self::permutation`] from keys already cut into blocks, `[b, h, blocks, b, d]`.
    fn permutation_of_blocks(&self, kb: &Tensor) -> Tensor {
        let summary = kb.sum_dim_intlist(3, false, None); // [b, h, nb, d]
        let logits = summary.matmul(&self.sorter).transpose(-2, -1) / self.temperature;
        match &self.future_blocks {
            Some(future) => causal_sort(&logits, future),
            None => sinkhorn(&logits, self.iterations),
        }
    }
}

impl Attention for Sinkhorn {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (b, h, n, d) = q.size4().expect("[batch, heads, seq, head_dim]");
        let (nb, bl) = (self.blocks, self.block);
        let (kb, vb) = (self.blocks_of(k), self.blocks_of(v));
        let p = self.permutation_of_blocks(&kb);
        let sort = |x: &Tensor| {
            p.matmul(&x.reshape([b, h, nb, bl * d]))
                .view([b, h, nb, bl, d])
        };
        let keys = Tensor::cat(&[&sort(&kb), &kb], 3); // [b, h, nb, 2b, d]
        let values = Tensor::cat(&[&sort(&vb), &vb], 3);
        let q = self.blocks_of(q);
        block_softmax(&q, &keys, &values, &self.mask, &self.backends)
            .view([b, h, nb * bl, d])
            .narrow(2, 0, n)
    }

    fn backend(&self) -> Option<String> {
        self.backends.get()
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (nb, bl, d) = (self.blocks as u64, self.block as u64, s.head_dim as u64);
        let sorting = flops::matmul(s.bh(), nb, d, nb) + 2 * flops::matmul(s.bh(), nb, nb, bl * d);
        let attention =
            flops::matmul(s.bh() * nb, bl, d, 2 * bl) + flops::matmul(s.bh() * nb, bl, 2 * bl, d);
        FlopCount::forward(sorting + attention)
    }
}
