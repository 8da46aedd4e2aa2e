//! Names to constructors and metadata: the one list of variants.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::nn;

use crate::attention::{Attention, Layer, MultiHeadAttention, Shape};
use crate::block::{EncoderBlock, Stack, MODEL_LAYERS};
use crate::error::VariantError;
use crate::info::{Scope, VariantInfo};
use crate::{
    baseline, combined, conditional, downsampling, exact, fixed, kernel, learnable, lowrank,
    memory, recurrence,
};

/// An attention core with its config and metadata.
pub trait AttentionVariant: Attention + Sized + 'static {
    type Config: Serialize + DeserializeOwned + Default;
    const INFO: VariantInfo;
    /// Parameters for the shared tests' small shapes (N about 40, head_dim 8), in
    /// `key=value:key=value` form: budgets below the length, so that patterns are sparse
    /// and windows, memories and states are smaller than the context. Empty: the defaults.
    const TEST_PARAMS: &'static str = "";
    /// Rejects a configuration that cannot run at `shape`, before any tensor is made.
    fn check(_config: &Self::Config, _shape: &Shape) -> Result<(), VariantError> {
        Ok(())
    }
    /// Builds the variant; `config` has passed [`AttentionVariant::check`].
    fn new(config: Self::Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError>;
}

/// A variant that is a whole layer for a scope (replaces the block, or measures nothing).
pub trait LayerVariant: Layer + Sized + 'static {
    type Config: Serialize + DeserializeOwned + Default;
    const INFO: VariantInfo;
    /// Parameters for the shared tests' small shapes (N about 40, head_dim 8), in
    /// `key=value:key=value` form: budgets below the length, so that patterns are sparse
    /// and windows, memories and states are smaller than the context. Empty: the defaults.
    const TEST_PARAMS: &'static str = "";
    /// Rejects a configuration that cannot run at `shape`, before any tensor is made.
    fn check(_config: &Self::Config, _shape: &Shape) -> Result<(), VariantError> {
        Ok(())
    }
    /// Builds the layer for `scope`, one of `INFO.scopes`.
    fn new(
        config: Self::Config,
        shape: &Shape,
        scope: Scope,
        vs: nn::Path,
    ) -> Result<Self, VariantError>;
}

type BuildFn = fn(&Value, &Shape, Scope, nn::Path) -> Result<Box<dyn Layer>, VariantError>;

/// One registered variant.
pub struct Entry {
    pub info: VariantInfo,
    /// The variant's own small test configuration (its `TEST_PARAMS`).
    pub test_params: &'static str,
    normalize: fn(&Value) -> Result<Value, VariantError>,
    check: fn(&Value, &Shape) -> Result<(), VariantError>,
    build: BuildFn,
}

impl Entry {
    /// The parameters with every default filled in, or the reason they are invalid.
    pub fn normalize(&self, params: &Value) -> Result<Value, VariantError> {
        (self.normalize)(params)
    }

    /// Everything that can be known about building at `shape` without building: the
    /// parameters, causal support, the variant's own limits.
    pub fn check(&self, params: &Value, shape: &Shape) -> Result<(), VariantError> {
        (self.check)(params, shape)
    }

    /// Whether the variant can be measured at `scope`.
    pub fn check_scope(&self, scope: Scope) -> Result<(), VariantError> {
        scope_support(&self.info, scope)
    }

    /// The variant with its small test configuration, every other default filled in:
    /// what the registry-wide tests (causality, decoding, precision) build.
    pub fn test_spec(&self) -> VariantSpec {
        let text = if self.test_params.is_empty() {
            self.info.name.to_string()
        } else {
            format!("{}:{}", self.info.name, self.test_params)
        };
        text.parse::<VariantSpec>()
            .and_then(|s| s.normalized())
            .unwrap_or_else(|e| panic!("{}'s TEST_PARAMS: {e}", self.info.name))
    }

    /// The default parameters.
    pub fn defaults(&self) -> Value {
        self.normalize(&Value::Object(Map::new()))
            .expect("defaults are valid")
    }
}

fn parse<C: DeserializeOwned>(name: &str, params: &Value) -> Result<C, VariantError> {
    serde_json::from_value(params.clone()).map_err(|e| VariantError::Params {
        variant: name.to_string(),
        message: e.to_string(),
    })
}

fn normalize<C: Serialize + DeserializeOwned>(
    name: &'static str,
) -> impl Fn(&Value) -> Result<Value, VariantError> {
    move |params| {
        let config: C = parse(name, params)?;
        Ok(serde_json::to_value(config).expect("configs serialise"))
    }
}

