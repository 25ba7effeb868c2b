//! The C ABI's classification, called as a C program would: every result
//! accessor and the embeddings, empty bags and non-finite features,
//! progress and cancellation, logging and concurrent classification.
//! Sessions and bags on their own are in `tests/ffi.rs`.
mod common;

use std::ffi::{c_char, c_void, CStr};
use std::ptr;

use amlmil::ffi::*;
use common::ffi::{bag_with, c, cpu_options, expect, last_error, session};

#[test]
fn classify_and_read_every_output() {
    let s = session();
    let cells = common::cells(4, 144, 12);
    let bag = bag_with(&cells, 500);
    unsafe {
        let mut r = ptr::null_mut();
        assert_eq!(
            amlmil_session_classify(s, bag, None, ptr::null_mut(), &mut r),
            amlmil_status::Ok,
            "{}",
            last_error()
        );
        assert_eq!(amlmil_result_num_classes(r), 5);
        assert_eq!(amlmil_result_num_cells(r), 4);
        let names: Vec<String> = (0..5)
            .map(|i| {
                CStr::from_ptr(amlmil_result_class_name(r, i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, amlmil::classes::BAG_LABELS);
        assert!(amlmil_result_class_name(r, 5).is_null());
        let mut probs = [f32::NAN; 5];
        assert_eq!(
            amlmil_result_probabilities(r, probs.as_mut_ptr(), 5),
            amlmil_status::Ok
        );
        assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let mut small = [7.0f32; 4];
        expect(
            amlmil_result_probabilities(r, small.as_mut_ptr(), 4),
            amlmil_status::BufferTooSmall,
            "5 are needed",
        );
        assert_eq!(small, [7.0; 4], "buffer written on failure");
        let mut predicted = 99;
        assert_eq!(
            amlmil_result_predicted_class(r, &mut predicted),
            amlmil_status::Ok
        );
        let argmax = (0..5)
            .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
            .unwrap();
        assert_eq!(predicted, argmax);
        let mut ids = [0u64; 4];
        assert_eq!(
            amlmil_result_cell_ids(r, ids.as_mut_ptr(), 4),
            amlmil_status::Ok
        );
        assert_eq!(ids, [500, 501, 502, 503]);
        for class in 0..5 {
            let mut att = [0f32; 4];
            assert_eq!(
                amlmil_result_attention(
                    r,
                    class,
                    amlmil_attention_kind::Softmax as u32,
                    att.as_mut_ptr(),
                    4
                ),
                amlmil_status::Ok
            );
            assert!((att.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let mut raw = [0f32; 4];
            assert_eq!(
                amlmil_result_attention(
                    r,
                    class,
                    amlmil_attention_kind::Raw as u32,
                    raw.as_mut_ptr(),
                    4
                ),
                amlmil_status::Ok
            );
            // softmax(raw) == att
            let m = raw.iter().cloned().fold(f32::MIN, f32::max);
            let z: f32 = raw.iter().map(|v| (v - m).exp()).sum();
            for (a, r) in att.iter().zip(raw) {
                assert!((a - (r - m).exp() / z).abs() < 1e-5);
            }
            let mut top = [amlmil_ranked_cell {
                cell_id: 0,
                index: 0,
                attention: 0.0,
            }; 3];
            let mut written = 0usize;
            assert_eq!(
                amlmil_result_top_cells(r, class, 3, top.as_mut_ptr(), 3, &mut written),
                amlmil_status::Ok
            );
            assert_eq!(written, 3);
            assert!(top[0].attention >= top[1].attention && top[1].attention >= top[2].attention);
            assert_eq!(top[0].cell_id, 500 + top[0].index);
            assert_eq!(top[0].attention, att[top[0].index as usize]);
            // k larger than the bag gives the whole bag.
            let mut all = [amlmil_ranked_cell {
                cell_id: 0,
                index: 0,
                attention: 0.0,
            }; 4];
            assert_eq!(
                amlmil_result_top_cells(r, class, 100, all.as_mut_ptr(), 4, &mut written),
                amlmil_status::Ok
            );
            assert_eq!(written, 4);
        }
        let mut att = [0f32; 4];
        expect(
            amlmil_result_attention(r, 5, 0, att.as_mut_ptr(), 4),
            amlmil_status::InvalidArgument,
            "class_index",
        );
        expect(
            amlmil_result_attention(r, 0, 3, att.as_mut_ptr(), 4),
            amlmil_status::InvalidArgument,
            "kind",
        );
        let mut written = 42usize;
        let mut top = [amlmil_ranked_cell {
            cell_id: 0,
            index: 0,
            attention: 0.0,
        }; 1];
        expect(
            amlmil_result_top_cells(r, 0, 2, top.as_mut_ptr(), 1, &mut written),
            amlmil_status::BufferTooSmall,
            "out",
        );
        assert_eq!(written, 42);
        let mut json = ptr::null_mut();
        assert_eq!(amlmil_result_to_json(r, &mut json), amlmil_status::Ok);
        let v: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(json).to_str().unwrap()).unwrap();
        assert_eq!(v["cell_ids"].as_array().unwrap().len(), 4);
        amlmil_string_free(json);

        // Embeddings: N x 512 into a caller buffer.
        let dim = amlmil_session_feature_dim(s);
        assert_eq!(dim, 512);
        let mut feats = vec![f32::NAN; 4 * dim];
        assert_eq!(
            amlmil_session_embed(
                s,
                bag,
                None,
                ptr::null_mut(),
                feats.as_mut_ptr(),
                feats.len()
            ),
            amlmil_status::Ok
        );
        assert!(feats.iter().all(|v| v.is_finite()));
        let mut short = vec![1.5f32; 4 * dim - 1];
        expect(
            amlmil_session_embed(
                s,
                bag,
                None,
                ptr::null_mut(),
                short.as_mut_ptr(),
                short.len(),
            ),
            amlmil_status::BufferTooSmall,
            "2048",
        );
        assert!(short.iter().all(|v| *v == 1.5));

        let mut info = ptr::null_mut();
        assert_eq!(amlmil_session_info(s, &mut info), amlmil_status::Ok);
        assert!(CStr::from_ptr(info).to_str().unwrap().contains("resnet18"));
        amlmil_string_free(info);
        amlmil_result_free(r);
        amlmil_bag_free(bag);
        amlmil_session_free(s);
    }
}

#[test]
fn empty_bags_nan_features_and_null_handles_are_errors() {
    let s = session();
    let empty = bag_with(&[], 0);
    let sentinel = 0x99usize as *mut amlmil_result;
    let mut r = sentinel;
    unsafe {
        expect(
            amlmil_session_classify(s, empty, None, ptr::null_mut(), &mut r),
            amlmil_status::EmptyBag,
            "empty",
        );
        expect(
            amlmil_session_classify(ptr::null(), empty, None, ptr::null_mut(), &mut r),
            amlmil_status::NullArgument,
            "session",
        );
        expect(
            amlmil_session_classify(s, ptr::null(), None, ptr::null_mut(), &mut r),
            amlmil_status::NullArgument,
            "bag",
        );
        let mut buf = [0f32; 512];
        expect(
            amlmil_session_embed(s, empty, None, ptr::null_mut(), buf.as_mut_ptr(), 512),
            amlmil_status::EmptyBag,
            "empty",
        );

        let per_cell = amlmil_session_feature_map_len(s);
        assert_eq!(per_cell, 512 * 5 * 5);
        let mut feats = vec![0.5f32; 3 * per_cell];
        let ids = [10u64, 11, 12];
        let mut ok = ptr::null_mut();
        assert_eq!(
            amlmil_session_classify_features(
                s,
                feats.as_ptr(),
                feats.len(),
                3,
                ids.as_ptr(),
                &mut ok
            ),
            amlmil_status::Ok
        );
        amlmil_result_free(ok);
        feats[per_cell + 17] = f32::NAN;
        expect(
            amlmil_session_classify_features(
                s,
                feats.as_ptr(),
                feats.len(),
                3,
                ids.as_ptr(),
                &mut r,
            ),
            amlmil_status::NonFinite,
            "NaN",
        );
        feats[per_cell + 17] = f32::INFINITY;
        expect(
            amlmil_session_classify_features(
                s,
                feats.as_ptr(),
                feats.len(),
                3,
                ptr::null(),
                &mut r,
            ),
            amlmil_status::NonFinite,
            "NaN or infinity",
        );
        expect(
            amlmil_session_classify_features(
                s,
                feats.as_ptr(),
                feats.len() - 1,
                3,
                ptr::null(),
                &mut r,
            ),
            amlmil_status::InvalidArgument,
            "features_len",
        );
        expect(
            amlmil_session_classify_features(s, feats.as_ptr(), 0, 0, ptr::null(), &mut r),
            amlmil_status::EmptyBag,
            "num_cells",
        );
        expect(
            amlmil_session_classify_features(s, ptr::null(), feats.len(), 3, ptr::null(), &mut r),
            amlmil_status::NullArgument,
            "features",
        );
        expect(
            amlmil_session_classify_features(
                s,
                feats.as_ptr(),
                usize::MAX,
                usize::MAX,
                ptr::null(),
                &mut r,
            ),
            amlmil_status::Limit,
            "max_cells_per_bag",
        );
        assert_eq!(r, sentinel, "output written on failure");
        amlmil_bag_free(empty);
        amlmil_session_free(s);
    }
}

unsafe extern "C" fn cancel_after_first(user_data: *mut c_void, p: *const amlmil_progress) -> i32 {
    let calls = &mut *(user_data as *mut Vec<(String, u64, u64)>);
    let p = &*p;
    calls.push((
        CStr::from_ptr(p.stage).to_string_lossy().into_owned(),
        p.done,
        p.total,
    ));
    (calls.len() >= 2) as i32
}

#[test]
fn progress_reports_and_cancels() {
    let f = common::fixture();
    let (enc, mil) = (c(f.encoder.to_str().unwrap()), c(f.mil.to_str().unwrap()));
    let (mut o, _d) = cpu_options();
    o.batch_size = 2;
    let mut s = ptr::null_mut();
    let bag = bag_with(&common::cells(5, 144, 4), 0);
    unsafe {
        assert_eq!(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s),
            amlmil_status::Ok
        );
        let mut calls: Vec<(String, u64, u64)> = Vec::new();
        let mut r = ptr::null_mut();
        let st = amlmil_session_classify(
            s,
            bag,
            Some(cancel_after_first),
            &mut calls as *mut _ as *mut c_void,
            &mut r,
        );
        expect(st, amlmil_status::Cancelled, "after 2 of 5 cells");
        assert!(r.is_null());
        assert_eq!(
            calls,
            vec![("encode".into(), 0, 5), ("encode".into(), 2, 5)]
        );
        amlmil_bag_free(bag);
        amlmil_session_free(s);
    }
}

unsafe extern "C" fn collect_log(
    user_data: *mut c_void,
    level: u32,
    _target: *const c_char,
    message: *const c_char,
) {
    let sink = &*(user_data as *const parking_lot::Mutex<Vec<(u32, String)>>);
    sink.lock().push((
        level,
        CStr::from_ptr(message).to_string_lossy().into_owned(),
    ));
}

#[test]
fn log_records_reach_the_callback() {
    static SINK: parking_lot::Mutex<Vec<(u32, String)>> = parking_lot::Mutex::new(Vec::new());
    unsafe {
        let st = amlmil_set_log_callback(
            Some(collect_log),
            &SINK as *const _ as *mut c_void,
            amlmil_log_level::Info as u32,
        );
        assert_eq!(st, amlmil_status::Ok, "{}", last_error());
        let s = session();
        amlmil_session_free(s);
        assert_eq!(
            amlmil_set_log_callback(None, ptr::null_mut(), 0),
            amlmil_status::Ok
        );
    }
    let records = SINK.lock();
    assert!(
        records
            .iter()
            .any(|(l, m)| *l == amlmil_log_level::Info as u32 && m.contains("session: resnet18")),
        "{records:?}"
    );
}

#[test]
fn concurrent_classification_from_four_threads_equals_serial() {
    struct Shared(*mut amlmil_session);
    unsafe impl Sync for Shared {}
    let s = Shared(session());
    let bags: Vec<Vec<amlmil::CellImage>> = (0..4)
        .map(|i| common::cells(3 + i, 144, 100 + i as u64))
        .collect();
    let classify = |s: &Shared, cells: &[amlmil::CellImage]| -> Vec<f32> {
        let bag = bag_with(cells, 0);
        let out = common::ffi::classify_outputs(s.0, bag);
        unsafe { amlmil_bag_free(bag) };
        out
    };
    let serial: Vec<Vec<f32>> = bags.iter().map(|b| classify(&s, b)).collect();
    let parallel: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = bags
            .iter()
            .map(|b| scope.spawn(|| classify(&s, b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, b) in serial.iter().zip(&parallel) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "parallel result differs: {x} vs {y}");
        }
    }
    unsafe { amlmil_session_free(s.0) };
}

/// Shared by a blocking progress callback and the thread that cancels.
#[derive(Default)]
struct Gate {
    started: std::sync::atomic::AtomicBool,
    released: std::sync::atomic::AtomicBool,
}

impl Gate {
    fn wait(flag: &std::sync::atomic::AtomicBool) {
        let t = std::time::Instant::now();
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(t.elapsed().as_secs() < 60, "gate never opened");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Reports the first batch, then waits until the other thread has cancelled.
unsafe extern "C" fn hold_first_batch(user_data: *mut c_void, _: *const amlmil_progress) -> i32 {
    let gate = &*(user_data as *const Gate);
    if !gate.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
        Gate::wait(&gate.released);
    }
    0
}

#[test]
fn a_session_call_is_cancelled_from_another_thread() {
    let f = common::fixture();
    let (enc, mil) = (c(f.encoder.to_str().unwrap()), c(f.mil.to_str().unwrap()));
    let (mut o, _d) = cpu_options();
    o.batch_size = 1;
    o.warm_up = 0;
    let mut s = ptr::null_mut();
    let bag = bag_with(&common::cells(4, 144, 12), 0);
    unsafe {
        assert_eq!(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s),
            amlmil_status::Ok
        );
    }
    let gate = Gate::default();
    let (sp, bp) = (s as usize, bag as usize);
    let status = std::thread::scope(|scope| {
        let gate_ptr = &gate as *const Gate as usize;
        let worker = scope.spawn(move || unsafe {
            let mut r = ptr::null_mut();
            let st = amlmil_session_classify(
                sp as *const amlmil_session,
                bp as *const amlmil_bag,
                Some(hold_first_batch),
                gate_ptr as *mut c_void,
                &mut r,
            );
            (st, r.is_null(), last_error())
        });
        Gate::wait(&gate.started);
        unsafe { amlmil_session_cancel(sp as *const amlmil_session) };
        gate.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        worker.join().unwrap()
    });
    assert_eq!(status.0, amlmil_status::Cancelled, "{}", status.2);
    assert!(status.1, "no result on cancellation");
    assert!(status.2.contains("of 4 cells"), "{}", status.2);
    unsafe {
        // Calls started after the cancellation run normally; NULL is a no-op.
        amlmil_session_cancel(ptr::null());
        let mut r = ptr::null_mut();
        assert_eq!(
            amlmil_session_classify(s, bag, None, ptr::null_mut(), &mut r),
            amlmil_status::Ok
        );
        amlmil_result_free(r);
        amlmil_bag_free(bag);
        amlmil_session_free(s);
    }
}

#[test]
fn model_info_class_names_and_feature_maps_round_trip_through_classify_features() {
    let s = session();
    unsafe {
        let mut info: amlmil_model_info = std::mem::zeroed();
        let size = std::mem::size_of::<amlmil_model_info>();
        assert_eq!(
            amlmil_session_model_info(s, &mut info, size),
            amlmil_status::Ok
        );
        assert_eq!(info.struct_size, size);
        assert_eq!(info.num_classes, 5);
        assert_eq!((info.input_size, info.feature_dim), (144, 512));
        assert_eq!(
            (
                info.feature_map_channels,
                info.feature_map_height,
                info.feature_map_width
            ),
            (512, 5, 5)
        );
        assert!(
            info.pixel_size_um.is_nan(),
            "the fixture records no pixel size"
        );
        let text = |p: *const c_char| CStr::from_ptr(p).to_str().unwrap().to_owned();
        assert_eq!(text(info.encoder_architecture), "resnet18");
        assert_eq!(text(info.device), "cpu");
        assert_eq!(text(info.precision), "fp32");
        assert!(text(info.mil_tool).starts_with("amlmil "));
        // The hashes are the checksums the files were written with.
        let f = common::fixture();
        for (p, path) in [(info.encoder_sha256, &f.encoder), (info.mil_sha256, &f.mil)] {
            let want = amlmil::checkpoint::stored_checksum(path).unwrap().unwrap();
            assert_eq!(text(p), want);
            assert_eq!(want.len(), 64);
        }
        let names: Vec<String> = (0..5)
            .map(|i| text(amlmil_session_class_name(s, i)))
            .collect();
        assert_eq!(names[0], "PML_RARA");
        assert!(amlmil_session_class_name(s, 5).is_null());
        assert!(amlmil_session_class_name(ptr::null(), 0).is_null());
        // An older, shorter struct: only its fields are written.
        let mut old: amlmil_model_info = std::mem::zeroed();
        let old_size = std::mem::offset_of!(amlmil_model_info, feature_dim);
        old.feature_dim = 77;
        assert_eq!(
            amlmil_session_model_info(s, &mut old, old_size),
            amlmil_status::Ok
        );
        assert_eq!(
            (old.num_classes, old.input_size, old.feature_dim),
            (5, 144, 77)
        );
        assert_eq!(old.struct_size, old_size);
        // Sizes that do not hold `input_size` whole, or end inside a later
        // field, are refused and nothing is written.
        let input_end = std::mem::offset_of!(amlmil_model_info, input_size) + 4;
        let ptr_start = std::mem::offset_of!(amlmil_model_info, mil_tool);
        for bad in [
            4,
            input_end - 3,
            input_end - 1,
            ptr_start + 1,
            ptr_start + 7,
        ] {
            let mut fresh: amlmil_model_info = std::mem::zeroed();
            expect(
                amlmil_session_model_info(s, &mut fresh, bad),
                amlmil_status::InvalidArgument,
                "info_size",
            );
            assert_eq!((fresh.struct_size, fresh.num_classes), (0, 0), "size {bad}");
        }
        let mut fresh: amlmil_model_info = std::mem::zeroed();
        assert_eq!(
            amlmil_session_model_info(s, &mut fresh, ptr_start),
            amlmil_status::Ok
        );
        assert!(fresh.mil_tool.is_null() && !fresh.mil_sha256.is_null());
        expect(
            amlmil_session_model_info(s, ptr::null_mut(), size),
            amlmil_status::NullArgument,
            "out_info",
        );

        // Feature maps out, classified later: the same result as classify.
        let bag = bag_with(&common::cells(3, 144, 31), 40);
        let per_cell = amlmil_session_feature_map_len(s);
        let mut maps = vec![f32::NAN; 3 * per_cell];
        expect(
            amlmil_session_feature_maps(
                s,
                bag,
                None,
                ptr::null_mut(),
                maps.as_mut_ptr(),
                maps.len() - 1,
            ),
            amlmil_status::BufferTooSmall,
            "out",
        );
        assert!(maps[0].is_nan(), "output untouched on failure");
        assert_eq!(
            amlmil_session_feature_maps(
                s,
                bag,
                None,
                ptr::null_mut(),
                maps.as_mut_ptr(),
                maps.len()
            ),
            amlmil_status::Ok
        );
        let ids = [40u64, 41, 42];
        let (mut direct, mut cached) = (ptr::null_mut(), ptr::null_mut());
        assert_eq!(
            amlmil_session_classify(s, bag, None, ptr::null_mut(), &mut direct),
            amlmil_status::Ok
        );
        assert_eq!(
            amlmil_session_classify_features(
                s,
                maps.as_ptr(),
                maps.len(),
                3,
                ids.as_ptr(),
                &mut cached
            ),
            amlmil_status::Ok
        );
        let probs = |r: *const amlmil_result| {
            let mut p = vec![0f32; 5];
            amlmil_result_probabilities(r, p.as_mut_ptr(), 5);
            p
        };
        let (a, b) = (probs(direct), probs(cached));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
        // Duplicate ids are refused, as bags refuse them.
        let dup = [40u64, 41, 40];
        let mut r = ptr::null_mut();
        expect(
            amlmil_session_classify_features(s, maps.as_ptr(), maps.len(), 3, dup.as_ptr(), &mut r),
            amlmil_status::InvalidArgument,
            "id 40 at position 2",
        );
        assert!(r.is_null());
        amlmil_result_free(direct);
        amlmil_result_free(cached);
        amlmil_bag_free(bag);
        amlmil_session_free(s);
    }
}

/// `amlmil_result_to_html`: the cytologist's page of a plain bag, its name
/// escaped; NULL arguments and streaming bags (which keep no images) refused
/// naming the argument, the output untouched.
#[test]
fn a_result_becomes_the_cytologists_page() {
    let s = session();
    let cells = common::cells(5, 144, 21);
    let bag = bag_with(&cells, 40);
    unsafe {
        let mut r = ptr::null_mut();
        assert_eq!(
            amlmil_session_classify(s, bag, None, ptr::null_mut(), &mut r),
            amlmil_status::Ok
        );
        let mut html: *mut c_char = ptr::null_mut();
        let name = c("patient <7>");
        assert_eq!(
            amlmil_result_to_html(s, bag, r, name.as_ptr(), 2, &mut html),
            amlmil_status::Ok,
            "{}",
            last_error()
        );
        let page = CStr::from_ptr(html).to_str().unwrap().to_owned();
        amlmil_string_free(html);
        assert!(page.starts_with("<!DOCTYPE html>") && page.contains("patient &lt;7&gt;"));
        assert!(page.contains("Research software"));
        assert_eq!(page.matches("data:image/jpeg;base64,").count(), 5 + 5 * 2);
        let mut untouched: *mut c_char = ptr::null_mut();
        expect(
            amlmil_result_to_html(s, ptr::null(), r, ptr::null(), 0, &mut untouched),
            amlmil_status::NullArgument,
            "bag",
        );
        let mut streamed = ptr::null_mut();
        assert_eq!(amlmil_bag_new(&mut streamed), amlmil_status::Ok);
        assert_eq!(amlmil_bag_stream(streamed, s), amlmil_status::Ok);
        expect(
            amlmil_result_to_html(s, streamed, r, ptr::null(), 0, &mut untouched),
            amlmil_status::InvalidArgument,
            "streaming bag",
        );
        assert!(untouched.is_null());
        amlmil_bag_free(streamed);
        amlmil_result_free(r);
        amlmil_bag_free(bag);
    }
}
