//! The KV-cache track's commands end to end (`xarena kv train | evolve | bench | report`)
//! on tiny models the tests write: a checkpoint that loads, an evolution that resumes to
//! the identical state, a benchmark that records every case and refuses bad input
//! without touching its records, the report, and a NAMM evolved on one model running
//! unchanged on another of different width, depth and heads.

mod common;

use std::path::{Path, PathBuf};

use common::{stderr, stdout, tmp, xarena};
use tch::{Device, Kind, Tensor};
use xarena_datasets::lm_tasks::{LmTask, LmTaskConfig};
use xarena_kvcache::commands::evolve::{
    draw_prompts, read_state, EvolvedNamm, PromptSampling, StageStart,
};
use xarena_kvcache::commands::model_dir::load_model;
use xarena_kvcache::model::llama::write_safetensors;
use xarena_kvcache::policy::namm::Selection;
use xarena_reports::kv::{read_kv, KvRecord};

fn run(args: &[&str]) -> std::process::Output {
    xarena().args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

fn fails(args: &[&str]) -> String {
    let o = run(args);
    assert!(!o.status.success(), "{args:?} should fail: {}", stdout(&o));
    stderr(&o)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A briefly trained `tiny` model (2 layers, hidden 64, 2 heads, 1 KV head), once per
/// test process: short prompts teach it the one-digit passkey within a few seconds
/// (recall and MQAR stay near chance), so the full cache scores above zero there.
fn trained() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let out = tmp("kv-model");
        ok(&[
            "kv",
            "train",
            "--config",
            "tiny",
            "--passkey-digits",
            "1",
            "--context",
            "48",
            "--min-context",
            "19",
            "--steps",
            "240",
            "--eval-examples",
            "10",
            "--log-every",
            "60",
            "--threads",
            "1",
            "--out",
            s(&out),
        ]);
        out
    })
    .clone()
}

/// A random Llama checkpoint as Hugging Face writes one: bf16 weights, tied embeddings,
/// config keys this suite does not use; 3 layers, hidden 48, 3 heads, 3 KV heads (a
/// different width, depth and head count from `tiny`).
fn hf_checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = i64::from(LmTaskConfig::default().vocab_size()) + 5;
    let (d, f, layers) = (48i64, 128i64, 3);
    let config = format!(
        r#"{{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": {d},
  "initializer_range": 0.02,
  "intermediate_size": {f},
  "max_position_embeddings": 512,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 3,
  "num_hidden_layers": {layers},
  "num_key_value_heads": 3,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.46.0",
  "use_cache": true,
  "vocab_size": {vocab}
}}"#
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    tch::manual_seed(11);
    let w = |shape: &[i64]| {
        (Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.2).to_kind(Kind::BFloat16)
    };
    let ones = |n: i64| Tensor::ones([n], (Kind::BFloat16, Device::Cpu));
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), w(&[vocab, d])),
        ("model.norm.weight".to_string(), ones(d)),
    ];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", [d, d]),
            ("self_attn.k_proj", [d, d]),
            ("self_attn.v_proj", [d, d]),
            ("self_attn.o_proj", [d, d]),
            ("mlp.gate_proj", [f, d]),
            ("mlp.up_proj", [f, d]),
            ("mlp.down_proj", [d, f]),
        ] {
            t.push((format!("{p}.{name}.weight"), w(&shape)));
        }
        t.push((format!("{p}.input_layernorm.weight"), ones(d)));
        t.push((format!("{p}.post_attention_layernorm.weight"), ones(d)));
    }
    write_safetensors(dir.join("model.safetensors"), &t).unwrap();
}

/// A NAMM evolved on the trained model (2 generations of 4), once per test process.
fn evolved() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let out = tmp("kv-evolved");
        evolve(&out, "2", &[]);
        out
    })
    .clone()
}

const EVOLVE: &[&str] = &[
    "--stages",
    "passkey;passkey,recall",
    "--population",
    "4",
    "--examples",
    "2",
    "--update-every",
    "16",
    "--chunk",
    "16",
    "--namm-hidden",
    "4",
    "--seed",
    "3",
    "--threads",
    "1",
];

