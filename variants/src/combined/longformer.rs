//! `longformer`: a sliding window plus global tokens (Beltagy et al. 2020). Query i sees
//! keys with |i - j| <= window / 2 (only j <= i when causal); global tokens see every key
//! and are seen by every query. Computed block-sparse (the window as neighbour blocks
//! trimmed to the band, the global keys appended to every block) plus exact rows for the
//! global queries: time O(N (w + g) d), memory O(N (w + g)). The block-sparse part is the
//! shared engine (`variants/src/sparse.rs`), with blocks of w / 2 tokens; a global key
//! that also lies in the window is attended once.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::FlopCount;
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;
use crate::sparse::{BlockPattern, GlobalQueries, PairRule};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Window w: w / 2 keys on each side of a query (the paper's convention).
    pub window: i64,
    /// Positions of the global tokens (a classification token at 0, by default).
    pub global: Vec<i64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 256,
            global: vec![0],
        }
    }
}

struct Band(i64);

impl PairRule for Band {
    fn visible(&self, i: i64, j: i64) -> bool {
        (i - j).abs() <= self.0
    }
}

pub struct Longformer {
    shape: Shape,
    pattern: BlockPattern,
    globals: GlobalQueries,
}

impl Longformer {
    pub fn pattern(&self) -> &BlockPattern {
        &self.pattern
    }
}

impl AttentionVariant for Longformer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "longformer",
        family: Family::CombinedPatterns,
        time: "O(N (w + g) d)",
        memory: "O(N (w + g))",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Beltagy et al. 2020, Longformer: The Long-Document Transformer \
                (arXiv:2004.05150)",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "window=8:global=[3]";

    fn check(config: &Config, shape: &Shape) -> Result<(), VariantError> {
        VariantError::positive("longformer", "window", config.window)?;
        if let Some(bad) = config.global.iter().find(|&&p| p < 0 || p >= shape.seq_len) {
            return Err(VariantError::config(
                "longformer",
                format!("global position {bad} is outside 0..{}", shape.seq_len),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let radius = (config.window / 2).max(1);
        let block = radius.min(n);
        let blocks = (n + block - 1) / block;
        let reach = (radius + block - 1) / block;
        let after = if shape.causal { 0 } else { reach };
        let lists: Vec<Vec<i64>> = (0..blocks)
            .map(|q| {
                (q - reach..=q + after)
                    .filter(|b| (0..blocks).contains(b))
                    .collect()
            })
            .collect();
        let mut global = config.global.clone();
        global.sort_unstable();
        global.dedup();
        let pattern = BlockPattern::new(
            n,
            block,
            &lists,
            &global,
            shape.causal,
            &Band(radius),
            (vs.kind(), vs.device()),
        );
        Ok(Longformer {
            shape: *shape,
            pattern,
            globals: GlobalQueries::new(&global, n, shape.causal, vs.device()),
        })
    }
}

impl Attention for Longformer {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        self.globals.apply(self.pattern.attend(q, k, v), q, k, v)
    }

    fn backend(&self) -> Option<String> {
        self.pattern.backend()
    }

    /// The block-sparse part plus the global queries' full rows.
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        self.pattern.flops(s.bh(), s.head_dim) + self.globals.flops(s.bh(), s.seq_len, s.head_dim)
    }
}
