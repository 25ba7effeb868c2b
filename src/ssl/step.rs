//! The model of a pre-training run — the shared encoder, the head store and
//! the method's [`Learner`] — and the optimiser with its loss scaler.
//!
//! What each method adds (heads, prototypes, teacher, classifier) lives in the
//! method's own file behind [`crate::ssl::method`]'s traits; this file names
//! no method. Learning rates follow the linear scaling rule
//! (`base_learning_rate · batch / 256`) with a linear warm-up and a cosine to
//! `final_learning_rate` (absolute), per step ([`crate::ssl::schedule`]).
use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderArch, Recompute};
use crate::ssl::method::{BuildContext, Learner, Method, StepAt, StepLoss, Student};
use crate::ssl::optim::{AdamW, GradScaler, Param, Sgd};
use crate::ssl::seed::init_seeded;

pub(super) struct Model {
    encoder: Encoder,
    encoder_vs: VarStore,
    head_vs: VarStore,
    learner: Box<dyn Learner>,
}

impl Model {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        method: &dyn Method,
        architecture: EncoderArch,
        seed: u64,
        device: Device,
        num_types: usize,
        labels: &[i64],
        recompute: Option<Recompute>,
        group: Option<&'static crate::distributed::Group>,
    ) -> Result<Self> {
        let encoder_vs = VarStore::new(device);
        let mut encoder = Encoder::new(&encoder_vs.root(), architecture);
        if let Some(r) = recompute {
            encoder = encoder.with_recompute(std::sync::Arc::new(r));
        }
        init_seeded(&encoder_vs, seed)?;
        let head_vs = VarStore::new(device);
        let learner = method.build(&BuildContext {
            encoder_vs: &encoder_vs,
            head_vs: &head_vs,
            architecture,
            device,
            seed,
            labels,
            num_types,
            group,
        })?;
        Ok(Model {
            encoder,
            encoder_vs,
            head_vs,
            learner,
        })
    }

    /// The optimiser's parameters: the trainable variables (before any freezing).
    pub(super) fn params(&self) -> Vec<Param> {
        let mut out = Vec::new();
        for (prefix, vs) in [("encoder", &self.encoder_vs), ("head", &self.head_vs)] {
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, t) in vars {
                if t.requires_grad() {
                    out.push(Param::new(format!("{prefix}.{name}"), t));
                }
            }
        }
        out
    }

    /// Variable stores by state prefix.
    pub(super) fn stores(&self) -> Vec<(&'static str, &VarStore)> {
        let mut out = vec![("encoder", &self.encoder_vs), ("head", &self.head_vs)];
        out.extend(self.learner.stores());
        out
    }

    /// The encoder to export (DINO: the teacher).
    pub(super) fn export_store(&self) -> &VarStore {
        self.learner.exported().unwrap_or(&self.encoder_vs)
    }

    pub(super) fn learner(&self) -> &dyn Learner {
        self.learner.as_ref()
    }

    /// The loss of one batch (with gradient) from its normalised views
    /// ([`make_views`](crate::ssl::data::make_views)).
    pub(super) fn loss(
        &mut self,
        views: &[Tensor],
        cells: &Tensor,
        at: StepAt,
    ) -> Result<StepLoss> {
        self.encoder.clear_recomputed();
        self.learner.loss(&self.encoder, views, cells, at)
    }

    /// Completes the backward pass through a checkpointed encoder (after the
    /// loss's; a no-op without checkpointing).
    pub(super) fn backward_recomputed(&self) -> Result<()> {
        self.encoder.backward_recomputed()
    }

    /// What follows the optimiser step (DINO: the teacher's EMA).
    pub(super) fn after_step(&mut self, at: StepAt) -> Result<()> {
        let student = Student {
            encoder: &self.encoder_vs,
            head: &self.head_vs,
        };
        self.learner.after_step(&student, at)
    }

    pub(super) fn extra_state(&self) -> Vec<(String, Tensor)> {
        self.learner.state()
    }

    /// Restores every tensor of the state; leftovers and gaps are errors.
    pub(super) fn load(
        &mut self,
        tensors: &mut BTreeMap<String, Tensor>,
        path: &Path,
    ) -> Result<()> {
        for (prefix, vs) in self.stores() {
            for (name, var) in vs.variables() {
                let key = format!("{prefix}.{name}");
                let t = tensors.remove(&key).ok_or_else(|| {
                    Error::checkpoint(path, format!("state lacks tensor `{key}`"))
                })?;
                if t.size() != var.size() {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "tensor `{key}` has shape {:?}, the model {:?}",
                            t.size(),
                            var.size()
                        ),
                    ));
                }
                tch::no_grad(|| var.shallow_clone().f_copy_(&t))?;
            }
        }
        self.learner.load_state(tensors, path)
    }
}

