//! What the coordinator's integration tests share: the cell a test sweep is made of, and
//! a small sweep file.
//! (Each test file that needs it declares `mod support;`.)

#![allow(dead_code)] // each test file uses a part

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tsweep_coordinator::store::Store;
use tsweep_coordinator::sweepfile::{task_id, Cell};
use tsweep_proto::cell::{
    CellSpec, DatasetFormat, DatasetSpec, Metric, ModelSource, ModelSpec, Regime, Stage, TrainSettings, ValPolicy,
};

/// A grid cell of `sweep`: model `model` (a resnet18 with ImageNet top-1 70) on the
/// `shapes` dataset, `regime` with learning rate `lr` (linear: an L2 path of two values),
/// 10 steps of batch 8.
pub fn spec(sweep: &str, model: &str, regime: Regime, lr: f64, gpus: u32, max_attempts: u32) -> CellSpec {
    let mut hparams = BTreeMap::new();
    if regime != Regime::Linear {
        hparams.insert("lr".to_string(), lr);
        hparams.insert("weight_decay".to_string(), 0.0);
    }
    CellSpec {
        sweep: sweep.to_string(),
        stage: Stage::Grid,
        regime,
        model: ModelSpec {
            name: model.to_string(),
            source: ModelSource::Builtin,
            arch: "resnet18".to_string(),
            weights: None,
            imagenet_top1: Some(70.0),
            image_size: 32,
            pretrained: None,
            normalize: Default::default(),
        },
        dataset: DatasetSpec {
            name: "shapes".to_string(),
            format: DatasetFormat::Imagefolder,
            path: PathBuf::from("/data/shapes"),
            metric: Metric::Top1,
            val: ValPolicy::Official,
            num_classes: None,
        },
        hparams,
        train: TrainSettings {
            steps: 10,
            batch_size: 8,
            checkpoint_every: 0,
            loader_threads: 1,
            l2_path: if regime == Regime::Linear { vec![0.1, 1.0] } else { vec![] },
            lbfgs_max_iter: 10,
            ..TrainSettings::defaults_for(regime)
        },
        seed: 0,
        precision: Default::default(),
        gpus,
        max_attempts,
        fake: None,
    }
}

/// The cell of a spec, with its deterministic id.
pub fn cell(spec: CellSpec) -> Cell {
    Cell { id: task_id(&spec), spec, after: None }
}

/// A sweep file `name`: resnet18 from random init at 32², scratch on `shapes` (official
/// val), 10 steps of batch 8 on no GPU, one grid point per learning rate in `lrs`.
pub fn sweep_file(name: &str, lrs: &[f64]) -> String {
    let lrs: Vec<String> = lrs.iter().map(|lr| lr.to_string()).collect();
    format!(
        r#"
name = "{name}"
allow_random_init = true

[defaults]
steps = 10
batch_size = 8
gpus = 0

[[models]]
name = "resnet18"
source = "builtin"
image_size = 32

[[datasets]]
name = "shapes"
format = "imagefolder"
path = "data/shapes"
val = {{ kind = "official" }}

[regimes.scratch]
lr = [{}]
weight_decay = [0.0001]
"#,
        lrs.join(", ")
    )
}

/// Every key matching `pattern`, found with SCAN.
pub async fn scan(store: &Store, pattern: &str) -> BTreeSet<String> {
    let mut conn = store.connection();
    let mut cursor: u64 = 0;
    let mut keys = BTreeSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}
