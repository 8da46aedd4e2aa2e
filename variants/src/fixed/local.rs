//! `local`: sliding-window attention (the local attention of Parmar et al. 2018's Image
//! Transformer and of Longformer's window), computed blockwise so that time and memory grow
//! as N x w and no N x N tensor exists.
//!
//! Query i attends to keys j with |i - j| <= `window` (j <= i when causal). The sequence is
//! cut into blocks of b = min(window, N) tokens; each query block meets its own key block
//! and the L = ceil(window / b) blocks on either side (only before it when causal), and a
//! precomputed band mask of shape [blocks, b, (2L+1) b] trims the blocks to the exact
//! window and hides padding. With window >= N there is one block and this is exact
//! attention. The blocks go through the shared fused kernel (`variants/src/fused.rs`), so
//! the [blocks, b, (2L+1) b] scores are never written out. Decoding keeps a ring of the
//! window's keys and values: a state constant in N.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::attention::{Attention, Decoder, Shape};
use crate::decode::WindowCache;
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::fused::{block_softmax, Backends, BlockMask};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Keys visible on each side of a query.
    pub window: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config { window: 128 }
    }
}

pub struct Local {
    shape: Shape,
    /// Block length b.
    block: i64,
    /// Blocks visible on each side, L.
    reach: i64,
    /// Keys visible on each side, w.
    window: i64,
    blocks: i64,
    /// The band, `[1, blocks, b, span * b]`: keys inside the window, not in the padding
    /// and (causal) not in the future; no mask at all when the window covers the
    /// sequence.
    mask: BlockMask,
    backends: Backends,
}

impl Local {
    /// Key blocks each query block meets: 2L + 1, or L + 1 looking back only.
    /// How the band reaches SDPA (for tests).
    pub fn mask(&self) -> &BlockMask {
        &self.mask
    }

    fn span(&self) -> i64 {
        if self.shape.causal {
            self.reach + 1
        } else {
            2 * self.reach + 1
        }
    }
}

/// The band mask, true where a key is hidden, built on the CPU from positions.
fn band_mask(n: i64, block: i64, blocks: i64, reach: i64, window: i64, causal: bool) -> Tensor {
    let span = if causal { reach + 1 } else { 2 * reach + 1 };
    let opts = (Kind::Int64, Device::Cpu);
    // Query positions [blocks, b, 1] and key positions [blocks, 1, span * b].
    let q = (Tensor::arange(blocks, opts).view([blocks, 1, 1]) * block
        + Tensor::arange(block, opts).view([1, block, 1]))
    .view([blocks, block, 1]);
    let first_key_block = Tensor::arange(blocks, opts) - reach;
    let k = (first_key_block.view([blocks, 1]) * block
        + Tensor::arange(span * block, opts).view([1, span * block]))
    .view([blocks, 1, span * block]);
    let dist = &q - &k;
    let mut hidden = k
        .lt(0)
        .logical_or(&k.ge(n))
        .logical_or(&dist.abs().gt(window));
    if causal {
        hidden = hidden.logical_or(&dist.lt(0));
    }
    hidden
}

impl AttentionVariant for Local {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "local",
        family: Family::FixedPatterns,
        time: "O(N w d)",
        memory: "O(N w)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Parmar et al. 2018, Image Transformer (ICML); the sliding window of \
                Beltagy et al. 2020, Longformer (arXiv:2004.05150)",
        supports_causal: true,
        exact: false,
        decode: Some(crate::info::DecodeInfo {
            state: "O(w d): the window's keys and values",
            exponent: 0.0,
        }),
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "window=5";

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("local", "window", config.window)?;
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let block = config.window.min(n);
        let blocks = (n + block - 1) / block;
        let reach = ((config.window + block - 1) / block).min(blocks - 1);
        let visible = band_mask(n, block, blocks, reach, config.window, shape.causal)
            .logical_not()
            .unsqueeze(0);
        let live = Tensor::arange(blocks * block, (Kind::Int64, Device::Cpu))
            .lt(n)
            .view([blocks, block]);
        let mask = BlockMask::new(&visible, Some(&live), vs.kind(), vs.device());
        Ok(Local {
            shape: *shape,
            block,
            reach,
            window: config.window,
            blocks,
            mask,
            backends: Backends::default(),
        })
    }
}

impl Local {
    /// `[b, h, N, d] -> [b, h, blocks, span * block, d]`: for each query block, the key
    /// blocks it meets, gathered by slicing a padded copy (no N x N index).
    fn neighbourhood(&self, x: &Tensor) -> Tensor {
        let (b, h, _, d) = x.size4().expect("[batch, heads, seq, head_dim]");
        let padded_len = self.blocks * self.block;
        let reach = self.reach;
        let after = if self.shape.causal { 0 } else { reach };
        // Pad to whole blocks, then by `reach` blocks before (and after).
        let total = padded_len - self.shape.seq_len;
        let x = x.constant_pad_nd([0, 0, reach * self.block, (total + after * self.block)]);
        let x = x.view([b, h, self.blocks + reach + after, self.block, d]);
        let pieces: Vec<Tensor> = (0..self.span())
            .map(|o| x.narrow(2, o, self.blocks))
            .collect();
        Tensor::cat(&pieces, 3)
    }
}

impl Attention for Local {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (b, h, n, d) = q.size4().expect("[batch, heads, seq, head_dim]");
        let padded_len = self.blocks * self.block;
        let q =
            q.constant_pad_nd([0, 0, 0, padded_len - n])
                .view([b, h, self.blocks, self.block, d]);
        // Every query sees itself (padding queries the last real key), so no row is empty.
        let out = block_softmax(
            &q,
            &self.neighbourhood(k),
            &self.neighbourhood(v),
            &self.mask,
            &self.backends,
        );
        out.view([b, h, padded_len, d]).narrow(2, 0, n)
    }

    fn backend(&self) -> Option<String> {
        self.backends.get()
    }

    /// Every entry of every computed block counts, masked or not.
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let rows = (self.blocks * self.block) as u64;
        let cols = (self.span() * self.block) as u64;
        let d = s.head_dim as u64;
        let per_block = flops::matmul(s.bh(), rows, d, cols) + flops::matmul(s.bh(), rows, cols, d);
        FlopCount::forward(per_block)
    }

    fn decoder(&self, k: &Tensor, v: &Tensor, _capacity: i64) -> Option<Box<dyn Decoder>> {
        Some(Box::new(WindowCache::new(k, v, self.window)))
    }

    /// One query against the window and itself, however long the context.
    fn decode_flops(&self, context: i64) -> Option<FlopCount> {
        let s = &self.shape;
        let (w, d) = (self.window.min(context) as u64 + 1, s.head_dim as u64);
        Some(FlopCount::forward(
            flops::matmul(s.bh(), 1, d, w) + flops::matmul(s.bh(), 1, w, d),
        ))
    }
}
