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
//!   forward unless a variant says otherwise.

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