fn evolve(out: &Path, generations: &str, extra: &[&str]) -> String {
    let model = trained();
    let mut args = vec!["kv", "evolve", "--model", s(&model), "--out", s(out)];
    args.extend(EVOLVE);
    args.extend(["--generations", generations]);
    args.extend(extra);
    let o = run(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stderr(&o)
}

#[test]
fn kv_train_writes_a_loadable_checkpoint_and_refuses_bad_input() {
    let dir = trained();
    for f in ["config.json", "model.safetensors", "train.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let m = load_model(&dir, Device::Cpu).unwrap();
    let info = m.train.as_ref().unwrap();
    assert_eq!((m.cfg.num_hidden_layers, m.cfg.hidden_size), (2, 64));
    assert_eq!(m.cfg.vocab_size, i64::from(info.task_config.vocab_size()));
    assert_eq!(
        (
            info.context,
            info.eval_context,
            info.min_context,
            info.steps
        ),
        (48, 48, 19, 240)
    );
    assert!(info.held_out["passkey"] >= 0.5, "{:?}", info.held_out);
    let names: Vec<&str> = info.held_out.keys().map(String::as_str).collect();
    assert_eq!(names, ["mqar", "passkey", "recall"]);
    assert!(info.held_out.values().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(m.parameters, info.parameters);
    // No temporary directory is left beside it.
    let parent = dir.parent().unwrap();
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    assert!(!std::fs::read_dir(parent).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(&format!(".{name}.partial"))));

    // Bad input: nothing written.
    let e = fails(&["kv", "train", "--out", s(&dir), "--steps", "1"]);
    assert!(e.contains("not empty"), "{e}");
    let fresh = tmp("kv-train-bad");
    let e = fails(&[
        "kv",
        "train",
        "--tasks",
        "passkey,recal",
        "--out",
        s(&fresh),
    ]);
    assert!(e.contains("recal"), "{e}");
    let e = fails(&["kv", "train", "--context", "10", "--out", s(&fresh)]);
    assert!(e.contains("needs at least"), "{e}");
    let e = fails(&["kv", "train", "--config", "huge", "--out", s(&fresh)]);
    assert!(e.contains("unknown model preset `huge`"), "{e}");
    let e = fails(&["kv", "train", "--heads", "3", "--out", s(&fresh)]);
    assert!(e.contains("num_attention_heads"), "{e}");
    assert!(!fresh.exists());
}

/// `evolve.json` without the timings, which differ from run to run.
fn comparable(out: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("evolve.json")).unwrap()).unwrap();
    for h in v["history"].as_array_mut().unwrap() {
        h.as_object_mut().unwrap().remove("seconds");
    }
    v
}

