//! Readers of the raw formats a sweep can name (ImageFolder, CIFAR binary, multi-label list)
//! and of the single-file formats registry packages ship (`packed`).

pub mod cifar;
pub mod imagefolder;
pub mod multilabel;
pub mod packed;

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// File extensions read as images.
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

/// Sorted entries of a directory (dirs or files as asked).
pub fn sorted_entries(dir: &Path, want_dirs: bool) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::missing("directory", dir)
        } else {
            DataError::io(dir, e)
        }
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let is_dir = path.is_dir();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if is_dir == want_dirs && !hidden {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a text file, with a "missing" error naming it when absent.
pub fn read_text(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::missing(what, path)
        } else {
            DataError::io(path, e)
        }
    })
}
