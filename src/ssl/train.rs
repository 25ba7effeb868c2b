//! The pre-training loop of the cell encoder (DESIGN.md §2): SimCLR, SwAV, DINO
//! or the supervised cell-type baseline on all cells of a data set, with
//! per-epoch checkpoints and exact resumption.
//!
//! The loop is [`pretrain`]; its parts sit beside it: the configuration and
//! presets in [`config`](crate::ssl::config), the decoded cells and the views in
//! [`data`](crate::ssl::data), each method's step (model, heads, teacher,
//! optimiser) in [`step`](crate::ssl::step), the checkpoints and the resumable
//! state in [`state`](crate::ssl::state), and the seeded random streams in
//! [`seed`](crate::ssl::seed). What those define for other code is re-exported
//! here.
//!
//! **Deviations**, stated once: SwAV's and SimCLR's LARC here uses apex's *clip*
//! mode and leaves biases and 1-D parameters out of weight decay and adaptation
//! (SimCLR's LARS does; SwAV's reference clips nothing and adapts all; both are
//! [`SgdConfig`] switches). DINO exports the **teacher** encoder (DINO evaluates
//! the teacher); the others the student. Mixed precision (`mixed_precision`,
//! CUDA only) autocasts the forward passes to fp16 with dynamic loss scaling
//! ([`GradScaler`]); losses and Sinkhorn codes see fp32 where autocast's op
//! lists put them. No activation checkpointing. Epoch counts of the `paper`
//! preset (500 for the self-supervised methods, 100 for supervised) follow
//! SwAV's 500 of DESIGN.md §2; the paper gives no others.
//!
//! [`SgdConfig`]: crate::ssl::optim::SgdConfig
//! [`GradScaler`]: crate::ssl::optim::GradScaler
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::dataset::{Dataset, OpenOptions};
use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderArch, Recompute};
use crate::ssl::data::{produce_batches, Batch, PREFETCH_BATCHES};
use crate::ssl::dino::clip_gradients;
use crate::ssl::method::{Method, StepAt};
use crate::ssl::monitor::{step_monitor, ProbeCells, ProbeMonitor, StepMonitor};
use crate::ssl::schedule;
use crate::ssl::state::{read_state, save_epoch, StateMeta, STATE_FORMAT_VERSION};
use crate::ssl::step::{Model, Optimizer};

pub use crate::ssl::config::{PretrainConfig, SslMethod};
pub use crate::ssl::data::{decode_cells, normalize_views, to_unit_float, CellCache};
pub use crate::ssl::seed::{init_seeded, seeded_encoder, stream_seed};
pub use crate::ssl::state::{ENCODER_FILE, STATE_FILE, STATE_KEY};

/// Where a run is, reported after every step and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PretrainStage {
    /// Decoding images: `done` of `total` cells.
    Decode,
    /// A training step: `done` of `total` steps of the epoch.
    Step,
    /// An epoch ended and its checkpoint is written: `done` of `total` epochs.
    Epoch,
}

impl PretrainStage {
    pub fn name(self) -> &'static str {
        match self {
            PretrainStage::Decode => "decode",
            PretrainStage::Step => "pretrain",
            PretrainStage::Epoch => "pretrain-epoch",
        }
    }
}

/// A progress report; the callback returns `false` to cancel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PretrainEvent {
    pub stage: PretrainStage,
    /// 0-based epoch.
    pub epoch: u64,
    pub epochs: u64,
    pub done: u64,
    pub total: u64,
    /// Mean loss of the epoch so far (NaN while decoding).
    pub loss: f64,
    /// Training images per second in this epoch (0 while decoding).
    pub images_per_second: f64,
}

/// One epoch of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub mean_loss: f64,
    /// Learning rate of the epoch's last step.
    pub learning_rate: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// The result of [`pretrain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainReport {
    /// The method's name (`simclr`).
    pub method: String,
    pub preset: String,
    pub architecture: EncoderArch,
    pub image_size: i64,
    pub cells: usize,
    pub steps_per_epoch: u64,
    pub epochs_completed: u64,
    pub steps_completed: u64,
    /// Epochs that were already done in the state this run resumed from.
    pub resumed_at_epoch: Option<u64>,
    pub encoder: PathBuf,
    pub state: PathBuf,
    /// Every epoch of the run, resumed ones included.
    pub history: Vec<EpochRecord>,
    /// The loss of every step, resumed ones included.
    pub step_losses: Vec<f64>,
    /// Cell types in classifier order (supervised only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_types: Option<Vec<String>>,
    /// The monitors of every monitored step ([`crate::ssl::monitor`]).
    #[serde(default)]
    pub monitors: Vec<StepMonitor>,
    /// The k-NN probes of cell type and patient during the run.
    #[serde(default)]
    pub probes: Vec<ProbeMonitor>,
    /// The patients whose cells the run trained on, sorted.
    #[serde(default)]
    pub patients: Vec<String>,
}

