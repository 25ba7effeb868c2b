//! The data side of pre-training: the cells decoded once into memory, each
//! epoch's cell order, and the batches of normalised views that a thread of
//! their own makes ahead of the training step.
//!
//! **Data.** The cells of every patient are pooled, resized to `image_size` and
//! decoded once (in `decode_threads` threads) into an 8-bit tensor held in
//! memory (`N·3·S²` bytes: 6.3 GB for 102k cells at 144 px). Every step draws a
//! batch, makes the method's views with [`MultiCropConfig::views`] (SimCLR: 2,
//! SwAV: 2 + 6, DINO: 2 + 8 crops) and normalises them with the checkpoint's
//! normalisation (ImageNet by default). Views of one size go through the
//! encoder together, as SwAV's and DINO's multi-crop wrappers do. An epoch is
//! `⌊N / batch⌋` steps (the references' `drop_last`) unless `steps_per_epoch`
//! is set.
//!
//! [`MultiCropConfig::views`]: crate::ssl::augment::MultiCropConfig::views
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::Normalization;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::ssl::config::PretrainConfig;
use crate::ssl::method::Method;
use crate::ssl::seed::{stream_seed, STREAM_ORDER, STREAM_SUBSET, STREAM_VIEWS};

/// Cells of a data set decoded at one size.
#[derive(Debug)]
pub struct CellCache {
    /// `[N, 3, S, S]` u8 on the CPU.
    pub images: Tensor,
    /// `cells.csv` type of each cell, if any.
    pub cell_types: Vec<Option<String>>,
    /// `(patient id, cell id)` of each cell.
    pub ids: Vec<(String, u64)>,
}

