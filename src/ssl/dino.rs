//! DINO (Caron et al. 2021, *Emerging Properties in Self-Supervised Vision
//! Transformers*): projection head with a weight-normalised last layer, the
//! self-distillation loss with centring and temperatures, the teacher's EMA
//! update and DINO's gradient helpers.
//!
//! With teacher outputs `t` of the global crops, student outputs `s` of all
//! crops and a centre `c`, the loss (Algorithm 1, Eq. 2–3) is the mean over pairs
//! (teacher crop `i`, student crop `j`, `i ≠ j`) of
//!
//! ```text
//! H(i, j) = mean_b − Σ_k softmax((t_i − c)/τ_t)_bk · log_softmax(s_j/τ_s)_bk
//! ```
//!
//! after which the centre moves towards the teacher's batch mean,
//! `c ← m c + (1 − m) mean_b t` (`m` = 0.9). τ_t rises linearly from 0.04 to
//! 0.07 over the warm-up epochs; τ_s = 0.1. The teacher's parameters follow the
//! student's by EMA, `θ_t ← λ θ_t + (1 − λ) θ_s`, with λ on a cosine from 0.996
//! to 1 ([`crate::ssl::schedule::teacher_momentum`]).
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderArch};
use crate::ssl::augment::{MultiCropConfig, CELL_SIZE};
use crate::ssl::head::{check_temperature, check_widths, l2_normalize, Activation, Mlp};
use crate::ssl::method::{
    check_in_dim, embed_views, in_section, BuildContext, Learner, Method, RunSettings, StepAt,
    StepLoss, Student,
};
use crate::ssl::schedule;
use crate::ssl::seed::init_seeded;

/// Settings of DINO pre-training that the model, loss and helpers need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoConfig {
    pub in_dim: i64,
    pub hidden_dim: i64,
    pub bottleneck_dim: i64,
    /// K, the output width of the weight-normalised last layer.
    pub out_dim: i64,
    /// Keep the last layer's weight norm `g` fixed at 1 (DINO's `norm_last_layer`).
    pub norm_last_layer: bool,
    /// Batch norm after the two hidden linear layers (DINO's `use_bn_in_head`).
    #[serde(default)]
    pub use_bn_in_head: bool,
    pub student_temperature: f64,
    pub warmup_teacher_temperature: f64,
    pub teacher_temperature: f64,
    pub warmup_teacher_temperature_epochs: u64,
    pub center_momentum: f64,
    /// λ at step 0 of the cosine EMA schedule (to 1).
    pub teacher_momentum: f64,
    /// Epochs during which the last layer receives no gradient.
    pub freeze_last_layer_epochs: u64,
    /// Per-parameter gradient-norm limit (0 for none).
    pub clip_grad: f64,
    pub crops: MultiCropConfig,
}

impl Default for DinoConfig {
    /// DINO's reference setting (DESIGN.md §2): head 512→2048→2048→256, K = 65536,
    /// τ_s 0.1, τ_t 0.04→0.07 over 30 epochs, centre momentum 0.9, EMA 0.996,
    /// last layer frozen for 1 epoch, clip 3.0, 2 + 8 crops of 144 / 62 px.
    fn default() -> Self {
        DinoConfig {
            in_dim: EncoderArch::ResNet18.feature_dim(),
            hidden_dim: 2048,
            bottleneck_dim: 256,
            out_dim: 65536,
            norm_last_layer: true,
            use_bn_in_head: false,
            student_temperature: 0.1,
            warmup_teacher_temperature: 0.04,
            teacher_temperature: 0.07,
            warmup_teacher_temperature_epochs: 30,
            center_momentum: 0.9,
            teacher_momentum: 0.996,
            freeze_last_layer_epochs: 1,
            clip_grad: 3.0,
            crops: MultiCropConfig::dino(CELL_SIZE),
        }
    }
}

