//! GGUF files (llama.cpp's format, versions 2 and 3): the header, every metadata value
//! type, the tensor directory and the dequantisation of F32, F16, Q8_0 and Q4_1 to f32;
//! and a Llama GGUF as a Hugging Face-layout checkpoint ([`llama_checkpoint`],
//! [`convert`]), so that it loads through [`super::llama::load_checkpoint`] and the same
//! [`DecoderLm`] as every other model.
//!
//! What llama.cpp's `convert_hf_to_gguf.py` changed is undone here: its dimensions are
//! listed fastest first (`[ne0, ne1] = [cols, rows]`, PyTorch's shape reversed), and the
//! rows of `attn_q` and `attn_k` are permuted per head so that rotary pairs are adjacent
//! (`w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2)`, with the KV heads for
//! `attn_k`), where Hugging Face's `rotate_half` pairs feature `i` with `i + head_dim / 2`.
//!
//! No crate was taken for this: the well-kept GGUF readers in Rust come with a whole
//! inference stack (candle's pulls all of candle), and what is needed is a few hundred
//! lines, tested in `tests/gguf.rs` on blocks and files written there by hand.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use half::f16;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use thiserror::Error;

use super::llama::save_checkpoint;
use super::lm::{DecoderLm, LmConfig, RopeScaling};

/// `GGUF` as the file's first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The versions read (2 and 3 differ only in byte order support, little-endian here).
pub const VERSIONS: [u32; 2] = [2, 3];
/// The data section's alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Elements per block of the quantised types read here.
pub const BLOCK: usize = 32;

/// Why a GGUF file could not be read or converted; every message names the file.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error(
        "{path}: tensor `{tensor}` has type {ty}, which is not supported \
         (F32, F16, Q8_0, Q4_1)"
    )]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
}

/// A tensor's element type, as ggml numbers them (`enum ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const BF16: GgmlType = GgmlType(30);

    /// ggml's name of the type (`Q4_K`, ...), or `type N` for a number it does not know.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        NAMES.get(self.0 as usize).copied()
    }

    /// `(elements, bytes)` per block of the types dequantised here.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 => Some((1, 2)),
            GgmlType::Q8_0 => Some((BLOCK, 2 + BLOCK)),
            GgmlType::Q4_1 => Some((BLOCK, 4 + BLOCK / 2)),
            _ => None,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "type {}", self.0),
        }
    }
}

/// One metadata value (`gguf_metadata_value_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// A non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A number. An f32 is read as the shortest decimal that rounds to it (`1e-5`, not
    /// `9.99999974738e-6`), as the config it was converted from wrote it.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => format!("{v}").parse().ok(),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// llama.cpp's order, fastest-varying first: `[ne0, ne1, ...]`.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// PyTorch's shape: the dims reversed.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file read into memory: the header, metadata, tensor directory and the bytes.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in [`GgufFile::bytes`].
    pub data_offset: u64,
    bytes: Vec<u8>,
}

/// A cursor over the file's bytes whose errors say what was being read, and where.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        match self.at.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            _ => Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.at,
                self.bytes.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in what is left of the file (`min_bytes` each), so that a
    /// corrupt length fails here rather than in an allocation.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, String> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_bytes as u64) > left {
            return Err(format!(
                "truncated or corrupt: {what} is {n}, more than the {left} bytes left at \
                 offset {} can hold",
                self.at
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(1, &format!("the length of {what}"))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, what: &str) -> Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("{what}: {b} is not a bool (0 or 1)")),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                let elem = self.u32(&format!("the element type of {what}"))?;
                if elem == 9 {
                    // Arrays of arrays are allowed by the format; none is used by models.
                    let n = self.count(12, &format!("the length of {what}"))?;
                    let mut out = Vec::with_capacity(n);
                    for i in 0..n {
                        out.push(self.value(9, &format!("{what}[{i}]"))?);
                    }
                    return Ok(GgufValue::Array(out));
                }
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let n = self.count(min, &format!("the length of {what}"))?;
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(self.value(elem, &format!("{what}[{i}]"))?);
                }
                GgufValue::Array(out)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(format!("{what}: unknown value type {t}")),
        })
    }
}

