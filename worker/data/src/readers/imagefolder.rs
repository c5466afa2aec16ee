//! ImageFolder: `root/train/CLASS/*.jpg|png`, optional `root/val/CLASS/...` and
//! `root/test/CLASS/...`. Classes are the sorted folder names of `train/`; every split
//! must have the same class folders.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::index::{DatasetIndex, ImageSource, Label, Origin, Record};
use crate::readers::{is_image_file, sorted_entries};

pub fn read(root: &Path) -> Result<DatasetIndex> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(DataError::missing("imagefolder train directory", train_dir));
    }
    let class_names: Vec<String> = sorted_entries(&train_dir, true)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if class_names.is_empty() {
        return Err(DataError::format(&train_dir, "no class folders"));
    }
    let mut records = Vec::new();
    for (split, origin) in [("train", Origin::Train), ("val", Origin::Val), ("test", Origin::Test)] {
        let split_dir = root.join(split);
        if !split_dir.is_dir() {
            continue;
        }
        let present: Vec<String> = sorted_entries(&split_dir, true)?
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for name in &present {
            if !class_names.contains(name) {
                return Err(DataError::format(
                    split_dir.join(name),
                    format!("class folder not present in {}", train_dir.display()),
                ));
            }
        }
        for (c, name) in class_names.iter().enumerate() {
            let class_dir = split_dir.join(name);
            if !class_dir.is_dir() {
                return Err(DataError::missing(format!("class folder of {name} in split {split}"), class_dir));
            }
            let files: Vec<_> = sorted_entries(&class_dir, false)?.into_iter().filter(|p| is_image_file(p)).collect();
            if files.is_empty() && origin == Origin::Train {
                return Err(DataError::format(&class_dir, "no images in class folder"));
            }
            for path in files {
                let key =
                    format!("{split}/{name}/{}", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default());
                records.push(Record {
                    source: ImageSource::File { path },
                    label: Label::Single(c as u32),
                    origin,
                    key,
                });
            }
        }
    }
    Ok(DatasetIndex { name: String::new(), class_names, multi_label: false, records })
}
