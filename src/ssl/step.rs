//! One training step of each method: the model (encoder, head and, for DINO,
//! the teacher), the loss of a batch of views, what follows the optimiser step,
//! and the optimiser with its loss scaler.
//!
//! **Methods.** SimCLR (Chen et al. 2020): projection head + NT-Xent, SGD with
//! momentum and LARC. SwAV (Caron et al. 2020): head, prototypes normalised at
//! the start of every step and frozen for the first iterations, Sinkhorn codes,
//! swapped prediction, optional queue from `queue_start_epoch`, SGD + LARC.
//! DINO (Caron et al. 2021): student and EMA teacher (a copy of the student at
//! step 0, no gradient, batch norm in training mode as in DINO's code), centring,
//! teacher-temperature warm-up, last layer frozen during the first epoch(s),
//! per-parameter gradient clipping, teacher momentum on a cosine to 1, AdamW
//! with a weight-decay schedule and DINO's parameter groups. Supervised: the
//! encoder and a linear classifier on its pooled 512-d features, cross-entropy
//! on `cells.csv` cell types, rare types oversampled (draws with replacement,
//! weight ∝ 1/type frequency). Learning rates follow the linear scaling rule
//! (`base_learning_rate · batch / 256`) with a linear warm-up and a cosine to
//! `final_learning_rate` (absolute), per step ([`crate::ssl::schedule`]).
use std::collections::BTreeMap;
use std::path::Path;

