//! The tasks through the public API: the defaults the manual states
//! (docs/tracks/accuracy.md), and the cache.

use xarena_datasets::listops::ListOps;
use xarena_datasets::pathfinder::Pathfinder;
use xarena_datasets::synthetic::{AssociativeRecall, Passkey, SelectiveCopy};
use xarena_datasets::task::{cache_path, load_or_generate, Sizes, Task};

/// A task with its vocabulary size, classes, maximum length and examples in all.
type Expected = (Box<dyn Task>, u32, u32, usize, usize);

#[test]
fn defaults_match_the_readme() {
    let tasks: Vec<Expected> = vec![
        (Box::new(ListOps::default()), 16, 10, 1999, 100_000),
        (
            Box::new(AssociativeRecall::default()),
            1036,
            10,
            514,
            12_000,
        ),
        (Box::new(Passkey::default()), 77, 10, 1024, 12_000),
        (Box::new(SelectiveCopy::default()), 29, 10, 1024, 12_000),
        (Box::new(Pathfinder::default()), 257, 2, 1024, 12_000),
    ];
    for (task, vocab, classes, max_len, total) in tasks {
        task.validate().unwrap();
        assert_eq!(task.vocab_size(), vocab, "{}", task.name());
        assert_eq!(task.num_classes(), classes, "{}", task.name());
        assert_eq!(task.max_len(), max_len, "{}", task.name());
        assert_eq!(task.sizes().total(), total, "{}", task.name());
    }
}

#[test]
fn listops_goes_through_the_cache() {
    let root = std::env::temp_dir().join(format!("xarena-tasks-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let task = ListOps {
        min_length: 20,
        max_length: 80,
        sizes: Sizes::new(40, 5, 5),
        ..Default::default()
    };
    let a = load_or_generate(&task, 3, &root).unwrap();
    let path = cache_path(&task, 3, &root);
    assert!(path.starts_with(root.join("listops")));
    let written = std::fs::metadata(&path).unwrap().modified().unwrap();
    let b = load_or_generate(&task, 3, &root).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        written,
        "read back, not rewritten"
    );
    assert_eq!(a, task.generate(3).unwrap());
    // Other parameters: another file beside it.
    let longer = ListOps {
        max_length: 90,
        ..task.clone()
    };
    load_or_generate(&longer, 3, &root).unwrap();
    assert_ne!(cache_path(&longer, 3, &root), path);
    assert_eq!(std::fs::read_dir(root.join("listops")).unwrap().count(), 2);
    // Bad parameters: an error naming the task, nothing written.
    let bad = ListOps {
        min_length: 100,
        ..task.clone()
    };
    let err = format!("{:#}", load_or_generate(&bad, 3, &root).unwrap_err());
    assert!(
        err.contains("listops") && err.contains("min_length"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(root.join("listops")).unwrap().count(), 2);
    std::fs::remove_dir_all(&root).unwrap();
}
