//! The optimisers of self-supervised pre-training, as explicit update rules on
//! tensors (tch has neither LARC nor parameter groups with their own weight
//! decay, and cannot save optimiser state).
//!
//! - [`Sgd`] — SGD with momentum (PyTorch's `torch.optim.SGD`, dampening 0, no
//!   Nesterov), optionally wrapped in **LARC** (You, Gitman, Ginsburg 2017,
//!   *Large Batch Training of Convolutional Networks*; NVIDIA apex's
//!   `apex.parallel.LARC`, which SwAV wraps around SGD and SimCLR's LARS
//!   resembles). For a parameter `w` with gradient `g`, global rate `η` and weight
//!   decay `λ`, LARC's local rate is
//!   `η_l = trust · ‖w‖ / (‖g‖ + λ‖w‖ + ε)`; in *clip* mode the step uses
//!   `min(η_l / η, 1)` of the global rate, otherwise `η_l` multiplies it (both as
//!   apex: `g ← (g + λw) · factor`, then the momentum SGD step with rate `η`).
//!   A parameter or gradient of norm 0 keeps factor 1.
//! - [`AdamW`] — Adam with decoupled weight decay (Loshchilov & Hutter 2019;
//!   PyTorch's `torch.optim.AdamW`: `w ← w(1 − ηλ)` then the bias-corrected Adam
//!   step), with DINO's two parameter groups.
//!
//! **Parameter groups.** As DINO's `get_params_groups` (and SimCLR's LARS
//! `exclude_from_weight_decay` / `exclude_from_layer_adaptation`), biases and
//! every 1-D parameter (batch-norm weights) are *not regularised*: no weight
//! decay and, for LARC, no layer adaptation. **Deviation:** SwAV's reference
//! applies apex LARC (with `clip=False`) and weight decay to all parameters; set
//! `exclude_bias_and_norm = false` and `clip = false` for that behaviour.
//!
//! Rates and decays are arguments of every [`Sgd::step`] / [`AdamW::step`], so
//! the training loop evaluates the [`crate::ssl::schedule`] functions per step.
//! A parameter whose gradient is undefined (frozen this step: SwAV's prototypes,
//! DINO's last layer) is skipped entirely, its state untouched, as PyTorch does
//! for `p.grad is None`. State lives in named tensors ([`Sgd::state`],
//! [`AdamW::state`]) that the training loop saves and restores.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// A trainable tensor with the name its state is kept under.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    /// Receives weight decay (and LARC adaptation); false for biases and 1-D tensors.
    pub regularized: bool,
}

impl Param {
    /// A parameter regularised unless it is a bias or 1-D (DINO's rule).
    pub fn new(name: impl Into<String>, tensor: Tensor) -> Self {
        let name = name.into();
        let regularized = !(name.ends_with(".bias") || tensor.dim() <= 1);
        Param {
            name,
            tensor,
            regularized,
        }
    }
}

/// Settings of [`Sgd`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    pub momentum: f64,
    /// LARC's trust coefficient (SwAV, SimCLR: 0.001); `null` for plain SGD.
    pub larc_trust: Option<f64>,
    /// apex LARC's `clip`: cap the local rate at the global one.
    pub larc_clip: bool,
    /// Biases and 1-D parameters get neither weight decay nor LARC adaptation.
    pub exclude_bias_and_norm: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            larc_trust: Some(0.001),
            larc_clip: true,
            exclude_bias_and_norm: true,
        }
    }
}

impl SgdConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::invalid(
                "sgd.momentum",
                format!("{} is not in [0, 1)", self.momentum),
            ));
        }
        if let Some(t) = self.larc_trust {
            if !(t.is_finite() && t > 0.0) {
                return Err(Error::invalid(
                    "sgd.larc_trust",
                    format!("{t} must be > 0 (or null for plain SGD)"),
                ));
            }
        }
        Ok(())
    }
}

/// apex LARC's ε in the denominator of the local rate.
const LARC_EPS: f64 = 1e-8;

