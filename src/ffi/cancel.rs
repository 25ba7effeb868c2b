//! Cancelling a running call from another thread, and the one-training-call-
//! per-process rule.
//!
//! Long calls consult, at every progress report, both the caller's progress
//! callback and a cancellation check installed for the calling thread:
//! `amlmil_session_cancel` moves a session's cancel epoch (calls started
//! before see it), `amlmil_training_cancel` raises the training flag. Training
//! calls (pre-training, MIL training, cross-validation, feature extraction,
//! the experiment) run one at a time per process: libtorch's random seed and
//! thread pool are global, so a second concurrent call would change the first
//! one's results. It gets AMLMIL_STATUS_BUSY instead.
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::boundary::{guard_value, FfiResult};
use crate::error::Error;

type Check = Box<dyn Fn() -> bool>;

thread_local! {
    static CHECK: RefCell<Option<Check>> = const { RefCell::new(None) };
}

/// Whether the call running on this thread was cancelled from elsewhere.
pub(crate) fn cancel_requested() -> bool {
    CHECK.with(|c| c.borrow().as_ref().is_some_and(|check| check()))
}

/// Runs `f` with `check` consulted at each progress report on this thread
/// (the previous check is restored afterwards, also on unwinding).
pub(crate) fn with_cancel_check<R>(check: Check, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Check>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CHECK.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CHECK.with(|c| c.borrow_mut().replace(check)));
    f()
}

/// The training call running now, if any.
static TRAINING: Mutex<Option<&'static str>> = Mutex::new(None);
static TRAINING_CANCEL: AtomicBool = AtomicBool::new(false);

/// Runs the training entry point `name` unless another one is running
/// (then [`Error::Busy`] naming it).
pub(crate) fn exclusive_training<R>(
    name: &'static str,
    f: impl FnOnce() -> FfiResult<R>,
) -> FfiResult<R> {
    {
        let mut running = TRAINING.lock();
        if let Some(other) = *running {
            return Err(Error::Busy(format!(
                "{name}: {other} is running in this process; training calls run one at a time \
                 (libtorch's random seed is process-wide)"
            ))
            .into());
        }
        *running = Some(name);
        TRAINING_CANCEL.store(false, Ordering::SeqCst);
    }
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            *TRAINING.lock() = None;
        }
    }
    let _release = Release;
    with_cancel_check(Box::new(|| TRAINING_CANCEL.load(Ordering::SeqCst)), f)
}

/// Cancels the training call running in this process (`amlmil_pretrain`,
/// `amlmil_train_mil`, `amlmil_cross_validate`, `amlmil_extract_features`,
/// `amlmil_experiment`), from any thread. It returns
/// AMLMIL_STATUS_CANCELLED at its next progress report, with the files of its
/// last finished step intact (as when its progress callback cancels).
///
/// @return 1 if a training call was running, 0 if none was.
#[no_mangle]
pub extern "C" fn amlmil_training_cancel() -> u32 {
    guard_value(0, || {
        let running = TRAINING.lock();
        if running.is_some() {
            TRAINING_CANCEL.store(true, Ordering::SeqCst);
        }
        running.is_some() as u32
    })
}
