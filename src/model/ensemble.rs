//! A MIL checkpoint's heads: one attention-MIL head, or the K ≥ 2 heads of a
//! cross-validation deployed together (as nnU-Net ships its folds).
//!
//! The heads share the encoder and the classes. A bag's instance vectors are
//! every head's `z` side by side (`[N, K·k′]`), so streaming bags and
//! precomputed features work unchanged; the outputs are combined as
//!
//! * probabilities: the mean of the heads' class probabilities;
//! * logits: `ln` of those probabilities (so their softmax gives them back),
//!   a probability that underflowed to 0 taken as the smallest normal f32 so
//!   that the logits stay finite;
//! * attention: for every class, the mean of the heads' attention over the
//!   cells (each head's row sums to 1, so the mean's does too); raw attention:
//!   the mean of the heads' scores before their softmax.
//!
//! One head is used as it is: its logits, probabilities and attention exactly.
//! Head `k` of an ensemble checkpoint stores its tensors under `heads.k.`.
use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::mil::{AttentionMil, MilConfig, MilOutput};

/// The heads of one MIL checkpoint.
#[derive(Debug)]
pub struct MilHeads {
    heads: Vec<AttentionMil>,
}

impl MilHeads {
    /// `count` heads of `config` under `p` (one head — also for `count` 0 — at
    /// `p` itself, as a single-head checkpoint names its tensors; more: under `heads.k`).
    pub fn new(p: &nn::Path, config: &MilConfig, count: usize) -> Self {
        let heads = match count.max(1) {
            1 => vec![AttentionMil::new(p, config.clone())],
            n => (0..n)
                .map(|k| AttentionMil::new(&(p / "heads" / k), config.clone()))
                .collect(),
        };
        MilHeads { heads }
    }

    /// The tensor-name prefix of head `k` of `count`.
    pub fn prefix(k: usize, count: usize) -> String {
        if count == 1 {
            String::new()
        } else {
            format!("heads.{k}.")
        }
    }

    /// The head of a single-head checkpoint (`None` for an ensemble).
    pub fn into_single(mut self) -> Option<AttentionMil> {
        (self.heads.len() == 1).then(|| self.heads.remove(0))
    }

    pub fn heads(&self) -> &[AttentionMil] {
        &self.heads
    }

    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    pub fn config(&self) -> &MilConfig {
        self.heads[0].config()
    }

    /// Width of a cell's instance vector: k′ per head.
    pub fn instance_width(&self) -> i64 {
        self.config().head.instance_dim * self.heads.len() as i64
    }

    /// Every head's instance vectors side by side, `[N, K·k′]`.
    pub fn instances(&self, feature_maps: &Tensor, train: bool) -> Tensor {
        self.combine_instances(self.heads.iter().map(|h| h.instances(feature_maps, train)))
    }

    /// Per-head instance vectors (each `[N, k′]`) side by side.
    pub fn combine_instances(&self, per_head: impl Iterator<Item = Tensor>) -> Tensor {
        let parts: Vec<Tensor> = per_head.collect();
        if parts.len() == 1 {
            return parts.into_iter().next().expect("one part");
        }
        Tensor::cat(&parts, 1)
    }

    /// The combined outputs for one bag of feature maps `[N, C_in, s, s]`.
    pub fn forward_bag(&self, feature_maps: &Tensor, train: bool) -> MilOutput {
        combine(
            self.heads
                .iter()
                .map(|h| h.forward_bag(feature_maps, train))
                .collect(),
        )
    }

    /// The combined outputs for instance vectors `[N, K·k′]`.
    pub fn forward_instances(&self, z: &Tensor) -> Result<MilOutput> {
        if self.heads.len() == 1 {
            return Ok(self.heads[0].forward_instances(z));
        }
        let k = self.config().head.instance_dim;
        if z.size().get(1) != Some(&self.instance_width()) {
            return Err(Error::invalid(
                "instances",
                format!(
                    "shape {:?}, expected [N, {}] for {} heads",
                    z.size(),
                    self.instance_width(),
                    self.heads.len()
                ),
            ));
        }
        let outs = self
            .heads
            .iter()
            .enumerate()
            .map(|(i, h)| h.forward_instances(&z.narrow(1, i as i64 * k, k)))
            .collect();
        Ok(combine(outs))
    }
}

