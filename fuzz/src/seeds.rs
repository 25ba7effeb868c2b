//! Seed corpora, written by the library at fuzz time (`scripts/fuzz.sh`): valid
//! inputs of every kind, so the fuzzer starts past the format checks, plus the
//! hostile shapes we know of (decompression bombs, files without checksums).
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use amlmil::checkpoint::{self, EncoderManifest, Manifest, Provenance};
use amlmil::model::{EncoderArch, MilConfig};
use amlmil::ssl::{PretrainConfig, SslMethod};
use amlmil::synth::{render_cell, CellType, Stain};
use image::{DynamicImage, ImageFormat};
use rand::SeedableRng;

/// File name and bytes of one seed.
pub type Seed = (String, Vec<u8>);
type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn encode(img: &DynamicImage, format: ImageFormat) -> Res<Vec<u8>> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)?;
    Ok(out.into_inner())
}

/// Synthetic cells as PNG, TIFF and JPEG in the pixel layouts the library
/// converts (RGB, RGBA, grey, 16-bit), a PNG declaring 100 000 × 100 000 px, and
/// raw-pixel inputs (the target's 12-byte header: width, height, stride, format).
pub fn cell_images() -> Res<Vec<Seed>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    let mut seeds = Vec::new();
    for (i, (t, size)) in [(CellType::Lymphocyte, 32), (CellType::Monocyte, 48)]
        .into_iter()
        .enumerate()
    {
        let cell = render_cell(t, size, &Stain::default(), &mut rng)?;
        let rgb = image::RgbImage::from_raw(cell.width(), cell.height(), cell.rgb().to_vec())
            .ok_or("cell buffer")?;
        let rgb = DynamicImage::ImageRgb8(rgb);
        let layouts = [
            ("rgb8", rgb.clone()),
            ("rgba8", DynamicImage::ImageRgba8(rgb.to_rgba8())),
            ("l8", DynamicImage::ImageLuma8(rgb.to_luma8())),
            ("rgb16", DynamicImage::ImageRgb16(rgb.to_rgb16())),
        ];
        for (layout, img) in &layouts {
            for (ext, format) in [("png", ImageFormat::Png), ("tif", ImageFormat::Tiff)] {
                seeds.push((format!("cell{i}_{layout}.{ext}"), encode(img, format)?));
            }
        }
        seeds.push((format!("cell{i}.jpg"), encode(&rgb, ImageFormat::Jpeg)?));
    }
    seeds.push((
        "bomb.png".into(),
        crate::png_header::png_declaring(100_000, 100_000),
    ));
    for (w, h, stride, format) in [(2u16, 2u16, 8u64, 1u8), (3, 1, 9, 0), (1, 3, 4, 3)] {
        let mut b = Vec::new();
        b.extend_from_slice(&w.to_le_bytes());
        b.extend_from_slice(&h.to_le_bytes());
        b.extend_from_slice(&stride.to_le_bytes());
        b.push(format);
        b.extend((0..stride as usize * h as usize).map(|i| i as u8));
        seeds.push((format!("raw_{w}x{h}.bin"), b));
    }
    Ok(seeds)
}