#[test]
fn evolve_checkpoints_every_generation_and_resumes_to_the_identical_state() {
    let straight = evolved();
    let state = read_state(&straight).unwrap();
    // Two stages of two generations: the second adds a task and starts at the first's
    // mean.
    assert!(state.finished);
    assert_eq!(state.history.len(), 4);
    let stages: Vec<usize> = state.history.iter().map(|h| h.stage).collect();
    assert_eq!(stages, [0, 0, 1, 1]);
    assert_eq!(state.history[0].mean_ratios.len(), 1);
    assert!(state.history[2].mean_ratios.contains_key("passkey"));
    assert!(state.stats.frozen && state.stats.count > 0);
    // The defaults are the reference's, and recorded: the second stage continued the
    // first's CMA-ES (4 generations in one state), prompts drawn anew every generation
    // (seed 3 + the generation), the full cache scored on each generation's prompts.
    assert_eq!(
        state.cmaes.generation(),
        4,
        "one CMA-ES through both stages"
    );
    assert_eq!(state.setup.stage_start, StageStart::Continue);
    assert_eq!(state.setup.prompts, PromptSampling::Resample);
    assert_eq!(state.setup.namm.selection, Selection::SharedCount);
    let seeds: Vec<Option<u64>> = state.history.iter().map(|h| h.prompt_seed).collect();
    assert_eq!(seeds, [Some(3), Some(4), Some(5), Some(6)]);
    assert!(state.history.iter().all(|h| !h.full_scores.is_empty()));
    let m = load_model(&trained(), Device::Cpu).unwrap();
    let cfg = &m.train.as_ref().unwrap().task_config;
    let drawn: Vec<_> = [3, 4]
        .iter()
        .map(|&seed| {
            let p = draw_prompts(&[LmTask::Passkey], cfg, state.setup.context, 2, seed).unwrap();
            format!("{:?}", p[&LmTask::Passkey])
        })
        .collect();
    assert_ne!(drawn[0], drawn[1], "other prompts in the next generation");
    assert!(state.best.as_ref().unwrap().fitness >= state.history[0].fitness_min);
    let namm = EvolvedNamm::read(&straight).unwrap();
    let mean: Vec<f32> = state.cmaes.mean().iter().map(|&m| m as f32).collect();
    assert_eq!(namm.params, mean, "namm.json holds the mean");
    assert_eq!(namm.generations, 4);
    assert_eq!(namm.config.hidden_dim, 4);
    assert_eq!(
        (namm.stage_start, namm.prompts, namm.config.selection),
        (
            StageStart::Continue,
            PromptSampling::Resample,
            Selection::SharedCount
        )
    );
    let files: Vec<String> = std::fs::read_dir(&straight)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|f| f.ends_with(".f64"))
        .collect();
    assert_eq!(files, ["cmaes-00004.f64"], "older matrices removed");

    // Stopped after one generation (--max-minutes), then resumed to the end: the same
    // state, bit for bit.
    let split = tmp("kv-evolve-split");
    let log = evolve(&split, "2", &["--max-minutes", "0.000001"]);
    assert!(log.contains("stopped by --max-minutes"), "{log}");
    let after_one = read_state(&split).unwrap();
    assert_eq!((after_one.history.len(), after_one.stage), (1, 0));
    let log = evolve(&split, "2", &["--resume"]);
    assert!(log.contains("resuming at stage 1 generation 1"), "{log}");
    assert_eq!(comparable(&split), comparable(&straight));
    assert_eq!(
        read_state(&split).unwrap().cmaes,
        state.cmaes,
        "C and B too"
    );
    assert_eq!(EvolvedNamm::read(&split).unwrap(), namm);

    // A resume with other settings is refused, naming them; the checkpoint is kept.
    let model = trained();
    let mut args = vec!["kv", "evolve", "--model", s(&model), "--out", s(&split)];
    args.extend(EVOLVE);
    args.extend(["--generations", "2", "--resume", "--sigma", "0.1"]);
    let e = fails(&args);
    assert!(e.contains("other settings") && e.contains("sigma0"), "{e}");
    assert_eq!(comparable(&split), comparable(&straight));
    // Without --resume an existing run is refused.
    let e = fails(&[
        "kv",
        "evolve",
        "--model",
        s(&model),
        "--tasks",
        "passkey",
        "--out",
        s(&split),
    ]);
    assert!(e.contains("not empty"), "{e}");
    std::fs::remove_dir_all(&split).unwrap();

    // xarena's earlier behaviours, by name: a fresh CMA-ES per stage, fixed prompts, per
    // head selection; recorded as such.
    let old = tmp("kv-evolve-old");
    evolve(
        &old,
        "1",
        &[
            "--stage-start",
            "restart",
            "--prompts",
            "fixed",
            "--namm-selection",
            "per-head",
        ],
    );
    let state = read_state(&old).unwrap();
    assert_eq!(state.history.len(), 2);
    assert_eq!(state.cmaes.generation(), 1, "the second stage's own CMA-ES");
    assert_eq!(state.setup.stage_start, StageStart::Restart);
    assert_eq!(state.setup.prompts, PromptSampling::Fixed);
    assert!(state.history.iter().all(|h| h.prompt_seed.is_none()));
    let namm = EvolvedNamm::read(&old).unwrap();
    assert_eq!(namm.config.selection, Selection::PerHead);
    assert_eq!(
        namm.policy().unwrap().config().selection,
        Selection::PerHead
    );
    std::fs::remove_dir_all(&old).unwrap();
}

const POLICIES: &str = "full,window,streaming-llm,h2o,l2,tova,namm";

