include!("../ci/build/libtorch.rs");

fn main() {
    let lib = link_libtorch();
    // The shim compiles against the same LibTorch's headers: lib/../include.
    let root = lib.parent().expect("LibTorch lib dir has a parent");
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    cc::Build::new()
        .cpp(true)
        .file("csrc/shim.cpp")
        .include(root.join("include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("xarena_shim");
}
