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

#[test]
fn cohorts_are_made_and_checked_through_the_c_abi() {
    use amlmil::ffi::*;
    use std::ffi::{CStr, CString};
    let tmp = tempfile::tempdir().unwrap();
    let out = CString::new(tmp.path().join("c-cohort").to_str().unwrap()).unwrap();
    let config = CString::new(
        r#"{"patients_per_class": 1, "cells_min": 2, "cells_max": 3, "image_size": 48, "seed": 4}"#,
    )
    .unwrap();
    let last = || {
        unsafe { CStr::from_ptr(amlmil_last_error()) }
            .to_string_lossy()
            .into_owned()
    };
    unsafe {
        let mut json = std::ptr::null_mut();
        assert_eq!(
            amlmil_synth_cohort(
                config.as_ptr(),
                out.as_ptr(),
                None,
                std::ptr::null_mut(),
                &mut json
            ),
            amlmil_status::Ok,
            "{}",
            last()
        );
        let summary: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(json).to_str().unwrap()).unwrap();
        assert_eq!(summary["patients"].as_array().unwrap().len(), 5);
        amlmil_string_free(json);
        // The same folder again: refused, it is not empty.
        assert_eq!(
            amlmil_synth_cohort(
                config.as_ptr(),
                out.as_ptr(),
                None,
                std::ptr::null_mut(),
                &mut json
            ),
            amlmil_status::InvalidArgument
        );
        let bad = CString::new(r#"{"patients": 3}"#).unwrap();
        assert_eq!(
            amlmil_synth_cohort(
                bad.as_ptr(),
                out.as_ptr(),
                None,
                std::ptr::null_mut(),
                &mut json
            ),
            amlmil_status::InvalidArgument
        );
        assert!(last().contains("patients"), "{}", last());

        assert_eq!(
            amlmil_dataset_check(out.as_ptr(), 0, 1, &mut json),
            amlmil_status::Ok,
            "{}",
            last()
        );
        let check: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(json).to_str().unwrap()).unwrap();
        assert_eq!(check["summary"]["total"]["patients"], 5);
        assert!(check["issues"].as_array().unwrap().is_empty());
        amlmil_string_free(json);
        let missing = CString::new(tmp.path().join("nothing").to_str().unwrap()).unwrap();
        let st = amlmil_dataset_check(missing.as_ptr(), 1, 0, &mut json);
        assert!(
            st == amlmil_status::Dataset || st == amlmil_status::Io,
            "{st:?}"
        );
        assert!(last().contains("nothing"), "{}", last());
    }
}
