//! Combined patterns: several fixed patterns (windows, globals, random blocks, strides)
//! united in one attention.
pub mod bigbird;
pub mod longformer;
