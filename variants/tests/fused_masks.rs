//! How the pattern variants reach LibTorch's fused SDPA: no mask where the pattern needs
//! none (so CUDA can pick flash), a cached additive mask in the compute dtype otherwise,
//! and the backend each call took, recorded. Exactness of each pattern against its dense
//! definition is in patterns.rs and learnable.rs; here, the same shapes through the
//! unmasked paths, and the records.

mod common;

use common::*;
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::combined::axial;
use xarena_variants::exact::vanilla::softmax_attention;
use xarena_variants::fixed::{blockwise, local, strided};
use xarena_variants::fused::BlockMask;
use xarena_variants::learnable::sinkhorn;
use xarena_variants::registry::AttentionVariant;
use xarena_variants::{build_layer, registry, Attention, Scope, VariantSpec};

fn build<V: AttentionVariant>(config: V::Config, s: &xarena_variants::Shape, kind: Kind) -> V {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(kind);
    V::new(config, s, vs.root()).expect("valid config")
}

fn kind_of(mask: &BlockMask) -> &'static str {
    match mask {
        BlockMask::All => "all",
        BlockMask::Causal => "causal",
        BlockMask::Ragged { .. } => "ragged",
        BlockMask::Additive(_) => "additive",
    }
}

/// `[N, N]` hidden mask from a rule over positions.
fn dense(n: i64, causal: bool, visible: impl Fn(i64, i64) -> bool) -> Tensor {
    let hidden: Vec<bool> = (0..n * n)
        .map(|x| {
            let (i, j) = (x / n, x % n);
            !(visible(i, j) && !(causal && j > i))
        })
        .collect();
    Tensor::from_slice(&hidden).view([n, n])
}

fn check(core: &dyn Attention, s: &xarena_variants::Shape, hidden: &Tensor, what: &str) {
    let (q, k, v) = qkv(s, 5);
    let err = rel_err(
        &core.attend(&q, &k, &v),
        &softmax_attention(&q, &k, &v, Some(hidden)),
    );
    assert!(err < 1e-12, "{what}: {err}");
}

#[test]
fn padding_and_full_windows_reach_sdpa_without_a_mask_and_stay_exact() {
    for causal in [false, true] {
        // Strided with padding (37 = 5 x 8 - 3): full and short groups, or SDPA's causal.
        let s = shape(37, causal);
        let core: strided::Strided = build(strided::Config { stride: 5 }, &s, Kind::Double);
        let want = if causal { "causal" } else { "ragged" };
        assert_eq!(kind_of(core.mask()), want, "strided causal={causal}");
        check(
            &core,
            &s,
            &dense(37, causal, |i, j| (i - j) % 5 == 0),
            "strided",
        );

        // Local with a window over the whole sequence: one block, no mask.
        let s = shape(20, causal);
        let core: local::Local = build(local::Config { window: 32 }, &s, Kind::Double);
        let want = if causal { "causal" } else { "all" };
        assert_eq!(kind_of(core.mask()), want, "local causal={causal}");
        check(
            &core,
            &s,
            &dense(20, causal, |_, _| true),
            "local, full window",
        );

        // Blockwise with a short last block.
        let s = shape(37, causal);
        let core: blockwise::Blockwise = build(blockwise::Config { block: 8 }, &s, Kind::Double);
        let want = if causal { "causal" } else { "ragged" };
        assert_eq!(
            kind_of(core.pattern().mask()),
            want,
            "blockwise causal={causal}"
        );
        check(
            &core,
            &s,
            &dense(37, causal, |i, j| i / 8 == j / 8),
            "blockwise",
        );

        // Axial on a ragged grid (33 = 5 x 7 - 2), along rows and along columns.
        let s = shape(33, causal);
        let core: axial::Axial = build(axial::Config { width: 7 }, &s, Kind::Double);
        let (rows, cols) = core.masks();
        assert!(
            !rows.is_masked() && !cols.is_masked(),
            "axial causal={causal}"
        );
        let (q, k, v) = qkv(&s, 5);
        let row = dense(33, causal, |i, j| i / 7 == j / 7);
        let col = dense(33, causal, |i, j| i % 7 == j % 7);
        let want =
            softmax_attention(&q, &k, &v, Some(&row)) + softmax_attention(&q, &k, &v, Some(&col));
        let err = rel_err(&core.attend(&q, &k, &v), &want);
        assert!(err < 1e-12, "axial causal={causal}: {err}");
    }
    // Sinkhorn, not causal, with a padded last block: its own keys come last, so the
    // padding ends the row.
    let s = shape(37, false);
    let core: sinkhorn::Sinkhorn = build(
        sinkhorn::Config {
            block: 8,
            ..Default::default()
        },
        &s,
        Kind::Double,
    );
    assert!(!core.mask().is_masked());
}

