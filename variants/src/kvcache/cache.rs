//! The managed KV cache of one layer: per KV head its keys `[len_h, head_dim]` (rotary
//! applied), values and int64 positions `[len_h]`, rows in ascending position order.
//! Evicted rows are gone from the tensors, so heads may hold different numbers of tokens.
//!
//! While every head holds the same number of tokens (all policies but per-head ones such
//! as NAMM), the heads are stacked in one tensor per kind, so attention and eviction
//! are one batched operation instead of one per head; the per-head views are free.

use tch::{Kind, Tensor};

use crate::attention::tensor_bytes;

enum Store {
    /// Every head holds the same number of tokens: `k`, `v` `[kv_heads, len, hd]`,
    /// `pos` `[kv_heads, len]` (heads may hold different tokens).
    Even { k: Tensor, v: Tensor, pos: Tensor },
    /// Heads hold different numbers of tokens: one tensor per head.
    Ragged {
        k: Vec<Tensor>,
        v: Vec<Tensor>,
        pos: Vec<Tensor>,
    },
}

/// One layer's cache.
pub struct LayerCache {
    store: Store,
    heads: i64,
    head_dim: i64,
}

impl LayerCache {
    /// An empty cache of `heads` KV heads, in `kind` on `device`.
    pub fn new(heads: i64, head_dim: i64, kind: Kind, device: tch::Device) -> LayerCache {
        LayerCache {
            store: Store::Even {
                k: Tensor::zeros([heads, 0, head_dim], (kind, device)),
                v: Tensor::zeros([heads, 0, head_dim], (kind, device)),
                pos: Tensor::zeros([heads, 0], (Kind::Int64, device)),
            },
            heads,
            head_dim,
        }
    }

    /// Tokens held, per head.
    pub fn lens(&self) -> Vec<i64> {
        match &self.store {
            Store::Even { pos, .. } => vec![pos.size()[1]; self.heads as usize],
            Store::Ragged { pos, .. } => pos.iter().map(|p| p.size()[0]).collect(),
        }
    }

    /// Bytes of keys and values held (positions are bookkeeping, not counted).
    pub fn bytes(&self) -> u64 {
        match &self.store {
            Store::Even { k, v, .. } => tensor_bytes(k) + tensor_bytes(v),
            Store::Ragged { k, v, .. } => k.iter().chain(v).map(tensor_bytes).sum(),
        }
    }

    /// Per head: the keys `[len_h, hd]` (views, no copy while heads are stacked).
    pub fn keys(&self) -> Vec<Tensor> {
        match &self.store {
            Store::Even { k, .. } => (0..self.heads).map(|g| k.select(0, g)).collect(),
            Store::Ragged { k, .. } => k.iter().map(Tensor::shallow_clone).collect(),
        }
    }

    pub fn values(&self) -> Vec<Tensor> {
        match &self.store {
            Store::Even { v, .. } => (0..self.heads).map(|g| v.select(0, g)).collect(),
            Store::Ragged { v, .. } => v.iter().map(Tensor::shallow_clone).collect(),
        }
    }

    pub fn positions(&self) -> Vec<Tensor> {
        match &self.store {
            Store::Even { pos, .. } => (0..self.heads).map(|g| pos.select(0, g)).collect(),
            Store::Ragged { pos, .. } => pos.iter().map(Tensor::shallow_clone).collect(),
        }
    }

    /// Appends one call's keys and values `[kv_heads, c, hd]` at `positions` `[c]`.
    pub fn append(&mut self, k_new: &Tensor, v_new: &Tensor, positions: &Tensor) {
        match &mut self.store {
            Store::Even { k, v, pos } => {
                *k = Tensor::cat(&[&*k, k_new], 1);
                *v = Tensor::cat(&[&*v, v_new], 1);
                let c = positions.size()[0];
                let p = positions.unsqueeze(0).expand([self.heads, c], false);
                *pos = Tensor::cat(&[&*pos, &p], 1);
            }
            Store::Ragged { k, v, pos } => {
                for g in 0..self.heads as usize {
                    k[g] = Tensor::cat(&[&k[g], &k_new.select(0, g as i64)], 0);
                    v[g] = Tensor::cat(&[&v[g], &v_new.select(0, g as i64)], 0);
                    pos[g] = Tensor::cat(&[&pos[g], positions], 0);
                }
            }
        }
    }

