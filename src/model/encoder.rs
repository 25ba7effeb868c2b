//! ResNet18 / ResNet34 cell encoders (He et al. 2016) with torchvision's tensor
//! names, and the architecture names of every encoder (the ViTs are in
//! [`crate::model::vit`]).
//!
//! Parameter paths reproduce `torchvision.models.resnet18/34().state_dict()` keys
//! (`conv1.weight`, `layer2.0.downsample.1.running_var`, …) so encoder weights move
//! between PyTorch and this library without renaming. The classification `fc` layer
//! is absent: an encoder ends at the last feature map (512×5×5 for a 144 px cell),
//! which the attention-MIL head consumes, and its global average (512-d).
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::model::recompute::Recompute;

/// Encoder architectures: the paper's ResNets, and DINOv2-layout vision
/// transformers with 14 px patches (ViT-S/B/L/g), which are imported
/// (DinoBloom, timm), not pre-trained here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderArch {
    #[serde(rename = "resnet18")]
    ResNet18,
    #[serde(rename = "resnet34")]
    ResNet34,
    VitS14,
    VitB14,
    VitL14,
    VitG14,
}

impl EncoderArch {
    /// Basic blocks per stage (torchvision's `layers` argument).
    ///
    /// # Panics
    /// For a ViT.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            EncoderArch::ResNet18 => [2, 2, 2, 2],
            EncoderArch::ResNet34 => [3, 4, 6, 3],
            vit => panic!("{} is not a ResNet", vit.name()),
        }
    }

    /// Whether this is a vision transformer ([`crate::model::Vit`]).
    pub fn is_vit(self) -> bool {
        !matches!(self, EncoderArch::ResNet18 | EncoderArch::ResNet34)
    }

    /// Channels of the last feature map, and so of the pooled feature vector
    /// (for a ViT: its width, the class token's size).
    pub fn feature_dim(self) -> i64 {
        crate::model::VitConfig::preset(self).map_or(512, |c| c.embed_dim)
    }

    /// Side of the last feature map for a square input of `input_size` pixels:
    /// stem conv (s2), max-pool (s2) and three stride-2 stages, each `⌊(x+1)/2⌋`
    /// (1 for a ViT, whose features are a vector).
    pub fn feature_side(self, input_size: i64) -> i64 {
        if self.is_vit() {
            return 1;
        }
        (0..5).fold(input_size, |x, _| (x + 1) / 2)
    }

    pub fn name(self) -> &'static str {
        match self {
            EncoderArch::ResNet18 => "resnet18",
            EncoderArch::ResNet34 => "resnet34",
            EncoderArch::VitS14 => "vit_s14",
            EncoderArch::VitB14 => "vit_b14",
            EncoderArch::VitL14 => "vit_l14",
            EncoderArch::VitG14 => "vit_g14",
        }
    }
}

impl std::str::FromStr for EncoderArch {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "resnet18" => Ok(EncoderArch::ResNet18),
            "resnet34" => Ok(EncoderArch::ResNet34),
            "vit_s14" | "vit_s" | "vit_small" => Ok(EncoderArch::VitS14),
            "vit_b14" | "vit_b" | "vit_base" => Ok(EncoderArch::VitB14),
            "vit_l14" | "vit_l" | "vit_large" => Ok(EncoderArch::VitL14),
            "vit_g14" | "vit_g" | "vit_giant" | "vit_giant2" => Ok(EncoderArch::VitG14),
            other => Err(crate::Error::invalid(
                "architecture",
                format!(
                    "`{other}` is not an encoder (resnet18, resnet34, vit_s14, vit_b14, vit_l14, vit_g14)"
                ),
            )),
        }
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu")
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

/// torchvision's batch-norm ε.
const BN_EPS: f64 = 1e-5;

fn batch_norm(p: nn::Path, c: i64, momentum: f64) -> nn::BatchNorm {
    let cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        momentum,
        eps: BN_EPS,
        ..Default::default()
    };
    nn::batch_norm2d(p, c, cfg)
}

