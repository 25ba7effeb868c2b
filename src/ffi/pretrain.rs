//! Encoder pre-training for vendor scripts: JSON configuration in, progress
//! callback with stage/epoch/loss and cancellation, JSON report out.
use std::ffi::{c_char, c_void};

use super::boundary::json_call;
use super::session::{amlmil_progress_callback, report_progress};
use super::status::amlmil_status;
use crate::ssl::train::{pretrain, PretrainConfig, PretrainEvent, PretrainStage};

/// Adapts a C callback to the pre-training's events.
fn pretrain_adapter(
    cb: amlmil_progress_callback,
    user_data: *mut c_void,
) -> impl FnMut(&PretrainEvent) -> bool {
    move |event| {
        let epoch = match event.stage {
            PretrainStage::Decode => -1,
            _ => event.epoch as i32,
        };
        report_progress(
            cb,
            user_data,
            event.stage.name(),
            (event.done, event.total),
            (epoch, -1),
            event.loss,
        )
    }
}

/// Pre-trains a cell encoder (DESIGN §2) with SimCLR, SwAV, DINO or the
/// supervised cell-type baseline on all cells of a data set, writing after
/// every epoch `<output>/encoder.safetensors` (an encoder checkpoint for
/// `amlmil_session_new` and `amlmil_extract_features`, its manifest naming the
/// method) and the resumable `<output>/state.safetensors`.
///
/// @param config_json JSON object: `method` ("simclr" | "swav" | "dino" |
///   "supervised", required), `dataset` and `output` (required), `preset`
///   ("paper": 144 px, batch 512; "cpu-small": 64 px, batch 32), and overrides
///   of any preset value, nested objects merged key by key (e.g. `"epochs": 20`,
///   `"swav": {"num_prototypes": 30}`, `"resume": true`, `"device": "cpu"`).
///   Unknown keys and impossible values are errors naming the key.
/// @param progress optional; stage "decode" (cells decoded, epoch -1),
///   "pretrain" (steps of the epoch, with epoch and the epoch's running mean
///   loss) and "pretrain-epoch" (epochs done, with the epoch's mean loss, after
///   its checkpoint is written). Non-zero cancels: the call returns
///   AMLMIL_STATUS_CANCELLED and the files of the last finished epoch stay
///   intact, so `"resume": true` continues from them.
/// @param[out] out_report_json the report: method, cells, steps per epoch,
///   epochs and steps completed, per-epoch history (loss, learning rate,
///   images/s), every step's loss, output paths (library-owned;
///   `amlmil_string_free`). Untouched on failure.
/// @return AMLMIL_STATUS_OK, AMLMIL_STATUS_CANCELLED, or an error status; a
///   non-finite loss stops the run with an error naming the epoch, step and value.
/// Thread safety: may run beside sessions; _BUSY when another training call
///   runs in this process; `amlmil_training_cancel` cancels it from any thread.
#[no_mangle]
pub unsafe extern "C" fn amlmil_pretrain(
    config_json: *const c_char,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out_report_json: *mut *mut c_char,
) -> amlmil_status {
    json_call(
        "amlmil_pretrain",
        config_json,
        out_report_json,
        |text| PretrainConfig::parse(text, false),
        |config| pretrain(&config, &mut pretrain_adapter(progress, user_data)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::amlmil_progress;
    use std::ffi::{CStr, CString};

    unsafe extern "C" fn cancel_in_epoch_1(_: *mut c_void, p: *const amlmil_progress) -> i32 {
        let p = &*p;
        let stage = CStr::from_ptr(p.stage).to_str().unwrap();
        i32::from(stage == "pretrain" && p.epoch == 1)
    }

    #[test]
    fn pretrain_through_the_c_abi() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("cohort");
        let cohort = crate::synth::CohortConfig {
            patients_per_class: 2,
            cells_min: 8,
            cells_max: 8,
            image_size: 32,
            threads: 1,
            ..Default::default()
        };
        crate::synth::generate_cohort(&cohort, &data, &mut |_, _| {}).unwrap();
        let out = dir.path().join("out");
        let config = |extra: &str| {
            CString::new(format!(
                r#"{{"method": "simclr", "preset": "cpu-small", "dataset": {:?},
                    "output": {:?}, "image_size": 32, "batch_size": 8, "epochs": 2,
                    "steps_per_epoch": 1, "device": "cpu",
                    "simclr": {{"crops": {{"global": {{"size": 32}}}}}}{extra}}}"#,
                data.to_str().unwrap(),
                out.to_str().unwrap()
            ))
            .unwrap()
        };
        let mut report: *mut c_char = std::ptr::null_mut();
        let cfg = config("");
        let status = unsafe {
            amlmil_pretrain(
                cfg.as_ptr(),
                Some(cancel_in_epoch_1),
                std::ptr::null_mut(),
                &mut report,
            )
        };
        assert_eq!(status, amlmil_status::Cancelled);
        assert!(report.is_null(), "untouched on failure");
        assert!(out.join("encoder.safetensors").exists());

        let cfg = config(r#", "resume": true"#);
        let status =
            unsafe { amlmil_pretrain(cfg.as_ptr(), None, std::ptr::null_mut(), &mut report) };
        assert_eq!(status, amlmil_status::Ok);
        let json = unsafe { CStr::from_ptr(report) }
            .to_str()
            .unwrap()
            .to_owned();
        unsafe { crate::ffi::amlmil_string_free(report) };
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (
                v["epochs_completed"].as_u64(),
                v["resumed_at_epoch"].as_u64()
            ),
            (Some(2), Some(1))
        );

        let bad = CString::new(r#"{"method": "byol"}"#).unwrap();
        let mut report: *mut c_char = std::ptr::null_mut();
        let status =
            unsafe { amlmil_pretrain(bad.as_ptr(), None, std::ptr::null_mut(), &mut report) };
        assert_eq!(status, amlmil_status::InvalidArgument);
        let status =
            unsafe { amlmil_pretrain(std::ptr::null(), None, std::ptr::null_mut(), &mut report) };
        assert_eq!(status, amlmil_status::NullArgument);
    }
}
