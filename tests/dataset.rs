//! The dataset layer through its public API, on small layouts written to a
//! temporary folder: layout and cell order, `cells.csv`, every validation
//! issue, image checks, summaries and folds.
use std::path::{Path, PathBuf};

use image::{GrayImage, ImageBuffer, Rgb, RgbImage, RgbaImage};

use amlmil::classes::{BAG_LABELS, NUM_CLASSES};
use amlmil::dataset::{
    Dataset, Issue, IssueKind, OpenOptions, Severity, CELLS_FILE, DATA_DIR, METADATA_FILE,
};
use amlmil::{Error, Result};

/// A 4×3 RGB test image whose pixels encode `seed`, written in the format of the extension.
fn write_rgb(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(4, 3, |x, y| Rgb([seed, x as u8, y as u8]))
        .save(path)
        .unwrap();
}

/// Writes `metadata.csv` with the given text and one folder of `n` TIFFs per listed patient.
fn layout(metadata: &str, patients: &[(&str, &str, usize)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join(METADATA_FILE), metadata).unwrap();
    std::fs::create_dir_all(root.path().join(DATA_DIR)).unwrap();
    for &(label, id, n) in patients {
        let dir = patient_dir(root.path(), label, id);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..n {
            write_rgb(&dir.join(format!("image_{k}.tif")), k as u8);
        }
    }
    root
}

fn patient_dir(root: &Path, label: &str, id: &str) -> PathBuf {
    root.join(DATA_DIR).join(label).join(id)
}

/// Three valid patients listed in an order unlike BAG_LABELS, with an extra column first.
fn small_cohort() -> tempfile::TempDir {
    layout(
        "age,patient_id,bag_label\n61,C1,control\n45,N1,NPM1\n33,P1,PML_RARA\n",
        &[
            ("control", "C1", 2),
            ("NPM1", "N1", 3),
            ("PML_RARA", "P1", 1),
        ],
    )
}

fn open_fail(root: &Path) -> Result<(Dataset, Vec<Issue>)> {
    Dataset::open(root, &OpenOptions::fail())
}

fn open_skip(root: &Path) -> (Dataset, Vec<Issue>) {
    Dataset::open(root, &OpenOptions::skip()).unwrap()
}

fn ids(dataset: &Dataset) -> Vec<&str> {
    dataset.patients().iter().map(|p| p.id.as_str()).collect()
}

fn kinds(issues: &[Issue]) -> Vec<IssueKind> {
    issues.iter().map(|i| i.kind).collect()
}

/// The reason and path of an `Error::Dataset`, panicking on other errors.
fn dataset_err(e: Error) -> (PathBuf, String) {
    match e {
        Error::Dataset { path, reason } => (path, reason),
        other => panic!("expected Error::Dataset, got {other}"),
    }
}

#[test]
fn layout_round_trip_uses_the_fixed_class_order() {
    let root = small_cohort();
    let (ds, issues) = open_fail(root.path()).unwrap();
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(ds.root(), root.path());
    // Sorted by class index of BAG_LABELS, not by metadata row order.
    assert_eq!(ids(&ds), ["P1", "N1", "C1"]);
    assert_eq!(ds.labels(), [0, 1, 4]);
    let c1 = ds.patient("C1").unwrap();
    assert_eq!((c1.bag_label.as_str(), c1.class_index), ("control", 4));
    assert_eq!(BAG_LABELS[c1.class_index], "control");
    assert_eq!(c1.dir, patient_dir(root.path(), "control", "C1"));
    assert_eq!(c1.metadata_value("age"), Some("61"));
    assert_eq!(c1.metadata, [("age".to_owned(), "61".to_owned())]);
    assert_eq!(ds.num_cells(), 6);
    assert!(!ds.has_cell_types());

    let bag = ds.patient("N1").unwrap().load_cells().unwrap();
    assert_eq!(bag.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [0, 1, 2]);
    for (id, img) in &bag {
        assert_eq!((img.width(), img.height()), (4, 3));
        // Pixel (1, 2) of the cell written with seed k is [k, 1, 2].
        let px = &img.rgb()[(2 * 4 + 1) * 3..][..3];
        assert_eq!(px, [*id as u8, 1, 2]);
    }
    let one = ds.patient("N1").unwrap().load_cell(2).unwrap();
    assert_eq!(one.rgb()[0], 2);
    let e = ds
        .patient("N1")
        .unwrap()
        .load_cell(9)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cell_id") && e.contains("N1"), "{e}");
}

