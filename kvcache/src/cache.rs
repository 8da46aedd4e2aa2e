//! The managed KV cache of one layer: per KV head its keys `[len_h, head_dim]` (rotary
//! applied), values and int64 positions `[len_h]`, rows in ascending position order.
//! Evicted rows are gone from the live rows, so heads may hold different numbers of tokens.
//!
//! As inference engines (and `xarena_variants::decode::KvCache`) do, the rows live in buffers
//! allocated ahead, `[kv_heads, capacity, hd]`, head `g`'s live rows first: a call's
//! tokens are copied in place after them, and an eviction writes the kept rows back to
//! the front, so neither copies the whole cache per token as a concatenation would. The
//! capacity doubles when a call does not fit (or is set ahead with [`KvLayerCache::reserve`]).
//! While every head holds the same number of tokens (all policies but per-head ones such
//! as NAMM), attention and eviction are one batched operation instead of one per head.

use tch::{Kind, Tensor};

/// The least capacity a growing cache allocates, in tokens per head.
const MIN_CAPACITY: i64 = 64;

/// One layer's cache.
pub struct KvLayerCache {
    /// `[heads, capacity, hd]`; head `g`'s live rows are its first `lens[g]`.
    k: Tensor,
    v: Tensor,
    /// `[heads, capacity]` int64, live as `k`.
    pos: Tensor,
    /// Live rows per head, kept on the host (shapes, never read back from the device).
    lens: Vec<i64>,
    heads: i64,
    head_dim: i64,
}

impl KvLayerCache {
    /// An empty cache of `heads` KV heads, in `kind` on `device`; it allocates on the
    /// first append (or [`KvLayerCache::reserve`]).
    pub fn new(heads: i64, head_dim: i64, kind: Kind, device: tch::Device) -> KvLayerCache {
        KvLayerCache {
            k: Tensor::empty([heads, 0, head_dim], (kind, device)),
            v: Tensor::empty([heads, 0, head_dim], (kind, device)),
            pos: Tensor::empty([heads, 0], (Kind::Int64, device)),
            lens: vec![0; heads as usize],
            heads,
            head_dim,
        }
    }

    /// A copy of the live rows (with room for `headroom` more tokens per head): the
    /// cache of a session forked after a shared prefill.
    pub fn duplicate(&self, headroom: i64) -> KvLayerCache {
        let used = self.lens.iter().copied().max().unwrap_or(0);
        let copy = |x: &Tensor| {
            let mut shape = x.size();
            shape[1] = (used + headroom).max(MIN_CAPACITY);
            let new = Tensor::empty(shape.as_slice(), (x.kind(), x.device()));
            new.narrow(1, 0, used).copy_(&x.narrow(1, 0, used));
            new
        };
        KvLayerCache {
            k: copy(&self.k),
            v: copy(&self.v),
            pos: copy(&self.pos),
            lens: self.lens.clone(),
            heads: self.heads,
            head_dim: self.head_dim,
        }
    }

    /// Tokens held, per head.
    pub fn lens(&self) -> Vec<i64> {
        self.lens.clone()
    }

    /// Rows allocated per head (live or free).
    pub fn capacity(&self) -> i64 {
        self.k.size()[1]
    }

    /// Bytes of live keys and values (positions are bookkeeping, the free rows of the
    /// buffers headroom: neither is counted).
    pub fn bytes(&self) -> u64 {
        let row = (self.head_dim as usize * self.k.kind().elt_size_in_bytes()) as u64;
        2 * row * self.lens.iter().sum::<i64>() as u64
    }

    /// Makes room for `tokens` more tokens on every head, so that appending them does not
    /// reallocate.
    pub fn reserve(&mut self, tokens: i64) {
        let needed = self.lens.iter().copied().max().unwrap_or(0) + tokens;
        if needed <= self.capacity() {
            return;
        }
        let cap = needed.max(2 * self.capacity()).max(MIN_CAPACITY);
        // Rows up to the longest head, so every head's live rows come along.
        let used = self.lens.iter().copied().max().unwrap_or(0);
        let grow = |old: &Tensor| {
            let mut shape = old.size();
            shape[1] = cap;
            let new = Tensor::empty(shape.as_slice(), (old.kind(), old.device()));
            new.narrow(1, 0, used).copy_(&old.narrow(1, 0, used));
            new
        };
        self.k = grow(&self.k);
        self.v = grow(&self.v);
        self.pos = grow(&self.pos);
    }

    /// Per head: the keys `[len_h, hd]`. Views of the buffers, valid until the next
    /// append or retain (which write in place): copy what must outlive that.
    pub fn keys(&self) -> Vec<Tensor> {
        self.live(&self.k)
    }

    pub fn values(&self) -> Vec<Tensor> {
        self.live(&self.v)
    }

    pub fn positions(&self) -> Vec<Tensor> {
        self.live(&self.pos)
    }

