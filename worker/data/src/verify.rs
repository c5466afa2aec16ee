//! `verify`: a prepared directory against its manifest (shard hashes, counts, content
//! hash) and against the sizes its distribution has (the paper's table for its twelve).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::Result;
use crate::prepare::lookup;
use crate::shards::{recompute_content_hash, Manifest};

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub manifest: Manifest,
    /// Problems: hashes or counts that do not match.
    pub differences: Vec<String>,
    /// Expected deviations (Birdsnap's counts), skipped images, information.
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }

    /// Human-readable summary (what `tsweep-worker data verify` prints).
    pub fn render(&self) -> String {
        let m = &self.manifest;
        let mut s = String::new();
        let _ = writeln!(s, "dataset {} ({} classes, short side {})", m.name, m.class_names.len(), m.short_side);
        let _ = writeln!(s, "stored: {:?}; splits under {:?}: {:?}", m.origin_counts, m.val_policy, m.split_counts);
        let _ = writeln!(s, "content hash {}", m.content_hash);
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for d in &self.differences {
            let _ = writeln!(s, "DIFFERENCE: {d}");
        }
        let _ = writeln!(s, "{}", if self.ok() { "ok" } else { "FAILED" });
        s
    }
}

pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let manifest = Manifest::read(dir)?;
    let mut differences = Vec::new();
    let mut notes = Vec::new();
    let (content, problems) = recompute_content_hash(dir, &manifest)?;
    differences.extend(problems);
    if content != manifest.content_hash {
        differences.push(format!("content hash {content} but manifest says {}", manifest.content_hash));
    }
    let stored: usize = manifest.shards.iter().map(|s| s.records).sum();
    if stored != manifest.num_images() {
        differences.push(format!("{stored} images in shards but manifest counts {}", manifest.num_images()));
    }
    if !manifest.skipped.is_empty() {
        notes.push(format!("{} images skipped at prepare time (listed in manifest.json)", manifest.skipped.len()));
    }
    match lookup(&manifest.name) {
        Ok(_) if manifest.subsample.is_some() => {
            notes.push(format!("subsampled at prepare time ({:?}): sizes not checked", manifest.subsample))
        }
        Ok(info) => {
            let source = if info.in_paper { "the paper has" } else { "its distribution has" };
            let count = |k: &str| manifest.origin_counts.get(k).copied().unwrap_or(0);
            let trainval = count("train") + count("val");
            let test = count("test");
            let mut expect = Vec::new();
            if manifest.class_names.len() != info.classes {
                expect.push(format!("{} classes, {source} {}", manifest.class_names.len(), info.classes));
            }
            if trainval != info.trainval {
                expect.push(format!("{trainval} train+val images, {source} {}", info.trainval));
            }
            if test != info.test {
                expect.push(format!("{test} test images, {source} {}", info.test));
            }
            if info.counts_may_differ {
                notes.extend(
                    expect.into_iter().map(|e| format!("{e} (expected: {} is distributed as URLs)", info.name)),
                );
            } else {
                differences.extend(expect);
            }
        }
        Err(_) => notes.push(format!("{} is not a dataset prepare knows: sizes not checked", manifest.name)),
    }
    Ok(VerifyReport { manifest, differences, notes })
}
