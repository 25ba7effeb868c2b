//! The panic boundary and pointer checks shared by every exported function.
//!
//! Since Rust 1.81 a panic that reaches an `extern "C"` function aborts the
//! process, and tch panics on many libtorch errors; every export therefore runs its
//! body through [`guard`], which turns errors and panics into a status plus a
//! thread-local message.
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::status::{amlmil_status, set_last_error, FfiError};
use crate::error::Error;

pub(crate) type FfiResult<T = ()> = Result<T, FfiError>;

/// Runs `body`, mapping `Err` and panics to a status and the last-error message.
pub(crate) fn guard(body: impl FnOnce() -> FfiResult) -> amlmil_status {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".into());
        // tch panics carry libtorch's message; report those as libtorch errors.
        if msg.contains("Torch") || msg.contains("libtorch") || msg.contains("c10::") {
            Err(FfiError::Core(Error::Torch(tch::TchError::Torch(msg))))
        } else {
            Err(FfiError::Panic(msg))
        }
    });
    match outcome {
        Ok(()) => amlmil_status::Ok,
        Err(e) => {
            let status = e.status();
            let message = e.message();
            log::debug!("{status:?}: {message}");
            set_last_error(&message);
            status
        }
    }
}

/// Runs `body` for functions without a status (getters, `free`); a panic gives `fallback`.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// Borrows `*ptr`, or fails naming `arg` when it is NULL.
///
/// # Safety
/// `ptr` must be NULL or point to a live `T` for `'a`.
pub(crate) unsafe fn arg_ref<'a, T>(ptr: *const T, arg: &'static str) -> FfiResult<&'a T> {
    ptr.as_ref().ok_or(FfiError::Null(arg))
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string live for `'a`.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, arg: &'static str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::Null(arg));
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map_err(|_| Error::invalid(arg, "is not valid UTF-8").into())
}

/// A non-empty input buffer of `len` elements.
///
/// # Safety
/// `ptr` must be NULL or valid for reads of `len` elements for `'a`.
pub(crate) unsafe fn arg_slice<'a, T>(
    ptr: *const T,
    len: usize,
    arg: &'static str,
) -> FfiResult<&'a [T]> {
    if ptr.is_null() {
        return Err(FfiError::Null(arg));
    }
    if len == 0 {
        return Err(Error::invalid(arg, "has length 0").into());
    }
    check_span(ptr, len, arg)?;
    Ok(std::slice::from_raw_parts(ptr, len))
}

/// The first `needed` elements of an output buffer of `len` elements.
///
/// # Safety
/// `ptr` must be NULL or valid for writes of `len` elements for `'a`.
pub(crate) unsafe fn out_slice<'a, T>(
    ptr: *mut T,
    len: usize,
    needed: usize,
    arg: &'static str,
) -> FfiResult<&'a mut [T]> {
    if ptr.is_null() {
        return Err(FfiError::Null(arg));
    }
    if len < needed {
        return Err(FfiError::BufferTooSmall {
            arg,
            needed,
            got: len,
        });
    }
    check_span(ptr, needed, arg)?;
    Ok(std::slice::from_raw_parts_mut(ptr, needed))
}

/// Checks that an output pointer is not NULL (before any work is done).
/// Refuses a buffer no real allocation can be (more than `isize::MAX` bytes,
/// or ending past the address space) or a pointer misaligned for `T`: either
/// would make a slice over it undefined behaviour.
fn check_span<T>(ptr: *const T, len: usize, arg: &'static str) -> FfiResult {
    let size = std::mem::size_of::<T>().max(1);
    let bytes = len.checked_mul(size).filter(|b| *b <= isize::MAX as usize);
    if bytes.and_then(|b| (ptr as usize).checked_add(b)).is_none() {
        return Err(Error::invalid(
            arg,
            format!("length {len} ({size}-byte elements) exceeds the address space"),
        )
        .into());
    }
    let align = std::mem::align_of::<T>();
    if (ptr as usize) % align != 0 {
        return Err(Error::invalid(arg, format!("is not aligned to {align} bytes")).into());
    }
    Ok(())
}

pub(crate) fn out_ptr<T>(ptr: *mut T, arg: &'static str) -> FfiResult<*mut T> {
    if ptr.is_null() {
        Err(FfiError::Null(arg))
    } else {
        Ok(ptr)
    }
}

/// Moves a Rust string into a library-owned C string (free with `amlmil_string_free`).
pub(crate) fn into_c_string(s: String) -> *mut c_char {
    std::ffi::CString::new(s.replace('\0', "\\0"))
        .unwrap_or_default()
        .into_raw()
}

/// Serialises `value` into a library-owned C string (free with `amlmil_string_free`).
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> FfiResult<*mut c_char> {
    serde_json::to_string(value)
        .map(into_c_string)
        .map_err(|e| FfiError::Panic(e.to_string()))
}

/// The body of every JSON-configured entry point (training, pre-training, the
/// experiment): checks `out_json`, reads `config_json` (NULL or not UTF-8 are
/// errors naming it), `parse`s it, `run`s it and writes the report as JSON to
/// `*out_json` — only on success — all inside [`guard`], as the process's one
/// training call ([`super::cancel::exclusive_training`]).
///
/// # Safety
/// `config_json` must be NULL or NUL-terminated; `out_json` NULL or writable.
pub(crate) unsafe fn json_call<C, R: serde::Serialize>(
    name: &'static str,
    config_json: *const c_char,
    out_json: *mut *mut c_char,
    parse: impl FnOnce(&str) -> crate::Result<C>,
    run: impl FnOnce(C) -> crate::Result<R>,
) -> amlmil_status {
    guard(|| {
        let out = out_ptr(out_json, "out_report_json")?;
        // SAFETY: the caller's contract.
        let text = unsafe { arg_str(config_json, "config_json") }?;
        let config = parse(text)?;
        let report = super::cancel::exclusive_training(name, || Ok(run(config)?))?;
        // SAFETY: checked non-NULL above; written only on success.
        unsafe { *out = to_json(&report)? };
        Ok(())
    })
}
