//! `amlmil_result`: what one classification returns, read through accessors.
use std::ffi::{c_char, CString};

use super::boundary::{arg_ref, guard, guard_value, out_ptr, out_slice, to_json};
use super::status::{amlmil_status, FfiError};
use crate::error::Error;
use crate::inference::BagPrediction;

/// Opaque classification result, owned by the caller; free with `amlmil_result_free`.
/// Immutable: any number of threads may read one result at once.
#[allow(non_camel_case_types)]
pub struct amlmil_result {
    pub(crate) prediction: BagPrediction,
    class_names: Vec<CString>,
}

impl amlmil_result {
    pub(crate) fn new(prediction: BagPrediction) -> Self {
        let class_names = prediction
            .classes
            .iter()
            .map(|c| CString::new(c.as_str()).unwrap_or_default())
            .collect();
        amlmil_result {
            prediction,
            class_names,
        }
    }

    fn check_class(&self, class_index: usize) -> Result<(), FfiError> {
        let n = self.prediction.classes.len();
        if class_index >= n {
            return Err(Error::invalid(
                "class_index",
                format!("{class_index} is out of range (result has {n} classes)"),
            )
            .into());
        }
        Ok(())
    }
}

/// Which attention a caller asks for.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum amlmil_attention_kind {
    /// Softmax over the cells of the bag; each class's row sums to 1.
    Softmax = 0,
    /// Scores before the softmax.
    Raw = 1,
}

/// One cell of an attention ranking.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct amlmil_ranked_cell {
    /// The id given when the cell was added.
    pub cell_id: u64,
    /// Position of the cell in the bag (order of addition).
    pub index: u64,
    /// Softmax attention of the cell for the ranked class.
    pub attention: f32,
}

/// Frees a result. `NULL` is a no-op.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_free(result: *mut amlmil_result) {
    guard_value((), || {
        if !result.is_null() {
            drop(Box::from_raw(result));
        }
    })
}

/// Number of classes C, or 0 if `result` is NULL.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_num_classes(result: *const amlmil_result) -> usize {
    guard_value(0, || {
        result.as_ref().map_or(0, |r| r.prediction.classes.len())
    })
}

/// Number of cells N, or 0 if `result` is NULL.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_num_cells(result: *const amlmil_result) -> usize {
    guard_value(0, || {
        result.as_ref().map_or(0, |r| r.prediction.num_cells())
    })
}

/// Name (bag label, e.g. `"PML_RARA"`) of class `class_index`, or NULL if `result`
/// is NULL or the index is out of range. Owned by the result; valid until it is freed.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_class_name(
    result: *const amlmil_result,
    class_index: usize,
) -> *const c_char {
    guard_value(std::ptr::null(), || {
        result
            .as_ref()
            .and_then(|r| r.class_names.get(class_index))
            .map_or(std::ptr::null(), |c| c.as_ptr())
    })
}

/// Index of the predicted (most probable) class.
///
/// @param[out] out_class receives the index. Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_predicted_class(
    result: *const amlmil_result,
    out_class: *mut usize,
) -> amlmil_status {
    guard(|| {
        let r = arg_ref(result, "result")?;
        *out_ptr(out_class, "out_class")? = r.prediction.predicted;
        Ok(())
    })
}

fn copy_floats(
    src: &[f32],
    out: *mut f32,
    out_len: usize,
    arg: &'static str,
) -> Result<(), FfiError> {
    // SAFETY: the caller promises `out` is valid for `out_len` floats.
    unsafe { out_slice(out, out_len, src.len(), arg) }?.copy_from_slice(src);
    Ok(())
}

/// Copies the C class probabilities (softmax of the logits) into `out`.
///
/// @param out buffer of `out_len` floats; `out_len` must be at least the class count.
/// @return AMLMIL_STATUS_BUFFER_TOO_SMALL when it is shorter. Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_probabilities(
    result: *const amlmil_result,
    out: *mut f32,
    out_len: usize,
) -> amlmil_status {
    guard(|| {
        copy_floats(
            &arg_ref(result, "result")?.prediction.probabilities,
            out,
            out_len,
            "out",
        )
    })
}

/// Copies the C logits into `out` (at least the class count). Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_logits(
    result: *const amlmil_result,
    out: *mut f32,
    out_len: usize,
) -> amlmil_status {
    guard(|| {
        copy_floats(
            &arg_ref(result, "result")?.prediction.logits,
            out,
            out_len,
            "out",
        )
    })
}

/// Copies the N cell ids, in bag order, into `out` (at least N). Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_cell_ids(
    result: *const amlmil_result,
    out: *mut u64,
    out_len: usize,
) -> amlmil_status {
    guard(|| {
        let ids = &arg_ref(result, "result")?.prediction.cell_ids;
        out_slice(out, out_len, ids.len(), "out")?.copy_from_slice(ids);
        Ok(())
    })
}

