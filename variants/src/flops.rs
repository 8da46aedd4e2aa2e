//! FLOP counting conventions, in one place.
//!
//! - A multiply-add is 2 FLOPs. Matrix products (projections, scores, weighted sums,
//!   feature maps' projections) are counted; element-wise work (softmax, exp, scaling,
//!   masking, normalisation, activations) is not, as in the FlashAttention paper's and
//!   fvcore's counts. It is a small, linear-in-N term next to the products.
//! - What is counted is what the implementation computes: a dense masked product counts
//!   every entry, a blocked one its blocks, a fused causal kernel only the lower
//!   triangle it visits.
//! - Training (forward + backward): the backward pass of a product computes the
//!   gradients of both operands, two products of the same size, so backward = 2 x
//!   forward unless a variant says otherwise. Where one operand is a constant (a buffer,
//!   not a trainable parameter: Performer's random features, a fixed Synthesizer's
//!   logits), autograd computes the other operand's gradient only: backward = 1 x
//!   forward ([`FlopCount::fixed_operand`]). Where nothing differentiable depends on the
//!   product (Reformer's hashing and the Routing Transformer's routing feed an argmax or a
//!   top-k, whose indices carry no gradient; a product of two constants), backward = 0
//!   ([`FlopCount::no_grad`]).
//! - Fused kernels (SDPA's flash, memory-efficient and cuDNN kernels, and every pattern
//!   variant that goes through them): xarena counts the same products as for the
//!   unfused computation, forward Q K^T and P V (2 products), backward 2 x forward
//!   (dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: 4 products). The flash and
//!   memory-efficient backward passes do not keep P: they recompute Q K^T, a fifth
//!   product, so the kernel itself executes 2.5 x forward in backward (FlashAttention-2's
//!   own benchmark counts 2.5 x). That recomputation is not counted: like model FLOPs
//!   (MFU) rather than hardware FLOPs, xarena counts the work the computation needs, the
//!   same for every backend, so a train step through a fused kernel reports up to
//!   3.5 / 3 = 1.17 x fewer attention FLOPs than the GPU executes, and its FLOP/s (and
//!   fraction of peak) are correspondingly conservative. Element-wise work (softmax and
//!   its backward, the rescaling of running maxima) is not counted, as above.

use serde::{Deserialize, Serialize};

/// FLOPs of one forward pass and of the matching backward pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlopCount {
    pub forward: u64,
    pub backward: u64,
}

impl FlopCount {
    /// A forward count with the default backward convention (2 x forward).
    pub fn forward(forward: u64) -> Self {
        FlopCount {
            forward,
            backward: 2 * forward,
        }
    }

    /// A product whose other operand is a constant (not trained): the backward pass
    /// computes one gradient, a product of the same size (backward = 1 x forward).
    pub fn fixed_operand(forward: u64) -> Self {
        FlopCount {
            forward,
            backward: forward,
        }
    }

    /// Work no gradient flows back through (it feeds only an argmax, a top-k's indices,
    /// or involves constants only): backward = 0.
    pub fn no_grad(forward: u64) -> Self {
        FlopCount {
            forward,
            backward: 0,
        }
    }

    pub fn train(&self) -> u64 {
        self.forward + self.backward
    }
}

impl std::ops::Add for FlopCount {
    type Output = FlopCount;
    fn add(self, o: FlopCount) -> FlopCount {
        FlopCount {
            forward: self.forward + o.forward,
            backward: self.backward + o.backward,
        }
    }
}

/// FLOPs of `batch` products of an (m x k) by a (k x n) matrix.
pub fn matmul(batch: u64, m: u64, k: u64, n: u64) -> u64 {
    2 * batch * m * k * n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions_add_up() {
        let f = 1000;
        assert_eq!(FlopCount::forward(f).train(), 3 * f);
        assert_eq!(FlopCount::fixed_operand(f).train(), 2 * f);
        assert_eq!(FlopCount::no_grad(f).train(), f);
        let sum = FlopCount::forward(f) + FlopCount::no_grad(10);
        assert_eq!((sum.forward, sum.backward), (f + 10, 2 * f));
    }
}
