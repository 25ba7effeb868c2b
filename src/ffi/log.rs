//! Routing the library's `log` records to a C callback.
use std::ffi::{c_char, c_void, CString};
use std::sync::OnceLock;

use parking_lot::RwLock;

use super::boundary::guard;
use super::status::{amlmil_status, FfiError};

/// Log levels (values of `max_level` and of the callback's `level`).
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum amlmil_log_level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// Receives one log record. `target` and `message` are valid during the call only.
/// May be called from any thread that runs library code, concurrently.
#[allow(non_camel_case_types)]
pub type amlmil_log_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        level: u32,
        target: *const c_char,
        message: *const c_char,
    ),
>;

struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, u32, *const c_char, *const c_char),
    user_data: usize,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static INSTALLED: OnceLock<bool> = OnceLock::new();

struct CallbackLogger;

impl log::Log for CallbackLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level() && SINK.read().is_some()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(sink) = SINK.read().as_ref() {
            let target = CString::new(record.target()).unwrap_or_default();
            let message =
                CString::new(record.args().to_string().replace('\0', "\\0")).unwrap_or_default();
            // SAFETY: the registrant vouches for the callback and its user data.
            unsafe {
                (sink.callback)(
                    sink.user_data as *mut c_void,
                    record.level() as u32,
                    target.as_ptr(),
                    message.as_ptr(),
                )
            };
        }
    }

    fn flush(&self) {}
}

/// Routes the library's log records at or above `max_level` to `callback`.
/// Pass a NULL callback (or `max_level` 0) to stop logging.
///
/// @return AMLMIL_STATUS_UNSUPPORTED if the host process already installed another
///   Rust `log` logger (then that one receives the records).
/// Thread safety: may be called at any time from any thread.
#[no_mangle]
pub unsafe extern "C" fn amlmil_set_log_callback(
    callback: amlmil_log_callback,
    user_data: *mut c_void,
    max_level: u32,
) -> amlmil_status {
    guard(|| {
        let ours =
            *INSTALLED.get_or_init(|| log::set_boxed_logger(Box::new(CallbackLogger)).is_ok());
        if !ours {
            return Err(FfiError::Unsupported(
                "another `log` logger is already installed in this process".into(),
            ));
        }
        let level = match max_level {
            0 => log::LevelFilter::Off,
            1 => log::LevelFilter::Error,
            2 => log::LevelFilter::Warn,
            3 => log::LevelFilter::Info,
            4 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        };
        *SINK.write() = callback.map(|callback| Sink {
            callback,
            user_data: user_data as usize,
        });
        log::set_max_level(if callback.is_some() {
            level
        } else {
            log::LevelFilter::Off
        });
        Ok(())
    })
}