/// Pre-trains an encoder as `config` says (see the module docs). `progress` sees
/// decoding, every step and every finished epoch; returning `false` cancels with
/// [`Error::Cancelled`], keeping the checkpoint of the last finished epoch.
pub fn pretrain(
    config: &PretrainConfig,
    progress: &mut dyn FnMut(&PretrainEvent) -> bool,
) -> Result<PretrainReport> {
    pretrain_method(config, config.method(), progress)
}

/// [`pretrain`] of any [`Method`] with the run settings of `config` (whose own
/// method section is then only recorded, not trained): the loop's one seam.
pub fn pretrain_method(
    config: &PretrainConfig,
    method: &dyn Method,
    progress: &mut dyn FnMut(&PretrainEvent) -> bool,
) -> Result<PretrainReport> {
    config.validate()?;
    method.check(&config.run_settings())?;
    // Under torchrun (or any launcher that sets RANK, WORLD_SIZE, …) the ranks
    // share each global batch of `batch_size`; rank 0 writes every file.
    let group = crate::distributed::init_from_env()?.filter(|g| g.world_size() > 1);
    if let Some(g) = group {
        if config.batch_size % g.world_size() != 0 {
            return Err(Error::invalid(
                "batch_size",
                format!(
                    "the global batch of {} does not split over WORLD_SIZE {} ranks",
                    config.batch_size,
                    g.world_size()
                ),
            ));
        }
    }
    let _sync_bn =
        crate::distributed::set_sync_batch_norm(config.sync_batch_norm && group.is_some());
    let writer = group.map_or(true, |g| g.is_writer());
    let device = match (config.device.resolve()?, group) {
        (Device::Cuda(_), Some(g)) => Device::Cuda(g.launch().local_rank),
        (d, _) => d,
    };
    if writer {
        std::fs::create_dir_all(&config.output)
            .map_err(|e| Error::io("cannot create", &config.output, e))?;
        // Half-written checkpoints of a killed run (the complete ones are intact).
        crate::io::remove_stale_temps(&config.output)?;
    }
    let state_path = config.output.join(STATE_FILE);
    let saved = if config.resume && state_path.exists() {
        Some(read_state(&state_path, config, method.name())?)
    } else {
        if state_path.exists() && writer {
            log::warn!(
                "{} exists and `resume` is false: starting over and replacing it",
                state_path.display()
            );
        }
        None
    };
    let cells = TrainingCells::load(config, method, progress)?;
    let n = cells.cache.images.size()[0] as usize;
    let steps_per_epoch = config
        .steps_per_epoch
        .unwrap_or((n / config.batch_size) as u64);
    let num_types = cells.types.as_ref().map_or(0, Vec::len);
    let amp = config.mixed_precision && device.is_cuda();
    let model = Model::new(
        method,
        config.architecture,
        config.seed,
        device,
        num_types,
        &cells.labels,
        config.activation_checkpointing.then(|| Recompute::new(amp)),
        group,
    )?;
    if config.mixed_precision && !amp {
        log::warn!(
            "mixed_precision applies on CUDA only: training in fp32 on {}",
            crate::device::device_name(device)
        );
    }
    let optimizer = Optimizer::new(config, model.params(), amp)?;
    let probe_cells = if config.monitor.probe_every_epochs > 0 && writer {
        Some(ProbeCells::load(
            &config.monitor,
            config.image_size,
            config.normalization,
        )?)
    } else {
        None
    };
    let mut run = Run {
        config,
        method,
        method_name: method.name(),
        device,
        amp,
        model,
        optimizer,
        meta: StateMeta {
            format_version: STATE_FORMAT_VERSION,
            method: method.name().to_owned(),
            architecture: config.architecture,
            epochs_completed: 0,
            steps_completed: 0,
            steps_per_epoch,
            cells: n,
            rng: "ChaCha8 streams seeded per (seed, purpose, epoch, step) with splitmix64; \
                  no generator state is carried between steps"
                .into(),
            history: Vec::new(),
            step_losses: Vec::new(),
            monitors: Vec::new(),
            probes: Vec::new(),
            config: config.clone(),
        },
        probe_cells,
        cell_types: cells.types.clone(),
        group,
    };
    let resumed_at_epoch = match saved {
        Some((saved, tensors)) => Some(run.resume(saved, tensors, &state_path)?),
        None => None,
    };
    run.train(&cells, progress)?;
    let meta = run.meta;
    Ok(PretrainReport {
        method: method.name().to_owned(),
        preset: config.preset.clone(),
        architecture: config.architecture,
        image_size: config.image_size,
        cells: n,
        steps_per_epoch,
        epochs_completed: meta.epochs_completed,
        steps_completed: meta.steps_completed,
        resumed_at_epoch,
        encoder: config.output.join(ENCODER_FILE),
        state: state_path,
        history: meta.history,
        step_losses: meta.step_losses,
        patients: cells.patients(),
        cell_types: cells.types,
        monitors: meta.monitors,
        probes: meta.probes,
    })
}

