//! Synthetic datasets in the raw formats, learnable by a small CNN in a few hundred
//! steps: every class is a (shape, hue) pair drawn at a random place and size on a noisy
//! background. Deterministic for a seed.

use std::path::Path;
use std::str::FromStr;

use image::{ImageFormat, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tsweep_proto::cell::DatasetFormat;

use crate::error::{DataError, Result};
use crate::readers::multilabel::write_list;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthKind {
    /// `train/`, `val/` (when val_per_class > 0), `test/` class folders of PNGs.
    Imagefolder,
    /// CIFAR-10 binary batches (10 classes, 32x32).
    Cifar10,
    /// CIFAR-100 binary (the given number of fine classes up to 100, coarse = fine / 5).
    Cifar100,
    /// The multi-label list format with 1–3 objects per image.
    Multilabel,
}

impl SynthKind {
    pub fn format(self) -> DatasetFormat {
        match self {
            SynthKind::Imagefolder => DatasetFormat::Imagefolder,
            SynthKind::Cifar10 | SynthKind::Cifar100 => DatasetFormat::CifarBinary,
            SynthKind::Multilabel => DatasetFormat::MultilabelList,
        }
    }
}

impl FromStr for SynthKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "imagefolder" => Ok(SynthKind::Imagefolder),
            "cifar10" | "cifar-10" | "cifar-binary" => Ok(SynthKind::Cifar10),
            "cifar100" | "cifar-100" => Ok(SynthKind::Cifar100),
            "multilabel" | "multilabel-list" => Ok(SynthKind::Multilabel),
            other => Err(DataError::Invalid(format!(
                "unknown synthetic dataset kind {other} (imagefolder, cifar10, cifar100, multilabel)"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    pub classes: usize,
    pub train_per_class: usize,
    /// 0: no val split.
    pub val_per_class: usize,
    pub test_per_class: usize,
    /// Side of the generated images (CIFAR is always 32).
    pub image_size: u32,
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions { classes: 4, train_per_class: 40, val_per_class: 10, test_per_class: 10, image_size: 64, seed: 0 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    pub format: DatasetFormat,
    pub class_names: Vec<String>,
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// Writes a synthetic dataset of `kind` into `out_dir` (created; existing files of the
/// same names are overwritten).
pub fn make_dataset(kind: SynthKind, out_dir: &Path, opts: &SynthOptions) -> Result<SynthSummary> {
    let classes = match kind {
        SynthKind::Cifar10 => 10,
        SynthKind::Cifar100 => opts.classes.clamp(1, 100),
        _ => opts.classes,
    };
    if classes == 0 || opts.train_per_class == 0 {
        return Err(DataError::Invalid("synthetic dataset needs classes and train images".into()));
    }
    if opts.image_size < 8 {
        return Err(DataError::Invalid(format!("image size {} is below 8", opts.image_size)));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| DataError::io(out_dir, e))?;
    let class_names: Vec<String> = (0..classes).map(|c| format!("class_{c:02}")).collect();
    let splits = [("train", opts.train_per_class), ("val", opts.val_per_class), ("test", opts.test_per_class)];
    let mut summary = SynthSummary {
        format: kind.format(),
        class_names: class_names.clone(),
        train: classes * opts.train_per_class,
        val: classes * opts.val_per_class,
        test: classes * opts.test_per_class,
    };
    match kind {
        SynthKind::Imagefolder => {
            for (split_no, (split, per_class)) in splits.iter().enumerate() {
                if *per_class == 0 {
                    continue;
                }
                for (c, name) in class_names.iter().enumerate() {
                    let dir = out_dir.join(split).join(name);
                    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
                    for i in 0..*per_class {
                        let mut rng = rng_for(opts.seed, split_no, c, i);
                        let img = draw(opts.image_size, &[c], classes, &mut rng);
                        save_png(&img, &dir.join(format!("img_{i:05}.png")))?;
                    }
                }
            }
        }
        SynthKind::Cifar10 | SynthKind::Cifar100 => {
            let cifar100 = kind == SynthKind::Cifar100;
            // CIFAR has no val split: val images go to train.
            let per_train = opts.train_per_class + opts.val_per_class;
            summary.train = classes * per_train;
            summary.val = 0;
            let train = cifar_records(opts.seed, 0, classes, per_train, cifar100);
            let test = cifar_records(opts.seed, 2, classes, opts.test_per_class, cifar100);
            if cifar100 {
                write_file(&out_dir.join("train.bin"), &train.concat())?;
                write_file(&out_dir.join("test.bin"), &test.concat())?;
                let mut fine: Vec<String> = class_names.clone();
                fine.extend((classes..100).map(|c| format!("unused_{c:02}")));
                write_file(&out_dir.join("fine_label_names.txt"), (fine.join("\n") + "\n").as_bytes())?;
                let coarse: Vec<String> = (0..20).map(|c| format!("coarse_{c:02}")).collect();
                write_file(&out_dir.join("coarse_label_names.txt"), (coarse.join("\n") + "\n").as_bytes())?;
                let mut names = class_names.clone();
                names.extend((classes..100).map(|c| format!("unused_{c:02}")));
                summary.class_names = names;
            } else {
                let per_file = train.len().div_ceil(5);
                for b in 0..5 {
                    let lo = (b * per_file).min(train.len());
                    let hi = ((b + 1) * per_file).min(train.len());
                    write_file(&out_dir.join(format!("data_batch_{}.bin", b + 1)), &train[lo..hi].concat())?;
                }
                write_file(&out_dir.join("test_batch.bin"), &test.concat())?;
                write_file(&out_dir.join("batches.meta.txt"), (class_names.join("\n") + "\n\n").as_bytes())?;
            }
        }
        SynthKind::Multilabel => {
            let images = out_dir.join("images");
            std::fs::create_dir_all(&images).map_err(|e| DataError::io(&images, e))?;
            write_file(&out_dir.join("classes.txt"), (class_names.join("\n") + "\n").as_bytes())?;
            for (split_no, (split, per_class)) in splits.iter().enumerate() {
                if *per_class == 0 {
                    continue;
                }
                let mut entries = Vec::new();
                for i in 0..classes * per_class {
                    let mut rng = rng_for(opts.seed, split_no, 0, i);
                    let first = i % classes;
                    let extra = rng.random_range(0..3usize).min(classes - 1);
                    let mut present = vec![first];
                    while present.len() < 1 + extra {
                        let c = rng.random_range(0..classes);
                        if !present.contains(&c) {
                            present.push(c);
                        }
                    }
                    let img = draw(opts.image_size, &present, classes, &mut rng);
                    let rel = format!("images/{split}_{i:05}.png");
                    save_png(&img, &out_dir.join(&rel))?;
                    present.sort_unstable();
                    entries.push((rel, present.iter().map(|&c| class_names[c].clone()).collect()));
                }
                write_list(&out_dir.join(format!("{split}.txt")), &entries)?;
            }
        }
    }
    Ok(summary)
}

fn rng_for(seed: u64, split: usize, class: usize, i: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((split as u64) << 48) ^ ((class as u64) << 24) ^ i as u64);
    rng
}

fn cifar_records(seed: u64, split: usize, classes: usize, per_class: usize, cifar100: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(classes * per_class);
    // Interleave classes, as the real batches do.
    for i in 0..per_class {
        for c in 0..classes {
            let mut rng = rng_for(seed, split, c, i);
            let img = draw(32, &[c], classes, &mut rng);
            let mut rec = Vec::with_capacity(3074);
            if cifar100 {
                rec.push((c / 5) as u8);
            }
            rec.push(c as u8);
            let raw = img.as_raw();
            for ch in 0..3 {
                rec.extend((0..1024).map(|p| raw[3 * p + ch]));
            }
            out.push(rec);
        }
    }
    out
}

/// Colour of a class: hues spread by the golden ratio, shape = class % 4.
fn class_colour(c: usize, classes: usize) -> [f32; 3] {
    let groups = classes.div_ceil(4).max(1);
    let hue = ((c / 4) as f32 / groups as f32 + (c % 4) as f32 * 0.618) % 1.0;
    hsv(hue, 0.85, 0.95)
}

fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    let rgb = match i as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [rgb.0 * 255.0, rgb.1 * 255.0, rgb.2 * 255.0]
}

fn draw(size: u32, present: &[usize], classes: usize, rng: &mut ChaCha8Rng) -> RgbImage {
    let base: f32 = rng.random_range(40.0..110.0);
    let mut img = RgbImage::from_fn(size, size, |_, _| {
        let v = (base + rng.random_range(-25.0f32..25.0)).clamp(0.0, 255.0) as u8;
        image::Rgb([v, v, v])
    });
    let s = size as f32;
    for &c in present {
        let colour = class_colour(c, classes);
        let scale = if present.len() > 1 { 0.6 } else { 1.0 };
        let r = s * rng.random_range(0.18..0.32) * scale;
        let cx = rng.random_range(r..(s - r).max(r + 1.0));
        let cy = rng.random_range(r..(s - r).max(r + 1.0));
        let jitter: f32 = rng.random_range(0.85..1.0);
        let x0 = (cx - r).floor().max(0.0) as u32;
        let x1 = ((cx + r).ceil() as u32).min(size);
        let y0 = (cy - r).floor().max(0.0) as u32;
        let y1 = ((cy + r).ceil() as u32).min(size);
        for y in y0..y1 {
            for x in x0..x1 {
                let dx = (x as f32 + 0.5 - cx) / r;
                let dy = (y as f32 + 0.5 - cy) / r;
                let inside = match c % 4 {
                    0 => dx * dx + dy * dy <= 1.0,
                    1 => dx.abs() <= 0.8 && dy.abs() <= 0.8,
                    2 => (-0.9..=0.9).contains(&dy) && dx.abs() <= (dy + 0.9) / 1.8,
                    _ => (dx.abs() <= 0.25 && dy.abs() <= 0.95) || (dy.abs() <= 0.25 && dx.abs() <= 0.95),
                };
                if inside {
                    let px = [(colour[0] * jitter) as u8, (colour[1] * jitter) as u8, (colour[2] * jitter) as u8];
                    img.put_pixel(x, y, image::Rgb(px));
                }
            }
        }
    }
    img
}

fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, ImageFormat::Png).map_err(|e| DataError::format(path, format!("cannot write png: {e}")))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| DataError::io(path, e))
}
