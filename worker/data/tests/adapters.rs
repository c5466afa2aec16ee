//! Every adapter prepares a miniature replica of its dataset's real distribution layout
//! (same folder names and annotation formats, a few tiny images per class).

use std::path::Path;

use tsweep_data::mat::{self, MatValue};
use tsweep_data::prepare::PrepareOptions;
use tsweep_data::*;
use tsweep_proto::cell::ValPolicy;

fn jpg(path: &Path, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(14, 10, |x, y| image::Rgb([shade, (x * 9) as u8, (y * 11) as u8])).save(path).unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn opts() -> PrepareOptions {
    PrepareOptions { short_side: 8, threads: 2, ..PrepareOptions::default() }
}

fn run(name: &str, src: &Path) -> (tempfile::TempDir, Manifest, Dataset) {
    let out = tempfile::tempdir().unwrap();
    let m = prepare(name, src, out.path(), &opts(), &|_| {}).unwrap();
    let ds = Dataset::from_dir(out.path(), m.val_policy.clone()).unwrap();
    (out, m, ds)
}

fn count(m: &Manifest, k: &str) -> usize {
    m.origin_counts[k]
}

/// Label of the image whose key is `key`, searched in every split.
fn label_of(ds: &Dataset, key: &str) -> Label {
    for split in [Split::TrainVal, Split::Test] {
        let v = ds.split(split).unwrap();
        for i in 0..v.len() {
            if v.key(i) == key {
                return v.label(i).clone();
            }
        }
    }
    panic!("no image {key}")
}

#[test]
fn food101() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("food-101");
    write(&root.join("meta/classes.txt"), "apple_pie\nbaby_back_ribs\nbaklava\n");
    let mut train = String::new();
    let mut test = String::new();
    for (c, class) in ["apple_pie", "baby_back_ribs", "baklava"].iter().enumerate() {
        for i in 0..4 {
            let id = 1000 * (c + 1) + i;
            jpg(&root.join(format!("images/{class}/{id}.jpg")), 50 * c as u8);
            if i < 3 {
                train += &format!("{class}/{id}\n")
            } else {
                test += &format!("{class}/{id}\n")
            }
        }
    }
    write(&root.join("meta/train.txt"), &train);
    write(&root.join("meta/test.txt"), &test);
    let (_out, m, ds) = run("food-101", src.path());
    assert_eq!(m.name, "food101");
    assert_eq!(m.class_names, vec!["apple_pie", "baby_back_ribs", "baklava"]);
    assert_eq!((count(&m, "train"), count(&m, "test")), (9, 3));
    assert_eq!(label_of(&ds, "baklava/3002.jpg"), Label::Single(2));
    assert!(matches!(m.val_policy, ValPolicy::HeldOut { .. }));
    assert_eq!(m.split_counts["val"] + m.split_counts["train"], 9);
}

#[test]
fn cifar10_and_cifar100() {
    let src = tempfile::tempdir().unwrap();
    let o =
        SynthOptions { classes: 10, train_per_class: 2, val_per_class: 0, test_per_class: 1, image_size: 32, seed: 1 };
    make_dataset(SynthKind::Cifar10, &src.path().join("cifar-10-batches-bin"), &o).unwrap();
    let (_out, m, ds) = run("cifar10", src.path());
    assert_eq!(m.class_names.len(), 10);
    assert_eq!((count(&m, "train"), count(&m, "test")), (20, 10));
    assert_eq!(label_of(&ds, "test_batch.bin#4"), Label::Single(4));

    let src100 = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Cifar100, &src100.path().join("cifar-100-binary"), &SynthOptions { classes: 4, ..o })
        .unwrap();
    let (_out, m, ds) = run("cifar100", src100.path());
    assert_eq!(m.class_names.len(), 100);
    assert_eq!((count(&m, "train"), count(&m, "test")), (8, 4));
    assert_eq!(label_of(&ds, "test.bin#3"), Label::Single(3));
    let err = prepare("cifar100", src.path(), &src.path().join("x"), &opts(), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("Cifar10"), "{err}");
}

