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
use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::dataset::{Dataset, OpenOptions};
use crate::error::{Error, Result};
use crate::model::EncoderArch;
use crate::ssl::data::{produce_batches, Batch, PREFETCH_BATCHES};
use crate::ssl::dino::clip_gradients;
use crate::ssl::schedule;
use crate::ssl::state::{read_state, save_epoch, StateMeta, STATE_FORMAT_VERSION};
use crate::ssl::step::{Model, Optimizer};

pub use crate::ssl::config::{PretrainConfig, SslMethod, SupervisedConfig};
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
    pub method: SslMethod,
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
}

/// Pre-trains an encoder as `config` says (see the module docs). `progress` sees
/// decoding, every step and every finished epoch; returning `false` cancels with
/// [`Error::Cancelled`], keeping the checkpoint of the last finished epoch.
pub fn pretrain(
    config: &PretrainConfig,
    progress: &mut dyn FnMut(&PretrainEvent) -> bool,
) -> Result<PretrainReport> {
    config.validate()?;
    let device = config.device.resolve()?;
    std::fs::create_dir_all(&config.output)
        .map_err(|e| Error::io("cannot create", &config.output, e))?;
    // Half-written checkpoints of a killed run (the complete ones are intact).
    crate::io::remove_stale_temps(&config.output)?;
    let state_path = config.output.join(STATE_FILE);
    let saved = if config.resume && state_path.exists() {
        Some(read_state(&state_path, config)?)
    } else {
        if state_path.exists() {
            log::warn!(
                "{} exists and `resume` is false: starting over and replacing it",
                state_path.display()
            );
        }
        None
    };

    let (dataset, _) = Dataset::open(&config.dataset, &OpenOptions::fail())?;
    let supervised = config.method == SslMethod::Supervised;
    if supervised && !dataset.has_cell_types() {
        return Err(Error::Dataset {
            path: config.dataset.clone(),
            reason: "supervised pre-training needs cell types in cells.csv".into(),
        });
    }
    let cache = decode_cells(
        &dataset,
        config.image_size,
        config.max_cells,
        supervised,
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
    let (cell_types, labels): (Option<Vec<String>>, Vec<i64>) = if supervised {
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
        (Some(types), labels)
    } else {
        (None, Vec::new())
    };
    let steps_per_epoch = config
        .steps_per_epoch
        .unwrap_or((n / config.batch_size) as u64);
    let total_steps = steps_per_epoch * config.epochs;
    let num_types = cell_types.as_ref().map_or(0, Vec::len);
    let mut model = Model::new(config, device, num_types, &labels)?;
    let amp = config.mixed_precision && device.is_cuda();
    if config.mixed_precision && !amp {
        log::warn!("mixed_precision applies on CUDA only: training in fp32 on {device:?}");
    }
    let mut optimizer = Optimizer::new(config, model.params(), amp)?;
    let mut meta = StateMeta {
        format_version: STATE_FORMAT_VERSION,
        method: config.method,
        architecture: config.architecture,
        epochs_completed: 0,
        steps_completed: 0,
        steps_per_epoch,
        cells: n,
        rng: "ChaCha8 streams seeded per (seed, purpose, epoch, step) with splitmix64; \
              no generator state is carried between steps"
            .into(),
        queue_filled: 0,
        history: Vec::new(),
        step_losses: Vec::new(),
        config: config.clone(),
    };
    let mut resumed_at_epoch = None;
    if let Some((saved, mut tensors)) = saved {
        if saved.steps_per_epoch != steps_per_epoch || saved.cells != n {
            return Err(Error::invalid(
                "resume",
                format!(
                    "{} has {} steps per epoch over {} cells; this configuration gives {} over {}",
                    state_path.display(),
                    saved.steps_per_epoch,
                    saved.cells,
                    steps_per_epoch,
                    n
                ),
            ));
        }
        model.load(&mut tensors, saved.queue_filled, &state_path)?;
        let opt_state: BTreeMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, t)| match k.strip_prefix("optimizer.") {
                Some(rest) => Ok((rest.to_owned(), t)),
                None => Err(Error::checkpoint(
                    &state_path,
                    format!(
                        "tensor `{k}` belongs to no part of a {} run",
                        config.method.name()
                    ),
                )),
            })
            .collect::<Result<_>>()?;
        optimizer.load_state(&opt_state)?;
        resumed_at_epoch = Some(saved.epochs_completed);
        meta.epochs_completed = saved.epochs_completed;
        meta.steps_completed = saved.steps_completed;
        meta.history = saved.history;
        meta.step_losses = saved.step_losses;
        log::info!(
            "resuming {} at epoch {} (step {})",
            state_path.display(),
            meta.epochs_completed,
            meta.steps_completed
        );
    }

    let lr_peak = config.peak_learning_rate();
    let warmup_steps = config.warmup_epochs * steps_per_epoch;
    let clip = config.dino.as_ref().map_or(0.0, |d| d.clip_grad);
    let batch = config.batch_size as i64;
    let first_epoch = meta.epochs_completed;
    // Views are made one or two steps ahead by a thread of their own (on the
    // training device), so the model does not wait on augmentation.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH_BATCHES);
        let images = cache.images.shallow_clone();
        let labels = &labels;
        scope.spawn(move || {
            produce_batches(
                config,
                &images,
                labels,
                first_epoch,
                steps_per_epoch,
                device,
                &tx,
            )
        });
        for epoch in first_epoch..config.epochs {
            let started = Instant::now();
            let mut loss_sum = 0.0;
            let mut lr = 0.0;
            for i in 0..steps_per_epoch {
                let step = epoch * steps_per_epoch + i;
                lr = schedule::learning_rate(
                    step,
                    lr_peak,
                    config.final_learning_rate,
                    warmup_steps,
                    total_steps,
                );
                let wd = schedule::weight_decay(
                    step,
                    config.weight_decay,
                    config.weight_decay_end,
                    total_steps,
                );
                let Batch {
                    step: made_for,
                    indices,
                    views,
                } = rx.recv().map_err(|_| Error::Dataset {
                    path: config.dataset.clone(),
                    reason: format!("the view thread stopped before step {step}"),
                })??;
                debug_assert_eq!(made_for, step);
                let loss =
                    tch::autocast(amp, || model.loss(config, &views, &indices, epoch, step))?;
                let value = loss.f_double_value(&[])?;
                if !value.is_finite() {
                    return Err(Error::NonFinite(format!(
                        "{} loss at epoch {epoch}, step {step} ({value}); training stopped, the \
                     checkpoint of epoch {} is kept",
                        config.method.name(),
                        meta.epochs_completed
                    )));
                }
                let finite = optimizer.backward(&loss)?;
                if finite && clip > 0.0 {
                    let params: Vec<Tensor> = optimizer
                        .params()
                        .iter()
                        .map(|p| p.tensor.shallow_clone())
                        .collect();
                    clip_gradients(&params, clip)?;
                }
                optimizer.step(lr, wd, finite)?;
                model.after_step(config, step, total_steps)?;
                loss_sum += value;
                meta.step_losses.push(value);
                meta.steps_completed = step + 1;
                let secs = started.elapsed().as_secs_f64();
                let event = PretrainEvent {
                    stage: PretrainStage::Step,
                    epoch,
                    epochs: config.epochs,
                    done: i + 1,
                    total: steps_per_epoch,
                    loss: loss_sum / (i + 1) as f64,
                    images_per_second: ((i + 1) as f64 * batch as f64) / secs.max(1e-9),
                };
                if !progress(&event) {
                    return Err(Error::Cancelled(format!(
                    "pre-training at epoch {epoch}, step {} of {steps_per_epoch}; the checkpoint \
                     of epoch {} is kept",
                    i + 1,
                    meta.epochs_completed
                )));
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            let record = EpochRecord {
                epoch,
                mean_loss: loss_sum / steps_per_epoch as f64,
                learning_rate: lr,
                seconds,
                images_per_second: (steps_per_epoch as f64 * batch as f64) / seconds.max(1e-9),
            };
            log::info!(
                "{} epoch {epoch}: loss {:.4}, lr {lr:.5}, {:.1} images/s",
                config.method.name(),
                record.mean_loss,
                record.images_per_second
            );
            meta.history.push(record.clone());
            meta.epochs_completed = epoch + 1;
            meta.queue_filled = model.queue_filled();
            save_epoch(config, &model, &optimizer, &meta, cell_types.as_deref())?;
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
        }
        Ok(())
    })?;
    Ok(PretrainReport {
        method: config.method,
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
        cell_types,
    })
}