/// SGD with momentum, optionally with LARC.
#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    params: Vec<Param>,
    /// Momentum buffers by parameter name (created on a parameter's first step).
    momentum: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(params: Vec<Param>, config: SgdConfig) -> Result<Self> {
        config.validate()?;
        check_unique(&params)?;
        let params = apply_exclusion(params, config.exclude_bias_and_norm);
        Ok(Sgd {
            config,
            params,
            momentum: BTreeMap::new(),
        })
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// One update with global rate `lr` and weight decay `weight_decay`.
    pub fn step(&mut self, lr: f64, weight_decay: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for p in &self.params {
            let grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            let wd = if p.regularized { weight_decay } else { 0.0 };
            let mut d = if wd != 0.0 {
                grad.f_add(&(&p.tensor * wd))?
            } else {
                grad.detach().copy()
            };
            if let (Some(trust), true) = (self.config.larc_trust, p.regularized) {
                let w_norm = p.tensor.f_norm()?;
                let g_norm = grad.f_norm()?;
                let local = (&w_norm * trust) / (&g_norm + &w_norm * wd + LARC_EPS);
                let local = if self.config.larc_clip {
                    (local / lr).clamp_max(1.0)
                } else {
                    local
                };
                // apex leaves the gradient alone when either norm is zero.
                let usable = w_norm.gt(0.0).logical_and(&g_norm.gt(0.0));
                let factor = local.where_self(&usable, &local.ones_like());
                d *= factor;
            }
            let buf = match self.momentum.get_mut(&p.name) {
                Some(buf) => {
                    let _ = buf.f_mul_scalar_(self.config.momentum)?.f_add_(&d)?;
                    buf.shallow_clone()
                }
                None => {
                    self.momentum.insert(p.name.clone(), d.shallow_clone());
                    d
                }
            };
            let _ = p.tensor.shallow_clone().f_sub_(&(buf * lr))?;
        }
        Ok(())
    }

    /// Sets every parameter's gradient to zero.
    pub fn zero_grad(&mut self) {
        zero_grad(&self.params);
    }

    /// Momentum buffers as `momentum.<param>` tensors.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.momentum
            .iter()
            .map(|(k, v)| (format!("momentum.{k}"), v.shallow_clone()))
            .collect()
    }

    /// Restores buffers written by [`Sgd::state`]; unknown names or shapes are errors.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        self.momentum.clear();
        for (key, t) in state {
            let Some(name) = key.strip_prefix("momentum.") else {
                return Err(Error::Mismatch(format!(
                    "SGD state has an unknown tensor `{key}`"
                )));
            };
            let p = find_param(&self.params, name, key)?;
            self.momentum.insert(name.to_owned(), restore(t, p, key)?);
        }
        Ok(())
    }
}

/// Settings of [`AdamW`] (PyTorch's defaults, which DINO keeps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [("adamw.beta1", self.beta1), ("adamw.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::invalid(arg, format!("{v} is not in [0, 1)")));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::invalid("adamw.eps", "must be > 0"));
        }
        Ok(())
    }
}

/// Adam moments of one parameter and its own step count (PyTorch's `state['step']`).
#[derive(Debug)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: i64,
}