impl DinoConfig {
    pub fn validate(&self) -> Result<()> {
        check_widths(&[
            ("in_dim", self.in_dim),
            ("hidden_dim", self.hidden_dim),
            ("bottleneck_dim", self.bottleneck_dim),
            ("out_dim", self.out_dim),
        ])?;
        check_temperature("student_temperature", self.student_temperature)?;
        check_temperature(
            "warmup_teacher_temperature",
            self.warmup_teacher_temperature,
        )?;
        check_temperature("teacher_temperature", self.teacher_temperature)?;
        check_momentum("center_momentum", self.center_momentum)?;
        check_momentum("teacher_momentum", self.teacher_momentum)?;
        if !(self.clip_grad.is_finite() && self.clip_grad >= 0.0) {
            return Err(Error::invalid("clip_grad", "must be ≥ 0"));
        }
        self.crops.validate()
    }
}

fn check_momentum(arg: &str, m: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&m) {
        return Err(Error::invalid(
            arg,
            format!("momentum {m} is not in [0, 1]"),
        ));
    }
    Ok(())
}

/// DINO's head: `mlp` (Linear → GELU → Linear → GELU → Linear to the
/// bottleneck, with batch norm before each GELU when `use_bn_in_head`), L2
/// normalisation, then `last_layer` with weight `W = g · V/‖V‖` (row-wise,
/// `weight_g` `[K, 1]`, `weight_v` `[K, D]`, no bias).
#[derive(Debug)]
pub struct DinoHead {
    mlp: Mlp,
    weight_g: Tensor,
    weight_v: Tensor,
    norm_last_layer: bool,
}

impl DinoHead {
    /// Parameters `mlp.0`, `mlp.2`, `mlp.4` (with batch norm: `mlp.0`, `mlp.1`
    /// BN, `mlp.3`, `mlp.4` BN, `mlp.6`, as DINO's `nn.Sequential`),
    /// `last_layer.weight_g`, `last_layer.weight_v` under `p`. The MLP is initialised as DINO's
    /// `trunc_normal_(std=0.02)` (whose ±2 cut-off is absolute, so a plain normal),
    /// biases 0; `V` as PyTorch's `nn.Linear`, `g` = 1.
    pub fn new(p: &nn::Path, config: &DinoConfig) -> Result<Self> {
        config.validate()?;
        let cfg = nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let c = config;
        let mlp = Mlp::new(
            &(p / "mlp"),
            &[c.in_dim, c.hidden_dim, c.hidden_dim, c.bottleneck_dim],
            c.use_bn_in_head,
            Activation::Gelu,
            |_| cfg,
        );
        let last = p / "last_layer";
        let bound = 1.0 / (c.bottleneck_dim as f64).sqrt();
        let weight_v = last.var(
            "weight_v",
            &[c.out_dim, c.bottleneck_dim],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let weight_g = if c.norm_last_layer {
            last.ones_no_train("weight_g", &[c.out_dim, 1])
        } else {
            last.var("weight_g", &[c.out_dim, 1], nn::Init::Const(1.0))
        };
        Ok(DinoHead {
            mlp,
            weight_g,
            weight_v,
            norm_last_layer: c.norm_last_layer,
        })
    }

    /// The effective last-layer weight `g · V/‖V‖` `[K, D]`.
    pub fn last_layer_weight(&self) -> Tensor {
        let norm = self
            .weight_v
            .norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
        &self.weight_g * (&self.weight_v / norm)
    }

    /// Stops gradients of the last layer while `epoch < freeze_epochs` (DINO's
    /// `cancel_gradients_last_layer`): call before the forward pass. Autograd then
    /// leaves their gradients undefined, so the optimiser skips them as DINO's
    /// `p.grad = None` does. Returns whether the layer is frozen.
    pub fn freeze_last_layer(&self, epoch: u64, freeze_epochs: u64) -> bool {
        let frozen = epoch < freeze_epochs;
        let _ = self.weight_v.set_requires_grad(!frozen);
        if !self.norm_last_layer {
            let _ = self.weight_g.set_requires_grad(!frozen);
        }
        frozen
    }
}

impl ModuleT for DinoHead {
    /// `[N, in_dim]` pooled features → `[N, K]` logits (`train`: batch norm,
    /// if any, on batch statistics).
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        l2_normalize(&self.mlp.forward_t(xs, train)).matmul(&self.last_layer_weight().tr())
    }
}