#[test]
fn images_are_ordered_by_number_and_other_files_ignored() {
    let root = layout("patient_id,bag_label\nA,NPM1\n", &[]);
    let dir = patient_dir(root.path(), "NPM1", "A");
    for name in [
        "image_10.tif",
        "image_2.png",
        "image_1.TIFF",
        "b.jpeg",
        "a.jpg",
        "image_x.png",
    ] {
        write_rgb(&dir.join(name), 0);
    }
    std::fs::write(dir.join("features.npy"), b"not an image").unwrap();
    std::fs::write(dir.join("._image_3.tif"), b"AppleDouble").unwrap();
    std::fs::create_dir(dir.join("sub.tif")).unwrap();
    RgbaImage::from_pixel(2, 2, image::Rgba([9, 8, 7, 0]))
        .save(dir.join("image_3.tif"))
        .unwrap();

    let (ds, issues) = open_fail(root.path()).unwrap();
    assert!(issues.is_empty(), "{issues:?}");
    let names: Vec<String> = ds.patients()[0]
        .cells
        .iter()
        .map(|c| c.file_name())
        .collect();
    assert_eq!(
        names,
        [
            "image_1.TIFF",
            "image_2.png",
            "image_3.tif",
            "image_10.tif",
            "a.jpg",
            "b.jpeg",
            "image_x.png"
        ]
    );
    let ids: Vec<u64> = ds.patients()[0].cells.iter().map(|c| c.id).collect();
    assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6]);
    // RGBA TIFF (as in the public data set): alpha dropped.
    let rgba = ds.patients()[0].load_cell(2).unwrap();
    assert_eq!(rgba.rgb(), [9, 8, 7].repeat(4));
}

#[test]
fn cells_csv_labels_are_attached() {
    let root = small_cohort();
    std::fs::write(
        root.path().join(CELLS_FILE),
        "image,cell_type,patient_id,annotated\n\
         image_1.tif,myeloblast,N1,1\n\
         data/NPM1/N1/image_2.tif,lymphocyte,N1,0\n\
         image_0.tif,,C1,\n\
         image_1.tif,monocyte,C1,\n",
    )
    .unwrap();
    let (ds, issues) = open_fail(root.path()).unwrap();
    assert!(issues.is_empty(), "{issues:?}");
    assert!(ds.has_cell_types());
    let n1 = ds.patient("N1").unwrap();
    let typed: Vec<(Option<&str>, bool)> = n1
        .cells
        .iter()
        .map(|c| (c.cell_type.as_deref(), c.annotated))
        .collect();
    assert_eq!(
        typed,
        [
            (None, false),
            (Some("myeloblast"), true),
            (Some("lymphocyte"), false)
        ]
    );
    let c1 = ds.patient("C1").unwrap();
    // Without an `annotated` value a cell counts as annotated when it has a type.
    assert_eq!(c1.cell(0).unwrap().cell_type, None);
    assert!(!c1.cell(0).unwrap().annotated);
    assert_eq!(c1.cell(1).unwrap().cell_type.as_deref(), Some("monocyte"));
    assert!(c1.cell(1).unwrap().annotated);
    assert_eq!(ds.summary().total.annotated_cells, 2);
}

#[test]
fn cells_csv_problems_name_line_and_path() {
    let root = small_cohort();
    let cells = root.path().join(CELLS_FILE);
    std::fs::write(
        &cells,
        "patient_id,image,cell_type,annotated\n\
         N1,image_7.tif,myeloblast,1\n\
         GHOST,image_0.tif,myeloblast,1\n\
         N1,image_0.tif,myeloblast,maybe\n\
         N1,image_1.tif,myeloblast,1\n\
         N1,image_1.tif,monocyte,1\n",
    )
    .unwrap();
    let (path, reason) = dataset_err(open_fail(root.path()).unwrap_err());
    assert_eq!(
        path,
        patient_dir(root.path(), "NPM1", "N1").join("image_7.tif")
    );
    assert!(reason.contains("line 2"), "{reason}");

    let (ds, issues) = open_skip(root.path());
    assert_eq!(
        kinds(&issues),
        [
            IssueKind::MissingCellImage,
            IssueKind::UnknownCellPatient,
            IssueKind::BadCellRow,
            IssueKind::BadCellRow
        ]
    );
    assert!(issues[1].reason.contains("line 3") && issues[1].reason.contains("GHOST"));
    assert!(issues[2].reason.contains("`maybe`"), "{}", issues[2]);
    assert!(issues[3].reason.contains("line 6") && issues[3].reason.contains("line 5"));
    assert_eq!(issues[1].path, cells);
    // The first of the duplicate rows stays.
    let n1 = ds.patient("N1").unwrap();
    assert_eq!(n1.cell(1).unwrap().cell_type.as_deref(), Some("myeloblast"));
    assert_eq!(n1.cell(0).unwrap().cell_type, None);
}

