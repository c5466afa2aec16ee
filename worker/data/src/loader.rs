//! The multi-threaded augmenting loader.
//!
//! Batch `b` of a training run holds the samples at global positions `b*B .. (b+1)*B` of
//! an infinite sequence of epochs, each a seeded permutation of the split; every sample's
//! crop and flip come from an RNG seeded by (seed, position). So batch `b` is a pure
//! function of (data, seed, b): a run resumed at step k (`Mode::Train { start_step: k }`)
//! sees exactly the batches an uninterrupted run would.
//!
//! Threads: worker `t` builds batches `b ≡ t (mod T)`, each into its own bounded queue;
//! the consumer takes them round-robin, so order is fixed and at most `prefetch` batches
//! wait in memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::SplitView;
use crate::error::{DataError, Result};
use crate::image_ops::{random_resized_crop, resample_into, resize_center_crop_into};
use crate::index::Label;

/// Targets of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// One class index per image.
    Labels(Vec<i64>),
    /// `batch_size x num_classes` 0/1 values, row-major; the second field is num_classes.
    MultiHot(Vec<f32>, usize),
}

/// A batch of images, HWC RGB u8, `batch_size * height * width * 3` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<u8>,
    pub targets: Targets,
    pub batch_size: usize,
    pub height: usize,
    pub width: usize,
    /// Index of each image in the split (its position in `SplitView`), for bookkeeping.
    pub indices: Vec<usize>,
    /// The step (training) or batch number (eval) this batch is.
    pub step: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Infinite epoch-shuffled batches with random resized crop + flip, starting at a step.
    Train { start_step: u64 },
    /// One ordered pass, resize short side + center crop; the last batch may be smaller.
    Eval,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Output side S (images are S x S).
    pub image_size: u32,
    /// Eval: the short side is resized to this before the center crop (e.g. 256 for 224).
    pub resize_short: u32,
    pub seed: u64,
    /// Worker threads (0: every core).
    pub threads: usize,
    /// Batches waiting in memory at most (rounded up to a multiple of threads).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// The paper's preprocessing for an input size: eval resize = size * 256 / 224.
    pub fn for_image_size(batch_size: usize, image_size: u32, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            image_size,
            resize_short: default_resize_short(image_size),
            seed,
            threads: 0,
            prefetch: 0,
        }
    }
}

/// `int(image_size * 256 / 224)`, truncated like the long side of a resize (256 for 224,
/// 341 for 299, 378 for 331, 274 for 240, 297 for 260).
pub fn default_resize_short(image_size: u32) -> u32 {
    (u64::from(image_size) * 256 / 224) as u32
}

/// Steps in one epoch: ceil(n / batch).
pub fn steps_per_epoch(n: usize, batch_size: usize) -> u64 {
    n.div_ceil(batch_size.max(1)) as u64
}

struct Shared {
    view: SplitView,
    cfg: LoaderConfig,
    mode: Mode,
    stop: AtomicBool,
}

pub struct Loader {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    next: u64,
    end: Option<u64>,
}

