//! SwAV (Caron et al. 2020, *Unsupervised Learning of Visual Features by
//! Contrasting Cluster Assignments*): projection head, prototypes, the
//! Sinkhorn–Knopp code computation and the swapped-prediction loss.
//!
//! With L2-normalised embeddings `z` and prototypes `c_k` (rows of `C`, also
//! L2-normalised), the scores of a crop are `zᵀ C` (`[B, K]`). The codes of an
//! assignment crop solve the entropy-regularised equipartition problem (§3.1,
//! Eq. 3) by Sinkhorn–Knopp on `Q = exp(scoresᵀ / ε)` (`[K, B]`): normalise `Q`
//! to sum 1, then alternately scale its rows to sum `1/K` (each prototype gets
//! an equal share of the batch) and its columns to sum `1/B`, and return
//! `B·Qᵀ` (each sample's code sums to 1). Every other crop `t` predicts those
//! codes, `p_t = softmax(scores_t / τ)`, and the loss averages
//! `−Σ_k q_k log p_t,k` over samples, over the `V − 1` predicting crops of each
//! assignment crop, and over the assignment crops (Eq. 1–2, Algorithm 1).
//!
//! With small batches the equipartition constraint is coarse; SwAV then keeps a
//! queue of embeddings of earlier batches whose scores join the batch's before
//! Sinkhorn, and only the batch's rows of the codes are kept ([`SwavQueue`]).
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use std::collections::BTreeMap;
use std::path::Path;

use crate::distributed::Group;
use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderArch};
use crate::ssl::augment::{MultiCropConfig, CELL_SIZE};
use crate::ssl::head::{check_temperature, l2_normalize, torch_linear_init, Activation, Mlp};
use crate::ssl::method::{
    check_in_dim, embed_views, in_section, sgd_only, BuildContext, Learner, Method, RunSettings,
    StepAt, StepLoss,
};
use crate::ssl::seed::init_seeded;

/// Settings of SwAV pre-training that the model and loss need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwavConfig {
    pub in_dim: i64,
    pub hidden_dim: i64,
    pub out_dim: i64,
    /// K, the number of prototypes.
    pub num_prototypes: i64,
    /// τ of the predictions.
    pub temperature: f64,
    /// ε of the Sinkhorn–Knopp codes.
    pub epsilon: f64,
    pub sinkhorn_iterations: usize,
    /// Crops whose codes are predicted (SwAV: the two global crops, 0 and 1).
    pub assignment_crops: Vec<usize>,
    /// Optimiser steps during which the prototypes receive no gradient.
    pub freeze_prototypes_iterations: u64,
    /// Embeddings kept per assignment crop (0: no queue).
    pub queue_length: i64,
    /// Epoch from which the queue is filled and used.
    pub queue_start_epoch: u64,
    pub crops: MultiCropConfig,
}

impl Default for SwavConfig {
    /// The paper's setting (DESIGN.md §2): head 512→2048→128, 300 prototypes,
    /// τ 0.1, ε 0.05, 3 iterations, 2 + 6 crops; SwAV's reference freezes the
    /// prototypes for 313 iterations and, when used, starts the queue at epoch 15.
    fn default() -> Self {
        SwavConfig {
            in_dim: EncoderArch::ResNet18.feature_dim(),
            hidden_dim: 2048,
            out_dim: 128,
            num_prototypes: 300,
            temperature: 0.1,
            epsilon: 0.05,
            sinkhorn_iterations: 3,
            assignment_crops: vec![0, 1],
            freeze_prototypes_iterations: 313,
            queue_length: 0,
            queue_start_epoch: 15,
            crops: MultiCropConfig::swav(CELL_SIZE),
        }
    }
}

