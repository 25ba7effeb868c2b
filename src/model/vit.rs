//! Vision transformers in DINOv2's layout (Oquab et al. 2023), the cell
//! encoders of hematology foundation models such as DinoBloom (Koch et al.
//! 2024): a 14 px patch embedding, a class token, optional register tokens,
//! learned position embeddings resized to the input, pre-norm blocks with
//! LayerScale, fused-qkv attention and a GELU MLP (SwiGLU for the giant size),
//! and a final LayerNorm.
//!
//! Tensor names are DINOv2's (`cls_token`, `pos_embed`, `register_tokens`,
//! `patch_embed.proj.weight`, `blocks.3.attn.qkv.weight`, `blocks.3.ls1.gamma`,
//! `blocks.3.mlp.fc1.weight` or, SwiGLU, `blocks.3.mlp.w12.weight`, `norm.weight`),
//! which timm's `vit_*_patch14_dinov2` share but for its register tokens
//! (`reg_token`) and its SwiGLU names (`mlp.fc1`/`mlp.fc2`); `amlmil import`
//! renames those.
//!
//! **What the MIL head sees.** A ResNet gives the head a 512×5×5 map; a ViT
//! gives tokens. The encoder's "feature map" is the final-normed class token
//! (`features = cls`, D values) or the class token and the mean of the patch
//! tokens concatenated (`cls_mean`, 2D values, DINOv2's and DinoBloom's linear
//! evaluation), shaped `[D′, 1, 1]` so the feature cache, `classify_features`,
//! model info and streaming carry it as they carry a ResNet map; the head's
//! `g` must then be the pooled variant.
//!
//! **Input sizes.** The position embeddings are learnt for one grid (16×16
//! for 224 px); another input is resized to its grid as the layout's own code
//! does: DINOv2 bicubic with a scale factor of `(grid + 0.1) / M` and no
//! antialiasing, timm bicubic to the size with antialiasing. As in both, the
//! input side must be a multiple of the patch size (140 or 154 px near the
//! paper's 144; cells of any size are resized to the encoder's input).
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::EncoderArch;

/// The feed-forward network of each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ffn {
    /// `fc1 → GELU (erf) → fc2`.
    Mlp,
    /// DINOv2's SwiGLU (giant size): `w12` gives `[x1, x2]`, `w3(silu(x1) · x2)`.
    Swiglu,
}

/// What the encoder hands the MIL head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VitFeatures {
    /// The final-normed class token (D values).
    Cls,
    /// The class token and the mean of the patch tokens, concatenated (2D).
    ClsMean,
}

/// How the position embeddings are resized to another input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PosResize {
    /// DINOv2's `interpolate_pos_encoding`: bicubic, scale factor
    /// `(grid + 0.1) / M`, no antialiasing.
    Dinov2,
    /// timm's `resample_abs_pos_embed`: bicubic to the size, antialiased.
    Timm,
}

/// The shape of a ViT encoder; stored in its checkpoint's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    pub patch_size: i64,
    pub embed_dim: i64,
    pub depth: i64,
    pub num_heads: i64,
    /// Hidden width of the feed-forward network (for SwiGLU: of each half).
    pub mlp_hidden: i64,
    pub ffn: Ffn,
    /// Register tokens (Darcet et al. 2024; 0 without).
    pub registers: i64,
    /// Whether blocks scale their branches by learnt `ls1.gamma`/`ls2.gamma`.
    pub layer_scale: bool,
    /// Side of the grid the position embeddings were learnt for.
    pub pos_grid: i64,
    /// Whether `pos_embed` has a row for the class token (DINOv2) or only the
    /// patches' (timm's `no_embed_class`, whose class token already holds it).
    pub class_pos: bool,
    pub pos_resize: PosResize,
    pub features: VitFeatures,
    pub layer_norm_eps: f64,
}

impl VitConfig {
    /// DINOv2's sizes (ViT-S/B/L/g with 14 px patches, 64-dimensional heads)
    /// for a 224 px input (DinoBloom's), class-token features.
    pub fn preset(arch: EncoderArch) -> Option<VitConfig> {
        let (embed_dim, depth, num_heads, mlp_hidden, ffn) = match arch {
            EncoderArch::VitS14 => (384, 12, 6, 1536, Ffn::Mlp),
            EncoderArch::VitB14 => (768, 12, 12, 3072, Ffn::Mlp),
            EncoderArch::VitL14 => (1024, 24, 16, 4096, Ffn::Mlp),
            EncoderArch::VitG14 => (1536, 40, 24, 4096, Ffn::Swiglu),
            EncoderArch::ResNet18 | EncoderArch::ResNet34 => return None,
        };
        Some(VitConfig {
            patch_size: 14,
            embed_dim,
            depth,
            num_heads,
            mlp_hidden,
            ffn,
            registers: 0,
            layer_scale: true,
            pos_grid: 16,
            class_pos: true,
            pos_resize: PosResize::Dinov2,
            features: VitFeatures::Cls,
            layer_norm_eps: 1e-6,
        })
    }

