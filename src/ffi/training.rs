//! Training entry points for vendor scripts: JSON configuration in, progress
//! callback with stage/epoch/fold/loss and cancellation, JSON report out.
use std::ffi::{c_char, c_void};

use super::boundary::{arg_str, guard, json_call, out_ptr, to_json};
use super::cancel::exclusive_training;
use super::session::{amlmil_progress_callback, report_progress};
use super::status::amlmil_status;
use crate::experiment::{run_experiment, ExperimentConfig};
use crate::training::{self, CvConfig, CvEvent};

/// Adapts a C callback to the cross-validation's events.
fn cv_adapter(cb: amlmil_progress_callback, user_data: *mut c_void) -> impl FnMut(CvEvent) -> bool {
    move |event| {
        let (stage, done, total, epoch, fold, loss) = match event {
            CvEvent::Extract { done, total } => ("extract", done, total, -1, -1, f64::NAN),
            CvEvent::Train { fold, event, .. } => (
                "train",
                event.bag,
                event.bags,
                event.epoch as i32,
                fold as i32,
                event.loss,
            ),
            CvEvent::Report => ("report", 0, 0, -1, -1, f64::NAN),
        };
        report_progress(
            cb,
            user_data,
            stage,
            (done as u64, total as u64),
            (epoch, fold),
            loss,
        )
    }
}

/// Cross-validates the attention-MIL head (DESIGN §2): stratified folds × seeds,
/// writing checkpoints, predictions, attention, learning curves, metrics, plots
/// and `report.json` under the configuration's `output` directory.
///
/// @param config_json JSON object: `dataset`, `encoder`, `output` (required),
///   `features`, `folds` (5), `seeds` ([0,1,2]), `device` ("auto"),
///   `gallery_cells` (8), `training` ({"preset": "paper" | "scemila", overrides…}).
///   Unknown keys are errors.
/// @param progress optional; stage "extract" (patients), "train" (bags of an
///   epoch, with epoch, fold and running loss) or "report". Non-zero cancels:
///   the current run is marked incomplete, `report.json` has `"complete": false`.
/// @param[out] out_report_json the report (library-owned; `amlmil_string_free`).
///   Untouched on failure.
/// @return AMLMIL_STATUS_OK, _CANCELLED (callback or `amlmil_training_cancel`),
///   _BUSY when another training call is running in this process (libtorch's
///   seed is global), or an error status.
#[no_mangle]
pub unsafe extern "C" fn amlmil_cross_validate(
    config_json: *const c_char,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out_report_json: *mut *mut c_char,
) -> amlmil_status {
    json_call(
        "amlmil_cross_validate",
        config_json,
        out_report_json,
        |text| CvConfig::parse(text, false),
        |config| training::cross_validate(&config, &mut cv_adapter(progress, user_data)),
    )
}

/// Trains one attention-MIL head on fold `fold` of the first seed (60/20/20) and
/// writes its run directory under `output` (`runs/seed<S>_fold<F>/mil.safetensors`,
/// loadable by `amlmil_session_new`). Same configuration and callback as
/// `amlmil_cross_validate`.
#[no_mangle]
pub unsafe extern "C" fn amlmil_train_mil(
    config_json: *const c_char,
    fold: u32,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out_report_json: *mut *mut c_char,
) -> amlmil_status {
    json_call(
        "amlmil_train_mil",
        config_json,
        out_report_json,
        |text| CvConfig::parse(text, false),
        |config| {
            training::cv::train_single(&config, fold as usize, &mut cv_adapter(progress, user_data))
        },
    )
}

/// Writes the heads of a cross-validation's finished runs (folds × seeds) as one
/// MIL checkpoint — the deployable model of `amlmil_cross_validate` or
/// `amlmil_experiment`. A session loaded with it averages the heads' class
/// probabilities and, per class, their attention over the cells
/// (`amlmil_model_info.num_heads` reports K). The runs must share the encoder
/// file, the classes and the head's design.
///
/// @param config_json JSON object: `cv_dir` (the cross-validation's `output`),
///   `out` (the checkpoint to write, atomically), `seeds` (optional: only these
///   seeds' runs). Unknown keys are errors.
/// @param[out] out_report_json `{"out", "heads", "encoder_file_sha256",
///   "members": [{"run", "seed", "fold", "best_validation_loss",
///   "test_macro_f1", "mil_sha256"}], "mean_test_macro_f1"}` (library-owned;
///   `amlmil_string_free`). Untouched on failure.
/// @return AMLMIL_STATUS_OK; _INVALID_ARGUMENT (no finished runs, a bad key);
///   _MISMATCH when runs differ in encoder, classes or head design; _IO.
#[no_mangle]
pub unsafe extern "C" fn amlmil_ensemble(
    config_json: *const c_char,
    out_report_json: *mut *mut c_char,
) -> amlmil_status {
    json_call(
        "amlmil_ensemble",
        config_json,
        out_report_json,
        training::ensemble::EnsembleConfig::parse,
        |config| config.run(),
    )
}

