//! data-bench: prepare throughput (JPEG decode + shrink to a short side, all cores), the
//! shrink alone (tsweep's Pillow-exact resize against the image crate's triangle filter, side
//! by side, alternating) and loader throughput (batches at S x S with random resized crop + flip).
//!
//! `cargo run --release -p tsweep-data --bin data-bench -- [--images N] [--width W]
//! [--height H] [--short-side 256] [--batch 256] [--size 224] [--batches 20] [--threads 0]`

use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tsweep_data::shards::{self, BuildOptions};
use tsweep_data::{Dataset, Loader, LoaderConfig, Mode, Split};
use tsweep_proto::cell::ValPolicy;

struct Args {
    images: usize,
    width: u32,
    height: u32,
    short_side: u32,
    batch: usize,
    size: u32,
    batches: usize,
    threads: usize,
}

fn parse() -> Result<Args, String> {
    let mut a =
        Args { images: 512, width: 500, height: 375, short_side: 256, batch: 256, size: 224, batches: 20, threads: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--images" => a.images = num(&value)?,
            "--width" => a.width = num(&value)? as u32,
            "--height" => a.height = num(&value)? as u32,
            "--short-side" => a.short_side = num(&value)? as u32,
            "--batch" => a.batch = num(&value)?,
            "--size" => a.size = num(&value)? as u32,
            "--batches" => a.batches = num(&value)?,
            "--threads" => a.threads = num(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

/// Natural-ish JPEGs: smooth gradients, blobs and noise, quality 90.
fn write_jpegs(root: &Path, a: &Args) -> Result<u64, String> {
    let mut bytes = 0;
    for i in 0..a.images {
        let dir = root.join("train").join(format!("c{}", i % 10));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
        let (fx, fy): (f32, f32) = (rng.random_range(0.01..0.1), rng.random_range(0.01..0.1));
        let img = image::RgbImage::from_fn(a.width, a.height, |x, y| {
            let n: f32 = rng.random_range(-20.0..20.0);
            let v = |p: f32| (p + n).clamp(0.0, 255.0) as u8;
            image::Rgb([
                v(128.0 + 100.0 * (x as f32 * fx).sin()),
                v(128.0 + 100.0 * (y as f32 * fy).cos()),
                v(((x + y) % 256) as f32),
            ])
        });
        let path = dir.join(format!("{i:06}.jpg"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| e.to_string())?);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 90)
            .encode_image(&img)
            .map_err(|e| e.to_string())?;
        drop(file);
        bytes += std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    }
    Ok(bytes)
}

/// The shrink of decoded images to the short side, one thread: `image_ops::resize_like_pil`
/// (what the shards store) against `image::imageops::resize` with its triangle filter, in
/// alternating rounds over the same images; medians of 7 rounds and their ratio.
fn compare_shrink(index: &tsweep_data::DatasetIndex, short_side: u32) -> Result<(), String> {
    use tsweep_data::image_ops::{decode, resize_like_pil, resized_size};
    let images: Vec<_> = index
        .records
        .iter()
        .take(64)
        .map(|r| decode(&r.source))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let buffers: Vec<image::RgbImage> = images
        .iter()
        .map(|img| image::RgbImage::from_raw(img.width, img.height, img.data.clone()).ok_or("bad image"))
        .collect::<Result<_, _>>()?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let start = Instant::now();
        for img in &images {
            let size = resized_size(img.width, img.height, short_side);
            std::hint::black_box(resize_like_pil(&img.data, (img.width, img.height), size));
        }
        ours.push(images.len() as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for buf in &buffers {
            let (w, h) = resized_size(buf.width(), buf.height(), short_side);
            std::hint::black_box(image::imageops::resize(buf, w, h, image::imageops::FilterType::Triangle));
        }
        theirs.push(images.len() as f64 / start.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));
    println!(
        "shrink to short side {short_side}, 1 thread, {} images x 7 rounds: Pillow-exact {ours:.0} images/s, image crate triangle {theirs:.0} images/s (ratio {:.2})",
        images.len(),
        ours / theirs
    );
    Ok(())
}

fn main() -> Result<(), String> {
    let a = parse()?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = if a.threads == 0 { cores } else { a.threads };
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let raw = tmp.path().join("raw");
    let bytes = write_jpegs(&raw, &a)?;
    println!(
        "data-bench: {} JPEGs {}x{} ({} KiB avg), {} cores, {} threads",
        a.images,
        a.width,
        a.height,
        bytes / a.images.max(1) as u64 / 1024,
        cores,
        threads
    );
    let index = tsweep_data::readers::imagefolder::read(&raw).map_err(|e| e.to_string())?;
    for t in [1, threads] {
        let out = tmp.path().join(format!("prepared-{t}"));
        let mut opts = BuildOptions::new(a.short_side);
        opts.threads = t;
        opts.val_policy = ValPolicy::HeldOut { fraction: 0.0, seed: 0 };
        let start = Instant::now();
        shards::build(&index, &out, &opts, &|_| {}).map_err(|e| e.to_string())?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "prepare (decode + shrink to short side {}), {t} thread(s): {:.1} images/s ({:.1} per thread)",
            a.short_side,
            a.images as f64 / secs,
            a.images as f64 / secs / t as f64
        );
        if t == threads {
            break;
        }
    }
    compare_shrink(&index, a.short_side)?;
    let prepared = tmp.path().join(format!("prepared-{threads}"));
    let ds = Dataset::from_dir(&prepared, ValPolicy::HeldOut { fraction: 0.0, seed: 0 }).map_err(|e| e.to_string())?;
    for (label, mode) in [
        ("train (random resized crop + flip)", Mode::Train { start_step: 0 }),
        ("eval (resize + center crop)", Mode::Eval),
    ] {
        for t in [1, threads] {
            let split = if matches!(mode, Mode::Eval) { Split::TrainVal } else { Split::Train };
            let view = ds.split(split).map_err(|e| e.to_string())?;
            let mut cfg = LoaderConfig::for_image_size(a.batch, a.size, 0);
            cfg.threads = t;
            cfg.prefetch = 2 * t;
            let mut loader = Loader::new(view, cfg, mode).map_err(|e| e.to_string())?;
            if matches!(mode, Mode::Train { .. }) {
                // Let the prefetch queue fill once: steady state is what training sees.
                loader.next_batch().map_err(|e| e.to_string())?;
            }
            let start = Instant::now();
            let mut images = 0usize;
            let mut batches = 0usize;
            while batches < a.batches {
                match loader.next_batch().map_err(|e| e.to_string())? {
                    Some(b) => images += b.batch_size,
                    None => break,
                }
                batches += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "loader {label} at {}x{}, batch {}, {t} thread(s): {:.2} batches/s, {:.0} images/s ({:.0} per thread)",
                a.size,
                a.size,
                a.batch,
                batches as f64 / secs,
                images as f64 / secs,
                images as f64 / secs / t as f64
            );
            if t == threads {
                break;
            }
        }
    }
    Ok(())
}
