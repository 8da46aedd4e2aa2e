//! `bigbird`: BigBird's blocked sparse attention (Zaheer et al. 2020, the ITC form). The
//! sequence is cut into blocks of b tokens; each query block attends to its window of
//! neighbour blocks, to r random blocks drawn once per layer, and to the g global blocks
//! at the start, whose queries in turn attend to everything. Time O(N (w + r + g) b d),
//! memory O(N (w + r + g) b).
//!
//! The random blocks of each query block are drawn, when the layer is built, from the
//! blocks outside its window and outside the global blocks (LibTorch's generator, which
//! the runner seeds per case). Window and random blocks run on the shared block-sparse
//! engine (`variants/src/sparse.rs`), the global keys appended to every query block;
//! the global queries' rows are computed exactly over all keys. Not causal.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::FlopCount;
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;
use crate::sparse::{BlockPattern, GlobalQueries, WholeBlocks};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Block length b.
    pub block: i64,
    /// Neighbour blocks in the window, odd: the block itself and (w - 1) / 2 each side.
    pub window_blocks: i64,
    /// Random key blocks per query block.
    pub random_blocks: i64,
    /// Global blocks at the start of the sequence.
    pub global_blocks: i64,
}

impl Default for Config {
    /// The paper's base setting: blocks of 64, 3 window, 3 random and 2 global blocks.
    fn default() -> Self {
        Config {
            block: 64,
            window_blocks: 3,
            random_blocks: 3,
            global_blocks: 2,
        }
    }
}

pub struct BigBird {
    shape: Shape,
    pattern: BlockPattern,
    /// The random blocks of each query block, as drawn.
    random: Vec<Vec<i64>>,
    globals: GlobalQueries,
}

impl BigBird {
    pub fn pattern(&self) -> &BlockPattern {
        &self.pattern
    }

    pub fn random_blocks(&self) -> &[Vec<i64>] {
        &self.random
    }
}

impl AttentionVariant for BigBird {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "bigbird",
        family: Family::CombinedPatterns,
        time: "O(N (w + r + g) b d)",
        memory: "O(N (w + r + g) b)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences (NeurIPS)",
        supports_causal: false,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("bigbird", "block", config.block)?;
        VariantError::positive("bigbird", "window_blocks", config.window_blocks)?;
        if config.window_blocks % 2 == 0 {
            return Err(VariantError::config(
                "bigbird",
                format!("window_blocks must be odd, got {}", config.window_blocks),
            ));
        }
        if config.random_blocks < 0 || config.global_blocks < 0 {
            return Err(VariantError::config(
                "bigbird",
                "random_blocks and global_blocks must be >= 0",
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let block = config.block.min(n);
        let blocks = (n + block - 1) / block;
        let half = config.window_blocks / 2;
        let globals = config.global_blocks.min(blocks);
        let mut random = Vec::new();
        let lists: Vec<Vec<i64>> = (0..blocks)
            .map(|q| {
                let window: Vec<i64> = (q - half..=q + half)
                    .filter(|b| (0..blocks).contains(b))
                    .collect();
                // Random blocks come from outside the window and the global blocks,
                // drawn with LibTorch's generator (seeded per case by the runner).
                let pool: Vec<i64> = (globals..blocks).filter(|b| !window.contains(b)).collect();
                let take = config.random_blocks.min(pool.len() as i64);
                let picks: Vec<i64> = if take > 0 {
                    let perm = Tensor::randperm(pool.len() as i64, (Kind::Int64, tch::Device::Cpu));
                    Vec::<i64>::try_from(&perm.narrow(0, 0, take))
                        .expect("indices")
                        .into_iter()
                        .map(|i| pool[i as usize])
                        .collect()
                } else {
                    Vec::new()
                };
                random.push(picks.clone());
                window.into_iter().chain(picks).collect()
            })
            .collect();
        let global: Vec<i64> = (0..(globals * block).min(n)).collect();
        let pattern = BlockPattern::new(
            n,
            block,
            &lists,
            &global,
            false,
            &WholeBlocks,
            (vs.kind(), vs.device()),
        );
        Ok(BigBird {
            shape: *shape,
            pattern,
            random,
            globals: GlobalQueries::new(&global, n, false, vs.device()),
        })
    }
}

impl Attention for BigBird {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        self.globals.apply(self.pattern.attend(q, k, v), q, k, v)
    }

    fn backend(&self) -> Option<String> {
        self.pattern.backend()
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        self.pattern.flops(s.bh(), s.head_dim) + self.globals.flops(s.bh(), s.seq_len, s.head_dim)
    }
}
