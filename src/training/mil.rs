//! One attention-MIL training run on cached features (DESIGN §2): SGD with
//! Nesterov momentum, per-epoch cosine annealing, gradients of `accumulate` bags
//! averaged (or, as SCEMILA's loop, summed) into one optimiser step (backward
//! per bag, step per N bags; a partial group at the end of an epoch is stepped
//! too, its mean taken over its own bags), the step's gradient norm optionally
//! clipped, at most
//! `max_cells` cells per bag drawn at random, a random flip variant per cell,
//! class-balanced bag sampling with replacement, and early stopping on the
//! validation loss that restores the best state.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

use super::config::{Accumulation, MilTrainConfig};
use crate::error::{Error, Result};
use crate::model::{AttentionMil, MilConfig};

/// One patient's cached feature maps and label.
#[derive(Debug)]
pub struct TrainBag {
    pub patient_id: String,
    pub label: usize,
    pub cell_ids: Vec<u64>,
    /// `[V, N, C, h, w]` (f16 or f32, CPU): V flip variants of the N cells.
    pub maps: Tensor,
}

impl TrainBag {
    pub fn num_cells(&self) -> usize {
        self.cell_ids.len()
    }

    /// All cells, unflipped, as f32 `[N, C, h, w]` on `device`.
    pub fn plain(&self, device: Device) -> Tensor {
        self.maps.get(0).to_device(device).to_kind(Kind::Float)
    }

    /// A training view: at most `max_cells` random cells, each in a random flip variant.
    fn sample(&self, max_cells: usize, flips: bool, rng: &mut impl Rng, device: Device) -> Tensor {
        let n = self.num_cells();
        let variants = if flips {
            self.maps.size()[0] as usize
        } else {
            1
        };
        let mut cells: Vec<usize> = (0..n).collect();
        if n > max_cells {
            // Partial Fisher–Yates: the first `max_cells` entries are a uniform subset.
            for i in 0..max_cells {
                let j = rng.random_range(i..n);
                cells.swap(i, j);
            }
            cells.truncate(max_cells);
        }
        let flat: Vec<i64> = cells
            .iter()
            .map(|&c| (rng.random_range(0..variants) * n + c) as i64)
            .collect();
        let size = self.maps.size();
        let all = self
            .maps
            .view([size[0] * size[1], size[2], size[3], size[4]]);
        all.index_select(0, &Tensor::from_slice(&flat))
            .to_device(device)
            .to_kind(Kind::Float)
    }
}

/// Draws training bags: with replacement and weight ∝ 1/class frequency (so every
/// class is drawn equally often on average), or a shuffled pass without replacement.
#[derive(Debug, Clone)]
pub struct BagSampler {
    bags: Vec<usize>,
    cumulative: Vec<f64>,
    balanced: bool,
}

impl BagSampler {
    /// `labels[i]` is the class of bag `bags[i]`.
    pub fn new(bags: &[usize], labels: &[usize], balanced: bool) -> Self {
        let classes = labels.iter().max().map_or(0, |m| m + 1);
        let mut freq = vec![0usize; classes];
        for &l in labels {
            freq[l] += 1;
        }
        let mut acc = 0.0;
        let cumulative = labels
            .iter()
            .map(|&l| {
                acc += 1.0 / freq[l] as f64;
                acc
            })
            .collect();
        BagSampler {
            bags: bags.to_vec(),
            cumulative,
            balanced,
        }
    }

    /// `count` bag indices for one epoch.
    pub fn draw(&self, count: usize, rng: &mut impl Rng) -> Vec<usize> {
        if self.bags.is_empty() {
            return Vec::new();
        }
        if self.balanced {
            let total = *self.cumulative.last().unwrap_or(&1.0);
            (0..count)
                .map(|_| {
                    let u = rng.random::<f64>() * total;
                    let i = self
                        .cumulative
                        .partition_point(|&c| c <= u)
                        .min(self.bags.len() - 1);
                    self.bags[i]
                })
                .collect()
        } else {
            let mut order = Vec::with_capacity(count);
            while order.len() < count {
                let mut pass = self.bags.clone();
                for i in (1..pass.len()).rev() {
                    pass.swap(i, rng.random_range(0..=i));
                }
                order.extend(pass);
            }
            order.truncate(count);
            order
        }
    }
}