#[test]
fn a_band_mask_is_additive_in_the_compute_dtype_and_built_once() {
    for kind in [Kind::Float, Kind::Double] {
        let s = shape(40, false);
        let core: local::Local = build(local::Config { window: 4 }, &s, kind);
        let mask = core.mask().additive().expect("a band needs a mask");
        assert_eq!(mask.kind(), kind);
        let ptr = mask.data_ptr();
        // 0 where visible, -inf where hidden; every row sees a key.
        let finite = mask.isfinite();
        assert!(bool::try_from(finite.any_dim(-1, false).all()).unwrap());
        assert!(bool::try_from(mask.masked_select(&finite).eq(0.0).all()).unwrap());
        let (q, k, v) = qkv(&s, 7);
        let (q, k, v) = (q.to_kind(kind), k.to_kind(kind), v.to_kind(kind));
        let first = core.attend(&q, &k, &v);
        let second = core.attend(&q, &k, &v);
        assert!(first.equal(&second));
        let after = core.mask().additive().unwrap();
        assert_eq!(after.data_ptr(), ptr, "the mask was rebuilt");
        assert_eq!(after.kind(), kind);
    }
}

/// Every variant whose attention goes through fused SDPA records the backend after a
/// forward pass; none is recorded before (nothing is probed at build time).
#[test]
fn every_fused_variant_records_its_backend() {
    let fused = [
        "sdpa",
        "local",
        "strided",
        "axial",
        "blockwise",
        "bigbird",
        "longformer",
        "sparse-transformer",
        "memory-compressed",
        "sinkhorn",
        "routing",
    ];
    let known = ["flash", "math", "memory-efficient", "cudnn"];
    for entry in registry() {
        let name = entry.info.name;
        for causal in [false, true] {
            if causal && !entry.info.supports_causal {
                continue;
            }
            if !entry.info.scopes.contains(&Scope::Attention) {
                continue;
            }
            let s = shape(48, causal);
            let mut vs = nn::VarStore::new(Device::Cpu);
            vs.set_kind(Kind::Float);
            let spec = VariantSpec::new(name).normalized().unwrap();
            let layer = build_layer(&spec, &s, Scope::Attention, vs.root()).unwrap();
            assert_eq!(layer.backend(), None, "{name}: a backend before any call");
            let x = Tensor::randn(
                [s.batch, s.seq_len, s.d_model()],
                (Kind::Float, Device::Cpu),
            );
            let _ = layer.forward(&x);
            let got = layer.backend();
            if fused.contains(&name) {
                let got = got.unwrap_or_else(|| panic!("{name} causal={causal}: no backend"));
                for part in got.split('+') {
                    assert!(known.contains(&part), "{name}: `{got}`");
                }
            } else {
                assert_eq!(got, None, "{name}: not a fused variant");
            }
        }
    }
}

#[test]
fn sdpa_records_the_backend_of_the_call_not_a_probe() {
    // A shape too large to allocate (8 x 64 x 2^20 x 128 floats, 256 GiB): building
    // must not touch it, as the old full-size probe did.
    let huge = xarena_variants::Shape {
        batch: 8,
        seq_len: 1 << 20,
        heads: 64,
        head_dim: 128,
        causal: true,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let core = xarena_variants::exact::sdpa::Sdpa::new(Default::default(), &huge, vs.root())
        .expect("builds without allocating");
    assert_eq!(core.backend(), None);
    // Decoding steps record into the same place.
    let s = shape(16, true);
    let core: xarena_variants::exact::sdpa::Sdpa = build(Default::default(), &s, Kind::Float);
    let (_, k, v) = qkv(&s, 3);
    let (k, v) = (k.to_kind(Kind::Float), v.to_kind(Kind::Float));
    let mut dec = core.decoder(&k, &v, 4).unwrap();
    let t = k.narrow(2, 0, 1);
    let _ = dec.step(&t, &t, &t);
    assert!(core.backend().is_some());
}
