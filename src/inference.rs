//! Inference: a session holds a frozen encoder and an attention-MIL head on one
//! device and turns a bag of cell images into a subtype, class probabilities and
//! per-class attention over the cells.
//!
//! A `Session` is `Send + Sync`: several threads may classify bags at once. This is
//! sound because after construction the models are only ever run forward with
//! gradients disabled and batch-norm in evaluation mode, which reads the parameter
//! tensors and never writes them; libtorch supports concurrent reads of a tensor.
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::bag::Bag;
use crate::cell_image::CellImage;
use crate::checkpoint::{EncoderManifest, MilManifest};
use crate::error::{Error, Result};
use crate::frozen::{load_mil, EncoderOptions, Flip, Frozen, FrozenEncoder};
use crate::model::{pool_features, FusedCellNet, MilHeads};
use crate::plugin::{self, Preprocessor};
use crate::Progress;

/// One cell in an attention ranking.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RankedCell {
    pub cell_id: u64,
    /// Position of the cell in the bag (order of addition).
    pub index: usize,
    /// Softmax attention of the cell for the ranked class.
    pub attention: f32,
}

/// Everything a classification returns for one bag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BagPrediction {
    /// Class names (bag labels) in output order.
    pub classes: Vec<String>,
    pub logits: Vec<f32>,
    pub probabilities: Vec<f32>,
    /// Index of the most probable class.
    pub predicted: usize,
    /// Cell ids in bag order.
    pub cell_ids: Vec<u64>,
    /// Row-major `[classes × cells]` attention before the softmax.
    pub attention_raw: Vec<f32>,
    /// Row-major `[classes × cells]` softmax attention; each row sums to 1.
    pub attention: Vec<f32>,
}

impl BagPrediction {
    pub fn num_cells(&self) -> usize {
        self.cell_ids.len()
    }

    /// Softmax (or raw) attention of every cell for `class`.
    pub fn attention_for(&self, class: usize, raw: bool) -> Option<&[f32]> {
        let n = self.num_cells();
        let all = if raw {
            &self.attention_raw
        } else {
            &self.attention
        };
        all.get(class * n..(class + 1) * n)
    }

    /// The `k` cells with the highest attention for `class`, highest first (ties: bag order).
    pub fn top_cells(&self, class: usize, k: usize) -> Option<Vec<RankedCell>> {
        let att = self.attention_for(class, false)?;
        let mut order: Vec<usize> = (0..att.len()).collect();
        order.sort_by(|&a, &b| att[b].total_cmp(&att[a]).then(a.cmp(&b)));
        Some(
            order
                .into_iter()
                .take(k)
                .map(|i| RankedCell {
                    cell_id: self.cell_ids[i],
                    index: i,
                    attention: att[i],
                })
                .collect(),
        )
    }
}

/// Encoder outputs copied to the host as f32, refused when not finite.
fn finite_host(t: &Tensor) -> Result<Vec<f32>> {
    let out = Vec::<f32>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .flatten(0, -1),
    )?;
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite(
            "encoder features (check the encoder checkpoint)".into(),
        ));
    }
    Ok(out)
}

/// A loaded encoder + MIL head on one device.
pub struct Session {
    encoder: FrozenEncoder,
    /// The checkpoint's head, or the heads of an ensemble.
    mil: Frozen<MilHeads>,
    /// Each head's four-convolution `g` packed for oneDNN (fused CPU sessions;
    /// empty otherwise).
    fused_g: Vec<FusedCellNet>,
    mil_manifest: MilManifest,
    _mil_vars: VarStore,
    /// Run on each batch of cells before encoding ([`crate::plugin`]).
    preprocessors: plugin::Chain,
    /// Content SHA-256 of the encoder and MIL checkpoints (`None`: written
    /// before checksums).
    checksums: [Option<String>; 2],
    /// Most cells one call takes ([`SessionOptions::max_cells`]).
    max_cells: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("encoder", &self.encoder.manifest().architecture)
            .field("classes", &self.mil_manifest.classes)
            .field("device", &self.encoder.device())
            .finish()
    }
}

/// Options of a session: those of its encoder, since the head runs where the
/// encoder does.
pub type SessionOptions = EncoderOptions;

