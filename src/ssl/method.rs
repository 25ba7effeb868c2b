//! What a pre-training method is to the loop: one trait pair and one tagged
//! configuration.
//!
//! A method (SimCLR, SwAV, DINO, the supervised baseline) is a configuration
//! section that implements [`Method`]: it checks itself against the run, makes
//! the views of a batch, and builds a [`Learner`] — the heads, teacher, queue or
//! classifier that live beside the shared encoder during training. The learner
//! computes the loss of a batch, updates what follows the optimiser step, names
//! the extra tensors to save and resume, says which encoder to export and
//! reports its monitors. [`crate::ssl::train::pretrain_method`] runs any
//! `Method`; the loop names none. The four built-in methods are the variants of
//! [`MethodConfig`], each in its own file ([`crate::ssl::simclr`],
//! [`crate::ssl::swav`], [`crate::ssl::dino`], [`crate::ssl::supervised`]).
use std::collections::BTreeMap;
use std::path::Path;

use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderArch};
use crate::ssl::augment::{CropSpec, MultiCropConfig};
use crate::ssl::dino::DinoConfig;
use crate::ssl::simclr::SimClrConfig;
use crate::ssl::supervised::SupervisedConfig;
use crate::ssl::swav::SwavConfig;

/// The run's settings a method checks itself against.
#[derive(Debug, Clone, Copy)]
pub struct RunSettings {
    pub architecture: EncoderArch,
    pub batch_size: usize,
    pub image_size: i64,
    /// Whether the run's optimiser is AdamW (else SGD).
    pub adamw: bool,
}

/// What a learner is built with.
pub struct BuildContext<'a> {
    /// The student encoder's variables (a teacher starts as their copy).
    pub encoder_vs: &'a VarStore,
    /// Where the learner's trainable variables go (saved as `head.*`).
    pub head_vs: &'a VarStore,
    pub architecture: EncoderArch,
    pub device: Device,
    pub seed: u64,
    /// Class index of each cached cell, and the number of classes (cell types;
    /// empty and 0 unless [`Method::needs_cell_types`]).
    pub labels: &'a [i64],
    pub num_types: usize,
    /// The process group of a data-parallel run, whose ranks share the
    /// method's cross-sample terms (SimCLR's negatives, SwAV's Sinkhorn sums,
    /// DINO's centre); `None` in one process.
    pub group: Option<&'static crate::distributed::Group>,
}

/// Where in the run a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepAt {
    pub epoch: u64,
    pub step: u64,
    pub total_steps: u64,
    /// Whether this step is logged: the learner then measures its monitors.
    pub monitor: bool,
}

/// The loss of a batch and what the loop's monitors are measured on.
pub struct StepLoss {
    /// Scalar, with gradient.
    pub loss: Tensor,
    /// `[B, D]` pooled encoder features of the first view, detached.
    pub features: Tensor,
}

/// A self-supervised (or supervised) pre-training method, as configured
/// (`Sync`: the view thread makes its views while the loop trains).
pub trait Method: Sync {
    /// The name used in configurations, files and reports (`simclr`).
    fn name(&self) -> &'static str;
    /// Checks the section against the run; errors name the key by its full
    /// path (`swav.num_prototypes`, `batch_size`; the built-in methods prefix with `in_section`).
    fn check(&self, run: &RunSettings) -> Result<()>;
    /// The multi-crop views of a method that has them (the defaults of
    /// [`Method::crops`] and [`Method::views`] use them).
    fn multi_crop(&self) -> Option<&MultiCropConfig> {
        None
    }
    /// The crops whose sizes must fit the images, by key inside the section.
    fn crops(&self) -> Vec<(&'static str, &CropSpec)> {
        self.multi_crop().map(multi_crop_specs).unwrap_or_default()
    }
    /// The views of one batch of `[B, 3, S, S]` images in `[0, 1]` (not yet
    /// normalised), global views first.
    fn views(&self, images: &Tensor, rng: &mut ChaCha8Rng) -> Result<Vec<Tensor>> {
        match self.multi_crop() {
            Some(crops) => crops.views(images, rng),
            None => Err(Error::invalid(
                self.name(),
                "the method defines neither multi-crop views nor views of its own",
            )),
        }
    }
    /// Whether the method trains on `cells.csv` cell types.
    fn needs_cell_types(&self) -> bool {
        false
    }
    /// Whether batches are drawn with replacement, weight ∝ 1 / type frequency.
    fn oversamples(&self) -> bool {
        false
    }
    /// The learner (heads and whatever else trains beside the encoder).
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Learner>>;
}

