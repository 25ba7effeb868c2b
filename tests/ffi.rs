//! The C ABI, called as a C program would: versions and runtime info, NULL
//! safety of the free functions, session creation (statuses, messages,
//! untouched outputs on failure, older option structs) and bags. Classifying
//! and reading results are in `tests/ffi_classify.rs`.
mod common;

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use amlmil::ffi::*;
use amlmil::model::{CellNet, EncoderArch, MilConfig};
use common::ffi::{c, cpu_options, expect, last_error};

#[test]
fn versions_and_runtime_info() {
    let v = unsafe { CStr::from_ptr(amlmil_version()) }
        .to_str()
        .unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert_eq!(v, AMLMIL_VERSION);
    assert_eq!(amlmil_abi_version(), AMLMIL_ABI_VERSION);
    let mut json: *mut c_char = ptr::null_mut();
    unsafe {
        assert_eq!(amlmil_runtime_info(&mut json), amlmil_status::Ok);
        let info: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(json).to_str().unwrap()).unwrap();
        assert!(
            info["libtorch_version"]
                .as_str()
                .unwrap()
                .starts_with("2.11.0"),
            "{info}"
        );
        assert_eq!(
            info["cuda_device_count"].as_u64().unwrap(),
            amlmil_cuda_device_count() as u64
        );
        amlmil_string_free(json);
        expect(
            amlmil_runtime_info(ptr::null_mut()),
            amlmil_status::NullArgument,
            "out_json",
        );
        let name = CStr::from_ptr(amlmil_status_name(amlmil_status::EmptyBag as u32));
        assert_eq!(name.to_str().unwrap(), "AMLMIL_STATUS_EMPTY_BAG");
        assert_eq!(
            CStr::from_ptr(amlmil_status_name(999)).to_str().unwrap(),
            "AMLMIL_STATUS_UNKNOWN"
        );
    }
}

#[test]
fn free_functions_accept_null() {
    unsafe {
        amlmil_session_free(ptr::null_mut());
        amlmil_bag_free(ptr::null_mut());
        amlmil_result_free(ptr::null_mut());
        amlmil_string_free(ptr::null_mut());
        assert_eq!(amlmil_result_num_classes(ptr::null()), 0);
        assert_eq!(amlmil_result_num_cells(ptr::null()), 0);
        assert!(amlmil_result_class_name(ptr::null(), 0).is_null());
        assert_eq!(amlmil_session_feature_dim(ptr::null()), 0);
    }
}

