//! Checkpoints in Hugging Face's layout: `config.json` (a Llama config) and the weights in
//! `model.safetensors`, or in shards (`model-0000x-of-0000y.safetensors`) listed by
//! `model.safetensors.index.json`. Real models and the ones trained here share it, so one
//! loader serves both, and a model trained here loads in Hugging Face's
//! `LlamaForCausalLM`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use thiserror::Error;

use super::lm::{DecoderLm, LmConfig};
use xarena_variants::VariantError;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Why a checkpoint could not be written or read.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("checkpoint {dir}: {file} not found")]
    MissingFile { dir: PathBuf, file: String },
    // The cause is in the message, not a `source`: `{:#}` would print it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: {error}")]
    Config { path: PathBuf, error: VariantError },
    #[error("checkpoint {dir}: tensor `{name}` not found")]
    MissingTensor { dir: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, the config needs {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |error| CheckpointError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn format_err(path: &Path, message: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Format {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Writes `config.json` and `model.safetensors` (every variable of `vs`, in its kind)
/// into `dir`, created if needed. Build the [`DecoderLm`] at the VarStore's root so that
/// the names are Hugging Face's.
pub fn save_checkpoint(
    dir: impl AsRef<Path>,
    vs: &VarStore,
    cfg: &LmConfig,
) -> Result<(), CheckpointError> {
    let dir = dir.as_ref();
    let config_path = dir.join(CONFIG_FILE);
    cfg.check().map_err(|error| CheckpointError::Config {
        path: config_path.clone(),
        error,
    })?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let dtype = match tensors.first().map(|t| t.1.kind()) {
        Some(Kind::BFloat16) => "bfloat16",
        Some(Kind::Half) => "float16",
        _ => "float32",
    };
    // The keys Hugging Face's AutoConfig needs beside the model's shape.
    let mut json = serde_json::to_value(cfg).map_err(|e| format_err(&config_path, e))?;
    if let Some(map) = json.as_object_mut() {
        map.insert("model_type".into(), "llama".into());
        map.insert(
            "architectures".into(),
            serde_json::json!(["LlamaForCausalLM"]),
        );
        map.insert("hidden_act".into(), "silu".into());
        map.insert("head_dim".into(), cfg.head_dim().into());
        map.insert("attention_bias".into(), false.into());
        map.insert("mlp_bias".into(), false.into());
        map.insert("torch_dtype".into(), dtype.into());
    }
    let text = serde_json::to_string_pretty(&json).map_err(|e| format_err(&config_path, e))?;
    std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;
    write_safetensors(dir.join(WEIGHTS_FILE), &tensors)
}

/// Writes named tensors to one safetensors file, with the `format: pt` metadata that
/// Hugging Face's loader requires.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let mut bytes = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let dtype: Dtype = t.kind().try_into().map_err(|e| CheckpointError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            message: format!("{e}"),
        })?;
        let numel = t.numel();
        let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut buf, numel)
            .map_err(|e| CheckpointError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                message: format!("{e}"),
            })?;
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        bytes.push((name.clone(), dtype, shape, buf));
    }
    let views = bytes
        .iter()
        .map(|(name, dtype, shape, buf)| {
            TensorView::new(*dtype, shape.clone(), buf)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_err(path, format!("tensor `{name}`: {e:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize_to_file(views, &metadata, path)
        .map_err(|e| format_err(path, format!("cannot write safetensors: {e:?}")))
}

/// Reads and checks `dir/config.json`.
pub fn read_config(dir: impl AsRef<Path>) -> Result<LmConfig, CheckpointError> {
    let dir = dir.as_ref();
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(CheckpointError::MissingFile {
            dir: dir.to_path_buf(),
            file: CONFIG_FILE.into(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let cfg: LmConfig = serde_json::from_str(&text).map_err(|e| format_err(&path, e))?;
    cfg.check()
        .map_err(|error| CheckpointError::Config { path, error })?;
    Ok(cfg)
}

/// The weight files of a checkpoint: `model.safetensors`, or the shards its index lists.
pub fn weight_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>, CheckpointError> {
    let dir = dir.as_ref();
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Err(CheckpointError::MissingFile {
            dir: dir.to_path_buf(),
            file: format!("{WEIGHTS_FILE} (or {INDEX_FILE} and its shards)"),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(io(&index))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| format_err(&index, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format_err(&index, "no `weight_map` object"))?;
    let mut shards = BTreeSet::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            format_err(&index, format!("weight_map[`{name}`] is not a file name"))
        })?;
        shards.insert(file.to_string());
    }
    shards
        .into_iter()
        .map(|f| {
            let path = dir.join(&f);
            if path.is_file() {
                Ok(path)
            } else {
                Err(CheckpointError::MissingFile {
                    dir: dir.to_path_buf(),
                    file: format!("{f} (a shard listed in {INDEX_FILE})"),
                })
            }
        })
        .collect()
}

/// Loads a checkpoint onto `device`: the config, a [`DecoderLm`] at the VarStore's root
/// and its weights, converted to f32 (checkpoints are often bf16 or f16). Tensors the
/// model does not use are ignored (a tied `lm_head.weight`, old `rotary_emb.inv_freq`).
pub fn load_checkpoint(
    dir: impl AsRef<Path>,
    device: Device,
) -> Result<(VarStore, DecoderLm, LmConfig), CheckpointError> {
    let dir = dir.as_ref();
    let cfg = read_config(dir)?;
    let files = weight_files(dir)?;
    let vs = VarStore::new(device);
    let lm = DecoderLm::new(&vs.root(), &cfg).map_err(|error| CheckpointError::Config {
        path: dir.join(CONFIG_FILE),
        error,
    })?;
    let vars = vs.variables();
    let mut loaded = HashSet::new();
    for path in &files {
        let data = std::fs::read(path).map_err(io(path))?;
        let st = SafeTensors::deserialize(&data)
            .map_err(|e| format_err(path, format!("not a safetensors file: {e:?}")))?;
        for (name, view) in st.tensors() {
            let Some(var) = vars.get(&name) else {
                continue;
            };
            let tensor_err = |message: String| CheckpointError::Tensor {
                path: path.clone(),
                name: name.clone(),
                message,
            };
            let found: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
            if found != var.size() {
                return Err(CheckpointError::Shape {
                    path: path.clone(),
                    name,
                    expected: var.size(),
                    found,
                });
            }
            let kind = match view.dtype() {
                Dtype::F32 => Kind::Float,
                Dtype::BF16 => Kind::BFloat16,
                Dtype::F16 => Kind::Half,
                Dtype::F64 => Kind::Double,
                other => {
                    return Err(tensor_err(format!(
                        "dtype {other:?} is not a floating-point type (f32, bf16, f16, f64)"
                    )))
                }
            };
            let src = Tensor::f_from_data_size(view.data(), &found, kind)
                .map_err(|e| tensor_err(e.to_string()))?;
            // copy_ converts the kind and moves to the variable's device.
            tch::no_grad(|| var.shallow_clone().f_copy_(&src))
                .map_err(|e| tensor_err(e.to_string()))?;
            loaded.insert(name);
        }
    }
    let mut missing: Vec<&String> = vars.keys().filter(|n| !loaded.contains(*n)).collect();
    missing.sort();
    if let Some(name) = missing.first() {
        return Err(CheckpointError::MissingTensor {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        });
    }
    Ok((vs, lm, cfg))
}
