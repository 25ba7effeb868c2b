//! Helpers of the C ABI tests (`tests/ffi.rs`, `tests/ffi_classify.rs`):
//! calling the exported functions as a C program would, checking statuses and
//! the thread's last error message.
use std::ffi::{CStr, CString};
use std::ptr;

use amlmil::ffi::*;

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(amlmil_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts a status and that the message mentions `needle`.
#[track_caller]
pub fn expect(status: amlmil_status, want: amlmil_status, needle: &str) {
    assert_eq!(status, want, "message: {}", last_error());
    let msg = last_error();
    assert!(
        msg.contains(needle),
        "message `{msg}` does not mention `{needle}`"
    );
}

pub fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

pub fn cpu_options() -> (amlmil_session_options, CString) {
    let device = c("cpu");
    let mut o = amlmil_session_options::default();
    unsafe {
        assert_eq!(
            amlmil_session_options_init_sized(&mut o, std::mem::size_of_val(&o)),
            amlmil_status::Ok
        )
    };
    o.device = device.as_ptr();
    (o, device)
}

pub fn session() -> *mut amlmil_session {
    let f = super::fixture();
    let (enc, mil) = (c(f.encoder.to_str().unwrap()), c(f.mil.to_str().unwrap()));
    let (o, _d) = cpu_options();
    let mut s = ptr::null_mut();
    unsafe {
        assert_eq!(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s),
            amlmil_status::Ok,
            "{}",
            last_error()
        )
    };
    s
}

pub fn bag_with(cells: &[amlmil::CellImage], first_id: u64) -> *mut amlmil_bag {
    let mut bag = ptr::null_mut();
    unsafe {
        assert_eq!(amlmil_bag_new(&mut bag), amlmil_status::Ok);
        for (i, cell) in cells.iter().enumerate() {
            let px = cell.rgb();
            let st = amlmil_bag_add_pixels(
                bag,
                first_id + i as u64,
                px.as_ptr(),
                px.len(),
                cell.width(),
                cell.height(),
                cell.width() as usize * 3,
                amlmil_pixel_format::Rgb8 as u32,
            );
            assert_eq!(st, amlmil_status::Ok, "{}", last_error());
        }
    }
    bag
}

/// One classification's probabilities, then every class's softmax attention
/// (class-major), read through the C accessors.
pub fn classify_outputs(s: *const amlmil_session, bag: *const amlmil_bag) -> Vec<f32> {
    let mut r = ptr::null_mut();
    unsafe {
        let st = amlmil_session_classify(s, bag, None, ptr::null_mut(), &mut r);
        assert_eq!(st, amlmil_status::Ok, "{}", last_error());
        let (c, n) = (amlmil_result_num_classes(r), amlmil_result_num_cells(r));
        let mut out = vec![0f32; c + c * n];
        assert_eq!(
            amlmil_result_probabilities(r, out.as_mut_ptr(), c),
            amlmil_status::Ok
        );
        for class in 0..c {
            let dst = out[c + class * n..].as_mut_ptr();
            assert_eq!(
                amlmil_result_attention(r, class, 0, dst, n),
                amlmil_status::Ok
            );
        }
        amlmil_result_free(r);
        out
    }
}
