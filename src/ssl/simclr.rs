//! SimCLR (Chen et al. 2020, *A Simple Framework for Contrastive Learning of
//! Visual Representations*): a projection head on the encoder's pooled features
//! and the NT-Xent loss.
//!
//! For a batch of `N` images seen in two views, the `2N` projections are
//! L2-normalised, `s_ij = z_iᵀ z_j / τ`, and each anchor `i` is classified
//! against its partner `p(i)` (the other view of the same image) among the other
//! `2N − 2` embeddings:
//!
//! ```text
//! ℓ(i) = −log( exp(s_{i,p(i)}) / Σ_{k ≠ i} exp(s_ik) ),   L = (1/2N) Σ_i ℓ(i)
//! ```
//!
//! (Eq. 1 of the paper and its Algorithm 1).
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderArch};
use crate::ssl::augment::{MultiCropConfig, CELL_SIZE};
use crate::ssl::head::{
    check_temperature, check_widths, l2_normalize, torch_linear_init, Activation, Mlp,
};
use crate::ssl::method::{
    check_in_dim, embed_views, in_section, sgd_only, BuildContext, Learner, Method, RunSettings,
    StepAt, StepLoss,
};
use crate::ssl::seed::init_seeded;

/// Settings of SimCLR pre-training that the model and loss need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimClrConfig {
    /// Width of the encoder's pooled features (512 for ResNet18/34).
    pub in_dim: i64,
    pub hidden_dim: i64,
    pub out_dim: i64,
    /// τ of NT-Xent.
    pub temperature: f64,
    pub crops: MultiCropConfig,
}

impl Default for SimClrConfig {
    /// The paper's setting: head 512→512 (ReLU)→64, τ = 0.1, two 144 px views.
    fn default() -> Self {
        SimClrConfig {
            in_dim: EncoderArch::ResNet18.feature_dim(),
            hidden_dim: 512,
            out_dim: 64,
            temperature: 0.1,
            crops: MultiCropConfig::simclr(CELL_SIZE),
        }
    }
}

impl SimClrConfig {
    pub fn validate(&self) -> Result<()> {
        check_widths(&[
            ("in_dim", self.in_dim),
            ("hidden_dim", self.hidden_dim),
            ("out_dim", self.out_dim),
        ])?;
        check_temperature("temperature", self.temperature)?;
        self.crops.validate()
    }
}

/// SimCLR's projection head `g`: Linear → ReLU → Linear, with the parameter names
/// of `nn.Sequential` (`head.0.*`, `head.2.*`) under the given path.
#[derive(Debug)]
pub struct ProjectionHead {
    mlp: Mlp,
}

impl ProjectionHead {
    pub fn new(p: &nn::Path, config: &SimClrConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        Ok(ProjectionHead {
            mlp: Mlp::new(
                &(p / "head"),
                &[c.in_dim, c.hidden_dim, c.out_dim],
                false,
                Activation::Relu,
                torch_linear_init,
            ),
        })
    }
}

impl Module for ProjectionHead {
    /// `[N, in_dim]` pooled features → `[N, out_dim]` projections (not normalised;
    /// the loss normalises).
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.mlp.forward_t(xs, false)
    }
}

impl Method for SimClrConfig {
    fn name(&self) -> &'static str {
        "simclr"
    }

    fn check(&self, run: &RunSettings) -> Result<()> {
        in_section("simclr", self.validate())?;
        in_section("simclr", check_in_dim(self.in_dim, run))?;
        sgd_only("simclr", run)
    }

    fn multi_crop(&self) -> Option<&MultiCropConfig> {
        Some(&self.crops)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Learner>> {
        let head = ProjectionHead::new(&ctx.head_vs.root(), self)?;
        init_seeded(ctx.head_vs, ctx.seed)?;
        Ok(Box::new(SimClr {
            head,
            temperature: self.temperature,
            group: ctx.group,
        }))
    }
}