/// One row of the learning curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub learning_rate: f64,
    /// Mean cross-entropy of the bags drawn this epoch.
    pub train_loss: f64,
    pub validation_loss: f64,
    pub validation_accuracy: f64,
    /// Optimiser steps so far.
    pub optimizer_steps: usize,
    pub bags_seen: usize,
}

/// What happened during training, for the C/CLI progress display.
#[derive(Debug, Clone, Copy)]
pub struct TrainEvent {
    pub epoch: usize,
    pub epochs: usize,
    /// Bags done in this epoch, of `bags`.
    pub bag: usize,
    pub bags: usize,
    /// Running mean training loss of this epoch.
    pub loss: f64,
}

/// The result of a run: the head in its best state and its history.
pub struct TrainedMil {
    pub mil: AttentionMil,
    pub vars: VarStore,
    pub curve: Vec<EpochRecord>,
    /// Epoch (0-based) whose state was kept.
    pub best_epoch: usize,
    pub best_validation_loss: f64,
    pub stopped_early: bool,
}

/// The MIL head configuration for features of shape `[C, s, s]`.
pub fn head_config(
    config: &MilTrainConfig,
    feature_map: [i64; 3],
    num_classes: usize,
) -> MilConfig {
    MilConfig {
        head: config.head.clone(),
        in_channels: feature_map[0],
        in_side: feature_map[1],
        num_classes: num_classes as i64,
    }
}

fn bag_loss(mil: &AttentionMil, maps: &Tensor, label: usize) -> Tensor {
    let out = mil.forward_bag(maps, true);
    let target = Tensor::from_slice(&[label as i64]).to_device(maps.device());
    out.logits.unsqueeze(0).cross_entropy_for_logits(&target)
}

/// Mean loss and accuracy over whole bags (unflipped, every cell).
pub fn evaluate(mil: &AttentionMil, bags: &[&TrainBag], device: Device) -> Result<(f64, f64)> {
    evaluate_standardized(mil, bags, device, None)
}

/// Per-channel mean and standard deviation of feature maps `[N, C, h, w]`.
struct Standardization {
    mean: Tensor,
    std: Tensor,
}

impl Standardization {
    /// Over every position of the unflipped cells of `bags`.
    fn of(bags: &[&TrainBag], device: Device) -> Result<Self> {
        let (mut sum, mut sq, mut count) = (None::<Tensor>, None::<Tensor>, 0i64);
        for bag in bags {
            let x = bag.plain(device).to_kind(Kind::Double);
            let s = x.f_sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Double)?;
            let q = x
                .square()
                .f_sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Double)?;
            let size = x.size();
            count += size[0] * size[2] * size[3];
            sum = Some(sum.map_or(s.shallow_clone(), |a| a + &s));
            sq = Some(sq.map_or(q.shallow_clone(), |a| a + &q));
        }
        let (sum, sq) = (sum.expect("bags checked non-empty"), sq.expect("non-empty"));
        let mean = &sum / count as f64;
        let var = (&sq / count as f64 - mean.square()).clamp_min(0.0);
        Ok(Standardization {
            mean: mean.to_kind(Kind::Float),
            std: var.sqrt().clamp_min(1e-6).to_kind(Kind::Float),
        })
    }

    fn apply(&self, maps: &Tensor) -> Tensor {
        let shape = [1, -1, 1, 1];
        (maps - self.mean.view(shape)) / self.std.view(shape)
    }

    /// Folds `x ↦ (x − μ) / σ` into the head's first layer (`g.0`, a linear
    /// layer or an unpadded convolution), so it takes raw features.
    fn fold_into(&self, vars: &VarStore) -> Result<()> {
        let all = vars.variables();
        let (w, b) = match (all.get("g.0.weight"), all.get("g.0.bias")) {
            (Some(w), Some(b)) => (w, b),
            _ => {
                return Err(Error::Mismatch(
                    "the head has no first layer g.0 to fold the feature standardization into"
                        .into(),
                ))
            }
        };
        tch::no_grad(|| -> Result<()> {
            let inv = self.std.reciprocal();
            let per_input: Vec<i64> = match w.dim() {
                2 => vec![1, -1],
                _ => vec![1, -1, 1, 1],
            };
            let scaled = w * inv.view(per_input.as_slice());
            // b' = b − Σ_c,… W'[o, c, …] μ_c
            let shift = (&scaled * self.mean.view(per_input.as_slice()))
                .flatten(1, -1)
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?;
            let _ = b.shallow_clone().f_sub_(&shift)?;
            w.shallow_clone().f_copy_(&scaled)?;
            Ok(())
        })
    }
}

