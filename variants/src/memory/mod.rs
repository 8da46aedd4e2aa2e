//! Neural memory: a small set of learned slots (inducing points, latents) that read the
//! whole sequence and are read back by every token, so that scores are N x m.
pub mod perceiver;
pub mod set_transformer;
