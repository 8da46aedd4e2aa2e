//! Conditional computation (the survey's "sparse models"): a pre-norm block whose FFN is a
//! mixture of experts. A router scores every token against E expert FFNs and each token
//! runs through only the k experts it is routed to, so parameters grow with E while the
//! FLOPs per token stay those of k FFNs. The attention stays exact (fused SDPA).
//!
//! What the variants share lives here: the router, the experts, the capacity-bounded
//! dispatch, the load-balancing loss, the block and its decoder. Each variant's file holds
//! its gate (which experts a token goes to, with which weights).
//!
//! Dispatch. Every expert takes at most `capacity = ceil(capacity_factor * T / E)` of the
//! T = batch x seq_len tokens (capped at T); an assignment past its expert's capacity is
//! dropped, its token keeping the residual only. Accepted assignments are copied by index
//! into a `[E, capacity, d]` buffer, the experts run as two batched products over it, and
//! the results are gathered back, scaled by their gates and summed per token. Nothing runs
//! an expert on a token that is not routed to it; the unfilled slots of the buffer are
//! computed (and counted in the FLOPs), which bounds them by `capacity_factor` x the
//! routed tokens. Slots come from a stable sort of the assignments by expert, O(T k)
//! memory, not a `[T, E]` one-hot cumulative sum.
//!
//! Priority. Who gets a slot depends on the whole batch: the papers fill capacity in the
//! order tokens are listed. Tokens are listed position-major (position 0 of every
//! sequence, then position 1, ...), so a token's slot depends only on tokens at its own or
//! earlier positions: a later token never displaces an earlier one and the block is
//! causal, though a token's fate may depend on other sequences of the batch (as in the
//! papers, where capacity is per batch or group). That order also lets a decoder keep
//! per-expert fill counts and reproduce the causal forward token by token.

pub mod moe_top2;
pub mod switch;

use std::cell::RefCell;

use tch::{nn, Kind, Tensor};

use crate::attention::{tensor_bytes, Layer, LayerDecoder, MultiHeadAttention, Norm, Shape};
use crate::error::VariantError;
use crate::exact::sdpa::Sdpa;
use crate::flops::{self, FlopCount};
use crate::registry::AttentionVariant;

/// Router arithmetic runs in float32 even for half-precision activations (Switch §2.4,
/// "selective precision": the softmax's exponent is where bf16 routing went unstable);
/// float64 stays float64.
pub fn routing_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// The router: a bias-free linear map d -> E and a softmax over experts.
pub struct Router {
    /// `[E, d]`.
    w: Tensor,
}

impl Router {
    fn new(vs: &nn::Path, d: i64, experts: i64) -> Router {
        // nn.Linear's default init for a d -> E map.
        let bound = (d as f64).powf(-0.5);
        Router {
            w: vs.uniform("weight", &[experts, d], -bound, bound),
        }
    }

    /// `[T, d]` -> router probabilities `[T, E]` in [`routing_kind`].
    pub fn probs(&self, x: &Tensor) -> Tensor {
        let k = routing_kind(x.kind());
        x.to_kind(k).matmul(&self.w.to_kind(k).tr()).softmax(-1, k)
    }

    fn share(&self) -> Router {
        Router {
            w: self.w.shallow_clone(),
        }
    }
}

