//! Synthetic hidden states for efficiency cases.
//!
//! Values are drawn from a seeded normal distribution, never zeros: kernels can run
//! faster on zeros than on real data, and zeros hide wrong indexing.

use tch::{Device, Kind, Tensor};

/// `[batch, seq_len, d_model]` standard-normal hidden states, drawn in float32 from a
/// generator seeded with `seed` and cast to `kind` on `device`, so every dtype and device
/// sees the same values up to rounding.
pub fn hidden_states(
    batch: i64,
    seq_len: i64,
    d_model: i64,
    kind: Kind,
    device: Device,
    seed: i64,
) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([batch, seq_len, d_model], (Kind::Float, Device::Cpu))
        .to_kind(kind)
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_inputs_repeat_and_differ_by_seed() {
        let a = hidden_states(2, 5, 4, Kind::Float, Device::Cpu, 3);
        let b = hidden_states(2, 5, 4, Kind::Float, Device::Cpu, 3);
        let c = hidden_states(2, 5, 4, Kind::Float, Device::Cpu, 4);
        assert_eq!(a.size(), [2, 5, 4]);
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
        // Not degenerate: unit-scale values.
        let std = f64::try_from(a.std(true)).unwrap();
        assert!(std > 0.5 && std < 1.5, "{std}");
        let h = hidden_states(1, 3, 2, Kind::BFloat16, Device::Cpu, 3);
        assert_eq!(h.kind(), Kind::BFloat16);
    }
}