#[test]
fn cells_csv_without_required_columns() {
    let root = small_cohort();
    std::fs::write(
        root.path().join(CELLS_FILE),
        "patient_id,image\nN1,image_0.tif\n",
    )
    .unwrap();
    let (path, reason) = dataset_err(open_fail(root.path()).unwrap_err());
    assert_eq!(path, root.path().join(CELLS_FILE));
    assert!(reason.contains("`cell_type`"), "{reason}");
    let (ds, issues) = open_skip(root.path());
    assert_eq!(kinds(&issues), [IssueKind::BadCellsFile]);
    assert!(!ds.has_cell_types());
    assert_eq!(ds.patients().len(), 3);
}

#[test]
fn missing_metadata_and_columns_always_fail() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join(DATA_DIR)).unwrap();
    for options in [OpenOptions::fail(), OpenOptions::skip()] {
        let (path, reason) = dataset_err(Dataset::open(root.path(), &options).unwrap_err());
        assert_eq!(path, root.path().join(METADATA_FILE));
        assert!(reason.contains("missing"), "{reason}");
    }
    std::fs::write(
        root.path().join(METADATA_FILE),
        "patient_id,label\nA,NPM1\n",
    )
    .unwrap();
    let (path, reason) = dataset_err(Dataset::open(root.path(), &OpenOptions::skip()).unwrap_err());
    assert_eq!(path, root.path().join(METADATA_FILE));
    assert!(
        reason.contains("`bag_label`") && reason.contains("`label`"),
        "{reason}"
    );

    let (path, _) = dataset_err(open_fail(&root.path().join("nope")).unwrap_err());
    assert_eq!(path, root.path().join("nope"));

    std::fs::write(
        root.path().join(METADATA_FILE),
        "patient_id,bag_label\nA,NPM1\n",
    )
    .unwrap();
    std::fs::remove_dir(root.path().join(DATA_DIR)).unwrap();
    let (path, _) = dataset_err(open_fail(root.path()).unwrap_err());
    assert_eq!(path, root.path().join(DATA_DIR));
}

#[test]
fn unknown_bag_label_fails_or_is_skipped() {
    let root = layout(
        "patient_id,bag_label\nN1,NPM1\nX1,AML_M3\nC1,control\n",
        &[("NPM1", "N1", 1), ("AML_M3", "X1", 1), ("control", "C1", 1)],
    );
    let (path, reason) = dataset_err(open_fail(root.path()).unwrap_err());
    assert_eq!(path, root.path().join(METADATA_FILE));
    assert!(reason.contains("line 3") && reason.contains("`AML_M3`") && reason.contains("`X1`"));
    assert!(reason.contains("PML_RARA"), "{reason}");

    let (ds, issues) = open_skip(root.path());
    assert_eq!(ids(&ds), ["N1", "C1"]);
    // The folder of the rejected row is not reported a second time as unlisted.
    assert_eq!(kinds(&issues), [IssueKind::UnknownBagLabel]);
    assert_eq!(issues[0].severity, Severity::Error);
}

