//! `prepare`: one of the twelve datasets, or a real image set shipped inside a registry
//! package, from its distribution's layout to a prepared directory (the shard format plus
//! manifest), resumable, on every core, optionally subsampled per class.

use std::path::Path;

use tsweep_proto::cell::ValPolicy;

use crate::adapters;
use crate::error::{DataError, Result};
use crate::shards::{self, BuildOptions, Manifest, ProgressFn};
use crate::split::Subsample;

/// A dataset `prepare` knows, with the sizes its distribution has: the paper's twelve
/// (its Datasets table) and the real image sets that ship inside registry packages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DatasetInfo {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub classes: usize,
    /// train + val images.
    pub trainval: usize,
    pub test: usize,
    /// The paper selects on the official val split (else a held-out part of train).
    pub official_val: bool,
    pub multi_label: bool,
    /// Counts are expected to differ (distributed as URLs).
    pub counts_may_differ: bool,
    /// One of the paper's twelve target datasets.
    pub in_paper: bool,
}

const fn info(
    name: &'static str,
    aliases: &'static [&'static str],
    classes: usize,
    trainval: usize,
    test: usize,
    official_val: bool,
) -> DatasetInfo {
    DatasetInfo {
        name,
        aliases,
        classes,
        trainval,
        test,
        official_val,
        multi_label: false,
        counts_may_differ: false,
        in_paper: true,
    }
}

pub const DATASETS: &[DatasetInfo] = &[
    info("food101", &["food-101", "food"], 101, 75_750, 25_250, false),
    info("cifar10", &["cifar-10"], 10, 50_000, 10_000, false),
    info("cifar100", &["cifar-100"], 100, 50_000, 10_000, false),
    DatasetInfo { counts_may_differ: true, ..info("birdsnap", &[], 500, 47_386, 2_443, false) },
    info("sun397", &["sun-397", "sun"], 397, 19_850, 19_850, false),
    info("stanford_cars", &["cars", "stanford-cars"], 196, 8_144, 8_041, false),
    info("fgvc_aircraft", &["aircraft", "fgvc-aircraft"], 100, 6_667, 3_333, true),
    DatasetInfo {
        multi_label: true,
        ..info("voc2007", &["voc", "voc-2007", "pascal_voc2007"], 20, 5_011, 4_952, true)
    },
    info("dtd", &[], 47, 3_760, 1_880, true),
    info("oxford_pets", &["pets", "oxford-iiit-pets", "oxford-pets"], 37, 3_680, 3_669, false),
    info("caltech101", &["caltech-101", "caltech"], 102, 3_060, 6_084, false),
    info("flowers102", &["flowers", "oxford-flowers", "oxford_flowers102", "flowers-102"], 102, 2_040, 6_149, true),
    // Real images inside registry packages (grayscale; see `adapters`).
    DatasetInfo { in_paper: false, ..info("fashion_mnist", &["fashion-mnist", "fmnist"], 10, 60_000, 10_000, false) },
    DatasetInfo { in_paper: false, ..info("mnist_digits", &["mnist", "mnist-digits"], 10, 8_000, 2_000, false) },
    DatasetInfo { in_paper: false, ..info("sklearn_digits", &["digits"], 10, 1_438, 359, false) },
    DatasetInfo { in_paper: false, ..info("lfw_subset", &["lfw"], 2, 150, 50, false) },
];

/// The dataset called `name` (canonical name or alias, case-insensitive).
pub fn lookup(name: &str) -> Result<&'static DatasetInfo> {
    let want = name.to_ascii_lowercase();
    DATASETS.iter().find(|d| d.name == want || d.aliases.contains(&want.as_str())).ok_or_else(|| {
        let names: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
        DataError::Invalid(format!("unknown dataset {name} (known: {})", names.join(", ")))
    })
}

/// Where adapters unpack single-file formats while a build runs (removed when it is done).
const SCRATCH_DIR: &str = "unpacked";

#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Stored short side (default 256; prepare at 378 to serve 331-pixel models unscaled).
    pub short_side: u32,
    /// None: the paper's policy (official val where the table says so, else held out).
    pub val_policy: Option<ValPolicy>,
    /// Held-out fraction for the default policy.
    pub held_out_fraction: f64,
    /// Seed of the held-out split and of Caltech-101's 30 per class.
    pub seed: u64,
    /// 0: every core.
    pub threads: usize,
    /// Keep at most this many images per class, chosen by a seeded shuffle (a smaller,
    /// still stratified dataset for quick sweeps).
    pub subsample: Option<Subsample>,
    /// Testing: stop after this many shards (simulates an interruption).
    pub stop_after_shards: Option<usize>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            short_side: 256,
            val_policy: None,
            held_out_fraction: 0.2,
            seed: 0,
            threads: 0,
            subsample: None,
            stop_after_shards: None,
        }
    }
}

impl PrepareOptions {
    pub fn policy_for(&self, info: &DatasetInfo) -> ValPolicy {
        self.val_policy.clone().unwrap_or(if info.official_val {
            ValPolicy::Official
        } else {
            ValPolicy::HeldOut { fraction: self.held_out_fraction, seed: self.seed }
        })
    }
}

/// Prepares `dataset` from `source` into `out`. An interrupted run resumes (shards
/// already written are kept) and ends with the same content hash; a finished one returns
/// its manifest at once. Undecodable or missing images are listed in the manifest and
/// skipped.
pub fn prepare(
    dataset: &str,
    source: &Path,
    out: &Path,
    opts: &PrepareOptions,
    progress: ProgressFn,
) -> Result<Manifest> {
    let info = lookup(dataset)?;
    let scratch = out.join(SCRATCH_DIR);
    let mut index = adapters::index(info.name, source, opts.seed, &scratch)?;
    if let Some(sub) = &opts.subsample {
        sub.apply(&mut index, opts.seed);
    }
    tracing::info!(dataset = info.name, images = index.records.len(), classes = index.num_classes(), "indexed");
    let build = BuildOptions {
        short_side: opts.short_side,
        val_policy: opts.policy_for(info),
        seed: opts.seed,
        source: format!("{} from {}", info.name, source.display()),
        threads: opts.threads,
        skip_undecodable: true,
        subsample: opts.subsample,
        stop_after_shards: opts.stop_after_shards,
    };
    let manifest = shards::build(&index, out, &build, progress)?;
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| DataError::io(&scratch, e))?;
    }
    if !manifest.skipped.is_empty() {
        tracing::warn!(
            dataset = info.name,
            skipped = manifest.skipped.len(),
            "images skipped (listed in the manifest)"
        );
    }
    Ok(manifest)
}
