//! The frozen encoder as inference runs it on the CPU: every batch norm folded
//! into its convolution, weights pre-packed once for oneDNN, activations kept in
//! oneDNN's blocked layout from the first convolution to the last, and ReLUs
//! and residual additions done in place.
//!
//! Same function as [`Encoder::feature_map`] in evaluation mode, to float
//! rounding (tests hold it within 1e-4); about 1.3× faster on the 2-core
//! development machine (docs/performance.md). Batch norm folding:
//! `w' = w·γ/√(σ²+ε)`, `b' = β − μ·γ/√(σ²+ε)`, in f64.
//!
//! **bf16.** Built with `Kind::BFloat16` (on a CPU with native bf16, see
//! [`crate::device::cpu_bf16`]), the folded weights are rounded once from f64
//! to bf16 and every activation between the input and the last feature map is
//! bf16 in the blocked layout; biases and the accumulation inside oneDNN stay
//! f32. Inputs and outputs are f32 either way, so callers do not change.
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::encoder::Encoder;
use crate::error::{Error, Result};

/// torchvision's (and our) batch-norm epsilon.
const BN_EPS: f64 = 1e-5;

/// A convolution with its batch norm folded in, weights in oneDNN's layout.
#[derive(Debug)]
struct FusedConv {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl FusedConv {
    fn new(conv: &nn::Conv2D, bn: &nn::BatchNorm, stride: i64, kind: Kind) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        // Folded in f64, rounded once to f32 (and once more to `kind` when packed).
        let f64_cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
        let w = f64_cpu(&conv.ws);
        let k = w.size()[2];
        let padding = k / 2;
        let gamma = bn
            .ws
            .as_ref()
            .ok_or_else(|| Error::invalid("encoder", "batch norm without weight"))?;
        let beta = bn
            .bs
            .as_ref()
            .ok_or_else(|| Error::invalid("encoder", "batch norm without bias"))?;
        let scale = f64_cpu(gamma) / (f64_cpu(&bn.running_var) + BN_EPS).sqrt();
        let folded = (&w * scale.view([-1, 1, 1, 1]))
            .to_kind(Kind::Float)
            .contiguous();
        let bias = (f64_cpu(beta) - f64_cpu(&bn.running_mean) * &scale)
            .to_kind(Kind::Float)
            .contiguous();
        Self::packed(&folded, bias, stride, padding, kind)
    }