/// The trained parts of a method beside the shared encoder.
pub trait Learner {
    /// The loss of one batch (with gradient) from its normalised views and the
    /// `[B]` cache indices of its cells.
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        cells: &Tensor,
        at: StepAt,
    ) -> Result<StepLoss>;
    /// What follows the optimiser step (DINO: the teacher's EMA).
    fn after_step(&mut self, _student: &Student, _at: StepAt) -> Result<()> {
        Ok(())
    }
    /// Per-parameter gradient-norm clip (0: none).
    fn clip_grad(&self) -> f64 {
        0.0
    }
    /// Variable stores besides the student's encoder and head, by state prefix
    /// (DINO: `teacher.encoder`, `teacher.head`).
    fn stores(&self) -> Vec<(&'static str, &VarStore)> {
        Vec::new()
    }
    /// The encoder to export; `None`: the student's.
    fn exported(&self) -> Option<&VarStore> {
        None
    }
    /// Which encoder [`Learner::exported`] gives, for the provenance.
    fn exported_name(&self) -> &'static str {
        "student"
    }
    /// Tensors to save beside the variables (DINO's centre, SwAV's queue).
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Restores [`Learner::state`], removing what it takes from `tensors`.
    fn load_state(&mut self, _tensors: &mut BTreeMap<String, Tensor>, _path: &Path) -> Result<()> {
        Ok(())
    }
    /// The method's own monitors of the last monitored step (SwAV: prototypes
    /// in use; DINO: teacher entropy and KL), by name.
    fn monitors(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

/// The student's variables, for a learner's after-step update.
pub struct Student<'a> {
    pub encoder: &'a VarStore,
    pub head: &'a VarStore,
}

/// The method of a run and its settings: the configuration's section named
/// after the method (`{"swav": {…}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodConfig {
    SimClr(SimClrConfig),
    Swav(SwavConfig),
    Dino(DinoConfig),
    Supervised(SupervisedConfig),
}

impl MethodConfig {
    /// The method as the loop sees it.
    pub fn method(&self) -> &dyn Method {
        match self {
            MethodConfig::SimClr(c) => c,
            MethodConfig::Swav(c) => c,
            MethodConfig::Dino(c) => c,
            MethodConfig::Supervised(c) => c,
        }
    }

    pub fn name(&self) -> &'static str {
        self.method().name()
    }

    /// The multi-crop views of a self-supervised method (`None`: supervised).
    pub fn multi_crop(&self) -> Option<&MultiCropConfig> {
        self.method().multi_crop()
    }
}

/// Names a key of `method`'s section by its full path (`dino.crops.global.size`).
pub(crate) fn in_section(method: &str, r: Result<()>) -> Result<()> {
    r.map_err(|e| e.map_arg(|arg| format!("{method}.{arg}")))
}

/// The crops of a multi-crop section, by key inside the section.
fn multi_crop_specs(crops: &MultiCropConfig) -> Vec<(&'static str, &CropSpec)> {
    vec![
        ("crops.global", &crops.global),
        ("crops.local", &crops.local),
    ]
}

/// Checks that a view's crops fit the run's images; `method` prefixes the key.
pub(crate) fn check_crop_sizes(method: &dyn Method, image_size: i64) -> Result<()> {
    for (key, spec) in method.crops() {
        if spec.count > 0 && spec.size > image_size {
            return Err(Error::invalid(
                format!("{}.{key}.size", method.name()),
                format!(
                    "{} px crops are larger than the {image_size} px images (image_size)",
                    spec.size
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a section whose `in_dim` differs from the encoder's feature width.
pub(crate) fn check_in_dim(in_dim: i64, run: &RunSettings) -> Result<()> {
    let feature_dim = run.architecture.feature_dim();
    if in_dim != feature_dim {
        return Err(Error::invalid(
            "in_dim",
            format!(
                "{in_dim}, but {} gives {feature_dim}-d features",
                run.architecture.name()
            ),
        ));
    }
    Ok(())
}

/// Refuses AdamW for a method that trains with SGD only.
pub(crate) fn sgd_only(name: &str, run: &RunSettings) -> Result<()> {
    if run.adamw {
        return Err(Error::invalid(
            "sgd",
            format!("{name} trains with exactly the `sgd` optimiser"),
        ));
    }
    Ok(())
}

/// Runs `f` on the pooled features of `views`, views of one size batched
/// together; returns `f`'s outputs per view and the pooled features of view 0.
pub(crate) fn embed_views(
    encoder: &Encoder,
    views: &[Tensor],
    train: bool,
    f: &dyn Fn(&Tensor) -> Tensor,
) -> Result<(Vec<Tensor>, Tensor)> {
    use tch::nn::ModuleT;
    let mut out = Vec::with_capacity(views.len());
    let mut first = None;
    let mut start = 0;
    while start < views.len() {
        let size = views[start].size();
        let end = (start..views.len())
            .find(|&i| views[i].size() != size)
            .unwrap_or(views.len());
        let x = Tensor::f_cat(&views[start..end], 0)?;
        let features = encoder.forward_t(&x, train);
        if first.is_none() {
            first = Some(features.f_narrow(0, 0, views[0].size()[0])?.detach());
        }
        out.extend(f(&features).f_chunk((end - start) as i64, 0)?);
        start = end;
    }
    let first = first.ok_or_else(|| Error::invalid("views", "no views to embed"))?;
    Ok((out, first))
}