/// E GELU FFNs d -> h -> d (block.rs's FFN, one per expert), stored stacked so that all
/// of them run as one batched product.
pub struct Experts {
    /// `[E, d, h]`, `[E, 1, h]`, `[E, h, d]`, `[E, 1, d]`.
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Experts {
    fn new(vs: &nn::Path, experts: i64, d: i64, h: i64) -> Experts {
        // nn.Linear's default init, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let (b_in, b_hidden) = ((d as f64).powf(-0.5), (h as f64).powf(-0.5));
        Experts {
            w1: vs.uniform("w1", &[experts, d, h], -b_in, b_in),
            b1: vs.uniform("b1", &[experts, 1, h], -b_in, b_in),
            w2: vs.uniform("w2", &[experts, h, d], -b_hidden, b_hidden),
            b2: vs.uniform("b2", &[experts, 1, d], -b_hidden, b_hidden),
        }
    }

    /// Every expert on its own rows: `[E, C, d]` -> `[E, C, d]`.
    fn forward(&self, buf: &Tensor) -> Tensor {
        (buf.bmm(&self.w1) + &self.b1).gelu("none").bmm(&self.w2) + &self.b2
    }

    /// Row a of `x` (`[A, d]`) through expert `experts[a]`: for a handful of tokens (a
    /// decoding step) gathering the few routed experts' weights beats a capacity buffer.
    fn per_row(&self, x: &Tensor, experts: &Tensor) -> Tensor {
        let pick = |t: &Tensor| t.index_select(0, experts);
        let hidden = (x.unsqueeze(1).bmm(&pick(&self.w1)) + pick(&self.b1)).gelu("none");
        (hidden.bmm(&pick(&self.w2)) + pick(&self.b2)).squeeze_dim(1)
    }

    fn share(&self) -> Experts {
        Experts {
            w1: self.w1.shallow_clone(),
            b1: self.b1.shallow_clone(),
            w2: self.w2.shallow_clone(),
            b2: self.b2.shallow_clone(),
        }
    }
}

/// A gate's decision for T tokens: A assignments (token, expert, weight), listed in the
/// order in which they claim capacity.
pub struct Routed {
    /// `[A]` int64: the token (row of the position-major `[T, d]` input).
    pub tokens: Tensor,
    /// `[A]` int64.
    pub experts: Tensor,
    /// `[A]`, in [`routing_kind`]: the weight of the expert's output.
    pub gates: Tensor,
    /// `[A]` bool: false where the gate decided not to dispatch (GShard's random routing);
    /// such an assignment takes no capacity.
    pub active: Tensor,
    /// `[T]` int64: every token's top expert, for the load-balancing loss.
    pub first: Tensor,
}

/// Which experts a token goes to: the part in which the variants differ.
pub trait Gate: Clone + Send + 'static {
    /// Routes `[T, E]` router probabilities. `causal`: list a token's assignments
    /// together, token by token, so that no later token claims capacity first.
    fn route(&self, probs: &Tensor, causal: bool) -> Routed;
    /// Assignments per token (k), for the FLOP count.
    fn choices(&self) -> i64;
}

/// Where each assignment lands in its expert's buffer.
pub struct Slots {
    /// `[A]` int64: the assignment's place in its expert's queue, counting `offset`.
    pub position: Tensor,
    /// `[A]` bool: active and within capacity.
    pub keep: Tensor,
    /// `[E]` int64: `offset` plus this call's active assignments per expert.
    pub counts: Tensor,
}

/// Places assignments in their experts' queues, in list order, after `offset[e]` earlier
/// ones (a decoder's fill so far; zeros in a forward pass). A stable sort by expert groups
/// each expert's assignments in list order; a position is then the rank within the group.
pub fn slots(
    experts: &Tensor,
    active: &Tensor,
    n_experts: i64,
    capacity: i64,
    offset: &Tensor,
) -> Slots {
    let a = experts.size()[0];
    let int = (Kind::Int64, experts.device());
    // Inactive assignments form a last group, E, that takes no capacity.
    let key = experts.where_self(active, &Tensor::full([a], n_experts, int));
    let (sorted, order) = key.sort_stable(true, 0, false);
    let group = Tensor::zeros([n_experts + 1], int).index_add(0, &key, &Tensor::ones([a], int));
    let start = group.cumsum(0, Kind::Int64) - &group;
    let rank_sorted = Tensor::arange(a, int) - start.index_select(0, &sorted);
    let rank = Tensor::zeros([a], int).scatter(0, &order, &rank_sorted);
    let offset_ext = Tensor::cat(&[offset, &Tensor::zeros([1], int)], 0);
    let position = rank + offset_ext.index_select(0, &key);
    let keep = active.logical_and(&position.lt(capacity));
    let counts = offset + group.narrow(0, 0, n_experts);
    Slots {
        position,
        keep,
        counts,
    }
}

