use serde::{Deserialize, Serialize};

/// The families of the efficient-transformer taxonomy (Tay et al. 2022, Fig. 2), plus the
/// exact reference and a harness baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Not attention: measures the harness itself.
    Baseline,
    /// Exact softmax attention (naive or fused).
    Exact,
    FixedPatterns,
    CombinedPatterns,
    LearnablePatterns,
    NeuralMemory,
    LowRank,
    Kernels,
    Recurrence,
    Downsampling,
    Conditional,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(v.as_str().unwrap_or("?"))
    }
}

/// What a case measures (attention, block or model): defined with the records, which
/// carry it so that reports never compare an attention alone against a block.
pub use xarena_schema::Scope;

/// The scopes of an attention core: alone, inside an encoder block, or in a stack of
/// them (`block::MODEL_LAYERS`).
pub const CORE_SCOPES: &[Scope] = &[Scope::Attention, Scope::Block, Scope::Model];

/// Metadata kept beside each variant's code.
#[derive(Debug, Clone, Serialize)]
pub struct VariantInfo {
    /// Registry name, as used on the command line.
    pub name: &'static str,
    pub family: Family,
    /// Time complexity of one forward pass in sequence length N (and the variant's
    /// budget: window w, rank k, features m), per head.
    pub time: &'static str,
    /// Memory complexity of the forward pass's working set.
    pub memory: &'static str,
    /// The exponent of N that the paper claims for time and for memory, at a fixed
    /// budget; reports put the fitted exponents beside these.
    pub time_exponent: f64,
    pub memory_exponent: f64,
    /// Citation: authors, year, title, venue or arXiv id.
    pub paper: &'static str,
    pub supports_causal: bool,
    /// Computes exact softmax attention (up to floating point).
    pub exact: bool,
    /// Decodes causally token by token with a state (a KV cache, a window, a recurrent
    /// state): the runner's `decode` mode. `None`: no decoder.
    pub decode: Option<DecodeInfo>,
    /// The scopes it can be measured at.
    pub scopes: &'static [Scope],
}

/// What decoding one token costs, as the paper (or the survey's "decode" column) claims.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DecodeInfo {
    /// The state kept between tokens and its size.
    pub state: &'static str,
    /// The exponent of the context length N in both the per-token time and the state:
    /// 1 for a KV cache, 0 for a window or a recurrent state.
    pub exponent: f64,
}

impl VariantInfo {
    /// The claims a record of this variant carries in `mode`, so that reports need no
    /// registry. A decode case claims what one token costs: the state's growth with N.
    pub fn claims(&self, mode: xarena_schema::Mode) -> xarena_schema::Claims {
        match (mode, &self.decode) {
            (xarena_schema::Mode::Decode, Some(d)) => xarena_schema::Claims {
                family: self.family.to_string(),
                time: format!("per token: O(N^{})", d.exponent),
                memory: d.state.to_string(),
                time_exponent: d.exponent,
                memory_exponent: d.exponent,
                exact: self.exact,
            },
            _ => xarena_schema::Claims {
                family: self.family.to_string(),
                time: self.time.to_string(),
                memory: self.memory.to_string(),
                time_exponent: self.time_exponent,
                memory_exponent: self.memory_exponent,
                exact: self.exact,
            },
        }
    }
}