#[test]
fn birdsnap_lists_missing_downloads() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("birdsnap");
    write(&root.join("species.txt"), "id\tcommon\tscientific\tdir\n1\tAcadian Flycatcher\tEmpidonax virescens\tAcadian_Flycatcher\n2\tAcorn Woodpecker\tMelanerpes formicivorus\tAcorn_Woodpecker\n");
    let mut images = "url\tmd5\tpath\tspecies_id\tbb_x1\tbb_y1\tbb_x2\tbb_y2\n".to_string();
    for (sid, dir) in [(1, "Acadian_Flycatcher"), (2, "Acorn_Woodpecker")] {
        for i in 0..3 {
            let path = format!("{dir}/{i:04}.jpg");
            images += &format!("http://x/{i}.jpg\tabc\t{path}\t{sid}\t1\t1\t5\t5\n");
            if !(sid == 2 && i == 2) {
                jpg(&root.join("download/images").join(&path), 40 * sid as u8);
            }
        }
    }
    write(&root.join("images.txt"), &images);
    write(&root.join("test_images.txt"), "path\nAcadian_Flycatcher/0000.jpg\nAcorn_Woodpecker/0000.jpg\n");
    let (out, m, ds) = run("birdsnap", src.path());
    assert_eq!(m.class_names, vec!["Acadian Flycatcher", "Acorn Woodpecker"]);
    assert_eq!((count(&m, "train"), count(&m, "test")), (3, 2));
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].key, "Acorn_Woodpecker/0002.jpg");
    assert_eq!(label_of(&ds, "Acorn_Woodpecker/0001.jpg"), Label::Single(1));
    let report = verify(out.path()).unwrap();
    assert!(report.ok(), "{}", report.render());
    assert!(report.notes.iter().any(|n| n.contains("distributed as URLs")), "{:?}", report.notes);
}

#[test]
fn sun397_split_1() {
    let src = tempfile::tempdir().unwrap();
    let classes = ["/a/abbey", "/b/bakery/shop", "/y/youth_hostel"];
    let mut names = String::new();
    let (mut train, mut test) = (String::new(), String::new());
    for (c, class) in classes.iter().enumerate() {
        names += &format!("{class}\n");
        for i in 0..3 {
            let rel = format!("{class}/sun_{c}{i}.jpg");
            jpg(&src.path().join(format!("SUN397{rel}")), 30 * c as u8);
            if i < 2 {
                train += &format!("{rel}\n")
            } else {
                test += &format!("{rel}\n")
            }
        }
    }
    write(&src.path().join("Partitions/ClassName.txt"), &names);
    write(&src.path().join("Partitions/Training_01.txt"), &train);
    write(&src.path().join("Partitions/Testing_01.txt"), &test);
    let (_out, m, ds) = run("sun397", src.path());
    assert_eq!(m.class_names, vec!["abbey", "bakery/shop", "youth_hostel"]);
    assert_eq!((count(&m, "train"), count(&m, "test")), (6, 3));
    assert_eq!(label_of(&ds, "b/bakery/shop/sun_12.jpg"), Label::Single(1));
}

