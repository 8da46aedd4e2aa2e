//! The correctness check before timing (bench/src/check.rs) on the CPU: the same code
//! path as on CUDA, with the case's device the CPU.

mod common;

use std::path::Path;

use common::{run_quick, stderr, stdout, tmp, xarena};
use xarena_bench::case::Request;
use xarena_bench::check::{self, check_seq_len, CheckLine, CHECK_SEQ};
use xarena_bench::sweep::{Case, Sweep};
use xarena_reports::load::read_results;
use xarena_reports::schema::{Dtype, Mode, Scope, Status};
use xarena_variants::{registry, VariantSpec};

fn case(spec: &str, n: i64, dtype: Dtype, scope: Scope, causal: bool) -> Option<Case> {
    Sweep {
        variants: vec![spec.parse::<VariantSpec>().unwrap()],
        seq: vec![n],
        batch: vec![1],
        heads: vec![2],
        head_dim: vec![8],
        dtype: vec![dtype],
        mode: vec![Mode::Train],
        scope: vec![scope],
        causal: vec![causal],
        ..Sweep::default()
    }
    .cases()
    .ok()
    .map(|mut c| c.remove(0))
}

#[test]
fn every_variant_passes_the_check_in_bf16_on_the_cpu() {
    let mut exact = 0;
    for entry in registry() {
        let name = entry.info.name;
        let scope = if entry
            .info
            .scopes
            .contains(&xarena_variants::Scope::Attention)
        {
            Scope::Attention
        } else if entry.info.scopes.contains(&xarena_variants::Scope::Block) {
            Scope::Block
        } else {
            Scope::Model
        };
        // The recurrent language models take causal shapes only.
        let c = case(name, 1024, Dtype::Bf16, scope, false)
            .or_else(|| case(name, 1024, Dtype::Bf16, scope, true))
            .unwrap_or_else(|| panic!("{name}: no valid case"));
        let checked = check::check(&c).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(checked.failure, None, "{name}");
        let d = &checked.check;
        assert_eq!(d.seq_len, CHECK_SEQ, "{name}: the small N");
        assert!(d.finite, "{name}");
        if entry.info.exact {
            exact += 1;
            let (err, tol) = (d.max_rel_err.unwrap(), d.tolerance.unwrap());
            assert!(err > 0.0 && err <= tol, "{name}: {err} against {tol}");
        } else {
            assert_eq!((d.max_rel_err, d.tolerance), (None, None), "{name}");
        }
    }
    assert_eq!(exact, 2, "vanilla and sdpa are compared");
    // f16, causal, the exact ones: their error stays within f16's tighter tolerance.
    for name in ["vanilla", "sdpa"] {
        let c = case(name, 64, Dtype::F16, Scope::Block, true).unwrap();
        let d = check::check(&c).unwrap().check;
        assert_eq!(d.seq_len, 64, "a short case is checked at its own N");
        assert!(
            d.max_rel_err.unwrap() <= d.tolerance.unwrap(),
            "{name}: {d:?}"
        );
    }
}

#[test]
fn the_check_runs_at_a_small_length_its_parameters_accept() {
    let at = |spec: &str, n: i64| {
        check_seq_len(&case(spec, n, Dtype::Bf16, Scope::Attention, false).unwrap())
    };
    assert_eq!(at("vanilla", 48), 48);
    assert_eq!(at("vanilla", 4096), CHECK_SEQ);
    // 300 clusters need N >= 300: the first doubling that allows them.
    assert_eq!(at("routing:clusters=300", 4096), 512);
    assert_eq!(at("longformer:global=[0,1000]", 2048), 1024);
}

#[test]
fn requests_without_the_check_fields_still_parse() {
    let c = case("vanilla", 32, Dtype::F32, Scope::Attention, false).unwrap();
    let req = Request {
        case: c,
        timing: Default::default(),
        threads: 1,
        check: true,
        check_only: false,
    };
    let mut json = serde_json::to_value(&req).unwrap();
    let obj = json.as_object_mut().unwrap();
    obj.remove("check");
    obj.remove("check_only");
    let old: Request = serde_json::from_value(json).unwrap();
    assert!(!old.check && !old.check_only);
}