    /// Values per cell handed to the MIL head.
    pub fn feature_dim(&self) -> i64 {
        match self.features {
            VitFeatures::Cls => self.embed_dim,
            VitFeatures::ClsMean => 2 * self.embed_dim,
        }
    }

    /// Patches per side for a square input of `input_size` pixels.
    pub fn grid(&self, input_size: i64) -> i64 {
        input_size / self.patch_size.max(1)
    }

    /// Checks the sizes against each other, against `arch` and `input_size`.
    pub fn validate(&self, arch: EncoderArch, input_size: i64) -> Result<()> {
        let width = VitConfig::preset(arch)
            .ok_or_else(|| {
                Error::invalid(
                    "vit",
                    format!("a ViT configuration with the {} architecture", arch.name()),
                )
            })?
            .embed_dim;
        for (name, v, max) in [
            ("vit.patch_size", self.patch_size, 64),
            ("vit.embed_dim", self.embed_dim, 4096),
            ("vit.depth", self.depth, 64),
            ("vit.num_heads", self.num_heads, 64),
            ("vit.mlp_hidden", self.mlp_hidden, 16384),
            ("vit.pos_grid", self.pos_grid, 128),
        ] {
            if !(1..=max).contains(&v) {
                return Err(Error::invalid(
                    name,
                    format!("must be in 1..={max}, got {v}"),
                ));
            }
        }
        if !(0..=16).contains(&self.registers) {
            return Err(Error::invalid(
                "vit.registers",
                format!("must be in 0..=16, got {}", self.registers),
            ));
        }
        if self.embed_dim != width {
            return Err(Error::invalid(
                "vit.embed_dim",
                format!(
                    "{} is {width} wide, the configuration says {}",
                    arch.name(),
                    self.embed_dim
                ),
            ));
        }
        if self.embed_dim % self.num_heads != 0 {
            return Err(Error::invalid(
                "vit.num_heads",
                format!(
                    "{} heads do not divide the width {}",
                    self.num_heads, self.embed_dim
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(Error::invalid(
                "vit.layer_norm_eps",
                format!("must be positive, got {}", self.layer_norm_eps),
            ));
        }
        if self.grid(input_size) < 1 || input_size % self.patch_size != 0 {
            let p = self.patch_size;
            return Err(Error::invalid(
                "input_size",
                format!(
                    "{input_size} px is not a multiple of the {p} px patch (e.g. {}, {} or {})",
                    (input_size / p).max(1) * p,
                    (input_size / p + 1) * p,
                    16 * p
                ),
            ));
        }
        Ok(())
    }

    /// Name and shape of every variable [`Vit::new`] creates, computed without
    /// allocating them (a checkpoint's tensors are checked against these first).
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let d = self.embed_dim;
        let h = self.mlp_hidden;
        let p = self.patch_size;
        let grid_rows = self.pos_grid * self.pos_grid + i64::from(self.class_pos);
        let mut out = vec![
            ("cls_token".to_owned(), vec![1, 1, d]),
            ("pos_embed".to_owned(), vec![1, grid_rows, d]),
            ("patch_embed.proj.weight".to_owned(), vec![d, 3, p, p]),
            ("patch_embed.proj.bias".to_owned(), vec![d]),
            ("norm.weight".to_owned(), vec![d]),
            ("norm.bias".to_owned(), vec![d]),
        ];
        if self.registers > 0 {
            out.push(("register_tokens".to_owned(), vec![1, self.registers, d]));
        }
        for i in 0..self.depth {
            let b = format!("blocks.{i}");
            let mut add = |name: &str, shape: Vec<i64>| out.push((format!("{b}.{name}"), shape));
            for norm in ["norm1", "norm2"] {
                add(&format!("{norm}.weight"), vec![d]);
                add(&format!("{norm}.bias"), vec![d]);
            }
            add("attn.qkv.weight", vec![3 * d, d]);
            add("attn.qkv.bias", vec![3 * d]);
            add("attn.proj.weight", vec![d, d]);
            add("attn.proj.bias", vec![d]);
            if self.layer_scale {
                add("ls1.gamma", vec![d]);
                add("ls2.gamma", vec![d]);
            }
            match self.ffn {
                Ffn::Mlp => {
                    add("mlp.fc1.weight", vec![h, d]);
                    add("mlp.fc1.bias", vec![h]);
                    add("mlp.fc2.weight", vec![d, h]);
                    add("mlp.fc2.bias", vec![d]);
                }
                Ffn::Swiglu => {
                    add("mlp.w12.weight", vec![2 * h, d]);
                    add("mlp.w12.bias", vec![2 * h]);
                    add("mlp.w3.weight", vec![d, h]);
                    add("mlp.w3.bias", vec![d]);
                }
            }
        }
        out
    }

    /// Multiply-adds ×2 of one forward pass at `input_size` (the linear
    /// layers, the attention products and the patch embedding), for GFLOP/s.
    pub fn flops(&self, input_size: i64) -> f64 {
        let g = self.grid(input_size) as f64;
        let t = g * g + 1.0 + self.registers as f64;
        let (d, h) = (self.embed_dim as f64, self.mlp_hidden as f64);
        let ffn = match self.ffn {
            Ffn::Mlp => 2.0 * d * h,
            Ffn::Swiglu => 3.0 * d * h,
        };
        let per_token = 3.0 * d * d + d * d + ffn;
        let attention = 2.0 * t * t * d;
        let patch = g * g * d * 3.0 * (self.patch_size * self.patch_size) as f64;
        2.0 * (self.depth as f64 * (t * per_token + attention) + patch)
    }
}

/// A LayerNorm's affine parameters.
#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(p: nn::Path, d: i64) -> Self {
        Norm {
            weight: p.var("weight", &[d], nn::Init::Const(1.0)),
            bias: p.var("bias", &[d], nn::Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor, eps: f64) -> Tensor {
        let d = self.weight.size()[0];
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), eps, true)
    }
}