impl SwavConfig {
    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [
            ("in_dim", self.in_dim),
            ("hidden_dim", self.hidden_dim),
            ("out_dim", self.out_dim),
            ("num_prototypes", self.num_prototypes),
        ] {
            if v < 1 {
                return Err(Error::invalid(arg, format!("{v} must be at least 1")));
            }
        }
        check_temperature("temperature", self.temperature)?;
        check_temperature("epsilon", self.epsilon)?;
        if self.queue_length < 0 {
            return Err(Error::invalid("queue_length", "must be ≥ 0"));
        }
        self.crops.validate()?;
        check_assignment_crops(&self.assignment_crops, self.crops.num_views())
    }

    /// Refuses a batch too small for the equipartition of K prototypes.
    ///
    /// Sinkhorn spreads `B` samples evenly over `K` prototypes: with `B + queue <
    /// K` every prototype receives less than one sample's mass and the codes
    /// flatten towards uniform, which is why SwAV adds a queue "in the same range
    /// as the number of code vectors" when batches are small (§4.1 / appendix).
    pub fn check_batch_size(&self, batch_size: usize) -> Result<()> {
        if batch_size < 2 {
            return Err(Error::invalid(
                "batch_size",
                format!("SwAV needs at least 2 images per batch, got {batch_size}"),
            ));
        }
        let seen = batch_size as i64 + self.queue_length;
        if seen < self.num_prototypes {
            return Err(Error::invalid(
                "batch_size",
                format!(
                    "{batch_size} images + a queue of {} cannot balance {} prototypes; \
                     use a queue of at least {} or fewer prototypes",
                    self.queue_length,
                    self.num_prototypes,
                    self.num_prototypes - batch_size as i64
                ),
            ));
        }
        Ok(())
    }
}

fn check_assignment_crops(crops: &[usize], num_crops: usize) -> Result<()> {
    if crops.is_empty() {
        return Err(Error::invalid("assignment_crops", "at least one crop"));
    }
    if num_crops < 2 {
        return Err(Error::invalid(
            "scores_per_crop",
            format!("swapped prediction needs at least 2 crops, got {num_crops}"),
        ));
    }
    for (i, &c) in crops.iter().enumerate() {
        if c >= num_crops {
            return Err(Error::invalid(
                "assignment_crops",
                format!("crop {c} does not exist among {num_crops} crops"),
            ));
        }
        if crops[..i].contains(&c) {
            return Err(Error::invalid(
                "assignment_crops",
                format!("crop {c} is listed twice"),
            ));
        }
    }
    Ok(())
}

/// SwAV's projection head: Linear → BatchNorm1d → ReLU → Linear, then L2
/// normalisation; parameters named `head.0`, `head.1`, `head.3` as `nn.Sequential`.
#[derive(Debug)]
pub struct SwavHead {
    mlp: Mlp,
}

impl SwavHead {
    pub fn new(p: &nn::Path, config: &SwavConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        Ok(SwavHead {
            mlp: Mlp::new(
                &(p / "head"),
                &[c.in_dim, c.hidden_dim, c.out_dim],
                true,
                Activation::Relu,
                torch_linear_init,
            ),
        })
    }
}

impl ModuleT for SwavHead {
    /// `[N, in_dim]` pooled features → `[N, out_dim]` unit-norm embeddings.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        l2_normalize(&self.mlp.forward_t(xs, train))
    }
}

/// The K prototype vectors, a bias-free linear layer `prototypes.weight` `[K, D]`.
#[derive(Debug)]
pub struct Prototypes {
    weight: Tensor,
}