fn evaluate_standardized(
    mil: &AttentionMil,
    bags: &[&TrainBag],
    device: Device,
    norm: Option<&Standardization>,
) -> Result<(f64, f64)> {
    let _g = tch::no_grad_guard();
    let mut loss = 0.0;
    let mut correct = 0usize;
    for bag in bags {
        let maps = bag.plain(device);
        let maps = norm.map_or(maps.shallow_clone(), |n| n.apply(&maps));
        let out = mil.forward_bag(&maps, false);
        let target = Tensor::from_slice(&[bag.label as i64]).to_device(device);
        loss += f64::try_from(out.logits.unsqueeze(0).cross_entropy_for_logits(&target))?;
        correct += (i64::try_from(out.logits.argmax(0, false))? as usize == bag.label) as usize;
    }
    let n = bags.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n))
}

/// Re-initialises every variable with PyTorch's default for `Linear` and `Conv2d`
/// (weights and biases uniform in ±1/√fan_in) from a private seeded stream, so a
/// run's start does not depend on libtorch's global generator, which other
/// threads of the process may be using.
pub fn init_seeded(vars: &VarStore, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let all = vars.variables();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let fan_in = |shape: &[i64]| shape.iter().skip(1).product::<i64>().max(1);
    tch::no_grad(|| -> Result<()> {
        for name in names {
            let var = &all[name];
            let shape = var.size();
            let fan = if let Some(prefix) = name.strip_suffix(".bias") {
                all.get(&format!("{prefix}.weight"))
                    .map_or(shape[0], |w| fan_in(&w.size()))
            } else {
                fan_in(&shape)
            };
            let bound = 1.0 / (fan as f64).sqrt();
            let values: Vec<f32> = (0..var.numel())
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            var.shallow_clone()
                .f_copy_(&Tensor::from_slice(&values).view(shape.as_slice()))?;
        }
        Ok(())
    })
}

/// libtorch's intra-op thread count for a scope, restored on drop (it is
/// process-wide: a session classifying on other threads meanwhile runs with it too).
struct CpuThreads(i32);

impl CpuThreads {
    fn set(threads: usize) -> Self {
        let before = tch::get_num_threads();
        tch::set_num_threads(threads as i32);
        CpuThreads(before)
    }
}

impl Drop for CpuThreads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

