//! Inference: a session holds a frozen encoder and an attention-MIL head on one
//! device and turns a bag of cell images into a subtype, class probabilities and
//! per-class attention over the cells.
//!
//! A `Session` is `Send + Sync`: several threads may classify bags at once. This is
//! sound because after construction the models are only ever run forward with
//! gradients disabled and batch-norm in evaluation mode, which reads the parameter
//! tensors and never writes them; libtorch supports concurrent reads of a tensor.
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::bag::Bag;
use crate::cell_image::CellImage;
use crate::checkpoint::{self, Checkpoint, EncoderManifest, MilManifest};
use crate::error::{Error, Result};
use crate::model::{pool_features, AttentionMil, Encoder, FusedCellNet, FusedEncoder};
use crate::preprocess::to_input_batch;

/// Where to run: `auto` (first GPU if any, else CPU), `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Device {
            device: s.to_owned(),
            reason: reason.to_owned(),
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(DeviceSpec::Cuda)
                    .map_err(|_| bad("expected `cuda:N` with N a GPU index")),
                None => Err(bad("unknown device; use `auto`, `cpu`, `cuda` or `cuda:N`")),
            },
        }
    }
}

impl DeviceSpec {
    /// The libtorch device, checking that a requested GPU exists.
    pub fn resolve(self) -> Result<Device> {
        let count = cuda_device_count();
        match self {
            DeviceSpec::Auto => Ok(if count > 0 {
                Device::Cuda(0)
            } else {
                Device::Cpu
            }),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) if i < count => Ok(Device::Cuda(i)),
            DeviceSpec::Cuda(i) => Err(Error::Device {
                device: format!("cuda:{i}"),
                reason: if count == 0 {
                    "no CUDA device is available on this machine (libtorch sees 0 GPUs)".into()
                } else {
                    format!("only {count} CUDA device(s) are available")
                },
            }),
        }
    }
}

/// Number of CUDA devices libtorch can use (0 on a machine without a GPU).
pub fn cuda_device_count() -> usize {
    tch::Cuda::device_count().max(0) as usize
}

/// Arithmetic of the encoder. Reduced precision needs a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Ok(Precision::Fp32),
            "fp16" | "float16" | "f16" | "half" => Ok(Precision::Fp16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::invalid(
                "precision",
                format!("`{other}` is not fp32, fp16 or bf16"),
            )),
        }
    }
}

impl Precision {
    fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// Options of a session; `Default` is what the C ABI's `amlmil_session_options_init` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    pub device: DeviceSpec,
    pub precision: Precision,
    /// Cells encoded per forward pass.
    pub batch_size: usize,
    /// libtorch intra-op threads; process-wide in libtorch. `None` keeps its default.
    pub num_threads: Option<usize>,
    /// On the CPU, run the encoder with NHWC strides (faster; results differ from
    /// the NCHW layout by float rounding only, ~1e-5 relative). Ignored on CUDA
    /// and when `fused`.
    pub channels_last: bool,
    /// On the CPU, fold batch norm into the convolutions and run the encoder on
    /// oneDNN's blocked layout with pre-packed weights ([`crate::model::FusedEncoder`];
    /// fastest; same outputs to float rounding). Ignored on CUDA.
    pub fused: bool,
    /// Run one batch through the encoder when the session is created, so the
    /// first bag does not pay for oneDNN/cuDNN primitive creation.
    pub warm_up: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            device: DeviceSpec::Auto,
            precision: Precision::Fp32,
            batch_size: 32,
            num_threads: None,
            channels_last: true,
            fused: true,
            warm_up: true,
        }
    }
}

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

/// Progress of a long call: `done` of `total` units of `stage`. Return `false` to cancel.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize) -> bool;

/// Models that are only run forward after loading; see the module doc for why
/// sharing them between threads is sound.
struct Frozen<T>(T);
// SAFETY: see the module documentation: parameters are never mutated after
// loading, and every forward pass runs under `no_grad` in eval mode.
unsafe impl<T: Send> Sync for Frozen<T> {}

/// Flip applied to a cell before encoding (feature caches keep all four, so flip
/// augmentation during MIL training costs no re-encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flip {
    None,
    Horizontal,
    Vertical,
    Both,
}

impl Flip {
    pub const ALL: [Flip; 4] = [Flip::None, Flip::Horizontal, Flip::Vertical, Flip::Both];