/// Small MIL heads of each cell network, a manifest-only encoder checkpoint, and
/// every one again without its checksum (files written before checksums load
/// with a warning, so the fuzzer must reach the manifest through that door too).
pub fn checkpoints() -> Res<Vec<Seed>> {
    let dir = tempfile::tempdir()?;
    let mut seeds = Vec::new();
    let small = |cell_net: serde_json::Value, side: i64| -> Res<MilConfig> {
        let mut v = serde_json::to_value(MilConfig::default())?;
        let o = v.as_object_mut().ok_or("MilConfig is an object")?;
        o.insert("cell_net".into(), cell_net);
        for (k, n) in [
            ("instance_dim", 4),
            ("attention_dim", 3),
            ("classifier_dim", 2),
            ("in_channels", 4),
            ("in_side", side),
            ("num_classes", 2),
        ] {
            o.insert(k.into(), n.into());
        }
        Ok(serde_json::from_value(v)?)
    };
    let configs = [
        ("pooled", small(serde_json::json!({"type": "pooled"}), 1)?),
        (
            "four_conv",
            small(
                serde_json::json!({"type": "four_conv", "channels": [2, 2, 2]}),
                5,
            )?,
        ),
    ];
    for (name, config) in &configs {
        let path = dir.path().join(format!("{name}.safetensors"));
        checkpoint::write_random_mil(&path, config, vec!["NPM1".into(), "control".into()], 144, 1)?;
        seeds.push((format!("mil_{name}.safetensors"), std::fs::read(&path)?));
    }
    // An encoder manifest over one tensor: the manifest checks pass, the tensors do not.
    let manifest = EncoderManifest::new(
        EncoderArch::ResNet18,
        144,
        Provenance::new("random-init", Some(1)),
    );
    let json = serde_json::to_string(&Manifest::Encoder(manifest))?;
    let path = dir.path().join("encoder.safetensors");
    let t = tch::Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0]).view([1, 1, 2, 2]);
    checkpoint::write_tensors(
        &path,
        &[("conv1.weight", &t)],
        Some(HashMap::from([(checkpoint::MANIFEST_KEY.to_owned(), json)])),
    )?;
    seeds.push(("encoder_stub.safetensors".into(), std::fs::read(&path)?));
    let unchecked: Vec<Seed> = seeds
        .iter()
        .map(|(n, b)| Ok((format!("nosum_{n}"), without_checksum(b)?)))
        .collect::<Res<_>>()?;
    seeds.extend(unchecked);
    Ok(seeds)
}

/// The same safetensors file with `__metadata__`'s checksum entry removed.
fn without_checksum(bytes: &[u8]) -> Res<Vec<u8>> {
    let len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len])?;
    if let Some(m) = header
        .get_mut("__metadata__")
        .and_then(|m| m.as_object_mut())
    {
        m.remove(checkpoint::CHECKSUM_KEY);
    }
    let mut json = serde_json::to_vec(&header)?;
    // safetensors pads the header with spaces to a multiple of 8 bytes.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
}

/// Every preset of every configuration type, as JSON and (where TOML can hold it)
/// TOML, and the example cross-validation config.
pub fn configs() -> Res<Vec<Seed>> {
    let mut values: Vec<(String, serde_json::Value)> = Vec::new();
    for name in ["quick", "cpu-small", "paper"] {
        if let Ok(c) = amlmil::experiment::ExperimentConfig::preset(name) {
            values.push((format!("experiment_{name}"), serde_json::to_value(&c)?));
            let cv = c.cv_config("data".into(), "encoder.safetensors".into(), "out".into())?;
            values.push((format!("cv_{name}"), serde_json::to_value(&cv)?));
        }
    }
    for method in ["simclr", "swav", "dino", "supervised"] {
        let m: SslMethod = method.parse()?;
        for preset in ["paper", "cpu-small"] {
            if let Ok(c) = PretrainConfig::preset(m, preset) {
                values.push((
                    format!("pretrain_{method}_{preset}"),
                    serde_json::to_value(&c)?,
                ));
            }
        }
    }
    for name in ["paper", "paper-sum", "scemila"] {
        if let Ok(c) = amlmil::training::MilTrainConfig::preset(name) {
            values.push((format!("train_{name}"), serde_json::to_value(&c)?));
        }
    }
    let mut seeds = Vec::new();
    for (name, v) in values {
        seeds.push((format!("{name}.json"), serde_json::to_vec_pretty(&v)?));
        if let Ok(t) = toml::to_string(&without_nulls(v)) {
            seeds.push((format!("{name}.toml"), t.into_bytes()));
        }
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cv_small.toml");
    if let Ok(b) = std::fs::read(example) {
        seeds.push(("example_cv_small.toml".into(), b));
    }
    Ok(seeds)
}

/// `v` without `null` entries, which TOML cannot hold (they mean "default" anyway).
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// Byte strings the dataset target's `Arbitrary` tree decoder turns into varied
/// trees (the input is structure, not files, so any bytes are a valid tree).
pub fn dataset_trees() -> Vec<Seed> {
    use rand::RngCore;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    [64usize, 256, 1024, 4096]
        .iter()
        .flat_map(|&n| (0..4).map(move |i| (n, i)))
        .map(|(n, i)| {
            let mut b = vec![0u8; n];
            rng.fill_bytes(&mut b);
            (format!("tree_{n}_{i}.bin"), b)
        })
        .collect()
}
