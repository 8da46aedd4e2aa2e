//! Measurement: the `xarena-measure` crate (timing, memory, the environment, NVML, the
//! C++ shim), re-exported at its old paths, and the roofline, which runs cases through
//! the runner's workers and so stays with the runner.

pub use xarena_measure::{env, memory, nvml, shim, timing};

pub mod roofline;
