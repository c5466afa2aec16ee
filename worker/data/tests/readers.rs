//! Each raw reader reads its format and rejects bad input with a message naming the file.

use std::path::Path;

use tsweep_data::readers::{cifar, imagefolder, multilabel};
use tsweep_data::*;
use tsweep_proto::cell::{DatasetFormat, DatasetSpec, Metric, ValPolicy};

fn opts(classes: usize) -> SynthOptions {
    SynthOptions { classes, train_per_class: 6, val_per_class: 2, test_per_class: 3, image_size: 24, seed: 3 }
}

fn spec(format: DatasetFormat, path: &Path, val: ValPolicy) -> DatasetSpec {
    DatasetSpec { name: "t".into(), format, path: path.to_path_buf(), metric: Metric::Top1, val, num_classes: None }
}

#[test]
fn imagefolder_reads_classes_and_splits() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Imagefolder, dir.path(), &opts(3)).unwrap();
    let index = imagefolder::read(dir.path()).unwrap();
    assert_eq!(index.class_names, vec!["class_00", "class_01", "class_02"]);
    assert_eq!(index.count(Origin::Train), 18);
    assert_eq!(index.count(Origin::Val), 6);
    assert_eq!(index.count(Origin::Test), 9);
    let r = index.records.iter().find(|r| r.key == "test/class_02/img_00001.png").unwrap();
    assert_eq!(r.label, Label::Single(2));
}

#[test]
fn imagefolder_rejects_missing_class_folder_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Imagefolder, dir.path(), &opts(3)).unwrap();
    std::fs::remove_dir_all(dir.path().join("test/class_01")).unwrap();
    let err = imagefolder::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("test/class_01"), "{err}");
}

#[test]
fn imagefolder_rejects_extra_class_folder_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Imagefolder, dir.path(), &opts(2)).unwrap();
    std::fs::create_dir_all(dir.path().join("val/intruder")).unwrap();
    let err = imagefolder::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("val/intruder"), "{err}");
}

#[test]
fn imagefolder_corrupt_image_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Imagefolder, dir.path(), &opts(2)).unwrap();
    let bad = dir.path().join("train/class_01/img_00003.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let err =
        Dataset::open(&spec(DatasetFormat::Imagefolder, dir.path(), ValPolicy::Official), cache.path(), 64, &|_| {})
            .unwrap_err()
            .to_string();
    assert!(err.contains("img_00003.png"), "{err}");
}

#[test]
fn jpeg_images_decode() {
    let dir = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        let d = dir.path().join(split).join("a");
        std::fs::create_dir_all(&d).unwrap();
        let img = image::RgbImage::from_fn(40, 30, |x, _| image::Rgb([(x * 6) as u8, 100, 200]));
        img.save(d.join("x.jpg")).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let ds = Dataset::open(
        &spec(DatasetFormat::Imagefolder, dir.path(), ValPolicy::HeldOut { fraction: 0.0, seed: 0 }),
        cache.path(),
        20,
        &|_| {},
    )
    .unwrap();
    let test = ds.split(Split::Test).unwrap();
    let mut buf = Vec::new();
    // short side 30 -> 20, long side int(20 * 40 / 30) = 26 (truncated, as torchvision's Resize)
    assert_eq!(test.read_into(0, &mut buf).unwrap(), (26, 20));
}

#[test]
fn cifar10_and_cifar100_read_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    let s = make_dataset(SynthKind::Cifar10, dir.path(), &opts(10)).unwrap();
    let index = cifar::read(dir.path()).unwrap();
    assert_eq!(index.num_classes(), 10);
    assert_eq!(index.count(Origin::Train), s.train);
    assert_eq!(index.count(Origin::Test), 30);
    // Records interleave classes: record i of the test batch has label i % 10.
    let r = index.records.iter().find(|r| r.key == "test_batch.bin#13").unwrap();
    assert_eq!(r.label, Label::Single(3));

    let dir100 = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Cifar100, dir100.path(), &opts(7)).unwrap();
    let index = cifar::read(dir100.path()).unwrap();
    assert_eq!(index.num_classes(), 100);
    assert_eq!(index.count(Origin::Test), 21);
    let r = index.records.iter().find(|r| r.key == "test.bin#9").unwrap();
    assert_eq!(r.label, Label::Single(2));
}

