//! Low rank: attention through a k-dimensional projection of the sequence axis.
pub mod linformer;
