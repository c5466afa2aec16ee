//! Pixel work: decoding a source to RGB, shrinking to a short side (torchvision's `Resize`
//! on PIL images, bit for bit), and the crop-and-resample that both augmentations reduce to.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

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

/// torchvision's `Resize(short_side)` output size for a `width` x `height` image: the short
/// side becomes `short_side` and the long side `int(short_side * long / short)`, truncated
/// as torchvision truncates it (torchvision.transforms.functional._compute_resized_output_size).
pub fn resized_size(width: u32, height: u32, short_side: u32) -> (u32, u32) {
    let (short, long) = (width.min(height).max(1), width.max(height));
    let new_long = ((f64::from(short_side) * f64::from(long) / f64::from(short)) as u32).max(1);
    if width <= height {
        (short_side, new_long)
    } else {
        (new_long, short_side)
    }
}

/// Shrinks the image so that its short side is `short_side` (never enlarges) to
/// torchvision's output size ([`resized_size`]) with PIL's antialiased bilinear resize,
/// which torchvision's `Resize` runs on PIL images ([`resize_like_pil`]).
pub fn shrink_to_short_side(img: RgbPixels, short_side: u32) -> RgbPixels {
    let short = img.width.min(img.height);
    if short <= short_side || short_side == 0 {
        return img;
    }
    let (nw, nh) = resized_size(img.width, img.height, short_side);
    RgbPixels { width: nw, height: nh, data: resize_like_pil(&img.data, (img.width, img.height), (nw, nh)) }
}

/// PIL's fixed-point precision for 8-bit images (Pillow's `Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For every output index along an axis of `in_size` resized to `out_size`: the first
/// source index and the fixed-point weights of the source indices from there (Pillow's
/// `precompute_coeffs` with its bilinear filter and `normalize_coeffs_8bpc`): a triangle
/// whose support grows with the reduction, so a shrink averages every source pixel.
fn pil_taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the bilinear filter's support is 1
    let inverse = 1.0 / filter_scale; // multiplied, not divided by: Pillow's rounding
    let one = f64::from(1u32 << PRECISION_BITS);
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // C's (int) casts: truncation toward zero, as `as` does
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).clamp(start as i64, in_size as i64) as usize;
            let w: Vec<f64> =
                (start..end).map(|x| (1.0 - ((x as f64 - center + 0.5) * inverse).abs()).max(0.0)).collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    if k < 0.0 {
                        (-0.5 + k * one) as i32
                    } else {
                        (0.5 + k * one) as i32
                    }
                })
                .collect();
            (start, fixed)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((out_w, out_h), Image.BILINEAR)` of Pillow, bit for bit, on `src` (HWC
/// RGB of `size` = (width, height)): a horizontal pass over the rows the vertical pass needs
/// into an 8-bit intermediate, then the vertical pass, each a sum of fixed-point weights
/// rounded and clipped to 0..255 (Pillow's `ImagingResampleInner`). An axis whose size does
/// not change is not resampled. Enlarging is plain bilinear interpolation (support 1).
pub fn resize_like_pil(src: &[u8], size: (u32, u32), out_size: (u32, u32)) -> Vec<u8> {
    let (w, h, ow, oh) = (size.0 as usize, size.1 as usize, out_size.0 as usize, out_size.1 as usize);
    if w == 0 || h == 0 || ow == 0 || oh == 0 || src.len() < w * h * 3 {
        return vec![0; ow * oh * 3];
    }
    let vertical = (oh != h).then(|| pil_taps(h, oh));
    // the source rows the vertical pass reads
    let (first, last) = match vertical.as_deref() {
        Some([head, .., tail]) => (head.0, tail.0 + tail.1.len()),
        Some([only]) => (only.0, only.0 + only.1.len()),
        _ => (0, h),
    };
    let half = 1i32 << (PRECISION_BITS - 1);
    let horizontal = (ow != w).then(|| {
        let taps = pil_taps(w, ow);
        let mut out = vec![0u8; (last - first) * ow * 3];
        for (y, out_row) in (first..last).zip(out.chunks_exact_mut(ow * 3)) {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for ((start, k), px) in taps.iter().zip(out_row.chunks_exact_mut(3)) {
                let mut acc = [half; 3];
                for (i, &kv) in k.iter().enumerate() {
                    let p = &row[(start + i) * 3..(start + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += i32::from(p[c]) * kv;
                    }
                }
                for c in 0..3 {
                    px[c] = clip8(acc[c]);
                }
            }
        }
        out
    });
    // rows of width `ow`: the intermediate (from row `first` on), or the input itself
    let (rows, row0): (&[u8], usize) = match &horizontal {
        Some(t) => (t, first),
        None => (src, 0),
    };
    let Some(vertical) = vertical else {
        return rows[..ow * oh * 3].to_vec();
    };
    let stride = ow * 3;
    let mut out = vec![0u8; oh * stride];
    let mut acc = vec![0i32; stride];
    for ((start, k), out_row) in vertical.iter().zip(out.chunks_exact_mut(stride)) {
        acc.fill(half);
        for (i, &kv) in k.iter().enumerate() {
            let row = &rows[(start + i - row0) * stride..(start + i - row0 + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * kv;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
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

/// torchvision's `CenterCrop(crop)` offset along an axis of `side` pixels:
/// `int(round((side - crop) / 2))` (Python's round, half to even, as
/// torchvision.transforms.functional.center_crop); a crop larger than the side is padded
/// with `(crop - side) // 2` zeros first, so its offset is minus that.
pub fn center_crop_offset(side: u32, crop: u32) -> i64 {
    if crop > side {
        -i64::from((crop - side) / 2)
    } else {
        (f64::from(side - crop) / 2.0).round_ties_even() as i64
    }
}

