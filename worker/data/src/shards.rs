//! The prepared-shard format: images decoded once, shrunk to a short side, stored as raw
//! RGB bytes in shard files with a JSON index, plus a manifest written last.
//!
//! ```text
//! DIR/plan.json                 what is being built (guards a resumed build)
//! DIR/shards/shard-00000.bin    raw HWC RGB u8 images, back to back
//! DIR/shards/shard-00000.json   that shard's records (offset, size, label, origin, key),
//!                               skipped images, sha256 of the .bin; written after the .bin
//! DIR/manifest.json             written last: classes, counts, policy, content hash
//! ```
//! Every file is written to a temp name and renamed, and a shard's layout depends only on
//! the dataset, so an interrupted build resumes where it stopped and several processes can
//! build the same directory at once (they write identical bytes).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tsweep_proto::cell::ValPolicy;

use crate::error::{DataError, Result};
use crate::image_ops::{decode, shrink_to_short_side, RgbPixels};
use crate::index::{DatasetIndex, Label, Origin, Split};
use crate::split::{select, Subsample};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const PLAN_FILE: &str = "plan.json";
pub const SHARD_DIR: &str = "shards";
pub const FORMAT_VERSION: u32 = 1;
/// How stored images are resized, part of the plan hash so that caches built with another
/// rule are rebuilt (2: torchvision's truncated long side, `image_ops::resized_size`, and
/// Pillow's bilinear resize, `image_ops::resize_like_pil`).
/// The shard format itself is unchanged: older prepared directories still open.
const RESIZE_RULE: u32 = 2;

/// One stored image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub offset: u64,
    pub width: u32,
    pub height: u32,
    pub label: Label,
    pub origin: Origin,
    pub key: String,
}

/// An image that could not be decoded and was left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub key: String,
    pub error: String,
}

/// One shard's sidecar file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPart {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub records: Vec<ShardRecord>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub records: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// What is in a prepared or cached directory; `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// The dataset's name (`cifar10`, `voc2007`, or the sweep's name for a cache).
    pub name: String,
    /// Where it came from (adapter and source directory, or the sweep dataset's path).
    pub source: String,
    pub class_names: Vec<String>,
    pub multi_label: bool,
    /// Images are stored with their short side shrunk to at most this.
    pub short_side: u32,
    /// Stored images per distribution split (`train`, `val`, `test`).
    pub origin_counts: BTreeMap<String, usize>,
    /// The validation policy applied for `split_counts` (the loader applies the sweep's).
    pub val_policy: ValPolicy,
    /// Images per split under `val_policy` (`train`, `val`, `trainval`, `test`).
    pub split_counts: BTreeMap<String, usize>,
    /// Seed the adapter used (e.g. Caltech-101's 30 per class), 0 when none.
    pub seed: u64,
    /// sha256 over every shard's hash and records: equal hashes, equal data.
    pub content_hash: String,
    pub plan_hash: String,
    pub images_per_shard: usize,
    pub shards: Vec<ShardInfo>,
    pub skipped: Vec<Skipped>,
    /// The per-class caps a subsampled prepare applied (None: every image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subsample: Option<Subsample>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest> {
        read_json(&dir.join(MANIFEST_FILE))
    }
    pub fn num_images(&self) -> usize {
        self.origin_counts.values().sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Plan {
    plan_hash: String,
    images: usize,
    images_per_shard: usize,
}

/// Settings of one shard build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub short_side: u32,
    pub val_policy: ValPolicy,
    pub seed: u64,
    pub source: String,
    /// Worker threads; 0 = every core.
    pub threads: usize,
    /// Undecodable images are listed in the manifest and skipped (adapters); when false
    /// (a sweep's raw dataset) the first one is an error naming the file.
    pub skip_undecodable: bool,
    /// Recorded in the manifest: the per-class caps the index was subsampled with.
    pub subsample: Option<Subsample>,
    /// Stop (with an error) after this many shards were built in this call; tests use it
    /// to simulate an interrupted build.
    pub stop_after_shards: Option<usize>,
}

impl BuildOptions {
    pub fn new(short_side: u32) -> Self {
        BuildOptions {
            short_side,
            val_policy: ValPolicy::Official,
            seed: 0,
            source: String::new(),
            threads: 0,
            skip_undecodable: false,
            subsample: None,
            stop_after_shards: None,
        }
    }
}