    /// Packs a dense f32 weight for oneDNN, in `kind` (f32 or bf16); the bias stays f32.
    fn packed(
        weight: &Tensor,
        bias: Tensor,
        stride: i64,
        padding: i64,
        kind: Kind,
    ) -> Result<Self> {
        let weight = weight.f_to_mkldnn(kind)?.f_mkldnn_reorder_conv2d_weight(
            [padding, padding],
            [stride, stride],
            [1, 1],
            1,
            None::<&[i64]>,
        )?;
        Ok(FusedConv {
            weight,
            bias,
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_mkldnn_convolution(
            &self.weight,
            Some(&self.bias),
            [self.padding, self.padding],
            [self.stride, self.stride],
            [1, 1],
            1,
        )?)
    }
}

#[derive(Debug)]
struct FusedBlock {
    conv1: FusedConv,
    conv2: FusedConv,
    downsample: Option<FusedConv>,
}

/// An [`Encoder`] folded and packed for CPU inference (see the module docs).
#[derive(Debug)]
pub struct FusedEncoder {
    stem: FusedConv,
    blocks: Vec<FusedBlock>,
    /// Element type of weights and activations: `Float` or `BFloat16`.
    kind: Kind,
}

// SAFETY: the packed tensors are created once and only read afterwards (every
// forward allocates its own activations); libtorch allows concurrent reads.
unsafe impl Sync for FusedEncoder {}

impl FusedEncoder {
    /// Folds and packs `encoder`'s current weights (f32, CPU) for arithmetic in
    /// `kind` (`Float`, or `BFloat16` on a CPU with native bf16). The encoder
    /// itself is unchanged.
    pub fn new(encoder: &Encoder, kind: Kind) -> Result<Self> {
        check_kind(kind)?;
        let stem = FusedConv::new(&encoder.conv1, &encoder.bn1, 2, kind)?;
        let mut blocks = Vec::new();
        for (i, stage) in encoder.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                blocks.push(FusedBlock {
                    conv1: FusedConv::new(&block.conv1, &block.bn1, stride, kind)?,
                    conv2: FusedConv::new(&block.conv2, &block.bn2, 1, kind)?,
                    downsample: block
                        .downsample
                        .as_ref()
                        .map(|(c, bn)| FusedConv::new(c, bn, stride, kind))
                        .transpose()?,
                });
            }
        }
        Ok(FusedEncoder { stem, blocks, kind })
    }

    /// Last feature map `[N, 512, h, w]` (dense NCHW, f32, CPU) for normalised
    /// `[N, 3, H, W]` f32 input on the CPU.
    pub fn feature_map(&self, xs: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let x = to_blocked(xs, self.kind)?;
        let mut y = self.stem.forward(&x)?;
        let _ = y.f_relu_()?;
        let mut y = y.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        for block in &self.blocks {
            let mut h = block.conv1.forward(&y)?;
            let _ = h.f_relu_()?;
            let mut h = block.conv2.forward(&h)?;
            match &block.downsample {
                Some(ds) => {
                    let _ = h.f_add_(&ds.forward(&y)?)?;
                }
                None => {
                    let _ = h.f_add_(&y)?;
                }
            }
            let _ = h.f_relu_()?;
            y = h;
        }
        Ok(y.f_to_dense(Kind::Float, false)?)
    }
}

/// The MIL head's four-convolution `g` ([`crate::model::CellNet::FourConv`])
/// packed for oneDNN the same way: feature maps → instance vectors.
#[derive(Debug)]
pub struct FusedCellNet {
    convs: Vec<FusedConv>,
    kind: Kind,
}

// SAFETY: as for `FusedEncoder`.
unsafe impl Sync for FusedCellNet {}

impl FusedCellNet {
    /// Packs the four convolutions for arithmetic in `kind` (as [`FusedEncoder::new`]).
    pub fn new(convs: &[nn::Conv2D; 4], kind: Kind) -> Result<Self> {
        check_kind(kind)?;
        let _guard = tch::no_grad_guard();
        let convs = convs
            .iter()
            .map(|c| {
                let w =
                    c.ws.to_device(Device::Cpu)
                        .to_kind(Kind::Float)
                        .contiguous();
                let b = match &c.bs {
                    Some(b) => b.to_device(Device::Cpu).to_kind(Kind::Float).contiguous(),
                    None => Tensor::zeros([w.size()[0]], (Kind::Float, Device::Cpu)),
                };
                FusedConv::packed(&w, b, 1, 0, kind)
            })
            .collect::<Result<_>>()?;
        Ok(FusedCellNet { convs, kind })
    }

    /// Instance vectors `[N, k′]` of dense f32 feature maps `[N, C, 5, 5]` on the CPU.
    pub fn instances(&self, maps: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let mut x = to_blocked(maps, self.kind)?;
        for conv in &self.convs {
            x = conv.forward(&x)?;
            let _ = x.f_relu_()?;
        }
        Ok(x.f_to_dense(Kind::Float, false)?.f_flatten(1, -1)?)
    }
}

/// The fused path computes in f32 or bf16 only.
fn check_kind(kind: Kind) -> Result<()> {
    match kind {
        Kind::Float | Kind::BFloat16 => Ok(()),
        other => Err(Error::invalid(
            "precision",
            format!("the fused CPU path computes in fp32 or bf16, not {other:?}"),
        )),
    }
}

/// A dense f32 CPU tensor in oneDNN's layout as `kind`.
fn to_blocked(x: &Tensor, kind: Kind) -> Result<Tensor> {
    Ok(x.f_contiguous()?.f_to_mkldnn(kind)?)
}
