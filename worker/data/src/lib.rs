//! tsweep-data: datasets in their real on-disk formats, the prepared-shard cache, the
//! augmenting loader, synthetic datasets and the twelve paper datasets' adapters. No
//! libtorch: batches are plain `u8` HWC images that the trainer turns into tensors.
//! See docs/ARCHITECTURE.md ("Data").
//!
//! Typical use (the trainer):
//! ```no_run
//! # use tsweep_data::*;
//! # fn f(spec: &tsweep_proto::cell::DatasetSpec) -> Result<()> {
//! let ds = Dataset::open(spec, std::path::Path::new("/cache"), 256, &|_p| {})?;
//! let train = ds.split(Split::Train)?;
//! let cfg = LoaderConfig::for_image_size(256, 224, 42);
//! let mut loader = Loader::new(train, cfg, Mode::Train { start_step: 0 })?;
//! if let Some(batch) = loader.next_batch()? {
//!     assert_eq!(batch.images.len(), batch.batch_size * 224 * 224 * 3);
//! }
//! # Ok(()) }
//! ```

pub mod adapters;
pub mod dataset;
pub mod error;
pub mod image_ops;
pub mod index;
pub mod loader;
pub mod mat;
pub mod prepare;
pub mod readers;
pub mod shards;
pub mod split;
pub mod synth;
pub mod verify;

pub use dataset::{cache_dir_for, read_index, Dataset, SplitView};
pub use error::{DataError, Result};
pub use index::{DatasetIndex, ImageSource, Label, Origin, Record, Split};
pub use loader::{default_resize_short, steps_per_epoch, Batch, Loader, LoaderConfig, Mode, Targets};
pub use prepare::{prepare, DatasetInfo, PrepareOptions, DATASETS};
pub use shards::{Manifest, Progress, ProgressFn, ShardSet};
pub use split::Subsample;
pub use synth::{make_dataset, SynthKind, SynthOptions, SynthSummary};
pub use verify::{verify, VerifyReport};
