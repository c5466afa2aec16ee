//! A cell's identity (DESIGN §3, invariant "a cell has one identity").

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tsweep_proto::cell::{CellSpec, Regime};

/// What a cell *is*, in a fixed field order. Paths, training settings and the retry
/// budget are left out on purpose: moving a dataset or raising `max_attempts` must not
/// turn finished cells into new ones. The linear regime's L2 path is its hyperparameter
/// axis (it has no per-cell hparams), so it is part of the linear cell's identity. The
/// precision is what the cell computes in (its result differs), so it is part of it too.
#[derive(Serialize)]
struct Identity<'a> {
    sweep: &'a str,
    stage: &'a str,
    model: &'a str,
    dataset: &'a str,
    regime: &'a str,
    hparams: &'a BTreeMap<String, f64>,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    l2_path: Option<&'a [f64]>,
    /// Only when not fp32, so the ids of fp32 cells are those they had before precision
    /// existed, and a bf16 or fp16 cell is another cell than its fp32 twin.
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<&'static str>,
}

/// The canonical JSON hashed into the task id.
pub fn identity_json(spec: &CellSpec) -> String {
    let identity = Identity {
        sweep: &spec.sweep,
        stage: spec.stage.name(),
        model: &spec.model.name,
        dataset: &spec.dataset.name,
        regime: spec.regime.name(),
        hparams: &spec.hparams,
        seed: spec.seed,
        l2_path: (spec.regime == Regime::Linear).then_some(spec.train.l2_path.as_slice()),
        precision: (!spec.precision.is_fp32()).then_some(spec.precision.name()),
    };
    // Serialising plain strings, integers and finite floats cannot fail; an empty
    // string (never a valid identity) would only hash to a fixed id.
    serde_json::to_string(&identity).unwrap_or_default()
}

/// First 16 bytes of SHA-256 over [`identity_json`], as 32 lowercase hex digits.
pub fn task_id(spec: &CellSpec) -> String {
    let digest = Sha256::digest(identity_json(spec).as_bytes());
    hex::encode(&digest[..16])
}