impl GgufFile {
    /// Reads and parses `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|error| GgufError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        GgufFile::parse(path, bytes)
    }

    /// Parses a whole file's `bytes`; `path` is for the messages.
    pub fn parse(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref().to_path_buf();
        let err = |message: String| GgufError::Format {
            path: path.clone(),
            message,
        };
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        let magic: [u8; 4] = r.array("the magic number").map_err(err)?;
        if magic != MAGIC {
            return Err(err(format!(
                "bad magic {magic:02x?} ({:?}): not a GGUF file (it starts with \"GGUF\")",
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = r.u32("the version").map_err(err)?;
        if !VERSIONS.contains(&version) {
            return Err(err(format!(
                "GGUF version {version} is not supported (versions {VERSIONS:?})"
            )));
        }
        // A tensor entry takes at least 24 bytes, a key/value pair at least 12.
        let n_tensors = r.count(24, "the tensor count").map_err(err)?;
        let n_kv = r.count(12, "the metadata count").map_err(err)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}")).map_err(err)?;
            let ty = r.u32(&format!("the type of `{key}`")).map_err(err)?;
            let value = r.value(ty, &format!("`{key}`")).map_err(err)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(err(format!("metadata key `{key}` appears twice")));
            }
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor {i}")).map_err(err)?;
            let n_dims = r.u32(&format!("the dims of `{name}`")).map_err(err)?;
            if n_dims > 4 {
                return Err(err(format!(
                    "tensor `{name}` has {n_dims} dimensions (ggml has at most 4)"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&format!("the dims of `{name}`")))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            let ty = GgmlType(r.u32(&format!("the type of `{name}`")).map_err(err)?);
            let offset = r.u64(&format!("the offset of `{name}`")).map_err(err)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(err(format!(
                        "general.alignment {v:?} is not a power of two"
                    )))
                }
            },
        };
        let data_offset = (r.at as u64).div_ceil(alignment) * alignment;
        let file = GgufFile {
            path: path.clone(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            bytes,
        };
        for t in &file.tensors {
            if !t.offset.is_multiple_of(alignment) {
                return Err(err(format!(
                    "tensor `{}`: offset {} is not a multiple of the alignment {alignment}",
                    t.name, t.offset
                )));
            }
            // Bounds of the types read here; others fail when dequantised.
            if let Some(n) = file.byte_size(t)? {
                let end = data_offset + t.offset + n;
                if end > file.bytes.len() as u64 {
                    return Err(err(format!(
                        "tensor `{}`: its {n} bytes at offset {} end at {end}, past the \
                         file's end ({} bytes): truncated?",
                        t.name,
                        data_offset + t.offset,
                        file.bytes.len()
                    )));
                }
            }
        }
        Ok(file)
    }

    /// The bytes of `t`'s data, or `None` for a type not read here.
    fn byte_size(&self, t: &TensorInfo) -> Result<Option<u64>, GgufError> {
        let Some((per_block, bytes)) = t.ty.block() else {
            return Ok(None);
        };
        let ne0 = t.dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(per_block as u64) {
            return Err(GgufError::Format {
                path: self.path.clone(),
                message: format!(
                    "tensor `{}` ({}): its first dimension {ne0} is not a multiple of the \
                     block size {per_block}",
                    t.name, t.ty
                ),
            });
        }
        Ok(Some(t.elements() / per_block as u64 * bytes as u64))
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let t = self.tensor(name).ok_or_else(|| GgufError::Format {
            path: self.path.clone(),
            message: format!("no tensor `{name}`"),
        })?;
        let n = self
            .byte_size(t)?
            .ok_or_else(|| GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: t.name.clone(),
                ty: t.ty,
            })?;
        let start = (self.data_offset + t.offset) as usize;
        Ok((t, &self.bytes[start..start + n as usize]))
    }

    /// Tensor `name` dequantised to f32, in PyTorch's shape (llama.cpp's dims reversed).
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor, GgufError> {
        let (t, data) = self.tensor_bytes(name)?;
        let values = dequantize(t.ty, data).map_err(|message| GgufError::Format {
            path: self.path.clone(),
            message: format!("tensor `{name}`: {message}"),
        })?;
        Ok(Tensor::from_slice(&values).view(t.shape().as_slice()))
    }
}

/// `data` (whole blocks of `ty`) dequantised to f32. Q8_0: an f16 scale `d` and 32 i8
/// `q`, `d * q`. Q4_1: an f16 scale `d`, an f16 minimum `m` and 16 bytes whose low
/// nibbles are elements 0..16 and high nibbles 16..32, `d * q + m`.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, String> {
    let Some((per_block, bytes)) = ty.block() else {
        return Err(format!("type {ty} is not supported (F32, F16, Q8_0, Q4_1)"));
    };
    if !data.len().is_multiple_of(bytes) {
        return Err(format!(
            "{} bytes is not a whole number of {ty} blocks of {bytes} bytes",
            data.len()
        ));
    }
    let mut out = Vec::with_capacity(data.len() / bytes * per_block);
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    for block in data.chunks_exact(bytes) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes(block.try_into().expect("4 bytes"))),
            GgmlType::F16 => out.push(half(block)),
            GgmlType::Q8_0 => {
                let d = half(block);
                out.extend(block[2..].iter().map(|&q| d * f32::from(q as i8)));
            }
            GgmlType::Q4_1 => {
                let (d, m) = (half(block), half(&block[2..]));
                let qs = &block[4..];
                out.extend(qs.iter().map(|&q| d * f32::from(q & 0x0f) + m));
                out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
            }
            _ => unreachable!("block() knows only these"),
        }
    }
    Ok(out)
}

