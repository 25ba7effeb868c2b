//! The supervised baseline of pre-training (DESIGN.md §2): the encoder and a
//! linear classifier on its pooled features, cross-entropy on `cells.csv` cell
//! types, rare types oversampled (draws with replacement, weight ∝ 1 / type
//! frequency), one augmented view per cell.
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::Encoder;
use crate::ssl::augment::{
    random_resized_crop, CropSpec, MultiCropConfig, ViewAugment, GLOBAL_REFERENCE_SIDE,
};
use crate::ssl::method::{
    in_section, BuildContext, Learner, Method, RunSettings, StepAt, StepLoss,
};
use crate::ssl::seed::init_seeded;

/// The supervised baseline's view and sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisedConfig {
    /// The one training view (`count` must be 1).
    pub crop: CropSpec,
    pub ratio: (f64, f64),
    /// Draw cells with replacement, weight ∝ 1 / frequency of their type.
    pub oversample: bool,
}

impl SupervisedConfig {
    /// Crops of 50–100 % of the cell, flips and any rotation, at `size` px.
    pub fn for_size(size: i64) -> Self {
        SupervisedConfig {
            crop: CropSpec {
                count: 1,
                size,
                scale: (0.5, 1.0),
                augment: vec![ViewAugment {
                    p_horizontal_flip: 0.5,
                    p_vertical_flip: 0.5,
                    rotation: Some((-180.0, 180.0)),
                    ..ViewAugment::identity()
                }],
            },
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            oversample: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.crop.count != 1 {
            return Err(Error::invalid(
                "crop.count",
                "the supervised view is one crop",
            ));
        }
        // Reuse the multi-crop checks on a two-view set of this crop.
        let mut spec = self.crop.clone();
        spec.count = 2;
        MultiCropConfig {
            global: spec,
            local: CropSpec {
                count: 0,
                ..self.crop.clone()
            },
            ratio: self.ratio,
        }
        .validate()
    }
}

impl Method for SupervisedConfig {
    fn name(&self) -> &'static str {
        "supervised"
    }

    fn check(&self, _run: &RunSettings) -> Result<()> {
        in_section("supervised", self.validate())
    }

    fn crops(&self) -> Vec<(&'static str, &CropSpec)> {
        vec![("crop", &self.crop)]
    }

    fn views(&self, images: &Tensor, rng: &mut ChaCha8Rng) -> Result<Vec<Tensor>> {
        let c = &self.crop;
        let x = random_resized_crop(images, c.size, c.scale, self.ratio, rng)?;
        Ok(vec![c.augment[0].apply(&x, rng, GLOBAL_REFERENCE_SIDE)?])
    }

    fn needs_cell_types(&self) -> bool {
        true
    }

    fn oversamples(&self) -> bool {
        self.oversample
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Learner>> {
        let classifier = nn::linear(
            ctx.head_vs.root() / "classifier",
            ctx.architecture.feature_dim(),
            ctx.num_types as i64,
            Default::default(),
        );
        init_seeded(ctx.head_vs, ctx.seed)?;
        Ok(Box::new(Supervised {
            classifier,
            labels: Tensor::f_from_slice(ctx.labels)?,
        }))
    }
}

/// The classifier in training, with each cached cell's class index.
struct Supervised {
    classifier: nn::Linear,
    labels: Tensor,
}

impl Learner for Supervised {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        cells: &Tensor,
        _at: StepAt,
    ) -> Result<StepLoss> {
        let features = encoder.forward_t(&views[0], true);
        let logits = features.apply(&self.classifier);
        let target = self
            .labels
            .f_index_select(0, cells)?
            .f_to_device(logits.device())?;
        let loss = logits.f_cross_entropy_loss::<Tensor>(
            &target,
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )?;
        Ok(StepLoss {
            loss,
            features: features.detach(),
        })
    }
}