#[test]
fn session_new_rejects_bad_arguments_and_files() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let enc = c(f.encoder.to_str().unwrap());
    let mil = c(f.mil.to_str().unwrap());
    let (o, _d) = cpu_options();
    let sentinel = 0x1234usize as *mut amlmil_session;
    let mut out = sentinel;
    unsafe {
        expect(
            amlmil_session_new(ptr::null(), mil.as_ptr(), &o, &mut out),
            amlmil_status::NullArgument,
            "encoder_path",
        );
        expect(
            amlmil_session_new(enc.as_ptr(), ptr::null(), &o, &mut out),
            amlmil_status::NullArgument,
            "mil_path",
        );
        expect(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, ptr::null_mut()),
            amlmil_status::NullArgument,
            "out_session",
        );
        let missing = c("/nonexistent/encoder.safetensors");
        expect(
            amlmil_session_new(missing.as_ptr(), mil.as_ptr(), &o, &mut out),
            amlmil_status::Io,
            "/nonexistent/encoder.safetensors",
        );
        // Kinds swapped.
        expect(
            amlmil_session_new(mil.as_ptr(), enc.as_ptr(), &o, &mut out),
            amlmil_status::Checkpoint,
            "expected an `encoder`",
        );
        // Truncated checkpoint.
        let bytes = std::fs::read(&f.encoder).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
        let cut_c = c(cut.to_str().unwrap());
        expect(
            amlmil_session_new(cut_c.as_ptr(), mil.as_ptr(), &o, &mut out),
            amlmil_status::Checkpoint,
            "cut.safetensors",
        );
        // A head made for 64 px pooled features does not fit a 144 px encoder.
        let small = dir.path().join("mil64.safetensors");
        let config = MilConfig {
            head: CellNet::Pooled.into(),
            in_side: EncoderArch::ResNet18.feature_side(64),
            ..Default::default()
        };
        common::write_mil(&small, &config, 64, 1);
        let small_c = c(small.to_str().unwrap());
        expect(
            amlmil_session_new(enc.as_ptr(), small_c.as_ptr(), &o, &mut out),
            amlmil_status::Mismatch,
            "64 px",
        );
        // Devices.
        let mut bad = o;
        let tpu = c("tpu:0");
        bad.device = tpu.as_ptr();
        expect(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &bad, &mut out),
            amlmil_status::Device,
            "tpu:0",
        );
        if amlmil_cuda_device_count() == 0 {
            let cuda = c("cuda");
            bad.device = cuda.as_ptr();
            expect(
                amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &bad, &mut out),
                amlmil_status::Device,
                "no CUDA device",
            );
            let mut half = o;
            half.precision = amlmil_precision::Fp16 as u32;
            expect(
                amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &half, &mut out),
                amlmil_status::InvalidArgument,
                "precision",
            );
        }
        let mut bad = o;
        bad.struct_size = 4;
        expect(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &bad, &mut out),
            amlmil_status::InvalidArgument,
            "struct_size",
        );
        let mut bad = o;
        bad.batch_size = 0;
        expect(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &bad, &mut out),
            amlmil_status::InvalidArgument,
            "batch_size",
        );
        let mut bad = o;
        bad.precision = 77;
        expect(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &bad, &mut out),
            amlmil_status::InvalidArgument,
            "precision",
        );
        let invalid_utf8 = CString::new(vec![0xffu8, 0xfe]).unwrap();
        expect(
            amlmil_session_new(invalid_utf8.as_ptr(), mil.as_ptr(), &o, &mut out),
            amlmil_status::InvalidArgument,
            "UTF-8",
        );
        assert_eq!(out, sentinel, "output written on failure");
        expect(
            amlmil_session_options_init(ptr::null_mut()),
            amlmil_status::NullArgument,
            "options",
        );
    }
}

#[test]
fn an_older_options_struct_gets_defaults_for_fields_it_lacks() {
    let f = common::fixture();
    let (enc, mil) = (c(f.encoder.to_str().unwrap()), c(f.mil.to_str().unwrap()));
    let (mut o, _d) = cpu_options();
    o.struct_size = std::mem::offset_of!(amlmil_session_options, batch_size); // knows device and precision only
    o.batch_size = 0; // would be invalid, but lies beyond struct_size
    let mut s = ptr::null_mut();
    unsafe {
        assert_eq!(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s),
            amlmil_status::Ok,
            "{}",
            last_error()
        );
        amlmil_session_free(s);
    }
}

#[test]
fn options_init_never_writes_past_the_callers_struct() {
    let full = std::mem::size_of::<amlmil_session_options>();
    let v1 = std::mem::offset_of!(amlmil_session_options, preprocess);
    let mut buf = vec![0xAAu8; full + 16];
    unsafe {
        // The plain symbol (what binaries built against the first header call):
        // the first release's fields only.
        let o = buf.as_mut_ptr() as *mut amlmil_session_options;
        assert_eq!(amlmil_session_options_init(o), amlmil_status::Ok);
        assert_eq!((*o).struct_size, v1);
        assert_eq!((*o).batch_size, 32);
        assert!(
            buf[v1..].iter().all(|&b| b == 0xAA),
            "wrote past the first release's struct"
        );
        // Sized: a caller with a shorter struct (an older header) gets only its bytes…
        buf.fill(0xAA);
        let short = std::mem::offset_of!(amlmil_session_options, num_threads);
        assert_eq!(
            amlmil_session_options_init_sized(o, short),
            amlmil_status::Ok
        );
        assert_eq!((*o).struct_size, short);
        assert!(buf[short..].iter().all(|&b| b == 0xAA));
        // …a caller with a longer one (a newer header) gets ours and the rest untouched.
        buf.fill(0xAA);
        assert_eq!(
            amlmil_session_options_init_sized(o, full + 16),
            amlmil_status::Ok
        );
        assert_eq!((*o).struct_size, full);
        assert!((*o).plugin_path.is_null() && (*o).preprocess.is_none());
        assert!(buf[full..].iter().all(|&b| b == 0xAA));
        common::ffi::expect(
            amlmil_session_options_init_sized(o, 4),
            amlmil_status::InvalidArgument,
            "size",
        );
        common::ffi::expect(
            amlmil_session_options_init_sized(ptr::null_mut(), full),
            amlmil_status::NullArgument,
            "options",
        );
    }
}

