//! Preprocessing plugins through the C ABI: a C callback on the session
//! options and the example Rust plugin (`plugins/grey-world`, loaded at run
//! time through abi_stable) change results exactly as the same change made to
//! the cells beforehand would; failing, panicking, missing and incompatible
//! plugins give AMLMIL_STATUS_PLUGIN, never a crash.
mod common;

use std::ffi::{c_void, CString};
use std::path::PathBuf;
use std::ptr;

use amlmil::ffi::*;
use amlmil::CellImage;
use common::ffi::{bag_with, c, cpu_options, expect, last_error, session};

/// The example plugin, built by `cargo build` beside libamlmil.so.
fn grey_world_plugin() -> PathBuf {
    let p = common::lib_dir().join("libamlmil_grey_world.so");
    assert!(
        p.exists(),
        "{} missing: run `cargo build` (it builds the workspace's example plugin)",
        p.display()
    );
    p
}

/// A session on the fixture's checkpoints with `edit` applied to CPU options.
fn session_with(
    edit: impl FnOnce(&mut amlmil_session_options),
) -> Result<*mut amlmil_session, amlmil_status> {
    let f = common::fixture();
    let (enc, mil) = (c(f.encoder.to_str().unwrap()), c(f.mil.to_str().unwrap()));
    let (mut o, _device) = cpu_options();
    o.warm_up = 0;
    edit(&mut o);
    let mut s = ptr::null_mut();
    match unsafe { amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s) } {
        amlmil_status::Ok => Ok(s),
        st => {
            assert!(s.is_null(), "out_session written on failure");
            Err(st)
        }
    }
}

/// Cell ids and probabilities of one classification.
fn classify(
    s: *const amlmil_session,
    bag: *const amlmil_bag,
) -> Result<(Vec<u64>, Vec<f32>), amlmil_status> {
    unsafe {
        let mut r = ptr::null_mut();
        let st = amlmil_session_classify(s, bag, None, ptr::null_mut(), &mut r);
        if st != amlmil_status::Ok {
            return Err(st);
        }
        let n = amlmil_result_num_cells(r);
        let mut ids = vec![0u64; n];
        let mut probs = vec![0f32; amlmil_result_num_classes(r)];
        assert_eq!(
            amlmil_result_cell_ids(r, ids.as_mut_ptr(), n),
            amlmil_status::Ok
        );
        assert_eq!(
            amlmil_result_probabilities(r, probs.as_mut_ptr(), probs.len()),
            amlmil_status::Ok
        );
        amlmil_result_free(r);
        Ok((ids, probs))
    }
}

fn mapped(cells: &[CellImage], f: impl Fn(&mut [u8])) -> Vec<CellImage> {
    cells
        .iter()
        .map(|c| {
            let mut rgb = c.rgb().to_vec();
            f(&mut rgb);
            CellImage::from_rgb(c.width(), c.height(), rgb).unwrap()
        })
        .collect()
}

/// Inverts every pixel and drops cells with odd ids; counts its calls.
unsafe extern "C" fn invert_and_drop_odd(
    user_data: *mut c_void,
    cells: *mut amlmil_cell,
    n: usize,
) -> i32 {
    *(user_data as *mut usize) += 1;
    for cell in std::slice::from_raw_parts_mut(cells, n) {
        let len = cell.width as usize * cell.height as usize * 3;
        for v in std::slice::from_raw_parts_mut(cell.pixels, len) {
            *v = 255 - *v;
        }
        if cell.cell_id % 2 == 1 {
            cell.keep = 0;
        }
    }
    0
}

unsafe extern "C" fn refuse(_: *mut c_void, _: *mut amlmil_cell, _: usize) -> i32 {
    7
}

unsafe extern "C" fn drop_all(_: *mut c_void, cells: *mut amlmil_cell, n: usize) -> i32 {
    for cell in std::slice::from_raw_parts_mut(cells, n) {
        cell.keep = 0;
    }
    0
}

