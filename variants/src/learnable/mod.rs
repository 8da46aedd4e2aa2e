//! Learnable patterns: which keys a query meets is decided from the data (hashing,
//! clustering, sorting), then attention runs within the groups found.
pub mod reformer;
pub mod routing;
pub mod sinkhorn;
