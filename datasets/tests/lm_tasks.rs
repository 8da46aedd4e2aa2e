//! The decoding tasks of the KV-cache track: seeded and deterministic, answers that follow
//! from the prompt alone, and settings that do not fit refused with the reason.

use xarena_datasets::lm_tasks::{
    LmExample, LmSplit, LmTask, LmTaskConfig, ASK, BOS, DIGIT0, KEY, QUERY,
};

const ALL: [LmTask; 3] = [LmTask::Passkey, LmTask::Recall, LmTask::Mqar];

#[test]
fn a_seed_gives_the_same_examples_and_streams_differ() {
    let cfg = LmTaskConfig::default();
    for task in ALL {
        let a = task.examples(&cfg, 128, 20, 7, LmSplit::Valid).unwrap();
        assert_eq!(a, task.examples(&cfg, 128, 20, 7, LmSplit::Valid).unwrap());
        assert_ne!(a, task.examples(&cfg, 128, 20, 8, LmSplit::Valid).unwrap());
        assert_ne!(a, task.examples(&cfg, 128, 20, 7, LmSplit::Test).unwrap());
        // The first examples do not depend on how many are asked for.
        assert_eq!(
            a[..5],
            task.examples(&cfg, 128, 5, 7, LmSplit::Valid).unwrap()[..]
        );
    }
    // Tasks draw from streams of their own.
    let p = LmTask::Recall
        .examples(&cfg, 64, 3, 1, LmSplit::Test)
        .unwrap();
    let m = LmTask::Mqar
        .examples(&cfg, 64, 3, 1, LmSplit::Test)
        .unwrap();
    assert_ne!(p[0].prompt, m[0].prompt);
}

/// An independent reading of a passkey prompt: the digits after the one KEY.
fn read_passkey(x: &LmExample, digits: usize) -> Vec<u32> {
    let at = x.prompt.iter().position(|&t| t == KEY).unwrap();
    assert_eq!(x.prompt.iter().filter(|&&t| t == KEY).count(), 1);
    x.prompt[at + 1..at + 1 + digits].to_vec()
}

#[test]
fn answers_follow_from_the_prompt() {
    let cfg = LmTaskConfig {
        passkey_digits: 3,
        ..LmTaskConfig::default()
    };
    for task in ALL {
        for context in [task.min_context(&cfg), 40, 300] {
            for x in task
                .examples(&cfg, context, 40, 11, LmSplit::Train)
                .unwrap()
            {
                assert_eq!(x.prompt.len(), context, "{task}");
                assert_eq!(x.prompt[0], BOS);
                assert_eq!(task.solve(&cfg, &x).unwrap(), x.answer, "{task}: {x:?}");
                match task {
                    LmTask::Passkey => {
                        assert_eq!(*x.prompt.last().unwrap(), ASK);
                        assert_eq!(read_passkey(&x, 3), x.answer);
                        assert_eq!(x.given, vec![false; 3]);
                    }
                    LmTask::Recall | LmTask::Mqar => {
                        assert_eq!(x.prompt[context - 2], QUERY);
                        // Each scored value is the token after the last key before it.
                        let mut key = x.prompt[context - 1];
                        for (&a, &g) in x.answer.iter().zip(&x.given) {
                            if g {
                                key = a;
                                continue;
                            }
                            let at = x.prompt[..context - 2]
                                .iter()
                                .position(|&t| t == key)
                                .unwrap();
                            assert_eq!(x.prompt[at + 1], a);
                            assert!((DIGIT0..DIGIT0 + 10).contains(&a));
                        }
                        let queries = if task == LmTask::Mqar { cfg.queries } else { 1 };
                        assert_eq!(x.scored(), queries as usize);
                    }
                }
            }
        }
    }
}

#[test]
fn a_fixed_depth_puts_the_passkey_there_and_digits_are_uniform() {
    let cfg = LmTaskConfig {
        passkey_depth_permille: Some(0),
        ..LmTaskConfig::default()
    };
    let xs = LmTask::Passkey
        .examples(&cfg, 100, 10, 0, LmSplit::Test)
        .unwrap();
    assert!(xs.iter().all(|x| x.prompt[1] == KEY));
    let cfg = LmTaskConfig {
        passkey_depth_permille: Some(1000),
        ..cfg
    };
    let xs = LmTask::Passkey
        .examples(&cfg, 100, 10, 0, LmSplit::Test)
        .unwrap();
    assert!(xs.iter().all(|x| x.prompt[100 - 4] == KEY));
    // Every digit appears, none far from a tenth of the time.
    let xs = LmTask::Passkey
        .examples(&LmTaskConfig::default(), 32, 2000, 0, LmSplit::Test)
        .unwrap();
    let mut counts = [0usize; 10];
    for x in &xs {
        for &d in &x.answer {
            counts[(d - DIGIT0) as usize] += 1;
        }
    }
    assert!(
        counts.iter().all(|&c| (300..500).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn scoring_counts_only_the_produced_tokens() {
    let cfg = LmTaskConfig::default();
    let x = &LmTask::Mqar
        .examples(&cfg, 64, 1, 2, LmSplit::Test)
        .unwrap()[0];
    assert_eq!(x.score(&x.answer), 1.0);
    // Wrong tokens at the given positions cost nothing; one wrong value costs 1/4.
    let mut p = x.answer.clone();
    for (t, g) in p.iter_mut().zip(&x.given) {
        if *g {
            *t = 0;
        }
    }
    assert_eq!(x.score(&p), 1.0);
    p[0] = if p[0] == DIGIT0 { DIGIT0 + 1 } else { DIGIT0 };
    assert_eq!(x.score(&p), 0.75);
}

#[test]
fn settings_that_do_not_fit_are_refused() {
    let cfg = LmTaskConfig::default();
    let e = LmTask::Recall
        .examples(&cfg, 10, 1, 0, LmSplit::Test)
        .unwrap_err();
    assert!(e.to_string().contains("cannot hold the prompt"), "{e}");
    let bad = LmTaskConfig {
        keys: 4,
        ..LmTaskConfig::default()
    };
    let e = LmTask::Mqar
        .examples(&bad, 100, 1, 0, LmSplit::Test)
        .unwrap_err();
    assert!(e.to_string().contains("keys (4)"), "{e}");
    let e = LmTask::parse_list("passkey,recal").unwrap_err();
    assert!(e.to_string().contains("unknown task `recal`"), "{e}");
    assert_eq!(
        LmTask::parse_list("mqar,passkey,mqar").unwrap(),
        vec![LmTask::Mqar, LmTask::Passkey]
    );
}