#[test]
fn c_callback_changes_pixels_and_drops_cells_as_a_prepared_bag_would() {
    let cells = common::cells(5, 144, 41);
    let mut calls = 0usize;
    let s = session_with(|o| {
        o.batch_size = 2;
        o.preprocess = Some(invert_and_drop_odd);
        o.preprocess_user_data = &mut calls as *mut usize as *mut c_void;
    })
    .unwrap_or_else(|st| panic!("{st:?}: {}", last_error()));
    let bag = bag_with(&cells, 0);
    let (ids, probs) = classify(s, bag).unwrap();
    assert_eq!(ids, [0, 2, 4], "odd ids dropped, bag order kept");
    assert_eq!(calls, 3, "one call per batch of 2 (5 cells)");

    // The same cells inverted and without the odd ones, through a plain session.
    let plain = session();
    let inverted = mapped(&cells, |px| px.iter_mut().for_each(|v| *v = 255 - *v));
    let kept: Vec<CellImage> = inverted.into_iter().step_by(2).collect();
    let expected_bag = bag_with(&kept, 0);
    let mut r = ptr::null_mut();
    unsafe {
        assert_eq!(
            amlmil_session_classify(plain, expected_bag, None, ptr::null_mut(), &mut r),
            amlmil_status::Ok
        );
        let mut want = vec![0f32; amlmil_result_num_classes(r)];
        amlmil_result_probabilities(r, want.as_mut_ptr(), want.len());
        amlmil_result_free(r);
        for (a, b) in probs.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{probs:?} vs {want:?}");
        }
        // The change is real: the untouched bag classifies differently.
        let (_, untouched) = classify(plain, bag).unwrap();
        assert!(
            untouched
                .iter()
                .zip(&probs)
                .any(|(a, b)| (a - b).abs() > 1e-4),
            "preprocessing had no effect"
        );
        amlmil_bag_free(bag);
        amlmil_bag_free(expected_bag);
        amlmil_session_free(plain);
        amlmil_session_free(s);
    }
}

#[test]
fn failing_or_dropping_all_callbacks_are_errors_and_streaming_is_refused() {
    let bag = bag_with(&common::cells(3, 144, 5), 10);
    let s = session_with(|o| o.preprocess = Some(refuse)).unwrap();
    let st = classify(s, bag).unwrap_err();
    expect(st, amlmil_status::Plugin, "returned 7");
    assert!(
        last_error().contains("first cell id 10"),
        "{}",
        last_error()
    );
    // A streaming bag cannot go through a plugin.
    let mut stream = ptr::null_mut();
    unsafe {
        amlmil_bag_new(&mut stream);
        expect(
            amlmil_bag_stream(stream, s),
            amlmil_status::Unsupported,
            "preprocessing",
        );
        amlmil_bag_free(stream);
        amlmil_session_free(s);
    }
    let s = session_with(|o| o.preprocess = Some(drop_all)).unwrap();
    expect(
        classify(s, bag).unwrap_err(),
        amlmil_status::EmptyBag,
        "dropped all 3 cells",
    );
    // Embedding needs every cell.
    let mut out = vec![0f32; 3 * 512];
    unsafe {
        let st = amlmil_session_embed(s, bag, None, ptr::null_mut(), out.as_mut_ptr(), out.len());
        expect(st, amlmil_status::EmptyBag, "dropped all");
        amlmil_session_free(s);
        amlmil_bag_free(bag);
    }
}

fn plugin_session(config: &str) -> Result<*mut amlmil_session, amlmil_status> {
    let path = c(grey_world_plugin().to_str().unwrap());
    let config = CString::new(config).unwrap();
    session_with(|o| {
        o.plugin_path = path.as_ptr();
        o.plugin_config = config.as_ptr();
    })
}