impl Loader {
    pub fn new(view: SplitView, cfg: LoaderConfig, mode: Mode) -> Result<Loader> {
        if cfg.batch_size == 0 || cfg.image_size == 0 {
            return Err(DataError::Invalid("batch size and image size must be positive".into()));
        }
        if view.is_empty() {
            return Err(DataError::Invalid(format!("split {} is empty", view.split().name())));
        }
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            cfg.threads
        };
        let (start, end) = match mode {
            Mode::Train { start_step } => (start_step, None),
            Mode::Eval => (0, Some(steps_per_epoch(view.len(), cfg.batch_size))),
        };
        let threads = match end {
            Some(e) => threads.min(e.max(1) as usize),
            None => threads,
        };
        let per_thread = cfg.prefetch.max(threads).div_ceil(threads).max(1);
        let shared = Arc::new(Shared { view, cfg, mode, stop: AtomicBool::new(false) });
        let mut receivers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let (tx, rx) = sync_channel(per_thread);
            receivers.push(rx);
            let shared = Arc::clone(&shared);
            let first = start + t as u64;
            let handle = std::thread::Builder::new()
                .name(format!("loader-{t}"))
                .spawn(move || {
                    let mut worker = Worker::new(&shared);
                    let mut b = first;
                    while !shared.stop.load(Ordering::Relaxed) && end.is_none_or(|e| b < e) {
                        let batch = worker.batch(b);
                        let failed = batch.is_err();
                        if tx.send(batch).is_err() || failed {
                            break;
                        }
                        b += threads as u64;
                    }
                })
                .map_err(|e| DataError::LoaderStopped(format!("cannot spawn loader thread: {e}")))?;
            handles.push(handle);
        }
        Ok(Loader { receivers, handles, shared, next: start, end })
    }

    /// Number of batches of an eval pass (None for training).
    pub fn num_batches(&self) -> Option<u64> {
        self.end
    }

    /// Steps per epoch of this split at this batch size.
    pub fn steps_per_epoch(&self) -> u64 {
        steps_per_epoch(self.shared.view.len(), self.shared.cfg.batch_size)
    }

    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        if self.end.is_some_and(|e| self.next >= e) {
            return Ok(None);
        }
        let t = ((self.next - self.start_of_cycle()) % self.receivers.len() as u64) as usize;
        let batch = self.receivers[t]
            .recv()
            .map_err(|_| DataError::LoaderStopped(format!("loader thread {t} exited before batch {}", self.next)))??;
        self.next += 1;
        Ok(Some(batch))
    }

    fn start_of_cycle(&self) -> u64 {
        match self.shared.mode {
            Mode::Train { start_step } => start_step,
            Mode::Eval => 0,
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

struct Worker<'a> {
    shared: &'a Shared,
    epoch: Option<u64>,
    perm: Vec<u32>,
    pixels: Vec<u8>,
}

impl<'a> Worker<'a> {
    fn new(shared: &'a Shared) -> Self {
        Worker { shared, epoch: None, perm: Vec::new(), pixels: Vec::new() }
    }

    fn permutation(&mut self, epoch: u64) -> &[u32] {
        if self.epoch != Some(epoch) {
            let n = self.shared.view.len() as u32;
            self.perm.clear();
            self.perm.extend(0..n);
            let mut rng = ChaCha8Rng::seed_from_u64(mix(self.shared.cfg.seed, epoch, 0x005E_ED0F_E90C));
            self.perm.shuffle(&mut rng);
            self.epoch = Some(epoch);
        }
        &self.perm
    }

    fn batch(&mut self, b: u64) -> Result<Batch> {
        let cfg = &self.shared.cfg;
        let view = &self.shared.view;
        let n = view.len() as u64;
        let s = cfg.image_size;
        let (positions, train): (Vec<(usize, u64)>, bool) = match self.shared.mode {
            Mode::Train { .. } => {
                let mut items = Vec::with_capacity(cfg.batch_size);
                for j in 0..cfg.batch_size as u64 {
                    let p = b * cfg.batch_size as u64 + j;
                    let idx = self.permutation(p / n)[(p % n) as usize] as usize;
                    items.push((idx, p));
                }
                (items, true)
            }
            Mode::Eval => {
                let lo = b * cfg.batch_size as u64;
                let hi = (lo + cfg.batch_size as u64).min(n);
                ((lo..hi).map(|i| (i as usize, i)).collect(), false)
            }
        };
        let bs = positions.len();
        let img_bytes = s as usize * s as usize * 3;
        let mut images = vec![0u8; bs * img_bytes];
        let multi = view.is_multi_label();
        let k = view.num_classes();
        let mut labels = Vec::with_capacity(if multi { 0 } else { bs });
        let mut multi_hot = if multi { vec![0f32; bs * k] } else { Vec::new() };
        let mut indices = Vec::with_capacity(bs);
        for (j, &(idx, p)) in positions.iter().enumerate() {
            let (w, h) = view.read_into(idx, &mut self.pixels)?;
            let out = &mut images[j * img_bytes..(j + 1) * img_bytes];
            if train {
                let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, p, 0x0A06_11E1_7000));
                let rect = random_resized_crop(w, h, &mut rng);
                let flip = rng.random_bool(0.5);
                resample_into(&self.pixels, (w, h), rect, (s, s), flip, out);
            } else {
                resize_center_crop_into(&self.pixels, (w, h), cfg.resize_short, s, out);
            }
            match view.label(idx) {
                Label::Single(c) if !multi => labels.push(i64::from(*c)),
                label => {
                    if multi {
                        for c in label.classes() {
                            multi_hot[j * k + c as usize] = 1.0;
                        }
                    } else {
                        labels.push(i64::from(label.stratum()));
                    }
                }
            }
            indices.push(idx);
        }
        let targets = if multi { Targets::MultiHot(multi_hot, k) } else { Targets::Labels(labels) };
        Ok(Batch { images, targets, batch_size: bs, height: s as usize, width: s as usize, indices, step: b })
    }
}

/// Mixes a seed with a counter and a stream tag (splitmix64 finaliser).
fn mix(seed: u64, counter: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.rotate_left(17) ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