/// torchvision's `BasicBlock`: two 3×3 convolutions with a residual connection.
#[derive(Debug)]
pub(super) struct BasicBlock {
    pub(super) conv1: nn::Conv2D,
    pub(super) bn1: nn::BatchNorm,
    pub(super) conv2: nn::Conv2D,
    pub(super) bn2: nn::BatchNorm,
    pub(super) downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
    /// The batch norms' momentum.
    pub(super) momentum: f64,
}

impl BasicBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64, m: f64) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| {
            (
                conv(&p / "downsample" / "0", cin, cout, 1, stride, 0),
                batch_norm(&p / "downsample" / "1", cout, m),
            )
        });
        BasicBlock {
            conv1: conv(&p / "conv1", cin, cout, 3, stride, 1),
            bn1: batch_norm(&p / "bn1", cout, m),
            conv2: conv(&p / "conv2", cout, cout, 3, 1, 1),
            bn2: batch_norm(&p / "bn2", cout, m),
            downsample,
            momentum: m,
        }
    }
}

/// A batch norm (ε 1e-5) as training uses it: synchronised over the process
/// group's ranks when [`crate::distributed::sync_batch_norm`] says so, else
/// tch's. The encoder's and the SSL heads' batch norms go through it.
pub(crate) fn norm(xs: &Tensor, bn: &nn::BatchNorm, momentum: f64, train: bool) -> Tensor {
    match crate::distributed::sync_batch_norm().filter(|_| train) {
        Some(group) => group.batch_norm(xs, bn, BN_EPS, momentum),
        None => xs.apply_t(bn, train),
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let m = self.momentum;
        let ys = norm(&xs.apply(&self.conv1), &self.bn1, m, train).relu();
        let ys = norm(&ys.apply(&self.conv2), &self.bn2, m, train);
        let shortcut = match &self.downsample {
            Some((c, b)) => norm(&xs.apply(c), b, m, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

/// A ResNet trunk without its classifier.
#[derive(Debug)]
pub struct Encoder {
    arch: EncoderArch,
    pub(super) conv1: nn::Conv2D,
    pub(super) bn1: nn::BatchNorm,
    pub(super) stages: Vec<Vec<BasicBlock>>,
    /// The batch norms' momentum.
    pub(super) momentum: f64,
    /// Activation checkpointing of training passes ([`Encoder::with_recompute`]).
    pub(super) recompute: Option<Arc<Recompute>>,
}

impl Encoder {
    /// Creates the encoder's variables under `p` (use the var store's root so the
    /// names are exactly torchvision's).
    pub fn new(p: &nn::Path, arch: EncoderArch) -> Self {
        Self::with_batch_norm_momentum(p, arch, 0.1)
    }

    /// As [`Encoder::new`] with another batch-norm momentum (PyTorch convention:
    /// `running = (1 - m)·running + m·batch`; 0.1 is torchvision's). With `m = 1`
    /// one training-mode pass sets every running statistic to that batch's.
    ///
    /// # Panics
    /// For a ViT architecture (callers build [`crate::model::Vit`] for those).
    pub fn with_batch_norm_momentum(p: &nn::Path, arch: EncoderArch, momentum: f64) -> Self {
        let widths = [64, 128, 256, 512];
        let mut cin = 64;
        let stages = arch
            .blocks()
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (&n, cout))| {
                let stage = p / format!("layer{}", i + 1);
                (0..n)
                    .map(|b| {
                        let stride = if b == 0 && i > 0 { 2 } else { 1 };
                        let block =
                            BasicBlock::new(&stage / b.to_string(), cin, cout, stride, momentum);
                        cin = cout;
                        block
                    })
                    .collect()
            })
            .collect();
        Encoder {
            arch,
            conv1: conv(p / "conv1", 3, 64, 7, 2, 3),
            bn1: batch_norm(p / "bn1", 64, momentum),
            stages,
            momentum,
            recompute: None,
        }
    }

    /// Checkpoints this encoder's training passes with `recompute`: passes in
    /// training mode with gradients enabled keep only each segment's input, and
    /// [`Encoder::backward_recomputed`] completes their backward pass after the
    /// loss's ([`crate::model::recompute`]). Evaluation and no-grad passes are
    /// unchanged.
    pub fn with_recompute(mut self, recompute: Arc<Recompute>) -> Self {
        self.recompute = Some(recompute);
        self
    }

    /// Back-propagates the checkpointed passes since the last call (after the
    /// loss's `backward`); a no-op without checkpointing.
    pub fn backward_recomputed(&self) -> crate::Result<()> {
        match &self.recompute {
            Some(r) => r.backward(self),
            None => Ok(()),
        }
    }

    /// Forgets checkpointed passes that will not be back-propagated.
    pub fn clear_recomputed(&self) {
        if let Some(r) = &self.recompute {
            r.clear();
        }
    }

    /// The checkpointing segments: the stem, then every basic block.
    pub(super) fn segments(&self) -> usize {
        1 + self.stages.iter().map(Vec::len).sum::<usize>()
    }

    fn block(&self, mut i: usize) -> &BasicBlock {
        for stage in &self.stages {
            if i < stage.len() {
                return &stage[i];
            }
            i -= stage.len();
        }
        panic!("block index out of range")
    }

    /// Segment `i` ([`Encoder::segments`]) applied to its input.
    pub(super) fn segment(&self, i: usize, xs: &Tensor, train: bool) -> Tensor {
        if i == 0 {
            norm(&xs.apply(&self.conv1), &self.bn1, self.momentum, train)
                .relu()
                .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
        } else {
            self.block(i - 1).forward_t(xs, train)
        }
    }

    /// The batch-norm running statistics segment `i` updates in training mode.
    pub(super) fn segment_running_stats(&self, i: usize) -> Vec<Tensor> {
        let bns: Vec<&nn::BatchNorm> = if i == 0 {
            vec![&self.bn1]
        } else {
            let b = self.block(i - 1);
            let mut v = vec![&b.bn1, &b.bn2];
            v.extend(b.downsample.as_ref().map(|(_, bn)| bn));
            v
        };
        bns.iter()
            .flat_map(|bn| {
                [
                    bn.running_mean.shallow_clone(),
                    bn.running_var.shallow_clone(),
                ]
            })
            .collect()
    }

    pub fn arch(&self) -> EncoderArch {
        self.arch
    }

    /// Last feature map, `[N, 512, h, w]`, for normalised `[N, 3, H, W]` input.
    pub fn feature_map(&self, xs: &Tensor, train: bool) -> Tensor {
        if let Some(r) = self.recompute.as_ref().filter(|_| train && grad_enabled()) {
            return r.forward(self, xs, train);
        }
        (0..self.segments()).fold(xs.shallow_clone(), |ys, i| self.segment(i, &ys, train))
    }
}

/// Whether libtorch records autograd graphs here (not inside `no_grad`).
fn grad_enabled() -> bool {
    let probe = Tensor::ones([1], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (&probe * 1.0).requires_grad()
}

/// Global average of a feature map: `[N, C, h, w]` → `[N, C]` (torchvision's `avgpool` + flatten).
pub fn pool_features(feature_map: &Tensor) -> Tensor {
    feature_map.mean_dim([2i64, 3].as_slice(), false, feature_map.kind())
}

impl ModuleT for Encoder {
    /// The pooled 512-d representation, as self-supervised methods use it.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        pool_features(&self.feature_map(xs, train))
    }
}

/// A built encoder of either family, as a checkpoint's manifest describes it.
#[derive(Debug)]
pub enum EncoderNet {
    ResNet(Encoder),
    Vit(crate::model::Vit),
}

impl EncoderNet {
    /// What the MIL head is fed: `[N, 512, h, w]` for a ResNet, `[N, D′, 1, 1]`
    /// for a ViT ([`crate::model::vit::VitFeatures`]).
    pub fn feature_map(&self, xs: &Tensor, train: bool) -> Tensor {
        match self {
            EncoderNet::ResNet(e) => e.feature_map(xs, train),
            EncoderNet::Vit(v) => v.feature_map(xs),
        }
    }

    /// The ResNet, for what only ResNets do (the fused CPU path, pre-training).
    pub fn resnet(&self) -> Option<&Encoder> {
        match self {
            EncoderNet::ResNet(e) => Some(e),
            EncoderNet::Vit(_) => None,
        }
    }
}

impl ModuleT for EncoderNet {
    /// The pooled representation `[N, C]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        pool_features(&self.feature_map(xs, train))
    }
}
