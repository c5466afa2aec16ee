//! Opening the dataset a cell names: read its index, build or reuse its shard cache,
//! apply the validation policy, hand out split views for the loader.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use tsweep_proto::cell::{DatasetFormat, DatasetSpec, Metric, ValPolicy};

use crate::error::{DataError, Result};
use crate::index::{DatasetIndex, Label, Split};
use crate::readers;
use crate::shards::{self, BuildOptions, Manifest, ProgressFn, ShardSet};
use crate::split::select;

/// Reads the index of a dataset in a raw format (no pixels decoded). For `Prepared`, the
/// index is the prepared directory itself: use [`Dataset::open`].
pub fn read_index(spec: &DatasetSpec) -> Result<DatasetIndex> {
    let mut index = match spec.format {
        DatasetFormat::Imagefolder => readers::imagefolder::read(&spec.path)?,
        DatasetFormat::CifarBinary => readers::cifar::read(&spec.path)?,
        DatasetFormat::MultilabelList => readers::multilabel::read(&spec.path)?,
        DatasetFormat::Prepared => {
            return Err(DataError::Invalid(format!(
                "{} is a prepared dataset: it has no raw index (open it with Dataset::open)",
                spec.path.display()
            )))
        }
    };
    index.name = spec.name.clone();
    Ok(index)
}

/// Where the shard cache of a raw-format dataset lives for a short side:
/// `cache_root/NAME-rSHORT-HASH16`, the hash covering the plan (classes, images, labels,
/// short side) and every source file's size and modification time, so regenerated or
/// edited data gets a fresh cache.
pub fn cache_dir_for(index: &DatasetIndex, cache_root: &Path, short_side: u32) -> PathBuf {
    let mut h = Sha256::new();
    h.update(shards::plan_hash(index, short_side).as_bytes());
    let files: BTreeSet<&Path> = index.records.iter().map(|r| r.source.path()).collect();
    for path in files {
        let (len, mtime) = std::fs::metadata(path)
            .map(|m| {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                (m.len(), t)
            })
            .unwrap_or((0, 0));
        h.update(format!("{}\t{len}\t{mtime}\n", path.display()).as_bytes());
    }
    let hash = hex::encode(h.finalize());
    let safe: String =
        index.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    cache_root.join(format!("{safe}-r{short_side}-{}", &hash[..16]))
}

/// A dataset ready for loading: stored shards plus the validation policy to apply.
#[derive(Debug, Clone)]
pub struct Dataset {
    shards: Arc<ShardSet>,
    policy: ValPolicy,
    name: String,
}

impl Dataset {
    /// Opens the dataset of a cell. Raw formats are decoded once into a shard cache under
    /// `cache_root` at `short_side` (reused by every later call, every model and grid
    /// point; safe when several processes build it at once). A prepared directory is used
    /// as it is, whatever its stored short side (the loader resamples from it).
    /// `spec.num_classes`, when set, must match, and a multi-label dataset must be scored
    /// by 11-point mAP (and only it): else a `Mismatch` (fatal for the cell).
    pub fn open(spec: &DatasetSpec, cache_root: &Path, short_side: u32, progress: ProgressFn) -> Result<Dataset> {
        let dir = match spec.format {
            DatasetFormat::Prepared => spec.path.clone(),
            _ => {
                let index = read_index(spec)?;
                let dir = cache_dir_for(&index, cache_root, short_side);
                let mut opts = BuildOptions::new(short_side);
                opts.val_policy = spec.val.clone();
                opts.source = format!("{:?} {}", spec.format, spec.path.display());
                if !dir.join(shards::MANIFEST_FILE).exists() {
                    tracing::info!(dataset = %spec.name, dir = %dir.display(), images = index.records.len(), short_side, "building shard cache");
                }
                shards::build(&index, &dir, &opts, progress)?;
                dir
            }
        };
        let set = ShardSet::open(&dir)?;
        let ds = Dataset { shards: Arc::new(set), policy: spec.val.clone(), name: spec.name.clone() };
        if let Some(expected) = spec.num_classes {
            if expected as usize != ds.num_classes() {
                return Err(DataError::Mismatch {
                    path: dir.join(shards::MANIFEST_FILE),
                    detail: format!("{} classes, the sweep expects {expected}", ds.num_classes()),
                });
            }
        }
        let map = spec.metric == Metric::Map11;
        if map != ds.is_multi_label() {
            return Err(DataError::Mismatch {
                path: dir.join(shards::MANIFEST_FILE),
                detail: format!(
                    "the dataset is {}multi-label but the sweep scores it by {}",
                    if ds.is_multi_label() { "" } else { "not " },
                    spec.metric.name()
                ),
            });
        }
        Ok(ds)
    }

    /// Opens a shard directory directly with a policy.
    pub fn from_dir(dir: &Path, policy: ValPolicy) -> Result<Dataset> {
        let set = ShardSet::open(dir)?;
        let name = set.manifest().name.clone();
        Ok(Dataset { shards: Arc::new(set), policy, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn manifest(&self) -> &Manifest {
        self.shards.manifest()
    }
    pub fn dir(&self) -> &Path {
        self.shards.dir()
    }
    pub fn class_names(&self) -> &[String] {
        &self.shards.manifest().class_names
    }
    pub fn num_classes(&self) -> usize {
        self.class_names().len()
    }
    pub fn is_multi_label(&self) -> bool {
        self.shards.manifest().multi_label
    }
    pub fn val_policy(&self) -> &ValPolicy {
        &self.policy
    }

    /// The images of `split` under the dataset's validation policy.
    pub fn split(&self, split: Split) -> Result<SplitView> {
        let indices = select(&self.shards.origins(), &self.shards.strata(), &self.policy, split)?;
        Ok(SplitView { shards: Arc::clone(&self.shards), indices: Arc::new(indices), split })
    }

    pub fn len(&self, split: Split) -> Result<usize> {
        Ok(self.split(split)?.len())
    }
}

/// The images of one split (cheap to clone).
#[derive(Debug, Clone)]
pub struct SplitView {
    shards: Arc<ShardSet>,
    indices: Arc<Vec<usize>>,
    split: Split,
}

impl SplitView {
    pub fn split(&self) -> Split {
        self.split
    }
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
    pub fn num_classes(&self) -> usize {
        self.shards.manifest().class_names.len()
    }
    pub fn is_multi_label(&self) -> bool {
        self.shards.manifest().multi_label
    }
    /// Label of the `i`-th image of the split.
    pub fn label(&self, i: usize) -> &Label {
        &self.shards.record(self.indices[i]).label
    }
    /// Stable key (relative path) of the `i`-th image of the split.
    pub fn key(&self, i: usize) -> &str {
        &self.shards.record(self.indices[i]).key
    }
    /// Every label of the split, in order (for metrics).
    pub fn labels(&self) -> Vec<Label> {
        (0..self.len()).map(|i| self.label(i).clone()).collect()
    }
    /// Reads the stored pixels of the `i`-th image into `buf`; returns (width, height).
    pub fn read_into(&self, i: usize, buf: &mut Vec<u8>) -> Result<(u32, u32)> {
        self.shards.read_into(self.indices[i], buf)
    }
}