    /// Flips an NCHW batch.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Flip::None => x.shallow_clone(),
            Flip::Horizontal => x.flip([3]),
            Flip::Vertical => x.flip([2]),
            Flip::Both => x.flip([2, 3]),
        }
    }
}

/// How a frozen encoder runs.
enum Backend {
    /// The training-time module (NCHW or channels-last strides; CUDA).
    Plain(Box<Frozen<Encoder>>),
    /// Batch norm folded, oneDNN layout (CPU, f32).
    Fused(FusedEncoder),
}

/// A frozen encoder on one device, ready to turn cells into feature maps.
pub struct FrozenEncoder {
    backend: Backend,
    manifest: EncoderManifest,
    device: Device,
    kind: Kind,
    batch_size: usize,
    channels_last: bool,
    _vars: VarStore,
}

impl FrozenEncoder {
    /// Loads an encoder checkpoint for inference with `options` (device, precision,
    /// batch size, threads, layout).
    pub fn load(path: &Path, options: &SessionOptions) -> Result<FrozenEncoder> {
        if options.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        let device = options.device.resolve()?;
        if options.precision != Precision::Fp32 && device == Device::Cpu {
            return Err(Error::invalid(
                "precision",
                format!(
                    "{:?} needs a CUDA device; this session runs on the CPU",
                    options.precision
                ),
            ));
        }
        if let Some(n) = options.num_threads.filter(|n| *n > 0) {
            tch::set_num_threads(n as i32);
        }
        let (encoder, manifest, mut vs) = load_encoder(path, device)?;
        let kind = options.precision.kind();
        vs.set_kind(kind);
        vs.freeze();
        let fused = options.fused && device == Device::Cpu && kind == Kind::Float;
        let channels_last = options.channels_last && device == Device::Cpu && !fused;
        if channels_last {
            tch::no_grad(|| {
                for (_, mut v) in vs.variables() {
                    if v.dim() == 4 {
                        let nhwc = to_channels_last(&v);
                        v.set_data(&nhwc);
                    }
                }
            });
        }
        if device.is_cuda() {
            // Inputs of one shape: let cuDNN pick the fastest algorithm once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let (backend, vs) = if fused {
            // The packed copies are all the fused path reads: free the module's weights.
            let packed = FusedEncoder::new(&encoder)?;
            drop(encoder);
            (Backend::Fused(packed), VarStore::new(Device::Cpu))
        } else {
            (Backend::Plain(Box::new(Frozen(encoder))), vs)
        };
        let frozen = FrozenEncoder {
            backend,
            manifest,
            device,
            kind,
            batch_size: options.batch_size,
            channels_last,
            _vars: vs,
        };
        if options.warm_up {
            // A full batch: oneDNN and cuDNN create their primitives per shape.
            let s = frozen.manifest.input_size;
            let x = Tensor::f_zeros(
                [frozen.batch_size as i64, 3, s, s],
                (frozen.kind, frozen.device),
            )?;
            let _ = frozen.encode(&x)?;
        }
        Ok(frozen)
    }