impl Session {
    /// Loads both checkpoints and checks that the head fits the encoder.
    pub fn new(encoder_path: &Path, mil_path: &Path, options: &SessionOptions) -> Result<Session> {
        let encoder = FrozenEncoder::load(encoder_path, options)?;
        let (mil, mil_manifest, mut mil_vs) = load_mil(mil_path, encoder.device())?;
        let em = &encoder.manifest();
        if mil_manifest.feature_map != em.feature_map || mil_manifest.input_size != em.input_size {
            return Err(Error::Mismatch(format!(
                "MIL head {} expects {} px cells with feature maps {:?}, encoder {} gives {} px / {:?}",
                mil_path.display(),
                mil_manifest.input_size,
                mil_manifest.feature_map,
                encoder_path.display(),
                em.input_size,
                em.feature_map
            )));
        }
        mil_vs.freeze();
        let fused_g = match encoder.is_fused() {
            true => mil
                .heads()
                .iter()
                .filter_map(|h| h.four_conv_layers())
                .map(|convs| FusedCellNet::new(convs, encoder.precision().kind()))
                .collect::<Result<Vec<_>>>()?,
            false => Vec::new(),
        };
        if options.warm_up {
            let [c, h, w] = mil_manifest.feature_map;
            let maps = Tensor::f_zeros(
                [encoder.batch_size() as i64, c, h, w],
                (Kind::Float, encoder.device()),
            )?;
            let _ = match fused_g.is_empty() {
                false => fused_g
                    .iter()
                    .map(|g| g.instances(&maps))
                    .collect::<Result<Vec<_>>>()?,
                true => vec![tch::no_grad(|| mil.instances(&maps, false))],
            };
        }
        log::info!(
            "session: {} encoder ({}) + attention-MIL ({} classes) on {:?}",
            em.architecture.name(),
            encoder_path.display(),
            mil_manifest.classes.len(),
            encoder.device()
        );
        Ok(Session {
            encoder,
            mil: Frozen(mil),
            fused_g,
            mil_manifest,
            _mil_vars: mil_vs,
            preprocessors: Vec::new(),
            checksums: [
                crate::checkpoint::stored_checksum(encoder_path)?,
                crate::checkpoint::stored_checksum(mil_path)?,
            ],
            max_cells: options.max_cells,
        })
    }

    /// Appends a preprocessor to the chain every bag's cells go through before
    /// encoding ([`crate::plugin`]); feature maps given to
    /// [`Session::classify_feature_maps`] are not touched.
    pub fn with_preprocessor(mut self, p: Arc<dyn Preprocessor>) -> Session {
        self.preprocessors.push(p);
        self
    }

    /// Content SHA-256 of the encoder and the MIL checkpoint, as verified at
    /// load (`None` for a file written before checksums).
    pub fn checksums(&self) -> [Option<&str>; 2] {
        [self.checksums[0].as_deref(), self.checksums[1].as_deref()]
    }

    /// Most cells one call classifies, embeds or streams.
    pub fn max_cells(&self) -> usize {
        self.max_cells
    }

    /// Refuses `n` cells above [`Session::max_cells`] with [`Error::Limit`].
    pub fn check_cells(&self, n: usize, what: &str) -> Result<()> {
        crate::frozen::check_cell_count(n, self.max_cells, what)
    }

    /// Whether cells go through preprocessors before encoding.
    pub fn has_preprocessors(&self) -> bool {
        !self.preprocessors.is_empty()
    }

    pub fn device(&self) -> Device {
        self.encoder.device()
    }

    /// Arithmetic of the encoder (and, on the fused CPU path, of the head's
    /// `g`); attention, softmax and classifiers always run in f32.
    pub fn precision(&self) -> crate::device::Precision {
        self.encoder.precision()
    }

    pub fn classes(&self) -> &[String] {
        &self.mil_manifest.classes
    }

    pub fn encoder_manifest(&self) -> &EncoderManifest {
        self.encoder.manifest()
    }

    pub fn mil_manifest(&self) -> &MilManifest {
        &self.mil_manifest
    }

    /// Length of the pooled per-cell feature vector ([`Session::embed`]).
    pub fn feature_dim(&self) -> usize {
        self.encoder.manifest().feature_map[0] as usize
    }

    /// Encoder feature maps `[N, C, h, w]` (f32, on the session's device),
    /// batch by batch, of every cell after the session's preprocessors (which
    /// must keep every cell here: one map per cell given).
    pub fn feature_maps(&self, cells: &[CellImage], progress: Progress) -> Result<Tensor> {
        self.check_cells(cells.len(), "cells")?;
        if self.preprocessors.is_empty() {
            return self.encoder.feature_maps(cells, Flip::None, progress);
        }
        let ids: Vec<u64> = (0..cells.len() as u64).collect();
        let (kept_ids, kept) = plugin::apply(&self.preprocessors, &ids, cells, self.batch_size())?;
        if kept_ids.len() != ids.len() {
            return Err(Error::invalid(
                "bag",
                format!(
                    "preprocessing dropped {} of {} cells; features are returned one row per cell, so classify instead",
                    ids.len() - kept_ids.len(),
                    ids.len()
                ),
            ));
        }
        self.encoder.feature_maps(&kept, Flip::None, progress)
    }

    /// Pooled 512-d features of every cell, row-major `[N × feature_dim]`,
    /// after the session's preprocessors (see [`Session::feature_maps`]).
    pub fn embed(&self, cells: &[CellImage], progress: Progress) -> Result<Vec<f32>> {
        if cells.is_empty() {
            return Err(Error::EmptyBag("cells".into()));
        }
        finite_host(&pool_features(&self.feature_maps(cells, progress)?))
    }

