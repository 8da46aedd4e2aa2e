//! The worker's allocator set-up: in steady state an iteration reuses the pages freed by
//! the one before instead of faulting fresh ones in.
//!
//! A test binary of its own with no harness: the worker runs cases on its main thread,
//! whose allocations come from glibc's main arena, so this must too (the libtest harness
//! runs tests on other threads, with arenas of their own), and no other test's
//! allocations land in the fault count.

use xarena_bench::case::Prepared;
use xarena_bench::sweep::Sweep;
use xarena_measure::memory::steady_state_allocator;
use xarena_variants::VariantSpec;

fn minor_faults() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_minflt
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // nothing to list for `cargo test -- --list`
    }
    let with = std::env::var_os("XARENA_DEFAULT_ALLOCATOR").is_none();
    if with {
        steady_state_allocator();
    }
    tch::set_num_threads(1);
    // vanilla at N = 512: blocks of 1-16 MiB per iteration.
    let sweep = Sweep {
        variants: vec![VariantSpec::new("vanilla")],
        seq: vec![512],
        batch: vec![2],
        ..Sweep::default()
    };
    let case = &sweep.cases().unwrap()[0];
    let prepared = Prepared::new(case).unwrap();
    for _ in 0..3 {
        prepared.step();
    }
    let before = minor_faults();
    let iterations = 5;
    for _ in 0..iterations {
        prepared.step();
    }
    let per_iteration = (minor_faults() - before) / iterations;
    println!("allocator: {per_iteration} page faults per iteration (steady-state set-up: {with})");
    // Faulting the iteration's ~40 MiB in again is about 8,000-10,000 faults (measured
    // with XARENA_DEFAULT_ALLOCATOR=1); heap layout leaves a few hundred either way.
    assert!(
        !with || per_iteration < 2500,
        "{per_iteration} page faults per iteration: freed blocks are not reused"
    );
    println!("1 passed, 0 failed");
}
