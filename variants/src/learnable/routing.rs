//! `routing`: the Routing Transformer (Roy et al. 2021). Queries and keys, normalised to
//! unit length, are routed to k centroids kept per head and updated by an exponential
//! moving average of what was routed to them (online k-means, during training). Routing
//! is balanced as in the paper's implementation: each cluster takes the w = N / k queries
//! and the w keys most similar to its centroid, and attends within itself; a query routed
//! to several clusters averages their outputs, one routed to none gets zeros. With
//! k = sqrt(N) (`clusters = 0`, the default, picks ceil(sqrt(N))): time O(N sqrt(N) d)
//! for routing and attention, memory O(N sqrt(N)). The clusters' attention runs through
//! the shared fused kernel (`variants/src/fused.rs`).
//!
//! Causal masking hides every later key, but balanced routing picks each cluster's
//! members from the whole sequence, so later tokens can change which earlier keys a query
//! meets: not a strictly autoregressive layer.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::fused::{additive_mask, block_softmax, Backends, BlockMask};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Clusters k; 0 picks ceil(sqrt(N)), the paper's choice.
    pub clusters: i64,
    /// Moving-average decay of the centroids.
    pub decay: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            clusters: 0,
            decay: 0.999,
        }
    }
}

pub struct Routing {
    shape: Shape,
    clusters: i64,
    window: i64,
    decay: f64,
    /// `[heads, k, d]` unit-length centroids, not trained by gradient.
    centroids: Tensor,
    backends: Backends,
}

fn unit(x: &Tensor) -> Tensor {
    x / (x.square().sum_dim_intlist(-1, true, None).sqrt() + 1e-6)
}