use tch::nn::{self, Module, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::Encoder;
use crate::ssl::config::{PretrainConfig, SslMethod};
use crate::ssl::dino::{ema_update, DinoHead, DinoLoss};
use crate::ssl::optim::{AdamW, GradScaler, Param, Sgd};
use crate::ssl::schedule;
use crate::ssl::seed::init_seeded;
use crate::ssl::simclr::{nt_xent_loss, ProjectionHead};
use crate::ssl::swav::{swav_loss, Prototypes, SwavHead};

/// SwAV's queue of assignment-crop embeddings, newest first, with its fill
/// count as state (the `swav` module's queue keeps both private).
#[derive(Debug)]
struct EmbeddingQueue {
    /// `[A, L, D]`.
    embeddings: Tensor,
    filled: i64,
}

impl EmbeddingQueue {
    fn is_full(&self) -> bool {
        self.filled >= self.embeddings.size()[1]
    }

    fn scores(&self, prototypes: &Prototypes) -> Result<Option<Vec<Tensor>>> {
        if !self.is_full() {
            return Ok(None);
        }
        tch::no_grad(|| {
            (0..self.embeddings.size()[0])
                .map(|i| prototypes.scores(&self.embeddings.get(i)))
                .collect::<Result<Vec<_>>>()
                .map(Some)
        })
    }

    fn push(&mut self, embeddings: &[Tensor]) -> Result<()> {
        let l = self.embeddings.size()[1];
        let new = Tensor::f_stack(embeddings, 0)?
            .detach()
            .to_kind(Kind::Float);
        let b = new.size()[1];
        self.embeddings = if b >= l {
            new.narrow(1, 0, l)
        } else {
            Tensor::f_cat(&[new, self.embeddings.narrow(1, 0, l - b)], 1)?
        };
        self.filled = (self.filled + b).min(l);
        Ok(())
    }
}

struct Teacher {
    encoder: Encoder,
    encoder_vs: VarStore,
    head: DinoHead,
    head_vs: VarStore,
}

enum Head {
    SimClr(ProjectionHead),
    Swav {
        head: SwavHead,
        prototypes: Prototypes,
        queue: Option<EmbeddingQueue>,
    },
    Dino {
        head: DinoHead,
        loss: DinoLoss,
        teacher: Box<Teacher>,
    },
    Supervised {
        classifier: nn::Linear,
        /// Class index of each cached cell.
        labels: Tensor,
    },
}

pub(super) struct Model {
    encoder: Encoder,
    encoder_vs: VarStore,
    head_vs: VarStore,
    head: Head,
}

/// Runs `f` on the pooled features of `views`, views of one size batched together.
fn embed_views(
    encoder: &Encoder,
    views: &[Tensor],
    train: bool,
    f: &dyn Fn(&Tensor) -> Tensor,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(views.len());
    let mut start = 0;
    while start < views.len() {
        let size = views[start].size();
        let end = (start..views.len())
            .find(|&i| views[i].size() != size)
            .unwrap_or(views.len());
        let x = Tensor::f_cat(&views[start..end], 0)?;
        let y = f(&encoder.forward_t(&x, train));
        out.extend(y.f_chunk((end - start) as i64, 0)?);
        start = end;
    }
    Ok(out)
}

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

impl Model {
    pub(super) fn new(
        config: &PretrainConfig,
        device: Device,
        num_types: usize,
        labels: &[i64],
    ) -> Result<Self> {
        let seed = config.seed;
        let encoder_vs = VarStore::new(device);
        let encoder = Encoder::new(&encoder_vs.root(), config.architecture);
        init_seeded(&encoder_vs, seed)?;
        let head_vs = VarStore::new(device);
        let root = head_vs.root();
        let head = match config.method {
            SslMethod::SimClr => {
                let c = config.simclr.as_ref().expect("validated");
                let head = ProjectionHead::new(&root, c)?;
                init_seeded(&head_vs, seed)?;
                Head::SimClr(head)
            }
            SslMethod::Swav => {
                let c = config.swav.as_ref().expect("validated");
                let head = SwavHead::new(&root, c)?;
                let mut prototypes = Prototypes::new(&root, c.out_dim, c.num_prototypes)?;
                init_seeded(&head_vs, seed)?;
                prototypes.normalize_();
                let queue = (c.queue_length > 0).then(|| EmbeddingQueue {
                    embeddings: Tensor::zeros(
                        [c.assignment_crops.len() as i64, c.queue_length, c.out_dim],
                        (Kind::Float, device),
                    ),
                    filled: 0,
                });
                Head::Swav {
                    head,
                    prototypes,
                    queue,
                }
            }
            SslMethod::Dino => {
                let c = config.dino.as_ref().expect("validated");
                let head = DinoHead::new(&root, c)?;
                init_seeded(&head_vs, seed)?;
                let mut t_encoder_vs = VarStore::new(device);
                let t_encoder = Encoder::new(&t_encoder_vs.root(), config.architecture);
                let mut t_head_vs = VarStore::new(device);
                let t_head = DinoHead::new(&t_head_vs.root(), c)?;
                copy_vars(&t_encoder_vs, &encoder_vs)?;
                copy_vars(&t_head_vs, &head_vs)?;
                t_encoder_vs.freeze();
                t_head_vs.freeze();
                Head::Dino {
                    head,
                    loss: DinoLoss::new(c, device)?,
                    teacher: Box::new(Teacher {
                        encoder: t_encoder,
                        encoder_vs: t_encoder_vs,
                        head: t_head,
                        head_vs: t_head_vs,
                    }),
                }
            }
            SslMethod::Supervised => {
                let classifier = nn::linear(
                    &root / "classifier",
                    config.architecture.feature_dim(),
                    num_types as i64,
                    Default::default(),
                );
                init_seeded(&head_vs, seed)?;
                Head::Supervised {
                    classifier,
                    labels: Tensor::f_from_slice(labels)?,
                }
            }
        };
        Ok(Model {
            encoder,
            encoder_vs,
            head_vs,
            head,
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
        if let Head::Dino { teacher, .. } = &self.head {
            out.push(("teacher.encoder", &teacher.encoder_vs));
            out.push(("teacher.head", &teacher.head_vs));
        }
        out
    }

    /// The encoder to export (DINO: the teacher).
    pub(super) fn export_store(&self) -> &VarStore {
        match &self.head {
            Head::Dino { teacher, .. } => &teacher.encoder_vs,
            _ => &self.encoder_vs,
        }
    }

    /// The loss of one batch (with gradient) from its normalised views
    /// ([`make_views`](crate::ssl::data::make_views)), freezing what the step asks for.
    pub(super) fn loss(
        &mut self,
        config: &PretrainConfig,
        views: &[Tensor],
        indices: &Tensor,
        epoch: u64,
        step: u64,
    ) -> Result<Tensor> {
        match &mut self.head {
            Head::SimClr(head) => {
                let c = config.simclr.as_ref().expect("validated");
                let z = embed_views(&self.encoder, views, true, &|x| head.forward(x))?;
                nt_xent_loss(&z[0], &z[1], c.temperature)
            }
            Head::Swav {
                head,
                prototypes,
                queue,
            } => {
                let c = config.swav.as_ref().expect("validated");
                prototypes.normalize_();
                prototypes.freeze_for_iterations(step, c.freeze_prototypes_iterations);
                let z = embed_views(&self.encoder, views, true, &|x| head.forward_t(x, true))?;
                let scores = z
                    .iter()
                    .map(|e| prototypes.scores(e))
                    .collect::<Result<Vec<_>>>()?;
                let active = queue.as_mut().filter(|_| epoch >= c.queue_start_epoch);
                let queue_scores = match &active {
                    Some(q) => q.scores(prototypes)?,
                    None => None,
                };
                let loss = swav_loss(
                    &scores,
                    &c.assignment_crops,
                    c.temperature,
                    c.epsilon,
                    c.sinkhorn_iterations,
                    queue_scores.as_deref(),
                )?;
                if let Some(q) = active {
                    let assigned: Vec<Tensor> =
                        c.assignment_crops.iter().map(|&a| z[a].detach()).collect();
                    q.push(&assigned)?;
                }
                Ok(loss)
            }
            Head::Dino {
                head,
                loss,
                teacher,
            } => {
                let c = config.dino.as_ref().expect("validated");
                head.freeze_last_layer(epoch, c.freeze_last_layer_epochs);
                let globals = c.crops.global.count;
                let t_out = tch::no_grad(|| {
                    embed_views(&teacher.encoder, &views[..globals], true, &|x| {
                        teacher.head.forward_t(x, true)
                    })
                })?;
                let s_out = embed_views(&self.encoder, views, true, &|x| head.forward_t(x, true))?;
                if log::log_enabled!(log::Level::Debug) {
                    let (h, kl) = loss.monitors(&s_out, &t_out, epoch)?;
                    log::debug!("dino step {step}: teacher entropy {h:.4}, KL {kl:.4}");
                }
                loss.forward(&s_out, &t_out, epoch)
            }
            Head::Supervised { classifier, labels } => {
                let logits = self.encoder.forward_t(&views[0], true).apply(classifier);
                let target = labels
                    .f_index_select(0, indices)?
                    .f_to_device(logits.device())?;
                Ok(logits.f_cross_entropy_loss::<Tensor>(
                    &target,
                    None,
                    tch::Reduction::Mean,
                    -100,
                    0.0,
                )?)
            }
        }
    }

    /// What follows the optimiser step: DINO's teacher EMA.
    pub(super) fn after_step(
        &mut self,
        config: &PretrainConfig,
        step: u64,
        total_steps: u64,
    ) -> Result<()> {
        if let Head::Dino { teacher, .. } = &self.head {
            let c = config.dino.as_ref().expect("validated");
            let m = schedule::teacher_momentum(step, c.teacher_momentum, total_steps);
            ema_update(&teacher.encoder_vs, &self.encoder_vs, m)?;
            ema_update(&teacher.head_vs, &self.head_vs, m)?;
        }
        Ok(())
    }

    pub(super) fn extra_state(&self) -> Vec<(String, Tensor)> {
        match &self.head {
            Head::Dino { loss, .. } => vec![("dino.center".into(), loss.center().shallow_clone())],
            Head::Swav { queue: Some(q), .. } => {
                vec![("swav.queue".into(), q.embeddings.shallow_clone())]
            }
            _ => Vec::new(),
        }
    }

    pub(super) fn queue_filled(&self) -> i64 {
        match &self.head {
            Head::Swav { queue: Some(q), .. } => q.filled,
            _ => 0,
        }
    }

    /// Restores every tensor of the state; leftovers and gaps are errors.
    pub(super) fn load(
        &mut self,
        tensors: &mut BTreeMap<String, Tensor>,
        queue_filled: i64,
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
        match &mut self.head {
            Head::Dino { loss, .. } => {
                let c = tensors
                    .remove("dino.center")
                    .ok_or_else(|| Error::checkpoint(path, "state lacks `dino.center`"))?;
                loss.set_center(&c)?;
            }
            Head::Swav { queue: Some(q), .. } => {
                let e = tensors
                    .remove("swav.queue")
                    .ok_or_else(|| Error::checkpoint(path, "state lacks `swav.queue`"))?;
                if e.size() != q.embeddings.size() {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "`swav.queue` has shape {:?}, expected {:?}",
                            e.size(),
                            q.embeddings.size()
                        ),
                    ));
                }
                q.embeddings = e.to_device(q.embeddings.device());
                q.filled = queue_filled;
            }
            _ => {}
        }
        Ok(())
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
        config: &PretrainConfig,
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
    /// and returns whether the gradients, unscaled, are finite, so that a step
    /// may follow (always true in fp32).
    pub(super) fn backward(&mut self, loss: &Tensor) -> Result<bool> {
        match &mut self.rule {
            Rule::Sgd(o) => o.zero_grad(),
            Rule::AdamW(o) => o.zero_grad(),
        }
        match &self.scaler {
            Some(scaler) => {
                scaler.scale_loss(loss)?.f_backward()?;
                scaler.unscale(self.params())
            }
            None => {
                loss.f_backward()?;
                Ok(true)
            }
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
