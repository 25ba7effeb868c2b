//! # amlmil
//!
//! Classification of acute myeloid leukemia (AML) genetic subtypes from a patient's
//! bag of single white-cell images: a frozen ResNet cell encoder and an
//! attention-based multiple-instance-learning head, after Kazeminia et al.,
//! *Self-Supervised Multiple Instance Learning for Acute Myeloid Leukemia
//! Classification*, and Hehr et al.'s SCEMILA.
//!
//! The core (this crate's modules other than [`ffi`]) knows nothing of C; the
//! [`ffi`] module is the thin, panic-safe skin that `libamlmil.so` exports and
//! `include/amlmil.h` declares.
//!
//! ```no_run
//! use amlmil::{Bag, CellImage, Session, SessionOptions};
//! # fn main() -> amlmil::Result<()> {
//! let session = Session::new("encoder.safetensors".as_ref(), "mil.safetensors".as_ref(), &SessionOptions::default())?;
//! let mut bag = Bag::new();
//! bag.add(1, CellImage::open("image_0.tif".as_ref())?)?;
//! let result = session.classify(&bag, &mut |_, _, _| true)?;
//! println!("{} {:?}", result.classes[result.predicted], result.top_cells(result.predicted, 5));
//! # Ok(()) }
//! ```
pub mod bag;
pub mod cell_image;
pub mod checkpoint;
pub mod classes;
pub mod dataset;
pub mod device;
pub mod distributed;
pub mod error;
pub mod evaluation;
pub mod experiment;
pub mod features;
pub mod ffi;
pub mod frozen;
pub mod guard;
pub mod html;
pub mod inference;
pub mod interop;
pub mod io;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod preprocess;
pub mod settings;
pub mod ssl;
pub mod streaming;
pub mod synth;
pub mod training;

pub use bag::Bag;
pub use cell_image::{CellImage, PixelFormat};
pub use device::{DeviceSpec, Precision};
pub use error::{Error, Result};
pub use inference::{BagPrediction, RankedCell, Session, SessionOptions};
pub use streaming::StreamingBag;

/// Version of this library: `package.version` of Cargo.toml, the one place it is
/// defined (the C header's `AMLMIL_VERSION` and `amlmil_version()` are written from it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the C ABI, bumped on any incompatible change to `include/amlmil.h`:
/// `package.metadata.amlmil.abi-version` of Cargo.toml, the one place it is
/// defined (read by build.rs; the header's `AMLMIL_ABI_VERSION` is written from it).
pub const ABI_VERSION: u32 = parse_u32(env!("AMLMIL_ABI_VERSION"));

/// Progress of a long call: `done` of `total` units of `stage`. Return `false` to cancel.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize) -> bool;

/// A decimal number at compile time (build.rs checks it is one).
const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut n = 0u32;
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "AMLMIL_ABI_VERSION is not a number");
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// Version of the libtorch this library was built against (read from it at build time).
pub const LIBTORCH_VERSION: &str = env!("AMLMIL_LIBTORCH_VERSION");

/// Versions and devices of the running library, as JSON.
pub fn runtime_info() -> serde_json::Value {
    serde_json::json!({
        "amlmil_version": VERSION,
        "abi_version": ABI_VERSION,
        "libtorch_version": LIBTORCH_VERSION,
        "cuda_device_count": device::cuda_device_count(),
        "cuda_linked": cfg!(amlmil_cuda_linked),
        "num_threads": tch::get_num_threads(),
        "cpu_bf16": device::cpu_bf16().ok(),
        "cuda_driver": match device::cuda_driver_info() {
            Ok(info) => serde_json::to_value(info).unwrap_or_default(),
            Err(why) => serde_json::json!({"unavailable": why}),
        },
    })
}