fn normalize_attention<V: AttentionVariant>(params: &Value) -> Result<Value, VariantError> {
    normalize::<V::Config>(V::INFO.name)(params)
}

fn normalize_layer<V: LayerVariant>(params: &Value) -> Result<Value, VariantError> {
    normalize::<V::Config>(V::INFO.name)(params)
}

fn causal_support(info: &VariantInfo, shape: &Shape) -> Result<(), VariantError> {
    if shape.causal && !info.supports_causal {
        return Err(VariantError::NoCausal {
            variant: info.name.into(),
        });
    }
    Ok(())
}

fn scope_support(info: &VariantInfo, scope: Scope) -> Result<(), VariantError> {
    if !info.scopes.contains(&scope) {
        let supported: Vec<String> = info.scopes.iter().map(|s| s.to_string()).collect();
        return Err(VariantError::Scope {
            variant: info.name.into(),
            scope: scope.to_string(),
            supported: supported.join(", "),
        });
    }
    Ok(())
}

fn check_attention<V: AttentionVariant>(params: &Value, shape: &Shape) -> Result<(), VariantError> {
    causal_support(&V::INFO, shape)?;
    V::check(&parse(V::INFO.name, params)?, shape)
}

fn check_layer<V: LayerVariant>(params: &Value, shape: &Shape) -> Result<(), VariantError> {
    causal_support(&V::INFO, shape)?;
    V::check(&parse(V::INFO.name, params)?, shape)
}

fn build_attention<V: AttentionVariant>(
    params: &Value,
    shape: &Shape,
    scope: Scope,
    vs: nn::Path,
) -> Result<Box<dyn Layer>, VariantError> {
    check_attention::<V>(params, shape)?;
    scope_support(&V::INFO, scope)?;
    let block = |vs: nn::Path| -> Result<Box<dyn Layer>, VariantError> {
        let core = V::new(parse(V::INFO.name, params)?, shape, &vs / "core")?;
        let mha = MultiHeadAttention::new(&vs / "attn", *shape, Box::new(core));
        Ok(Box::new(EncoderBlock::new(
            &vs / "block",
            *shape,
            Box::new(mha),
        )))
    };
    Ok(match scope {
        Scope::Attention => {
            let core = V::new(parse(V::INFO.name, params)?, shape, &vs / "core")?;
            Box::new(MultiHeadAttention::new(
                &vs / "attn",
                *shape,
                Box::new(core),
            ))
        }
        Scope::Block => block(vs)?,
        Scope::Model => Box::new(Stack::new(
            (0..MODEL_LAYERS)
                .map(|i| block(&vs / format!("layer{i}")))
                .collect::<Result<_, _>>()?,
            shape,
        )),
    })
}

fn build_whole<V: LayerVariant>(
    params: &Value,
    shape: &Shape,
    scope: Scope,
    vs: nn::Path,
) -> Result<Box<dyn Layer>, VariantError> {
    check_layer::<V>(params, shape)?;
    scope_support(&V::INFO, scope)?;
    Ok(Box::new(V::new(
        parse(V::INFO.name, params)?,
        shape,
        scope,
        vs,
    )?))
}

fn attention<V: AttentionVariant>() -> Entry {
    Entry {
        info: V::INFO,
        test_params: V::TEST_PARAMS,
        normalize: normalize_attention::<V>,
        check: check_attention::<V>,
        build: build_attention::<V>,
    }
}

fn layer<V: LayerVariant>() -> Entry {
    Entry {
        info: V::INFO,
        test_params: V::TEST_PARAMS,
        normalize: normalize_layer::<V>,
        check: check_layer::<V>,
        build: build_whole::<V>,
    }
}

