//! Pretrained weights: safetensors or tch `.ot` files whose names are torchvision's
//! `state_dict()` keys (written by `tools/convert_weights.py`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use tch::{nn, Tensor};

use crate::error::TrainerError;

/// Reads every named tensor of a weights file (`.safetensors`, or `.ot`/`.pt` written by
/// tch's `save_multi` / torch's pickle-free format).
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>, TrainerError> {
    if !path.is_file() {
        return Err(TrainerError::MissingFile { what: "weights file".into(), path: path.to_path_buf() });
    }
    let named = match path.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Tensor::read_safetensors(path),
        _ => Tensor::load_multi(path),
    }
    .map_err(|e| TrainerError::WeightsMismatch {
        path: path.to_path_buf(),
        arch: String::new(),
        detail: format!("cannot read the file: {e}"),
    })?;
    Ok(named.into_iter().collect())
}

/// Copies the file's tensors into every variable of `vs` whose name does not start with
/// one of `skip` (the new head). Every such variable must be in
/// the file with the same shape; extra file entries (the old classifier,
/// `num_batches_tracked`, Inception's `AuxLogits`) are ignored.
pub fn load_into(vs: &nn::VarStore, path: &Path, arch: &str, skip: &[String]) -> Result<usize, TrainerError> {
    let file = read(path)?;
    let mismatch =
        |detail: String| TrainerError::WeightsMismatch { path: path.to_path_buf(), arch: arch.to_string(), detail };
    let mut missing = Vec::new();
    let mut loaded = 0;
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &vars {
        if skip.iter().any(|s| name == s || name.starts_with(&format!("{s}."))) {
            continue;
        }
        let Some(src) = file.get(name) else {
            missing.push(name.clone());
            continue;
        };
        if src.size() != var.size() {
            return Err(mismatch(format!("{name}: file has shape {:?}, the model {:?}", src.size(), var.size())));
        }
        tch::no_grad(|| -> Result<(), TrainerError> {
            let mut v = var.shallow_clone();
            v.f_copy_(&src.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
            Ok(())
        })?;
        loaded += 1;
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
        return Err(mismatch(format!(
            "{} of the model's tensors are not in the file (e.g. {}); names must be torchvision state_dict keys",
            missing.len(),
            shown.join(", ")
        )));
    }
    tracing::info!(path = %path.display(), arch, loaded, file_tensors = file.len(), "pretrained weights loaded");
    Ok(loaded)
}

/// sha256 of a file (hex), for the feature-cache key.
pub fn file_sha256(path: &Path) -> Result<String, TrainerError> {
    let mut f = std::fs::File::open(path).map_err(|e| TrainerError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| TrainerError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