#[test]
fn bags_reject_bad_cells_and_stay_unchanged() {
    let mut bag = ptr::null_mut();
    let px = vec![128u8; 8 * 8 * 4];
    unsafe {
        expect(
            amlmil_bag_new(ptr::null_mut()),
            amlmil_status::NullArgument,
            "out_bag",
        );
        assert_eq!(amlmil_bag_new(&mut bag), amlmil_status::Ok);
        let rgb = amlmil_pixel_format::Rgb8 as u32;
        expect(
            amlmil_bag_add_pixels(ptr::null_mut(), 1, px.as_ptr(), px.len(), 8, 8, 24, rgb),
            amlmil_status::NullArgument,
            "bag",
        );
        expect(
            amlmil_bag_add_pixels(bag, 1, ptr::null(), px.len(), 8, 8, 24, rgb),
            amlmil_status::NullArgument,
            "pixels",
        );
        expect(
            amlmil_bag_add_pixels(bag, 1, px.as_ptr(), 0, 8, 8, 24, rgb),
            amlmil_status::InvalidArgument,
            "pixels",
        );
        expect(
            amlmil_bag_add_pixels(bag, 1, px.as_ptr(), px.len(), 0, 8, 24, rgb),
            amlmil_status::InvalidArgument,
            "width",
        );
        expect(
            amlmil_bag_add_pixels(bag, 1, px.as_ptr(), px.len(), 8, 8, 23, rgb),
            amlmil_status::InvalidArgument,
            "stride",
        );
        expect(
            amlmil_bag_add_pixels(bag, 1, px.as_ptr(), 100, 8, 8, 24, rgb),
            amlmil_status::InvalidArgument,
            "too small",
        );
        expect(
            amlmil_bag_add_pixels(bag, 1, px.as_ptr(), px.len(), 8, 8, 32, 9),
            amlmil_status::InvalidArgument,
            "format",
        );
        expect(
            amlmil_bag_add_pixels(bag, 1, px.as_ptr(), px.len(), 9000, 1, 27000, rgb),
            amlmil_status::InvalidArgument,
            "4096",
        );
        let garbage = b"definitely not a TIFF";
        expect(
            amlmil_bag_add_encoded(bag, 1, garbage.as_ptr(), garbage.len()),
            amlmil_status::Decode,
            "decode",
        );
        expect(
            amlmil_bag_add_encoded(bag, 1, garbage.as_ptr(), 0),
            amlmil_status::InvalidArgument,
            "data",
        );
        let missing = c("/nonexistent/image_0.tif");
        expect(
            amlmil_bag_add_file(bag, 1, missing.as_ptr()),
            amlmil_status::Io,
            "/nonexistent/image_0.tif",
        );
        expect(
            amlmil_bag_add_file(bag, 1, ptr::null()),
            amlmil_status::NullArgument,
            "path",
        );
        let mut n = 99usize;
        assert_eq!(amlmil_bag_len(bag, &mut n), amlmil_status::Ok);
        assert_eq!(n, 0, "a failed add changed the bag");
        // Strided BGRA works; duplicate ids do not.
        assert_eq!(
            amlmil_bag_add_pixels(
                bag,
                7,
                px.as_ptr(),
                px.len(),
                6,
                8,
                32,
                amlmil_pixel_format::Bgra8 as u32
            ),
            amlmil_status::Ok
        );
        expect(
            amlmil_bag_add_pixels(bag, 7, px.as_ptr(), px.len(), 8, 8, 32, rgb),
            amlmil_status::InvalidArgument,
            "already",
        );
        // Encoded PNG from memory and from a file.
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("cell.png");
        image::RgbImage::from_pixel(20, 20, image::Rgb([200, 100, 150]))
            .save(&png)
            .unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(
            amlmil_bag_add_encoded(bag, 8, bytes.as_ptr(), bytes.len()),
            amlmil_status::Ok
        );
        let png_c = c(png.to_str().unwrap());
        assert_eq!(
            amlmil_bag_add_file(bag, 9, png_c.as_ptr()),
            amlmil_status::Ok
        );
        let empty = dir.path().join("empty.tif");
        std::fs::write(&empty, b"").unwrap();
        let empty_c = c(empty.to_str().unwrap());
        expect(
            amlmil_bag_add_file(bag, 10, empty_c.as_ptr()),
            amlmil_status::Decode,
            "zero bytes",
        );
        assert_eq!(amlmil_bag_len(bag, &mut n), amlmil_status::Ok);
        assert_eq!(n, 3);
        assert_eq!(amlmil_bag_clear(bag), amlmil_status::Ok);
        assert_eq!(amlmil_bag_len(bag, &mut n), amlmil_status::Ok);
        assert_eq!(n, 0);
        expect(
            amlmil_bag_len(bag, ptr::null_mut()),
            amlmil_status::NullArgument,
            "out_len",
        );
        amlmil_bag_free(bag);
    }
}