#[test]
fn patient_without_folder_or_images() {
    let root = layout(
        "patient_id,bag_label\nN1,NPM1\nN2,NPM1\nN3,NPM1\nC1,control\n",
        &[
            ("NPM1", "N1", 1),
            ("NPM1", "N2", 0),
            ("control", "N3", 1),
            ("control", "C1", 1),
        ],
    );
    std::fs::write(
        patient_dir(root.path(), "NPM1", "N2").join("notes.txt"),
        "x",
    )
    .unwrap();
    let (path, reason) = dataset_err(open_fail(root.path()).unwrap_err());
    assert_eq!(path, patient_dir(root.path(), "NPM1", "N2"));
    assert!(reason.contains("no image file"), "{reason}");

    let (ds, issues) = open_skip(root.path());
    assert_eq!(ids(&ds), ["N1", "C1"]);
    assert_eq!(
        kinds(&issues),
        [
            IssueKind::EmptyPatientFolder,
            IssueKind::MissingPatientFolder,
            IssueKind::UnlistedPatientFolder
        ]
    );
    assert_eq!(issues[1].path, patient_dir(root.path(), "NPM1", "N3"));
    // The hint points at the folder that exists under another label.
    assert!(
        issues[1].reason.contains("data/control/N3"),
        "{}",
        issues[1]
    );
    assert_eq!(issues[2].severity, Severity::Warning);
    assert_eq!(issues[2].path, patient_dir(root.path(), "control", "N3"));
}

#[test]
fn unlisted_folders_only_warn() {
    let root = small_cohort();
    write_rgb(
        &patient_dir(root.path(), "NPM1", "EXTRA").join("image_0.tif"),
        0,
    );
    write_rgb(
        &patient_dir(root.path(), "other", "Z").join("image_0.tif"),
        0,
    );
    let (ds, issues) = open_fail(root.path()).unwrap();
    assert_eq!(ds.patients().len(), 3);
    assert_eq!(issues.len(), 2);
    assert!(issues
        .iter()
        .all(|i| i.kind == IssueKind::UnlistedPatientFolder
            && i.severity == Severity::Warning
            && i.reason.contains("1 image file")));
    assert_eq!(issues[0].path, patient_dir(root.path(), "NPM1", "EXTRA"));
    assert!(
        issues[0].to_string().starts_with("warning: "),
        "{}",
        issues[0]
    );
}

#[test]
fn duplicate_and_malformed_rows() {
    let root = layout(
        "patient_id,bag_label,site\nN1,NPM1,a\nN1,NPM1,b\n../N1,NPM1,c\n,NPM1,d\nC1\nC2,control,e\n",
        &[("NPM1", "N1", 1), ("control", "C2", 1)],
    );
    let (path, reason) = dataset_err(open_fail(root.path()).unwrap_err());
    assert_eq!(path, root.path().join(METADATA_FILE));
    assert!(
        reason.contains("line 3") && reason.contains("line 2"),
        "{reason}"
    );

    let (ds, issues) = open_skip(root.path());
    assert_eq!(ids(&ds), ["N1", "C2"]);
    assert_eq!(ds.patient("N1").unwrap().metadata_value("site"), Some("a"));
    assert_eq!(
        kinds(&issues),
        [
            IssueKind::DuplicatePatient,
            IssueKind::BadMetadataRow,
            IssueKind::BadMetadataRow,
            IssueKind::BadMetadataRow
        ]
    );
    assert!(issues[1].reason.contains("`../N1`"), "{}", issues[1]);
    assert!(issues[2].reason.contains("is empty"), "{}", issues[2]);
    assert!(issues[3].reason.contains("line 6"), "{}", issues[3]);
}

#[test]
fn no_usable_patient_is_an_error_even_when_skipping() {
    let root = layout("patient_id,bag_label\nA,NPM1\n", &[]);
    let e = Dataset::open(root.path(), &OpenOptions::skip()).unwrap_err();
    let (path, reason) = dataset_err(e);
    assert_eq!(path, root.path());
    assert!(
        reason.contains("no usable patient") && reason.contains("data/NPM1/A"),
        "{reason}"
    );
}

/// Writes a zero-byte TIFF and a truncated TIFF into patient N1 of [`small_cohort`].
fn corrupt_cohort() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = small_cohort();
    let dir = patient_dir(root.path(), "NPM1", "N1");
    let empty = dir.join("image_3.tif");
    std::fs::write(&empty, b"").unwrap();
    let good = std::fs::read(dir.join("image_0.tif")).unwrap();
    let corrupt = dir.join("image_4.tif");
    std::fs::write(&corrupt, &good[..good.len() / 2]).unwrap();
    (root, empty, corrupt)
}

