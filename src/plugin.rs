//! Preprocessing plugins: vendor code that sees a session's cells before the
//! encoder does (stain normalisation, cell filtering).
//!
//! A [`Session`](crate::Session) holds a chain of [`Preprocessor`]s. Before
//! encoding, each batch of up to `batch_size` cells (bag order, the images as
//! added, before resizing) goes through the chain in order; a preprocessor may
//! change pixels or size, or drop cells. Classification then runs on the kept
//! cells only, and results list only their ids.
//!
//! Two kinds plug in from outside the library:
//! * [`RustPlugin`]: a Rust `cdylib` loaded at run time through the
//!   `amlmil-plugin` interface crate (abi_stable: type layouts and the
//!   interface version are checked at load, so an incompatible plugin is
//!   refused with a message, never called);
//! * a C callback on the session options (`src/ffi/plugin.rs`), which
//!   implements [`Preprocessor`] in the C skin.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use amlmil_plugin::abi_stable::library::{lib_header_from_path, RootModule};
use amlmil_plugin::abi_stable::std_types::{RResult, RStr};
use amlmil_plugin::{PluginCell, PluginModRef, PreprocessorBox};

use crate::cell_image::CellImage;
use crate::error::{Error, Result};

/// One cell handed to a [`Preprocessor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreprocessCell {
    pub cell_id: u64,
    pub image: CellImage,
    /// `true` on entry; `false` drops the cell from the bag.
    pub keep: bool,
}

/// Code run on each batch of cells before encoding (see the module docs).
/// Called from the classifying thread, concurrently when several threads
/// classify on one session.
pub trait Preprocessor: Send + Sync {
    /// Names the preprocessor in errors and logs.
    fn name(&self) -> &str;
    /// Changes the batch in place; an error fails the classification.
    fn process(&self, cells: &mut [PreprocessCell]) -> Result<()>;
}

/// A chain of preprocessors, shared by a session's calls.
pub type Chain = Vec<Arc<dyn Preprocessor>>;

/// Runs `chain` over `cells` in batches of `batch` and returns the ids and
/// images of the kept cells (bag order). With an empty chain the cells are
/// returned unchanged (copied).
pub fn apply(
    chain: &[Arc<dyn Preprocessor>],
    ids: &[u64],
    cells: &[CellImage],
    batch: usize,
) -> Result<(Vec<u64>, Vec<CellImage>)> {
    let mut kept_ids = Vec::with_capacity(ids.len());
    let mut kept = Vec::with_capacity(cells.len());
    for (id_chunk, cell_chunk) in ids.chunks(batch.max(1)).zip(cells.chunks(batch.max(1))) {
        let mut work: Vec<PreprocessCell> = id_chunk
            .iter()
            .zip(cell_chunk)
            .map(|(&cell_id, image)| PreprocessCell {
                cell_id,
                image: image.clone(),
                keep: true,
            })
            .collect();
        for p in chain {
            p.process(&mut work)?;
            work.retain(|c| c.keep);
            if work.is_empty() {
                break;
            }
        }
        for c in work {
            kept_ids.push(c.cell_id);
            kept.push(c.image);
        }
    }
    if kept.is_empty() && !cells.is_empty() {
        let names: Vec<&str> = chain.iter().map(|p| p.name()).collect();
        return Err(Error::EmptyBag(format!(
            "bag (preprocessing {} dropped all {} cells)",
            names.join(", "),
            cells.len()
        )));
    }
    Ok((kept_ids, kept))
}

/// A Rust preprocessing plugin loaded from a shared library (abi_stable).
pub struct RustPlugin {
    label: String,
    inner: PreprocessorBox,
}

impl std::fmt::Debug for RustPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RustPlugin")
            .field("plugin", &self.label)
            .finish()
    }
}

impl RustPlugin {
    /// Loads the plugin at `path` and builds its preprocessor from `config`
    /// (the plugin's own configuration string; empty for its defaults).
    /// Errors name the file: missing, not a plugin, built against an
    /// incompatible interface, or refused configuration.
    ///
    /// The library stays loaded for the rest of the process (unloading code
    /// that may still be referenced is unsound), so loading the same file
    /// again is cheap.
    pub fn load(path: &Path, config: &str) -> Result<RustPlugin> {
        let fail = |reason: String| Error::Plugin {
            name: path.display().to_string(),
            reason,
        };
        if !path.is_file() {
            return Err(fail("no such file".into()));
        }
        let module = lib_header_from_path(path)
            .and_then(|header| header.init_root_module::<PluginModRef>())
            .map_err(|e| {
                fail(format!(
                    "not a compatible libamlmil plugin (interface `{}` {}): {e}",
                    PluginModRef::NAME,
                    PluginModRef::VERSION_STRINGS.version
                ))
            })?;
        let name = module.name()().as_str().to_owned();
        let label = format!("{name} ({})", path.display());
        let inner = match module.new()(RStr::from_str(config)) {
            RResult::ROk(p) => p,
            RResult::RErr(e) => {
                return Err(Error::Plugin {
                    name: label,
                    reason: e.into_string(),
                })
            }
        };
        log::info!("preprocessing plugin {label} loaded");
        Ok(RustPlugin { label, inner })
    }
}

impl Preprocessor for RustPlugin {
    fn name(&self) -> &str {
        &self.label
    }

    fn process(&self, cells: &mut [PreprocessCell]) -> Result<()> {
        let mut batch: Vec<PluginCell> = cells
            .iter()
            .map(|c| PluginCell {
                cell_id: c.cell_id,
                width: c.image.width(),
                height: c.image.height(),
                rgb: c.image.rgb().to_vec().into(),
                keep: c.keep,
            })
            .collect();
        if let RResult::RErr(e) = self.inner.process(batch.as_mut_slice().into()) {
            return Err(Error::Plugin {
                name: self.label.clone(),
                reason: e.into_string(),
            });
        }
        for (cell, out) in cells.iter_mut().zip(batch) {
            if out.cell_id != cell.cell_id {
                return Err(Error::Plugin {
                    name: self.label.clone(),
                    reason: format!(
                        "changed the id of cell {} to {} (ids are read-only)",
                        cell.cell_id, out.cell_id
                    ),
                });
            }
            cell.keep = out.keep;
            if out.keep {
                cell.image = CellImage::from_rgb(out.width, out.height, out.rgb.into_vec())
                    .map_err(|e| Error::Plugin {
                        name: self.label.clone(),
                        reason: format!("returned an invalid image for cell {}: {e}", out.cell_id),
                    })?;
            }
        }
        Ok(())
    }
}

/// Where a Rust plugin comes from: its file and configuration string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    pub path: PathBuf,
    pub config: String,
}
