//! Kernels: softmax replaced by a feature map, so attention factorises as phi(Q) (phi(K)^T V).
pub mod performer;
