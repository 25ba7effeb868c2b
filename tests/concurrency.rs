//! Concurrency through the C ABI: 8 threads × 100 bags, on one shared session
//! and on one session per thread, give bit-for-bit the results of classifying
//! the same bags serially; sessions are created and freed while others
//! classify; the log callback receives records from several threads at once.
mod common;

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use amlmil::ffi::*;
use common::ffi::{bag_with, c, cpu_options, last_error};

const THREADS: usize = 8;
const BAGS: usize = 100;

struct Handle(*mut amlmil_session);
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

fn new_session() -> Handle {
    let f = common::small_fixture();
    let (enc, mil) = (&f.encoder, &f.mil);
    let (enc, mil) = (c(enc.to_str().unwrap()), c(mil.to_str().unwrap()));
    let (mut o, _d) = cpu_options();
    o.warm_up = 0;
    o.batch_size = 4;
    let mut s = ptr::null_mut();
    let st = unsafe { amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s) };
    assert_eq!(st, amlmil_status::Ok, "{}", last_error());
    Handle(s)
}

/// Probabilities and softmax attention of every class, as raw bits.
fn classify(s: &Handle, bag: usize) -> Vec<u32> {
    let cells = common::cells(2 + bag % 3, 64, 1000 + bag as u64);
    let b = bag_with(&cells, bag as u64 * 10);
    let out = common::ffi::classify_outputs(s.0, b);
    unsafe { amlmil_bag_free(b) };
    out.iter().map(|v| v.to_bits()).collect()
}

/// Thread `t` classifies bags t, t+8, t+16, … with the session `pick(t)` gives.
fn run_threads(pick: &(dyn Fn(usize) -> &'static Handle + Sync)) -> Vec<Vec<u32>> {
    let mut results = vec![Vec::new(); THREADS * BAGS];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    (0..BAGS)
                        .map(|i| {
                            let bag = t + i * THREADS;
                            (bag, classify(pick(t), bag % BAGS))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (bag, r) in h.join().unwrap() {
                results[bag] = r;
            }
        }
    });
    results
}

#[test]
fn eight_threads_by_a_hundred_bags_equal_serial_bit_for_bit() {
    static SHARED: OnceLock<Handle> = OnceLock::new();
    static OWN: OnceLock<Vec<Handle>> = OnceLock::new();
    let shared = SHARED.get_or_init(new_session);
    let serial: Vec<Vec<u32>> = (0..BAGS).map(|b| classify(shared, b)).collect();
    let want = |bag: usize| &serial[bag % BAGS];

    let one_session = run_threads(&|_| SHARED.get().unwrap());
    for (bag, r) in one_session.iter().enumerate() {
        assert!(
            r == want(bag),
            "bag {bag}: one shared session differs from serial"
        );
    }
    OWN.get_or_init(|| (0..THREADS).map(|_| new_session()).collect());
    let own_sessions = run_threads(&|t| &OWN.get().unwrap()[t]);
    for (bag, r) in own_sessions.iter().enumerate() {
        assert!(
            r == want(bag),
            "bag {bag}: per-thread sessions differ from serial"
        );
    }
    // Sessions created and freed while another thread classifies.
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| (0..40).map(|b| classify(shared, b)).collect::<Vec<_>>());
        for _ in 0..4 {
            let s = new_session();
            assert!(classify(&s, 7) == *want(7));
            unsafe { amlmil_session_free(s.0) };
        }
        for (b, r) in worker.join().unwrap().iter().enumerate() {
            assert!(
                *r == *want(b),
                "bag {b} changed while sessions came and went"
            );
        }
    });
    for s in OWN.get().unwrap() {
        unsafe { amlmil_session_free(s.0) };
    }
}

static RECORDS: AtomicUsize = AtomicUsize::new(0);
static THREADS_SEEN: std::sync::Mutex<Vec<std::thread::ThreadId>> =
    std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn count(
    _: *mut c_void,
    _: u32,
    _: *const std::ffi::c_char,
    _: *const std::ffi::c_char,
) {
    RECORDS.fetch_add(1, Ordering::SeqCst);
    let id = std::thread::current().id();
    let mut seen = THREADS_SEEN.lock().unwrap();
    if !seen.contains(&id) {
        seen.push(id);
    }
}

#[test]
fn the_log_callback_receives_records_from_several_threads_at_once() {
    let st = unsafe { amlmil_set_log_callback(Some(count), ptr::null_mut(), 5) };
    assert_eq!(st, amlmil_status::Ok, "{}", last_error());
    // Each session creation logs at info level; four threads at once.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let s = new_session();
                unsafe { amlmil_session_free(s.0) };
            });
        }
    });
    unsafe { amlmil_set_log_callback(None, ptr::null_mut(), 0) };
    assert!(
        RECORDS.load(Ordering::SeqCst) >= 4,
        "{} records",
        RECORDS.load(Ordering::SeqCst)
    );
    assert!(
        THREADS_SEEN.lock().unwrap().len() >= 4,
        "records came from fewer threads"
    );
}
