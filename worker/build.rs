//! Applies tsweep-trainer's link arguments (an rpath to the libtorch the build used, and
//! `libtorch_cuda` kept with `--no-as-needed`; see worker/trainer/build.rs) to this crate's
//! binaries and tests, so `tsweep-worker` runs without LD_LIBRARY_PATH where it was built
//! and finds CUDA where libtorch has it.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TSWEEP_TORCH_LINK_ARGS");
    if let Ok(args) = std::env::var("DEP_TSWEEP_TORCH_LINK_ARGS") {
        for arg in args.split('\x1f').filter(|a| !a.is_empty()) {
            println!("cargo:rustc-link-arg={arg}");
        }
    }
}