#[test]
fn stanford_cars_annos_mat_and_devkit() {
    let src = tempfile::tempdir().unwrap();
    let names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"];
    let mut items = Vec::new();
    for i in 0..6 {
        let rel = format!("car_ims/{:06}.jpg", i + 1);
        jpg(&src.path().join(&rel), 20 * i as u8);
        items.push(vec![
            MatValue::string(&rel),
            MatValue::scalar(1.0),
            MatValue::scalar(1.0),
            MatValue::scalar(9.0),
            MatValue::scalar(9.0),
            MatValue::scalar((i % 2 + 1) as f64),
            MatValue::scalar(if i >= 4 { 1.0 } else { 0.0 }),
        ]);
    }
    let fields =
        ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"].map(String::from).to_vec();
    let annotations = MatValue::Struct { dims: vec![1, 6], fields, items };
    let class_names = MatValue::Cell { dims: vec![1, 2], items: names.iter().map(|n| MatValue::string(n)).collect() };
    mat::write_file(
        &src.path().join("cars_annos.mat"),
        &[("annotations", annotations), ("class_names", class_names.clone())],
        true,
    )
    .unwrap();
    let (_out, m, ds) = run("stanford_cars", src.path());
    assert_eq!(m.class_names, names);
    assert_eq!((count(&m, "train"), count(&m, "test")), (4, 2));
    assert_eq!(label_of(&ds, "car_ims/000004.jpg"), Label::Single(1));
    assert_eq!(label_of(&ds, "car_ims/000005.jpg"), Label::Single(0));

    let dev = tempfile::tempdir().unwrap();
    mat::write_file(&dev.path().join("devkit/cars_meta.mat").tap_dir(), &[("class_names", class_names)], true).unwrap();
    for (file, dir, n) in
        [("devkit/cars_train_annos.mat", "cars_train", 3), ("cars_test_annos_withlabels.mat", "cars_test", 2)]
    {
        let items = (0..n)
            .map(|i| {
                jpg(&dev.path().join(format!("{dir}/{:05}.jpg", i + 1)), 10);
                vec![
                    MatValue::scalar(1.0),
                    MatValue::scalar((i % 2 + 1) as f64),
                    MatValue::string(&format!("{:05}.jpg", i + 1)),
                ]
            })
            .collect();
        let ann = MatValue::Struct {
            dims: vec![1, n],
            fields: vec!["bbox_x1".into(), "class".into(), "fname".into()],
            items,
        };
        mat::write_file(&dev.path().join(file), &[("annotations", ann)], false).unwrap();
    }
    let (_out, m, ds) = run("cars", dev.path());
    assert_eq!((count(&m, "train"), count(&m, "test")), (3, 2));
    assert_eq!(label_of(&ds, "cars_test/00002.jpg"), Label::Single(1));
}

trait TapDir {
    fn tap_dir(self) -> Self;
}
impl TapDir for std::path::PathBuf {
    fn tap_dir(self) -> Self {
        std::fs::create_dir_all(self.parent().unwrap()).unwrap();
        self
    }
}

#[test]
fn fgvc_aircraft_variant_official_val() {
    let src = tempfile::tempdir().unwrap();
    let data = src.path().join("fgvc-aircraft-2013b/data");
    write(&data.join("variants.txt"), "707-320\nA300B4\nDC-10\n");
    let variants = ["707-320", "A300B4", "DC-10"];
    for (file, base) in [("train", 100), ("val", 200), ("test", 300)] {
        let mut text = String::new();
        for (c, v) in variants.iter().enumerate() {
            let id = format!("{:07}", base + c);
            jpg(&data.join(format!("images/{id}.jpg")), 60 * c as u8);
            text += &format!("{id} {v}\n");
        }
        write(&data.join(format!("images_variant_{file}.txt")), &text);
    }
    let (_out, m, ds) = run("fgvc_aircraft", src.path());
    assert_eq!(m.class_names, variants);
    assert_eq!((count(&m, "train"), count(&m, "val"), count(&m, "test")), (3, 3, 3));
    assert_eq!(m.val_policy, ValPolicy::Official);
    assert_eq!(label_of(&ds, "0000202.jpg"), Label::Single(2));
    assert_eq!(ds.len(Split::Val).unwrap(), 3);
}