enum Rule {
    Sgd(Sgd),
    AdamW(AdamW),
}

/// The update rule, with a loss scaler when training in fp16 mixed precision.
pub(super) struct Optimizer {
    rule: Rule,
    scaler: Option<GradScaler>,
}

impl Optimizer {
    pub(super) fn new(
        config: &crate::ssl::config::PretrainConfig,
        params: Vec<Param>,
        mixed_precision: bool,
    ) -> Result<Self> {
        let rule = match (&config.sgd, &config.adamw) {
            (Some(s), _) => Rule::Sgd(Sgd::new(params, *s)?),
            (_, Some(a)) => Rule::AdamW(AdamW::new(params, *a)?),
            _ => return Err(Error::invalid("sgd", "no optimiser configured")),
        };
        Ok(Optimizer {
            rule,
            scaler: mixed_precision.then(GradScaler::default),
        })
    }

    pub(super) fn params(&self) -> &[Param] {
        match &self.rule {
            Rule::Sgd(o) => o.params(),
            Rule::AdamW(o) => o.params(),
        }
    }

    /// Zeroes the gradients, back-propagates `loss` (scaled in mixed precision)
    /// and then `model`'s checkpointed encoder passes, and returns whether the
    /// gradients, unscaled, are finite, so that a step may follow (always true
    /// in fp32).
    pub(super) fn backward(
        &mut self,
        loss: &Tensor,
        model: &Model,
        group: Option<&crate::distributed::Group>,
    ) -> Result<bool> {
        match &mut self.rule {
            Rule::Sgd(o) => o.zero_grad(),
            Rule::AdamW(o) => o.zero_grad(),
        }
        let scaled = match &self.scaler {
            Some(scaler) => scaler.scale_loss(loss)?,
            None => loss.shallow_clone(),
        };
        scaled.f_backward()?;
        model.backward_recomputed()?;
        if let Some(g) = group {
            g.check_pending()?;
            let params: Vec<Tensor> = self
                .params()
                .iter()
                .map(|p| p.tensor.shallow_clone())
                .collect();
            g.average_gradients(&params)?;
        }
        match &self.scaler {
            Some(scaler) => scaler.unscale(self.params()),
            None => Ok(true),
        }
    }

    /// The update with `lr` and `wd` when the gradients are `finite`, else a
    /// skipped step (the scaler backs off).
    pub(super) fn step(&mut self, lr: f64, wd: f64, finite: bool) -> Result<()> {
        if finite {
            match &mut self.rule {
                Rule::Sgd(o) => o.step(lr, wd)?,
                Rule::AdamW(o) => o.step(lr, wd)?,
            }
        }
        if let Some(scaler) = &mut self.scaler {
            scaler.update(finite);
        }
        Ok(())
    }

    pub(super) fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = match &self.rule {
            Rule::Sgd(o) => o.state(),
            Rule::AdamW(o) => o.state(),
        };
        if let Some(scaler) = &self.scaler {
            out.extend(scaler.state());
        }
        out
    }

    pub(super) fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let (scaler, rule): (BTreeMap<_, _>, BTreeMap<_, _>) = state
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .partition(|(k, _)| k.starts_with("grad_scaler."));
        if let Some(s) = &mut self.scaler {
            s.load_state(&scaler)?;
        }
        match &mut self.rule {
            Rule::Sgd(o) => o.load_state(&rule),
            Rule::AdamW(o) => o.load_state(&rule),
        }
    }
}
