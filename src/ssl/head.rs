//! What the three self-supervised heads share: the projection MLP built as
//! PyTorch's `nn.Sequential` ([`Mlp`]: SimCLR's `head`, SwAV's `head`, DINO's
//! `mlp`), PyTorch's default initialisations, the width and temperature checks
//! of their configurations, and L2 normalisation.
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::error::{Error, Result};

/// The non-linearity between an [`Mlp`]'s layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Relu,
    /// The exact (erf) GELU, as `nn.GELU()`.
    Gelu,
}

/// Linear layers of the given widths, each but the last followed by an
/// optional `BatchNorm1d` and an activation, with `nn.Sequential`'s parameter
/// names: `0` the first linear layer, then `1` its batch norm if any, the
/// activation's index (no parameters), the next linear layer, and so on
/// (`[in, h, out]` with batch norm: `0`, `1`, `3`; without: `0`, `2`).
#[derive(Debug)]
pub(crate) struct Mlp {
    linears: Vec<nn::Linear>,
    batch_norms: Option<Vec<nn::BatchNorm>>,
    activation: Activation,
}

impl Mlp {
    /// `widths` are `[in, hidden…, out]` (at least two); `init(fan_in)` gives
    /// each linear layer's initialisation. Linear layers are created in order,
    /// so a seeded run draws their weights as the `nn.Sequential` would.
    pub(crate) fn new(
        p: &nn::Path,
        widths: &[i64],
        batch_norm: bool,
        activation: Activation,
        init: impl Fn(i64) -> nn::LinearConfig,
    ) -> Mlp {
        let mut linears = Vec::with_capacity(widths.len() - 1);
        let mut batch_norms = Vec::new();
        let mut index = 0;
        for (i, w) in widths.windows(2).enumerate() {
            linears.push(nn::linear(p / index.to_string(), w[0], w[1], init(w[0])));
            index += 1;
            if i + 2 < widths.len() {
                if batch_norm {
                    batch_norms.push(nn::batch_norm1d(
                        p / index.to_string(),
                        w[1],
                        torch_batch_norm(),
                    ));
                    index += 1;
                }
                index += 1; // the activation
            }
        }
        Mlp {
            linears,
            batch_norms: batch_norm.then_some(batch_norms),
            activation,
        }
    }
}

impl ModuleT for Mlp {
    /// `train`: batch norm, if any, on batch statistics.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let last = self.linears.len() - 1;
        let mut x = xs.shallow_clone();
        for (i, linear) in self.linears.iter().enumerate() {
            x = x.apply(linear);
            if i < last {
                if let Some(bn) = &self.batch_norms {
                    // torch_batch_norm's momentum: PyTorch's 0.1.
                    x = crate::model::encoder::norm(&x, &bn[i], 0.1, train);
                }
                x = match self.activation {
                    Activation::Relu => x.relu(),
                    Activation::Gelu => x.gelu("none"),
                };
            }
        }
        x
    }
}

/// `nn.Linear`'s default initialisation, `U(±1/√fan_in)` for weight and bias
/// (tch's default is Kaiming with the ReLU gain instead).
pub(crate) fn torch_linear_init(fan_in: i64) -> nn::LinearConfig {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::LinearConfig {
        ws_init: init,
        bs_init: Some(init),
        bias: true,
    }
}

/// PyTorch's batch-norm initialisation (weight 1, bias 0; tch's default draws
/// the weight from U(0, 1), which [`crate::ssl::train::init_seeded`] would keep).
pub(crate) fn torch_batch_norm() -> nn::BatchNormConfig {
    nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    }
}

/// Every named width is at least 1; the error names the first that is not.
pub(crate) fn check_widths(widths: &[(&str, i64)]) -> Result<()> {
    match widths.iter().find(|(_, v)| *v < 1) {
        Some((arg, v)) => Err(Error::invalid(*arg, format!("{v} is not a width"))),
        None => Ok(()),
    }
}

pub(crate) fn check_temperature(arg: &str, t: f64) -> Result<()> {
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::invalid(arg, format!("temperature {t} must be > 0")));
    }
    Ok(())
}

/// `x / max(‖x‖₂, 1e-12)` along the last dimension (`F.normalize`).
pub(crate) fn l2_normalize(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}
