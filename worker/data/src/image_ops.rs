//! Pixel work: decoding a source to RGB, shrinking to a short side, and the crop-and-
//! resample that both augmentations reduce to.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use rand::Rng;

use crate::error::{DataError, Result};
use crate::index::ImageSource;

/// Size in bytes of one CIFAR image (3 planes of 32x32).
pub const CIFAR_PIXELS: usize = 3 * 32 * 32;

/// An image decoded to interleaved RGB (HWC, u8).
#[derive(Debug, Clone, PartialEq)]
pub struct RgbPixels {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Decodes an image source to RGB.
pub fn decode(source: &ImageSource) -> Result<RgbPixels> {
    match source {
        ImageSource::File { path } => decode_file(path),
        ImageSource::CifarRecord { path, offset } => {
            let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
            file.seek(SeekFrom::Start(*offset)).map_err(|e| DataError::io(path, e))?;
            let mut planes = vec![0u8; CIFAR_PIXELS];
            file.read_exact(&mut planes).map_err(|e| DataError::io(path, e))?;
            Ok(cifar_planes_to_rgb(&planes))
        }
        ImageSource::Raw { path, offset, width, height, channels } => {
            let pixels = (*width as usize) * (*height as usize);
            let mut data = vec![0u8; pixels * usize::from(*channels)];
            let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
            file.seek(SeekFrom::Start(*offset)).map_err(|e| DataError::io(path, e))?;
            file.read_exact(&mut data).map_err(|e| DataError::io(path, e))?;
            let data = match channels {
                3 => data,
                1 => data.iter().flat_map(|&v| [v, v, v]).collect(),
                c => return Err(DataError::format(path, format!("{c} channels: only 1 (gray) or 3 (RGB) are read"))),
            };
            Ok(RgbPixels { width: *width, height: *height, data })
        }
    }
}

pub fn decode_file(path: &Path) -> Result<RgbPixels> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| DataError::Decode { path: path.to_path_buf(), detail: e.to_string() })?;
    let rgb = img.to_rgb8();
    let (width, height) = rgb.dimensions();
    if width == 0 || height == 0 {
        return Err(DataError::Decode { path: path.to_path_buf(), detail: "empty image".into() });
    }
    Ok(RgbPixels { width, height, data: rgb.into_raw() })
}

/// CIFAR stores R, G and B planes one after the other; the rest of the crate is HWC.
pub fn cifar_planes_to_rgb(planes: &[u8]) -> RgbPixels {
    let n = 32 * 32;
    let mut data = vec![0u8; 3 * n];
    for i in 0..n {
        data[3 * i] = planes[i];
        data[3 * i + 1] = planes[n + i];
        data[3 * i + 2] = planes[2 * n + i];
    }
    RgbPixels { width: 32, height: 32, data }
}

/// Shrinks the image so that its short side is `short_side` (never enlarges), with an
/// antialiasing triangle filter.
pub fn shrink_to_short_side(img: RgbPixels, short_side: u32) -> RgbPixels {
    let short = img.width.min(img.height);
    if short <= short_side || short_side == 0 {
        return img;
    }
    let scale = short_side as f64 / short as f64;
    let (nw, nh) = if img.width <= img.height {
        (short_side, ((img.height as f64 * scale).round() as u32).max(1))
    } else {
        (((img.width as f64 * scale).round() as u32).max(1), short_side)
    };
    let Some(buf) = RgbImage::from_raw(img.width, img.height, img.data) else {
        return RgbPixels { width: 0, height: 0, data: Vec::new() };
    };
    let out = image::imageops::resize(&buf, nw, nh, FilterType::Triangle);
    RgbPixels { width: nw, height: nh, data: out.into_raw() }
}

/// A crop rectangle in source pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

/// torchvision's RandomResizedCrop parameters: area fraction in [0.08, 1], log-uniform
/// aspect ratio in [3/4, 4/3], ten tries, then the central crop clamped to that ratio.
pub fn random_resized_crop<R: Rng>(width: u32, height: u32, rng: &mut R) -> Rect {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..=1.0);
        let ratio = rng.random_range(lo..=hi).exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w && ch <= h {
            let x = rng.random_range(0..=(width - cw as u32)) as f32;
            let y = rng.random_range(0..=(height - ch as u32)) as f32;
            return Rect { x, y, width: cw as f32, height: ch as f32 };
        }
    }
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < 0.75 {
        (w, (w / 0.75).round().min(h))
    } else if in_ratio > 4.0 / 3.0 {
        ((h * 4.0 / 3.0).round().min(w), h)
    } else {
        (w, h)
    };
    Rect { x: ((w - cw) / 2.0) as f32, y: ((h - ch) / 2.0) as f32, width: cw as f32, height: ch as f32 }
}

