//! Streaming bags: cells encoded on a background worker as they are added give
//! the same classification as a plain bag, bit for bit; classifying after the
//! last cell waits only for the rest; the C ABI's `amlmil_bag_stream` keeps
//! every bag call working and refuses what needs the dropped images.
mod common;

use std::ffi::{CStr, CString};
use std::ptr;
use std::sync::Arc;

use amlmil::ffi::*;
use amlmil::{Bag, DeviceSpec, Session, SessionOptions, StreamingBag};

fn session(batch_size: usize) -> Arc<Session> {
    let f = common::fixture();
    let options = SessionOptions {
        device: DeviceSpec::Cpu,
        batch_size,
        ..Default::default()
    };
    Arc::new(Session::new(&f.encoder, &f.mil, &options).unwrap())
}

#[test]
fn streaming_equals_a_plain_bag_and_can_grow_after_classifying() {
    let s = session(8);
    let cells = common::cells(29, 144, 41);
    let mut plain = Bag::new();
    let mut stream = StreamingBag::new(s.clone()).unwrap();
    for (i, c) in cells.iter().enumerate() {
        plain.add(100 + i as u64, c.clone()).unwrap();
        stream.add(100 + i as u64, c.clone()).unwrap();
        if i == 19 {
            // Classify part-way, then keep adding: both bags agree at every point.
            let a = s.classify(&plain, &mut |_, _, _| true).unwrap();
            let b = stream.classify(&mut |_, _, _| true).unwrap();
            assert_eq!(a, b);
        }
    }
    let a = s.classify(&plain, &mut |_, _, _| true).unwrap();
    let mut seen = Vec::new();
    let b = stream
        .classify(&mut |stage, done, total| {
            seen.push((stage.to_owned(), done, total));
            true
        })
        .unwrap();
    assert_eq!(
        a, b,
        "a streamed bag must classify exactly as the plain bag"
    );
    assert_eq!(seen.last().unwrap(), &("encode".to_owned(), 29, 29));
    assert_eq!(
        stream.encoded(),
        24,
        "full batches are encoded, the partial one stays pending"
    );
    assert!(
        stream.add(100, cells[0].clone()).is_err(),
        "duplicate id accepted"
    );
    assert_eq!(stream.len(), 29);
    // Cancelling while waiting leaves the bag usable.
    stream.add(500, cells[0].clone()).unwrap();
    let e = stream
        .classify(&mut |_, done, total| done == total)
        .unwrap_err();
    assert!(matches!(e, amlmil::Error::Cancelled(_)), "{e}");
    assert_eq!(
        stream.classify(&mut |_, _, _| true).unwrap().num_cells(),
        30
    );
    let empty = StreamingBag::new(s).unwrap();
    assert!(matches!(
        empty.classify(&mut |_, _, _| true),
        Err(amlmil::Error::EmptyBag(_))
    ));
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(amlmil_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_c_bag_calls_work_on_a_streaming_bag() {
    let f = common::fixture();
    let device = CString::new("cpu").unwrap();
    let (enc, mil) = (
        CString::new(f.encoder.to_str().unwrap()).unwrap(),
        CString::new(f.mil.to_str().unwrap()).unwrap(),
    );
    let cells = common::cells(12, 144, 42);
    // SAFETY: every pointer is valid or NULL as the header allows; handles are freed.
    unsafe {
        let mut o = amlmil_session_options::default();
        amlmil_session_options_init(&mut o);
        o.device = device.as_ptr();
        o.batch_size = 5;
        let (mut s, mut other) = (ptr::null_mut(), ptr::null_mut());
        assert_eq!(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s),
            amlmil_status::Ok
        );
        assert_eq!(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut other),
            amlmil_status::Ok
        );
        let (mut plain, mut streaming) = (ptr::null_mut(), ptr::null_mut());
        amlmil_bag_new(&mut plain);
        amlmil_bag_new(&mut streaming);
        assert_eq!(amlmil_bag_stream(streaming, s), amlmil_status::Ok);
        assert_eq!(
            amlmil_bag_stream(streaming, s),
            amlmil_status::InvalidArgument
        );
        assert!(last_error().contains("streams already"));
        for (i, c) in cells.iter().enumerate() {
            let rgb = c.rgb();
            for bag in [plain, streaming] {
                let st = amlmil_bag_add_pixels(
                    bag,
                    i as u64,
                    rgb.as_ptr(),
                    rgb.len(),
                    144,
                    144,
                    144 * 3,
                    0,
                );
                assert_eq!(st, amlmil_status::Ok, "{}", last_error());
            }
        }
        let mut n = 0;
        amlmil_bag_len(streaming, &mut n);
        assert_eq!(n, 12);
        assert_eq!(amlmil_bag_stream(plain, s), amlmil_status::InvalidArgument);
        assert!(last_error().contains("holds 12 cells"), "{}", last_error());
        let (mut a, mut b, mut r) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
        assert_eq!(
            amlmil_session_classify(s, plain, None, ptr::null_mut(), &mut a),
            amlmil_status::Ok
        );
        assert_eq!(
            amlmil_session_classify(s, streaming, None, ptr::null_mut(), &mut b),
            amlmil_status::Ok
        );
        let (mut pa, mut pb) = ([0f32; 5], [0f32; 5]);
        amlmil_result_probabilities(a, pa.as_mut_ptr(), 5);
        amlmil_result_probabilities(b, pb.as_mut_ptr(), 5);
        assert_eq!(pa, pb);
        amlmil_result_free(a);
        amlmil_result_free(b);
        assert_eq!(
            amlmil_session_classify(other, streaming, None, ptr::null_mut(), &mut r),
            amlmil_status::Mismatch
        );
        assert!(last_error().contains("another session"));
        let mut out = vec![0f32; 12 * 512];
        let st = amlmil_session_embed(
            s,
            streaming,
            None,
            ptr::null_mut(),
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(st, amlmil_status::InvalidArgument);
        assert!(
            last_error().contains("amlmil_session_embed"),
            "{}",
            last_error()
        );
        // Clearing keeps it streaming; freeing the session first is safe (the bag holds it).
        assert_eq!(amlmil_bag_clear(streaming), amlmil_status::Ok);
        amlmil_bag_len(streaming, &mut n);
        assert_eq!(n, 0);
        amlmil_session_free(s);
        let rgb = cells[0].rgb();
        assert_eq!(
            amlmil_bag_add_pixels(streaming, 7, rgb.as_ptr(), rgb.len(), 144, 144, 432, 0),
            amlmil_status::Ok
        );
        assert!(r.is_null());
        amlmil_bag_free(streaming);
        amlmil_bag_free(plain);
        amlmil_session_free(other);
    }
}
