//! Pretrained weights: safetensors files (written by `tools/convert_weights.py`) or tch
//! `.ot` files whose names are the backbone's variable names (torchvision's `state_dict()`
//! keys), and what a safetensors file's `__metadata__` says about them: the architecture
//! and the published ImageNet top-1 of the checkpoint it was converted from.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use tch::{nn, Kind, Tensor};
use tsweep_proto::cell::{CellSpec, ModelSource, Regime};

use crate::error::TrainerError;

/// `__metadata__` key: the architecture the tensors are for (`efficientnet_lite0`, ...).
pub const META_ARCH: &str = "arch";
/// `__metadata__` key: the checkpoint's published ImageNet top-1, in percent.
pub const META_IMAGENET_TOP1: &str = "imagenet_top1";

/// A weights file read into memory.
pub struct WeightsFile {
    pub tensors: HashMap<String, Tensor>,
    pub info: WeightsInfo,
}

/// What a weights file says about itself (nothing, for files without metadata).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightsInfo {
    pub arch: Option<String>,
    pub imagenet_top1: Option<f64>,
}

fn unreadable(path: &Path, detail: String) -> TrainerError {
    TrainerError::WeightsMismatch { path: path.to_path_buf(), arch: String::new(), detail }
}

fn is_safetensors(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("safetensors")
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, TrainerError> {
    if !path.is_file() {
        return Err(TrainerError::MissingFile { what: "weights file".into(), path: path.to_path_buf() });
    }
    std::fs::read(path).map_err(|e| TrainerError::io(path, e))
}

/// The metadata of a safetensors file held in `bytes` (the whole file: a truncated one is
/// refused here, before any tensor is made).
fn parse_info(path: &Path, bytes: &[u8]) -> Result<WeightsInfo, TrainerError> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| unreadable(path, format!("not a complete safetensors file (truncated or corrupt?): {e}")))?;
    let Some(meta) = header.metadata() else { return Ok(WeightsInfo::default()) };
    let imagenet_top1 = match meta.get(META_IMAGENET_TOP1) {
        None => None,
        Some(text) => match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 100.0 => Some(v),
            _ => return Err(unreadable(path, format!("metadata {META_IMAGENET_TOP1} = {text:?} is not a percentage"))),
        },
    };
    Ok(WeightsInfo { arch: meta.get(META_ARCH).cloned(), imagenet_top1 })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Reads every named tensor of a weights file (`.safetensors` with its metadata, or
/// `.ot`/`.pt` written by tch's `save_multi`). A missing file is `MissingFile`; a truncated
/// or corrupt one is `WeightsMismatch` naming it (both fatal).
pub fn read(path: &Path) -> Result<WeightsFile, TrainerError> {
    if !is_safetensors(path) {
        if !path.is_file() {
            return Err(TrainerError::MissingFile { what: "weights file".into(), path: path.to_path_buf() });
        }
        let named = Tensor::load_multi(path).map_err(|e| unreadable(path, format!("cannot read the file: {e}")))?;
        return Ok(WeightsFile { tensors: named.into_iter().collect(), info: WeightsInfo::default() });
    }
    let bytes = read_bytes(path)?;
    let info = parse_info(path, &bytes)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| unreadable(path, format!("cannot read the file: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let kind = kind_of(view.dtype())
            .ok_or_else(|| unreadable(path, format!("{name}: unsupported dtype {:?}", view.dtype())))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)
            .map_err(|e| unreadable(path, format!("{name}: {e}")))?;
        tensors.insert(name, tensor);
    }
    Ok(WeightsFile { tensors, info })
}

/// The metadata of a weights file (empty for formats without any), without making tensors.
pub fn info(path: &Path) -> Result<WeightsInfo, TrainerError> {
    if !is_safetensors(path) {
        return Ok(WeightsInfo::default());
    }
    parse_info(path, &read_bytes(path)?)
}

/// The ImageNet top-1 that a cell's pretrained weights carry in their metadata: None
/// without weights, for a scratch run (random init) or a TorchScript module, and for a
/// file that says nothing.
pub fn backbone_top1(spec: &CellSpec) -> Result<Option<f64>, TrainerError> {
    match (&spec.model.weights, spec.regime, spec.model.source) {
        (Some(path), Regime::Linear | Regime::Finetune, ModelSource::Builtin) => Ok(info(path)?.imagenet_top1),
        _ => Ok(None),
    }
}

/// Copies the file's tensors into every variable of `vs` whose name does not start with
/// one of `skip` (the new head). The file must be for `arch` when its metadata says which
/// architecture it holds, and every such variable must be in the file with the same shape;
/// extra file entries (the old classifier, `num_batches_tracked`, Inception's `AuxLogits`)
/// are ignored.
pub fn load_into(vs: &nn::VarStore, path: &Path, arch: &str, skip: &[String]) -> Result<usize, TrainerError> {
    let file = read(path)?;
    let mismatch =
        |detail: String| TrainerError::WeightsMismatch { path: path.to_path_buf(), arch: arch.to_string(), detail };
    if let Some(theirs) = file.info.arch.as_deref().filter(|a| !a.eq_ignore_ascii_case(arch)) {
        return Err(mismatch(format!("the file holds {theirs} weights (its metadata says so)")));
    }
    let mut missing = Vec::new();
    let mut loaded = 0;
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &vars {
        if skip.iter().any(|s| name == s || name.starts_with(&format!("{s}."))) {
            continue;
        }
        let Some(src) = file.tensors.get(name) else {
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
    tracing::info!(
        path = %path.display(), arch, loaded, file_tensors = file.tensors.len(),
        imagenet_top1 = ?file.info.imagenet_top1, "pretrained weights loaded"
    );
    Ok(loaded)
}

/// `__metadata__` key of a backbone a pretrain cell trained: its source test score (the
/// cell's `test_score`, a fraction as the trainer reports it).
pub const META_SOURCE_SCORE: &str = "source_test_score";
/// `__metadata__` key: the source dataset a pretrain cell trained the backbone on.
pub const META_SOURCE_DATASET: &str = "source_dataset";

/// Writes named tensors (as f32, in their shapes) and `metadata` to a safetensors file:
/// to a temporary file next to it, synced, then renamed, so a reader never sees half of
/// one. The names are the variable names [`load_into`] matches.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<(), TrainerError> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let host = tensor.f_detach()?.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let values = Vec::<f32>::try_from(&host.f_flatten(0, -1)?)?;
        buffers.push((name.clone(), shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let invalid =
        |detail: String| TrainerError::WeightsMismatch { path: path.to_path_buf(), arch: String::new(), detail };
    let mut views = Vec::with_capacity(buffers.len());
    for (name, shape, bytes) in &buffers {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| invalid(format!("{name}: {e}")))?;
        views.push((name.as_str(), view));
    }
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| invalid(format!("serialising: {e}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    }
    let temp = path.with_extension(format!("safetensors.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        TrainerError::io(path, e)
    })
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
