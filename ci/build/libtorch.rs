// Shared by every crate's build.rs through `include!`: link LibTorch so that CUDA works
// and binaries find the libraries without LD_LIBRARY_PATH.
//
// torch-sys exports the library directory as DEP_TCH_LIBTORCH_LIB to crates that depend
// on it directly. The linker's `--as-needed` would drop libtorch.so (and with it
// libtorch_cuda.so) because no symbol is referenced directly, so CUDA would never be
// available; `--no-as-needed -ltorch` keeps it. Link args of a library do not reach the
// binaries that use it, which is why each crate with tests, benches or binaries calls this.

/// Returns LibTorch's library directory after emitting the link arguments.
#[allow(dead_code)]
fn link_libtorch() -> std::path::PathBuf {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys must be a direct dependency: it exports DEP_TCH_LIBTORCH_LIB");
    // The rpath names the real directory, not the repo's `.libtorch` link, so a binary
    // keeps working when copied elsewhere on this machine.
    let lib = std::fs::canonicalize(&lib).unwrap_or_else(|_| std::path::PathBuf::from(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    lib
}
