//! Frozen models loaded from checkpoints: [`load_encoder`] and [`load_mil`]
//! build a model from its file, checking manifest against tensors, and
//! [`FrozenEncoder`] runs an encoder forward only, on one device with the
//! [`EncoderOptions`] given (plain module, channels-last strides, or the fused
//! oneDNN path), batch by batch. Sessions, feature extraction and the probes
//! all load their models here.
//!
//! A `FrozenEncoder` is `Sync`: after loading, its parameters are only read
//! (forward passes under `no_grad` in evaluation mode), and libtorch supports
//! concurrent reads of a tensor.
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::cell_image::CellImage;
use crate::checkpoint::{self, Checkpoint, EncoderManifest, MilManifest};
use crate::device::{DeviceSpec, Precision};
use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderNet, FusedEncoder, MilHeads, Vit};
use crate::preprocess::to_input_batch;
use crate::Progress;

/// How a frozen encoder runs: device, arithmetic, batching and layout. A
/// [`crate::Session`]'s options are its encoder's (the head runs where the
/// encoder does); `Default` is what the C ABI's `amlmil_session_options_init` gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderOptions {
    pub device: DeviceSpec,
    /// Arithmetic of the encoder: fp32 (default); fp16 or bf16 on CUDA; bf16
    /// on the CPU where it has native bf16 ([`crate::device::cpu_bf16`]),
    /// refused with [`Error::Unsupported`] elsewhere.
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
    /// fastest; same outputs to float rounding). Ignored on CUDA. Needed for bf16
    /// on the CPU.
    pub fused: bool,
    /// Run one batch through the encoder when the session is created, so the
    /// first bag does not pay for oneDNN/cuDNN primitive creation.
    pub warm_up: bool,
    /// Most cells one call classifies, embeds or streams into a bag; more are
    /// refused with [`Error::Limit`] before any work.
    pub max_cells: usize,
    /// Most bytes of working memory one encoder batch may take, estimated as
    /// `batch_size ×` [`batch_bytes_per_cell`]; `None`: half the machine's
    /// physical memory ([`default_max_batch_bytes`]). A larger batch is refused
    /// at load with [`Error::Limit`] instead of risking an out-of-memory kill.
    pub max_batch_bytes: Option<u64>,
}

/// Default of [`EncoderOptions::max_cells`]: a smear gives hundreds to a few
/// thousand white cells; 50,000 leaves room for pooled slides.
pub const DEFAULT_MAX_CELLS: usize = 50_000;

/// Estimated peak working memory of the encoder for one cell of `input_size`²
/// pixels: the f32 input (12 bytes a pixel) and up to two live 64-channel
/// half-resolution stem maps (2 × 64 × 4 / 4 = 128 bytes a pixel), plus the
/// quarter-resolution pooled map (16): 160 bytes an input pixel, an upper
/// bound for ResNet18/34 forward passes without gradients.
pub fn batch_bytes_per_cell(input_size: i64) -> u64 {
    160 * (input_size.max(1) as u64).pow(2)
}

/// [`batch_bytes_per_cell`] for a ViT: the tokens through a block (input,
/// normed copy, qkv, attention output, the feed-forward hidden layer, 4 bytes
/// each) and one head-set of attention scores (`heads × T²`, as the bf16 path
/// materialises them), or the pixel estimate if larger.
pub fn vit_batch_bytes_per_cell(vit: &crate::model::VitConfig, input_size: i64) -> u64 {
    let g = vit.grid(input_size).max(1) as u64;
    let tokens = g * g + 1 + vit.registers.max(0) as u64;
    let width = 6 * vit.embed_dim.max(1) as u64 + 2 * vit.mlp_hidden.max(1) as u64;
    let scores = vit.num_heads.max(1) as u64 * tokens * tokens;
    (4 * (tokens * width + scores)).max(batch_bytes_per_cell(input_size))
}

/// Half of `MemTotal` in `/proc/meminfo`, or 8 GiB where it cannot be read.
pub fn default_max_batch_bytes() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    total_kib.map_or(8 << 30, |k| k * 1024 / 2)
}

/// Refuses `n` cells above `max` (`max_cells`), naming `what` they are.
pub fn check_cell_count(n: usize, max: usize, what: &str) -> Result<()> {
    if n > max {
        return Err(Error::limit(
            "max_cells_per_bag",
            format!(
                "{what} has {n} cells, the session allows {max}; raise the option or split the bag"
            ),
        ));
    }
    Ok(())
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            device: DeviceSpec::Auto,
            precision: Precision::Fp32,
            batch_size: 32,
            num_threads: None,
            channels_last: true,
            fused: true,
            warm_up: true,
            max_cells: DEFAULT_MAX_CELLS,
            max_batch_bytes: None,
        }
    }
}