/// AdamW with decoupled weight decay on the regularised parameters only.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    moments: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(params: Vec<Param>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        check_unique(&params)?;
        Ok(AdamW {
            config,
            params,
            moments: BTreeMap::new(),
        })
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// One update with rate `lr`; `weight_decay` applies to regularised parameters.
    pub fn step(&mut self, lr: f64, weight_decay: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let AdamWConfig { beta1, beta2, eps } = self.config;
        for p in &self.params {
            let grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            let mut w = p.tensor.shallow_clone();
            if p.regularized && weight_decay != 0.0 {
                let _ = w.f_mul_scalar_(1.0 - lr * weight_decay)?;
            }
            let m = self
                .moments
                .entry(p.name.clone())
                .or_insert_with(|| Moments {
                    exp_avg: grad.zeros_like(),
                    exp_avg_sq: grad.zeros_like(),
                    step: 0,
                });
            m.step += 1;
            let _ = m
                .exp_avg
                .f_mul_scalar_(beta1)?
                .f_add_(&(&grad * (1.0 - beta1)))?;
            let _ = m
                .exp_avg_sq
                .f_mul_scalar_(beta2)?
                .f_add_(&(&grad * &grad * (1.0 - beta2)))?;
            let bias1 = 1.0 - beta1.powi(m.step as i32);
            let bias2 = 1.0 - beta2.powi(m.step as i32);
            let denom = m.exp_avg_sq.sqrt() / bias2.sqrt() + eps;
            let _ = w.f_sub_(&(&m.exp_avg / denom * (lr / bias1)))?;
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        zero_grad(&self.params);
    }

    /// `exp_avg.<param>`, `exp_avg_sq.<param>` and `step.<param>` (i64 scalar) tensors.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(3 * self.moments.len());
        for (k, m) in &self.moments {
            out.push((format!("exp_avg.{k}"), m.exp_avg.shallow_clone()));
            out.push((format!("exp_avg_sq.{k}"), m.exp_avg_sq.shallow_clone()));
            out.push((format!("step.{k}"), Tensor::from(m.step)));
        }
        out
    }

    /// Restores moments written by [`AdamW::state`].
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        self.moments.clear();
        for (key, t) in state {
            let Some(name) = key.strip_prefix("step.") else {
                continue;
            };
            let p = find_param(&self.params, name, key)?;
            let get = |prefix: &str| -> Result<Tensor> {
                let k = format!("{prefix}.{name}");
                let t = state.get(&k).ok_or_else(|| {
                    Error::Mismatch(format!("AdamW state lacks `{k}` beside `{key}`"))
                })?;
                restore(t, p, &k)
            };
            let moments = Moments {
                exp_avg: get("exp_avg")?,
                exp_avg_sq: get("exp_avg_sq")?,
                step: t.f_int64_value(&[])?,
            };
            self.moments.insert(name.to_owned(), moments);
        }
        if let Some(key) = state.keys().find(|k| {
            !["exp_avg.", "exp_avg_sq.", "step."].iter().any(|p| {
                k.strip_prefix(p)
                    .is_some_and(|n| self.moments.contains_key(n))
            })
        }) {
            return Err(Error::Mismatch(format!(
                "AdamW state has an unexpected tensor `{key}`"
            )));
        }
        Ok(())
    }
}

/// Marks biases and 1-D parameters as regularised too when exclusion is off.
fn apply_exclusion(params: Vec<Param>, exclude: bool) -> Vec<Param> {
    params
        .into_iter()
        .map(|mut p| {
            p.regularized |= !exclude;
            p
        })
        .collect()
}

fn check_unique(params: &[Param]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for p in params {
        if !seen.insert(p.name.as_str()) {
            return Err(Error::invalid(
                "params",
                format!("parameter `{}` is listed twice", p.name),
            ));
        }
    }
    Ok(())
}

fn zero_grad(params: &[Param]) {
    for p in params {
        let mut g = p.tensor.grad();
        if g.defined() {
            let _ = g.detach_();
            let _ = g.zero_();
        }
    }
}

fn find_param<'a>(params: &'a [Param], name: &str, key: &str) -> Result<&'a Param> {
    params.iter().find(|p| p.name == name).ok_or_else(|| {
        Error::Mismatch(format!(
            "optimiser state `{key}` names no parameter of this model"
        ))
    })
}

/// A saved state tensor on the parameter's device, checked against its shape.
fn restore(t: &Tensor, p: &Param, key: &str) -> Result<Tensor> {
    if t.size() != p.tensor.size() {
        return Err(Error::Mismatch(format!(
            "optimiser state `{key}` has shape {:?}, parameter `{}` {:?}",
            t.size(),
            p.name,
            p.tensor.size()
        )));
    }
    Ok(t.to_kind(Kind::Float).to_device(p.tensor.device()).copy())
}

