//! A dataset's index: its classes and, per image, where the pixels are, its label(s) and
//! the split its distribution puts it in. Readers and adapters produce it; the shard
//! builder consumes it. It never holds pixels.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// The split a training run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Train minus the validation part (with an official val split: the official train).
    Train,
    /// The validation split used for selection (official, or held out of train).
    Val,
    /// Train and val together (the refit of the selected grid point).
    TrainVal,
    /// The test split.
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::TrainVal => "trainval",
            Split::Test => "test",
        }
    }
}

/// The split the dataset's own distribution puts an image in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Train,
    Val,
    Test,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Train => "train",
            Origin::Val => "val",
            Origin::Test => "test",
        }
    }
}

/// Class index (single-label) or the sorted set of class indices (multi-label).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Single(u32),
    Multi(Vec<u32>),
}

impl Label {
    /// The class used for stratification: the label itself, or the first class of a set.
    pub fn stratum(&self) -> u32 {
        match self {
            Label::Single(c) => *c,
            Label::Multi(cs) => cs.first().copied().unwrap_or(u32::MAX),
        }
    }
    pub fn classes(&self) -> Vec<u32> {
        match self {
            Label::Single(c) => vec![*c],
            Label::Multi(cs) => cs.clone(),
        }
    }
}

/// Where an image's pixels are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// An encoded image file (JPEG, PNG, ...).
    File { path: PathBuf },
    /// One record of a CIFAR binary batch file: 32x32 RGB planes at `offset`.
    CifarRecord { path: PathBuf, offset: u64 },
    /// Uncompressed 8-bit pixels at `offset` of a file, row-major, `channels` interleaved
    /// (1: grayscale, expanded to RGB at decode time; 3: RGB): what datasets packed into
    /// one file (IDX, JSON, NumPy) are unpacked to (`readers::packed`).
    Raw { path: PathBuf, offset: u64, width: u32, height: u32, channels: u8 },
}

impl ImageSource {
    /// A short human-readable name (for errors and the skipped-image list).
    pub fn describe(&self) -> String {
        match self {
            ImageSource::File { path } => path.display().to_string(),
            ImageSource::CifarRecord { path, offset } | ImageSource::Raw { path, offset, .. } => {
                format!("{}@{}", path.display(), offset)
            }
        }
    }

    /// The file the pixels are read from.
    pub fn path(&self) -> &std::path::Path {
        match self {
            ImageSource::File { path } | ImageSource::CifarRecord { path, .. } | ImageSource::Raw { path, .. } => path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub source: ImageSource,
    pub label: Label,
    pub origin: Origin,
    /// Stable identifier inside the dataset (relative path, `batch#index`): used in
    /// manifests and the content hash, never absolute.
    pub key: String,
}

/// A dataset as read from its on-disk format, before any pixels are decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetIndex {
    pub name: String,
    pub class_names: Vec<String>,
    pub multi_label: bool,
    pub records: Vec<Record>,
}

impl DatasetIndex {
    /// A single-label index as the adapters build it (the name is set by the caller).
    pub fn single_label(class_names: Vec<String>, records: Vec<Record>) -> Self {
        DatasetIndex { name: String::new(), class_names, multi_label: false, records }
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn count(&self, origin: Origin) -> usize {
        self.records.iter().filter(|r| r.origin == origin).count()
    }

    /// Checks every label is in range.
    pub fn validate(&self) -> Result<()> {
        let n = self.class_names.len() as u32;
        for r in &self.records {
            for c in r.label.classes() {
                if c >= n {
                    return Err(DataError::Invalid(format!(
                        "{}: label {c} of {} is out of range ({n} classes)",
                        self.name, r.key
                    )));
                }
            }
        }
        Ok(())
    }
}
