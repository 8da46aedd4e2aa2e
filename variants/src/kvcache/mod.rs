//! The KV-cache memory track: a causal decoder LM (Llama architecture) that decodes with
//! a managed cache, and the policies that decide which cached tokens it keeps.

pub mod policy;

pub use policy::{CachePolicy, Observation};