/// "Resize the short side to `resize_short`, then take the central `crop`x`crop`",
/// expressed as a rectangle of the stored image (whatever its stored size).
pub fn center_crop(width: u32, height: u32, resize_short: u32, crop: u32) -> Rect {
    let short = width.min(height) as f32;
    let side = (crop as f32 * short / resize_short.max(1) as f32).min(width as f32).min(height as f32);
    Rect { x: (width as f32 - side) / 2.0, y: (height as f32 - side) / 2.0, width: side, height: side }
}

struct Tap {
    i0: usize,
    i1: usize,
    w1: f32,
}

fn taps(start: f32, extent: f32, out: u32, limit: u32) -> Vec<Tap> {
    let step = extent / out as f32;
    let max = (limit - 1) as f32;
    (0..out)
        .map(|o| {
            let s = (start + (o as f32 + 0.5) * step - 0.5).clamp(0.0, max);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(limit as usize - 1);
            Tap { i0, i1, w1: s - i0 as f32 }
        })
        .collect()
}

/// Bilinear resampling of `rect` of `src` (HWC RGB, `size` = (width, height)) into `out`
/// (`out_size`, HWC RGB),
/// optionally mirrored horizontally.
pub fn resample_into(src: &[u8], size: (u32, u32), rect: Rect, out_size: (u32, u32), flip: bool, out: &mut [u8]) {
    let ((width, height), (out_w, out_h)) = (size, out_size);
    let xs = taps(rect.x, rect.width, out_w, width);
    let ys = taps(rect.y, rect.height, out_h, height);
    let stride = width as usize * 3;
    let ow = out_w as usize;
    for (oy, ty) in ys.iter().enumerate() {
        let row0 = &src[ty.i0 * stride..ty.i0 * stride + stride];
        let row1 = &src[ty.i1 * stride..ty.i1 * stride + stride];
        let wy1 = ty.w1;
        let wy0 = 1.0 - wy1;
        let out_row = &mut out[oy * ow * 3..(oy + 1) * ow * 3];
        for (ox, tx) in xs.iter().enumerate() {
            let dst = if flip { ow - 1 - ox } else { ox };
            let wx1 = tx.w1;
            let wx0 = 1.0 - wx1;
            let (a, b) = (tx.i0 * 3, tx.i1 * 3);
            for c in 0..3 {
                let top = row0[a + c] as f32 * wx0 + row0[b + c] as f32 * wx1;
                let bottom = row1[a + c] as f32 * wx0 + row1[b + c] as f32 * wx1;
                out_row[dst * 3 + c] = (top * wy0 + bottom * wy1 + 0.5) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_resized_crop_stays_inside_and_respects_ratio() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..1000 {
            let r = random_resized_crop(320, 240, &mut rng);
            assert!(r.x >= 0.0 && r.y >= 0.0 && r.x + r.width <= 320.0 && r.y + r.height <= 240.0);
            let area = r.width * r.height / (320.0 * 240.0);
            assert!((0.07..=1.0).contains(&area), "{area}");
        }
    }

    #[test]
    fn identity_resample_and_flip() {
        let src: Vec<u8> = (0..4 * 2 * 3).map(|v| v as u8 * 10).collect();
        let mut out = vec![0u8; src.len()];
        let full = Rect { x: 0.0, y: 0.0, width: 4.0, height: 2.0 };
        resample_into(&src, (4, 2), full, (4, 2), false, &mut out);
        assert_eq!(out, src);
        resample_into(&src, (4, 2), full, (4, 2), true, &mut out);
        assert_eq!(&out[0..3], &src[9..12]);
    }

    #[test]
    fn center_crop_of_resized_short_side() {
        let r = center_crop(512, 1024, 256, 224);
        assert_eq!(r.width, 448.0);
        assert_eq!(r.x, 32.0);
        assert_eq!(r.y, 288.0);
    }

    #[test]
    fn shrink_keeps_aspect() {
        let img = RgbPixels { width: 400, height: 300, data: vec![7; 400 * 300 * 3] };
        let s = shrink_to_short_side(img, 150);
        assert_eq!((s.width, s.height), (200, 150));
        assert!(s.data.iter().all(|&v| v == 7));
    }
}
