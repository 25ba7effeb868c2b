//! Activation checkpointing of the encoder for pre-training (the paper uses it
//! to fit batch 512 on one GPU): the training forward pass keeps only the input
//! of each segment — the stem and every basic block — and runs without an
//! autograd graph; once the loss has been back-propagated to the encoder's
//! output, [`Recompute::backward`] walks the segments from the last to the first,
//! recomputes each from its saved input with a graph and back-propagates
//! through it. Activation memory falls from every layer's to the segment
//! boundaries' plus one block's, at the cost of a second forward pass.
//!
//! The gradients are those of the plain pass: batch norm recomputes with the
//! same batch statistics, and its running statistics, updated once in the first
//! pass, are put back after each recomputation, so they move exactly once per
//! forward. Mixed precision recomputes under the same autocast as the first pass.
//! libtorch's C API has no `torch.utils.checkpoint`: the backward through each
//! segment is the vector-Jacobian product of `sum(segment(x) · grad)`.
use parking_lot::Mutex;
use tch::{Kind, Tensor};

use crate::error::Result;
use crate::model::Encoder;

/// The segment inputs of the training forward passes since the last backward.
#[derive(Debug, Default)]
pub struct Recompute {
    /// Whether the forward passes run under fp16 autocast (mixed precision).
    amp: bool,
    pending: Mutex<Vec<Pending>>,
}

#[derive(Debug)]
struct Pending {
    /// The input of every segment, in order (the images first).
    inputs: Vec<Tensor>,
    /// The encoder's output as handed on: a leaf whose gradient starts the walk.
    output: Tensor,
    train: bool,
}

impl Recompute {
    /// Checkpointing for forward passes under fp16 autocast when `amp`.
    pub fn new(amp: bool) -> Self {
        Recompute {
            amp,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// The feature map of `xs` without a graph through the encoder; its
    /// gradient reaches the encoder's parameters at [`Recompute::backward`].
    pub(super) fn forward(&self, encoder: &Encoder, xs: &Tensor, train: bool) -> Tensor {
        let mut inputs = Vec::with_capacity(encoder.segments());
        let mut y = xs.shallow_clone();
        tch::no_grad(|| {
            for i in 0..encoder.segments() {
                let next = encoder.segment(i, &y, train);
                inputs.push(std::mem::replace(&mut y, next));
            }
        });
        let output = y.detach().set_requires_grad(true);
        self.pending.lock().push(Pending {
            inputs,
            output: output.shallow_clone(),
            train,
        });
        output
    }

    /// Back-propagates the gradients that reached the outputs of the forward
    /// passes since the last call through `encoder`, accumulating into its
    /// parameters' gradients; forgets those passes.
    pub fn backward(&self, encoder: &Encoder) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending.lock());
        for pass in pending.into_iter().rev() {
            let mut grad = pass.output.grad();
            if !grad.defined() {
                continue; // the loss does not depend on this pass
            }
            for (i, saved) in pass.inputs.iter().enumerate().rev() {
                let x = saved.detach().set_requires_grad(i > 0);
                let stats = encoder.segment_running_stats(i);
                let before: Vec<Tensor> = stats.iter().map(|t| t.copy()).collect();
                let y = tch::with_grad(|| {
                    tch::autocast(self.amp, || encoder.segment(i, &x, pass.train))
                });
                y.f_mul(&grad.f_to_kind(y.kind())?)?
                    .f_sum(Kind::Float)?
                    .f_backward()?;
                // After the backward: batch norm's graph holds the statistics'
                // tensors, and an in-place write before would invalidate it.
                tch::no_grad(|| -> Result<()> {
                    for (mut t, b) in stats.into_iter().zip(&before) {
                        t.f_copy_(b)?;
                    }
                    Ok(())
                })?;
                if i > 0 {
                    grad = x.grad();
                }
            }
        }
        Ok(())
    }

    /// Forgets the forward passes since the last backward (a step that failed).
    pub fn clear(&self) {
        self.pending.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EncoderArch;
    use tch::nn::{ModuleT, VarStore};
    use tch::Device;

    /// Two encoders with the same weights, the second checkpointed.
    fn pair() -> (VarStore, Encoder, VarStore, Encoder) {
        tch::manual_seed(3);
        let a_vs = VarStore::new(Device::Cpu);
        let a = Encoder::new(&a_vs.root(), EncoderArch::ResNet18);
        let mut b_vs = VarStore::new(Device::Cpu);
        let b = Encoder::new(&b_vs.root(), EncoderArch::ResNet18)
            .with_recompute(std::sync::Arc::new(Recompute::new(false)));
        b_vs.copy(&a_vs).unwrap();
        (a_vs, a, b_vs, b)
    }

    /// A loss of two views through separate forward passes, as multi-crop
    /// methods make, whose gradient is not uniform over the features.
    fn loss(encoder: &Encoder, views: &[Tensor]) -> Tensor {
        let f0 = encoder.forward_t(&views[0], true);
        let f1 = encoder.forward_t(&views[1], true);
        (&f0 * &f1).sum(Kind::Float) / 7.0 + f0.pow_tensor_scalar(2).mean(Kind::Float)
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let scale = a.abs().max().double_value(&[]).max(1e-12);
        (a - b).abs().max().double_value(&[]) / scale
    }

    #[test]
    fn checkpointed_gradients_and_running_statistics_equal_the_plain_pass() {
        let (a_vs, a, b_vs, b) = pair();
        tch::manual_seed(4);
        let views = [
            Tensor::randn([4, 3, 48, 48], (Kind::Float, Device::Cpu)),
            Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)),
        ];
        let la = loss(&a, &views);
        la.backward();
        let lb = loss(&b, &views);
        lb.backward();
        // Checkpointed: the loss's backward stops at the encoder's output.
        let stem = &b_vs.variables()["conv1.weight"];
        assert!(!stem.grad().defined() || stem.grad().abs().max().double_value(&[]) == 0.0);
        assert_eq!(b.recompute.as_ref().unwrap().pending.lock().len(), 2);
        b.backward_recomputed().unwrap();
        assert!((la.double_value(&[]) - lb.double_value(&[])).abs() < 1e-6);
        let bv = b_vs.variables();
        let mut checked = 0;
        for (name, va) in a_vs.variables() {
            let vb = &bv[&name];
            if va.requires_grad() {
                let d = max_rel_diff(&va.grad(), &vb.grad());
                assert!(d < 1e-5, "{name}: gradients differ by {d:e} (relative)");
            } else {
                // Running statistics: updated once per forward in both.
                assert!(max_rel_diff(&va, vb) < 1e-6, "{name} moved differently");
            }
            checked += 1;
        }
        assert_eq!(
            checked, 100,
            "ResNet18: 60 parameters and 40 running statistics"
        );
    }

    #[test]
    fn evaluation_and_no_grad_passes_are_not_checkpointed() {
        let (_a_vs, a, _b_vs, b) = pair();
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let eval = b.forward_t(&x, false);
        assert!(max_rel_diff(&a.forward_t(&x, false), &eval) < 1e-6);
        let _ = tch::no_grad(|| b.forward_t(&x, true));
        let recompute = b.recompute.as_ref().unwrap();
        assert!(recompute.pending.lock().is_empty());
    }
}