/// The cells a run trains on, decoded once, with their class indices when the
/// method trains on cell types.
struct TrainingCells {
    cache: CellCache,
    labels: Vec<i64>,
    /// Cell types in classifier order.
    types: Option<Vec<String>>,
}

impl TrainingCells {
    /// The patients of the cells, sorted.
    fn patients(&self) -> Vec<String> {
        let ids: std::collections::BTreeSet<&String> =
            self.cache.ids.iter().map(|(p, _)| p).collect();
        ids.into_iter().cloned().collect()
    }

    fn load(
        config: &PretrainConfig,
        method: &dyn Method,
        progress: &mut dyn FnMut(&PretrainEvent) -> bool,
    ) -> Result<Self> {
        let (dataset, _) = Dataset::open(&config.dataset, &OpenOptions::fail())?;
        // The per-fold protocol: only the fold's training patients are seen.
        let dataset = match &config.patients {
            Some(ids) => dataset.only_patients(ids)?,
            None => dataset,
        };
        let typed = method.needs_cell_types();
        if typed && !dataset.has_cell_types() {
            return Err(Error::Dataset {
                path: config.dataset.clone(),
                reason: format!(
                    "{} pre-training needs cell types in cells.csv",
                    method.name()
                ),
            });
        }
        let cache = decode_cells(
            &dataset,
            config.image_size,
            config.max_cells,
            typed,
            config.seed,
            config.decode_threads,
            &mut |done, total| {
                progress(&PretrainEvent {
                    stage: PretrainStage::Decode,
                    epoch: 0,
                    epochs: config.epochs,
                    done: done as u64,
                    total: total as u64,
                    loss: f64::NAN,
                    images_per_second: 0.0,
                })
            },
        )?;
        let n = cache.images.size()[0] as usize;
        if n < config.batch_size {
            return Err(Error::invalid(
                "batch_size",
                format!(
                    "{} exceeds the {n} usable cells of the data set",
                    config.batch_size
                ),
            ));
        }
        if !typed {
            return Ok(TrainingCells {
                cache,
                labels: Vec::new(),
                types: None,
            });
        }
        let mut types: Vec<String> = cache.cell_types.iter().flatten().cloned().collect();
        types.sort();
        types.dedup();
        let labels = cache
            .cell_types
            .iter()
            .map(|t| {
                let t = t.as_deref().unwrap_or_default();
                types.binary_search_by(|x| x.as_str().cmp(t)).unwrap_or(0) as i64
            })
            .collect();
        Ok(TrainingCells {
            cache,
            labels,
            types: Some(types),
        })
    }
}

/// A run in progress: the model, its optimiser and the state that is saved.
struct Run<'a> {
    config: &'a PretrainConfig,
    method: &'a dyn Method,
    method_name: &'static str,
    device: Device,
    amp: bool,
    model: Model,
    optimizer: Optimizer,
    meta: StateMeta,
    probe_cells: Option<ProbeCells>,
    cell_types: Option<Vec<String>>,
    /// The ranks of a data-parallel run (`None`: one process).
    group: Option<&'static crate::distributed::Group>,
}