/// Models that are only run forward after loading; see the module doc for why
/// sharing them between threads is sound.
pub(crate) struct Frozen<T>(pub(crate) T);
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
    /// A vision transformer, in the precision of the session.
    Vit(Box<Frozen<Vit>>),
}

/// A frozen encoder on one device, ready to turn cells into feature maps.
pub struct FrozenEncoder {
    backend: Backend,
    manifest: EncoderManifest,
    device: Device,
    /// Element type of the input batches.
    kind: Kind,
    /// Arithmetic of the encoder (and of a fused head's `g`).
    precision: Precision,
    batch_size: usize,
    channels_last: bool,
    _vars: VarStore,
}

impl FrozenEncoder {
    /// Loads an encoder checkpoint for inference with `options` (device, precision,
    /// batch size, threads, layout).
    pub fn load(path: &Path, options: &EncoderOptions) -> Result<FrozenEncoder> {
        if options.batch_size == 0 {
            return Err(Error::invalid("batch_size", "must be at least 1"));
        }
        let device = options.device.resolve()?;
        if device == Device::Cpu {
            check_cpu_precision(options)?;
        }
        if let Some(n) = options.num_threads.filter(|n| *n > 0) {
            tch::set_num_threads(n as i32);
        }
        let (net, manifest, mut vs) = load_encoder(path, device)?;
        let max_bytes = options
            .max_batch_bytes
            .unwrap_or_else(default_max_batch_bytes);
        let per_cell = match &manifest.vit {
            Some(vit) => vit_batch_bytes_per_cell(vit, manifest.input_size),
            None => batch_bytes_per_cell(manifest.input_size),
        };
        let need = per_cell.saturating_mul(options.batch_size as u64);
        if need > max_bytes {
            return Err(Error::limit(
                "max_batch_bytes",
                format!(
                    "batch_size {} of {} px cells needs about {} MiB ({} KiB a cell), the limit is {} MiB; lower batch_size or raise max_batch_bytes",
                    options.batch_size,
                    manifest.input_size,
                    need >> 20,
                    per_cell >> 10,
                    max_bytes >> 20
                ),
            ));
        }
        let fused = options.fused && device == Device::Cpu && !manifest.architecture.is_vit();
        // The fused path folds from the f32 weights and rounds once to its own
        // precision; inputs stay f32. Elsewhere the module runs in `precision`.
        let kind = if fused {
            Kind::Float
        } else {
            options.precision.kind()
        };
        vs.set_kind(kind);
        vs.freeze();
        let channels_last = options.channels_last
            && device == Device::Cpu
            && !fused
            && !manifest.architecture.is_vit();
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
        let (backend, vs) = match net {
            EncoderNet::Vit(vit) => (Backend::Vit(Box::new(Frozen(vit))), vs),
            EncoderNet::ResNet(encoder) if fused => {
                // The packed copies are all the fused path reads: free the module's weights.
                let packed = FusedEncoder::new(&encoder, options.precision.kind())?;
                drop(encoder);
                (Backend::Fused(packed), VarStore::new(Device::Cpu))
            }
            EncoderNet::ResNet(encoder) => (Backend::Plain(Box::new(Frozen(encoder))), vs),
        };
        let frozen = FrozenEncoder {
            backend,
            manifest,
            device,
            kind,
            precision: options.precision,
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
            Backend::Vit(v) => Ok(v.0.feature_map(x).f_to_kind(Kind::Float)?.contiguous()),
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
        if !progress("encode", done, cells.len()) {
            return Err(Error::Cancelled(format!(
                "encoding, after all {done} cells"
            )));
        }
        Ok(out)
    }

    /// Whether the encoder runs on the fused oneDNN path.
    pub fn is_fused(&self) -> bool {
        matches!(self.backend, Backend::Fused(_))
    }

    /// Arithmetic the encoder runs in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Cells per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

/// Reduced precision on the CPU: bf16 through the fused path on a CPU with
/// native bf16, never fp16.
pub fn check_cpu_precision(options: &EncoderOptions) -> Result<()> {
    match options.precision {
        Precision::Fp32 => Ok(()),
        Precision::Fp16 => Err(Error::invalid(
            "precision",
            "fp16 needs a CUDA device; on the CPU use fp32, or bf16 where the CPU has it",
        )),
        Precision::Bf16 if !options.fused => Err(Error::invalid(
            "precision",
            "bf16 on the CPU runs on the fused path; leave `fused` on",
        )),
        Precision::Bf16 => crate::device::cpu_bf16()
            .map(|isa| log::debug!("bf16 on the CPU through {isa}"))
            .map_err(|why| Error::unsupported("precision", format!("bf16 on the CPU: {why}"))),
    }
}

/// Re-lays 4-D tensors out as NHWC in memory (shape unchanged): libtorch's CPU
/// convolutions are ~25% faster on such strides for ResNet18 at 144 px (DESIGN §5).
pub fn to_channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Builds an encoder (a ResNet or a ViT) from a checkpoint file, checking
/// manifest and tensors.
pub fn load_encoder(
    path: &Path,
    device: Device,
) -> Result<(EncoderNet, EncoderManifest, VarStore)> {
    let (manifest, tensors) = Checkpoint::read_encoder(path)?;
    // The 32 px floor of `init-checkpoint`; above a cell image's largest side the
    // input batch alone would be gigabytes (and the side arithmetic overflows).
    if !(32..=i64::from(crate::cell_image::MAX_SIDE)).contains(&manifest.input_size) {
        return Err(Error::checkpoint(
            path,
            format!(
                "manifest input_size {} is outside 32..={} px",
                manifest.input_size,
                crate::cell_image::MAX_SIDE
            ),
        ));
    }
    let arch = manifest.architecture;
    let expect = match (&manifest.vit, arch.is_vit()) {
        (Some(vit), true) => {
            vit.validate(arch, manifest.input_size)
                .map_err(|e| Error::checkpoint(path, format!("manifest: {e}")))?;
            [vit.feature_dim(), 1, 1]
        }
        (None, false) => {
            let side = arch.feature_side(manifest.input_size);
            [arch.feature_dim(), side, side]
        }
        (None, true) => {
            return Err(Error::checkpoint(
                path,
                format!("manifest: {} needs a `vit` configuration", arch.name()),
            ))
        }
        (Some(_), false) => {
            return Err(Error::checkpoint(
                path,
                format!("manifest: a `vit` configuration with {}", arch.name()),
            ))
        }
    };
    if manifest.feature_map != expect {
        return Err(Error::checkpoint(
            path,
            format!(
                "manifest says feature_map {:?}, but {} at {} px gives {:?}",
                manifest.feature_map,
                arch.name(),
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
    let net = match &manifest.vit {
        Some(vit) => {
            // Checked before the model is built: the manifest alone could declare
            // a transformer of any size, and building it allocates every variable.
            check_shapes(path, &tensors, &vit.parameter_shapes(), "")?;
            EncoderNet::Vit(Vit::new(&vs.root(), vit.clone()))
        }
        None => EncoderNet::ResNet(Encoder::new(&vs.root(), arch)),
    };
    checkpoint::load_into(&mut vs, tensors, path, &[".num_batches_tracked"])?;
    vs.set_device(device);
    Ok((net, manifest, vs))
}

/// Refuses the first of `shapes` (named after `prefix`) that `tensors` lacks or
/// holds with another shape, before a model of those shapes is allocated.
fn check_shapes(
    path: &Path,
    tensors: &std::collections::HashMap<String, Tensor>,
    shapes: &[(String, Vec<i64>)],
    prefix: &str,
) -> Result<()> {
    for (name, shape) in shapes {
        let name = format!("{prefix}{name}");
        match tensors.get(&name) {
            None => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{name}` is missing (the manifest's config needs shape {shape:?})"
                    ),
                ))
            }
            Some(t) if t.size() != *shape => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, the manifest's config needs {shape:?}",
                        t.size()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Builds the attention-MIL head(s) of a checkpoint file (one head, or the K heads of an
/// ensemble), checking manifest and tensors.
pub fn load_mil(path: &Path, device: Device) -> Result<(MilHeads, MilManifest, VarStore)> {
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
    let count = manifest.head_count();
    if let Some(e) = &manifest.ensemble {
        if e.heads < 2 || e.members.len() != e.heads {
            return Err(Error::checkpoint(
                path,
                format!(
                    "manifest ensemble: {} heads with {} members (an ensemble has K >= 2 heads, one member each)",
                    e.heads,
                    e.members.len()
                ),
            ));
        }
        if e.heads > MAX_HEADS {
            return Err(Error::checkpoint(
                path,
                format!("manifest ensemble: {} heads, at most {MAX_HEADS}", e.heads),
            ));
        }
    }
    // Checked before the head is built: the manifest alone could declare a head of
    // any size, and building it allocates every variable.
    let shapes = manifest.config.parameter_shapes();
    for k in 0..count {
        check_shapes(path, &tensors, &shapes, &MilHeads::prefix(k, count))?;
    }
    let mut vs = VarStore::new(Device::Cpu);
    let mil = MilHeads::new(&vs.root(), &manifest.config, count);
    checkpoint::load_into(&mut vs, tensors, path, &[])?;
    vs.set_device(device);
    Ok((mil, manifest, vs))
}

/// Most heads one MIL checkpoint may hold (5 folds × 20 seeds).
pub const MAX_HEADS: usize = 100;
