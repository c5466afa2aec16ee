//! CIFAR-10/100 binary as distributed.
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` .. `data_batch_5.bin`,
//! `test_batch.bin`, records of 3073 bytes (label, 3072 pixel bytes in R, G, B planes),
//! class names in `batches.meta.txt`. CIFAR-100 (`cifar-100-binary/`): `train.bin`,
//! `test.bin`, records of 3074 bytes (coarse label, fine label, pixels), names in
//! `fine_label_names.txt`. The fine labels are the classes.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::image_ops::CIFAR_PIXELS;
use crate::index::{DatasetIndex, ImageSource, Label, Origin, Record};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    Cifar10,
    Cifar100,
}

impl CifarKind {
    pub fn record_size(self) -> usize {
        match self {
            CifarKind::Cifar10 => CIFAR_PIXELS + 1,
            CifarKind::Cifar100 => CIFAR_PIXELS + 2,
        }
    }
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
    pub fn train_files(self) -> Vec<String> {
        match self {
            CifarKind::Cifar10 => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            CifarKind::Cifar100 => vec!["train.bin".into()],
        }
    }
    pub fn test_file(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "test_batch.bin",
            CifarKind::Cifar100 => "test.bin",
        }
    }
    fn names_file(self) -> &'static str {
        match self {
            CifarKind::Cifar10 => "batches.meta.txt",
            CifarKind::Cifar100 => "fine_label_names.txt",
        }
    }
}

/// Finds the batch directory under `root` (itself or the distribution's folder) and its kind.
pub fn locate(root: &Path) -> Result<(PathBuf, CifarKind)> {
    for dir in [root.to_path_buf(), root.join("cifar-10-batches-bin"), root.join("cifar-100-binary")] {
        if dir.join("data_batch_1.bin").is_file() || dir.join("test_batch.bin").is_file() {
            return Ok((dir, CifarKind::Cifar10));
        }
        if dir.join("train.bin").is_file() || dir.join("test.bin").is_file() {
            return Ok((dir, CifarKind::Cifar100));
        }
    }
    Err(DataError::missing("cifar batch files (data_batch_1.bin or train.bin)", root))
}

pub fn read(root: &Path) -> Result<DatasetIndex> {
    let (dir, kind) = locate(root)?;
    read_kind(&dir, kind)
}

pub fn read_kind(dir: &Path, kind: CifarKind) -> Result<DatasetIndex> {
    let mut records = Vec::new();
    for name in kind.train_files() {
        read_batch(&dir.join(&name), kind, Origin::Train, &mut records)?;
    }
    read_batch(&dir.join(kind.test_file()), kind, Origin::Test, &mut records)?;
    let names_path = dir.join(kind.names_file());
    let class_names = match std::fs::read_to_string(&names_path) {
        Ok(text) => {
            let names: Vec<String> =
                text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
            if names.len() != kind.num_classes() {
                return Err(DataError::format(
                    &names_path,
                    format!("{} class names, expected {}", names.len(), kind.num_classes()),
                ));
            }
            names
        }
        Err(_) => (0..kind.num_classes()).map(|c| format!("class_{c}")).collect(),
    };
    Ok(DatasetIndex { name: String::new(), class_names, multi_label: false, records })
}

fn read_batch(path: &Path, kind: CifarKind, origin: Origin, out: &mut Vec<Record>) -> Result<()> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::missing("cifar batch file", path)
        } else {
            DataError::io(path, e)
        }
    })?;
    let len = file.metadata().map_err(|e| DataError::io(path, e))?.len();
    let rs = kind.record_size() as u64;
    if len == 0 || len % rs != 0 {
        return Err(DataError::format(
            path,
            format!("size {len} is not a multiple of the {rs}-byte record of {kind:?}"),
        ));
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut rec = vec![0u8; rs as usize];
    let batch = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for i in 0..len / rs {
        reader.read_exact(&mut rec).map_err(|e| DataError::io(path, e))?;
        let label = match kind {
            CifarKind::Cifar10 => rec[0],
            CifarKind::Cifar100 => rec[1],
        };
        if label as usize >= kind.num_classes() {
            return Err(DataError::format(path, format!("record {i}: label {label} out of range")));
        }
        let label_bytes = rs - CIFAR_PIXELS as u64;
        out.push(Record {
            source: ImageSource::CifarRecord { path: path.to_path_buf(), offset: i * rs + label_bytes },
            label: Label::Single(u32::from(label)),
            origin,
            key: format!("{batch}#{i}"),
        });
    }
    Ok(())
}
