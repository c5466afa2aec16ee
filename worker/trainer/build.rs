//! Link settings for this crate's own binaries, tests and benches. A library's build script
//! cannot change how downstream binaries link, so the same arguments are also published as
//! `link_args` metadata (`links = "tsweep_torch"`): tsweep-worker's build.rs applies them.
//!
//! - `--no-as-needed` around libtorch_cuda: nothing in Rust calls into it directly, so the
//!   default `--as-needed` drops it and CUDA silently goes missing (tch-rs issue #751 and
//!   torch-sys's build.rs notes). The library also dlopens it at run time
//!   (`device::load_cuda_library`) as a second line of defence.
//! - an rpath to the libtorch the build used (the venv's torch/lib), so local runs need no
//!   LD_LIBRARY_PATH; LD_LIBRARY_PATH still wins on a GPU machine with its own PyTorch.
//!
//! It also compiles `csrc/autocast.cpp`, the autocast switches tch does not bind
//! (`precision.rs`), against the same libtorch's headers.
use std::path::PathBuf;
use std::process::Command;

fn libtorch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH_LIB") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// libtorch's headers: `$LIBTORCH/include`, else `include/` beside the library directory
/// (PyTorch's wheel: torch/lib and torch/include).
fn libtorch_include_dir(lib: &std::path::Path) -> PathBuf {
    match std::env::var("LIBTORCH") {
        Ok(root) => PathBuf::from(root).join("include"),
        Err(_) => lib.parent().map_or_else(|| PathBuf::from("include"), |torch| torch.join("include")),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    let lib = libtorch_lib_dir();
    let Some(include) = lib.as_deref().map(libtorch_include_dir).filter(|i| i.join("c10").is_dir()) else {
        panic!(
            "tsweep-trainer: libtorch's headers not found (looked beside {lib:?}); set LIBTORCH, or \
             LIBTORCH_USE_PYTORCH=1 with a python3 that imports torch (source scripts/env.sh)"
        );
    };
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .include(&include)
        .file("csrc/autocast.cpp")
        .warnings(true)
        .compile("tsweep_autocast");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        return;
    }
    let Some(dir) = lib else { return };
    let mut args = vec![format!("-Wl,-rpath,{}", dir.display())];
    if dir.join("libtorch_cuda.so").exists() {
        args.push(format!("-L{}", dir.display()));
        args.extend(["-Wl,--no-as-needed", "-ltorch_cuda", "-Wl,--as-needed"].map(String::from));
    }
    for arg in &args {
        println!("cargo:rustc-link-arg={arg}");
    }
    // '\x1f' (unit separator) cannot occur in a path
    println!("cargo:link_args={}", args.join("\x1f"));
}