/// SimCLR in training: the projection head and τ.
struct SimClr {
    head: ProjectionHead,
    temperature: f64,
    group: Option<&'static crate::distributed::Group>,
}

impl Learner for SimClr {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _cells: &Tensor,
        _at: StepAt,
    ) -> Result<StepLoss> {
        let head = &self.head;
        let (mut z, features) = embed_views(encoder, views, true, &|x| head.forward(x))?;
        // Global negatives: every rank's projections, with their gradient (the
        // backward pass sums each rank's share); every rank then computes the
        // whole batch's loss, as one process would.
        if let Some(g) = self.group {
            for v in &mut z[..2] {
                *v = g.all_gather(v, true, "SimCLR's negatives")?;
            }
        }
        Ok(StepLoss {
            loss: nt_xent_loss(&z[0], &z[1], self.temperature)?,
            features,
        })
    }
}

/// NT-Xent loss of two views' projections `z1`, `z2` (`[N, D]` each, row `i` of
/// both from the same image) at temperature τ; a scalar tensor with gradient.
///
/// Errors when the shapes differ, are not 2-D, when `N < 2` (an anchor needs at
/// least one negative pair of another image) or τ ≤ 0.
pub fn nt_xent_loss(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    let (s1, s2) = (z1.size(), z2.size());
    if s1.len() != 2 || s1 != s2 {
        return Err(Error::invalid(
            "z1, z2",
            format!("expected two [N, D] projections of one shape, got {s1:?} and {s2:?}"),
        ));
    }
    let n = s1[0];
    if n < 2 {
        return Err(Error::invalid(
            "z1",
            format!("NT-Xent needs a batch of at least 2 images (2N − 2 negatives), got {n}"),
        ));
    }
    check_temperature("temperature", temperature)?;
    let z = l2_normalize(&Tensor::f_cat(&[z1, z2], 0)?);
    let logits = z.f_matmul(&z.tr())? / temperature;
    // An embedding is not its own negative: exp(−∞) = 0 removes it from the sum.
    let own = Tensor::eye(2 * n, (Kind::Bool, z.device()));
    let logits = logits.masked_fill(&own, f64::NEG_INFINITY);
    // The partner of anchor i is i + N in the first half and i − N in the second.
    let partner = Tensor::arange(2 * n, (Kind::Int64, z.device()))
        .f_add_scalar(n)?
        .remainder(2 * n)
        .unsqueeze(1);
    let log_prob = logits.log_softmax(1, logits.kind());
    Ok(-log_prob.gather(1, &partner, false).mean(logits.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_names_and_shapes() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = SimClrConfig::default();
        let head = ProjectionHead::new(&vs.root(), &cfg).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "head.0.bias",
                "head.0.weight",
                "head.2.bias",
                "head.2.weight"
            ]
        );
        let y = head.forward(&Tensor::ones([3, 512], (Kind::Float, tch::Device::Cpu)));
        assert_eq!(y.size(), [3, 64]);
    }

    #[test]
    fn nt_xent_perfect_pairs_and_errors() {
        // Orthogonal pairs identical across views: the loss tends to 0 as τ → 0.
        let z = Tensor::eye(4, (Kind::Float, tch::Device::Cpu));
        let l = nt_xent_loss(&z, &z, 0.01).unwrap().double_value(&[]);
        assert!(l < 1e-6, "{l}");
        // All embeddings equal: every one of the 2N − 1 candidates is as likely.
        let ones = Tensor::ones([3, 5], (Kind::Float, tch::Device::Cpu));
        let l = nt_xent_loss(&ones, &ones, 0.5).unwrap().double_value(&[]);
        assert!((l - 5f64.ln()).abs() < 1e-5, "{l}");
        let one = Tensor::ones([1, 5], (Kind::Float, tch::Device::Cpu));
        assert!(nt_xent_loss(&one, &one, 0.1).is_err());
        assert!(nt_xent_loss(&ones, &z, 0.1).is_err());
        assert!(nt_xent_loss(&ones, &ones, 0.0).is_err());
    }
}
