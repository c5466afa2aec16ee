//! Checkpoints: one safetensors file per save, written atomically (temp file in the same
//! directory, fsync, rename, fsync of the directory), holding
//! - `model.<name>`: every variable (parameters and BatchNorm running statistics),
//! - `momentum.<name>`: the SGD momentum buffers,
//! - `meta.step`, `meta.cell`: the step reached and the cell fingerprint (a checkpoint
//!   of another cell is refused),
//! - for fp16 cells `amp.*`: the loss scaler's scale, growth counter and skipped-step
//!   counts (`precision::GradScaler::state`), so a resumed run scales as the
//!   uninterrupted one would have.
//!
//! The RNG state is (seed, step): batches and augmentation are a pure function of them
//! (tsweep-data's loader) and the torch generator is re-seeded from them every step.
//! For TorchScript backbones the module itself is saved beside it (`.pt`), since its
//! BatchNorm buffers are not in the variable store. Older checkpoints of the directory
//! are removed after a save.

use std::fs;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::TrainerError;
use crate::models::Network;
use crate::precision::GradScaler;
use crate::sgd::Sgd;

const PREFIX: &str = "ckpt-";
const SUFFIX: &str = ".safetensors";

pub fn file_name(step: u64) -> String {
    format!("{PREFIX}{step:010}{SUFFIX}")
}

/// The TorchScript module saved beside a checkpoint.
pub fn script_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("pt")
}

/// Writes a checkpoint of `step` into `dir`; returns its path.
pub fn save(
    dir: &Path,
    step: u64,
    cell: &str,
    net: &Network,
    sgd: &Sgd,
    scaler: Option<&GradScaler>,
) -> Result<PathBuf, TrainerError> {
    fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (name, t) in net.state() {
        named.push((format!("model.{name}"), t.f_detach()?.f_to_device(tch::Device::Cpu)?.f_contiguous()?));
    }
    for (name, t) in sgd.buffers()? {
        named.push((format!("momentum.{name}"), t.f_to_device(tch::Device::Cpu)?.f_contiguous()?));
    }
    if let Some(scaler) = scaler {
        named.extend(scaler.state()?);
    }
    named.push(("meta.step".into(), Tensor::from_slice(&[step as i64])));
    named.push(("meta.cell".into(), Tensor::from_slice(cell.as_bytes())));
    let path = dir.join(file_name(step));
    let tmp = dir.join(format!(".{}.tmp-{}", file_name(step), std::process::id()));
    if net.save_script(&tmp.with_extension("pt.tmp"))? {
        rename_synced(&tmp.with_extension("pt.tmp"), &script_path(&path))?;
    }
    Tensor::write_safetensors(&named, &tmp).map_err(|e| TrainerError::Torch {
        during: format!("writing checkpoint {}", tmp.display()),
        detail: e.to_string(),
    })?;
    rename_synced(&tmp, &path)?;
    remove_older(dir, step);
    tracing::info!(path = %path.display(), step, "checkpoint written");
    Ok(path)
}

fn rename_synced(tmp: &Path, path: &Path) -> Result<(), TrainerError> {
    let f = fs::File::open(tmp).map_err(|e| TrainerError::io(tmp, e))?;
    f.sync_all().map_err(|e| TrainerError::io(tmp, e))?;
    fs::rename(tmp, path).map_err(|e| TrainerError::io(path, e))?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn remove_older(dir: &Path, step: u64) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(s) = name.strip_prefix(PREFIX).and_then(|r| r.strip_suffix(SUFFIX).or_else(|| r.strip_suffix(".pt")))
        else {
            continue;
        };
        if s.parse::<u64>().is_ok_and(|s| s < step) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A checkpoint read back.
pub struct Loaded {
    pub step: u64,
    tensors: Vec<(String, Tensor)>,
}

/// Reads a checkpoint and checks it belongs to `cell`.
pub fn read(path: &Path, cell: &str) -> Result<Loaded, TrainerError> {
    if !path.is_file() {
        return Err(TrainerError::MissingFile { what: "checkpoint".into(), path: path.to_path_buf() });
    }
    let bad = |detail: String| TrainerError::BadCheckpoint { path: path.to_path_buf(), detail };
    let tensors = Tensor::read_safetensors(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let get = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
    let step = get("meta.step").ok_or_else(|| bad("no meta.step".into()))?.f_int64_value(&[0])? as u64;
    let stored = get("meta.cell").ok_or_else(|| bad("no meta.cell".into()))?;
    let stored = Vec::<u8>::try_from(&stored.f_to_kind(Kind::Uint8)?)?;
    if stored != cell.as_bytes() {
        return Err(bad(format!(
            "it belongs to another cell (fingerprint {}, this cell {cell})",
            String::from_utf8_lossy(&stored)
        )));
    }
    Ok(Loaded { step, tensors })
}

impl Loaded {
    /// Copies weights and momentum buffers into the network and optimizer (and the loss
    /// scaler's state into `scaler`). Every variable of the network must be present.
    pub fn restore(
        &self,
        path: &Path,
        net: &Network,
        sgd: &mut Sgd,
        scaler: Option<&mut GradScaler>,
    ) -> Result<(), TrainerError> {
        let bad = |detail: String| TrainerError::BadCheckpoint { path: path.to_path_buf(), detail };
        let mut restored = 0;
        for (name, var) in net.state() {
            let key = format!("model.{name}");
            let Some((_, src)) = self.tensors.iter().find(|(n, _)| *n == key) else {
                return Err(bad(format!("no {key}")));
            };
            if src.size() != var.size() {
                return Err(bad(format!("{key}: shape {:?}, the model has {:?}", src.size(), var.size())));
            }
            tch::no_grad(|| var.shallow_clone().f_copy_(src))?;
            restored += 1;
        }
        let mut buffers = 0;
        for (name, t) in &self.tensors {
            if let Some(param) = name.strip_prefix("momentum.") {
                if sgd.restore_buffer(param, t)? {
                    buffers += 1;
                }
            }
        }
        if buffers != sgd.num_params() {
            return Err(bad(format!("{buffers} momentum buffers for {} parameters", sgd.num_params())));
        }
        if let Some(scaler) = scaler {
            let get = |name: &str| self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone());
            if let Some(missing) = scaler.restore(&get)? {
                return Err(bad(format!("no {missing} (the loss scaler of an fp16 cell)")));
            }
        }
        tracing::info!(path = %path.display(), step = self.step, restored, buffers, "checkpoint restored");
        Ok(())
    }
}