/// The load-balancing loss without its coefficient: E * sum_i f_i P_i, with f_i the
/// fraction of tokens whose top expert is i and P_i the mean router probability of i
/// (Switch eq. 4; GShard's l_aux scaled the same way in its reference code). 1 when
/// routing is uniform, up to E when it collapses onto one expert. Differentiable through
/// P only, as in the papers.
pub fn balance_loss(probs: &Tensor, first: &Tensor) -> Tensor {
    let (t, e) = probs.size2().expect("[tokens, experts]");
    let k = probs.kind();
    let f = Tensor::zeros([e], (k, probs.device())).index_add(
        0,
        first,
        &Tensor::ones([t], (k, probs.device())),
    ) / t as f64;
    let p = probs.mean_dim(0, false, k);
    (f * p).sum(k) * e as f64
}

/// The settings both variants share, checked by [`check_moe`].
#[derive(Debug, Clone, Copy)]
pub struct MoeSettings {
    pub experts: i64,
    pub capacity_factor: f64,
    pub alpha: f64,
    pub ffn_mult: i64,
}

/// Rejects what cannot be built; `min_experts` is the gate's k.
pub fn check_moe(name: &str, s: &MoeSettings, min_experts: i64) -> Result<(), VariantError> {
    VariantError::positive(name, "experts", s.experts)?;
    if s.experts < min_experts {
        return Err(VariantError::config(
            name,
            format!(
                "experts must be at least {min_experts} to route each token to \
                 {min_experts} different experts, got {}",
                s.experts
            ),
        ));
    }
    VariantError::positive(name, "ffn_mult", s.ffn_mult)?;
    if !(s.capacity_factor.is_finite() && s.capacity_factor > 0.0) {
        return Err(VariantError::config(
            name,
            format!(
                "capacity_factor must be a positive number, got {}",
                s.capacity_factor
            ),
        ));
    }
    if !(s.alpha.is_finite() && s.alpha >= 0.0) {
        return Err(VariantError::config(
            name,
            format!("alpha must be a non-negative number, got {}", s.alpha),
        ));
    }
    Ok(())
}

/// The mixture-of-experts FFN: router, gate, experts, dispatch.
struct MoeFfn<G: Gate> {
    router: Router,
    experts: Experts,
    gate: G,
    n_experts: i64,
    capacity_factor: f64,
    causal: bool,
}

impl<G: Gate> MoeFfn<G> {
    fn capacity(&self, tokens: i64) -> i64 {
        let c = (self.capacity_factor * tokens as f64 / self.n_experts as f64).ceil() as i64;
        c.clamp(1, tokens)
    }

    /// `[T, d]` (position-major) -> (FFN output `[T, d]`, balance loss without alpha,
    /// per-expert fill).
    fn forward(&self, z: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (t, d) = z.size2().expect("[tokens, d_model]");
        let (e, c) = (self.n_experts, self.capacity(t));
        let probs = self.router.probs(z);
        let routed = self.gate.route(&probs, self.causal);
        let offset = Tensor::zeros([e], (Kind::Int64, z.device()));
        let slots = slots(&routed.experts, &routed.active, e, c, &offset);
        // Dropped assignments all go to one spare slot past the buffer, which is never
        // run through an expert and reads back as zeros.
        let spare = Tensor::full_like(&slots.position, e * c);
        let slot = (&routed.experts * c + &slots.position).where_self(&slots.keep, &spare);
        let opts = (z.kind(), z.device());
        let buf = Tensor::zeros([e * c + 1, d], opts).index_add(
            0,
            &slot,
            &z.index_select(0, &routed.tokens),
        );
        let out = self
            .experts
            .forward(&buf.narrow(0, 0, e * c).view([e, c, d]))
            .view([e * c, d]);
        let out = Tensor::cat(&[out, Tensor::zeros([1, d], opts)], 0);
        let y = out
            .index_select(0, &slot)
            .multiply(&routed.gates.to_kind(z.kind()).unsqueeze(1));
        let f = Tensor::zeros([t, d], opts).index_add(0, &routed.tokens, &y);
        (f, balance_loss(&probs, &routed.first), slots.counts)
    }