/// Every variant, in the order `xarena list` prints them.
pub fn registry() -> Vec<Entry> {
    vec![
        layer::<baseline::empty::Empty>(),
        attention::<exact::vanilla::Vanilla>(),
        attention::<exact::sdpa::Sdpa>(),
        attention::<fixed::local::Local>(),
        attention::<fixed::blockwise::Blockwise>(),
        attention::<fixed::strided::Strided>(),
        attention::<fixed::memory_compressed::MemoryCompressed>(),
        attention::<combined::sparse_transformer::SparseTransformer>(),
        attention::<combined::axial::Axial>(),
        attention::<combined::longformer::Longformer>(),
        attention::<combined::bigbird::BigBird>(),
        attention::<learnable::reformer::Reformer>(),
        attention::<learnable::routing::Routing>(),
        attention::<learnable::sinkhorn::Sinkhorn>(),
        attention::<memory::set_transformer::SetTransformer>(),
        attention::<memory::perceiver::Perceiver>(),
        attention::<lowrank::linformer::Linformer>(),
        attention::<lowrank::nystromformer::Nystromformer>(),
        attention::<lowrank::synthesizer::Synthesizer>(),
        attention::<kernel::performer::Performer>(),
        attention::<kernel::linear_transformer::LinearTransformer>(),
        attention::<kernel::cosformer::Cosformer>(),
        layer::<recurrence::transformer_xl::TransformerXl>(),
        layer::<recurrence::compressive::Compressive>(),
        layer::<downsampling::funnel::Funnel>(),
        layer::<conditional::switch::Switch>(),
        layer::<conditional::moe_top2::MoeTop2>(),
    ]
}

pub fn find(name: &str) -> Result<Entry, VariantError> {
    registry()
        .into_iter()
        .find(|e| e.info.name == name)
        .ok_or_else(|| VariantError::Unknown(name.to_string()))
}

/// A variant with its parameters, as named on the command line (`local:window=128`) or in
/// a sweep file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

impl VariantSpec {
    pub fn new(name: &str) -> Self {
        VariantSpec {
            name: name.to_string(),
            params: Map::new(),
        }
    }

    /// Checks the name and parameters; returns the spec with every default filled in.
    pub fn normalized(&self) -> Result<VariantSpec, VariantError> {
        let entry = find(&self.name)?;
        let params = entry.normalize(&Value::Object(self.params.clone()))?;
        Ok(VariantSpec {
            name: self.name.clone(),
            params: params.as_object().cloned().unwrap_or_default(),
        })
    }

    /// A short display name: the variant's name plus the parameters that differ from its
    /// defaults, e.g. `local(window=128)`.
    pub fn label(&self) -> String {
        let defaults = find(&self.name)
            .map(|e| e.defaults())
            .unwrap_or(Value::Null);
        let changed: Vec<String> = self
            .params
            .iter()
            .filter(|(k, v)| defaults.get(k.as_str()) != Some(v))
            .map(|(k, v)| format!("{k}={}", display_value(v)))
            .collect();
        if changed.is_empty() {
            self.name.clone()
        } else {
            format!("{}({})", self.name, changed.join(","))
        }
    }
}

fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl std::str::FromStr for VariantSpec {
    type Err = VariantError;

    /// `name` or `name:key=value:key=value`; values are read as JSON (numbers, booleans)
    /// and otherwise as strings. A key given twice, or a whole number outside i64 (which
    /// JSON would read as a float), is refused with the parameter's name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split(':');
        let name = parts.next().unwrap_or_default().trim();
        if name.is_empty() {
            return Err(VariantError::Unknown(s.to_string()));
        }
        let params_error = |message: String| VariantError::Params {
            variant: name.to_string(),
            message,
        };
        let mut params = Map::new();
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| params_error(format!("`{part}` is not key=value")))?;
            let (k, v) = (k.trim(), v.trim());
            let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                v.parse::<i64>().map_err(|_| {
                    params_error(format!(
                        "{k}: integer out of range: {v} (at most {})",
                        i64::MAX
                    ))
                })?;
            }
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
            if params.insert(k.to_string(), value).is_some() {
                return Err(params_error(format!("{k} given twice")));
            }
        }
        Ok(VariantSpec {
            name: name.to_string(),
            params,
        })
    }
}

/// Builds the layer a case measures: the variant's core wrapped for `scope`, with its
/// parameters under `vs`.
pub fn build_layer(
    spec: &VariantSpec,
    shape: &Shape,
    scope: Scope,
    vs: nn::Path,
) -> Result<Box<dyn Layer>, VariantError> {
    let entry = find(&spec.name)?;
    (entry.build)(&Value::Object(spec.params.clone()), shape, scope, vs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_refuse_a_key_twice_and_integers_outside_i64() {
        let twice = "local:window=8:window=16"
            .parse::<VariantSpec>()
            .unwrap_err();
        assert!(twice.to_string().contains("window given twice"), "{twice}");
        let big = "local:window=99999999999999999999"
            .parse::<VariantSpec>()
            .unwrap_err();
        assert!(
            big.to_string()
                .contains("window: integer out of range: 99999999999999999999"),
            "{big}"
        );
        let spec: VariantSpec = "local:window=-9223372036854775808".parse().unwrap();
        assert_eq!(spec.params["window"], i64::MIN);
    }
}