/// Progress of a build: images done (decoded or skipped) out of the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub skipped: usize,
}

/// A progress callback (called from worker threads).
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Sync);

/// Images per shard, a function of the dataset size only (so a resumed build, with any
/// number of threads, writes the same shards).
pub fn images_per_shard(n: usize) -> usize {
    n.div_ceil(64).clamp(8, 1024)
}

/// Hash of what a build would produce: classes, keys, labels, origins, short side.
pub fn plan_hash(index: &DatasetIndex, short_side: u32) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "tsweep-shards v{FORMAT_VERSION} resize={RESIZE_RULE} short_side={short_side} multi={}\n",
        index.multi_label
    ));
    for c in &index.class_names {
        h.update(c.as_bytes());
        h.update(b"\n");
    }
    for r in &index.records {
        h.update(format!("{}\t{}\t{:?}\n", r.key, r.origin.name(), r.label.classes()));
    }
    hex::encode(h.finalize())
}

fn shard_name(i: usize) -> String {
    format!("shard-{i:05}")
}

/// Builds (or finishes building, or finds already built) the shard directory `dir` for
/// `index`. Returns its manifest.
pub fn build(index: &DatasetIndex, dir: &Path, opts: &BuildOptions, progress: ProgressFn) -> Result<Manifest> {
    index.validate()?;
    let hash = plan_hash(index, opts.short_side);
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        let m = Manifest::read(dir)?;
        if m.plan_hash == hash {
            if m.val_policy != opts.val_policy || m.seed != opts.seed {
                return finalize(index, dir, opts, &hash, m.images_per_shard, m.shards.len());
            }
            progress(Progress {
                done: m.num_images() + m.skipped.len(),
                total: index.records.len(),
                skipped: m.skipped.len(),
            });
            return Ok(m);
        }
        return Err(DataError::Mismatch {
            path: manifest_path,
            detail: format!(
                "directory holds a different dataset build (plan {} vs {hash}); remove it or choose another",
                m.plan_hash
            ),
        });
    }
    let shard_dir = dir.join(SHARD_DIR);
    std::fs::create_dir_all(&shard_dir).map_err(|e| DataError::io(&shard_dir, e))?;
    let n = index.records.len();
    let per = images_per_shard(n);
    let plan = Plan { plan_hash: hash.clone(), images: n, images_per_shard: per };
    let plan_path = dir.join(PLAN_FILE);
    if plan_path.exists() {
        let old: Plan = read_json(&plan_path)?;
        if old != plan {
            return Err(DataError::Mismatch {
                path: plan_path,
                detail: "an interrupted build of a different dataset is here; remove the directory".into(),
            });
        }
    } else {
        write_json_atomic(&plan_path, &plan)?;
    }

    let num_shards = n.div_ceil(per);
    let done = AtomicUsize::new(0);
    let skipped = AtomicUsize::new(0);
    let built = AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| DataError::Invalid(format!("thread pool: {e}")))?;
    let results: Vec<Result<()>> = pool.install(|| {
        (0..num_shards)
            .into_par_iter()
            .map(|s| {
                let records = &index.records[s * per..((s + 1) * per).min(n)];
                let part_path = shard_dir.join(format!("{}.json", shard_name(s)));
                if part_path.exists() {
                    let part: ShardPart = read_json(&part_path)?;
                    skipped.fetch_add(part.skipped.len(), Ordering::Relaxed);
                } else {
                    if let Some(limit) = opts.stop_after_shards {
                        if built.fetch_add(1, Ordering::SeqCst) >= limit {
                            return Err(DataError::Invalid("build stopped early on request".into()));
                        }
                    }
                    let part = build_shard(&shard_dir, s, records, opts.short_side, opts.skip_undecodable)?;
                    skipped.fetch_add(part.skipped.len(), Ordering::Relaxed);
                    write_json_atomic(&part_path, &part)?;
                }
                let d = done.fetch_add(records.len(), Ordering::Relaxed) + records.len();
                progress(Progress { done: d, total: n, skipped: skipped.load(Ordering::Relaxed) });
                Ok(())
            })
            .collect()
    });
    for r in results {
        r?;
    }
    finalize(index, dir, opts, &hash, per, num_shards)
}

