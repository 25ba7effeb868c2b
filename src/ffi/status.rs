//! `amlmil_status` and the thread-local last-error message.
use std::cell::RefCell;
use std::ffi::{c_char, CString};

use crate::error::Error;

/// Result of every fallible `amlmil_*` function. Numbers are fixed forever; a
/// retired status keeps its number as a comment and is never reused.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum amlmil_status {
    /// Success; output arguments were written.
    Ok = 0,
    /// A required pointer argument was NULL (the message names it).
    NullArgument = 1,
    /// An argument was out of range, inconsistent or not valid UTF-8.
    InvalidArgument = 2,
    /// A caller-provided output buffer is shorter than needed.
    BufferTooSmall = 3,
    /// A file could not be read or written (the message names it).
    Io = 4,
    /// Image bytes could not be decoded.
    Decode = 5,
    /// A checkpoint is missing its manifest, of the wrong kind, truncated or inconsistent.
    Checkpoint = 6,
    /// Encoder and MIL head (or other parts) do not fit together.
    Mismatch = 7,
    /// The bag has no cells.
    EmptyBag = 8,
    /// NaN or infinite values where finite ones are required.
    NonFinite = 9,
    /// Unknown device string, or the device is not present.
    Device = 10,
    /// A data set does not follow the documented layout.
    Dataset = 11,
    /// The progress callback asked to stop.
    Cancelled = 12,
    /// libtorch reported an error.
    Torch = 13,
    /// An internal error (a bug): the call was abandoned safely.
    Panic = 14,
    /// The request is valid but not supported in this build or state.
    Unsupported = 15,
    /// A preprocessing plugin or callback could not be loaded, returned an
    /// error or panicked (the message names it).
    Plugin = 16,
    /// Another call that allows only one at a time per process (training) is
    /// running; try again when it has returned.
    Busy = 17,
    /// The request exceeds a resource limit of the session options
    /// (`max_cells_per_bag`, `max_batch_bytes`; the message names it). Nothing
    /// was allocated for it.
    Limit = 18,
}

/// Errors of the C skin: the core's errors plus what only pointers can get wrong.
#[derive(Debug)]
pub(crate) enum FfiError {
    Null(&'static str),
    BufferTooSmall {
        arg: &'static str,
        needed: usize,
        got: usize,
    },
    Unsupported(String),
    Panic(String),
    Core(Error),
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        FfiError::Core(e)
    }
}

impl From<tch::TchError> for FfiError {
    fn from(e: tch::TchError) -> Self {
        FfiError::Core(Error::Torch(e))
    }
}

impl FfiError {
    pub(crate) fn status(&self) -> amlmil_status {
        use amlmil_status as S;
        match self {
            FfiError::Null(_) => S::NullArgument,
            FfiError::BufferTooSmall { .. } => S::BufferTooSmall,
            FfiError::Unsupported(_) => S::Unsupported,
            FfiError::Panic(_) => S::Panic,
            FfiError::Core(e) => match e {
                Error::InvalidArgument { .. } => S::InvalidArgument,
                Error::Io { .. } => S::Io,
                Error::Decode { .. } => S::Decode,
                Error::Checkpoint { .. } => S::Checkpoint,
                Error::Mismatch(_) => S::Mismatch,
                Error::EmptyBag(_) => S::EmptyBag,
                Error::NonFinite(_) => S::NonFinite,
                Error::Device { .. } => S::Device,
                Error::Dataset { .. } => S::Dataset,
                Error::Cancelled(_) => S::Cancelled,
                Error::Torch(_) => S::Torch,
                Error::Plugin { .. } => S::Plugin,
                Error::Busy(_) => S::Busy,
                Error::Limit { .. } => S::Limit,
                Error::Unsupported { .. } => S::Unsupported,
            },
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            FfiError::Null(arg) => format!("argument `{arg}` is NULL"),
            FfiError::BufferTooSmall { arg, needed, got } => {
                format!("buffer `{arg}` holds {got} elements, {needed} are needed")
            }
            FfiError::Unsupported(m) => m.clone(),
            FfiError::Panic(m) => format!("internal error (please report): {m}"),
            FfiError::Core(e) => e.to_string(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the most recent failed `amlmil_*` call on the calling thread,
/// or an empty string if none failed yet. Never NULL.
///
/// The pointer stays valid until the next failing `amlmil_*` call on this thread;
/// copy the text if you need it longer. Successful calls leave it unchanged.
#[no_mangle]
pub extern "C" fn amlmil_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A static, human-readable name for a status (`"AMLMIL_STATUS_OK"`, …); never NULL.
#[no_mangle]
pub extern "C" fn amlmil_status_name(status: u32) -> *const c_char {
    let name: &'static [u8] = match status {
        0 => b"AMLMIL_STATUS_OK\0",
        1 => b"AMLMIL_STATUS_NULL_ARGUMENT\0",
        2 => b"AMLMIL_STATUS_INVALID_ARGUMENT\0",
        3 => b"AMLMIL_STATUS_BUFFER_TOO_SMALL\0",
        4 => b"AMLMIL_STATUS_IO\0",
        5 => b"AMLMIL_STATUS_DECODE\0",
        6 => b"AMLMIL_STATUS_CHECKPOINT\0",
        7 => b"AMLMIL_STATUS_MISMATCH\0",
        8 => b"AMLMIL_STATUS_EMPTY_BAG\0",
        9 => b"AMLMIL_STATUS_NON_FINITE\0",
        10 => b"AMLMIL_STATUS_DEVICE\0",
        11 => b"AMLMIL_STATUS_DATASET\0",
        12 => b"AMLMIL_STATUS_CANCELLED\0",
        13 => b"AMLMIL_STATUS_TORCH\0",
        14 => b"AMLMIL_STATUS_PANIC\0",
        15 => b"AMLMIL_STATUS_UNSUPPORTED\0",
        16 => b"AMLMIL_STATUS_PLUGIN\0",
        17 => b"AMLMIL_STATUS_BUSY\0",
        18 => b"AMLMIL_STATUS_LIMIT\0",
        _ => b"AMLMIL_STATUS_UNKNOWN\0",
    };
    name.as_ptr() as *const c_char
}