    /// Softmax attention of the call's queries `q` (`[heads, c, hd]`, at int64
    /// `q_pos` `[c]`) over the cache (the call's own tokens appended first): each query
    /// sees the cached tokens at or before its position. Returns the output
    /// `[heads, c, hd]` and, per KV head, the probabilities `[c, len_h]` (f32) averaged
    /// over the query heads that share it.
    pub fn attend(&self, q: &Tensor, q_pos: &Tensor, groups: i64) -> (Tensor, Vec<Tensor>) {
        let (h, c, hd) = q.size3().expect("queries: [heads, c, head_dim]");
        let scale = (hd as f64).powf(-0.5);
        // Cached tokens all precede the call, so only a chunk of several tokens needs
        // the mask (within itself).
        let probs = |q: &Tensor, k: &Tensor, pos: &Tensor| {
            let scores = (q * scale).matmul(&k.transpose(-2, -1));
            let scores = if c > 1 {
                let l = pos.size().last().copied().unwrap_or(0);
                let lead = pos.dim() - 1;
                let mut shape = pos.size()[..lead].to_vec();
                shape.extend([1, 1, l]);
                let future = pos.view(shape.as_slice()).gt_tensor(&q_pos.view([c, 1]));
                scores.masked_fill(&future, f64::NEG_INFINITY)
            } else {
                scores
            };
            scores.softmax(-1, Kind::Float)
        };
        match &self.store {
            Store::Even { k, v, pos } => {
                let qg = q.view([self.heads, groups, c, hd]);
                let p = probs(&qg, &k.unsqueeze(1), pos);
                let out = p.to_kind(v.kind()).matmul(&v.unsqueeze(1)).view([h, c, hd]);
                let mean = p.mean_dim(1, false, Kind::Float);
                (out, (0..self.heads).map(|g| mean.select(0, g)).collect())
            }
            Store::Ragged { k, v, pos } => {
                let mut outs = Vec::with_capacity(self.heads as usize);
                let mut obs = Vec::with_capacity(self.heads as usize);
                for g in 0..self.heads as usize {
                    let qg = q.narrow(0, g as i64 * groups, groups);
                    let p = probs(&qg, &k[g], &pos[g]);
                    outs.push(p.to_kind(v[g].kind()).matmul(&v[g]));
                    obs.push(p.mean_dim(0, false, Kind::Float));
                }
                (Tensor::cat(&outs, 0), obs)
            }
        }
    }

    /// Keeps, per head, the rows a policy chose (`None`: all); rows stay in order.
    pub fn retain(&mut self, keep: &[Option<Tensor>]) {
        assert_eq!(
            keep.len() as i64,
            self.heads,
            "a cache policy must answer once per KV head"
        );
        if keep.iter().all(Option::is_none) {
            return;
        }
        let lens = self.lens();
        let kept: Vec<i64> = keep
            .iter()
            .zip(&lens)
            .map(|(o, &l)| o.as_ref().map_or(l, |t| t.size()[0]))
            .collect();
        let even = kept.iter().all(|&m| m == kept[0]);
        let device = self.device();
        let hd = self.head_dim;
        let store = std::mem::replace(&mut self.store, Store::placeholder());
        self.store = match store {
            Store::Even { k, v, pos } if even => {
                let l = lens[0];
                let idx: Vec<Tensor> = keep
                    .iter()
                    .map(|o| match o {
                        Some(t) => t.to_device(device),
                        None => Tensor::arange(l, (Kind::Int64, device)),
                    })
                    .collect();
                let idx = Tensor::stack(&idx, 0);
                let rows = idx.unsqueeze(-1).expand([self.heads, kept[0], hd], false);
                Store::Even {
                    k: k.gather(1, &rows, false),
                    v: v.gather(1, &rows, false),
                    pos: pos.gather(1, &idx, false),
                }
            }
            Store::Even { k, v, pos } => {
                let split = |x: &Tensor| -> Vec<Tensor> {
                    (0..self.heads)
                        .map(|g| {
                            let head = x.select(0, g);
                            match &keep[g as usize] {
                                Some(t) => head.index_select(0, &t.to_device(device)),
                                // A copy, so the stacked tensor is freed.
                                None => head.copy(),
                            }
                        })
                        .collect()
                };
                Store::Ragged {
                    k: split(&k),
                    v: split(&v),
                    pos: split(&pos),
                }
            }
            Store::Ragged { k, v, pos } => {
                let pick = |xs: Vec<Tensor>| -> Vec<Tensor> {
                    xs.into_iter()
                        .zip(keep)
                        .map(|(x, o)| match o {
                            Some(t) => x.index_select(0, &t.to_device(device)),
                            None => x,
                        })
                        .collect()
                };
                let (k, v, pos) = (pick(k), pick(v), pick(pos));
                if even {
                    Store::Even {
                        k: Tensor::stack(&k, 0),
                        v: Tensor::stack(&v, 0),
                        pos: Tensor::stack(&pos, 0),
                    }
                } else {
                    Store::Ragged { k, v, pos }
                }
            }
        };
    }

    /// Whether the heads are stacked (all hold the same number of tokens).
    pub fn is_even(&self) -> bool {
        matches!(self.store, Store::Even { .. })
    }

    fn device(&self) -> tch::Device {
        match &self.store {
            Store::Even { k, .. } => k.device(),
            Store::Ragged { k, .. } => k[0].device(),
        }
    }
}

impl Store {
    /// Holds nothing; only while [`LayerCache::retain`] rebuilds the store.
    fn placeholder() -> Store {
        Store::Ragged {
            k: Vec::new(),
            v: Vec::new(),
            pos: Vec::new(),
        }
    }
}