fn voc_xml(objects: &[(&str, bool)]) -> String {
    let mut x = "<annotation><folder>VOC2007</folder><filename>x.jpg</filename><size><width>14</width><height>10</height><depth>3</depth></size>".to_string();
    for (name, difficult) in objects {
        x += &format!(
            "<object><name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>",
            u8::from(*difficult)
        );
        if *name == "person" {
            x += "<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></part>";
        }
        x += "</object>";
    }
    x + "</annotation>"
}

#[test]
fn voc2007_multi_label_from_annotations() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("VOCdevkit/VOC2007");
    type Objects<'a> = &'a [(&'a str, bool)];
    let images: [(&str, &str, Objects); 5] = [
        ("000005", "train", &[("chair", false), ("chair", false), ("person", false)]),
        ("000007", "train", &[("car", false)]),
        ("000009", "val", &[("horse", false), ("person", false), ("dog", true)]),
        ("000001", "test", &[("dog", false), ("tvmonitor", false)]),
        ("000002", "test", &[("train", false)]),
    ];
    for (id, split, objects) in images {
        write(&root.join(format!("Annotations/{id}.xml")), &voc_xml(objects));
        jpg(&root.join(format!("JPEGImages/{id}.jpg")), 90);
        let list = root.join(format!("ImageSets/Main/{split}.txt"));
        let mut text = std::fs::read_to_string(&list).unwrap_or_default();
        text += &format!("{id}\n");
        write(&list, &text);
    }
    let (_out, m, ds) = run("voc2007", src.path());
    assert!(m.multi_label);
    assert_eq!(m.class_names.len(), 20);
    assert_eq!((count(&m, "train"), count(&m, "val"), count(&m, "test")), (2, 1, 2));
    // chair=8, person=14; difficult dog left out; parts' <name>head</name> ignored.
    assert_eq!(label_of(&ds, "JPEGImages/000005.jpg"), Label::Multi(vec![8, 14]));
    assert_eq!(label_of(&ds, "JPEGImages/000009.jpg"), Label::Multi(vec![12, 14]));
    assert_eq!(label_of(&ds, "JPEGImages/000001.jpg"), Label::Multi(vec![11, 19]));
    let b = Loader::new(ds.split(Split::Test).unwrap(), LoaderConfig::for_image_size(2, 8, 0), Mode::Eval)
        .unwrap()
        .next_batch()
        .unwrap()
        .unwrap();
    let Targets::MultiHot(t, 20) = b.targets else { panic!("multi-hot") };
    assert_eq!(
        t.iter().enumerate().filter(|(_, &v)| v == 1.0).map(|(i, _)| i).collect::<Vec<_>>(),
        vec![11, 19, 20 + 18]
    );

    std::fs::remove_file(root.join("Annotations/000007.xml")).unwrap();
    let err = prepare("voc2007", src.path(), &src.path().join("o2"), &opts(), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("000007.xml"), "{err}");

    // A cut-off annotation is not XML: an error naming the file, nothing written.
    let full = voc_xml(&[("car", false)]);
    write(&root.join("Annotations/000007.xml"), &full[..full.len() - 20]);
    let out = src.path().join("o3");
    let err = prepare("voc2007", src.path(), &out, &opts(), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("000007.xml") && err.contains("not valid XML"), "{err}");
    assert!(!out.join("manifest.json").exists(), "no manifest for a failed prepare");
}

#[test]
fn dtd_split_1() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("dtd");
    let classes = ["banded", "blotchy", "zigzagged"];
    for (file, range) in [("train1", 0..2), ("val1", 2..3), ("test1", 3..5)] {
        let mut text = String::new();
        for (c, class) in classes.iter().enumerate() {
            for i in range.clone() {
                let rel = format!("{class}/{class}_{i:04}.jpg");
                jpg(&root.join("images").join(&rel), 70 * c as u8);
                text += &format!("{rel}\n");
            }
        }
        write(&root.join(format!("labels/{file}.txt")), &text);
    }
    let (_out, m, ds) = run("dtd", src.path());
    assert_eq!(m.class_names, classes);
    assert_eq!((count(&m, "train"), count(&m, "val"), count(&m, "test")), (6, 3, 6));
    assert_eq!(label_of(&ds, "zigzagged/zigzagged_0004.jpg"), Label::Single(2));

    std::fs::remove_file(root.join("labels/val1.txt")).unwrap();
    let err = prepare("dtd", src.path(), &src.path().join("o2"), &opts(), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("val1.txt"), "{err}");
}

