//! Resident memory stays bounded: 1,000 cycles of session create / classify /
//! free, then 10,000 bags classified on one session, through the C ABI. After a
//! warm-up (libtorch's allocator caches, thread pools and the first-touch of
//! the weights), the resident set (`VmRSS`) may not grow by more than a stated
//! bound ([`BOUND_MIB`]): a leaked session's weights (≈45 MB) would break it
//! within two cycles, a leaked bag's pixels (12 KB a cell) well before 10,000
//! bags.
//!
//! One test function, so that no other test of this binary allocates in
//! parallel while the resident set is read.
mod common;

use std::ptr;

use amlmil::ffi::*;
use common::ffi::{bag_with, c, classify_outputs, cpu_options, last_error};

/// Session cycles and bags (AMLMIL_LEAKS_CYCLES / AMLMIL_LEAKS_BAGS override).
const CYCLES: usize = 1_000;
const BAGS: usize = 10_000;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .map(|v| v.parse().expect(var))
        .unwrap_or(default)
}
/// Cycles and bags run before the baseline is read.
const WARM_UP: usize = 50;
/// Allowed growth of the resident set after warm-up, in MiB, for each phase.
const BOUND_MIB: f64 = 64.0;

extern "C" {
    /// glibc: returns freed heap memory of every arena to the system.
    fn malloc_trim(pad: usize) -> i32;
}

/// The resident set of this process, in MiB, from /proc/self/status, after
/// glibc has given back what is freed: memory still held is memory in use, not
/// free pages cached in one of the allocator's per-thread arenas (whose amount
/// varies from run to run with which threads freed what).
fn rss_mib() -> f64 {
    // SAFETY: a plain glibc call with no preconditions.
    unsafe { malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kib / 1024.0
}

fn new_session() -> *mut amlmil_session {
    let f = common::small_fixture();
    let (enc, mil) = (c(f.encoder.to_str().unwrap()), c(f.mil.to_str().unwrap()));
    let (mut o, _d) = cpu_options();
    o.warm_up = 0;
    o.batch_size = 4;
    let mut s = ptr::null_mut();
    let st = unsafe { amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s) };
    assert_eq!(st, amlmil_status::Ok, "{}", last_error());
    s
}

/// Runs `step(i)` for `n` iterations; returns (baseline after warm-up, peak
/// after it, final) resident set in MiB, printing progress for docs/reliability.md.
fn measure(what: &str, n: usize, mut step: impl FnMut(usize)) -> (f64, f64, f64) {
    let started = std::time::Instant::now();
    let mut base = 0.0;
    let mut peak = 0.0f64;
    for i in 0..n {
        step(i);
        if i + 1 == WARM_UP {
            base = rss_mib();
        } else if i + 1 > WARM_UP && (i + 1) % 50 == 0 {
            peak = peak.max(rss_mib());
        }
    }
    let last = rss_mib();
    peak = peak.max(last);
    eprintln!(
        "{what}: {n} iterations in {:.0} s; VmRSS after {WARM_UP}: {base:.1} MiB, \
         peak after: {peak:.1} MiB (+{:.1}), final: {last:.1} MiB",
        started.elapsed().as_secs_f64(),
        peak - base
    );
    (base, peak, last)
}

#[test]
fn resident_memory_stays_bounded() {
    let cells = common::cells(3, 64, 77);
    let bag = bag_with(&cells, 1);

    let (cycles, bags) = (
        count("AMLMIL_LEAKS_CYCLES", CYCLES),
        count("AMLMIL_LEAKS_BAGS", BAGS),
    );
    let (base, peak, _) = measure("session create/classify/free", cycles, |_| {
        let s = new_session();
        assert_eq!(classify_outputs(s, bag).len(), 5 + 5 * 3);
        unsafe { amlmil_session_free(s) };
    });
    assert!(
        peak - base <= BOUND_MIB,
        "{cycles} session cycles grew the resident set by {:.1} MiB (bound {BOUND_MIB})",
        peak - base
    );

    let s = new_session();
    let (base, peak, _) = measure("bags on one session", bags, |i| {
        // A new bag each time (1 to 3 cells), so bags' storage is freed too.
        let b = bag_with(&cells[..1 + i % 3], i as u64 * 10);
        let out = classify_outputs(s, b);
        assert_eq!(out.len(), 5 + 5 * (1 + i % 3));
        unsafe { amlmil_bag_free(b) };
    });
    unsafe {
        amlmil_session_free(s);
        amlmil_bag_free(bag);
    }
    assert!(
        peak - base <= BOUND_MIB,
        "{bags} bags grew the resident set by {:.1} MiB (bound {BOUND_MIB})",
        peak - base
    );
}