    /// Feature maps of one normalised input batch on the encoder's device.
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        match &self.backend {
            Backend::Fused(f) => f.feature_map(x),
            Backend::Plain(e) => {
                let x = if self.channels_last {
                    to_channels_last(x)
                } else {
                    x.shallow_clone()
                };
                Ok(e.0
                    .feature_map(&x, false)
                    .f_to_kind(Kind::Float)?
                    .contiguous())
            }
        }
    }

    pub fn manifest(&self) -> &EncoderManifest {
        &self.manifest
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Feature maps `[N, C, h, w]` (f32, on the encoder's device) of `cells`
    /// flipped by `flip`, batch by batch; `progress` sees cells done of all.
    pub fn feature_maps(
        &self,
        cells: &[CellImage],
        flip: Flip,
        progress: Progress,
    ) -> Result<Tensor> {
        let maps = self.map_batches(cells, flip, progress, &mut |m| Ok(m))?;
        Ok(Tensor::f_cat(&maps, 0)?)
    }

    /// Encodes `cells` batch by batch and hands each batch's feature maps to
    /// `each`, keeping only what it returns: memory is bounded by one batch of
    /// images and maps plus the results.
    pub fn map_batches(
        &self,
        cells: &[CellImage],
        flip: Flip,
        progress: Progress,
        each: &mut dyn FnMut(Tensor) -> Result<Tensor>,
    ) -> Result<Vec<Tensor>> {
        let _guard = tch::no_grad_guard();
        let size = self.manifest.input_size as u32;
        let mut out = Vec::with_capacity(cells.len().div_ceil(self.batch_size));
        let mut done = 0;
        for chunk in cells.chunks(self.batch_size) {
            if !progress("encode", done, cells.len()) {
                return Err(Error::Cancelled(format!(
                    "encoding after {done} of {} cells",
                    cells.len()
                )));
            }
            let refs: Vec<&CellImage> = chunk.iter().collect();
            let x = to_input_batch(
                &refs,
                size,
                &self.manifest.normalization,
                self.device,
                self.kind,
            )?;
            out.push(each(self.encode(&flip.apply(&x))?)?);
            done += chunk.len();
        }
        progress("encode", done, cells.len());
        Ok(out)
    }

    /// Cells per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

/// A loaded encoder + MIL head on one device.
pub struct Session {
    encoder: FrozenEncoder,
    mil: Frozen<AttentionMil>,
    /// The head's four-convolution `g` packed for oneDNN (fused CPU sessions).
    fused_g: Option<FusedCellNet>,
    mil_manifest: MilManifest,
    _mil_vars: VarStore,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("encoder", &self.encoder.manifest.architecture)
            .field("classes", &self.mil_manifest.classes)
            .field("device", &self.encoder.device)
            .finish()
    }
}

/// Re-lays 4-D tensors out as NHWC in memory (shape unchanged): libtorch's CPU
/// convolutions are ~25% faster on such strides for ResNet18 at 144 px (DESIGN §5).
pub fn to_channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Builds an encoder from a checkpoint file, checking manifest and tensors.
pub fn load_encoder(path: &Path, device: Device) -> Result<(Encoder, EncoderManifest, VarStore)> {
    let (manifest, tensors) = Checkpoint::read_encoder(path)?;
    let side = manifest.architecture.feature_side(manifest.input_size);
    let expect = [manifest.architecture.feature_dim(), side, side];
    if manifest.feature_map != expect {
        return Err(Error::checkpoint(
            path,
            format!(
                "manifest says feature_map {:?}, but {} at {} px gives {:?}",
                manifest.feature_map,
                manifest.architecture.name(),
                manifest.input_size,
                expect
            ),
        ));
    }
    if manifest
        .normalization
        .std
        .iter()
        .any(|s| !(s.is_finite() && *s > 0.0))
        || manifest.normalization.mean.iter().any(|m| !m.is_finite())
    {
        return Err(Error::checkpoint(
            path,
            "normalization std must be positive and finite, mean finite",
        ));
    }
    let mut vs = VarStore::new(Device::Cpu);
    let encoder = Encoder::new(&vs.root(), manifest.architecture);
    checkpoint::load_into(&mut vs, tensors, path, &[".num_batches_tracked"])?;
    vs.set_device(device);
    Ok((encoder, manifest, vs))
}

/// Builds an attention-MIL head from a checkpoint file, checking manifest and tensors.
pub fn load_mil(path: &Path, device: Device) -> Result<(AttentionMil, MilManifest, VarStore)> {
    let (manifest, tensors) = Checkpoint::read_mil(path)?;
    manifest
        .config
        .validate()
        .map_err(|e| Error::checkpoint(path, format!("manifest config: {e}")))?;
    if manifest.classes.len() as i64 != manifest.config.num_classes {
        return Err(Error::checkpoint(
            path,
            format!(
                "manifest lists {} class names but config.num_classes is {}",
                manifest.classes.len(),
                manifest.config.num_classes
            ),
        ));
    }
    let mut vs = VarStore::new(Device::Cpu);
    let mil = AttentionMil::new(&vs.root(), manifest.config.clone());
    checkpoint::load_into(&mut vs, tensors, path, &[])?;
    vs.set_device(device);
    Ok((mil, manifest, vs))
}

impl Session {
    /// Loads both checkpoints and checks that the head fits the encoder.
    pub fn new(encoder_path: &Path, mil_path: &Path, options: &SessionOptions) -> Result<Session> {
        let encoder = FrozenEncoder::load(encoder_path, options)?;
        let (mil, mil_manifest, mut mil_vs) = load_mil(mil_path, encoder.device)?;
        let em = &encoder.manifest;
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
        let fused_g = match (&encoder.backend, mil.four_conv_layers()) {
            (Backend::Fused(_), Some(convs)) => Some(FusedCellNet::new(convs)?),
            _ => None,
        };
        if options.warm_up {
            let [c, h, w] = mil_manifest.feature_map;
            let maps = Tensor::f_zeros(
                [encoder.batch_size as i64, c, h, w],
                (Kind::Float, encoder.device),
            )?;
            let _ = match &fused_g {
                Some(g) => g.instances(&maps)?,
                None => tch::no_grad(|| mil.instances(&maps, false)),
            };
        }
        log::info!(
            "session: {} encoder ({}) + attention-MIL ({} classes) on {:?}",
            em.architecture.name(),
            encoder_path.display(),
            mil_manifest.classes.len(),
            encoder.device
        );
        Ok(Session {
            encoder,
            mil: Frozen(mil),
            fused_g,
            mil_manifest,
            _mil_vars: mil_vs,
        })
    }

    pub fn device(&self) -> Device {
        self.encoder.device
    }

    pub fn classes(&self) -> &[String] {
        &self.mil_manifest.classes
    }

    pub fn encoder_manifest(&self) -> &EncoderManifest {
        &self.encoder.manifest
    }

    pub fn mil_manifest(&self) -> &MilManifest {
        &self.mil_manifest
    }

    /// Length of the pooled per-cell feature vector ([`Session::embed`]).
    pub fn feature_dim(&self) -> usize {
        self.encoder.manifest.feature_map[0] as usize
    }

    /// Encoder feature maps `[N, C, h, w]` (f32, on the session's device), batch by batch.
    pub fn feature_maps(&self, cells: &[CellImage], progress: Progress) -> Result<Tensor> {
        self.encoder.feature_maps(cells, Flip::None, progress)
    }

    /// Pooled 512-d features of every cell, row-major `[N × feature_dim]`.
    pub fn embed(&self, cells: &[CellImage], progress: Progress) -> Result<Vec<f32>> {
        if cells.is_empty() {
            return Err(Error::EmptyBag("cells".into()));
        }
        let pooled = pool_features(&self.feature_maps(cells, progress)?).to_device(Device::Cpu);
        let out = Vec::<f32>::try_from(pooled.flatten(0, -1))?;
        if out.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite(
                "encoder features (check the encoder checkpoint)".into(),
            ));
        }
        Ok(out)
    }

    /// Classifies one bag. Each encoder batch goes through the head's `g` at
    /// once, so only the instance vectors (2 KB a cell), not the feature maps,
    /// are kept for the whole bag.
    pub fn classify(&self, bag: &Bag, progress: Progress) -> Result<BagPrediction> {
        if bag.is_empty() {
            return Err(Error::EmptyBag("bag".into()));
        }
        let z = self.instances(bag.cells(), progress)?;
        self.classify_instances(&z, bag.ids())
    }

    /// Instance vectors `z` `[N, k′]` (the head's `g` of each cell's feature map),
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
        let [c, h, w] = self.encoder.manifest.feature_map;
        let n = cell_ids.len() as i64;
        if n == 0 {
            return Err(Error::EmptyBag("features".into()));
        }
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
            .f_to_device(self.encoder.device)?
            .f_to_kind(Kind::Float)?;
        if !bool::try_from(maps.isfinite().all())? {
            return Err(Error::NonFinite("cell features (NaN or infinity)".into()));
        }
        self.classify_instances(&self.cell_instances(&maps)?, cell_ids)
    }

    /// The head's `g` on feature maps (fused when the session is).
    fn cell_instances(&self, maps: &Tensor) -> Result<Tensor> {
        match &self.fused_g {
            Some(g) => g.instances(maps),
            None => Ok(self.mil.0.instances(maps, false)),
        }
    }

    /// The attention pooling and classifiers on instance vectors `z` `[N, k′]`
    /// (from [`Session::instances`]) of cells with the given ids.
    pub fn classify_instances(&self, z: &Tensor, cell_ids: &[u64]) -> Result<BagPrediction> {
        let _guard = tch::no_grad_guard();
        let k = self.mil_manifest.config.instance_dim;
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
        let out = self.mil.0.forward_instances(z);
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