/// A linear layer with timm's initialisation (truncated normal, σ 0.02).
fn linear(p: nn::Path, cin: i64, cout: i64) -> nn::Linear {
    nn::linear(
        p,
        cin,
        cout,
        nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    )
}

#[derive(Debug)]
enum FeedForward {
    Mlp { fc1: nn::Linear, fc2: nn::Linear },
    Swiglu { w12: nn::Linear, w3: nn::Linear },
}

/// `x W^T + b` in one call (`addmm`; tch's `Linear` adds the bias in a second pass).
fn affine(x: &Tensor, l: &nn::Linear) -> Tensor {
    x.linear(&l.ws, l.bs.as_ref())
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            FeedForward::Mlp { fc1, fc2 } => {
                let mut h = affine(x, fc1);
                let _ = h.gelu_("none");
                affine(&h, fc2)
            }
            FeedForward::Swiglu { w12, w3 } => {
                let x12 = affine(x, w12).chunk(2, -1);
                affine(&(x12[0].silu() * &x12[1]), w3)
            }
        }
    }
}

/// One pre-norm transformer block.
#[derive(Debug)]
struct Block {
    norm1: Norm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ls1: Option<Tensor>,
    norm2: Norm,
    ffn: FeedForward,
    ls2: Option<Tensor>,
}

impl Block {
    fn new(p: nn::Path, c: &VitConfig) -> Self {
        let (d, h) = (c.embed_dim, c.mlp_hidden);
        let attn = &p / "attn";
        let mlp = &p / "mlp";
        let ls = |name: &str| {
            c.layer_scale
                .then(|| (&p / name).var("gamma", &[d], nn::Init::Const(0.1)))
        };
        Block {
            norm1: Norm::new(&p / "norm1", d),
            qkv: linear(&attn / "qkv", d, 3 * d),
            proj: linear(&attn / "proj", d, d),
            ls1: ls("ls1"),
            norm2: Norm::new(&p / "norm2", d),
            ffn: match c.ffn {
                Ffn::Mlp => FeedForward::Mlp {
                    fc1: linear(&mlp / "fc1", d, h),
                    fc2: linear(&mlp / "fc2", h, d),
                },
                Ffn::Swiglu => FeedForward::Swiglu {
                    w12: linear(&mlp / "w12", d, 2 * h),
                    w3: linear(&mlp / "w3", h, d),
                },
            },
            ls2: ls("ls2"),
        }
    }