/// Undoes `convert_hf_to_gguf.py`'s permutation of the rows of a Q or K weight
/// (`[rows, cols]`, `heads` the query heads for Q and the KV heads for K): llama.cpp's
/// `w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2).reshape(rows, cols)`
/// inverted, `reshape(heads, rows / heads / 2, 2, cols).swapaxes(1, 2)`.
pub fn unpermute_qk(w: &Tensor, heads: i64) -> Tensor {
    let (rows, cols) = w.size2().expect("a matrix");
    w.reshape([heads, rows / heads / 2, 2, cols])
        .transpose(1, 2)
        .reshape([rows, cols])
}

/// The Hugging Face name of a llama.cpp tensor name, with the layer, or `None`.
pub fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok()?;
    let hf = match part {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

impl GgufFile {
    fn model_err(&self, message: impl Into<String>) -> GgufError {
        GgufError::Model {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn required(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.get(key)
            .ok_or_else(|| self.model_err(format!("metadata `{key}` is missing")))
    }

    fn int(&self, key: &str) -> Result<i64, GgufError> {
        let v = self.required(key)?;
        v.as_u64()
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(|| self.model_err(format!("metadata `{key}` = {v:?} is not a count")))
    }

    fn float(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.required(key)?;
        v.as_f64()
            .ok_or_else(|| self.model_err(format!("metadata `{key}` = {v:?} is not a number")))
    }

    /// The Hugging Face Llama config of a `general.architecture = llama` file: shapes
    /// from `llama.*`, the vocabulary's size from `tokenizer.ggml.tokens` (else
    /// `llama.vocab_size`, else the embedding's rows), tied embeddings when there is no
    /// `output.weight`. Rotary scaling other than none or linear is refused, as are heads
    /// whose size is not `embedding_length / head_count`, and partial rotary.
    pub fn llama_config(&self) -> Result<LmConfig, GgufError> {
        let arch = self
            .required("general.architecture")?
            .as_str()
            .unwrap_or("(not a string)");
        if arch != "llama" {
            return Err(self.model_err(format!(
                "general.architecture `{arch}` is not supported (only `llama`)"
            )));
        }
        let hidden = self.int("llama.embedding_length")?;
        let heads = self.int("llama.attention.head_count")?;
        let kv_heads = match self.get("llama.attention.head_count_kv") {
            Some(_) => self.int("llama.attention.head_count_kv")?,
            None => heads,
        };
        let head_dim = if heads > 0 { hidden / heads } else { 0 };
        for key in [
            "llama.attention.key_length",
            "llama.attention.value_length",
            "llama.rope.dimension_count",
        ] {
            if self.get(key).is_some() {
                let n = self.int(key)?;
                if n != head_dim {
                    return Err(self.model_err(format!(
                        "metadata `{key}` = {n} differs from embedding_length / head_count \
                         = {hidden} / {heads} (not supported)"
                    )));
                }
            }
        }
        let embed = self
            .tensor("token_embd.weight")
            .ok_or_else(|| self.model_err("no tensor `token_embd.weight`"))?;
        let vocab = match self.get("tokenizer.ggml.tokens") {
            Some(GgufValue::Array(a)) => a.len() as i64,
            Some(v) => {
                return Err(self.model_err(format!(
                    "metadata `tokenizer.ggml.tokens` is not an array: {v:?}"
                )))
            }
            None if self.get("llama.vocab_size").is_some() => self.int("llama.vocab_size")?,
            None => embed.shape().first().copied().unwrap_or(0),
        };
        let rope_scaling = match self.get("llama.rope.scaling.type") {
            None => None,
            Some(v) => match v.as_str() {
                Some("none") => None,
                Some("linear") => Some(RopeScaling {
                    rope_type: "linear".into(),
                    factor: Some(self.float("llama.rope.scaling.factor")?),
                    low_freq_factor: None,
                    high_freq_factor: None,
                    original_max_position_embeddings: None,
                }),
                _ => {
                    return Err(self.model_err(format!(
                        "llama.rope.scaling.type {v:?} is not supported (none, linear)"
                    )))
                }
            },
        };
        if self.tensor("rope_freqs.weight").is_some() {
            return Err(self
                .model_err("tensor `rope_freqs.weight` (llama3 rotary scaling) is not supported"));
        }
        let cfg = LmConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.int("llama.feed_forward_length")?,
            num_hidden_layers: self.int("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            rms_norm_eps: self.float("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: match self.get("llama.rope.freq_base") {
                Some(_) => self.float("llama.rope.freq_base")?,
                None => 10_000.0,
            },
            max_position_embeddings: self.int("llama.context_length")?,
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            rope_scaling,
        };
        cfg.check()
            .map_err(|e| self.model_err(format!("the config from its metadata: {e}")))?;
        Ok(cfg)
    }

    /// The model as a [`DecoderLm`] on the CPU in f32, at a VarStore's root (Hugging
    /// Face's names): every tensor dequantised, reshaped to PyTorch's order, the Q and K
    /// rows put back in Hugging Face's order. A tensor the decoder has no place for, a
    /// missing one or a wrong shape is an error naming it.
    pub fn llama_checkpoint(&self) -> Result<(VarStore, DecoderLm, LmConfig), GgufError> {
        let cfg = self.llama_config()?;
        let vs = VarStore::new(Device::Cpu);
        let lm = DecoderLm::new(&vs.root(), &cfg)
            .map_err(|e| self.model_err(format!("the config from its metadata: {e}")))?;
        let vars = vs.variables();
        let mut filled = std::collections::HashSet::new();
        for t in &self.tensors {
            let Some(name) = hf_name(&t.name) else {
                return Err(self.model_err(format!(
                    "tensor `{}` has no counterpart in the Llama decoder",
                    t.name
                )));
            };
            let Some(var) = vars.get(&name) else {
                return Err(self.model_err(format!(
                    "tensor `{}` ({name}) has no counterpart in a decoder of {} layers",
                    t.name, cfg.num_hidden_layers
                )));
            };
            let mut w = self.tensor_f32(&t.name)?;
            if w.size() != var.size() {
                return Err(self.model_err(format!(
                    "tensor `{}` has shape {:?} (GGUF dims {:?}), the config needs {:?} \
                     for {name}",
                    t.name,
                    w.size(),
                    t.dims,
                    var.size()
                )));
            }
            if t.name.ends_with(".attn_q.weight") {
                w = unpermute_qk(&w, cfg.num_attention_heads);
            } else if t.name.ends_with(".attn_k.weight") {
                w = unpermute_qk(&w, cfg.num_key_value_heads);
            }
            tch::no_grad(|| var.shallow_clone().copy_(&w.to_kind(Kind::Float)));
            filled.insert(name);
        }
        let mut missing: Vec<&String> = vars.keys().filter(|n| !filled.contains(*n)).collect();
        missing.sort();
        if let Some(name) = missing.first() {
            return Err(self.model_err(format!("no tensor for `{name}`")));
        }
        Ok((vs, lm, cfg))
    }
}

/// `xarena kv convert`: the Llama GGUF at `gguf` as `out/config.json` and
/// `out/model.safetensors` (f32), with `out/tokenizer.json` and `out/tokenizer_config.json`
/// when the file describes a tokenizer ([`super::tokenizer`]), `out` new or empty. Written into a temporary sibling
/// and renamed into place, so that `out` never holds half a checkpoint.
pub fn convert(gguf: impl AsRef<Path>, out: impl AsRef<Path>) -> anyhow::Result<LmConfig> {
    use anyhow::Context;
    let out = out.as_ref();
    crate::commands::check_new_dir(out, "OUT", "")?;
    let file = GgufFile::read(gguf)?;
    let (vs, _lm, cfg) = file.llama_checkpoint()?;
    let tokenizer = super::tokenizer::TokenizerFiles::from_gguf(&file)?;
    drop(file);
    let name = out
        .file_name()
        .with_context(|| format!("OUT {}: no directory name", out.display()))?;
    if let Some(p) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let tmp = out.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> anyhow::Result<()> {
        save_checkpoint(&tmp, &vs, &cfg)?;
        if let Some(tokenizer) = &tokenizer {
            tokenizer.write(&tmp)?;
        }
        crate::commands::check_new_dir(out, "OUT", "")?;
        let _held = xarena_schema::lock::DirLock::take_over_empty(out, "OUT")?;
        if out.exists() {
            std::fs::remove_dir(out)
                .with_context(|| format!("replacing the empty {}", out.display()))?;
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    Ok(cfg)
}
