//! Measurement: timing, memory, the environment, and the C++ shim under them. Nothing
//! here decides what to run or how to report it.
//!
//! A crate of its own, below every track: the runner (`xarena-bench`), training
//! (`xarena-training`) and the KV-cache track measure with it, and it depends on none of
//! them.

pub mod device;
pub mod env;
pub mod machine;
pub mod memory;
pub mod nvml;
pub mod shim;
pub mod timing;
