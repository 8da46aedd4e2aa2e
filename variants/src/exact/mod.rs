//! Exact softmax attention: the references every X-former is compared against.
pub mod sdpa;
pub mod vanilla;