#[test]
fn oxford_pets() {
    let src = tempfile::tempdir().unwrap();
    let rows = [
        ("Abyssinian_1", 1, 1),
        ("Abyssinian_2", 1, 1),
        ("american_bulldog_10", 2, 2),
        ("american_bulldog_11", 2, 2),
        ("yorkshire_terrier_3", 3, 2),
        ("yorkshire_terrier_4", 3, 2),
    ];
    let (mut trainval, mut test) = ("#Image CLASS-ID SPECIES BREED ID\n".to_string(), String::new());
    for (i, (name, id, species)) in rows.iter().enumerate() {
        jpg(&src.path().join(format!("images/{name}.jpg")), 30 * *id as u8);
        let line = format!("{name} {id} {species} {id}\n");
        if i % 2 == 0 {
            trainval += &line
        } else {
            test += &line
        }
    }
    write(&src.path().join("annotations/trainval.txt"), &trainval);
    write(&src.path().join("annotations/test.txt"), &test);
    let (_out, m, ds) = run("pets", src.path());
    assert_eq!(m.class_names, vec!["Abyssinian", "american_bulldog", "yorkshire_terrier"]);
    assert_eq!((count(&m, "train"), count(&m, "test")), (3, 3));
    assert_eq!(label_of(&ds, "american_bulldog_11.jpg"), Label::Single(1));
}

fn caltech(src: &Path) {
    for (c, class) in ["BACKGROUND_Google", "Faces", "accordion"].iter().enumerate() {
        for i in 0..33 + c {
            jpg(&src.join(format!("101_ObjectCategories/{class}/image_{:04}.jpg", i + 1)), 80 * c as u8);
        }
    }
}

#[test]
fn caltech101_thirty_per_class_seeded() {
    let src = tempfile::tempdir().unwrap();
    caltech(src.path());
    let (_out, m, ds) = run("caltech101", src.path());
    assert_eq!(m.class_names, vec!["BACKGROUND_Google", "Faces", "accordion"]);
    assert_eq!((count(&m, "train"), count(&m, "test")), (90, 3 + 4 + 5));
    assert_eq!(label_of(&ds, "accordion/image_0035.jpg"), Label::Single(2));
    let (_out2, m2, _) = run("caltech101", src.path());
    assert_eq!(m.content_hash, m2.content_hash);
    let out3 = tempfile::tempdir().unwrap();
    let m3 = prepare("caltech101", src.path(), out3.path(), &PrepareOptions { seed: 1, ..opts() }, &|_| {}).unwrap();
    assert_ne!(m.content_hash, m3.content_hash, "another seed draws other training images");
}

#[test]
fn flowers102_official_splits_from_mat() {
    let src = tempfile::tempdir().unwrap();
    let labels: Vec<f64> = (0..9).map(|i| (i % 3 + 1) as f64).collect();
    for i in 1..=9 {
        jpg(&src.path().join(format!("jpg/image_{i:05}.jpg")), 25 * i as u8);
    }
    mat::write_file(&src.path().join("imagelabels.mat"), &[("labels", MatValue::row(&labels))], true).unwrap();
    mat::write_file(
        &src.path().join("setid.mat"),
        &[
            ("trnid", MatValue::row(&[1.0, 2.0, 3.0])),
            ("valid", MatValue::row(&[4.0, 5.0, 6.0])),
            ("tstid", MatValue::row(&[7.0, 8.0, 9.0])),
        ],
        true,
    )
    .unwrap();
    let (_out, m, ds) = run("flowers102", src.path());
    assert_eq!(m.class_names.len(), 3);
    assert_eq!((count(&m, "train"), count(&m, "val"), count(&m, "test")), (3, 3, 3));
    assert_eq!(label_of(&ds, "jpg/image_00008.jpg"), Label::Single(1));
    assert_eq!(m.val_policy, ValPolicy::Official);
}

