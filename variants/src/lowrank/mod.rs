//! Low rank: attention through a k-dimensional projection of the sequence axis, a
//! low-rank (Nystrom) approximation of the softmax matrix, or synthesised weights.
pub mod linformer;
pub mod nystromformer;
pub mod synthesizer;