impl Run<'_> {
    /// Restores a saved state; returns the epochs it had completed.
    fn resume(
        &mut self,
        saved: StateMeta,
        mut tensors: BTreeMap<String, Tensor>,
        path: &Path,
    ) -> Result<u64> {
        if saved.steps_per_epoch != self.meta.steps_per_epoch || saved.cells != self.meta.cells {
            return Err(Error::invalid(
                "resume",
                format!(
                    "{} has {} steps per epoch over {} cells; this configuration gives {} over {}",
                    path.display(),
                    saved.steps_per_epoch,
                    saved.cells,
                    self.meta.steps_per_epoch,
                    self.meta.cells
                ),
            ));
        }
        self.model.load(&mut tensors, path)?;
        let opt_state: BTreeMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, t)| match k.strip_prefix("optimizer.") {
                Some(rest) => Ok((rest.to_owned(), t)),
                None => Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor `{k}` belongs to no part of a {} run",
                        self.method_name
                    ),
                )),
            })
            .collect::<Result<_>>()?;
        self.optimizer.load_state(&opt_state)?;
        let m = &mut self.meta;
        m.epochs_completed = saved.epochs_completed;
        m.steps_completed = saved.steps_completed;
        m.history = saved.history;
        m.step_losses = saved.step_losses;
        m.monitors = saved.monitors;
        m.probes = saved.probes;
        log::info!(
            "resuming {} at epoch {} (step {})",
            path.display(),
            m.epochs_completed,
            m.steps_completed
        );
        Ok(saved.epochs_completed)
    }

    /// Trains the remaining epochs. Views are made one or two steps ahead by a
    /// thread of their own (on the training device), so the model does not
    /// wait on augmentation.
    fn train(
        &mut self,
        cells: &TrainingCells,
        progress: &mut dyn FnMut(&PretrainEvent) -> bool,
    ) -> Result<()> {
        let config = self.config;
        let first_epoch = self.meta.epochs_completed;
        let steps_per_epoch = self.meta.steps_per_epoch;
        let device = self.device;
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH_BATCHES);
            let images = cells.cache.images.shallow_clone();
            let labels = &cells.labels;
            let method = self.method;
            let shard = self.group.map(|g| (g.rank(), g.world_size()));
            scope.spawn(move || {
                produce_batches(
                    config,
                    method,
                    &images,
                    labels,
                    first_epoch,
                    steps_per_epoch,
                    (device, shard),
                    &tx,
                )
            });
            for epoch in first_epoch..config.epochs {
                let record = self.epoch(epoch, &rx, progress)?;
                self.end_epoch(record, progress)?;
            }
            Ok(())
        })
    }

    /// The steps of one epoch.
    fn epoch(
        &mut self,
        epoch: u64,
        batches: &std::sync::mpsc::Receiver<Result<Batch>>,
        progress: &mut dyn FnMut(&PretrainEvent) -> bool,
    ) -> Result<EpochRecord> {
        let config = self.config;
        let steps_per_epoch = self.meta.steps_per_epoch;
        let batch = config.batch_size as f64;
        let started = Instant::now();
        let mut loss_sum = 0.0;
        let mut lr = 0.0;
        for i in 0..steps_per_epoch {
            let step = epoch * steps_per_epoch + i;
            let b = batches.recv().map_err(|_| Error::Dataset {
                path: config.dataset.clone(),
                reason: format!("the view thread stopped before step {step}"),
            })??;
            debug_assert_eq!(b.step, step);
            let (value, step_lr) = self.step(epoch, step, &b)?;
            lr = step_lr;
            loss_sum += value;
            let secs = started.elapsed().as_secs_f64();
            let event = PretrainEvent {
                stage: PretrainStage::Step,
                epoch,
                epochs: config.epochs,
                done: i + 1,
                total: steps_per_epoch,
                loss: loss_sum / (i + 1) as f64,
                images_per_second: ((i + 1) as f64 * batch) / secs.max(1e-9),
            };
            if !progress(&event) {
                return Err(Error::Cancelled(format!(
                    "pre-training at epoch {epoch}, step {} of {steps_per_epoch}; the checkpoint \
                     of epoch {} is kept",
                    i + 1,
                    self.meta.epochs_completed
                )));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(EpochRecord {
            epoch,
            mean_loss: loss_sum / steps_per_epoch as f64,
            learning_rate: lr,
            seconds,
            images_per_second: (steps_per_epoch as f64 * batch) / seconds.max(1e-9),
        })
    }

    /// One optimiser step; returns the loss and the learning rate.
    fn step(&mut self, epoch: u64, step: u64, batch: &Batch) -> Result<(f64, f64)> {
        let config = self.config;
        let total_steps = self.meta.steps_per_epoch * config.epochs;
        let lr = schedule::learning_rate(
            step,
            config.peak_learning_rate(),
            config.final_learning_rate,
            config.warmup_epochs * self.meta.steps_per_epoch,
            total_steps,
        );
        let wd = schedule::weight_decay(
            step,
            config.weight_decay,
            config.weight_decay_end,
            total_steps,
        );
        let every = config.monitor.every_steps;
        let at = StepAt {
            epoch,
            step,
            total_steps,
            monitor: every > 0 && (step % every == 0 || step + 1 == total_steps),
        };
        let model = &mut self.model;
        let out = tch::autocast(self.amp, || model.loss(&batch.views, &batch.indices, at))?;
        let mut value = out.loss.f_double_value(&[])?;
        if let Some(g) = self.group {
            g.check_pending()?;
            // Every rank sees (and stops on) the global batch's loss.
            value = g.mean_scalar(value, "averaging the loss")?;
        }
        if !value.is_finite() {
            return Err(Error::NonFinite(format!(
                "{} loss at epoch {epoch}, step {step} ({value}); training stopped, the \
                 checkpoint of epoch {} is kept",
                self.method_name, self.meta.epochs_completed
            )));
        }
        let finite = self
            .optimizer
            .backward(&out.loss, &self.model, self.group)?;
        let clip = self.model.learner().clip_grad();
        if finite && clip > 0.0 {
            let params: Vec<Tensor> = self
                .optimizer
                .params()
                .iter()
                .map(|p| p.tensor.shallow_clone())
                .collect();
            clip_gradients(&params, clip)?;
        }
        self.optimizer.step(lr, wd, finite)?;
        self.model.after_step(at)?;
        if at.monitor {
            let m = step_monitor(step, value, &out.features, self.model.learner().monitors())?;
            log::debug!("{} monitors: {m:?}", self.method_name);
            self.meta.monitors.push(m);
        }
        self.meta.step_losses.push(value);
        self.meta.steps_completed = step + 1;
        Ok((value, lr))
    }

    /// Probes, logs and checkpoints a finished epoch.
    fn end_epoch(
        &mut self,
        record: EpochRecord,
        progress: &mut dyn FnMut(&PretrainEvent) -> bool,
    ) -> Result<()> {
        let config = self.config;
        let epoch = record.epoch;
        log::info!(
            "{} epoch {epoch}: loss {:.4}, lr {:.5}, {:.1} images/s",
            self.method_name,
            record.mean_loss,
            record.learning_rate,
            record.images_per_second
        );
        self.meta.history.push(record.clone());
        self.meta.epochs_completed = epoch + 1;
        if self.group.is_some_and(|g| !g.is_writer()) {
            // Rank 0 probes and checkpoints; the others go on.
            return self.epoch_event(record, progress);
        }
        let every = config.monitor.probe_every_epochs;
        if let Some(cells) = &self.probe_cells {
            if (epoch + 1) % every == 0 || epoch + 1 == config.epochs {
                let encoder = exported_encoder(self.model.export_store(), config.architecture)?;
                let probe = cells.probe(&encoder.0, epoch + 1, self.device)?;
                log::info!(
                    "{} epoch {epoch}: k-NN cell type F1 {:.3}, patient F1 {:.3}, rank {:.1}",
                    self.method_name,
                    probe.cell_type.macro_f1,
                    probe.patient.macro_f1,
                    probe.effective_rank
                );
                self.meta.probes.push(probe);
            }
        }
        save_epoch(
            config,
            &self.model,
            &self.optimizer,
            &self.meta,
            self.cell_types.as_deref(),
        )?;
        self.epoch_event(record, progress)
    }

    /// Reports a finished epoch; the caller may stop the run there.
    fn epoch_event(
        &mut self,
        record: EpochRecord,
        progress: &mut dyn FnMut(&PretrainEvent) -> bool,
    ) -> Result<()> {
        let config = self.config;
        let epoch = record.epoch;
        let event = PretrainEvent {
            stage: PretrainStage::Epoch,
            epoch,
            epochs: config.epochs,
            done: epoch + 1,
            total: config.epochs,
            loss: record.mean_loss,
            images_per_second: record.images_per_second,
        };
        if !progress(&event) && epoch + 1 < config.epochs {
            return Err(Error::Cancelled(format!(
                "pre-training after epoch {epoch}; its checkpoint is kept"
            )));
        }
        Ok(())
    }
}

/// A copy of the encoder being exported, to probe in evaluation mode.
fn exported_encoder(store: &VarStore, arch: EncoderArch) -> Result<(Encoder, VarStore)> {
    let mut vs = VarStore::new(store.device());
    let encoder = Encoder::new(&vs.root(), arch);
    vs.copy(store)?;
    Ok((encoder, vs))
}
