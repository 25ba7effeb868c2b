//! The Rust side of `csrc/c10d/shim.cpp`: one owned handle (a store and, but
//! for a store-only clone, a Gloo process group) and its calls, each turning
//! the shim's error string into a `String`.
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

use tch::Tensor;

extern "C" {
    fn amlmil_c10d_free_error(err: *mut c_char);
    fn amlmil_c10d_new(
        host: *const c_char,
        port: u16,
        rank: c_int,
        world: c_int,
        is_server: c_int,
        agent: c_int,
        prefix: *const c_char,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn amlmil_c10d_store_clone(
        group: *mut c_void,
        prefix: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn amlmil_c10d_free(group: *mut c_void);
    fn amlmil_c10d_all_reduce_sum(
        group: *mut c_void,
        t: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn amlmil_c10d_all_gather(
        group: *mut c_void,
        t: *mut c_void,
        differentiable: c_int,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn amlmil_c10d_broadcast(
        group: *mut c_void,
        t: *mut c_void,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn amlmil_c10d_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn amlmil_c10d_store_add(
        group: *mut c_void,
        key: *const c_char,
        value: i64,
        err: *mut *mut c_char,
    ) -> i64;
}

/// Takes the shim's message (or says there was none).
fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "c10d failed without a message".to_owned();
    }
    // SAFETY: the shim hands over a NUL-terminated malloc'd string, ours to free.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    unsafe { amlmil_c10d_free_error(err) };
    msg
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("`{s}` contains a NUL byte"))
}

/// An owned shim handle.
pub(super) struct Handle(*mut c_void);

// SAFETY: c10d's store and process group may be used from any thread; the
// handle is only freed on drop.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Handle {
    #[allow(clippy::too_many_arguments)] // the C function's arguments
    pub(super) fn new(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        is_server: bool,
        agent: bool,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Handle, String> {
        let (host, prefix) = (cstring(host)?, cstring(prefix)?);
        let mut err = std::ptr::null_mut();
        // SAFETY: valid C strings; the shim catches every C++ exception.
        let h = unsafe {
            amlmil_c10d_new(
                host.as_ptr(),
                port,
                rank as c_int,
                world as c_int,
                c_int::from(is_server),
                c_int::from(agent),
                prefix.as_ptr(),
                timeout.as_millis().min(i64::MAX as u128) as i64,
                &mut err,
            )
        };
        if h.is_null() {
            Err(take_error(err))
        } else {
            Ok(Handle(h))
        }
    }

    /// A second store connection under `prefix` (no process group).
    pub(super) fn store_clone(&self, prefix: &str) -> Result<Handle, String> {
        let prefix = cstring(prefix)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: self.0 is a live handle.
        let h = unsafe { amlmil_c10d_store_clone(self.0, prefix.as_ptr(), &mut err) };
        if h.is_null() {
            Err(take_error(err))
        } else {
            Ok(Handle(h))
        }
    }

    pub(super) fn all_reduce_sum(&self, t: &Tensor) -> Result<(), String> {
        let mut err = std::ptr::null_mut();
        // SAFETY: tch's tensor pointer is an `at::Tensor*`; the shim reduces in place.
        let rc = unsafe { amlmil_c10d_all_reduce_sum(self.0, t.as_ptr() as *mut c_void, &mut err) };
        if rc == 0 {
            Ok(())
        } else {
            Err(take_error(err))
        }
    }

    pub(super) fn all_gather(&self, t: &Tensor, differentiable: bool) -> Result<Tensor, String> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as above; the result is a new `at::Tensor*` that tch then owns.
        let out = unsafe {
            amlmil_c10d_all_gather(
                self.0,
                t.as_ptr() as *mut c_void,
                c_int::from(differentiable),
                &mut err,
            )
        };
        if out.is_null() {
            Err(take_error(err))
        } else {
            // SAFETY: allocated by `new at::Tensor(...)`, as tch's own results are.
            Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
        }
    }

    pub(super) fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), String> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe {
            amlmil_c10d_broadcast(self.0, t.as_ptr() as *mut c_void, root as c_int, &mut err)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(take_error(err))
        }
    }

    pub(super) fn barrier(&self) -> Result<(), String> {
        let mut err = std::ptr::null_mut();
        // SAFETY: self.0 is a live handle.
        if unsafe { amlmil_c10d_barrier(self.0, &mut err) } == 0 {
            Ok(())
        } else {
            Err(take_error(err))
        }
    }

    pub(super) fn store_add(&self, key: &str, value: i64) -> Result<i64, String> {
        let key = cstring(key)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: self.0 is a live handle; key a valid C string.
        let v = unsafe { amlmil_c10d_store_add(self.0, key.as_ptr(), value, &mut err) };
        if v < 0 && !err.is_null() {
            Err(take_error(err))
        } else {
            Ok(v)
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: owned, freed once.
        unsafe { amlmil_c10d_free(self.0) }
    }
}