    /// One decoding step: `[B, d]`, one token per sequence at the same position, after
    /// `offset` assignments per expert; `capacity` is the built shape's.
    fn step(&self, z: &Tensor, capacity: i64, offset: &Tensor) -> (Tensor, Tensor) {
        let (b, d) = z.size2().expect("[batch, d_model]");
        let routed = self.gate.route(&self.router.probs(z), true);
        let slots = slots(
            &routed.experts,
            &routed.active,
            self.n_experts,
            capacity,
            offset,
        );
        let weight = routed
            .gates
            .multiply(&slots.keep.to_kind(routed.gates.kind()))
            .to_kind(z.kind());
        let y = self
            .experts
            .per_row(&z.index_select(0, &routed.tokens), &routed.experts)
            .multiply(&weight.unsqueeze(1));
        let f = Tensor::zeros([b, d], (z.kind(), z.device())).index_add(0, &routed.tokens, &y);
        (f, slots.counts)
    }

    fn share(&self) -> MoeFfn<G> {
        MoeFfn {
            router: self.router.share(),
            experts: self.experts.share(),
            gate: self.gate.clone(),
            n_experts: self.n_experts,
            capacity_factor: self.capacity_factor,
            causal: self.causal,
        }
    }
}

/// The pre-norm block x + Attn(LN(x)), then + MoE(LN(.)): block.rs's arrangement with the
/// FFN replaced. Parameters: `attn.*` (as `sdpa`'s), `ln1`, `ln2`, `router.weight`,
/// `experts.{w1,b1,w2,b2}`.
pub struct MoeBlock<G: Gate> {
    attn: MultiHeadAttention,
    ln1: Norm,
    ln2: Norm,
    ffn: MoeFfn<G>,
    alpha: f64,
    ffn_dim: i64,
    shape: Shape,
    /// The last forward's auxiliary loss, detached (a value to log: holding the graph
    /// would keep the router's activations alive past the step).
    last_aux: RefCell<Option<Tensor>>,
}

impl<G: Gate> MoeBlock<G> {
    pub(crate) fn new(
        vs: &nn::Path,
        shape: &Shape,
        settings: MoeSettings,
        gate: G,
    ) -> Result<Self, VariantError> {
        let d = shape.d_model();
        let core = Sdpa::new(Default::default(), shape, vs / "core")?;
        let ffn_dim = settings.ffn_mult * d;
        Ok(MoeBlock {
            attn: MultiHeadAttention::new(vs / "attn", *shape, Box::new(core)),
            ln1: Norm::new(&(vs / "ln1"), d),
            ln2: Norm::new(&(vs / "ln2"), d),
            ffn: MoeFfn {
                router: Router::new(&(vs / "router"), d, settings.experts),
                experts: Experts::new(&(vs / "experts"), settings.experts, d, ffn_dim),
                gate,
                n_experts: settings.experts,
                capacity_factor: settings.capacity_factor,
                causal: shape.causal,
            },
            alpha: settings.alpha,
            ffn_dim,
            shape: *shape,
            last_aux: RefCell::new(None),
        })
    }

    /// The block's output and its auxiliary load-balancing loss, alpha * E * sum_i f_i
    /// P_i, differentiable w.r.t. the router: what a training loop adds to its loss.
    pub fn forward_with_loss(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (y, aux, _) = self.forward_parts(x);
        (y, aux)
    }

    /// The auxiliary loss of the last [`Layer::forward`] (or `forward_with_loss`),
    /// detached; `None` before the first.
    pub fn aux_loss(&self) -> Option<Tensor> {
        self.last_aux.borrow().as_ref().map(Tensor::shallow_clone)
    }

    /// Expert capacity for `tokens` tokens.
    pub fn capacity(&self, tokens: i64) -> i64 {
        self.ffn.capacity(tokens)
    }

