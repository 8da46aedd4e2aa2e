//! `empty`: the identity layer. Its latency is the harness's own overhead per iteration
//! (dispatch, synchronisation, timing), the floor under every other measurement.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{Layer, LayerDecoder, Shape};
use crate::error::VariantError;
use crate::flops::FlopCount;
use crate::info::{Family, Scope, VariantInfo};
use crate::registry::LayerVariant;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct Empty;

impl LayerVariant for Empty {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "empty",
        family: Family::Baseline,
        time: "O(1)",
        memory: "O(1)",
        time_exponent: 0.0,
        memory_exponent: 0.0,
        paper: "none: the harness overhead (an identity layer)",
        supports_causal: true,
        exact: false,
        decode: Some(crate::info::DecodeInfo {
            state: "none",
            exponent: 0.0,
        }),
        scopes: &[Scope::Attention, Scope::Block, Scope::Model],
    };

    fn new(_: Config, _: &Shape, _: Scope, _: nn::Path) -> Result<Self, VariantError> {
        Ok(Empty)
    }
}

impl Layer for Empty {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }

    fn flops(&self) -> FlopCount {
        FlopCount::default()
    }

    fn decoder(&self, _: &Tensor, _: i64) -> Option<Box<dyn LayerDecoder>> {
        Some(Box::new(Empty))
    }

    fn decode_flops(&self, _: i64) -> Option<FlopCount> {
        Some(FlopCount::default())
    }
}

/// The identity decoder: the decode mode's harness floor.
impl LayerDecoder for Empty {
    fn step(&mut self, x: &Tensor) -> Tensor {
        x.shallow_clone()
    }

    fn reset(&mut self) {}

    fn state_bytes(&self) -> u64 {
        0
    }
}