#[test]
fn a_case_that_fails_the_check_is_an_error_and_not_timed() {
    let out = tmp("check-run");
    let o = run_quick(
        &[
            "--variants",
            "vanilla,local:window=8",
            "--seq",
            "32",
            "--dtype",
            "bf16",
            "--check",
            "on",
        ],
        &out,
        &[("XARENA_FAULT", "nan@local")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_results(&out).unwrap().records;
    assert_eq!(records.len(), 2);
    let local = records.iter().find(|r| r.key.variant == "local").unwrap();
    assert_eq!(local.status, Status::Error);
    let message = local.message.as_deref().unwrap();
    assert!(message.starts_with("device check failed"), "{message}");
    assert!(message.contains("the output"), "{message}");
    assert!(local.latency.is_none() && local.memory.is_none());
    let check = local.check.as_ref().unwrap();
    assert!(!check.finite);
    assert_eq!(check.seq_len, 32);
    // The other case is checked, then timed.
    let vanilla = records.iter().find(|r| r.key.variant == "vanilla").unwrap();
    assert_eq!(vanilla.status, Status::Ok, "{:?}", vanilla.message);
    assert!(vanilla.latency.is_some());
    let check = vanilla.check.as_ref().unwrap();
    assert!(check.finite);
    assert!(check.max_rel_err.unwrap() <= check.tolerance.unwrap());

    // auto, the default, checks on CUDA only: a CPU run neither checks nor fails.
    let out = tmp("check-auto");
    let o = run_quick(
        &["--variants", "local:window=8", "--seq", "32"],
        &out,
        &[("XARENA_FAULT", "nan@local")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_results(&out).unwrap().records;
    assert_eq!(records[0].status, Status::Ok);
    assert!(records[0].check.is_none());
}

#[test]
fn xarena_check_prints_the_table_and_fails_on_a_failed_check() {
    let check = |env: Option<&str>, out: &Path| {
        let mut c = xarena();
        c.args([
            "check",
            "--device",
            "cpu",
            "--variants",
            "vanilla,local:window=8",
            "--dtype",
            "bf16,f16",
            "--seq",
            "32",
            "--heads",
            "2",
            "--head-dim",
            "8",
            "--threads",
            "1",
            "--reuse-worker",
            "--out",
        ])
        .arg(out);
        if let Some(fault) = env {
            c.env("XARENA_FAULT", fault);
        }
        c.output().unwrap()
    };
    let lines = |path: &Path| -> Vec<CheckLine> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let dir = tmp("check-cmd");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("check.jsonl");
    let o = check(None, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("error vs CPU f32"), "{table}");
    let got = lines(&out);
    assert_eq!(got.len(), 4);
    for l in &got {
        assert_eq!(l.status, Status::Ok, "{l:?}");
        assert_eq!(l.verdict(), "ok");
        assert!(l.check.as_ref().unwrap().finite);
    }

    let o = check(Some("nan@local"), &out);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("2 of 4 check(s) failed"), "{err}");
    assert!(stdout(&o).contains("not finite"), "{}", stdout(&o));
    let got = lines(&out);
    assert_eq!(got.len(), 4, "the file is replaced, not appended to");
    for l in &got {
        let failed = l.key.variant == "local";
        assert_eq!(l.status == Status::Error, failed, "{l:?}");
        if failed {
            assert_eq!(l.verdict(), "not finite");
            assert!(l
                .message
                .as_deref()
                .unwrap()
                .starts_with("device check failed"));
        }
    }

    // Bad input: a clear error, non-zero exit.
    for (args, needle) in [
        (vec!["--variants", "nope", "--device", "cpu"], "nope"),
        (
            vec!["--variants", "vanilla", "--device", "cpu", "--seq", "0"],
            "seq",
        ),
        (
            vec!["--variants", "vanilla", "--device", "cpu", "--timeout", "0"],
            "--timeout",
        ),
        (
            vec!["--variants", "vanilla", "--device", "tpu"],
            "expected cpu, cuda or cuda:N",
        ),
    ] {
        let o = xarena().arg("check").args(&args).output().unwrap();
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}