/// One head's outputs as they are; several heads' averaged (module docs).
fn combine(mut outs: Vec<MilOutput>) -> MilOutput {
    if outs.len() == 1 {
        return outs.remove(0);
    }
    let mean = |f: &dyn Fn(&MilOutput) -> &Tensor| -> Tensor {
        let parts: Vec<Tensor> = outs.iter().map(|o| f(o).to_kind(Kind::Float)).collect();
        Tensor::stack(&parts, 0).mean_dim(0, false, Kind::Float)
    };
    let probabilities = mean(&|o| &o.probabilities);
    MilOutput {
        logits: probabilities.clamp_min(f32::MIN_POSITIVE as f64).log(),
        probabilities,
        attention_raw: mean(&|o| &o.attention_raw),
        attention: mean(&|o| &o.attention),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CellNet, MilHeadConfig};
    use tch::{Device, Kind};

    fn config() -> MilConfig {
        MilConfig {
            head: MilHeadConfig {
                cell_net: CellNet::Pooled,
                instance_dim: 6,
                attention_dim: 4,
                classifier_dim: 3,
            },
            in_channels: 8,
            in_side: 2,
            num_classes: 3,
        }
    }

    #[test]
    fn an_ensemble_averages_its_heads_and_one_head_is_itself() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let three = MilHeads::new(&vs.root(), &config(), 3);
        let maps = Tensor::randn([7, 8, 2, 2], (Kind::Float, Device::Cpu));
        let z = three.instances(&maps, false);
        assert_eq!(z.size(), [7, 18]);
        let out = three.forward_instances(&z).unwrap();
        let singles: Vec<MilOutput> = three
            .heads()
            .iter()
            .map(|h| h.forward_bag(&maps, false))
            .collect();
        let mean = |f: &dyn Fn(&MilOutput) -> &Tensor| {
            singles
                .iter()
                .map(f)
                .fold(Tensor::zeros_like(f(&singles[0])), |a, t| a + t)
                / 3.0
        };
        let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) < 1e-6;
        assert!(close(&out.probabilities, &mean(&|o| &o.probabilities)));
        assert!(close(&out.attention, &mean(&|o| &o.attention)));
        assert!(close(&out.attention_raw, &mean(&|o| &o.attention_raw)));
        assert!(close(
            &out.logits.softmax(0, Kind::Float),
            &out.probabilities
        ));
        let rows = out
            .attention
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        assert!(close(&rows, &Tensor::ones([3], (Kind::Float, Device::Cpu))));
        // The heads are distinct (seeded apart), so the mean is not any one of them.
        assert!(!close(&singles[0].probabilities, &singles[1].probabilities));
        assert!(three.forward_instances(&z.narrow(1, 0, 6)).is_err());

        // Probabilities that underflowed to 0 in every head keep finite logits.
        let zero = |p: [f32; 3]| MilOutput {
            logits: Tensor::zeros([3], (Kind::Float, Device::Cpu)),
            probabilities: Tensor::from_slice(&p),
            attention_raw: Tensor::zeros([3, 1], (Kind::Float, Device::Cpu)),
            attention: Tensor::ones([3, 1], (Kind::Float, Device::Cpu)),
        };
        let c = combine(vec![zero([1.0, 0.0, 0.0]), zero([0.5, 0.5, 0.0])]);
        assert_eq!(i64::try_from(c.logits.isfinite().all()).unwrap(), 1);
        assert!(close(&c.logits.softmax(0, Kind::Float), &c.probabilities));

        let vs1 = nn::VarStore::new(Device::Cpu);
        let one = MilHeads::new(&vs1.root(), &config(), 1);
        let o = one.forward_instances(&one.instances(&maps, false)).unwrap();
        let direct = one.heads()[0].forward_bag(&maps, false);
        assert!(close(&o.logits, &direct.logits));
        assert!(vs1.variables().keys().all(|k| !k.starts_with("heads.")));
        assert!(vs.variables().keys().all(|k| k.starts_with("heads.")));
    }
}
