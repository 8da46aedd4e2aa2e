//! Downsampling: shorten the sequence between blocks, so later blocks attend over fewer
//! tokens (Funnel-Transformer).
pub mod funnel;
