//! What keeps the training loops (`trainer::train`, `kv::train`) from waiting on the
//! device every step: the loss stays on the device and is read back in groups
//! ([`LossLog`]), gradients are clipped without reading their norm back
//! ([`clip_grad_norm`]), and on CUDA batches go up from pinned memory without blocking
//! ([`upload`]). On the CPU every figure is the same as reading each step would give.

use tch::{Device, Kind, Tensor};

/// Steps between two reads of the loss when nothing else (a progress line, the last
/// step) reads it sooner: one wait for the device per this many steps.
pub const LOSS_READ_EVERY: usize = 50;

/// Scales the gradients of `vars` by `min(1, max_norm / (norm + 1e-6))`, `norm` being
/// their global L2 norm, all on the device: the same figures as tch's
/// `Optimizer::clip_grad_norm` (the coefficient in f64 as there, then applied in the
/// gradients' kind), without its read of the norm to the host. Variables without a
/// gradient are skipped.
pub fn clip_grad_norm(vars: &[Tensor], max_norm: f64) {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vars
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        let Some(first) = grads.first() else {
            return;
        };
        let norms: Vec<Tensor> = grads.iter().map(Tensor::norm).collect();
        let total = Tensor::stack(&norms, 0).norm().to_kind(Kind::Double);
        let coef = Tensor::full([], max_norm, (Kind::Double, first.device()))
            .divide(&(total + 1e-6))
            .clamp_max(1.0);
        for mut g in grads {
            let _ = g.g_mul_(&coef);
        }
    })
}

/// Losses (scalars on the device) of the steps since the last read.
#[derive(Default)]
pub struct LossLog {
    pending: Vec<(u64, Tensor)>,
}

impl LossLog {
    /// Keeps step `step`'s loss (detached: its graph is not kept alive).
    pub fn push(&mut self, step: u64, loss: &Tensor) {
        self.pending.push((step, loss.detach()));
    }

    /// Steps waiting to be read.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Every pending `(step, loss)`, in order, in one read from the device (the value
    /// each step's `double_value` would have given).
    pub fn read(&mut self) -> Vec<(u64, f64)> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let values: Vec<Tensor> = self.pending.iter().map(|(_, l)| l.view([1])).collect();
        let all = Tensor::cat(&values, 0)
            .to_kind(Kind::Double)
            .to_device(Device::Cpu);
        let all = Vec::<f64>::try_from(&all).expect("losses: f64 on the CPU");
        self.pending.drain(..).map(|(s, _)| s).zip(all).collect()
    }
}

/// A batch built on the host, on `device`: on the CPU the tensor itself (as before); on
/// CUDA through pinned memory without blocking ([`upload_pinned`]).
pub fn upload(host: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => upload_pinned(&host, device),
        _ => host.to_device(device),
    }
}

/// CUDA only: copies `host` into page-locked memory, then to `device` asynchronously, so
/// the host goes on (preparing the next batch) while the copy runs on the stream in
/// order with the kernels. LibTorch's pinned allocator does not reuse the staging block
/// before the copy has finished, so dropping it here is safe.
fn upload_pinned(host: &Tensor, device: Device) -> Tensor {
    host.pin_memory(device)
        .to_device_(device, host.kind(), true, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module, OptimizerConfig};

    /// Two identical models with their gradients of one loss.
    fn with_grads(seed: i64) -> (nn::VarStore, nn::Optimizer) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = nn::seq()
            .add(nn::linear(vs.root() / "a", 6, 5, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(vs.root() / "b", 5, 3, Default::default()));
        // A variable the loss does not reach: no gradient.
        let _unused = vs.root().zeros("unused", &[4]);
        let opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
        let x = Tensor::randn([7, 6], (Kind::Float, Device::Cpu)) * 3.0;
        net.forward(&x).square().sum(Kind::Float).backward();
        (vs, opt)
    }

    fn grads(vs: &nn::VarStore) -> Vec<Tensor> {
        vs.trainable_variables()
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .map(|g| g.copy())
            .collect()
    }

    #[test]
    fn clipping_on_the_device_equals_the_host_reference() {
        let (reference, opt) = with_grads(3);
        let before = grads(&reference);
        let norm: f64 = before
            .iter()
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        assert!(norm > 1.0, "the test needs a norm to clip ({norm})");
        // Clipping (below the norm) and not (above it).
        for max in [0.25, 0.5 * norm, 2.0 * norm] {
            let (reference, opt_ref) = with_grads(3);
            opt_ref.clip_grad_norm(max);
            let (mine, _) = with_grads(3);
            clip_grad_norm(&mine.trainable_variables(), max);
            let (a, b) = (grads(&reference), grads(&mine));
            assert_eq!(a.len(), 4);
            for (x, y) in a.iter().zip(&b) {
                let d = (x - y).abs().max().double_value(&[]);
                assert!(
                    d <= 1e-7 * (1.0 + x.abs().max().double_value(&[])),
                    "{max}: {d}"
                );
                // On the CPU the very same figures, bit for bit.
                assert!(
                    x.equal(y),
                    "max {max}: differs from tch's clip_grad_norm by {d}"
                );
            }
            let clipped: f64 = b
                .iter()
                .map(|g| g.square().sum(Kind::Double).double_value(&[]))
                .sum::<f64>()
                .sqrt();
            let expect = norm.min(max);
            assert!((clipped - expect).abs() < 1e-4 * expect, "{max}: {clipped}");
        }
        drop(opt);
    }

    #[test]
    fn the_loss_log_reads_every_pending_step_once_in_order() {
        let mut log = LossLog::default();
        assert!(log.read().is_empty());
        let losses: Vec<Tensor> = (0..5)
            .map(|i| Tensor::from(0.1f32 * i as f32 + 1.0 / 3.0))
            .collect();
        for (i, l) in losses.iter().enumerate() {
            log.push(10 + i as u64, l);
        }
        assert_eq!(log.len(), 5);
        let read = log.read();
        let expect: Vec<(u64, f64)> = losses
            .iter()
            .enumerate()
            .map(|(i, l)| (10 + i as u64, l.double_value(&[])))
            .collect();
        assert_eq!(read, expect);
        assert!(log.is_empty() && log.read().is_empty());
        log.push(20, &Tensor::from(f32::NAN));
        assert!(log.read()[0].1.is_nan());
    }

    #[test]
    fn on_the_cpu_a_batch_is_not_copied() {
        let t = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
        let up = upload(t.shallow_clone(), Device::Cpu);
        assert_eq!(up.data_ptr(), t.data_ptr());
        assert!(up.equal(&t));
    }
}