fn bench_args<'a>(model: &'a Path, namm: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "kv",
        "bench",
        "--model",
        s(model),
        "--policies",
        POLICIES,
        "--namm",
        s(namm),
        "--ratios",
        "0.5,0.75",
        "--contexts",
        "40,48",
        "--tasks",
        "passkey,recall",
        "--examples",
        "2",
        "--chunk",
        "16",
        "--threads",
        "1",
        "--out",
        s(out),
    ]
}

fn records(out: &Path) -> Vec<KvRecord> {
    let (r, cut) = read_kv(&out.join("kv.jsonl")).unwrap();
    assert!(!cut);
    r
}

#[test]
fn bench_records_every_case_and_refuses_bad_input_without_touching_them() {
    let model = trained();
    let namm = evolved();
    let out = tmp("kv-bench");
    let table = ok(&bench_args(&model, &namm, &out));
    assert!(table.contains("Frontier"), "{table}");
    let rs = records(&out);
    // 2 contexts x 2 tasks x (full + 5 policies x 2 ratios + namm).
    assert_eq!(rs.len(), 48);
    let ids: std::collections::BTreeSet<&str> = rs.iter().map(|r| r.case_id.as_str()).collect();
    assert_eq!(ids.len(), 48, "case ids are unique");
    for r in &rs {
        let full = rs
            .iter()
            .find(|f| f.policy == "full" && f.context == r.context && f.task == r.task)
            .unwrap();
        assert_eq!(r.full_score, full.score, "{}", r.case_id);
        match r.normalized_score {
            Some(n) => assert!((n - r.score / r.full_score).abs() < 1e-12),
            None => assert_eq!(r.full_score, 0.0),
        }
        assert_eq!((r.examples, r.chunk, r.schema), (2, 16, 1));
        for f in [
            r.mean_retained_fraction,
            r.final_retained_fraction,
            r.peak_retained_fraction,
        ] {
            assert!((0.0..=1.0).contains(&f), "{}: {f}", r.case_id);
        }
        assert!(r.peak_kv_bytes > 0 && r.peak_kv_bytes <= full.peak_kv_bytes);
        assert!(r.prefill_seconds > 0.0 && r.decode_seconds_per_token > 0.0);
        assert!(r.decode_policy_seconds_per_token <= r.decode_seconds_per_token);
        match (r.policy.as_str(), r.ratio) {
            ("full", None) => {
                assert_eq!(r.final_retained_fraction, 1.0);
                assert_eq!(r.normalized_score.unwrap_or(1.0), 1.0);
            }
            ("namm", None) => {
                assert!(r.namm.as_ref().unwrap().contains("evolved on"));
                assert!(r.policy_label.starts_with("namm:update_every=16"));
            }
            (_, Some(ratio)) => {
                let budget = ((1.0 - ratio) * r.context as f64).round() as usize;
                assert_eq!(r.budget, Some(budget));
                assert!(r.policy_label.contains(&format!("budget={budget}")));
                // At the end the cache holds the budget of the tokens seen (prompt and
                // answer).
                // One-digit passkey, one recall value.
                let answer = 1;
                let expected = budget as f64 / (r.context + answer) as f64;
                assert!(
                    (r.final_retained_fraction - expected).abs() < 1e-9,
                    "{}: {} vs {expected}",
                    r.case_id,
                    r.final_retained_fraction
                );
            }
            other => panic!("unexpected case {other:?}"),
        }
    }

    // Bad input: a clear error, a non-zero exit, the records untouched.
    let before = std::fs::read(out.join("kv.jsonl")).unwrap();
    let e = fails(&bench_args(&model, &namm, &out));
    assert!(e.contains("not empty"), "{e}");
    let with = |from: &str, to: &str| -> Vec<String> {
        bench_args(&model, &namm, &out)
            .into_iter()
            .map(|a| {
                if a == from {
                    to.to_string()
                } else {
                    a.to_string()
                }
            })
            .chain(["--resume".to_string()])
            .collect()
    };
    for (from, to, needle) in [
        (POLICIES, "full,h2o,lru", "unknown cache policy `lru`"),
        ("0.5,0.75", "0.5,1.0", "not a fraction of the context"),
        ("0.5,0.75", "0.5,0.95", "budget must be at least 5"),
        ("passkey,recall", "passkey,copy", "unknown task `copy`"),
    ] {
        let args = with(from, to);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = fails(&args);
        assert!(e.contains(needle), "{to}: {e}");
    }
    // A context too short for a task (at ratio 0.5 only: at 0.75 its budget, kvpress's
    // int(0.25 x 18) = 4, is refused first, below streaming-llm's 4 sinks + 1).
    let args: Vec<String> = with("40,48", "18,48")
        .into_iter()
        .map(|a| if a == "0.5,0.75" { "0.5".into() } else { a })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = fails(&args);
    assert!(e.contains("cannot hold task recall"), "{e}");
    let e = fails(&[
        "kv",
        "bench",
        "--model",
        s(&model),
        "--policies",
        "full,namm",
        "--out",
        s(&out),
        "--resume",
    ]);
    assert!(e.contains("needs --namm"), "{e}");
    let broken = tmp("kv-broken-model");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(model.join("config.json"), broken.join("config.json")).unwrap();
    let e = fails(&[
        "kv",
        "bench",
        "--model",
        s(&broken),
        "--policies",
        "full",
        "--out",
        s(&out),
        "--resume",
    ]);
    assert!(e.contains("model.safetensors"), "{e}");
    let e = fails(&[
        "kv",
        "bench",
        "--model",
        s(&hf_dir()),
        "--policies",
        "full",
        "--out",
        s(&out),
        "--resume",
    ]);
    assert!(e.contains("another model"), "{e}");
    assert_eq!(std::fs::read(out.join("kv.jsonl")).unwrap(), before);

    // Resuming runs nothing new; a last line cut short by a kill is run again.
    let mut args = bench_args(&model, &namm, &out);
    args.push("--resume");
    ok(&args);
    assert_eq!(std::fs::read(out.join("kv.jsonl")).unwrap(), before);
    let text = String::from_utf8(before.clone()).unwrap();
    let last = text.trim_end().rsplit('\n').next().unwrap();
    let cut = &text[..text.len() - last.len() / 2 - 1];
    std::fs::write(out.join("kv.jsonl"), cut).unwrap();
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = records(&out);
    assert_eq!(again.len(), 48);
    let old: KvRecord = serde_json::from_str(last).unwrap();
    let new = again.iter().find(|r| r.case_id == old.case_id).unwrap();
    assert_eq!((new.score, new.budget), (old.score, old.budget));
    for d in [&out, &broken] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

fn hf_dir() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = tmp("kv-hf");
        hf_checkpoint(&dir);
        dir
    })
    .clone()
}