#[test]
fn rust_plugin_normalises_cells_exactly_as_its_function_does() {
    // Cells with a strong colour cast, plus one flat (blank) crop.
    let mut cells = mapped(&common::cells(3, 144, 77), |px| {
        for p in px.chunks_exact_mut(3) {
            p[2] /= 3;
        }
    });
    cells.push(CellImage::from_rgb(144, 144, vec![200; 144 * 144 * 3]).unwrap());
    let bag = bag_with(&cells, 100);

    let s = plugin_session(r#"{"min_contrast": 2.0}"#)
        .unwrap_or_else(|st| panic!("{st:?}: {}", last_error()));
    let (ids, probs) = classify(s, bag).unwrap();
    assert_eq!(ids, [100, 101, 102], "the flat crop is dropped");

    let plain = session();
    let normalised = mapped(&cells[..3], amlmil_grey_world::grey_world);
    let want_bag = bag_with(&normalised, 100);
    let (want_ids, want) = classify(plain, want_bag).unwrap();
    assert_eq!(want_ids, ids);
    for (a, b) in probs.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{probs:?} vs {want:?}");
    }
    let (_, untouched) = classify(plain, bag_with(&cells[..3], 100)).unwrap();
    assert!(untouched
        .iter()
        .zip(&probs)
        .any(|(a, b)| (a - b).abs() > 1e-4));

    // The plugin's options live on in the session (loaded once, used twice).
    assert_eq!(classify(s, bag).unwrap().1, probs);
    unsafe {
        amlmil_session_free(s);
        amlmil_session_free(plain);
        amlmil_bag_free(bag);
        amlmil_bag_free(want_bag);
    }
}

#[test]
fn failing_panicking_misconfigured_missing_and_foreign_plugins_give_plugin_status() {
    let bag = bag_with(&common::cells(2, 144, 9), 0);
    let s = plugin_session(r#"{"fail": "error"}"#).unwrap();
    expect(
        classify(s, bag).unwrap_err(),
        amlmil_status::Plugin,
        "configured to fail",
    );
    assert!(last_error().contains("grey-world"), "{}", last_error());
    unsafe { amlmil_session_free(s) };

    let s = plugin_session(r#"{"fail": "panic"}"#).unwrap();
    expect(
        classify(s, bag).unwrap_err(),
        amlmil_status::Plugin,
        "panicked",
    );
    // The process (and the session) survive: the next call fails the same way.
    expect(
        classify(s, bag).unwrap_err(),
        amlmil_status::Plugin,
        "configured to panic",
    );
    unsafe { amlmil_session_free(s) };

    expect(
        plugin_session(r#"{"min_contrast": -1}"#).unwrap_err(),
        amlmil_status::Plugin,
        "min_contrast",
    );

    let missing = c("/nonexistent/libplugin.so");
    let st = session_with(|o| o.plugin_path = missing.as_ptr()).unwrap_err();
    expect(st, amlmil_status::Plugin, "/nonexistent/libplugin.so");

    // A shared library that is not a plugin (libamlmil itself).
    let foreign = common::lib_dir().join("libamlmil.so");
    let foreign_c = c(foreign.to_str().unwrap());
    let st = session_with(|o| o.plugin_path = foreign_c.as_ptr()).unwrap_err();
    expect(
        st,
        amlmil_status::Plugin,
        "not a compatible libamlmil plugin",
    );
    assert!(last_error().contains("libamlmil.so"), "{}", last_error());
    unsafe { amlmil_bag_free(bag) };
}

#[test]
fn cli_predict_runs_a_plugin_and_names_only_kept_cells() {
    let dir = tempfile::tempdir().unwrap();
    let bag = dir.path().join("patient");
    std::fs::create_dir(&bag).unwrap();
    for (i, cell) in common::cells(3, 144, 8).iter().enumerate() {
        image::RgbImage::from_raw(cell.width(), cell.height(), cell.rgb().to_vec())
            .unwrap()
            .save(bag.join(format!("image_{i}.png")))
            .unwrap();
    }
    image::RgbImage::from_pixel(144, 144, image::Rgb([210, 200, 220]))
        .save(bag.join("image_3.png"))
        .unwrap();
    let f = common::fixture();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(common::lib_dir().join("amlmil"))
            .args(["predict", "--device", "cpu", "--top-k", "4", "--encoder"])
            .arg(&f.encoder)
            .arg("--mil")
            .arg(&f.mil)
            .args(extra)
            .arg(&bag)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let plugin = grey_world_plugin();
    let (ok, stdout, stderr) = run(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "--plugin-config",
        r#"{"min_contrast": 2.0}"#,
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report[0]["num_cells"], 3, "{stdout}");
    let files: Vec<&str> = report[0]["top_cells"]["PML_RARA"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3);
    assert!(!files.contains(&"image_3.png"), "{files:?}");
    let (ok, _, stderr) = run(&["--plugin", "/nonexistent/plugin.so"]);
    assert!(!ok && stderr.contains("/nonexistent/plugin.so"), "{stderr}");
}