    fn forward(&self, x: &Tensor, c: &VitConfig) -> Tensor {
        let (n, t, d) = x.size3().expect("tokens are [N, T, D]");
        let heads = c.num_heads;
        let qkv = affine(&self.norm1.forward(x, c.layer_norm_eps), &self.qkv)
            .reshape([n, t, 3, heads, d / heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let a = attention(&q, &k, &v).transpose(1, 2).reshape([n, t, d]);
        let a = affine(&a, &self.proj);
        let x = residual(x, &a, self.ls1.as_ref());
        let f = self.ffn.forward(&self.norm2.forward(&x, c.layer_norm_eps));
        residual(&x, &f, self.ls2.as_ref())
    }
}

/// `softmax(q kᵀ / √d) v` over `[N, heads, T, d]`: libtorch's fused kernel
/// (`scaled_dot_product_attention`), except in bf16 on the CPU, where two
/// batched GEMMs (oneDNN's bf16) and a softmax (accumulating in f32, rounding
/// its output to bf16) took 11 ms against the fused kernel's 17 for 16 cells
/// of ViT-S/14 at 224 px.
fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    if q.kind() == Kind::BFloat16 && q.device() == tch::Device::Cpu {
        let d = q.size()[3] as f64;
        let scores = (q * d.powf(-0.5)).matmul(&k.transpose(-2, -1));
        return scores.softmax(-1, Kind::BFloat16).matmul(v);
    }
    Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, 0.0, false, None, false)
}

/// `x + γ·branch` (LayerScale) in one pass, or `x + branch` without it.
fn residual(x: &Tensor, branch: &Tensor, gamma: Option<&Tensor>) -> Tensor {
    match gamma {
        Some(g) => x.addcmul(branch, g),
        None => x + branch,
    }
}

/// A DINOv2-layout vision transformer without its head.
#[derive(Debug)]
pub struct Vit {
    config: VitConfig,
    patch: nn::Conv2D,
    cls_token: Tensor,
    register_tokens: Option<Tensor>,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
}