/// DINO's loss with its centre and teacher-temperature schedule.
#[derive(Debug)]
pub struct DinoLoss {
    /// `[1, K]`, starts at 0.
    center: Tensor,
    student_temperature: f64,
    warmup_teacher_temperature: f64,
    teacher_temperature: f64,
    warmup_teacher_temperature_epochs: u64,
    center_momentum: f64,
    /// The process group whose global batch the centre follows.
    group: Option<&'static crate::distributed::Group>,
}

impl DinoLoss {
    pub fn new(config: &DinoConfig, device: Device) -> Result<Self> {
        config.validate()?;
        Ok(DinoLoss {
            center: Tensor::zeros([1, config.out_dim], (Kind::Float, device)),
            student_temperature: config.student_temperature,
            warmup_teacher_temperature: config.warmup_teacher_temperature,
            teacher_temperature: config.teacher_temperature,
            warmup_teacher_temperature_epochs: config.warmup_teacher_temperature_epochs,
            center_momentum: config.center_momentum,
            group: None,
        })
    }

    /// The same loss with its centre over `group`'s global batch.
    pub fn in_group(mut self, group: Option<&'static crate::distributed::Group>) -> Self {
        self.group = group;
        self
    }

    pub fn center(&self) -> &Tensor {
        &self.center
    }

    /// Replaces the centre (resuming a run); `[1, K]`.
    pub fn set_center(&mut self, center: &Tensor) -> Result<()> {
        if center.size() != self.center.size() {
            return Err(Error::invalid(
                "center",
                format!(
                    "shape {:?}, expected {:?}",
                    center.size(),
                    self.center.size()
                ),
            ));
        }
        self.center = center
            .detach()
            .to_kind(Kind::Float)
            .to_device(self.center.device());
        Ok(())
    }

    /// τ_t of an epoch.
    pub fn teacher_temperature(&self, epoch: u64) -> f64 {
        schedule::teacher_temperature(
            epoch,
            self.warmup_teacher_temperature,
            self.teacher_temperature,
            self.warmup_teacher_temperature_epochs,
        )
    }

    fn check(&self, student: &[Tensor], teacher: &[Tensor]) -> Result<[i64; 2]> {
        if teacher.is_empty() || student.len() < 2 || teacher.len() > student.len() {
            return Err(Error::invalid(
                "student, teacher",
                format!(
                    "{} teacher and {} student crops: need ≥ 1 teacher crop, ≥ 2 student \
                     crops, the teacher's being the student's first",
                    teacher.len(),
                    student.len()
                ),
            ));
        }
        let size = student[0].size();
        let k = self.center.size()[1];
        let [b, _] = size[..] else {
            return Err(Error::invalid(
                "student",
                format!("crop 0: expected [B, K] logits, got {size:?}"),
            ));
        };
        if size[1] != k {
            return Err(Error::invalid(
                "student",
                format!("crop 0 has {} outputs, the centre {k}", size[1]),
            ));
        }
        for (name, crops) in [("student", student), ("teacher", teacher)] {
            for (v, t) in crops.iter().enumerate() {
                if t.size() != size {
                    return Err(Error::invalid(
                        name,
                        format!("crop {v} has shape {:?}, student crop 0 {size:?}", t.size()),
                    ));
                }
            }
        }
        Ok([b, k])
    }

    /// The loss of student logits (all crops, each `[B, K]`, global crops first)
    /// given the teacher logits of the global crops, without updating the centre.
    pub fn loss(&self, student: &[Tensor], teacher: &[Tensor], epoch: u64) -> Result<Tensor> {
        self.check(student, teacher)?;
        let tau_t = self.teacher_temperature(epoch);
        let targets: Vec<Tensor> = tch::no_grad(|| {
            teacher
                .iter()
                .map(|t| ((t.detach() - &self.center) / tau_t).softmax(1, t.kind()))
                .collect()
        });
        let log_probs: Vec<Tensor> = student
            .iter()
            .map(|s| (s / self.student_temperature).log_softmax(1, s.kind()))
            .collect();
        let mut total: Option<Tensor> = None;
        let mut terms = 0usize;
        for (i, q) in targets.iter().enumerate() {
            for (j, lp) in log_probs.iter().enumerate() {
                if i == j {
                    continue; // a crop does not predict itself
                }
                let h = -(q * lp)
                    .sum_dim_intlist([1i64].as_slice(), false, lp.kind())
                    .mean(lp.kind());
                total = Some(match total {
                    Some(t) => t + h,
                    None => h,
                });
                terms += 1;
            }
        }
        Ok(total.expect("≥ 2 student crops give at least one pair") / terms as f64)
    }