#[test]
fn cifar_pixels_are_deplanarised() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = vec![4u8];
    rec.extend(std::iter::repeat_n(10u8, 1024));
    rec.extend(std::iter::repeat_n(20u8, 1024));
    rec.extend(std::iter::repeat_n(30u8, 1024));
    for i in 1..=5 {
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), &rec).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), &rec).unwrap();
    let index = cifar::read(dir.path()).unwrap();
    let img = tsweep_data::image_ops::decode(&index.records[0].source).unwrap();
    assert_eq!(&img.data[..6], &[10, 20, 30, 10, 20, 30]);
}

#[test]
fn cifar_wrong_record_size_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Cifar10, dir.path(), &opts(10)).unwrap();
    let path = dir.path().join("data_batch_3.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.pop();
    std::fs::write(&path, bytes).unwrap();
    let err = cifar::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("data_batch_3.bin") && err.contains("3073"), "{err}");

    let dir100 = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Cifar100, dir100.path(), &opts(5)).unwrap();
    let path = dir100.path().join("test.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(3073 * 2);
    std::fs::write(&path, bytes).unwrap();
    let err = cifar::read(dir100.path()).unwrap_err().to_string();
    assert!(err.contains("test.bin") && err.contains("3074"), "{err}");
}

#[test]
fn cifar_missing_batch_names_it() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Cifar10, dir.path(), &opts(10)).unwrap();
    std::fs::remove_file(dir.path().join("data_batch_5.bin")).unwrap();
    let err = cifar::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("data_batch_5.bin"), "{err}");
}

#[test]
fn multilabel_reads_label_sets() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Multilabel, dir.path(), &opts(4)).unwrap();
    let index = multilabel::read(dir.path()).unwrap();
    assert!(index.multi_label);
    assert_eq!(index.count(Origin::Train), 24);
    assert_eq!(index.count(Origin::Val), 8);
    assert_eq!(index.count(Origin::Test), 12);
    std::fs::write(dir.path().join("test.txt"), "images/train_00000.png class_03,class_01\nimages/train_00001.png -\n")
        .unwrap();
    let index = multilabel::read(dir.path()).unwrap();
    let tests: Vec<_> = index.records.iter().filter(|r| r.origin == Origin::Test).collect();
    assert_eq!(tests[0].label, Label::Multi(vec![1, 3]));
    assert_eq!(tests[1].label, Label::Multi(vec![]));
}

#[test]
fn multilabel_rejects_unknown_class_and_missing_list() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Multilabel, dir.path(), &opts(3)).unwrap();
    std::fs::write(dir.path().join("val.txt"), "images/val_00000.png class_00,dragon\n").unwrap();
    let err = multilabel::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("val.txt") && err.contains("dragon"), "{err}");
    std::fs::remove_file(dir.path().join("val.txt")).unwrap();
    std::fs::remove_file(dir.path().join("test.txt")).unwrap();
    let err = multilabel::read(dir.path()).unwrap_err().to_string();
    assert!(err.contains("test.txt"), "{err}");
}

#[test]
fn synthetic_data_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Cifar10, a.path(), &opts(10)).unwrap();
    make_dataset(SynthKind::Cifar10, b.path(), &opts(10)).unwrap();
    assert_eq!(
        std::fs::read(a.path().join("test_batch.bin")).unwrap(),
        std::fs::read(b.path().join("test_batch.bin")).unwrap()
    );
}

#[test]
fn num_classes_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(SynthKind::Imagefolder, dir.path(), &opts(2)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut s = spec(DatasetFormat::Imagefolder, dir.path(), ValPolicy::Official);
    s.num_classes = Some(5);
    let err = Dataset::open(&s, cache.path(), 32, &|_| {}).unwrap_err().to_string();
    assert!(err.contains("2 classes") && err.contains("expects 5"), "{err}");
}