#[test]
fn a_hugging_face_llama_checkpoint_loads_and_runs_kv_bench() {
    let dir = hf_dir();
    let m = load_model(&dir, Device::Cpu).unwrap();
    assert!(m.train.is_none());
    assert_eq!((m.cfg.num_hidden_layers, m.cfg.num_key_value_heads), (3, 3));
    assert!(m.cfg.tie_word_embeddings);
    let out = tmp("kv-bench-hf");
    ok(&[
        "kv",
        "bench",
        "--model",
        s(&dir),
        "--policies",
        "full,h2o,l2",
        "--ratios",
        "0.5",
        "--contexts",
        "40",
        "--tasks",
        "mqar",
        "--examples",
        "2",
        "--threads",
        "1",
        "--out",
        s(&out),
    ]);
    let rs = records(&out);
    assert_eq!(rs.len(), 3);
    assert!(rs
        .iter()
        .all(|r| r.model.ends_with("kv-hf") && r.model_fingerprint == m.fingerprint));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bench_refuses_a_context_past_the_models_positions_before_writing() {
    // The checkpoint's max_position_embeddings is 512 (issue 14, item 7).
    let out = tmp("kv-bench-positions");
    let err = fails(&[
        "kv",
        "bench",
        "--model",
        s(&hf_dir()),
        "--policies",
        "full",
        "--contexts",
        "40,600",
        "--tasks",
        "mqar",
        "--threads",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(
        err.contains("600") && err.contains("max_position_embeddings (512)"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_namm_evolved_on_one_model_runs_unchanged_on_another() {
    // Evolved on `tiny` (2 layers, hidden 64, 2 heads, 1 KV head); run on a model of 3
    // layers, hidden 48, 3 heads and 3 KV heads.
    let namm = evolved();
    let other = hf_dir();
    let out = tmp("kv-transfer");
    ok(&[
        "kv",
        "bench",
        "--model",
        s(&other),
        "--policies",
        "full,namm",
        "--namm",
        s(&namm),
        "--contexts",
        "48",
        "--tasks",
        "passkey",
        "--examples",
        "2",
        "--chunk",
        "16",
        "--threads",
        "1",
        "--out",
        s(&out),
    ]);
    let rs = records(&out);
    assert_eq!(rs.len(), 2);
    let n = rs.iter().find(|r| r.policy == "namm").unwrap();
    let label = n.namm.as_ref().unwrap();
    assert!(
        label.contains("evolved on") && label.contains("kv-model)"),
        "{label}"
    );
    assert!(n.model.ends_with("kv-hf"));
    // It decided something: the zero-mean NAMM keeps all, an evolved one need not.
    assert!(n.mean_retained_fraction <= 1.0 && n.final_retained_fraction > 0.0);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_report_renders_tables_and_the_plot() {
    let model = trained();
    let out = tmp("kv-report-run");
    ok(&[
        "kv",
        "bench",
        "--model",
        s(&model),
        "--policies",
        "full,window,h2o,l2",
        "--ratios",
        "0.5,0.875",
        "--contexts",
        "40",
        "--tasks",
        "passkey,mqar",
        "--examples",
        "2",
        "--threads",
        "1",
        "--out",
        s(&out),
    ]);
    let md = ok(&["kv", "report", s(&out), "--format", "md"]);
    for needle in [
        "kv-model, context 40 tokens, 2 prompts per task",
        "| policy",
        "mean (norm.)",
        "cache kept (mean)",
        "h2o @ 0.875",
        "Frontier",
        "ratio 0.875",
        "decode / token",
    ] {
        assert!(md.contains(needle), "{needle} missing:\n{md}");
    }
    let site = tmp("kv-report-site");
    ok(&["kv", "report", s(&out), "--out", s(&site)]);
    assert!(std::fs::read_to_string(site.join("report.md"))
        .unwrap()
        .contains("Frontier"));
    let plot = format!(
        "frontier-{}-40.svg",
        model.file_name().unwrap().to_string_lossy()
    );
    let svg = std::fs::read_to_string(site.join(plot)).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("score vs cache kept"));
    // The output directory is not overwritten without --force.
    let e = fails(&["kv", "report", s(&out), "--out", s(&site)]);
    assert!(e.contains("--force"), "{e}");
    ok(&["kv", "report", s(&out), "--out", s(&site), "--force"]);
    let e = fails(&["kv", "report", s(&tmp("kv-nothing"))]);
    assert!(e.contains("kv.jsonl") || e.contains("No such file"), "{e}");
    for d in [&out, &site] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_namm_scoring_every_token_positive_decodes_exactly_as_the_full_cache() {
    use xarena_datasets::lm_tasks::{LmSplit, LmTask};
    use xarena_kvcache::eval::decode;
    use xarena_kvcache::policy::namm::{param_layout, Namm, NammConfig};
    use xarena_kvcache::policy::Full;

    tch::set_num_threads(1);
    let m = load_model(&trained(), Device::Cpu).unwrap();
    let cfg = NammConfig {
        update_every: 16,
        hidden_dim: 8,
        ..NammConfig::default()
    };
    // Every weight 0 and the score's bias 1: every token scores 1, none is evicted.
    let layout = param_layout(&cfg);
    let mut params = vec![0f32; Namm::num_params(&cfg)];
    let bias = layout.iter().find(|b| b.name == "score.bias").unwrap();
    params[bias.offset] = 1.0;
    let tasks = m.task_config();
    for task in [LmTask::Passkey, LmTask::Mqar] {
        for ex in task.examples(&tasks, 48, 3, 5, LmSplit::Test).unwrap() {
            let namm = Namm::new(cfg.clone(), &params).unwrap();
            let (a, _) = decode(&m.lm, Box::new(namm), &ex, 16);
            let (b, _) = decode(&m.lm, Box::new(Full), &ex, 16);
            assert_eq!(a.produced, b.produced);
            assert_eq!(a.score, b.score);
            assert_eq!(a.stats.retained_fraction, 1.0);
            assert_eq!(a.stats.peak_kv_bytes, b.stats.peak_kv_bytes);
            assert_eq!(a.stats.kv_bytes, b.stats.kv_bytes);
        }
    }
}

#[test]
fn bench_and_evolve_refuse_a_directory_another_xarena_holds_and_bench_resumes_a_record_without_its_newline(
) {
    let dir = hf_dir();
    let out = tmp("kv-bench-held");
    let args = [
        "kv",
        "bench",
        "--model",
        s(&dir),
        "--policies",
        "full,h2o",
        "--ratios",
        "0.5",
        "--contexts",
        "40",
        "--tasks",
        "mqar",
        "--examples",
        "2",
        "--threads",
        "1",
        "--out",
        s(&out),
    ];
    let lock = xarena_schema::lock::DirLock::acquire(&out, "--out").unwrap();
    let e = fails(&args);
    assert!(
        e.contains(&format!(
            "{} is in use by another xarena (pid {}); wait for it or name another --out",
            out.display(),
            std::process::id()
        )),
        "{e}"
    );
    assert!(!out.join("kv-run.json").exists());
    // So is `kv evolve`.
    let mut evolve = vec!["kv", "evolve", "--model", s(&dir), "--out", s(&out)];
    evolve.extend(EVOLVE);
    evolve.extend(["--context", "48", "--generations", "1"]);
    let e = fails(&evolve);
    assert!(e.contains("is in use by another xarena"), "{e}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    drop(lock);
    ok(&args);

    // A kill after the last record but before its newline: resume adds the newline.
    let path = out.join("kv.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(&path, first).unwrap();
    let mut resume = args.to_vec();
    resume.push("--resume");
    ok(&resume);
    assert_eq!(records(&out).len(), 2);
    std::fs::remove_dir_all(&out).unwrap();
}

/// `kv convert`'s refusals name the file and what is wrong (a converted tiny GGUF is in
/// kvcache/tests/gguf.rs); the hidden `kv logits` writes the uncached logits that
/// comparisons/smollm2_logits.py compares, equal to the model's forward.
#[test]
fn kv_convert_refuses_bad_input_by_name_and_kv_logits_writes_the_forward() {
    let dir = tmp("kv-convert");
    std::fs::create_dir_all(&dir).unwrap();
    let not_gguf = dir.join("model.gguf");
    std::fs::write(&not_gguf, b"PK\x03\x04 not a gguf file at all, a zip").unwrap();
    let e = fails(&["kv", "convert", s(&not_gguf), s(&dir.join("out"))]);
    assert!(e.contains("model.gguf") && e.contains("bad magic"), "{e}");
    let mut v1 = b"GGUF".to_vec();
    v1.extend(1u32.to_le_bytes());
    v1.extend([0u8; 16]);
    std::fs::write(&not_gguf, &v1).unwrap();
    let e = fails(&["kv", "convert", s(&not_gguf), s(&dir.join("out"))]);
    assert!(e.contains("GGUF version 1 is not supported"), "{e}");
    let e = fails(&[
        "kv",
        "convert",
        s(&dir.join("absent.gguf")),
        s(&dir.join("out")),
    ]);
    assert!(e.contains("absent.gguf"), "{e}");
    // A non-empty OUT is refused before the file is read.
    let e = fails(&["kv", "convert", s(&not_gguf), s(&dir)]);
    assert!(e.contains("not empty"), "{e}");
    assert!(!dir.join("out").exists());

    let model = hf_dir();
    let out = dir.join("logits.safetensors");
    ok(&[
        "kv",
        "logits",
        "--model",
        s(&model),
        "--tokens",
        "3,1,4,1,5",
        "--out",
        s(&out),
    ]);
    let got = Tensor::read_safetensors(&out).unwrap();
    assert_eq!(got.len(), 1);
    let (name, logits) = &got[0];
    assert_eq!(name, "logits");
    let m = load_model(&model, Device::Cpu).unwrap();
    let want =
        m.lm.forward(&Tensor::from_slice(&[3i64, 1, 4, 1, 5]).unsqueeze(0))
            .squeeze_dim(0);
    assert_eq!(logits.size(), want.size());
    // Thread counts may differ between the two processes: equal up to f32 rounding.
    let diff = (logits - want).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "kv logits differs from the forward by {diff}");
    let e = fails(&[
        "kv",
        "logits",
        "--model",
        s(&model),
        "--tokens",
        "999999",
        "--out",
        s(&out),
    ]);
    assert!(e.contains("999999"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_under_kvpress_protocol_records_it_and_reports_it_apart() {
    let dir = hf_dir();
    let (chunked, kvpress) = (tmp("kv-proto-chunked"), tmp("kv-proto-kvpress"));
    let bench = |protocol: &'static str, out: &Path, extra: &[&'static str]| -> Vec<String> {
        [
            "kv",
            "bench",
            "--model",
            s(&dir),
            "--policies",
            "full,streaming-llm",
            "--ratios",
            "0.5",
            "--contexts",
            "40",
            "--tasks",
            "mqar",
            "--examples",
            "2",
            "--threads",
            "1",
            "--protocol",
            protocol,
            "--out",
            s(out),
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    for (out, protocol) in [(&chunked, "chunked"), (&kvpress, "kvpress")] {
        let args = bench(protocol, out, &[]);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // Chunked records are as before (no field); kvpress ones say so.
    assert!(records(&chunked).iter().all(|r| r.protocol.is_none()));
    let rs = records(&kvpress);
    assert!(rs.iter().all(|r| r.protocol.as_deref() == Some("kvpress")));
    // The cache grows while decoding: at the end it holds more than the budget.
    let s_llm = rs.iter().find(|r| r.policy == "streaming-llm").unwrap();
    let budget = s_llm.budget.unwrap() as f64 / s_llm.context as f64;
    assert!(s_llm.final_retained_fraction > budget, "{s_llm:?}");
    // One report of both: two tables, the protocols apart.
    let md = ok(&["kv", "report", s(&chunked), s(&kvpress), "--format", "md"]);
    assert!(
        md.contains("(kvpress protocol), context 40 tokens, 2 prompts per task"),
        "{md}"
    );
    assert_eq!(
        md.matches("context 40 tokens, 2 prompts").count(),
        2,
        "{md}"
    );
    // A resume under the other protocol is refused.
    let args = bench("chunked", &kvpress, &["--resume"]);
    let e = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("--resume"), "{e}");
    for d in [&chunked, &kvpress] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn namm_files_from_before_the_selection_setting_read_as_evolved() {
    // docs/results/kv-cpu's NAMMs (schema 1) were evolved per head, restarting the
    // CMA-ES at each stage, on fixed prompts: they are read as such.
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/results/kv-cpu");
    for dir in ["namm", "namm-paper"] {
        let n = EvolvedNamm::read(&docs.join(dir)).unwrap();
        assert_eq!(n.schema, 1);
        assert_eq!(
            (n.config.selection, n.stage_start, n.prompts),
            (
                Selection::PerHead,
                StageStart::Restart,
                PromptSampling::Fixed
            ),
            "{dir}"
        );
        let p = n.policy().unwrap();
        assert!(xarena_kvcache::CachePolicy::describe(&p).ends_with(",selection=per-head"));
    }
}

/// `kv policies` prints the one policy table, every row in its order.
#[test]
fn kv_policies_prints_the_policy_table() {
    let o = xarena()
        .args(["kv", "policies", "--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    let table: Vec<&str> = xarena_kvcache::POLICIES.iter().map(|p| p.name).collect();
    assert_eq!(names, table);
    assert!(rows
        .iter()
        .all(|r| r["keeps"].as_str().is_some_and(|k| !k.is_empty())));
    let md = xarena()
        .args(["kv", "policies", "--format", "md"])
        .output()
        .unwrap();
    let md = String::from_utf8(md.stdout).unwrap();
    assert!(md.starts_with("| policy") && md.contains("| namm"), "{md}");
}
