//! Softmax attention over many small blocks at once, through LibTorch's fused
//! `scaled_dot_product_attention`, and the record of which SDPA backend ran.
//!
//! The pattern variants gather, for every query block, the keys it may see, and then need
//! softmax(q k^T / sqrt(d) + mask) v per block. Written as matmul, masked_fill, softmax and
//! matmul, that makes four passes over a `[blocks, r, c]` score tensor and keeps it alive
//! for backward. The fused kernel (the flash kernel on the CPU, memory-efficient or flash
//! on CUDA) computes the same thing in tiles without writing the scores out: on the CPU,
//! `local`'s speed-up over `vanilla` at N = 4096 went from 4.7x to 7.6x with it
//! (docs/reference/variants-shared.md names the runs). The arithmetic is unchanged, so
//! FLOP counts stay those of the gathered blocks.
//!
//! The CPU flash kernel only takes a mask of rank 2 or 4, which is why blocks are laid out
//! as `[batch * heads, blocks, r, d]` and masks as `[1 or batch * heads, blocks, r, c]`:
//! any other rank silently falls back to the unfused math path.
//!
//! Masks and backends. CUDA's flash kernel takes no mask at all: any mask sends SDPA to
//! the memory-efficient kernel (or cuDNN, or math). A boolean mask is also converted to an
//! additive one on every call, and the memory-efficient kernel re-pads a mask whose rows
//! are not 8-element aligned, again per call. So a pattern is classified once, when its
//! variant is built ([`BlockMask`]): all keys visible (no mask), SDPA's own causal
//! triangle (no mask), "ragged" (the last blocks see only a prefix of their keys, as
//! padding does: two unmasked calls), or anything else: an additive mask (0 visible, -inf
//! hidden) in the compute dtype, on the device, with rows aligned, built once. Rows whose
//! output is discarded (padding queries) are ignored by the classification.
//!
//! Every fused call asks LibTorch which backend it will take for the very tensors, mask,
//! causality and grad mode of the call (`_fused_sdp_choice`, which looks at metadata only
//! and allocates nothing) and records the answer in the variant's [`Backends`].

use std::sync::{Arc, Mutex};

use tch::{Device, Kind, Tensor};

/// Storage alignment of an additive mask's rows, in elements: the memory-efficient
/// kernel copies any mask whose strides are not multiples of 8 (16 keeps bf16 rows on
/// 32 bytes).
const MASK_ALIGN: i64 = 16;

/// Names of at::native::sdp::SDPBackend, the value `_fused_sdp_choice` returns.
pub fn backend_name(choice: i64) -> String {
    match choice {
        0 => "math".into(),
        1 => "flash".into(),
        2 => "memory-efficient".into(),
        3 => "cudnn".into(),
        4 => "overrideable".into(),
        other => format!("unknown({other})"),
    }
}

/// The SDPA backends one variant's fused calls chose, each name once, in the order first
/// seen. Cloning shares the record (a decoder records into its layer's).
#[derive(Clone, Default)]
pub struct Backends(Arc<Mutex<Vec<String>>>);

impl Backends {
    /// `scaled_dot_product_attention(q, k, v, mask, causal)` (no dropout, default scale),
    /// recording the backend LibTorch picks for exactly this call.
    pub fn sdpa(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Tensor {
        let choice = Tensor::internal_fused_sdp_choice(q, k, v, mask, 0.0, causal, None, false);
        self.record(choice);
        Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, None, false)
    }

    fn record(&self, choice: i64) {
        let name = backend_name(choice);
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&name) {
            seen.push(name);
        }
    }

    /// One name when every call agreed, else the names joined by "+"; `None` before any
    /// call.
    pub fn get(&self) -> Option<String> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (!seen.is_empty()).then(|| seen.join("+"))
    }
}