/// Dynamic loss scaling for fp16 mixed precision, as PyTorch's
/// `torch.amp.GradScaler` with its defaults: the loss is multiplied by `scale`
/// (2¹⁶ at first) before the backward pass; the gradients are divided by it
/// before clipping and the optimiser step; a step whose gradients hold an inf
/// or NaN is skipped and halves the scale, and 2000 finite steps in a row
/// double it.
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    scale: f64,
    /// Finite steps since the scale last changed.
    good_steps: i64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl GradScaler {
    pub const GROWTH_FACTOR: f64 = 2.0;
    pub const BACKOFF_FACTOR: f64 = 0.5;
    pub const GROWTH_INTERVAL: i64 = 2000;

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `loss · scale`.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        Ok(loss.f_mul_scalar(self.scale)?)
    }

    /// Divides every defined gradient of `params` by the scale in place and
    /// tells whether all of them are finite (if not, the gradients are
    /// meaningless and the step must be skipped).
    pub fn unscale(&self, params: &[Param]) -> Result<bool> {
        let mut found_inf: Option<Tensor> = None;
        for p in params {
            let mut g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let found =
                found_inf.get_or_insert_with(|| Tensor::zeros([1], (Kind::Float, g.device())));
            let inv = Tensor::full([1], 1.0 / self.scale, (Kind::Float, g.device()));
            g.f_internal_amp_non_finite_check_and_unscale(found, &inv)?;
        }
        Ok(match found_inf {
            Some(f) => f.f_double_value(&[0])? == 0.0,
            None => true,
        })
    }

    /// After a step: back off on non-finite gradients, grow after
    /// [`Self::GROWTH_INTERVAL`] finite steps.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale *= Self::GROWTH_FACTOR;
                self.good_steps = 0;
            }
        } else {
            self.scale *= Self::BACKOFF_FACTOR;
            self.good_steps = 0;
        }
    }

    /// `grad_scaler.scale` (f64) and `grad_scaler.good_steps` (i64) scalars.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("grad_scaler.scale".into(), Tensor::from(self.scale)),
            (
                "grad_scaler.good_steps".into(),
                Tensor::from(self.good_steps),
            ),
        ]
    }

    /// Restores [`GradScaler::state`] (a state without it: the initial scaler).
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        *self = GradScaler::default();
        if let Some(t) = state.get("grad_scaler.scale") {
            self.scale = t.f_double_value(&[])?;
        }
        if let Some(t) = state.get("grad_scaler.good_steps") {
            self.good_steps = t.f_int64_value(&[])?;
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::Mismatch(format!(
                "grad_scaler.scale {} is not a positive number",
                self.scale
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(values: &[f32]) -> Tensor {
        Tensor::from_slice(values)
            .view([1, values.len() as i64])
            .set_requires_grad(true)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.flatten(0, -1).to_kind(Kind::Double)).unwrap()
    }

    #[test]
    fn larc_clip_hand_values() {
        // w = (3, 4), ‖w‖ = 5; loss = 10·Σw → g = (10, 10), ‖g‖ = 14.142…
        let w = leaf(&[3.0, 4.0]);
        let mut sgd = Sgd::new(
            vec![Param::new("w", w.shallow_clone())],
            SgdConfig::default(),
        )
        .unwrap();
        (&w * 10.0).sum(Kind::Float).backward();
        let (lr, wd) = (0.5, 0.1);
        sgd.step(lr, wd).unwrap();
        let local = 0.001 * 5.0 / (200f64.sqrt() + 0.1 * 5.0 + 1e-8);
        let factor = (local / lr).min(1.0);
        let want = [
            3.0 - lr * factor * (10.0 + 0.3),
            4.0 - lr * factor * (10.0 + 0.4),
        ];
        for (g, w) in values(&w).iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} != {w}");
        }
        // A second step adds momentum: buf = 0.9 buf + d.
        sgd.zero_grad();
        (&w * 10.0).sum(Kind::Float).backward();
        let before = values(&w);
        sgd.step(lr, 0.0).unwrap();
        let after = values(&w);
        let local2 = 0.001 * (before[0].hypot(before[1])) / 200f64.sqrt();
        let f2 = (local2 / lr).min(1.0);
        let d_prev = [factor * 10.3, factor * 10.4];
        for i in 0..2 {
            let want = before[i] - lr * (0.9 * d_prev[i] + f2 * 10.0);
            assert!((after[i] - want).abs() < 1e-6, "{} != {want}", after[i]);
        }
        assert_eq!(sgd.state().len(), 1);
    }

    #[test]
    fn bias_and_norm_are_excluded_and_frozen_are_skipped() {
        let b = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let frozen = leaf(&[1.0]);
        let mut sgd = Sgd::new(
            vec![
                Param::new("fc.bias", b.shallow_clone()),
                Param::new("f", frozen.shallow_clone()),
            ],
            SgdConfig::default(),
        )
        .unwrap();
        assert!(!sgd.params()[0].regularized);
        (&b * 2.0).sum(Kind::Float).backward();
        sgd.step(0.1, 0.5).unwrap();
        // Plain SGD on the bias: no decay, no adaptation.
        assert_eq!(
            values(&b),
            [1.0 - 0.2, 2.0 - 0.2].map(|v: f64| v as f32 as f64)
        );
        assert_eq!(values(&frozen), [1.0]);
        assert_eq!(sgd.state().len(), 1);
    }

    #[test]
    fn adamw_matches_pytorch_formula_and_resumes() {
        let run = |split: bool| {
            let w = leaf(&[0.5, -1.0, 2.0]);
            let b = Tensor::from_slice(&[0.1f32]).set_requires_grad(true);
            let params = || {
                vec![
                    Param::new("w", w.shallow_clone()),
                    Param::new("b", b.shallow_clone()),
                ]
            };
            let mut opt = AdamW::new(params(), AdamWConfig::default()).unwrap();
            for step in 0..4 {
                if split && step == 2 {
                    let state: BTreeMap<String, Tensor> = opt
                        .state()
                        .into_iter()
                        .map(|(k, v)| (k, v.copy()))
                        .collect();
                    opt = AdamW::new(params(), AdamWConfig::default()).unwrap();
                    opt.load_state(&state).unwrap();
                }
                opt.zero_grad();
                ((&w * &w).sum(Kind::Float) + &b * 3.0)
                    .sum(Kind::Float)
                    .backward();
                opt.step(0.01, 0.1).unwrap();
            }
            (values(&w), values(&b))
        };
        let (w, b) = run(false);
        assert_eq!((w.clone(), b.clone()), run(true));
        // Bias: constant gradient 3 → every bias-corrected step is lr·3/(3 + ε): 4 × 0.01.
        assert!((b[0] - (0.1 - 0.04)).abs() < 1e-6, "{b:?}");
        // Weight of the first step by hand: decay then Adam's ±lr.
        let w0 = leaf(&[0.5]);
        let mut opt = AdamW::new(
            vec![Param::new("w", w0.shallow_clone())],
            AdamWConfig::default(),
        )
        .unwrap();
        (&w0 * &w0).sum(Kind::Float).backward();
        opt.step(0.01, 0.1).unwrap();
        let want = 0.5 * (1.0 - 0.001) - 0.01;
        assert!((values(&w0)[0] - want).abs() < 1e-6);
    }

    #[test]
    fn grad_scaler_unscales_skips_and_adapts() {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let params = vec![Param::new("w", w.shallow_clone())];
        let mut scaler = GradScaler::default();
        let loss = (&w * &w).sum(Kind::Float);
        scaler.scale_loss(&loss).unwrap().backward();
        assert!(scaler.unscale(&params).unwrap());
        let g = Vec::<f32>::try_from(w.grad()).unwrap();
        assert_eq!(g, vec![2.0, 4.0]);
        scaler.update(true);
        assert_eq!(scaler.scale(), 65536.0);
        // An overflowing gradient: found, scale halves, growth counter resets.
        let _ = w.grad().fill_(f64::INFINITY);
        assert!(!scaler.unscale(&params).unwrap());
        scaler.update(false);
        assert_eq!(scaler.scale(), 32768.0);
        for _ in 0..GradScaler::GROWTH_INTERVAL {
            scaler.update(true);
        }
        assert_eq!(scaler.scale(), 65536.0);
        let mut restored = GradScaler::default();
        scaler.update(true);
        let state: BTreeMap<String, Tensor> = scaler.state().into_iter().collect();
        restored.load_state(&state).unwrap();
        assert_eq!(restored, scaler);
    }
}