#[test]
fn check_images_reports_zero_byte_and_corrupt_tiffs() {
    let (root, empty, corrupt) = corrupt_cohort();
    // Opening does not decode unless asked.
    let (ds, issues) = open_fail(root.path()).unwrap();
    assert!(issues.is_empty());
    assert_eq!(ds.patient("N1").unwrap().num_cells(), 5);

    let bad = ds.check_images();
    assert_eq!(
        bad.iter().map(|i| i.path.clone()).collect::<Vec<_>>(),
        [empty.clone(), corrupt.clone()]
    );
    assert!(bad.iter().all(|i| i.kind == IssueKind::UnreadableImage));
    assert!(bad[0].reason.contains("zero bytes"), "{}", bad[0]);
    assert!(bad[1].to_string().contains("image_4.tif"), "{}", bad[1]);

    // Loading the bag fails with the file's name.
    let e = ds
        .patient("N1")
        .unwrap()
        .load_cells()
        .unwrap_err()
        .to_string();
    assert!(e.contains("image_3.tif"), "{e}");
}

#[test]
fn image_check_while_opening_fails_or_drops_cells() {
    let (root, empty, corrupt) = corrupt_cohort();
    let checked = OpenOptions::fail().with_image_check(true);
    let (path, reason) = dataset_err(Dataset::open(root.path(), &checked).unwrap_err());
    assert_eq!(path, empty);
    assert!(reason.contains("zero bytes"), "{reason}");

    let checked = OpenOptions::skip().with_image_check(true);
    let (ds, issues) = Dataset::open(root.path(), &checked).unwrap();
    assert_eq!(
        issues.iter().map(|i| &i.path).collect::<Vec<_>>(),
        [&empty, &corrupt]
    );
    let n1 = ds.patient("N1").unwrap();
    // Ids of the remaining cells are unchanged.
    assert_eq!(n1.cells.iter().map(|c| c.id).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(n1.load_cells().unwrap().len(), 3);
}

#[test]
fn patient_with_only_unreadable_images_is_left_out() {
    let root = small_cohort();
    std::fs::write(
        patient_dir(root.path(), "PML_RARA", "P1").join("image_0.tif"),
        b"II*\0junk",
    )
    .unwrap();
    let (ds, issues) =
        Dataset::open(root.path(), &OpenOptions::skip().with_image_check(true)).unwrap();
    assert_eq!(ids(&ds), ["N1", "C1"]);
    assert_eq!(
        kinds(&issues),
        [IssueKind::UnreadableImage, IssueKind::EmptyPatientFolder]
    );
}

#[test]
fn sixteen_bit_and_greyscale_pngs_become_rgb8() {
    let root = layout("patient_id,bag_label\nA,RUNX1_RUNX1T1\n", &[]);
    let dir = patient_dir(root.path(), "RUNX1_RUNX1T1", "A");
    std::fs::create_dir_all(&dir).unwrap();
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_pixel(3, 2, Rgb([0x1234, 0xffff, 0x0000]));
    deep.save(dir.join("image_0.png")).unwrap();
    GrayImage::from_pixel(2, 5, image::Luma([77]))
        .save(dir.join("image_1.png"))
        .unwrap();
    write_rgb(&dir.join("image_2.jpg"), 200);

    let (ds, issues) = open_fail(root.path()).unwrap();
    assert!(issues.is_empty());
    assert!(ds.check_images().is_empty());
    let bag = ds.patients()[0].load_cells().unwrap();
    assert_eq!(bag.len(), 3);
    let (_, deep) = &bag[0];
    assert_eq!((deep.width(), deep.height()), (3, 2));
    assert_eq!(deep.rgb().len(), 3 * 2 * 3);
    // 16-bit → 8-bit scales to the high byte.
    assert_eq!(&deep.rgb()[..3], [0x12, 0xff, 0x00]);
    let (_, grey) = &bag[1];
    assert_eq!((grey.width(), grey.height()), (2, 5));
    assert_eq!(grey.rgb(), [77u8; 2 * 5 * 3]);
    assert_eq!(bag[2].1.rgb().len(), 4 * 3 * 3);
}

#[cfg(unix)]
#[test]
fn non_utf8_names_are_reported_not_panicked_on() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let root = small_cohort();
    let dir = patient_dir(root.path(), "NPM1", "N1");
    let bad_file = dir.join(OsStr::from_bytes(b"cell_\xff.png"));
    write_rgb(&bad_file, 1);
    let bad_dir = root
        .path()
        .join(DATA_DIR)
        .join("NPM1")
        .join(OsStr::from_bytes(b"P\xfe"));
    write_rgb(&bad_dir.join("image_0.tif"), 1);

    let (path, reason) = dataset_err(open_fail(root.path()).unwrap_err());
    assert_eq!(path, bad_file);
    assert!(reason.contains("UTF-8"), "{reason}");

    let (ds, issues) = open_skip(root.path());
    assert_eq!(ds.patient("N1").unwrap().num_cells(), 3);
    assert_eq!(
        kinds(&issues),
        [IssueKind::NonUtf8Path, IssueKind::NonUtf8Path]
    );
    assert_eq!(issues[0].severity, Severity::Warning);
    assert_eq!(issues[0].path, bad_dir);
    // Display is lossy rather than failing.
    assert!(
        issues[1].to_string().contains("cell_\u{fffd}.png"),
        "{}",
        issues[1]
    );
}

