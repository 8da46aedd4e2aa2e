//! Measurement: timing, memory, the environment, and the C++ shim under them. Nothing
//! here decides what to run or how to report it.

pub mod env;
pub mod memory;
pub mod nvml;
pub mod roofline;
pub mod shim;
pub mod timing;
