//! A GGUF writer for the tests, written from the format's description (independent of
//! the reader): metadata of every type and a tensor directory, as `tests/gguf.rs` and
//! `tests/tokenizer.rs` write their tiny files.

use xarena_kvcache::model::gguf::GgufValue;

pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

pub fn tag(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

pub fn put_value(buf: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.push(*x as u8),
        GgufValue::U16(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend(x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(u8::from(*x)),
        GgufValue::String(s) => put_str(buf, s),
        GgufValue::Array(a) => {
            buf.extend(a.first().map_or(4, tag).to_le_bytes());
            buf.extend((a.len() as u64).to_le_bytes());
            for x in a {
                put_value(buf, x);
            }
        }
        GgufValue::U64(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend(x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend(x.to_le_bytes()),
    }
}

pub struct RawTensor {
    pub name: String,
    /// ggml order, fastest first.
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

pub fn gguf_bytes(
    version: u32,
    meta: &[(&str, GgufValue)],
    tensors: &[RawTensor],
    alignment: u64,
) -> Vec<u8> {
    let mut buf = b"GGUF".to_vec();
    buf.extend(version.to_le_bytes());
    buf.extend((tensors.len() as u64).to_le_bytes());
    buf.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut buf, k);
        buf.extend(tag(v).to_le_bytes());
        put_value(&mut buf, v);
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        put_str(&mut buf, &t.name);
        buf.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            buf.extend(d.to_le_bytes());
        }
        buf.extend(t.ty.to_le_bytes());
        buf.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len() as u64).div_ceil(alignment) * alignment;
    }
    let pad = |buf: &mut Vec<u8>| {
        while !(buf.len() as u64).is_multiple_of(alignment) {
            buf.push(0);
        }
    };
    pad(&mut buf);
    for t in tensors {
        buf.extend(&t.data);
        pad(&mut buf);
    }
    buf
}