#[test]
fn corrupt_images_are_listed_and_skipped() {
    let src = tempfile::tempdir().unwrap();
    caltech(src.path());
    std::fs::write(src.path().join("101_ObjectCategories/Faces/image_0007.jpg"), b"\xff\xd8\xffnot really").unwrap();
    let out = tempfile::tempdir().unwrap();
    let m = prepare("caltech101", src.path(), out.path(), &opts(), &|_| {}).unwrap();
    assert_eq!(m.skipped.len(), 1);
    assert!(m.skipped[0].key.contains("image_0007.jpg"));
    assert_eq!(m.num_images(), 101);
}

#[test]
fn interrupted_prepare_resumes_to_the_same_hash() {
    let src = tempfile::tempdir().unwrap();
    caltech(src.path());
    let whole = tempfile::tempdir().unwrap();
    let reference = prepare("caltech101", src.path(), whole.path(), &opts(), &|_| {}).unwrap();
    assert!(reference.shards.len() > 3);

    let out = tempfile::tempdir().unwrap();
    let interrupted = PrepareOptions { stop_after_shards: Some(2), threads: 1, ..opts() };
    assert!(prepare("caltech101", src.path(), out.path(), &interrupted, &|_| {}).is_err());
    assert!(!out.path().join("manifest.json").exists());
    let seen = std::sync::Mutex::new(Vec::new());
    let resumed = prepare("caltech101", src.path(), out.path(), &opts(), &|p| seen.lock().unwrap().push(p)).unwrap();
    assert_eq!(resumed.content_hash, reference.content_hash);
    let last = *seen.lock().unwrap().iter().max_by_key(|p| p.done).unwrap();
    assert_eq!(last.done, last.total);
    // Prepared data is read back through the loader.
    let ds = Dataset::from_dir(out.path(), resumed.val_policy.clone()).unwrap();
    assert_eq!(ds.len(Split::Test).unwrap(), 12);
}

#[test]
fn verify_checks_hashes_and_paper_sizes() {
    let src = tempfile::tempdir().unwrap();
    caltech(src.path());
    let out = tempfile::tempdir().unwrap();
    prepare("caltech101", src.path(), out.path(), &opts(), &|_| {}).unwrap();
    let report = verify(out.path()).unwrap();
    // A miniature differs from the paper's sizes, and says so.
    assert!(report.differences.iter().any(|d| d.contains("the paper has 102")), "{}", report.render());
    assert!(report.differences.iter().all(|d| d.contains("the paper has")), "{}", report.render());
    // Flip one byte of a shard: the hash check catches it.
    let shard = out.path().join("shards/shard-00001.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[5] ^= 0xFF;
    std::fs::write(&shard, bytes).unwrap();
    let report = verify(out.path()).unwrap();
    assert!(
        report.differences.iter().any(|d| d.contains("shard-00001.bin") && d.contains("sha256")),
        "{}",
        report.render()
    );
}

#[test]
fn missing_source_names_what_is_missing() {
    let src = tempfile::tempdir().unwrap();
    let err = prepare("flowers102", src.path(), &src.path().join("o"), &opts(), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("imagelabels.mat"), "{err}");
    let err = prepare("food101", src.path(), &src.path().join("o"), &opts(), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("classes.txt"), "{err}");
    let err = prepare("imagenet", src.path(), &src.path().join("o"), &opts(), &|_| {}).unwrap_err().to_string();
    assert!(err.contains("unknown dataset imagenet"), "{err}");
}