    /// [`Session::feature_maps`] on the host, row-major `[N × C·h·w]` (what
    /// [`Session::classify_feature_maps`] takes back).
    pub fn feature_maps_flat(&self, cells: &[CellImage], progress: Progress) -> Result<Vec<f32>> {
        if cells.is_empty() {
            return Err(Error::EmptyBag("cells".into()));
        }
        finite_host(&self.feature_maps(cells, progress)?)
    }

    /// Floats in one cell's feature map (channels × height × width).
    pub fn feature_map_len(&self) -> usize {
        self.encoder.manifest().feature_map.iter().product::<i64>() as usize
    }

    /// Classifies one bag. Each encoder batch goes through the head's `g` at
    /// once, so only the instance vectors (2 KB a cell), not the feature maps,
    /// are kept for the whole bag.
    pub fn classify(&self, bag: &Bag, progress: Progress) -> Result<BagPrediction> {
        if bag.is_empty() {
            return Err(Error::EmptyBag("bag".into()));
        }
        self.check_cells(bag.len(), "bag")?;
        if self.preprocessors.is_empty() {
            let z = self.instances(bag.cells(), progress)?;
            return self.classify_instances(&z, bag.ids());
        }
        let (ids, cells) = plugin::apply(
            &self.preprocessors,
            bag.ids(),
            bag.cells(),
            self.batch_size(),
        )?;
        let z = self.instances(&cells, progress)?;
        self.classify_instances(&z, &ids)
    }

    /// Instance vectors `z` `[N, K·k′]` (each head's `g` of each cell's feature map, side by side),
    /// encoded batch by batch.
    pub fn instances(&self, cells: &[CellImage], progress: Progress) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let z = self
            .encoder
            .map_batches(cells, Flip::None, progress, &mut |maps| {
                if !bool::try_from(maps.isfinite().all())? {
                    return Err(Error::NonFinite(
                        "encoder features (check the encoder checkpoint)".into(),
                    ));
                }
                self.cell_instances(&maps)
            })?;
        Ok(Tensor::f_cat(&z, 0)?)
    }

    /// Cells per encoder forward pass.
    pub fn batch_size(&self) -> usize {
        self.encoder.batch_size()
    }

    /// Classifies precomputed feature maps `[N, C, h, w]` with the given cell ids.
    pub fn classify_feature_maps(&self, maps: &Tensor, cell_ids: &[u64]) -> Result<BagPrediction> {
        let _guard = tch::no_grad_guard();
        let [c, h, w] = self.encoder.manifest().feature_map;
        let n = cell_ids.len() as i64;
        if n == 0 {
            return Err(Error::EmptyBag("features".into()));
        }
        self.check_cells(cell_ids.len(), "features")?;
        if maps.size() != [n, c, h, w] {
            return Err(Error::invalid(
                "features",
                format!(
                    "shape {:?}, expected [{n}, {c}, {h}, {w}] for {n} cells",
                    maps.size()
                ),
            ));
        }
        let maps = maps
            .f_to_device(self.encoder.device())?
            .f_to_kind(Kind::Float)?;
        if !bool::try_from(maps.isfinite().all())? {
            return Err(Error::NonFinite("cell features (NaN or infinity)".into()));
        }
        self.classify_instances(&self.cell_instances(&maps)?, cell_ids)
    }

    /// The head's `g` on feature maps (fused when the session is).
    fn cell_instances(&self, maps: &Tensor) -> Result<Tensor> {
        if self.fused_g.is_empty() {
            return Ok(self.mil.0.instances(maps, false));
        }
        let per_head = self
            .fused_g
            .iter()
            .map(|g| g.instances(maps))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.mil.0.combine_instances(per_head.into_iter()))
    }

    /// The attention pooling and classifiers (averaged over an ensemble's heads,
    /// [`MilHeads`]) on instance vectors `z` `[N, K·k′]`
    /// (from [`Session::instances`]) of cells with the given ids.
    pub fn classify_instances(&self, z: &Tensor, cell_ids: &[u64]) -> Result<BagPrediction> {
        let _guard = tch::no_grad_guard();
        let k = self.mil.0.instance_width();
        let n = cell_ids.len() as i64;
        if n == 0 {
            return Err(Error::EmptyBag("bag".into()));
        }
        if z.size() != [n, k] {
            return Err(Error::invalid(
                "instances",
                format!("shape {:?}, expected [{n}, {k}] for {n} cells", z.size()),
            ));
        }
        let out = self.mil.0.forward_instances(z)?;
        let cpu = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                t.to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous()
                    .flatten(0, -1),
            )?)
        };
        let probabilities = cpu(&out.probabilities)?;
        let logits = cpu(&out.logits)?;
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite(
                "MIL logits (check the MIL checkpoint)".into(),
            ));
        }
        let predicted = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
            .unwrap_or(0);
        Ok(BagPrediction {
            classes: self.mil_manifest.classes.clone(),
            logits,
            probabilities,
            predicted,
            cell_ids: cell_ids.to_vec(),
            attention_raw: cpu(&out.attention_raw)?,
            attention: cpu(&out.attention)?,
        })
    }
}
