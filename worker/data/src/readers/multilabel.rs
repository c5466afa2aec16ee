//! The multi-label list format (VOC2007 classification and any multi-label set):
//!
//! ```text
//! root/classes.txt        one class name per line (the label order)
//! root/train.txt          `relative/path.jpg<whitespace>name1,name2` per line
//! root/val.txt            optional
//! root/test.txt
//! root/trainval.txt       read as train when train.txt is absent
//! ```
//! Paths are relative to `root` and may not contain whitespace-only tails; the label
//! field is after the last run of whitespace; `-` means no labels. Lines starting with
//! `#` and blank lines are ignored.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::index::{DatasetIndex, ImageSource, Label, Origin, Record};
use crate::readers::read_text;

pub fn read(root: &Path) -> Result<DatasetIndex> {
    let classes_path = root.join("classes.txt");
    let class_names: Vec<String> = read_text(&classes_path, "multilabel class list")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if class_names.is_empty() {
        return Err(DataError::format(&classes_path, "no classes"));
    }
    let mut records = Vec::new();
    let train_file = if root.join("train.txt").is_file() { "train.txt" } else { "trainval.txt" };
    let mut found_train = false;
    for (file, origin, required) in
        [(train_file, Origin::Train, true), ("val.txt", Origin::Val, false), ("test.txt", Origin::Test, true)]
    {
        let path = root.join(file);
        if !path.is_file() {
            if required {
                return Err(DataError::missing("multilabel split list", path));
            }
            continue;
        }
        found_train |= origin == Origin::Train;
        let text = read_text(&path, "multilabel split list")?;
        for (lineno, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(cut) = line.rfind(char::is_whitespace) else {
                return Err(DataError::format(&path, format!("line {}: expected `path labels`", lineno + 1)));
            };
            let rel = line[..cut].trim();
            let labels_field = line[cut..].trim();
            let mut labels = Vec::new();
            if labels_field != "-" {
                for name in labels_field.split(',').filter(|s| !s.is_empty()) {
                    let Some(c) = class_names.iter().position(|n| n == name) else {
                        return Err(DataError::format(&path, format!("line {}: unknown class {name}", lineno + 1)));
                    };
                    labels.push(c as u32);
                }
            }
            labels.sort_unstable();
            labels.dedup();
            records.push(Record {
                source: ImageSource::File { path: root.join(rel) },
                label: Label::Multi(labels),
                origin,
                key: rel.to_string(),
            });
        }
    }
    if !found_train {
        return Err(DataError::missing("multilabel split list", root.join("train.txt")));
    }
    Ok(DatasetIndex { name: String::new(), class_names, multi_label: true, records })
}

/// Writes an index of file records in this format (used by the VOC adapter's tests and
/// the synthetic generator).
pub fn write_list(path: &Path, entries: &[(String, Vec<String>)]) -> Result<()> {
    let mut text = String::new();
    for (rel, labels) in entries {
        let field = if labels.is_empty() { "-".to_string() } else { labels.join(",") };
        text.push_str(&format!("{rel} {field}\n"));
    }
    std::fs::write(path, text).map_err(|e| DataError::io(path, e))
}