    /// (output, auxiliary loss, per-expert fill).
    fn forward_parts(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (b, n, d) = x.size3().expect("input must be [batch, seq_len, d_model]");
        let h = x + self.attn.forward(&self.ln1.forward(x));
        // Position-major rows: see the module doc's "Priority".
        let z = self.ln2.forward(&h).transpose(0, 1).reshape([n * b, d]);
        let (f, balance, counts) = self.ffn.forward(&z);
        let f = f.view([n, b, d]).transpose(0, 1);
        let aux = balance * self.alpha;
        *self.last_aux.borrow_mut() = Some(aux.detach());
        (h + f, aux, counts)
    }
}

impl<G: Gate> Layer for MoeBlock<G> {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_parts(x).0
    }

    /// The attention (`sdpa`'s count, with its projections), the router (T x d x E) and
    /// the experts on their full capacity buffer: E x capacity rows of the d -> h -> d FFN,
    /// about capacity_factor x T rows whatever E is. Not E FFNs per token.
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let t = s.batch * s.seq_len;
        let (d, h, e) = (
            s.d_model() as u64,
            self.ffn_dim as u64,
            self.ffn.n_experts as u64,
        );
        let c = self.ffn.capacity(t) as u64;
        let router = flops::matmul(1, t as u64, d, e);
        let experts = flops::matmul(e, c, d, h) + flops::matmul(e, c, h, d);
        self.attn.flops() + FlopCount::forward(router + experts)
    }

    fn backend(&self) -> Option<String> {
        self.attn.backend()
    }

    fn decoder(&self, x: &Tensor, capacity: i64) -> Option<Box<dyn LayerDecoder>> {
        let attn = self.attn.decoder(&self.ln1.forward(x), capacity)?;
        // The context's fill: its tokens precede every generated one in the priority order.
        let counts = tch::no_grad(|| self.forward_parts(x).2);
        let tokens = self.shape.batch * self.shape.seq_len;
        Some(Box::new(MoeDecoder {
            attn,
            ln1: self.ln1.share(),
            ln2: self.ln2.share(),
            ffn: self.ffn.share(),
            capacity: self.ffn.capacity(tokens),
            counts: counts.copy(),
            context_counts: counts,
        }))
    }

    /// The attention's step, the router on B tokens and k expert FFNs per token (computed
    /// for every assignment and zero-weighted when dropped).
    fn decode_flops(&self, context: i64) -> Option<FlopCount> {
        let s = &self.shape;
        let (b, d, h) = (s.batch as u64, s.d_model() as u64, self.ffn_dim as u64);
        let (e, k) = (self.ffn.n_experts as u64, self.ffn.gate.choices() as u64);
        let router = flops::matmul(1, b, d, e);
        let experts = flops::matmul(b * k, 1, d, h) + flops::matmul(b * k, 1, h, d);
        Some(self.attn.decode_flops(context)? + FlopCount::forward(router + experts))
    }
}

/// The attention's KV cache plus each expert's fill so far, so that a generated token
/// finds its expert as full as it is at that position in the causal forward.
struct MoeDecoder<G: Gate> {
    attn: Box<dyn LayerDecoder>,
    ln1: Norm,
    ln2: Norm,
    ffn: MoeFfn<G>,
    capacity: i64,
    counts: Tensor,
    context_counts: Tensor,
}

impl<G: Gate> LayerDecoder for MoeDecoder<G> {
    fn step(&mut self, x: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().expect("token must be [batch, 1, d_model]");
        assert_eq!(n, 1, "one token per step");
        let h = x + self.attn.step(&self.ln1.forward(x));
        let z = self.ln2.forward(&h).view([b, d]);
        let (f, counts) = self.ffn.step(&z, self.capacity, &self.counts);
        self.counts = counts;
        h + f.view([b, 1, d])
    }

    fn reset(&mut self) {
        self.attn.reset();
        self.counts = self.context_counts.copy();
    }

    fn state_bytes(&self) -> u64 {
        self.attn.state_bytes() + tensor_bytes(&self.counts)
    }
}