impl Vit {
    /// Creates the variables under `p` (the var store's root, so the names are
    /// DINOv2's). Call [`VitConfig::validate`] first.
    pub fn new(p: &nn::Path, config: VitConfig) -> Self {
        let d = config.embed_dim;
        let rows = config.pos_grid * config.pos_grid + i64::from(config.class_pos);
        let tokens = |name: &str, n: i64, std: f64| {
            p.var(
                name,
                &[1, n, d],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )
        };
        let patch = nn::conv2d(
            p / "patch_embed" / "proj",
            3,
            d,
            config.patch_size,
            nn::ConvConfig {
                stride: config.patch_size,
                ..Default::default()
            },
        );
        Vit {
            cls_token: tokens("cls_token", 1, 1e-6),
            register_tokens: (config.registers > 0)
                .then(|| tokens("register_tokens", config.registers, 1e-6)),
            pos_embed: tokens("pos_embed", rows, 0.02),
            patch,
            blocks: (0..config.depth)
                .map(|i| Block::new(p / "blocks" / i.to_string(), &config))
                .collect(),
            norm: Norm::new(p / "norm", d),
            config,
        }
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The patches' position embeddings `[1, g², D]` for a `g`×`g` grid, and
    /// the class token's row when the layout has one.
    fn position_embeddings(&self, g: i64) -> (Option<Tensor>, Tensor) {
        let c = &self.config;
        let d = c.embed_dim;
        let (class, patches) = if c.class_pos {
            (
                Some(self.pos_embed.narrow(1, 0, 1)),
                self.pos_embed.narrow(1, 1, c.pos_grid * c.pos_grid),
            )
        } else {
            (None, self.pos_embed.shallow_clone())
        };
        if g == c.pos_grid {
            return (class, patches);
        }
        let m = c.pos_grid;
        let kind = patches.kind();
        let grid = patches
            .to_kind(Kind::Float)
            .reshape([1, m, m, d])
            .permute([0, 3, 1, 2]);
        let resized = match c.pos_resize {
            PosResize::Dinov2 => {
                let s = (g as f64 + 0.1) / m as f64;
                grid.upsample_bicubic2d([g, g], false, s, s)
            }
            PosResize::Timm => grid.internal_upsample_bicubic2d_aa([g, g], false, None, None),
        };
        let patches = resized
            .permute([0, 2, 3, 1])
            .reshape([1, g * g, d])
            .to_kind(kind);
        (class, patches)
    }

    /// All tokens after the final norm, `[N, 1 + R + g², D]`, for normalised
    /// `[N, 3, H, W]` input.
    pub fn tokens(&self, xs: &Tensor) -> Tensor {
        let c = &self.config;
        let x = xs.apply(&self.patch); // [N, D, g, g]
        let (n, _, g, _) = x.size4().expect("patch embedding is [N, D, g, g]");
        let patches = x.flatten(2, 3).transpose(1, 2); // [N, g², D]
        let (class_pos, patch_pos) = self.position_embeddings(g);
        let cls = self.cls_token.expand([n, 1, c.embed_dim], false);
        let cls = match class_pos {
            Some(p) => cls + p,
            None => cls,
        };
        let mut parts = vec![cls];
        if let Some(r) = &self.register_tokens {
            parts.push(r.expand([n, c.registers, c.embed_dim], false));
        }
        parts.push(patches + patch_pos);
        let x = Tensor::cat(&parts, 1);
        let x = self.blocks.iter().fold(x, |x, b| b.forward(&x, c));
        self.norm.forward(&x, c.layer_norm_eps)
    }

    /// What the MIL head sees, `[N, D′, 1, 1]` ([`VitFeatures`]).
    pub fn feature_map(&self, xs: &Tensor) -> Tensor {
        let x = self.tokens(xs);
        let cls = x.select(1, 0);
        let features = match self.config.features {
            VitFeatures::Cls => cls,
            VitFeatures::ClsMean => {
                let first = 1 + self.config.registers;
                let t = x.size()[1];
                let mean =
                    x.narrow(1, first, t - first)
                        .mean_dim([1i64].as_slice(), false, x.kind());
                Tensor::cat(&[cls, mean], 1)
            }
        };
        features.unsqueeze(-1).unsqueeze(-1)
    }
}

impl Module for Vit {
    /// The features as vectors, `[N, D′]`.
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.feature_map(xs).flatten(1, -1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(features: VitFeatures, ffn: Ffn, registers: i64, class_pos: bool) -> VitConfig {
        VitConfig {
            depth: 2,
            mlp_hidden: 64,
            ffn,
            registers,
            class_pos,
            pos_grid: 4,
            features,
            ..VitConfig::preset(EncoderArch::VitS14).unwrap()
        }
    }

    /// `parameter_shapes` is what `Vit::new` builds, for every variant.
    #[test]
    fn parameter_shapes_match_the_built_model() {
        for c in [
            small(VitFeatures::Cls, Ffn::Mlp, 0, true),
            small(VitFeatures::ClsMean, Ffn::Swiglu, 4, false),
        ] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let _ = Vit::new(&vs.root(), c.clone());
            let mut built: Vec<(String, Vec<i64>)> = vs
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.size()))
                .collect();
            let mut shapes = c.parameter_shapes();
            built.sort();
            shapes.sort();
            assert_eq!(shapes, built);
        }
    }

    /// Feature shapes follow the configuration; other input sizes resize the
    /// position embeddings in both modes; the batch does not mix cells.
    #[test]
    fn features_have_the_configured_shape_at_any_size() {
        tch::manual_seed(0);
        for (features, dim) in [(VitFeatures::Cls, 384), (VitFeatures::ClsMean, 768)] {
            for resize in [PosResize::Dinov2, PosResize::Timm] {
                let c = VitConfig {
                    pos_resize: resize,
                    ..small(features, Ffn::Mlp, 2, true)
                };
                let vs = nn::VarStore::new(tch::Device::Cpu);
                let vit = Vit::new(&vs.root(), c);
                for side in [56, 70, 42] {
                    // 4, 5 and 3 patches a side: the 4x4 grid, and resized both ways.
                    let x = Tensor::randn([3, 3, side, side], (Kind::Float, tch::Device::Cpu));
                    let f = tch::no_grad(|| vit.feature_map(&x));
                    assert_eq!(f.size(), [3, dim, 1, 1]);
                    let one = tch::no_grad(|| vit.feature_map(&x.narrow(0, 1, 1)));
                    let diff = f64::try_from((f.get(1) - one.get(0)).abs().max()).unwrap();
                    assert!(diff < 1e-5, "batching changed a cell by {diff}");
                }
            }
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = VitConfig::preset(EncoderArch::VitS14).unwrap();
        c.num_heads = 5;
        let e = c
            .validate(EncoderArch::VitS14, 224)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vit.num_heads"), "{e}");
        let c = VitConfig::preset(EncoderArch::VitB14).unwrap();
        let e = c
            .validate(EncoderArch::VitS14, 224)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vit.embed_dim"), "{e}");
        let c = VitConfig::preset(EncoderArch::VitS14).unwrap();
        assert!(c.validate(EncoderArch::VitS14, 10).is_err());
        assert!(c.validate(EncoderArch::ResNet18, 224).is_err());
        assert_eq!(c.feature_dim(), 384);
    }
}
