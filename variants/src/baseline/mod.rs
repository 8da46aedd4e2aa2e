//! Not attention: cases that measure the harness itself.
pub mod empty;
