//! Data entry points for vendor scripts: synthetic test cohorts and data-set checks.
use std::ffi::{c_char, c_void};

use super::boundary::{arg_str, guard, out_ptr, to_json};
use super::session::{amlmil_progress_callback, report_progress};
use super::status::amlmil_status;
use crate::dataset::{Dataset, OpenOptions};
use crate::error::Error;
use crate::synth::{generate_cohort, CohortConfig};

/// Writes a synthetic blood-smear cohort in the data-set layout
/// (`metadata.csv`, `data/<label>/<patient>/image_<k>.tif`, `cells.csv`).
///
/// @param config_json NULL or "{}" for the default cohort, else any of
///   `patients_per_class` (20), `cells_min` (100), `cells_max` (300),
///   `abnormal_fraction_min` (0.05), `abnormal_fraction_max` (0.6),
///   `image_size` (144), `annotated_fraction` (0.02), `seed` (0), `threads` (0 = all).
///   Unknown keys are errors.
/// @param out_dir must not exist or be empty.
/// @param progress optional; stage "synth", cells done of total (cannot cancel:
///   the return value is ignored).
/// @param[out] out_summary_json patients written (library-owned string). Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_synth_cohort(
    config_json: *const c_char,
    out_dir: *const c_char,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out_summary_json: *mut *mut c_char,
) -> amlmil_status {
    guard(|| {
        let out_dir = arg_str(out_dir, "out_dir")?;
        let out = out_ptr(out_summary_json, "out_summary_json")?;
        let config: CohortConfig = if config_json.is_null() {
            CohortConfig::default()
        } else {
            let bad = |e: serde_json::Error| Error::invalid("config_json", e.to_string());
            let value: serde_json::Value =
                serde_json::from_str(arg_str(config_json, "config_json")?).map_err(bad)?;
            if !value.is_object() {
                return Err(Error::invalid("config_json", "must be a JSON object").into());
            }
            serde_json::from_value(value).map_err(bad)?
        };
        config.validate()?;
        let summary = generate_cohort(&config, out_dir.as_ref(), &mut |done, total| {
            report_progress(
                progress,
                user_data,
                "synth",
                (done as u64, total as u64),
                (-1, -1),
                f64::NAN,
            );
        })?;
        *out = to_json(&summary)?;
        Ok(())
    })
}

/// Validates a data-set folder and summarises it.
///
/// @param skip non-zero: report problems and go on (they are listed in the
///   JSON's `issues`); zero: fail on the first with AMLMIL_STATUS_DATASET.
/// @param check_images non-zero: also decode every image.
/// @param[out] out_json `{"summary": …, "issues": […]}` (library-owned). Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_dataset_check(
    dataset_dir: *const c_char,
    skip: u32,
    check_images: u32,
    out_json: *mut *mut c_char,
) -> amlmil_status {
    guard(|| {
        let dir = arg_str(dataset_dir, "dataset_dir")?;
        let out = out_ptr(out_json, "out_json")?;
        let options = if skip != 0 {
            OpenOptions::skip()
        } else {
            OpenOptions::fail()
        }
        .with_image_check(check_images != 0);
        let (dataset, issues) = Dataset::open(dir, &options)?;
        let json = serde_json::json!({"summary": dataset.summary(), "issues": issues});
        *out = to_json(&json)?;
        Ok(())
    })
}
