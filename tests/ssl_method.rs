//! A pre-training method is one trait pair: this file adds a method the
//! library does not have (RotNet-style rotation prediction, Gidaris et al.
//! 2018) without touching the library, and trains it through the library's own
//! loop — checkpoints, monitors, resumption and the exported encoder included.
use std::path::Path;

use amlmil::model::Encoder;
use amlmil::ssl::augment::CropSpec;
use amlmil::ssl::method::{BuildContext, Learner, Method, RunSettings, StepAt, StepLoss};
use amlmil::ssl::train::pretrain_method;
use amlmil::ssl::PretrainConfig;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// Cell `i` of a batch is rotated by `(i mod 4) · 90°`; the head predicts which.
#[derive(Debug)]
struct Rotation {
    crop: CropSpec,
}

impl Method for Rotation {
    fn name(&self) -> &'static str {
        "rotation"
    }

    fn check(&self, run: &RunSettings) -> amlmil::Result<()> {
        if run.batch_size < 4 {
            return Err(amlmil::Error::invalid(
                "batch_size",
                "one cell per rotation",
            ));
        }
        Ok(())
    }

    fn crops(&self) -> Vec<(&'static str, &CropSpec)> {
        vec![("crop", &self.crop)]
    }

    fn views(&self, images: &Tensor, _rng: &mut ChaCha8Rng) -> amlmil::Result<Vec<Tensor>> {
        let rotated: Vec<Tensor> = (0..images.size()[0])
            .map(|i| images.get(i).rot90(i % 4, [1, 2]))
            .collect();
        Ok(vec![Tensor::stack(&rotated, 0)])
    }

    fn build(&self, ctx: &BuildContext) -> amlmil::Result<Box<dyn Learner>> {
        let head = nn::linear(
            ctx.head_vs.root() / "rotation",
            ctx.architecture.feature_dim(),
            4,
            Default::default(),
        );
        Ok(Box::new(RotationLearner { head }))
    }
}

struct RotationLearner {
    head: nn::Linear,
}

impl Learner for RotationLearner {
    fn loss(
        &mut self,
        encoder: &Encoder,
        views: &[Tensor],
        _cells: &Tensor,
        _at: StepAt,
    ) -> amlmil::Result<StepLoss> {
        // The loop hands over this method's views, not the configuration's
        // (SimCLR's two).
        assert_eq!(views.len(), 1, "the method's own views");
        let features = encoder.forward_t(&views[0], true);
        let b = features.size()[0];
        let target = Tensor::arange(b, (Kind::Int64, features.device())).remainder(4);
        let loss = features.apply(&self.head).cross_entropy_for_logits(&target);
        Ok(StepLoss {
            loss,
            features: features.detach(),
        })
    }

    fn monitors(&self) -> Vec<(&'static str, f64)> {
        vec![("head_weight_norm", self.head.ws.norm().double_value(&[]))]
    }
}

fn run_settings(root: &Path, output: &Path, epochs: u64, resume: bool) -> PretrainConfig {
    // Any built-in method's configuration carries the run settings; the
    // method trained is the one passed to `pretrain_method`.
    PretrainConfig::from_value(serde_json::json!({
        "method": "simclr", "preset": "cpu-small", "dataset": root, "output": output,
        "image_size": 32, "batch_size": 8, "epochs": epochs, "warmup_epochs": 0,
        "steps_per_epoch": 3, "device": "cpu", "decode_threads": 1, "seed": 5,
        "resume": resume, "monitor": {"every_steps": 2},
        "simclr": {"crops": {"global": {"size": 32}, "local": {"size": 16}}},
    }))
    .unwrap()
}

#[test]
fn a_method_defined_outside_the_library_trains_through_its_loop() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cohort");
    let cohort = amlmil::synth::CohortConfig {
        patients_per_class: 1,
        cells_min: 6,
        cells_max: 6,
        image_size: 32,
        seed: 9,
        threads: 2,
        ..Default::default()
    };
    amlmil::synth::generate_cohort(&cohort, &root, &mut |_, _| {}).unwrap();
    let method = Rotation {
        crop: CropSpec {
            count: 1,
            size: 32,
            scale: (1.0, 1.0),
            augment: Vec::new(),
        },
    };
    let out = dir.path().join("run");
    let first =
        pretrain_method(&run_settings(&root, &out, 1, false), &method, &mut |_| true).unwrap();
    assert_eq!(
        (first.method.as_str(), first.steps_completed),
        ("rotation", 3)
    );
    let report =
        pretrain_method(&run_settings(&root, &out, 2, true), &method, &mut |_| true).unwrap();
    assert_eq!(report.resumed_at_epoch, Some(1));
    assert_eq!(report.steps_completed, 6);
    assert!(report.step_losses.iter().all(|l| l.is_finite()));
    // Steps 0, 2, 4 and the last (5) are monitored, the method's own monitor included.
    let steps: Vec<u64> = report.monitors.iter().map(|m| m.step).collect();
    assert_eq!(steps, [0, 2, 4, 5]);
    assert!(report
        .monitors
        .iter()
        .all(|m| m.method.contains_key("head_weight_norm")));
    // The exported encoder is a standard checkpoint whose provenance names the method.
    let (_, manifest, _vs) =
        amlmil::frozen::load_encoder(&report.encoder, tch::Device::Cpu).unwrap();
    assert_eq!(manifest.provenance.method, "rotation");
    // A built-in method cannot resume a state of this one.
    let err = amlmil::ssl::pretrain(&run_settings(&root, &out, 3, true), &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rotation") && err.contains("simclr"), "{err}");
}
