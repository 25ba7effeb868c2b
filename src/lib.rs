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
pub mod error;
pub mod experiment;
pub mod features;
pub mod ffi;
pub mod inference;
pub mod interop;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod settings;
pub mod ssl;
pub mod streaming;
pub mod synth;
pub mod training;

pub use bag::Bag;
pub use cell_image::{CellImage, PixelFormat};
pub use error::{Error, Result};
pub use inference::{BagPrediction, DeviceSpec, Precision, RankedCell, Session, SessionOptions};
pub use streaming::StreamingBag;

/// Version of this library (also `AMLMIL_VERSION` in the C header).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the libtorch this library was built against (read from it at build time).
pub const LIBTORCH_VERSION: &str = env!("AMLMIL_LIBTORCH_VERSION");

/// Versions and devices of the running library, as JSON.
pub fn runtime_info() -> serde_json::Value {
    serde_json::json!({
        "amlmil_version": VERSION,
        "abi_version": ffi::AMLMIL_ABI_VERSION,
        "libtorch_version": LIBTORCH_VERSION,
        "cuda_device_count": inference::cuda_device_count(),
        "cuda_linked": cfg!(amlmil_cuda_linked),
        "num_threads": tch::get_num_threads(),
    })
}