    /// DINO's collapse monitors (Caron et al. 2021, §5.3): the mean entropy of
    /// the teacher's centred, sharpened distributions and the mean KL divergence
    /// from them to the student's, over the loss's crop pairs. Uniform collapse
    /// shows as entropy → ln K with KL → 0; one-dimension collapse as
    /// entropy → 0.
    pub fn monitors(
        &self,
        student: &[Tensor],
        teacher: &[Tensor],
        epoch: u64,
    ) -> Result<(f64, f64)> {
        let loss = self.loss(student, teacher, epoch)?.f_double_value(&[])?;
        let tau_t = self.teacher_temperature(epoch);
        let entropy = tch::no_grad(|| -> Result<f64> {
            let mut sum = 0.0;
            for t in teacher {
                let logp = ((t.detach() - &self.center) / tau_t).log_softmax(1, Kind::Float);
                sum -= (logp.exp() * &logp)
                    .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                    .mean(Kind::Float)
                    .f_double_value(&[])?;
            }
            Ok(sum / teacher.len() as f64)
        })?;
        // Cross-entropy = entropy + KL, per pair; every teacher crop appears in
        // the same number of pairs.
        Ok((entropy, loss - entropy))
    }

    /// `c ← m c + (1 − m) · mean over all teacher rows` (no gradient).
    pub fn update_center(&mut self, teacher: &[Tensor]) -> Result<()> {
        if teacher.is_empty() {
            return Err(Error::invalid("teacher", "no teacher crops"));
        }
        let k = self.center.size()[1];
        for (v, t) in teacher.iter().enumerate() {
            let s = t.size();
            if s.len() != 2 || s[1] != k {
                return Err(Error::invalid(
                    "teacher",
                    format!("crop {v} has shape {s:?}, expected [B, {k}]"),
                ));
            }
        }
        tch::no_grad(|| -> Result<()> {
            let all = Tensor::f_cat(teacher, 0)?.detach().to_kind(Kind::Float);
            let mut rows = all.size()[0] as f64;
            let sum = all.sum_dim_intlist([0i64].as_slice(), true, Kind::Float);
            // The global batch's mean over a process group, as DINO's all-reduce.
            if let Some(g) = self.group {
                g.all_reduce_sum(&sum, "DINO's centre")?;
                rows *= g.world_size() as f64;
            }
            let batch_center = sum / rows;
            let m = self.center_momentum;
            self.center = &self.center * m + batch_center * (1.0 - m);
            Ok(())
        })
    }

    /// [`DinoLoss::loss`], then [`DinoLoss::update_center`] with the same teacher
    /// outputs, as DINO's `DINOLoss.forward`.
    pub fn forward(
        &mut self,
        student: &[Tensor],
        teacher: &[Tensor],
        epoch: u64,
    ) -> Result<Tensor> {
        let loss = self.loss(student, teacher, epoch)?;
        self.update_center(teacher)?;
        Ok(loss)
    }
}

/// Batch-norm statistics are buffers, not parameters: DINO's EMA leaves the
/// teacher's own (computed on its inputs).
fn is_buffer(name: &str) -> bool {
    ["running_mean", "running_var", "num_batches_tracked"]
        .iter()
        .any(|b| name.ends_with(b))
}

