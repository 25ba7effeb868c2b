//! Preprocessing from C: the callback type of `amlmil_session_options.preprocess`
//! and its adapter to the core's [`Preprocessor`] (the Rust plugins of
//! `plugin_path` are loaded by the core, `crate::plugin`).
use std::ffi::c_void;

use crate::error::{Error, Result};
use crate::plugin::{PreprocessCell, Preprocessor};

/// One cell handed to an `amlmil_preprocess_callback`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct amlmil_cell {
    /// The id given when the cell was added (read-only).
    pub cell_id: u64,
    /// `height` rows of `width` RGB pixels, 3 bytes each, rows packed
    /// (stride `width * 3`). The callback may change the bytes in place; the
    /// size cannot change. Valid during the callback only.
    pub pixels: *mut u8,
    pub width: u32,
    pub height: u32,
    /// 1 on entry; set to 0 to drop the cell from the bag.
    pub keep: u32,
}

/// Runs on each batch of up to `batch_size` cells (bag order, as added,
/// before resizing) before they are encoded. Return 0 to go on; anything else
/// fails the call with AMLMIL_STATUS_PLUGIN. Called from the thread that
/// classifies, and concurrently when several threads classify on one session,
/// so it must be thread-safe. It must not unwind (no C++ exception may leave it).
#[allow(non_camel_case_types)]
pub type amlmil_preprocess_callback = Option<
    unsafe extern "C" fn(user_data: *mut c_void, cells: *mut amlmil_cell, num_cells: usize) -> i32,
>;

/// A C preprocessing callback with its user data.
pub(crate) struct CallbackPreprocessor {
    f: unsafe extern "C" fn(*mut c_void, *mut amlmil_cell, usize) -> i32,
    user_data: *mut c_void,
}

// SAFETY: the header requires the callback (and whatever `user_data` points to)
// to be usable from any thread, concurrently.
unsafe impl Send for CallbackPreprocessor {}
unsafe impl Sync for CallbackPreprocessor {}

impl CallbackPreprocessor {
    pub(crate) fn new(cb: amlmil_preprocess_callback, user_data: *mut c_void) -> Option<Self> {
        cb.map(|f| CallbackPreprocessor { f, user_data })
    }
}

impl Preprocessor for CallbackPreprocessor {
    fn name(&self) -> &str {
        "callback (amlmil_session_options.preprocess)"
    }

    fn process(&self, cells: &mut [PreprocessCell]) -> Result<()> {
        let mut views: Vec<amlmil_cell> = cells
            .iter_mut()
            .map(|c| amlmil_cell {
                cell_id: c.cell_id,
                width: c.image.width(),
                height: c.image.height(),
                pixels: c.image.rgb_mut().as_mut_ptr(),
                keep: 1,
            })
            .collect();
        // SAFETY: every `pixels` points at `width * height * 3` bytes that live
        // (and are not otherwise touched) for the duration of the call.
        let rc = unsafe { (self.f)(self.user_data, views.as_mut_ptr(), views.len()) };
        if rc != 0 {
            return Err(Error::Plugin {
                name: self.name().to_owned(),
                reason: format!(
                    "returned {rc} for a batch of {} cells (first cell id {})",
                    cells.len(),
                    cells.first().map_or(0, |c| c.cell_id)
                ),
            });
        }
        for (c, v) in cells.iter_mut().zip(&views) {
            c.keep = v.keep != 0;
        }
        Ok(())
    }
}
