//! `tsweep-worker make-dataset` and `tsweep-worker data prepare|verify`: thin command-line
//! wrappers over the data crate (`tsweep-data`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use tsweep_data::{DataError, PrepareOptions, SynthKind, SynthOptions, SynthSummary, VerifyReport};

/// Ready-made sets of synthetic datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// What `examples/synthetic.toml` reads: `<out>/shapes` (ImageFolder, 4 classes, 32 px)
    /// and `<out>/cifar-synth` (CIFAR-10 binary).
    Synthetic,
}

/// `make-dataset`: writes small learnable synthetic datasets (class-dependent shapes and
/// colours) in the real on-disk formats, for tests and `examples/synthetic.toml`.
#[derive(Debug, Clone, clap::Args)]
pub struct MakeDatasetArgs {
    /// Output directory (the dataset itself, or the parent of a preset's datasets).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A ready-made set of datasets instead of one `--kind`.
    #[arg(long, value_enum, conflicts_with = "kind")]
    pub preset: Option<Preset>,
    /// imagefolder | cifar10 | cifar100 | multilabel
    #[arg(long, value_name = "KIND", required_unless_present = "preset")]
    pub kind: Option<String>,
    #[arg(long, default_value_t = 4)]
    pub classes: usize,
    #[arg(long, default_value_t = 40)]
    pub train_per_class: usize,
    /// 0: no official val split (the sweep then holds out part of train).
    #[arg(long, default_value_t = 10)]
    pub val_per_class: usize,
    #[arg(long, default_value_t = 10)]
    pub test_per_class: usize,
    /// Image side in pixels (CIFAR is always 32).
    #[arg(long, default_value_t = 64)]
    pub image_size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `make-dataset`; returns one summary line per dataset written.
pub fn make_dataset(args: &MakeDatasetArgs) -> Result<Vec<String>, DataError> {
    let plan: Vec<(SynthKind, PathBuf, SynthOptions)> = match (args.preset, &args.kind) {
        (Some(Preset::Synthetic), _) => vec![
            (
                SynthKind::Imagefolder,
                args.out.join("shapes"),
                SynthOptions {
                    classes: 4,
                    train_per_class: 60,
                    val_per_class: 0,
                    test_per_class: 20,
                    image_size: 32,
                    seed: args.seed,
                },
            ),
            (
                SynthKind::Cifar10,
                args.out.join("cifar-synth"),
                SynthOptions {
                    classes: 10,
                    train_per_class: 40,
                    val_per_class: 0,
                    test_per_class: 10,
                    image_size: 32,
                    seed: args.seed.wrapping_add(1),
                },
            ),
        ],
        (None, Some(kind)) => vec![(
            kind.parse::<SynthKind>()?,
            args.out.clone(),
            SynthOptions {
                classes: args.classes,
                train_per_class: args.train_per_class,
                val_per_class: args.val_per_class,
                test_per_class: args.test_per_class,
                image_size: args.image_size,
                seed: args.seed,
            },
        )],
        (None, None) => return Err(DataError::Invalid("make-dataset: give --kind or --preset".to_string())),
    };
    plan.into_iter()
        .map(|(kind, out, options)| {
            let summary = tsweep_data::make_dataset(kind, &out, &options)?;
            Ok(describe(&out, &summary))
        })
        .collect()
}

fn describe(out: &Path, summary: &SynthSummary) -> String {
    format!(
        "{}: {:?}, {} classes, {} train / {} val / {} test images",
        out.display(),
        summary.format,
        summary.class_names.len(),
        summary.train,
        summary.val,
        summary.test
    )
}

/// `data prepare`: decode and resize a downloaded dataset once into prepared shards.
#[derive(Debug, Clone, clap::Args)]
pub struct PrepareArgs {
    /// The dataset's adapter name (e.g. cifar10, voc2007, flowers102).
    #[arg(long, value_name = "NAME")]
    pub dataset: String,
    /// The dataset as downloaded.
    #[arg(long, value_name = "DIR")]
    pub source: PathBuf,
    /// Where the manifest and shards go (an interrupted run resumes).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Stored short side in pixels.
    #[arg(long, default_value_t = 256)]
    pub short_side: u32,
    /// Held-out fraction of train for datasets without an official val split.
    #[arg(long, default_value_t = 0.2)]
    pub held_out_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Decoding threads (0: every core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Keep at most this many train (+ val) images per class (seeded; for quick sweeps).
    #[arg(long, value_name = "N")]
    pub max_train_per_class: Option<usize>,
    /// Keep at most this many test images per class (seeded).
    #[arg(long, value_name = "N")]
    pub max_test_per_class: Option<usize>,
}

/// Runs `data prepare`, printing progress to stderr; returns a summary line.
pub fn prepare(args: &PrepareArgs) -> Result<String, DataError> {
    let options = PrepareOptions {
        short_side: args.short_side,
        held_out_fraction: args.held_out_fraction,
        seed: args.seed,
        threads: args.threads,
        subsample: (args.max_train_per_class.is_some() || args.max_test_per_class.is_some()).then_some(
            tsweep_data::Subsample {
                trainval_per_class: args.max_train_per_class,
                test_per_class: args.max_test_per_class,
            },
        ),
        ..PrepareOptions::default()
    };
    let last_percent = AtomicUsize::new(usize::MAX);
    let progress = |p: tsweep_data::Progress| {
        let percent = (p.done * 100).checked_div(p.total).unwrap_or(100);
        if last_percent.swap(percent, Ordering::Relaxed) != percent {
            eprintln!("prepare {}: {}/{} images ({percent}%), {} skipped", args.dataset, p.done, p.total, p.skipped);
        }
    };
    let manifest = tsweep_data::prepare(&args.dataset, &args.source, &args.out, &options, &progress)?;
    Ok(format!(
        "{}: {} classes, splits {:?}, {} shards, content hash {}",
        args.out.display(),
        manifest.class_names.len(),
        manifest.split_counts,
        manifest.shards.len(),
        manifest.content_hash
    ))
}

/// Runs `data verify DIR`.
pub fn verify(dir: &Path) -> Result<VerifyReport, DataError> {
    tsweep_data::verify(dir)
}