/// Decodes the cells of `dataset` (a seeded subset of at most `max_cells`, in
/// data-set order; only typed cells when `typed_only`) at `size` px.
pub fn decode_cells(
    dataset: &Dataset,
    size: i64,
    max_cells: Option<usize>,
    typed_only: bool,
    seed: u64,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<CellCache> {
    let mut cells: Vec<(&str, &crate::dataset::CellRecord)> = dataset
        .patients()
        .iter()
        .flat_map(|p| p.cells.iter().map(move |c| (p.id.as_str(), c)))
        .filter(|(_, c)| !typed_only || c.cell_type.is_some())
        .collect();
    if let Some(max) = max_cells.filter(|&m| m < cells.len()) {
        let mut order: Vec<usize> = (0..cells.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(stream_seed(
            seed,
            STREAM_SUBSET,
            0,
            0,
        )));
        order.truncate(max);
        order.sort_unstable();
        cells = order.into_iter().map(|i| cells[i]).collect();
    }
    let n = cells.len();
    let plane = (size * size) as usize;
    let mut data = vec![0u8; n * 3 * plane];
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(8)
    } else {
        threads
    };
    let chunk = 256.min(n.div_ceil(threads).max(1));
    let mut done = 0;
    for (block, out) in cells
        .chunks(chunk * threads)
        .zip(data.chunks_mut(chunk * threads * 3 * plane))
    {
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = block
                .chunks(chunk)
                .zip(out.chunks_mut(chunk * 3 * plane))
                .map(|(part, out)| {
                    s.spawn(move || -> Result<()> {
                        for ((_, cell), out) in part.iter().zip(out.chunks_exact_mut(3 * plane)) {
                            let img = cell.load()?;
                            let img = if img.width() as i64 == size && img.height() as i64 == size {
                                img
                            } else {
                                img.resized(size as u32)
                            };
                            for (i, px) in img.rgb().chunks_exact(3).enumerate() {
                                for c in 0..3 {
                                    out[c * plane + i] = px[c];
                                }
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| {
                    Error::invalid("dataset", "an image decoding thread panicked")
                })??;
            }
            Ok(())
        })?;
        done += block.len();
        if !progress(done, n) {
            return Err(Error::Cancelled(format!(
                "decoding after {done} of {n} cells"
            )));
        }
    }
    let images = Tensor::f_from_slice(&data)?.f_view([n as i64, 3, size, size])?;
    Ok(CellCache {
        images,
        cell_types: cells.iter().map(|(_, c)| c.cell_type.clone()).collect(),
        ids: cells.iter().map(|(p, c)| (p.to_string(), c.id)).collect(),
    })
}

/// `[N, 3, S, S]` u8 images → float in [0, 1] on `device`.
pub fn to_unit_float(images: &Tensor, device: Device) -> Result<Tensor> {
    Ok(images.f_to_device(device)?.f_to_kind(Kind::Float)? / 255.0)
}

/// `(x − mean) / std` per channel of `[N, 3, H, W]` images in [0, 1].
pub fn normalize_views(views: &[Tensor], norm: &Normalization) -> Result<Vec<Tensor>> {
    let Some(first) = views.first() else {
        return Ok(Vec::new());
    };
    let opts = (Kind::Float, first.device());
    let mean = Tensor::f_from_slice(&norm.mean)?
        .f_view([1, 3, 1, 1])?
        .f_to(opts.1)?;
    let std = Tensor::f_from_slice(&norm.std)?
        .f_view([1, 3, 1, 1])?
        .f_to(opts.1)?;
    views
        .iter()
        .map(|v| Ok(v.f_sub(&mean)?.f_div(&std)?))
        .collect()
}

/// The normalised views of one batch of `[B, 3, S, S]` images in [0, 1]: the
/// method's views (multi-crop: global crops first).
fn make_views(
    config: &PretrainConfig,
    method: &dyn Method,
    images: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Tensor>> {
    let views = method.views(images, rng)?;
    normalize_views(&views, &config.normalization)
}

/// One step's input, made ahead of the step by the view thread.
pub(super) struct Batch {
    pub(super) step: u64,
    /// `[B]` cache indices of the batch's cells.
    pub(super) indices: Tensor,
    pub(super) views: Vec<Tensor>,
}

/// Batches prepared ahead of the training step.
pub(super) const PREFETCH_BATCHES: usize = 2;

/// Makes the batches of epochs `first_epoch..` in order and sends them to
/// `tx` until the receiver hangs up or a batch fails (sent as the error). Each
/// step's views come from its own `(seed, epoch, step)` stream, so what this
/// thread makes does not depend on timing.
#[allow(clippy::too_many_arguments)]
pub(super) fn produce_batches(
    config: &PretrainConfig,
    method: &dyn Method,
    images: &Tensor,
    labels: &[i64],
    first_epoch: u64,
    steps_per_epoch: u64,
    (device, shard): (Device, Option<(usize, usize)>),
    tx: &std::sync::mpsc::SyncSender<Result<Batch>>,
) {
    let _guard = tch::no_grad_guard();
    for epoch in first_epoch..config.epochs {
        let order = epoch_order(
            config,
            method.oversamples(),
            images.size()[0] as usize,
            labels,
            epoch,
            steps_per_epoch,
        );
        for i in 0..steps_per_epoch {
            let step = epoch * steps_per_epoch + i;
            let batch = (|| -> Result<Batch> {
                let at = i as usize * config.batch_size;
                let indices = Tensor::f_from_slice(&order[at..at + config.batch_size])?;
                let x = to_unit_float(&images.f_index_select(0, &indices)?, device)?;
                let mut rng =
                    ChaCha8Rng::seed_from_u64(stream_seed(config.seed, STREAM_VIEWS, epoch, step));
                let views = make_views(config, method, &x, &mut rng)?;
                // A rank's share: its rows of the global batch's views, which
                // every rank makes alike from the step's stream.
                let (indices, views) = match shard {
                    Some((rank, ranks)) => {
                        let n = (config.batch_size / ranks) as i64;
                        let mine = |t: &Tensor| t.f_narrow(0, rank as i64 * n, n);
                        (
                            mine(&indices)?,
                            views.iter().map(mine).collect::<Result<_, _>>()?,
                        )
                    }
                    None => (indices, views),
                };
                Ok(Batch {
                    step,
                    indices,
                    views,
                })
            })();
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return;
            }
        }
    }
}

/// The cell order of one epoch: `steps · batch` indices, from shuffled passes
/// or (supervised with oversampling) drawn with weight ∝ 1/type frequency.
fn epoch_order(
    config: &PretrainConfig,
    oversample: bool,
    n: usize,
    labels: &[i64],
    epoch: u64,
    steps: u64,
) -> Vec<i64> {
    let count = steps as usize * config.batch_size;
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(config.seed, STREAM_ORDER, epoch, 0));
    if oversample && !labels.is_empty() {
        let classes = labels.iter().max().map_or(0, |m| *m as usize + 1);
        let mut freq = vec![0usize; classes];
        for &l in labels {
            freq[l as usize] += 1;
        }
        let mut acc = 0.0;
        let cumulative: Vec<f64> = labels
            .iter()
            .map(|&l| {
                acc += 1.0 / freq[l as usize] as f64;
                acc
            })
            .collect();
        return (0..count)
            .map(|_| {
                let u = rng.random::<f64>() * acc;
                cumulative.partition_point(|&c| c <= u).min(n - 1) as i64
            })
            .collect();
    }
    let mut order = Vec::with_capacity(count + n);
    while order.len() < count {
        let mut pass: Vec<i64> = (0..n as i64).collect();
        pass.shuffle(&mut rng);
        order.extend(pass);
    }
    order.truncate(count);
    order
}
