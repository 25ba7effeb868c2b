//! A synthetic cohort read back through the dataset layer: layout, labels, cell
//! types and folds survive the round trip, and the bag fed to a session is the
//! patient's cells.
use amlmil::classes::BAG_LABELS;
use amlmil::dataset::{Dataset, OpenOptions};
use amlmil::synth::{generate_cohort, CellType, CohortConfig};

fn cohort(dir: &std::path::Path, seed: u64) -> amlmil::synth::CohortSummary {
    let cfg = CohortConfig {
        patients_per_class: 5,
        cells_min: 4,
        cells_max: 9,
        image_size: 64,
        annotated_fraction: 0.5,
        seed,
        ..Default::default()
    };
    generate_cohort(&cfg, dir, &mut |_, _| {}).unwrap()
}

#[test]
fn synthetic_cohort_round_trips_through_the_dataset_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cohort");
    let summary = cohort(&out, 11);
    let (ds, issues) = Dataset::open(&out, &OpenOptions::fail().with_image_check(true)).unwrap();
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(ds.patients().len(), 25);
    assert!(ds.has_cell_types());
    assert_eq!(ds.num_cells(), summary.n_cells);
    for rec in &summary.patients {
        let p = ds.patient(&rec.patient_id).expect("patient read back");
        assert_eq!(p.bag_label, rec.bag_label);
        assert_eq!(BAG_LABELS[p.class_index], rec.bag_label);
        assert_eq!(p.num_cells(), rec.n_cells);
        let abnormal = p
            .cells
            .iter()
            .filter(|c| {
                c.cell_type
                    .as_deref()
                    .and_then(|t| t.parse::<CellType>().ok())
                    .is_some_and(|t| t.is_abnormal())
            })
            .count();
        assert_eq!(abnormal, rec.n_abnormal, "{}", rec.patient_id);
        let cells = p.load_cells().unwrap();
        assert!(cells
            .iter()
            .all(|(_, c)| c.width() == 64 && c.height() == 64));
    }
    let annotated: usize = ds
        .patients()
        .iter()
        .flat_map(|p| &p.cells)
        .filter(|c| c.annotated)
        .count();
    assert_eq!(annotated, summary.n_annotated);
}

#[test]
fn folds_of_a_synthetic_cohort_are_stratified_and_never_leak() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cohort");
    cohort(&out, 12);
    let (ds, _) = Dataset::open(&out, &OpenOptions::fail()).unwrap();
    let labels = ds.labels();
    let folds = ds.folds(5, 3).unwrap();
    assert_eq!(folds.len(), 5);
    let mut tested = vec![0; labels.len()];
    for f in &folds {
        let mut all: Vec<usize> = f
            .train
            .iter()
            .chain(&f.validation)
            .chain(&f.test)
            .copied()
            .collect();
        all.sort();
        assert_eq!(
            all,
            (0..labels.len()).collect::<Vec<_>>(),
            "fold {} is not a partition",
            f.fold
        );
        for &i in &f.test {
            tested[i] += 1;
        }
        // 5 patients per class in 5 chunks: exactly one per class in validation and test, 3 in train.
        for c in 0..BAG_LABELS.len() {
            let count = |set: &[usize]| set.iter().filter(|&&i| labels[i] == c).count();
            assert_eq!(
                (count(&f.train), count(&f.validation), count(&f.test)),
                (3, 1, 1),
                "fold {} class {c}",
                f.fold
            );
        }
    }
    assert!(
        tested.iter().all(|&t| t == 1),
        "every patient is tested exactly once"
    );
}
