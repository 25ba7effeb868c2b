//! Inputs found by fuzzing (`scripts/fuzz.sh`, fuzz/) and by writing its targets,
//! kept as plain tests: each one once crashed or over-allocated, and must now be
//! refused with an error naming what was wrong.
#[path = "common/png_header.rs"]
mod png_header;

use amlmil::{CellImage, Error, PixelFormat};
use png_header::png_declaring;

/// A decompression bomb below the decoder's default 512 MiB budget (10 000² RGB =
/// 300 MB) used to be allocated in full before the 4096 px check ran; the side
/// limit is now part of the decoder limits, so the header alone refuses it.
#[test]
fn png_declaring_huge_dimensions_is_refused_before_decoding() {
    for (w, h) in [
        (10_000, 10_000),
        (4097, 1),
        (1, 100_000),
        (100_000, 100_000),
    ] {
        let png = png_declaring(w, h);
        assert!(png.len() < 100);
        let err = CellImage::decode(&png, "bomb.png").unwrap_err();
        let Error::Decode {
            source_name,
            reason,
        } = &err
        else {
            panic!("{w}x{h}: expected a decode error, got {err}");
        };
        assert_eq!(source_name, "bomb.png");
        assert!(
            reason.to_lowercase().contains("limit"),
            "{w}x{h}: refused for another reason than its size: {reason}"
        );
    }
    // The limit leaves real cells alone.
    let ok = png_declaring(1, 1);
    assert_eq!(CellImage::decode(&ok, "one.png").unwrap().width(), 1);
}

/// A stride near `usize::MAX / 2` wrapped `stride * (height - 1) + row` around to
/// a few bytes, so the size check passed and the row copy panicked (or, with
/// overflow checks, the multiplication did).
#[test]
fn stride_overflowing_the_address_space_is_an_error() {
    let pixels = [0u8; 16];
    for (stride, height) in [(usize::MAX / 2, 3), (usize::MAX, 2), (1 << 62, 5)] {
        let err = CellImage::from_pixels(&pixels, 2, height, stride, PixelFormat::Rgb8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stride"), "{err}");
    }
}

/// Rewrites the manifest of the checkpoint at `path` with `edit` (the checksum is
/// written afresh, so only the manifest is hostile).
fn edit_manifest(path: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    use amlmil::checkpoint::{decode_tensors, write_tensors, MANIFEST_KEY};
    let bytes = std::fs::read(path).unwrap();
    let (mut meta, tensors) = decode_tensors(&bytes, path).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&meta[MANIFEST_KEY]).unwrap();
    edit(&mut manifest);
    meta.insert(MANIFEST_KEY.into(), manifest.to_string());
    let refs: Vec<(&str, &tch::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_tensors(path, &refs, Some(meta)).unwrap();
}

fn small_mil(path: &std::path::Path) {
    let config: amlmil::model::MilConfig = serde_json::from_value(serde_json::json!({
        "cell_net": {"type": "pooled"}, "instance_dim": 4, "attention_dim": 3,
        "classifier_dim": 2, "in_channels": 4, "in_side": 1, "num_classes": 2
    }))
    .unwrap();
    amlmil::checkpoint::write_random_mil(
        path,
        &config,
        vec!["NPM1".into(), "control".into()],
        144,
        1,
    )
    .unwrap();
}

/// A 3 KB MIL checkpoint whose manifest declares `instance_dim` 10^8 made the
/// loader build (and initialise) a 1.6 GB head before comparing it with the file's
/// tensors (out of memory); 10^15 aborted in libtorch's allocator. The config's
/// parameter shapes are now checked against the tensors first.
#[test]
fn mil_manifest_declaring_a_huge_head_is_refused_before_building_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mil.safetensors");
    small_mil(&path);
    amlmil::frozen::load_mil(&path, tch::Device::Cpu).unwrap();
    for (key, value) in [
        ("instance_dim", 100_000_000i64),
        ("instance_dim", 1_000_000_000_000_000),
        ("attention_dim", 1 << 40),
        ("in_channels", i64::MAX),
    ] {
        small_mil(&path);
        edit_manifest(&path, |m| m["config"][key] = value.into());
        let err = amlmil::frozen::load_mil(&path, tch::Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} loaded"))
            .to_string();
        assert!(
            err.contains("mil.safetensors") && err.contains("shape"),
            "{key}: {err}"
        );
    }
}

/// An encoder manifest with `input_size` = i64::MAX overflowed the feature-map
/// side arithmetic (`(x + 1) / 2`), a panic with overflow checks on.
#[test]
fn encoder_manifest_input_size_out_of_range_is_an_error() {
    use amlmil::checkpoint::{EncoderManifest, Manifest, Provenance, MANIFEST_KEY};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encoder.safetensors");
    for input_size in [i64::MAX, i64::MIN, -1, 0, 31, 4097] {
        let mut manifest = EncoderManifest::new(
            amlmil::model::EncoderArch::ResNet18,
            144,
            Provenance::new("random-init", Some(1)),
        );
        manifest.input_size = input_size;
        let json = serde_json::to_string(&Manifest::Encoder(manifest)).unwrap();
        let t = tch::Tensor::from_slice(&[0.5f32]);
        amlmil::checkpoint::write_tensors(
            &path,
            &[("conv1.weight", &t)],
            Some([(MANIFEST_KEY.to_owned(), json)].into()),
        )
        .unwrap();
        let err = amlmil::frozen::load_encoder(&path, tch::Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("input_size {input_size} loaded"))
            .to_string();
        assert!(err.contains("input_size"), "{input_size}: {err}");
    }
}
