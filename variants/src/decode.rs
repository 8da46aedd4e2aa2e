//! Decoding states that several variants share: the full KV cache of exact attention and
//! the sliding-window cache of local attention. Recurrent states (linear attention) live
//! beside their variants.

use tch::{Kind, Tensor};

use crate::attention::{tensor_bytes, Decoder};
use crate::exact::vanilla::softmax_attention;
use crate::fused::Backends;

/// Keys and values of every token so far, preallocated for the context plus `capacity`
/// tokens (as static caches in inference engines do), so a step writes one row instead
/// of copying the cache. The next token attends to all of it.
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: i64,
    /// Tokens of the context, where [`Decoder::reset`] returns to.
    context: i64,
    /// LibTorch's fused SDPA, recording its backend (`sdpa`), or the explicit softmax
    /// (`vanilla`).
    fused: Option<Backends>,
}

impl KvCache {
    /// A cache holding the context `k`, `v` (`[b, h, N, d]`).
    pub fn new(k: &Tensor, v: &Tensor, capacity: i64, fused: Option<Backends>) -> KvCache {
        let (b, h, n, d) = k.size4().expect("[batch, heads, seq, head_dim]");
        let alloc = |x: &Tensor| {
            let buf = Tensor::empty([b, h, n + capacity.max(1), d], (x.kind(), x.device()));
            buf.narrow(2, 0, n).copy_(x);
            buf
        };
        KvCache {
            k: alloc(k),
            v: alloc(v),
            len: n,
            context: n,
            fused,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Decoder for KvCache {
    fn step(&mut self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        assert!(
            self.len < self.k.size()[2],
            "KV cache full: {} tokens",
            self.len
        );
        self.k.narrow(2, self.len, 1).copy_(k);
        self.v.narrow(2, self.len, 1).copy_(v);
        self.len += 1;
        let keys = self.k.narrow(2, 0, self.len);
        let values = self.v.narrow(2, 0, self.len);
        match &self.fused {
            Some(backends) => backends.sdpa(q, &keys, &values, None, false),
            None => softmax_attention(q, &keys, &values, None),
        }
    }

    fn reset(&mut self) {
        self.len = self.context;
    }

    /// The rows in use: what a cache of this many tokens needs; the preallocated
    /// headroom is not counted.
    fn state_bytes(&self) -> u64 {
        let rows = self.k.size()[2];
        (tensor_bytes(&self.k) + tensor_bytes(&self.v)) / rows as u64 * self.len as u64
    }
}

/// The last `window` tokens and the new one, in a ring of `window + 1` slots: the keys a
/// sliding-window query sees, a state that does not grow with the context.
pub struct WindowCache {
    k: Tensor,
    v: Tensor,
    /// Tokens seen so far (the next token's position).
    pos: i64,
    /// The ring and position after the context, for [`Decoder::reset`].
    start: (Tensor, Tensor, i64),
}

impl WindowCache {
    /// The ring after the context `k`, `v` (`[b, h, N, d]`): its last `window` tokens.
    pub fn new(k: &Tensor, v: &Tensor, window: i64) -> WindowCache {
        let (b, h, n, d) = k.size4().expect("[batch, heads, seq, head_dim]");
        let slots = window + 1;
        let ring = |x: &Tensor| {
            let buf = Tensor::zeros([b, h, slots, d], (x.kind(), x.device()));
            // Token t lives in slot t % slots.
            let keep = n.min(window);
            for t in n - keep..n {
                buf.narrow(2, t % slots, 1).copy_(&x.narrow(2, t, 1));
            }
            buf
        };
        let (rk, rv) = (ring(k), ring(v));
        WindowCache {
            start: (rk.copy(), rv.copy(), n),
            k: rk,
            v: rv,
            pos: n,
        }
    }
}

impl Decoder for WindowCache {
    fn step(&mut self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let slots = self.k.size()[2];
        let slot = self.pos % slots;
        self.k.narrow(2, slot, 1).copy_(k);
        self.v.narrow(2, slot, 1).copy_(v);
        self.pos += 1;
        if self.pos >= slots {
            // Full ring: every slot is in the window; order does not matter to softmax.
            softmax_attention(q, &self.k, &self.v, None)
        } else {
            let used = self.pos;
            softmax_attention(
                q,
                &self.k.narrow(2, 0, used),
                &self.v.narrow(2, 0, used),
                None,
            )
        }
    }

    fn reset(&mut self) {
        self.k.copy_(&self.start.0);
        self.v.copy_(&self.start.1);
        self.pos = self.start.2;
    }

    fn state_bytes(&self) -> u64 {
        tensor_bytes(&self.k) + tensor_bytes(&self.v)
    }
}

/// Causal linear attention as a recurrence: the running sums S = sum phi(k) v^T
/// (`[b, h, m, d]`) and z = sum phi(k) (`[b, h, m]`), constant in the context length.
/// Kernel variants (linear-transformer, performer, cosformer) map their queries and keys
/// to features and hand them here.
pub struct LinearState {
    pub s: Tensor,
    pub z: Tensor,
    /// The sums after the context, for [`LinearState::reset`].
    start: (Tensor, Tensor),
}

impl LinearState {
    /// The sums over a context's features `phi_k` (`[b, h, N, m]`) and values `v`.
    pub fn new(phi_k: &Tensor, v: &Tensor) -> LinearState {
        let kind = phi_k.kind();
        // Accumulate in f32 at least: the sums grow with the context.
        let acc = if kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let (pk, v) = (phi_k.to_kind(acc), v.to_kind(acc));
        let s = pk.transpose(-2, -1).matmul(&v);
        let z = pk.sum_dim_intlist(2, false, None);
        LinearState {
            start: (s.copy(), z.copy()),
            s,
            z,
        }
    }

    /// Takes one token's features `phi_k` `[b, h, 1, m]` and value, then reads the
    /// state with `phi_q` `[b, h, 1, m]`; `eps` guards the denominator.
    pub fn step(&mut self, phi_q: &Tensor, phi_k: &Tensor, v: &Tensor, eps: f64) -> Tensor {
        self.update(phi_k, v);
        let (num, den) = self.read(phi_q);
        (num / den.clamp_min(eps)).to_kind(phi_q.kind())
    }

    /// Adds one token's key features `phi_k` `[b, h, 1, m]` and value `[b, h, 1, d]`.
    pub fn update(&mut self, phi_k: &Tensor, v: &Tensor) {
        let acc = self.s.kind();
        let (pk, v) = (phi_k.to_kind(acc), v.to_kind(acc));
        self.s += pk.transpose(-2, -1).matmul(&v);
        self.z += pk.squeeze_dim(2);
    }

    /// The state read by query features `phi_q` `[b, h, 1, m]`: the numerator
    /// `phi_q S` `[b, h, 1, d]` and the unguarded denominator `phi_q z` `[b, h, 1, 1]`,
    /// in the state's kind.
    pub fn read(&self, phi_q: &Tensor) -> (Tensor, Tensor) {
        let pq = phi_q.to_kind(self.s.kind());
        (pq.matmul(&self.s), pq.matmul(&self.z.unsqueeze(-1)))
    }

    /// Multiplies the sums by `factor` `[b, h]` (a change of a feature map's constant
    /// stabiliser, which cancels between numerator and denominator).
    pub fn scale(&mut self, factor: &Tensor) {
        let f = factor.to_kind(self.s.kind());
        self.s *= f.unsqueeze(-1).unsqueeze(-1);
        self.z *= f.unsqueeze(-1);
    }

    pub fn reset(&mut self) {
        self.s.copy_(&self.start.0);
        self.z.copy_(&self.start.1);
    }

    /// The live sums (the saved start is bookkeeping for the benchmark, not state).
    pub fn bytes(&self) -> u64 {
        tensor_bytes(&self.s) + tensor_bytes(&self.z)
    }
}
