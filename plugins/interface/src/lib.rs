//! The interface between libamlmil and its run-time preprocessing plugins.
//!
//! A plugin is a Rust `cdylib` that libamlmil loads from a path given in the
//! session options (`amlmil_session_options.plugin_path`, or
//! `SessionOptions`' Rust equivalent). Vendors use one for their own stain
//! normalisation or cell filtering before the encoder sees the cells. Plugin
//! and library need not be built by the same compiler version: everything that
//! crosses the boundary is an [`abi_stable`] type, and loading checks the
//! layout of every type below and the interface version (this crate's
//! `major.minor`), refusing an incompatible plugin with a message.
//!
//! # Writing a plugin
//!
//! Implement [`Preprocess`] and export a constructor with [`export_plugin!`]:
//!
//! ```ignore
//! struct Invert;
//! impl amlmil_plugin::Preprocess for Invert {
//!     fn process(&self, cells: &mut [amlmil_plugin::PluginCell]) -> Result<(), String> {
//!         for c in cells { for v in c.rgb.iter_mut() { *v = 255 - *v; } }
//!         Ok(())
//!     }
//! }
//! fn new(_config: &str) -> Result<Invert, String> { Ok(Invert) }
//! amlmil_plugin::export_plugin!("invert", new);
//! ```
//!
//! # Contract
//!
//! * [`Preprocess::process`] is called once per encoder batch (up to
//!   `batch_size` cells, bag order) before the cells are resized and
//!   normalised, from the thread that classifies; several threads may call it
//!   at once on one plugin instance (hence `Send + Sync`).
//! * Each cell is 8-bit RGB, rows packed (`rgb.len() == width * height * 3`).
//!   A plugin may change the pixels, change the size (keeping that equation
//!   true, 1..=4096 px a side), or set `keep = false` to drop the cell from the
//!   bag. Results then list only kept cells.
//! * Returning `Err` fails the call with `AMLMIL_STATUS_PLUGIN` and the
//!   message; a panic inside `process` or the constructor is caught on the
//!   plugin's side of the boundary by the code [`export_plugin!`] generates
//!   and reported the same way. Nothing unwinds into the library.
// `#[sabi_trait]` (abi_stable 0.11) generates impls inside a const block.
#![allow(non_local_definitions)]

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use abi_stable;
use abi_stable::library::RootModule;
use abi_stable::sabi_trait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, RResult, RSliceMut, RStr, RString, RVec};
use abi_stable::StableAbi;

/// One cell as a plugin sees it: 8-bit RGB, rows packed.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginCell {
    /// The id the caller gave the cell.
    pub cell_id: u64,
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes, row-major RGB.
    pub rgb: RVec<u8>,
    /// `true` on entry; set `false` to drop the cell from the bag.
    pub keep: bool,
}

/// The object a plugin's constructor returns (the ABI-stable side of
/// [`Preprocess`]; plugin authors implement [`Preprocess`] instead).
#[sabi_trait]
pub trait Preprocessor: Send + Sync {
    /// Processes one batch of cells in place; `Err` carries the reason.
    #[sabi(last_prefix_field)]
    fn process(&self, cells: RSliceMut<'_, PluginCell>) -> RResult<(), RString>;
}

/// A boxed [`Preprocessor`] trait object, as it crosses the boundary.
pub type PreprocessorBox = Preprocessor_TO<'static, RBox<()>>;

/// The root module every plugin exports (made by [`export_plugin!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's name, for messages and logs.
    pub name: extern "C" fn() -> RStr<'static>,
    /// Builds a preprocessor from the configuration string of the session
    /// options (empty when none was given).
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(config: RStr<'_>) -> RResult<PreprocessorBox, RString>,
}

impl RootModule for PluginModRef {
    abi_stable::declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "amlmil_plugin";
    const NAME: &'static str = "amlmil_plugin";
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

/// What a plugin author implements: one batch of cells, changed in place.
pub trait Preprocess: Send + Sync + 'static {
    fn process(&self, cells: &mut [PluginCell]) -> Result<(), String>;
}

/// Wraps a [`Preprocess`] so that panics become errors on the plugin's side.
struct Guarded<P>(P);

impl<P: Preprocess> Preprocessor for Guarded<P> {
    fn process(&self, mut cells: RSliceMut<'_, PluginCell>) -> RResult<(), RString> {
        let cells = cells.as_mut_slice();
        match catch_unwind(AssertUnwindSafe(|| self.0.process(cells))) {
            Ok(Ok(())) => RResult::ROk(()),
            Ok(Err(e)) => RResult::RErr(e.into()),
            Err(panic) => RResult::RErr(format!("panicked: {}", panic_message(&*panic)).into()),
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Runs a plugin constructor with panics caught; used by [`export_plugin!`].
#[doc(hidden)]
pub fn construct<P: Preprocess>(
    new: impl FnOnce(&str) -> Result<P, String>,
    config: RStr<'_>,
) -> RResult<PreprocessorBox, RString> {
    match catch_unwind(AssertUnwindSafe(|| new(config.as_str()))) {
        Ok(Ok(p)) => RResult::ROk(Preprocessor_TO::from_value(
            Guarded(p),
            abi_stable::sabi_trait::TD_Opaque,
        )),
        Ok(Err(e)) => RResult::RErr(e.into()),
        Err(panic) => {
            RResult::RErr(format!("constructor panicked: {}", panic_message(&*panic)).into())
        }
    }
}

/// Exports a plugin: `export_plugin!("name", constructor)` where
/// `constructor: fn(&str) -> Result<impl Preprocess, String>` receives the
/// configuration string. Generates the root module libamlmil looks for.
#[macro_export]
macro_rules! export_plugin {
    ($name:literal, $new:path) => {
        #[$crate::abi_stable::export_root_module]
        pub fn amlmil_plugin_root_module() -> $crate::PluginModRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn __amlmil_plugin_name() -> $crate::abi_stable::std_types::RStr<'static> {
                $crate::abi_stable::std_types::RStr::from_str($name)
            }
            extern "C" fn __amlmil_plugin_new(
                config: $crate::abi_stable::std_types::RStr<'_>,
            ) -> $crate::abi_stable::std_types::RResult<
                $crate::PreprocessorBox,
                $crate::abi_stable::std_types::RString,
            > {
                $crate::construct($new, config)
            }
            $crate::PluginMod {
                name: __amlmil_plugin_name,
                new: __amlmil_plugin_new,
            }
            .leak_into_prefix()
        }
    };
}