/// `θ_t ← λ θ_t + (1 − λ) θ_s` for every parameter of `student` (all
/// floating-point variables except batch-norm buffers), matched by name in
/// `teacher`. Returns the number of tensors updated.
pub fn ema_update(teacher: &nn::VarStore, student: &nn::VarStore, momentum: f64) -> Result<usize> {
    check_momentum("momentum", momentum)?;
    let t_vars = teacher.variables();
    let s_vars: BTreeMap<String, Tensor> = student.variables().into_iter().collect();
    let mut pairs_t = Vec::new();
    let mut pairs_s = Vec::new();
    for (name, s) in s_vars {
        if is_buffer(&name) || !s.is_floating_point() {
            continue;
        }
        let t = t_vars.get(&name).ok_or_else(|| {
            Error::Mismatch(format!("teacher has no parameter `{name}` of the student"))
        })?;
        if t.size() != s.size() {
            return Err(Error::Mismatch(format!(
                "parameter `{name}`: teacher {:?}, student {:?}",
                t.size(),
                s.size()
            )));
        }
        pairs_t.push(t.shallow_clone());
        pairs_s.push(s);
    }
    ema_update_tensors(&pairs_t, &pairs_s, momentum)?;
    Ok(pairs_t.len())
}

/// EMA of paired tensors in place (no gradient): `t ← λ t + (1 − λ) s`.
pub fn ema_update_tensors(teacher: &[Tensor], student: &[Tensor], momentum: f64) -> Result<()> {
    check_momentum("momentum", momentum)?;
    if teacher.len() != student.len() {
        return Err(Error::Mismatch(format!(
            "{} teacher and {} student tensors",
            teacher.len(),
            student.len()
        )));
    }
    tch::no_grad(|| -> Result<()> {
        for (i, (t, s)) in teacher.iter().zip(student).enumerate() {
            if t.size() != s.size() {
                return Err(Error::Mismatch(format!(
                    "tensor {i}: teacher {:?}, student {:?}",
                    t.size(),
                    s.size()
                )));
            }
            let mut t = t.shallow_clone();
            let _ = t.f_mul_scalar_(momentum)?;
            let _ = t.f_add_(&(s.detach() * (1.0 - momentum)))?;
        }
        Ok(())
    })
}

impl Method for DinoConfig {
    fn name(&self) -> &'static str {
        "dino"
    }

    /// DINO trains with AdamW or, as its reference does for ResNets, SGD.
    fn check(&self, run: &RunSettings) -> Result<()> {
        in_section("dino", self.validate())?;
        in_section("dino", check_in_dim(self.in_dim, run))
    }

    fn multi_crop(&self) -> Option<&MultiCropConfig> {
        Some(&self.crops)
    }

    /// The student's head, and a teacher that starts as a copy of the student
    /// (no gradient; batch norm in training mode, as in DINO's code).
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Learner>> {
        let head = DinoHead::new(&ctx.head_vs.root(), self)?;
        init_seeded(ctx.head_vs, ctx.seed)?;
        let mut encoder_vs = VarStore::new(ctx.device);
        let encoder = Encoder::new(&encoder_vs.root(), ctx.architecture);
        let mut head_vs = VarStore::new(ctx.device);
        let teacher_head = DinoHead::new(&head_vs.root(), self)?;
        copy_vars(&encoder_vs, ctx.encoder_vs)?;
        copy_vars(&head_vs, ctx.head_vs)?;
        encoder_vs.freeze();
        head_vs.freeze();
        Ok(Box::new(Dino {
            config: self.clone(),
            head,
            loss: DinoLoss::new(self, ctx.device)?.in_group(ctx.group),
            teacher: Teacher {
                encoder,
                encoder_vs,
                head: teacher_head,
                head_vs,
            },
            monitors: (f64::NAN, f64::NAN),
        }))
    }
}

/// Copies every variable of `src` into the same-named one of `dst`.
fn copy_vars(dst: &VarStore, src: &VarStore) -> Result<()> {
    let src = src.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in dst.variables() {
            let s = src
                .get(&name)
                .ok_or_else(|| Error::Mismatch(format!("no variable `{name}` to copy")))?;
            t.shallow_clone().f_copy_(s)?;
        }
        Ok(())
    })
}

struct Teacher {
    encoder: Encoder,
    encoder_vs: VarStore,
    head: DinoHead,
    head_vs: VarStore,
}

/// DINO in training: the student's head, the loss with its centre, the teacher.
struct Dino {
    config: DinoConfig,
    head: DinoHead,
    loss: DinoLoss,
    teacher: Teacher,
    /// Teacher entropy and KL of the last monitored step.
    monitors: (f64, f64),
}

