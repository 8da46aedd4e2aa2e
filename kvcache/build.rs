include!("../ci/build/libtorch.rs");

fn main() {
    link_libtorch();
}