#[test]
fn summary_counts_every_class() {
    let root = layout(
        "patient_id,bag_label\nN1,NPM1\nN2,NPM1\nC1,control\n",
        &[("NPM1", "N1", 2), ("NPM1", "N2", 5), ("control", "C1", 3)],
    );
    let (ds, _) = open_fail(root.path()).unwrap();
    let s = ds.summary();
    assert_eq!(s.classes.len(), NUM_CLASSES);
    let npm1 = &s.classes[1];
    assert_eq!((npm1.bag_label, npm1.patients, npm1.cells), ("NPM1", 2, 7));
    assert_eq!((npm1.min_cells, npm1.max_cells), (Some(2), Some(5)));
    assert_eq!((s.classes[0].patients, s.classes[0].min_cells), (0, None));
    assert_eq!(
        (
            s.total.patients,
            s.total.cells,
            s.total.min_cells,
            s.total.max_cells
        ),
        (3, 10, Some(2), Some(5))
    );
    let text = s.to_string();
    assert!(
        text.contains("3 patients, 10 cells, no cells.csv"),
        "{text}"
    );
    let npm1_line = text.lines().find(|l| l.starts_with("NPM1")).unwrap();
    assert_eq!(
        npm1_line.split_whitespace().collect::<Vec<_>>(),
        ["NPM1", "2", "7", "0", "2", "5"]
    );
    let pml_line = text.lines().find(|l| l.starts_with("PML_RARA")).unwrap();
    assert!(pml_line.ends_with('-'), "{text}");
}

#[test]
fn folds_of_a_dataset_do_not_depend_on_metadata_row_order() {
    let mut rows: Vec<(String, &str)> = Vec::new();
    for (class, label) in BAG_LABELS.iter().enumerate() {
        for i in 0..5 + class {
            rows.push((format!("{label}-{i}"), label));
        }
    }
    let make = |order: &[(String, &str)]| {
        let text: String = std::iter::once("patient_id,bag_label\n".to_owned())
            .chain(order.iter().map(|(id, l)| format!("{id},{l}\n")))
            .collect();
        let spec: Vec<(&str, &str, usize)> =
            order.iter().map(|(id, l)| (*l, id.as_str(), 1)).collect();
        layout(&text, &spec)
    };
    let a = make(&rows);
    rows.reverse();
    let b = make(&rows);
    let (da, _) = open_fail(a.path()).unwrap();
    let (db, _) = open_fail(b.path()).unwrap();
    assert_eq!(ids(&da), ids(&db));
    let (fa, fb) = (da.folds(5, 3).unwrap(), db.folds(5, 3).unwrap());
    assert_eq!(fa, fb);
    let labels = da.labels();
    for split in &fa {
        for class in 0..NUM_CLASSES {
            // 5..=9 patients per class: exactly one or two of each class in the test chunk.
            let n = split.test.iter().filter(|&&p| labels[p] == class).count();
            assert!(
                (1..=2).contains(&n),
                "fold {} class {class}: {n}",
                split.fold
            );
        }
    }
    let e = da.folds(10, 0).unwrap_err().to_string();
    assert!(e.contains("`PML_RARA` has 5"), "{e}");
}