impl Learner for Dino {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _cells: &Tensor,
        at: StepAt,
    ) -> Result<StepLoss> {
        let c = &self.config;
        self.head
            .freeze_last_layer(at.epoch, c.freeze_last_layer_epochs);
        let globals = c.crops.global.count;
        let teacher = &self.teacher;
        let (t_out, _) = tch::no_grad(|| {
            embed_views(&teacher.encoder, &views[..globals], true, &|x| {
                teacher.head.forward_t(x, true)
            })
        })?;
        let head = &self.head;
        let (s_out, features) = embed_views(encoder, views, true, &|x| head.forward_t(x, true))?;
        if at.monitor {
            self.monitors = self.loss.monitors(&s_out, &t_out, at.epoch)?;
        }
        Ok(StepLoss {
            loss: self.loss.forward(&s_out, &t_out, at.epoch)?,
            features,
        })
    }

    /// The teacher follows the student: EMA with momentum on a cosine to 1.
    fn after_step(&mut self, student: &Student, at: StepAt) -> Result<()> {
        let m = schedule::teacher_momentum(at.step, self.config.teacher_momentum, at.total_steps);
        ema_update(&self.teacher.encoder_vs, student.encoder, m)?;
        ema_update(&self.teacher.head_vs, student.head, m)?;
        Ok(())
    }

    fn clip_grad(&self) -> f64 {
        self.config.clip_grad
    }

    fn stores(&self) -> Vec<(&'static str, &VarStore)> {
        vec![
            ("teacher.encoder", &self.teacher.encoder_vs),
            ("teacher.head", &self.teacher.head_vs),
        ]
    }

    /// DINO evaluates, so exports, the teacher.
    fn exported(&self) -> Option<&VarStore> {
        Some(&self.teacher.encoder_vs)
    }

    fn exported_name(&self) -> &'static str {
        "teacher"
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("dino.center".into(), self.loss.center().shallow_clone())]
    }

    fn load_state(&mut self, tensors: &mut BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
        let c = tensors
            .remove("dino.center")
            .ok_or_else(|| Error::checkpoint(path, "state lacks `dino.center`"))?;
        self.loss.set_center(&c)
    }

    fn monitors(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("teacher_entropy", self.monitors.0),
            ("kl", self.monitors.1),
        ]
    }
}