/// bf16 on the CPU through the C ABI: where the CPU has native bf16 a session
/// runs it (model_info says so; results within rounding of fp32's), and
/// where it has none `amlmil_session_new` answers AMLMIL_STATUS_UNSUPPORTED
/// naming why. The second case is run here too, in a child process of this
/// test with the detection forced off (`AMLMIL_CPU_BF16=0`).
#[test]
fn bf16_on_the_cpu_runs_where_the_cpu_has_it_and_is_refused_naming_why_elsewhere() {
    const NAME: &str =
        "bf16_on_the_cpu_runs_where_the_cpu_has_it_and_is_refused_naming_why_elsewhere";
    let f = common::fixture();
    let (enc, mil) = (c(f.encoder.to_str().unwrap()), c(f.mil.to_str().unwrap()));
    let (mut o, _d) = cpu_options();
    o.precision = amlmil_precision::Bf16 as u32;
    let mut s = ptr::null_mut();
    let status = unsafe { amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s) };
    match amlmil::device::cpu_bf16() {
        Err(why) => {
            assert_eq!(status, amlmil_status::Unsupported, "{}", last_error());
            assert!(last_error().contains(&why), "{} vs {why}", last_error());
            assert!(last_error().contains("`precision`"), "{}", last_error());
            assert!(s.is_null());
        }
        Ok(_) => unsafe {
            assert_eq!(status, amlmil_status::Ok, "{}", last_error());
            let mut info: amlmil_model_info = std::mem::zeroed();
            let size = std::mem::size_of::<amlmil_model_info>();
            assert_eq!(
                amlmil_session_model_info(s, &mut info, size),
                amlmil_status::Ok
            );
            assert_eq!(CStr::from_ptr(info.precision).to_str().unwrap(), "bf16");
            let fp32 = common::ffi::session();
            amlmil_session_model_info(fp32, &mut info, size);
            assert_eq!(CStr::from_ptr(info.precision).to_str().unwrap(), "fp32");
            let bag = common::ffi::bag_with(&common::cells(6, 144, 9), 0);
            let a = common::ffi::classify_outputs(fp32, bag);
            let b = common::ffi::classify_outputs(s, bag);
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                diff > 0.0 && diff < 0.05,
                "bf16 vs fp32 outputs differ by {diff}"
            );
            amlmil_bag_free(bag);
            amlmil_session_free(fp32);
            amlmil_session_free(s);
        },
    }
    if std::env::var(amlmil::device::CPU_BF16_ENV).is_err() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture"])
            .env(amlmil::device::CPU_BF16_ENV, "0")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "with {}=0:\n{}\n{}",
            amlmil::device::CPU_BF16_ENV,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