fn build_shard(
    shard_dir: &Path,
    s: usize,
    records: &[crate::index::Record],
    short_side: u32,
    skip: bool,
) -> Result<ShardPart> {
    let file = format!("{}.bin", shard_name(s));
    let final_path = shard_dir.join(&file);
    let tmp_path = shard_dir.join(format!("{file}.{}", tmp_suffix()));
    let f = File::create(&tmp_path).map_err(|e| DataError::io(&tmp_path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    let mut part =
        ShardPart { file: file.clone(), bytes: 0, sha256: String::new(), records: Vec::new(), skipped: Vec::new() };
    for r in records {
        let img = match decode(&r.source) {
            Ok(img) => shrink_to_short_side(img, short_side),
            Err(e @ (DataError::Decode { .. } | DataError::Io { .. })) if skip => {
                tracing::warn!(image = %r.key, error = %e, "skipping undecodable image");
                part.skipped.push(Skipped { key: r.key.clone(), error: e.to_string() });
                continue;
            }
            Err(e) => return Err(e),
        };
        w.write_all(&img.data).map_err(|e| DataError::io(&tmp_path, e))?;
        hasher.update(&img.data);
        part.records.push(ShardRecord {
            offset,
            width: img.width,
            height: img.height,
            label: r.label.clone(),
            origin: r.origin,
            key: r.key.clone(),
        });
        offset += img.data.len() as u64;
    }
    let f = w.into_inner().map_err(|e| DataError::io(&tmp_path, e.into_error()))?;
    f.sync_all().map_err(|e| DataError::io(&tmp_path, e))?;
    drop(f);
    std::fs::rename(&tmp_path, &final_path).map_err(|e| DataError::io(&final_path, e))?;
    part.bytes = offset;
    part.sha256 = hex::encode(hasher.finalize());
    Ok(part)
}

fn finalize(
    index: &DatasetIndex,
    dir: &Path,
    opts: &BuildOptions,
    plan_hash: &str,
    per: usize,
    num_shards: usize,
) -> Result<Manifest> {
    let shard_dir = dir.join(SHARD_DIR);
    let mut content = Sha256::new();
    let mut shards = Vec::with_capacity(num_shards);
    let mut skipped = Vec::new();
    let mut origins = Vec::new();
    let mut strata = Vec::new();
    for s in 0..num_shards {
        let part: ShardPart = read_json(&shard_dir.join(format!("{}.json", shard_name(s))))?;
        content.update(part.sha256.as_bytes());
        for r in &part.records {
            hash_record(&mut content, r);
            origins.push(r.origin);
            strata.push(r.label.stratum());
        }
        shards.push(ShardInfo {
            file: part.file.clone(),
            records: part.records.len(),
            bytes: part.bytes,
            sha256: part.sha256.clone(),
        });
        skipped.extend(part.skipped);
    }
    let mut origin_counts = BTreeMap::new();
    for o in [Origin::Train, Origin::Val, Origin::Test] {
        origin_counts.insert(o.name().to_string(), origins.iter().filter(|&&x| x == o).count());
    }
    let mut split_counts = BTreeMap::new();
    for sp in [Split::Train, Split::Val, Split::TrainVal, Split::Test] {
        let count = select(&origins, &strata, &opts.val_policy, sp).map(|v| v.len()).unwrap_or(0);
        split_counts.insert(sp.name().to_string(), count);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: index.name.clone(),
        source: opts.source.clone(),
        class_names: index.class_names.clone(),
        multi_label: index.multi_label,
        short_side: opts.short_side,
        origin_counts,
        val_policy: opts.val_policy.clone(),
        split_counts,
        seed: opts.seed,
        content_hash: hex::encode(content.finalize()),
        plan_hash: plan_hash.to_string(),
        images_per_shard: per,
        shards,
        skipped,
        subsample: opts.subsample,
    };
    write_json_atomic(&dir.join(MANIFEST_FILE), &manifest)?;
    Ok(manifest)
}

/// Recomputes the content hash from the shard files and sidecars on disk (reading every
/// byte); used by `verify`.
pub fn recompute_content_hash(dir: &Path, manifest: &Manifest) -> Result<(String, Vec<String>)> {
    let shard_dir = dir.join(SHARD_DIR);
    let mut problems = Vec::new();
    let hashes: Vec<Result<String>> = manifest
        .shards
        .par_iter()
        .map(|info| {
            let path = shard_dir.join(&info.file);
            let mut f = File::open(&path).map_err(|e| DataError::io(&path, e))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let k = f.read(&mut buf).map_err(|e| DataError::io(&path, e))?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
            }
            Ok(hex::encode(h.finalize()))
        })
        .collect();
    let mut content = Sha256::new();
    for (i, (info, actual)) in manifest.shards.iter().zip(hashes).enumerate() {
        let actual = actual?;
        if actual != info.sha256 {
            problems.push(format!("{}: sha256 {} but manifest says {}", info.file, actual, info.sha256));
        }
        let part: ShardPart = read_json(&shard_dir.join(format!("{}.json", shard_name(i))))?;
        if part.records.len() != info.records {
            problems.push(format!("{}: {} records but manifest says {}", info.file, part.records.len(), info.records));
        }
        content.update(actual.as_bytes());
        for r in &part.records {
            hash_record(&mut content, r);
        }
    }
    Ok((hex::encode(content.finalize()), problems))
}

/// An opened shard directory: every record's location and label; pixels are read on
/// demand (positioned reads, so many threads share the files).
#[derive(Debug)]
pub struct ShardSet {
    dir: PathBuf,
    manifest: Manifest,
    files: Vec<File>,
    /// (shard, record) for every stored image, in manifest order.
    records: Vec<(u32, ShardRecord)>,
}

impl ShardSet {
    pub fn open(dir: &Path) -> Result<ShardSet> {
        let manifest = Manifest::read(dir)?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(DataError::format(
                dir.join(MANIFEST_FILE),
                format!("format_version {} (this build reads {FORMAT_VERSION})", manifest.format_version),
            ));
        }
        let shard_dir = dir.join(SHARD_DIR);
        let mut files = Vec::with_capacity(manifest.shards.len());
        let mut records = Vec::with_capacity(manifest.num_images());
        for (i, info) in manifest.shards.iter().enumerate() {
            let path = shard_dir.join(&info.file);
            let f = File::open(&path).map_err(|e| DataError::io(&path, e))?;
            let len = f.metadata().map_err(|e| DataError::io(&path, e))?.len();
            if len != info.bytes {
                return Err(DataError::Mismatch { path, detail: format!("{len} bytes, manifest says {}", info.bytes) });
            }
            files.push(f);
            let part: ShardPart = read_json(&shard_dir.join(format!("{}.json", shard_name(i))))?;
            records.extend(part.records.into_iter().map(|r| (i as u32, r)));
        }
        Ok(ShardSet { dir: dir.to_path_buf(), manifest, files, records })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn record(&self, i: usize) -> &ShardRecord {
        &self.records[i].1
    }
    pub fn origins(&self) -> Vec<Origin> {
        self.records.iter().map(|(_, r)| r.origin).collect()
    }
    pub fn strata(&self) -> Vec<u32> {
        self.records.iter().map(|(_, r)| r.label.stratum()).collect()
    }

    /// Reads image `i` into `buf` (resized to fit); returns (width, height).
    pub fn read_into(&self, i: usize, buf: &mut Vec<u8>) -> Result<(u32, u32)> {
        let (shard, r) = &self.records[i];
        let len = r.width as usize * r.height as usize * 3;
        buf.resize(len, 0);
        self.files[*shard as usize].read_exact_at(buf, r.offset).map_err(|e| {
            DataError::io(self.dir.join(SHARD_DIR).join(&self.manifest.shards[*shard as usize].file), e)
        })?;
        Ok((r.width, r.height))
    }

    pub fn read(&self, i: usize) -> Result<RgbPixels> {
        let mut data = Vec::new();
        let (width, height) = self.read_into(i, &mut data)?;
        Ok(RgbPixels { width, height, data })
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::missing("file", path)
        } else {
            DataError::io(path, e)
        }
    })?;
    serde_json::from_slice(&text).map_err(|e| DataError::Json { path: path.to_path_buf(), source: e })
}

pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension(tmp_suffix());
    let text = serde_json::to_vec_pretty(value).map_err(|e| DataError::Json { path: path.to_path_buf(), source: e })?;
    std::fs::write(&tmp, text).map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// A temp-file suffix unique to this process and call (several processes and threads may
/// build the same directory at once).
fn tmp_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!("tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// What a record contributes to the content hash; the build and `verify` must agree on it.
fn hash_record(content: &mut Sha256, r: &ShardRecord) {
    content.update(format!("{}\t{}\t{:?}\t{}x{}\n", r.key, r.origin.name(), r.label.classes(), r.width, r.height));
}