/// torchvision's `Resize(resize_short)` + `CenterCrop(crop)` of `src` (HWC RGB of `size` =
/// (width, height)) into `out` (`crop` x `crop` HWC RGB): the image resized to
/// [`resized_size`] with Pillow's bilinear ([`resize_like_pil`]; nothing to resample when it
/// is stored at that size already, as the shard cache stores images at the eval resize),
/// then the whole-pixel window at [`center_crop_offset`] copied (zeros where torchvision pads).
pub fn resize_center_crop_into(src: &[u8], size: (u32, u32), resize_short: u32, crop: u32, out: &mut [u8]) {
    let (rw, rh) = resized_size(size.0, size.1, resize_short.max(1));
    let resized;
    let image = if (rw, rh) == size {
        src
    } else {
        resized = resize_like_pil(src, size, (rw, rh));
        &resized[..]
    };
    let (x0, y0) = (center_crop_offset(rw, crop), center_crop_offset(rh, crop));
    let (c, stride) = (crop as usize, rw as usize * 3);
    for (oy, out_row) in out.chunks_exact_mut(c * 3).take(c).enumerate() {
        let y = y0 + oy as i64;
        if y < 0 || y >= i64::from(rh) {
            out_row.fill(0);
            continue;
        }
        for (ox, px) in out_row.chunks_exact_mut(3).enumerate() {
            let x = x0 + ox as i64;
            if x < 0 || x >= i64::from(rw) {
                px.fill(0);
            } else {
                let at = y as usize * stride + x as usize * 3;
                px.copy_from_slice(&image[at..at + 3]);
            }
        }
    }
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
    fn resized_long_side_is_truncated_as_torchvision() {
        // 451x300 (scikit-image's chelsea) to 256: 256 * 451 / 300 = 384.85 -> 384
        assert_eq!(resized_size(451, 300, 256), (384, 256));
        assert_eq!(resized_size(300, 451, 256), (256, 384));
        // 600x400 to 341: 511.5 -> 511
        assert_eq!(resized_size(600, 400, 341), (511, 341));
        let img = RgbPixels { width: 451, height: 300, data: vec![9; 451 * 300 * 3] };
        let s = shrink_to_short_side(img, 256);
        assert_eq!((s.width, s.height), (384, 256));
    }

    #[test]
    fn center_crop_offsets_are_torchvisions() {
        for (side, crop, offset) in [
            (384, 224, 80),
            (256, 224, 16),
            (512, 299, 106), // 106.5 rounds to 106 (half to even)
            (301, 224, 38),  // 38.5 -> 38
            (303, 224, 40),  // 39.5 -> 40
            (378, 331, 24),  // 23.5 -> 24
            (376, 331, 22),  // 22.5 -> 22
            (224, 224, 0),
            (21, 24, -1), // padded with (24 - 21) // 2 = 1 first
            (20, 24, -2),
        ] {
            assert_eq!(center_crop_offset(side, crop), offset, "{side} -> {crop}");
        }
    }

    #[test]
    fn resize_and_center_crop_copies_the_window_of_an_image_stored_at_the_resize() {
        // 6x4 stored, resize 4 (no resampling: 6x4 already), crop 2 at (2, 1)
        let src: Vec<u8> = (0..6 * 4 * 3).map(|v| v as u8).collect();
        let mut out = vec![0u8; 2 * 2 * 3];
        resize_center_crop_into(&src, (6, 4), 4, 2, &mut out);
        let px = |x: usize, y: usize| src[(y * 6 + x) * 3..(y * 6 + x) * 3 + 3].to_vec();
        assert_eq!(out, [px(2, 1), px(3, 1), px(2, 2), px(3, 2)].concat());
        // a crop larger than the image is padded with zeros around it, as torchvision pads
        let mut big = vec![9u8; 8 * 8 * 3];
        resize_center_crop_into(&src, (6, 4), 4, 8, &mut big);
        assert!(big[..8 * 3 * 2].iter().all(|&v| v == 0), "two rows of padding on top");
        assert_eq!(&big[(2 * 8 + 1) * 3..(2 * 8 + 1) * 3 + 3], &px(0, 0)[..]);
    }

    #[test]
    fn resize_and_center_crop_resamples_other_sizes_first() {
        // a flat 28x28 image enlarged to 32 and cropped to 28 stays flat
        let src = vec![77u8; 28 * 28 * 3];
        let mut out = vec![0u8; 28 * 28 * 3];
        resize_center_crop_into(&src, (28, 28), 32, 28, &mut out);
        assert!(out.iter().all(|&v| v == 77));
    }

    #[test]
    fn pil_resize_keeps_constants_and_averages_when_it_halves() {
        let flat = RgbPixels { width: 9, height: 7, data: vec![200; 9 * 7 * 3] };
        let r = resize_like_pil(&flat.data, (9, 7), (4, 3));
        assert_eq!(r.len(), 4 * 3 * 3);
        assert!(r.iter().all(|&v| v == 200), "{r:?}");
        // halving the row 0, 100, 0, 100: the triangle of support 2 around output 0 (at 1.0)
        // weighs pixels 0, 1, 2 by 3/7, 3/7, 1/7 (the window cut at the edge, renormalised):
        // 300/7 rounds to 43; output 1 mirrors it, 400/7 -> 57 (what Pillow gives)
        let row = RgbPixels { width: 4, height: 1, data: [0u8, 100, 0, 100].iter().flat_map(|&v| [v; 3]).collect() };
        let r = resize_like_pil(&row.data, (4, 1), (2, 1));
        assert_eq!(r.iter().step_by(3).copied().collect::<Vec<_>>(), vec![43, 57]);
    }

    #[test]
    fn shrink_keeps_aspect() {
        let img = RgbPixels { width: 400, height: 300, data: vec![7; 400 * 300 * 3] };
        let s = shrink_to_short_side(img, 150);
        assert_eq!((s.width, s.height), (200, 150));
        assert!(s.data.iter().all(|&v| v == 7));
    }
}
