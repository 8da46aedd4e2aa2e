//! `xarena quality` computes in its own process: a size it cannot hold is refused up
//! front with a message (exit 1), never a LibTorch panic (101) or a silent kill.

mod common;

use std::os::unix::process::CommandExt;

use common::{stderr, xarena};

const SHAPE: &[&str] = &["--variants", "vanilla", "--heads", "2", "--head-dim", "8"];

#[test]
fn a_size_beyond_memory_is_refused_naming_it() {
    // The float64 reference's scores alone: 2 x 2 heads x 10^14 x 8 bytes.
    let out = xarena()
        .arg("quality")
        .args(SHAPE)
        .args(["--seq", "10000000"])
        .output()
        .expect("xarena runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("xarena: error: --seq 10000000: "), "{err}");
    assert!(err.contains("GiB") && err.contains("set by"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_size_beyond_an_address_space_limit_is_refused() {
    // N = 20000 needs about 12 GiB; under a 6 GiB RLIMIT_AS (ulimit -v) its allocation
    // would fail inside LibTorch.
    let mut cmd = xarena();
    cmd.arg("quality")
        .args(SHAPE)
        .args(["--seq", "64,20000"])
        .env("OMP_NUM_THREADS", "1");
    // SAFETY: setrlimit is async-signal-safe and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 6 << 30,
                rlim_max: 6 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("xarena runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Refused before N = 64 ran: nothing was computed.
    assert!(err.starts_with("xarena: error: --seq 20000: "), "{err}");
    assert!(err.contains("N = 20000"), "{err}");
}