/// Encodes every cell of `dataset_dir` with the encoder checkpoint into the
/// feature cache `out_dir` (four flip variants when `flips` is non-zero),
/// resuming a previous extraction of the same encoder.
///
/// @param device "auto", "cpu", "cuda" or "cuda:N"; NULL = "auto".
/// @param progress optional; stage "extract", patients done of total.
/// @param[out] out_manifest_json the cache manifest (library-owned). Untouched on failure.
/// @return _BUSY when another training call is running in this process.
#[no_mangle]
pub unsafe extern "C" fn amlmil_extract_features(
    dataset_dir: *const c_char,
    encoder_path: *const c_char,
    out_dir: *const c_char,
    flips: u32,
    device: *const c_char,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out_manifest_json: *mut *mut c_char,
) -> amlmil_status {
    guard(|| {
        let dataset_dir = arg_str(dataset_dir, "dataset_dir")?;
        let encoder_path = arg_str(encoder_path, "encoder_path")?;
        let out_dir = arg_str(out_dir, "out_dir")?;
        let device = if device.is_null() {
            "auto"
        } else {
            arg_str(device, "device")?
        };
        let out = out_ptr(out_manifest_json, "out_manifest_json")?;
        let (dataset, _) =
            crate::dataset::Dataset::open(dataset_dir, &crate::dataset::OpenOptions::fail())?;
        let options = crate::features::ExtractOptions {
            flips: flips != 0,
            encoder: crate::frozen::EncoderOptions {
                device: device.parse()?,
                ..Default::default()
            },
        };
        let mut cv = cv_adapter(progress, user_data);
        let cache = exclusive_training("amlmil_extract_features", || {
            Ok(crate::features::extract_features(
                &dataset,
                encoder_path.as_ref(),
                out_dir.as_ref(),
                &options,
                &mut |_, done, total| cv(CvEvent::Extract { done, total }),
            )?)
        })?;
        *out = to_json(cache.manifest())?;
        Ok(())
    })
}

/// Runs (or resumes) the paper's experiment (DESIGN §2): generates the synthetic
/// MIL cohort and a disjoint pre-training cohort unless data sets are given,
/// pre-trains the supervised, SimCLR, SwAV and DINO encoders and keeps a random
/// floor, probes each with a k-NN cell-type classifier, cross-validates the
/// attention-MIL head on each (folds × seeds), and writes `report.md`,
/// `report.html`, `report.json` and `figures/` under `output`. Every stage that
/// is complete under `output` is reused, so calling it again after a
/// cancellation continues where it stopped.
///
/// @param config_json JSON object: `output` (required), `preset` ("quick" |
///   "cpu-small" | "paper", default "quick") and overrides of the preset:
///   `dataset` and `pretrain_dataset` (data set roots), `cohort` and
///   `pretrain_cohort` (synthetic cohort settings), `encoders`, `pretrain`
///   (`{"all": {…}, "<method>": {…}}` pre-training overrides), `training` (MIL
///   preset and overrides), `folds`, `seeds`, `device`, `gallery_cells`,
///   `probe_cells`, `umap_cells`, `seed`. Unknown keys are errors naming the key.
/// @param progress optional; `stage` is "experiment/<stage>" or
///   "experiment/<stage>/<encoder>" with <stage> one of cohort, pretrain, probe,
///   cv, embedding, report; `done`/`total` count the current step's units
///   (cells, steps, bags), `loss` is the latest loss or NaN. Non-zero cancels
///   (AMLMIL_STATUS_CANCELLED); finished stages stay on disk.
/// @param[out] out_report_json the report (library-owned; `amlmil_string_free`).
///   Untouched on failure.
/// @return _BUSY when another training call is running in this process.
/// Thread safety: may run beside sessions; `amlmil_training_cancel` cancels it.
#[no_mangle]
pub unsafe extern "C" fn amlmil_experiment(
    config_json: *const c_char,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out_report_json: *mut *mut c_char,
) -> amlmil_status {
    json_call(
        "amlmil_experiment",
        config_json,
        out_report_json,
        |text| ExperimentConfig::parse(text, false),
        |config| {
            run_experiment(&config, &mut |e| {
                let stage = match e.encoder {
                    Some(enc) => format!("experiment/{}/{enc}", e.stage.name()),
                    None => format!("experiment/{}", e.stage.name()),
                };
                report_progress(
                    progress,
                    user_data,
                    &stage,
                    (e.done, e.total),
                    (-1, -1),
                    e.loss,
                )
            })
        },
    )
}