impl Prototypes {
    /// PyTorch's `nn.Linear` initialisation, then rows normalised.
    pub fn new(p: &nn::Path, dim: i64, num_prototypes: i64) -> Result<Self> {
        if dim < 1 || num_prototypes < 1 {
            return Err(Error::invalid(
                "num_prototypes",
                format!("{num_prototypes} prototypes of dimension {dim}"),
            ));
        }
        let bound = 1.0 / (dim as f64).sqrt();
        let weight = (p / "prototypes").var(
            "weight",
            &[num_prototypes, dim],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let mut prototypes = Prototypes { weight };
        prototypes.normalize_();
        Ok(prototypes)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Scores `[N, K]` of unit-norm embeddings `[N, D]` (cosine similarities).
    pub fn scores(&self, embeddings: &Tensor) -> Result<Tensor> {
        Ok(embeddings.f_matmul(&self.weight.tr())?)
    }

    /// Re-normalises every prototype to unit length; SwAV does this at the start
    /// of every iteration so scores stay cosine similarities.
    pub fn normalize_(&mut self) {
        tch::no_grad(|| {
            let unit = l2_normalize(&self.weight);
            self.weight.copy_(&unit);
        });
    }

    /// Freezes the prototypes during the first `frozen_iterations` iterations:
    /// call before the forward pass of `iteration`. While frozen, autograd computes
    /// no gradient for them, so the optimiser skips them as SwAV's reference does
    /// by dropping their gradient. Returns whether they are frozen.
    pub fn freeze_for_iterations(&self, iteration: u64, frozen_iterations: u64) -> bool {
        let frozen = iteration < frozen_iterations;
        let _ = self.weight.set_requires_grad(!frozen);
        frozen
    }
}

/// Sinkhorn–Knopp codes `[B, K]` of scores `[B, K]`, as SwAV's Algorithm/appendix:
/// `Q = exp(scores/ε)ᵀ / total`, then `iterations` times rows (prototypes) to
/// `1/K` and columns (samples) to `1/B`; returns `B·Qᵀ`, whose rows sum to 1.
/// Computed without gradient.
pub fn sinkhorn(scores: &Tensor, epsilon: f64, iterations: usize) -> Result<Tensor> {
    sinkhorn_in(scores, epsilon, iterations, None)
}

/// [`sinkhorn`] over the global batch of a process group: each rank holds its
/// rows of the scores; the total and the prototypes' sums are all-reduced and
/// `B` is the global batch, as SwAV's distributed code does. Returns this
/// rank's codes.
pub fn sinkhorn_in(
    scores: &Tensor,
    epsilon: f64,
    iterations: usize,
    group: Option<&Group>,
) -> Result<Tensor> {
    let size = scores.size();
    let [b, k] = size[..] else {
        return Err(Error::invalid(
            "scores",
            format!("expected [B, K] scores, got {size:?}"),
        ));
    };
    if b < 1 || k < 1 {
        return Err(Error::invalid("scores", format!("empty scores {size:?}")));
    }
    check_temperature("epsilon", epsilon)?;
    let world = group.map_or(1, Group::world_size) as f64;
    let global_sum = |t: Tensor| -> Result<Tensor> {
        if let Some(g) = group {
            g.all_reduce_sum(&t, "SwAV's Sinkhorn-Knopp sums")?;
        }
        Ok(t)
    };
    tch::no_grad(|| {
        let s = scores.detach() / epsilon;
        // Subtracting the maximum cancels in the first normalisation but keeps exp
        // finite for scores that are not cosine similarities; every rank
        // subtracts the global one.
        let max = match group {
            Some(g) => g
                .all_gather(&s.max().reshape([1]), false, "SwAV's score maximum")?
                .max(),
            None => s.max(),
        };
        let mut q = (&s - max).exp().tr();
        q /= global_sum(q.sum(q.kind()))?;
        for _ in 0..iterations {
            q /= global_sum(q.sum_dim_intlist([1i64].as_slice(), true, q.kind()))?;
            q /= k as f64;
            q /= q.sum_dim_intlist([0i64].as_slice(), true, q.kind());
            q /= b as f64 * world;
        }
        Ok((q * (b as f64 * world)).tr().contiguous())
    })
}

/// Swapped-prediction loss over crops.
///
/// `scores_per_crop[v]` are the `[B, K]` prototype scores of crop `v` (all crops
/// of the same `B` images, with gradient). For every crop `a` in
/// `assignment_crops`, the codes come from [`sinkhorn`] of its scores (no
/// gradient; with `queue_scores[i]` `[L, K]` of the `i`-th assignment crop's
/// queue prepended, keeping the last `B` rows), and every other crop predicts
/// them with `log_softmax(scores/τ)`. Errors on mismatched shapes, `B < 2`,
/// fewer than 2 crops or bad crop indices.
pub fn swav_loss(
    scores_per_crop: &[Tensor],
    assignment_crops: &[usize],
    temperature: f64,
    epsilon: f64,
    iterations: usize,
    queue_scores: Option<&[Tensor]>,
) -> Result<Tensor> {
    swav_loss_in(
        scores_per_crop,
        assignment_crops,
        temperature,
        epsilon,
        iterations,
        queue_scores,
        None,
    )
}

/// [`swav_loss`] of this rank's rows, with the codes of [`sinkhorn_in`] over
/// the group's global batch.
pub fn swav_loss_in(
    scores_per_crop: &[Tensor],
    assignment_crops: &[usize],
    temperature: f64,
    epsilon: f64,
    iterations: usize,
    queue_scores: Option<&[Tensor]>,
    group: Option<&Group>,
) -> Result<Tensor> {
    check_assignment_crops(assignment_crops, scores_per_crop.len())?;
    check_temperature("temperature", temperature)?;
    let size = scores_per_crop[0].size();
    let [b, k] = size[..] else {
        return Err(Error::invalid(
            "scores_per_crop",
            format!("crop 0: expected [B, K] scores, got {size:?}"),
        ));
    };
    for (v, s) in scores_per_crop.iter().enumerate() {
        if s.size() != size {
            return Err(Error::invalid(
                "scores_per_crop",
                format!("crop {v} has shape {:?}, crop 0 {size:?}", s.size()),
            ));
        }
    }
    if b < 2 {
        return Err(Error::invalid(
            "scores_per_crop",
            format!("SwAV needs a batch of at least 2 images to balance codes, got {b}"),
        ));
    }
    if let Some(queue) = queue_scores {
        if queue.len() != assignment_crops.len() {
            return Err(Error::invalid(
                "queue_scores",
                format!(
                    "{} queues for {} assignment crops",
                    queue.len(),
                    assignment_crops.len()
                ),
            ));
        }
        for (i, q) in queue.iter().enumerate() {
            let qs = q.size();
            if qs.len() != 2 || qs[1] != k {
                return Err(Error::invalid(
                    "queue_scores",
                    format!("queue {i} has shape {qs:?}, expected [L, {k}]"),
                ));
            }
        }
    }
    let log_probs: Vec<Tensor> = scores_per_crop
        .iter()
        .map(|s| (s / temperature).log_softmax(1, s.kind()))
        .collect();
    let mut total: Option<Tensor> = None;
    for (i, &a) in assignment_crops.iter().enumerate() {
        let scores = match queue_scores {
            Some(queue) => Tensor::f_cat(&[&queue[i].detach(), &scores_per_crop[a].detach()], 0)?,
            None => scores_per_crop[a].detach(),
        };
        let rows = scores.size()[0];
        let codes = sinkhorn_in(&scores, epsilon, iterations, group)?.narrow(0, rows - b, b);
        let mut sub: Option<Tensor> = None;
        for (v, lp) in log_probs.iter().enumerate() {
            if v == a {
                continue;
            }
            let term = -(&codes * lp)
                .sum_dim_intlist([1i64].as_slice(), false, lp.kind())
                .mean(lp.kind());
            sub = Some(match sub {
                Some(s) => s + term,
                None => term,
            });
        }
        let sub =
            sub.expect("at least two crops were checked") / (scores_per_crop.len() - 1) as f64;
        total = Some(match total {
            Some(t) => t + sub,
            None => sub,
        });
    }
    Ok(total.expect("at least one assignment crop was checked") / assignment_crops.len() as f64)
}

/// Queue of recent embeddings of the assignment crops (newest first), whose
/// scores enlarge the Sinkhorn problem once the queue is full.
#[derive(Debug)]
pub struct SwavQueue {
    /// `[A, L, D]`: `A` assignment crops, `L` embeddings each.
    embeddings: Tensor,
    filled: i64,
}

impl SwavQueue {
    pub fn new(assignment_crops: usize, length: i64, dim: i64, device: Device) -> Result<Self> {
        if assignment_crops == 0 || length < 1 || dim < 1 {
            return Err(Error::invalid(
                "queue_length",
                format!("a queue of {length} × {dim} for {assignment_crops} crops"),
            ));
        }
        Ok(SwavQueue {
            embeddings: Tensor::zeros(
                [assignment_crops as i64, length, dim],
                (Kind::Float, device),
            ),
            filled: 0,
        })
    }

    /// Whether every slot holds an embedding (SwAV uses the queue only then).
    pub fn is_full(&self) -> bool {
        self.filled >= self.embeddings.size()[1]
    }

    /// Scores `[A][L, K]` of the queued embeddings against the current
    /// prototypes, for [`swav_loss`]'s `queue_scores`; `None` until full.
    pub fn scores(&self, prototypes: &Prototypes) -> Result<Option<Vec<Tensor>>> {
        if !self.is_full() {
            return Ok(None);
        }
        tch::no_grad(|| {
            let a = self.embeddings.size()[0];
            (0..a)
                .map(|i| prototypes.scores(&self.embeddings.get(i)))
                .collect::<Result<Vec<_>>>()
                .map(Some)
        })
    }

    /// Pushes the batch's embeddings `[B, D]` of each assignment crop to the front,
    /// dropping the oldest. Call after computing the loss with [`SwavQueue::scores`].
    pub fn push(&mut self, embeddings: &[Tensor]) -> Result<()> {
        let [a, l, d] = self.embeddings.size()[..] else {
            unreachable!("queue is 3-D by construction")
        };
        if embeddings.len() as i64 != a {
            return Err(Error::invalid(
                "embeddings",
                format!("{} crops for a queue of {a}", embeddings.len()),
            ));
        }
        let b = embeddings[0].size()[0];
        for (i, e) in embeddings.iter().enumerate() {
            if e.size() != [b, d] {
                return Err(Error::invalid(
                    "embeddings",
                    format!("crop {i} has shape {:?}, expected [{b}, {d}]", e.size()),
                ));
            }
        }
        let new = Tensor::stack(embeddings, 0)
            .detach()
            .to_kind(self.embeddings.kind());
        self.embeddings = if b >= l {
            new.narrow(1, 0, l)
        } else {
            Tensor::cat(&[new, self.embeddings.narrow(1, 0, l - b)], 1)
        };
        self.filled = (self.filled + b).min(l);
        Ok(())
    }

    /// The queued embeddings `[A, L, D]` and how many of the `L` slots are filled.
    pub fn state(&self) -> (&Tensor, i64) {
        (&self.embeddings, self.filled)
    }

    /// Restores [`SwavQueue::state`]; the shape must be the queue's.
    pub fn restore(&mut self, embeddings: &Tensor, filled: i64) -> Result<()> {
        if embeddings.size() != self.embeddings.size() {
            return Err(Error::invalid(
                "swav.queue",
                format!(
                    "shape {:?}, expected {:?}",
                    embeddings.size(),
                    self.embeddings.size()
                ),
            ));
        }
        self.embeddings = embeddings
            .f_to_device(self.embeddings.device())?
            .f_to_kind(self.embeddings.kind())?;
        self.filled = filled.clamp(0, self.embeddings.size()[1]);
        Ok(())
    }
}

impl Method for SwavConfig {
    fn name(&self) -> &'static str {
        "swav"
    }

    fn check(&self, run: &RunSettings) -> Result<()> {
        in_section("swav", self.validate())?;
        in_section("swav", check_in_dim(self.in_dim, run))?;
        self.check_batch_size(run.batch_size)?;
        sgd_only("swav", run)
    }

    fn multi_crop(&self) -> Option<&MultiCropConfig> {
        Some(&self.crops)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Learner>> {
        let root = ctx.head_vs.root();
        let head = SwavHead::new(&root, self)?;
        let mut prototypes = Prototypes::new(&root, self.out_dim, self.num_prototypes)?;
        init_seeded(ctx.head_vs, ctx.seed)?;
        prototypes.normalize_();
        let queue = if self.queue_length > 0 {
            // Each rank queues its share of the global queue, as SwAV's code.
            let ranks = ctx.group.map_or(1, Group::world_size) as i64;
            Some(SwavQueue::new(
                self.assignment_crops.len(),
                (self.queue_length / ranks).max(1),
                self.out_dim,
                ctx.device,
            )?)
        } else {
            None
        };
        Ok(Box::new(Swav {
            config: self.clone(),
            head,
            prototypes,
            queue,
            prototypes_used: f64::NAN,
            group: ctx.group,
        }))
    }
}

/// SwAV in training: head, prototypes, the optional queue.
struct Swav {
    config: SwavConfig,
    head: SwavHead,
    prototypes: Prototypes,
    queue: Option<SwavQueue>,
    /// Distinct prototypes that are some cell's best match in the last
    /// monitored batch (all assignment crops).
    prototypes_used: f64,
    group: Option<&'static Group>,
}

impl Learner for Swav {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _cells: &Tensor,
        at: StepAt,
    ) -> Result<StepLoss> {
        let c = &self.config;
        self.prototypes.normalize_();
        self.prototypes
            .freeze_for_iterations(at.step, c.freeze_prototypes_iterations);
        let head = &self.head;
        let (z, features) = embed_views(encoder, views, true, &|x| head.forward_t(x, true))?;
        let scores = z
            .iter()
            .map(|e| self.prototypes.scores(e))
            .collect::<Result<Vec<_>>>()?;
        if at.monitor {
            let best: Vec<Tensor> = c
                .assignment_crops
                .iter()
                .map(|&a| scores[a].detach().argmax(1, false))
                .collect();
            let best = Tensor::f_cat(&best, 0)?;
            self.prototypes_used = best.f_unique_dim(0, false, false, false)?.0.size()[0] as f64;
        }
        let active = self
            .queue
            .as_mut()
            .filter(|_| at.epoch >= c.queue_start_epoch);
        let queue_scores = match &active {
            Some(q) => q.scores(&self.prototypes)?,
            None => None,
        };
        let loss = swav_loss_in(
            &scores,
            &c.assignment_crops,
            c.temperature,
            c.epsilon,
            c.sinkhorn_iterations,
            queue_scores.as_deref(),
            self.group,
        )?;
        if let Some(q) = active {
            let assigned: Vec<Tensor> = c.assignment_crops.iter().map(|&a| z[a].detach()).collect();
            q.push(&assigned)?;
        }
        Ok(StepLoss { loss, features })
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        match &self.queue {
            Some(q) => {
                let (embeddings, filled) = q.state();
                vec![
                    ("swav.queue".into(), embeddings.shallow_clone()),
                    ("swav.queue_filled".into(), Tensor::from_slice(&[filled])),
                ]
            }
            None => Vec::new(),
        }
    }

    fn load_state(&mut self, tensors: &mut BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
        let Some(q) = &mut self.queue else {
            return Ok(());
        };
        let mut take = |key: &str| {
            tensors
                .remove(key)
                .ok_or_else(|| Error::checkpoint(path, format!("state lacks `{key}`")))
        };
        let embeddings = take("swav.queue")?;
        let filled = take("swav.queue_filled")?.f_int64_value(&[0])?;
        if embeddings.size() != q.state().0.size() {
            // Saved by a run with another number of ranks (each queues its share).
            log::warn!(
                "{}: the SwAV queue was saved as {:?}, this run queues {:?} per rank: it \
                 starts empty",
                path.display(),
                embeddings.size(),
                q.state().0.size()
            );
            return Ok(());
        }
        q.restore(&embeddings, filled)
            .map_err(|e| Error::checkpoint(path, e.to_string()))
    }

    fn monitors(&self) -> Vec<(&'static str, f64)> {
        vec![("prototypes_used", self.prototypes_used)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_prototypes_names() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SwavConfig::default();
        let head = SwavHead::new(&vs.root(), &cfg).unwrap();
        let protos = Prototypes::new(&vs.root(), cfg.out_dim, cfg.num_prototypes).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        assert!(names.contains(&"head.1.running_var".to_string()));
        assert!(names.contains(&"head.3.weight".to_string()));
        assert!(names.contains(&"prototypes.weight".to_string()));
        let z = head.forward_t(&Tensor::randn([4, 512], (Kind::Float, Device::Cpu)), true);
        let norms = z.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        assert_eq!(protos.scores(&z).unwrap().size(), [4, 300]);
    }

    #[test]
    fn batch_size_criterion() {
        let mut cfg = SwavConfig::default();
        assert!(cfg.check_batch_size(512).is_ok());
        assert!(cfg.check_batch_size(64).is_err());
        cfg.queue_length = 3840;
        assert!(cfg.check_batch_size(64).is_ok());
        assert!(cfg.check_batch_size(1).is_err());
    }

    #[test]
    fn queue_keeps_newest_first() {
        let mut q = SwavQueue::new(1, 3, 2, Device::Cpu).unwrap();
        let e = |v: f64| Tensor::full([2, 2], v, (Kind::Float, Device::Cpu));
        q.push(&[e(1.0)]).unwrap();
        assert!(!q.is_full());
        q.push(&[e(2.0)]).unwrap();
        assert!(q.is_full());
        let first: Vec<f32> = Vec::try_from(q.embeddings.get(0).select(1, 0)).unwrap();
        assert_eq!(first, [2.0, 2.0, 1.0]);
    }
}