    fn live(&self, x: &Tensor) -> Vec<Tensor> {
        (0..self.heads)
            .map(|g| x.select(0, g).narrow(0, 0, self.lens[g as usize]))
            .collect()
    }

    /// The common length when every head holds the same number of tokens.
    fn even_len(&self) -> Option<i64> {
        let l = self.lens[0];
        self.lens.iter().all(|&m| m == l).then_some(l)
    }

    /// Appends one call's keys and values `[kv_heads, c, hd]` at `positions` `[c]`, in
    /// place after each head's live rows.
    pub fn append(&mut self, k_new: &Tensor, v_new: &Tensor, positions: &Tensor) {
        let c = positions.size()[0];
        self.reserve(c);
        match self.even_len() {
            Some(l) => {
                self.k.narrow(1, l, c).copy_(k_new);
                self.v.narrow(1, l, c).copy_(v_new);
                let p = positions.unsqueeze(0).expand([self.heads, c], false);
                self.pos.narrow(1, l, c).copy_(&p);
            }
            None => {
                for g in 0..self.heads {
                    let l = self.lens[g as usize];
                    let at = |x: &Tensor| x.select(0, g).narrow(0, l, c);
                    at(&self.k).copy_(&k_new.select(0, g));
                    at(&self.v).copy_(&v_new.select(0, g));
                    at(&self.pos).copy_(positions);
                }
            }
        }
        for l in &mut self.lens {
            *l += c;
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
        match self.even_len() {
            Some(l) => {
                // The query heads of a KV head as rows of one matrix: a batched matmul
                // over the KV heads reads the cached keys and values in place, where
                // broadcasting them over the groups would copy them every call.
                let (k, v) = (self.k.narrow(1, 0, l), self.v.narrow(1, 0, l));
                let qg = q.reshape([self.heads, groups * c, hd]);
                let scores = (qg * scale)
                    .matmul(&k.transpose(-2, -1))
                    .view([self.heads, groups, c, l]);
                let scores = if c > 1 {
                    let pos = self.pos.narrow(1, 0, l).view([self.heads, 1, 1, l]);
                    scores.masked_fill(&pos.gt_tensor(&q_pos.view([c, 1])), f64::NEG_INFINITY)
                } else {
                    scores
                };
                let p = scores.softmax(-1, Kind::Float);
                let out = p
                    .to_kind(v.kind())
                    .view([self.heads, groups * c, l])
                    .matmul(&v)
                    .view([h, c, hd]);
                let mean = p.mean_dim(1, false, Kind::Float);
                (out, (0..self.heads).map(|g| mean.select(0, g)).collect())
            }
            None => {
                let (k, v, pos) = (self.keys(), self.values(), self.positions());
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

    /// Keeps, per head, the rows a policy chose (`None`: all); rows stay in order. The
    /// kept rows are gathered, then written back to the front of the buffers.
    pub fn retain(&mut self, keep: &[Option<Tensor>]) {
        assert_eq!(
            keep.len() as i64,
            self.heads,
            "a cache policy must answer once per KV head"
        );
        if keep.iter().all(Option::is_none) {
            return;
        }
        let kept: Vec<i64> = keep
            .iter()
            .zip(&self.lens)
            .map(|(o, &l)| o.as_ref().map_or(l, |t| t.size()[0]))
            .collect();
        let device = self.k.device();
        let hd = self.head_dim;
        match self.even_len() {
            Some(l) if kept.iter().all(|&m| m == kept[0]) => {
                let m = kept[0];
                let idx: Vec<Tensor> = keep
                    .iter()
                    .map(|o| match o {
                        Some(t) => t.to_device(device),
                        None => Tensor::arange(l, (Kind::Int64, device)),
                    })
                    .collect();
                let idx = Tensor::stack(&idx, 0);
                let rows = idx.unsqueeze(-1).expand([self.heads, m, hd], false);
                // The gather reads into a new tensor, so writing it over the rows it
                // came from is safe.
                let k = self.k.narrow(1, 0, l).gather(1, &rows, false);
                let v = self.v.narrow(1, 0, l).gather(1, &rows, false);
                let pos = self.pos.narrow(1, 0, l).gather(1, &idx, false);
                self.k.narrow(1, 0, m).copy_(&k);
                self.v.narrow(1, 0, m).copy_(&v);
                self.pos.narrow(1, 0, m).copy_(&pos);
            }
            _ => {
                for (g, o) in keep.iter().enumerate() {
                    let Some(t) = o else { continue };
                    let (t, l, m) = (t.to_device(device), self.lens[g], kept[g]);
                    for x in [&self.k, &self.v, &self.pos] {
                        let head = x.select(0, g as i64);
                        let rows = head.narrow(0, 0, l).index_select(0, &t);
                        head.narrow(0, 0, m).copy_(&rows);
                    }
                }
            }
        }
        self.lens = kept;
    }

    /// Whether every head holds the same number of tokens (attention and eviction are
    /// then batched over the heads).
    pub fn is_even(&self) -> bool {
        self.even_len().is_some()
    }
}