/// Several records as one, in the given order (a variant made of sub-variants).
pub fn join_backends(parts: &[Option<String>]) -> Option<String> {
    let mut names: Vec<&str> = Vec::new();
    for part in parts.iter().flatten() {
        for name in part.split('+') {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    (!names.is_empty()).then(|| names.join("+"))
}

/// An additive mask, -inf where `hidden` (bool) is true and 0 elsewhere, in `kind` on
/// `hidden`'s device, one allocation, its rows stored [`MASK_ALIGN`]-aligned so that the
/// memory-efficient kernel takes it as is.
pub fn additive_mask(hidden: &Tensor, kind: Kind) -> Tensor {
    let mut size = hidden.size();
    let last = size.len() - 1;
    let c = size[last];
    size[last] = (c + MASK_ALIGN - 1) / MASK_ALIGN * MASK_ALIGN;
    let mut mask =
        Tensor::zeros(size.as_slice(), (kind, hidden.device())).narrow(last as i64, 0, c);
    let _ = mask.masked_fill_(hidden, f64::NEG_INFINITY);
    mask
}

/// How the queries of a set of blocks see their keys, decided once per pattern: the
/// cheapest exact way to call SDPA on it.
#[derive(Debug)]
pub enum BlockMask {
    /// Every key of every block: no mask (flash on CUDA).
    All,
    /// Square blocks, row i sees keys 0..=i: SDPA's causal flag, no mask.
    Causal,
    /// Blocks before `full` see all their keys, the rest only their first `short`: two
    /// unmasked calls, the second on the keys' prefix.
    Ragged { full: i64, short: i64 },
    /// Anything else: `[1 or batch * heads, blocks, r, c]` additive, in the compute dtype.
    Additive(Tensor),
}

impl BlockMask {
    /// Classifies `visible` (bool, `[1 or batch * heads, blocks, r, c]`, true where a key
    /// is attended; every row must see a key). `live` (`[blocks, r]`, bool) marks the rows
    /// whose output is used; the others (padding queries) may see anything. `kind` and
    /// `device` are the computation's.
    pub fn new(visible: &Tensor, live: Option<&Tensor>, kind: Kind, device: Device) -> BlockMask {
        let vis = visible.to_device(Device::Cpu);
        let (lead, g, r, c) = vis.size4().expect("[1 or batch * heads, blocks, r, c]");
        assert!(
            bool::try_from(vis.any_dim(-1, false).all()).unwrap_or(false),
            "every row of a block mask must see at least one key"
        );
        let live = match live {
            Some(l) => l.to_device(Device::Cpu).view([1, g, r, 1]),
            None => Tensor::ones([1, g, r, 1], (Kind::Bool, Device::Cpu)),
        };
        // Whether `vis` equals `pattern` on every live row.
        let matches = |pattern: &Tensor| {
            !bool::try_from(vis.ne_tensor(pattern).logical_and(&live).any()).unwrap_or(true)
        };
        let all = Tensor::ones([1, 1, 1, c], (Kind::Bool, Device::Cpu));
        if matches(&all) {
            return BlockMask::All;
        }
        if r == c && matches(&Tensor::ones([r, c], (Kind::Bool, Device::Cpu)).tril(0)) {
            return BlockMask::Causal;
        }
        if lead == 1 {
            if let Some(ragged) = ragged(&vis, &live, g, c) {
                return ragged;
            }
        }
        BlockMask::Additive(additive_mask(&vis.logical_not().to_device(device), kind))
    }

    /// Whether calls pass a mask tensor.
    pub fn is_masked(&self) -> bool {
        matches!(self, BlockMask::Additive(_))
    }

    /// The additive mask, where one is needed.
    pub fn additive(&self) -> Option<&Tensor> {
        match self {
            BlockMask::Additive(m) => Some(m),
            _ => None,
        }
    }
}

/// The [`BlockMask::Ragged`] split of `vis` `[1, g, r, c]`, if it is one: the first block
/// with a hidden key on a live row starts the short blocks, whose live rows must all see
/// exactly the same prefix.
fn ragged(vis: &Tensor, live: &Tensor, g: i64, c: i64) -> Option<BlockMask> {
    let hidden = vis.logical_not().logical_and(live); // [1, g, r, c]
    let per_block =
        Vec::<bool>::try_from(hidden.any_dim(3, false).any_dim(2, false).view([g])).ok()?;
    let full = per_block.iter().position(|&h| h)? as i64;
    // Keys seen by the first live row of that block.
    let block_live = Vec::<bool>::try_from(live.get(0).get(full).view([-1])).ok()?;
    let row = block_live.iter().position(|&l| l)? as i64;
    let short = i64::try_from(vis.get(0).get(full).get(row).sum(Kind::Int64)).ok()?;
    let prefix = Tensor::arange(c, (Kind::Int64, Device::Cpu))
        .lt(short)
        .view([1, 1, 1, c]);
    let tail = |t: &Tensor| t.narrow(1, full, g - full);
    let differs = tail(vis).ne_tensor(&prefix).logical_and(&tail(live));
    (short > 0 && !bool::try_from(differs.any()).ok()?).then_some(BlockMask::Ragged { full, short })
}

/// `q` `[b, h, g, r, d]`, `k` and `v` `[b, h, g, c, d]`: each of the g blocks' r queries
/// attends to that block's c keys as `mask` says, scaled by 1/sqrt(d); the backend each
/// fused call takes goes to `backends`. Returns `[b, h, g, r, d]`.
pub fn block_softmax(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    backends: &Backends,
) -> Tensor {
    let size = q.size();
    assert_eq!(size.len(), 5, "[batch, heads, blocks, rows, head_dim]");
    let flat = |t: &Tensor| {
        let s = t.size();
        t.reshape([s[0] * s[1], s[2], s[3], s[4]])
    };
    let (q, k, v) = (flat(q), flat(k), flat(v));
    let out = match mask {
        BlockMask::All => backends.sdpa(&q, &k, &v, None, false),
        BlockMask::Causal => backends.sdpa(&q, &k, &v, None, true),
        BlockMask::Ragged { full, short } => {
            let g = q.size()[1];
            let part = |t: &Tensor, keys: Option<i64>| {
                let t = t.narrow(1, *full, g - full);
                match keys {
                    Some(n) => t.narrow(2, 0, n),
                    None => t,
                }
            };
            let head = (*full > 0).then(|| {
                let head = |t: &Tensor| t.narrow(1, 0, *full);
                backends.sdpa(&head(&q), &head(&k), &head(&v), None, false)
            });
            let (ks, vs) = (part(&k, Some(*short)), part(&v, Some(*short)));
            let tail = backends.sdpa(&part(&q, None), &ks, &vs, None, false);
            match head {
                Some(head) => Tensor::cat(&[head, tail], 1),
                None => tail,
            }
        }
        BlockMask::Additive(m) => {
            if m.kind() == q.kind() && m.device() == q.device() {
                backends.sdpa(&q, &k, &v, Some(m), false)
            } else {
                // Built for another dtype than the call's (a test calling a float layer
                // with doubles): correct, at a conversion per call.
                let m = m.to_kind(q.kind()).to_device(q.device());
                backends.sdpa(&q, &k, &v, Some(&m), false)
            }
        }
    };
    out.view(size.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, visible: &Tensor) -> Tensor {
        let d = q.size()[4] as f64;
        let scores = (q * d.powf(-0.5)).matmul(&k.transpose(-2, -1));
        scores
            .masked_fill(&visible.logical_not().squeeze_dim(0), f64::NEG_INFINITY)
            .softmax(-1, q.kind())
            .matmul(v)
    }

    fn inputs(g: i64, r: i64, c: i64) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let (b, h, d) = (2, 3, 8);
        (
            Tensor::randn([b, h, g, r, d], opts),
            Tensor::randn([b, h, g, c, d], opts),
            Tensor::randn([b, h, g, c, d], opts),
        )
    }

    fn max_err(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).unwrap()
    }

    #[test]
    fn equals_masked_softmax() {
        let (g, r, c) = (4, 5, 7);
        let (q, k, v) = inputs(g, r, c);
        let visible = Tensor::rand([1, g, r, c], (Kind::Float, Device::Cpu)).gt(0.3);
        // Keep every row non-empty.
        let _ = visible.narrow(3, 0, 1).fill_(1);
        let mask = BlockMask::new(&visible, None, Kind::Float, Device::Cpu);
        let m = mask.additive().expect("a random pattern needs a mask");
        assert_eq!(m.kind(), Kind::Float);
        assert_eq!(m.stride()[2] % MASK_ALIGN, 0, "rows aligned");
        let backends = Backends::default();
        assert_eq!(backends.get(), None);
        let out = block_softmax(&q, &k, &v, &mask, &backends);
        let err = max_err(&out, &reference(&q, &k, &v, &visible));
        assert!(err < 1e-5, "max error {err}");
        assert!(backends.get().is_some());
    }

    #[test]
    fn all_visible_causal_and_ragged_run_unmasked_and_exact() {
        let (g, r, c) = (4, 6, 6);
        let (q, k, v) = inputs(g, r, c);
        let opts = (Kind::Bool, Device::Cpu);
        let all = Tensor::ones([1, g, r, c], opts);
        let causal = Tensor::ones([r, c], opts)
            .tril(0)
            .expand([1, g, r, c], true);
        // Padding: the last two blocks have 4 real keys (and rows 4, 5 are padding).
        let ragged = all.copy();
        let _ = ragged.narrow(1, 2, 2).narrow(3, 4, 2).fill_(0);
        let live = Tensor::ones([g, r], opts);
        let _ = live.narrow(0, 2, 2).narrow(1, 4, 2).fill_(0);
        // A padding row that sees a hidden key must not spoil the classification.
        let _ = ragged.get(0).get(3).get(5).fill_(0);
        let _ = ragged.get(0).get(3).get(5).get(5).fill_(1);
        for (visible, live, expect) in [
            (&all, None, "all"),
            (&causal, None, "causal"),
            (&ragged, Some(&live), "ragged"),
        ] {
            let mask = BlockMask::new(visible, live, Kind::Float, Device::Cpu);
            let got = match mask {
                BlockMask::All => "all",
                BlockMask::Causal => "causal",
                BlockMask::Ragged { full: 2, short: 4 } => "ragged",
                _ => "other",
            };
            assert_eq!(got, expect);
            assert!(!mask.is_masked());
            let out = block_softmax(&q, &k, &v, &mask, &Backends::default());
            let reference = reference(&q, &k, &v, visible);
            let rows = live.map_or(Tensor::ones([g, r], opts), |l| l.shallow_clone());
            let rows = rows.view([1, 1, g, r, 1]);
            let err = max_err(&(out * &rows), &(reference * &rows));
            assert!(err < 1e-5, "{expect}: max error {err}");
        }
    }

    #[test]
    fn a_mask_built_for_another_dtype_still_applies() {
        let (g, r, c) = (2, 3, 5);
        let (q, k, v) = inputs(g, r, c);
        let visible = Tensor::ones([1, g, r, c], (Kind::Bool, Device::Cpu));
        let _ = visible.narrow(3, 1, 1).fill_(0);
        let mask = BlockMask::new(&visible, None, Kind::Float, Device::Cpu);
        let q64 = q.to_kind(Kind::Double);
        let (k64, v64) = (k.to_kind(Kind::Double), v.to_kind(Kind::Double));
        let out = block_softmax(&q64, &k64, &v64, &mask, &Backends::default());
        let err = max_err(&out, &reference(&q64, &k64, &v64, &visible));
        assert!(err < 1e-10, "max error {err}");
    }

    #[test]
    fn backends_join_in_call_order() {
        assert_eq!(join_backends(&[None, None]), None);
        assert_eq!(
            join_backends(&[Some("flash".into()), Some("math+flash".into()), None]),
            Some("flash+math".into())
        );
        let b = Backends::default();
        b.record(1);
        b.record(2);
        b.record(1);
        assert_eq!(b.get().as_deref(), Some("flash+memory-efficient"));
    }
}
