//! Combined patterns: several fixed patterns (windows, globals, random blocks, strides,
//! axes) united in one attention.
pub mod axial;
pub mod bigbird;
pub mod longformer;
pub mod sparse_transformer;
