//! Fixed patterns: each query sees a pattern of keys fixed in advance.
pub mod blockwise;
pub mod local;
pub mod memory_compressed;
pub mod strided;