/// Trains a fresh head (seeded) on `train`, early-stopping on `validation`.
/// `progress` is called after every bag; returning `false` cancels.
pub fn train_mil(
    config: &MilTrainConfig,
    head: &MilConfig,
    train: &[&TrainBag],
    validation: &[&TrainBag],
    seed: u64,
    device: Device,
    progress: &mut dyn FnMut(&TrainEvent) -> bool,
) -> Result<TrainedMil> {
    config.validate()?;
    head.validate()?;
    if train.is_empty() || validation.is_empty() {
        return Err(Error::invalid(
            "train/validation",
            "both splits need at least one bag",
        ));
    }
    let _threads = (device == Device::Cpu).then(|| CpuThreads::set(config.cpu_threads));
    let vars = VarStore::new(device);
    let mil = AttentionMil::new(&vars.root(), head.clone());
    init_seeded(&vars, seed)?;
    let mut opt = tch::nn::Sgd {
        momentum: config.momentum,
        dampening: 0.0,
        wd: config.weight_decay,
        nesterov: config.nesterov,
    }
    .build(&vars, config.learning_rate)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed0f_ba65);
    let indices: Vec<usize> = (0..train.len()).collect();
    let labels: Vec<usize> = train.iter().map(|b| b.label).collect();
    let sampler = BagSampler::new(&indices, &labels, config.balanced_sampling);
    let per_epoch = config.bags_per_epoch.unwrap_or(train.len());
    let norm = if config.standardize_features {
        Some(Standardization::of(train, device)?)
    } else {
        None
    };

    let snapshot = |vars: &VarStore| -> Vec<(String, Tensor)> {
        vars.variables()
            .into_iter()
            .map(|(k, v)| (k, v.detach().copy()))
            .collect()
    };
    let mut best = (f64::INFINITY, 0usize, snapshot(&vars));
    let mut curve = Vec::new();
    let mut steps = 0usize;
    let mut stopped_early = false;
    for epoch in 0..config.epochs {
        let lr = config.learning_rate_at(epoch);
        opt.set_lr(lr);
        opt.zero_grad();
        let draws = sampler.draw(per_epoch, &mut rng);
        let mut loss_sum = 0.0;
        let mut pending = 0usize;
        for (i, &b) in draws.iter().enumerate() {
            // Bags in this step's group: `accumulate`, or what is left of the epoch.
            let group = config.accumulate.min(draws.len() - (i - pending));
            let bag = train[b];
            let maps = bag.sample(config.max_cells, config.flips, &mut rng, device);
            let maps = norm
                .as_ref()
                .map_or(maps.shallow_clone(), |n| n.apply(&maps));
            let loss = bag_loss(&mil, &maps, bag.label);
            let value = f64::try_from(&loss)?;
            if !value.is_finite() {
                return Err(Error::NonFinite(format!(
                    "training loss at epoch {epoch}, bag {} ({})",
                    i, bag.patient_id
                )));
            }
            match config.accumulation {
                Accumulation::Mean => (loss / group as f64).backward(),
                Accumulation::Sum => loss.backward(),
            }
            loss_sum += value;
            pending += 1;
            if pending == group {
                if let Some(max_norm) = config.max_grad_norm {
                    opt.clip_grad_norm(max_norm);
                }
                opt.step();
                opt.zero_grad();
                steps += 1;
                pending = 0;
            }
            let event = TrainEvent {
                epoch,
                epochs: config.epochs,
                bag: i + 1,
                bags: draws.len(),
                loss: loss_sum / (i + 1) as f64,
            };
            if !progress(&event) {
                return Err(Error::Cancelled(format!(
                    "training at epoch {epoch}, bag {} of {}",
                    i + 1,
                    draws.len()
                )));
            }
        }
        let (val_loss, val_acc) = evaluate_standardized(&mil, validation, device, norm.as_ref())?;
        curve.push(EpochRecord {
            epoch,
            learning_rate: lr,
            train_loss: loss_sum / draws.len().max(1) as f64,
            validation_loss: val_loss,
            validation_accuracy: val_acc,
            optimizer_steps: steps,
            bags_seen: (epoch + 1) * per_epoch,
        });
        log::info!(
            "epoch {epoch}: lr {lr:.5} train {:.4} val {val_loss:.4} acc {val_acc:.3}",
            curve[epoch].train_loss
        );
        if val_loss < best.0 {
            best = (val_loss, epoch, snapshot(&vars));
        } else if epoch - best.1 >= config.patience {
            stopped_early = true;
            break;
        }
    }
    // Restore the best state.
    let vs_vars = vars.variables();
    tch::no_grad(|| {
        for (name, value) in &best.2 {
            vs_vars[name].shallow_clone().copy_(value);
        }
    });
    if let Some(n) = &norm {
        n.fold_into(&vars)?;
    }
    Ok(TrainedMil {
        mil,
        vars,
        curve,
        best_epoch: best.1,
        best_validation_loss: best.0,
        stopped_early,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardization_folds_exactly_into_the_first_layer() {
        for (cell_net, side) in [
            (crate::model::CellNet::Pooled, 2),
            (crate::model::CellNet::default(), 5),
            (crate::model::CellNet::Scemila, 5),
        ] {
            let head = MilConfig {
                head: cell_net.into(),
                in_side: side,
                ..MilConfig::default()
            };
            let vars = VarStore::new(Device::Cpu);
            let mil = AttentionMil::new(&vars.root(), head);
            init_seeded(&vars, 3).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(4);
            let mut maps = |n: i64| {
                let v: Vec<f32> = (0..n * 512 * side * side)
                    .map(|_| rng.random_range(0.0..3.0))
                    .collect();
                Tensor::from_slice(&v).view([1, n, 512, side, side])
            };
            let bags: Vec<TrainBag> = (0..3)
                .map(|i| TrainBag {
                    patient_id: format!("p{i}"),
                    label: 0,
                    cell_ids: (0..7).collect(),
                    maps: maps(7) * (i + 1) as f64,
                })
                .collect();
            let refs: Vec<&TrainBag> = bags.iter().collect();
            let norm = Standardization::of(&refs, Device::Cpu).unwrap();
            let x = bags[1].plain(Device::Cpu);
            let want = tch::no_grad(|| mil.forward_bag(&norm.apply(&x), false));
            norm.fold_into(&vars).unwrap();
            let got = tch::no_grad(|| mil.forward_bag(&x, false));
            let diff = f64::try_from((&got.logits - &want.logits).abs().max()).unwrap();
            let att = f64::try_from((&got.attention - &want.attention).abs().max()).unwrap();
            assert!(diff < 1e-4 && att < 1e-5, "logits {diff}, attention {att}");
            let z = norm.apply(&Tensor::cat(
                &[bags[0].plain(Device::Cpu), x, bags[2].plain(Device::Cpu)],
                0,
            ));
            let m = f64::try_from(z.mean(Kind::Double).abs()).unwrap();
            assert!(m < 1e-4, "standardised mean {m}");
        }
    }

    #[test]
    fn balanced_sampler_draws_classes_equally_often() {
        // 8 bags of class 0, 2 of class 1, 1 of class 2.
        let labels = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2];
        let bags: Vec<usize> = (100..111).collect();
        let s = BagSampler::new(&bags, &labels, true);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let draws = s.draw(30_000, &mut rng);
        let mut per_class = [0usize; 3];
        for d in &draws {
            per_class[labels[d - 100]] += 1;
        }
        for c in per_class {
            let share = c as f64 / draws.len() as f64;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.01,
                "class share {share} in {per_class:?}"
            );
        }
        // Within a class, bags are equally likely (with replacement: the lone class-2 bag repeats).
        assert!(draws.iter().filter(|&&d| d == 110).count() > 9000);
    }

    #[test]
    fn unbalanced_sampler_is_a_shuffled_pass() {
        let bags = [3, 4, 5, 6];
        let s = BagSampler::new(&bags, &[0, 0, 1, 1], false);
        let mut d = s.draw(4, &mut ChaCha8Rng::seed_from_u64(2));
        d.sort();
        assert_eq!(d, bags);
    }

    #[test]
    fn sampled_bags_respect_max_cells_and_flip_variants() {
        let maps = Tensor::arange(4 * 10, (Kind::Float, Device::Cpu)).view([4, 10, 1, 1, 1]);
        let bag = TrainBag {
            patient_id: "p".into(),
            label: 0,
            cell_ids: (0..10).collect(),
            maps,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = bag.sample(6, true, &mut rng, Device::Cpu);
        assert_eq!(x.size(), [6, 1, 1, 1]);
        let vals = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
        let mut cells: Vec<usize> = vals.iter().map(|v| *v as usize % 10).collect();
        cells.sort();
        cells.dedup();
        assert_eq!(cells.len(), 6, "cells are drawn without repetition");
        let variants: std::collections::HashSet<usize> = (0..50)
            .flat_map(|_| {
                Vec::<f32>::try_from(bag.sample(10, true, &mut rng, Device::Cpu).flatten(0, -1))
                    .unwrap()
            })
            .map(|v| v as usize / 10)
            .collect();
        assert_eq!(variants.len(), 4, "all flip variants are used");
        let plain =
            Vec::<f32>::try_from(bag.sample(10, false, &mut rng, Device::Cpu).flatten(0, -1))
                .unwrap();
        assert!(
            plain.iter().all(|v| *v < 10.0),
            "without flips only variant 0"
        );
    }
}