/// DINO's `clip_gradients`: scales each parameter's gradient to norm at most
/// `clip` (`g ← g · clip / (‖g‖ + 1e-6)` when that factor is below 1), one
/// parameter at a time. Returns the norms before clipping (`None` for
/// parameters without gradient).
pub fn clip_gradients(parameters: &[Tensor], clip: f64) -> Result<Vec<Option<f64>>> {
    if !(clip.is_finite() && clip > 0.0) {
        return Err(Error::invalid("clip", format!("{clip} must be > 0")));
    }
    tch::no_grad(|| {
        parameters
            .iter()
            .map(|p| {
                let mut g = p.grad();
                if !g.defined() {
                    return Ok(None);
                }
                let norm = g.f_norm()?.f_double_value(&[])?;
                let coef = clip / (norm + 1e-6);
                if coef < 1.0 {
                    let _ = g.f_mul_scalar_(coef)?;
                }
                Ok(Some(norm))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DinoConfig {
        DinoConfig {
            hidden_dim: 32,
            bottleneck_dim: 8,
            out_dim: 16,
            ..Default::default()
        }
    }

    #[test]
    fn head_with_batch_norm_uses_dinos_sequential_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = DinoConfig {
            use_bn_in_head: true,
            ..small()
        };
        let head = DinoHead::new(&vs.root(), &cfg).unwrap();
        let mut names: Vec<String> = vs
            .variables()
            .into_keys()
            .filter(|n| n.starts_with("mlp."))
            .collect();
        names.sort();
        let mut want: Vec<String> = Vec::new();
        for (layer, vars) in [
            ("0", &["bias", "weight"][..]),
            ("1", &["bias", "running_mean", "running_var", "weight"]),
            ("3", &["bias", "weight"]),
            ("4", &["bias", "running_mean", "running_var", "weight"]),
            ("6", &["bias", "weight"]),
        ] {
            want.extend(vars.iter().map(|v| format!("mlp.{layer}.{v}")));
        }
        want.sort();
        assert_eq!(names, want);
        // PyTorch's initialisation, weight 1 and bias 0 (tch's default weight
        // is random, which the seeded initialisation would keep: runs differed).
        let vars = vs.variables();
        for layer in ["1", "4"] {
            let w = &vars[&format!("mlp.{layer}.weight")];
            let b = &vars[&format!("mlp.{layer}.bias")];
            assert!(w.eq(1.0).all().int64_value(&[]) == 1, "mlp.{layer}.weight");
            assert!(b.eq(0.0).all().int64_value(&[]) == 1, "mlp.{layer}.bias");
        }
        // Training mode normalises over the batch: a constant shift of the
        // input changes nothing.
        let x = Tensor::randn([6, 512], (Kind::Float, Device::Cpu));
        let a = head.forward_t(&x, true);
        let b = head.forward_t(&(&x + 3.0), true);
        assert!((a - b).abs().max().double_value(&[]) < 1e-4);
    }

    #[test]
    fn head_names_weight_norm_and_freeze() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let head = DinoHead::new(&vs.root(), &small()).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "last_layer.weight_g",
                "last_layer.weight_v",
                "mlp.0.bias",
                "mlp.0.weight",
                "mlp.2.bias",
                "mlp.2.weight",
                "mlp.4.bias",
                "mlp.4.weight"
            ]
        );
        assert_eq!(vs.trainable_variables().len(), 7); // g is fixed
        let w = head.last_layer_weight();
        let norms = w.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);

        let x = Tensor::randn([4, 512], (Kind::Float, Device::Cpu));
        assert!(head.freeze_last_layer(0, 1));
        head.forward_t(&x, true).sum(Kind::Float).backward();
        assert!(!head.weight_v.grad().defined());
        assert!(vs.variables()["mlp.0.weight"].grad().defined());
        assert!(!head.freeze_last_layer(1, 1));
        head.forward_t(&x, true).sum(Kind::Float).backward();
        assert!(head.weight_v.grad().defined());
    }

    #[test]
    fn ema_and_clip() {
        tch::manual_seed(1);
        let cfg = small();
        let student = nn::VarStore::new(Device::Cpu);
        let teacher = nn::VarStore::new(Device::Cpu);
        let _s = DinoHead::new(&student.root(), &cfg).unwrap();
        let _t = DinoHead::new(&teacher.root(), &cfg).unwrap();
        let before = teacher.variables()["mlp.0.weight"].copy();
        let s = student.variables()["mlp.0.weight"].copy();
        assert_eq!(ema_update(&teacher, &student, 0.75).unwrap(), 8);
        let want = &before * 0.75 + &s * 0.25;
        let got = &teacher.variables()["mlp.0.weight"];
        assert!((got - want).abs().max().double_value(&[]) < 1e-7);

        let p = Tensor::ones([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * 10.0).sum(Kind::Float).backward(); // grad 10 each, norm 20
        let q = Tensor::ones([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let norms = clip_gradients(&[p.shallow_clone(), q.shallow_clone()], 3.0).unwrap();
        assert!((norms[0].unwrap() - 20.0).abs() < 1e-5 && norms[1].is_none());
        let g = p.grad().norm().double_value(&[]);
        assert!((g - 3.0 * 20.0 / (20.0 + 1e-6)).abs() < 1e-5, "{g}");
    }

    #[test]
    fn loss_rejects_bad_shapes() {
        let loss = DinoLoss::new(&small(), Device::Cpu).unwrap();
        let t = Tensor::zeros([4, 16], (Kind::Float, Device::Cpu));
        let wrong = Tensor::zeros([4, 15], (Kind::Float, Device::Cpu));
        assert!(loss
            .loss(&[t.shallow_clone()], &[t.shallow_clone()], 0)
            .is_err());
        assert!(loss
            .loss(&[t.shallow_clone(), wrong], &[t.shallow_clone()], 0)
            .is_err());
        assert!(loss
            .loss(&[t.shallow_clone(), t.shallow_clone()], &[t], 0)
            .is_ok());
    }
}
