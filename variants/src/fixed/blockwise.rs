//! `blockwise`: block-diagonal attention (Qiu et al. 2019, BlockBERT): the sequence is cut
//! into blocks of b tokens and each block attends only within itself. Time O(N b d),
//! memory O(N b). BlockBERT also gives some heads shifted block permutations; this is its
//! identity permutation, the pattern the survey files under fixed patterns. Runs on the
//! shared block-sparse engine (`variants/src/sparse.rs`) with one key block per query
//! block; causal masking hides the later positions of a query's own block.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::FlopCount;
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;
use crate::sparse::BlockPattern;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Block length b; the last block is padded when b does not divide N.
    pub block: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config { block: 128 }
    }
}

pub struct Blockwise {
    shape: Shape,
    pattern: BlockPattern,
}

impl Blockwise {
    pub fn pattern(&self) -> &BlockPattern {
        &self.pattern
    }
}

impl AttentionVariant for Blockwise {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "blockwise",
        family: Family::FixedPatterns,
        time: "O(N b d)",
        memory: "O(N b)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Qiu et al. 2019, Blockwise Self-Attention for Long Document Understanding \
                (arXiv:1911.02972)",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "block=8";

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("blockwise", "block", config.block)
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let block = config.block.min(shape.seq_len);
        let pattern = BlockPattern::block_diagonal(
            shape.seq_len,
            block,
            shape.causal,
            (vs.kind(), vs.device()),
        );
        Ok(Blockwise {
            shape: *shape,
            pattern,
        })
    }
}

impl Attention for Blockwise {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        self.pattern.attend(q, k, v)
    }

    fn backend(&self) -> Option<String> {
        self.pattern.backend()
    }

    fn flops(&self) -> FlopCount {
        self.pattern.flops(self.shape.bh(), self.shape.head_dim)
    }
}