/// Copies the attention of every cell (bag order) for class `class_index` into `out`.
///
/// @param kind one of `amlmil_attention_kind` (softmax or raw).
/// @param out buffer of `out_len` floats, at least N. Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_attention(
    result: *const amlmil_result,
    class_index: usize,
    kind: u32,
    out: *mut f32,
    out_len: usize,
) -> amlmil_status {
    guard(|| {
        let r = arg_ref(result, "result")?;
        r.check_class(class_index)?;
        let raw = match kind {
            0 => false,
            1 => true,
            other => {
                return Err(Error::invalid(
                    "kind",
                    format!("{other} is not an amlmil_attention_kind"),
                )
                .into())
            }
        };
        let att = r
            .prediction
            .attention_for(class_index, raw)
            .unwrap_or_default();
        copy_floats(att, out, out_len, "out")
    })
}

/// The `k` cells with the highest attention for class `class_index`, highest first
/// (ties in bag order): the cells a cytologist should review.
///
/// @param out buffer of `out_len` entries; at least min(k, N).
/// @param[out] out_written receives min(k, N). Both untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_top_cells(
    result: *const amlmil_result,
    class_index: usize,
    k: usize,
    out: *mut amlmil_ranked_cell,
    out_len: usize,
    out_written: *mut usize,
) -> amlmil_status {
    guard(|| {
        let r = arg_ref(result, "result")?;
        r.check_class(class_index)?;
        let written = out_ptr(out_written, "out_written")?;
        let top = r.prediction.top_cells(class_index, k).unwrap_or_default();
        let dst = out_slice(out, out_len, top.len(), "out")?;
        for (d, t) in dst.iter_mut().zip(&top) {
            *d = amlmil_ranked_cell {
                cell_id: t.cell_id,
                index: t.index as u64,
                attention: t.attention,
            };
        }
        *written = top.len();
        Ok(())
    })
}

/// The whole result as JSON (classes, probabilities, logits, predicted, cell ids,
/// attention and raw attention as class-major arrays).
///
/// @param[out] out_json receives a library-owned string; free it with
///   `amlmil_string_free`. Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_to_json(
    result: *const amlmil_result,
    out_json: *mut *mut c_char,
) -> amlmil_status {
    guard(|| {
        let r = arg_ref(result, "result")?;
        let out = out_ptr(out_json, "out_json")?;
        *out = to_json(&r.prediction)?;
        Ok(())
    })
}

/// One self-contained HTML page for the person who acts on the result: the
/// predicted subtype, every class's probability as a bar, the `top_k` cells
/// with the most attention for each class as image tiles, the whole bag sorted
/// by attention with a toggle per class, the session's provenance (checkpoint
/// hashes, precision, device, heads of an ensemble) and the standing warning
/// that this is research software. Cell images are embedded (JPEG data URIs).
///
/// @param session the session that classified the bag.
/// @param bag the classified bag, holding its images (a streaming bag does not
///   keep them and is refused).
/// @param result the bag's result.
/// @param name the bag's title on the page (the patient); NULL = "bag".
/// @param top_k tiles per class (0 = 5).
/// @param[out] out_html receives a library-owned string; free it with
///   `amlmil_string_free`. Untouched on failure.
/// @return AMLMIL_STATUS_OK; _NULL_ARGUMENT; _INVALID_ARGUMENT for a streaming
///   bag, a name that is not UTF-8, or a result with cells the bag lacks.
#[no_mangle]
pub unsafe extern "C" fn amlmil_result_to_html(
    session: *const super::session::amlmil_session,
    bag: *const super::bag::amlmil_bag,
    result: *const amlmil_result,
    name: *const c_char,
    top_k: u32,
    out_html: *mut *mut c_char,
) -> amlmil_status {
    guard(|| {
        let session = arg_ref(session, "session")?;
        let bag = arg_ref(bag, "bag")?;
        let r = arg_ref(result, "result")?;
        let out = out_ptr(out_html, "out_html")?;
        let name = match name.is_null() {
            true => "bag",
            false => super::boundary::arg_str(name, "name")?,
        };
        let cells = bag.inner.read();
        let super::bag::BagCells::Plain(plain) = &*cells else {
            return Err(Error::invalid(
                "bag",
                "a streaming bag does not keep its cell images; build the page from a plain bag",
            )
            .into());
        };
        let page = crate::html::page(
            session.core(),
            &[crate::html::PageBag {
                name: name.to_owned(),
                bag: plain,
                prediction: &r.prediction,
            }],
            if top_k == 0 { 5 } else { top_k as usize },
        )?;
        *out = super::boundary::into_c_string(page);
        Ok(())
    })
}