impl AttentionVariant for Routing {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "routing",
        family: Family::LearnablePatterns,
        time: "O(N k d + N (N/k) d); O(N sqrt(N) d) at k = sqrt(N)",
        memory: "O(N k + N (N/k)); O(N sqrt(N)) at k = sqrt(N)",
        time_exponent: 1.5,
        memory_exponent: 1.5,
        paper: "Roy et al. 2021, Efficient Content-Based Sparse Attention with Routing \
                Transformers (TACL)",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, shape: &Shape) -> Result<(), VariantError> {
        if config.clusters < 0 || config.clusters > shape.seq_len {
            return Err(VariantError::config(
                "routing",
                format!(
                    "clusters must be 0 (sqrt(N)) or 1..={}, got {}",
                    shape.seq_len, config.clusters
                ),
            ));
        }
        if !(0.0..1.0).contains(&config.decay) {
            return Err(VariantError::config(
                "routing",
                format!("decay must be in [0, 1), got {}", config.decay),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let clusters = match config.clusters {
            0 => ((n as f64).sqrt().ceil() as i64).clamp(1, n),
            k => k,
        };
        let window = (n + clusters - 1) / clusters;
        let init = unit(&Tensor::randn(
            [shape.heads, clusters, shape.head_dim],
            (Kind::Float, tch::Device::Cpu),
        ));
        let centroids = vs.add(
            "centroids",
            init.to_kind(vs.kind()).to_device(vs.device()),
            false,
        );
        Ok(Routing {
            shape: *shape,
            clusters,
            window,
            decay: config.decay,
            centroids,
            backends: Backends::default(),
        })
    }
}

impl Routing {
    /// For each cluster, the positions of its w queries and its w keys:
    /// `[b, h, k, w]` each.
    pub fn route(&self, q: &Tensor, k: &Tensor) -> (Tensor, Tensor) {
        let top = |x: &Tensor| {
            unit(x)
                .matmul(&self.centroids.unsqueeze(0).transpose(-2, -1)) // [b, h, n, k]
                .transpose(-2, -1)
                .topk(self.window, -1, true, false)
                .1
        };
        (top(q), top(k))
    }

    pub fn centroids(&self) -> &Tensor {
        &self.centroids
    }

    /// Moves each centroid towards the mean of the unit vectors routed to it.
    fn update_centroids(&self, q: &Tensor, k: &Tensor, iq: &Tensor, ik: &Tensor) {
        tch::no_grad(|| {
            let d = q.size()[3];
            let members = |x: &Tensor, idx: &Tensor| {
                let (b, h, c, w) = idx.size4().expect("[b, h, k, w]");
                unit(x)
                    .gather(
                        2,
                        &idx.reshape([b, h, c * w, 1])
                            .expand([b, h, c * w, d], false),
                        false,
                    )
                    .view([b, h, c, w, d])
                    .mean_dim(&[0i64, 3][..], false, None) // [h, k, d]
            };
            let mean = (members(q, iq) + members(k, ik)) / 2.0;
            let updated = unit(&(&self.centroids * self.decay + mean * (1.0 - self.decay)));
            self.centroids.shallow_clone().copy_(&updated);
        });
    }
}

impl Attention for Routing {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (b, h, n, d) = q.size4().expect("[batch, heads, seq, head_dim]");
        let (c, w) = (self.clusters, self.window);
        let (iq, ik) = self.route(q, k);
        let gather = |x: &Tensor, idx: &Tensor| {
            x.gather(
                2,
                &idx.reshape([b, h, c * w, 1])
                    .expand([b, h, c * w, d], false),
                false,
            )
            .view([b, h, c, w, d])
        };
        let (qc, kc, vc) = (gather(q, &iq), gather(k, &ik), gather(v, &ik));
        let mut sees_any = None;
        // Causal: which keys a query meets depends on the routing, so the mask is made per
        // call, directly additive in the compute dtype (no conversion inside SDPA).
        let mut mask = BlockMask::All;
        if self.shape.causal {
            // A query that meets only later keys is unmasked and its output zeroed.
            let future = ik.unsqueeze(-2).gt_tensor(&iq.unsqueeze(-1)); // [b, h, k, w, w]
            let any = future.logical_not().any_dim(-1, true);
            let hidden = future.logical_and(&any).view([b * h, c, w, w]);
            mask = BlockMask::Additive(additive_mask(&hidden, q.kind()));
            sees_any = Some(any);
        }
        let mut out = block_softmax(&qc, &kc, &vc, &mask, &self.backends); // [b, h, k, w, d]
                                                                           // Each routed query counts once (causal: once where it met a key); a broadcast 1
                                                                           // rather than a [b, h, k, w, 1] tensor of ones made in every forward pass.
        let weight = match sees_any {
            Some(any) => {
                let any = any.to_kind(q.kind());
                // Not `*=`: that is in place, and backward needs `out` as it was.
                out = out.multiply(&any);
                any
            }
            None => {
                Tensor::ones([1, 1, 1, 1, 1], (q.kind(), q.device())).expand([b, h, c, w, 1], false)
            }
        };
        // Scatter back; a query in several clusters averages them.
        let index = iq.reshape([b, h, c * w, 1]);
        let sum = Tensor::zeros([b, h, n, d], (q.kind(), q.device())).scatter_add(
            2,
            &index.expand([b, h, c * w, d], false),
            &out.reshape([b, h, c * w, d]),
        );
        let count = Tensor::zeros([b, h, n, 1], (q.kind(), q.device())).scatter_add(
            2,
            &index,
            &weight.reshape([b, h, c * w, 1]),
        );
        if q.requires_grad() {
            self.update_centroids(q, k, &iq, &ik);
        }
        sum / count.clamp_min(1.0)
    }

    fn backend(&self) -> Option<String> {
        self.backends.get()
    }

    /// Routing (queries and keys against the k centroids) and attention within each
    /// cluster. Routing keeps only top-k indices, which carry no gradient, and the
    /// centroids move by moving average, not by gradient: its backward is 0
    /// ([`FlopCount::no_grad`]). The centroid update's means are element-wise.
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, c, w) = (
            s.seq_len as u64,
            s.head_dim as u64,
            self.clusters as u64,
            self.window as u64,
        );
        let routing = 2 * flops::matmul(s.bh(), n, d, c);
        let attention = flops::matmul(s.bh() * c, w, d, w) + flops::matmul(s.bh() * c, w, w, d);
        FlopCount::no_grad(routing) + FlopCount::forward(attention)
    }
}
