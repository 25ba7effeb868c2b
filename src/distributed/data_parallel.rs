//! What data-parallel training asks of a [`Group`]: gradients averaged over
//! the ranks, a loss value averaged for the log, and batch norm whose
//! statistics are the global batch's (`SyncBatchNorm` semantics, an option).
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{nn, Kind, Tensor};

use super::{current, Group};
use crate::error::Result;

impl Group {
    /// Averages the gradients of `params` over the ranks, after the backward
    /// pass: flattened into buckets of at most [`GRADIENT_BUCKET`] values, one
    /// all-reduce each (parameters without a gradient are skipped: every rank
    /// builds the same graph, so they are the same ones).
    pub fn average_gradients(&self, params: &[Tensor]) -> Result<()> {
        let grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if self.world_size() < 2 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        let mut start = 0;
        while start < grads.len() {
            let mut end = start + 1;
            let mut values = grads[start].numel();
            while end < grads.len() && values + grads[end].numel() <= GRADIENT_BUCKET {
                values += grads[end].numel();
                end += 1;
            }
            self.average_bucket(&grads[start..end])?;
            start = end;
        }
        Ok(())
    }

    fn average_bucket(&self, grads: &[Tensor]) -> Result<()> {
        let flat = Tensor::f_cat(
            &grads
                .iter()
                .map(|g| g.f_to_kind(Kind::Float)?.f_reshape([-1]))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            0,
        )?;
        self.all_reduce_sum(&flat, "averaging the gradients")?;
        let flat = flat / self.world_size() as f64;
        let mut at = 0;
        for g in grads {
            let n = g.numel() as i64;
            let part = flat.f_narrow(0, at, n)?.f_view_as(g)?.f_to_kind(g.kind())?;
            g.shallow_clone().f_copy_(&part)?;
            at += n;
        }
        Ok(())
    }

    /// The mean of a scalar `value` over the ranks.
    pub fn mean_scalar(&self, value: f64, what: &str) -> Result<f64> {
        let t = Tensor::from_slice(&[value]);
        self.all_reduce_sum(&t, what)?;
        Ok(t.f_double_value(&[0])? / self.world_size() as f64)
    }

    /// Batch norm in training mode over the global batch: each statistic is
    /// this rank's sum, gathered with a gradient and summed (two passes: the
    /// mean, then the squared deviations), so that the backward pass reaches
    /// every rank's activations as one process's batch norm would. The
    /// running statistics move with the global mean and unbiased variance.
    /// A failed collective is kept for [`Group::check_pending`] and this
    /// rank's own statistics are used meanwhile (the step then fails).
    pub fn batch_norm(&self, xs: &Tensor, bn: &nn::BatchNorm, eps: f64, momentum: f64) -> Tensor {
        match self.try_batch_norm(xs, bn, eps, momentum) {
            Ok(y) => y,
            Err(e) => {
                self.keep_pending(e);
                xs.apply_t(bn, true)
            }
        }
    }

    fn try_batch_norm(
        &self,
        xs: &Tensor,
        bn: &nn::BatchNorm,
        eps: f64,
        momentum: f64,
    ) -> Result<Tensor> {
        let size = xs.size();
        let c = size[1];
        // Every dimension but the channels' ([N, C] or [N, C, H, W]).
        let dims: Vec<i64> = std::iter::once(0).chain(2..size.len() as i64).collect();
        let mut shape = vec![1i64; size.len()];
        shape[1] = c;
        let shape = shape.as_slice();
        let count = (xs.numel() as i64 / c) as f64 * self.world_size() as f64;
        // Sums in double, as libtorch's CPU batch norm accumulates its statistics.
        let global_sum = |t: &Tensor| -> Result<Tensor> {
            let local = t.f_sum_dim_intlist(dims.as_slice(), false, Kind::Double)?;
            let all = self.all_gather(&local.f_unsqueeze(0)?, true, "synchronised batch norm")?;
            Ok(all.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?)
        };
        let x = xs.f_to_kind(Kind::Float)?;
        let mean = global_sum(&x)? / count;
        let centred = &x - mean.f_to_kind(Kind::Float)?.view(shape);
        let var = global_sum(&(&centred * &centred))? / count;
        let inv_std = (&var + eps).f_rsqrt()?.f_to_kind(Kind::Float)?;
        let mut y = centred * inv_std.view(shape);
        if let Some(w) = &bn.ws {
            y *= w.view(shape);
        }
        if let Some(b) = &bn.bs {
            y += b.view(shape);
        }
        tch::no_grad(|| -> Result<()> {
            let m = momentum;
            let unbiased = var.detach() * (count / (count - 1.0).max(1.0));
            let mut rm = bn.running_mean.shallow_clone();
            let mut rv = bn.running_var.shallow_clone();
            let _ = rm
                .f_mul_scalar_(1.0 - m)?
                .f_add_(&(mean.detach() * m).f_to_kind(rm.kind())?)?;
            let _ = rv
                .f_mul_scalar_(1.0 - m)?
                .f_add_(&(unbiased * m).f_to_kind(rv.kind())?)?;
            Ok(())
        })?;
        Ok(y.f_to_kind(xs.kind())?)
    }

    fn keep_pending(&self, e: crate::error::Error) {
        let mut slot = self.pending.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// The first collective failure kept by an infallible forward pass.
    pub fn check_pending(&self) -> Result<()> {
        match self.pending.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Gradient values per all-reduce: 25 MiB of fp32, DistributedDataParallel's
/// default `bucket_cap_mb`; it bounds the memory of the flattened copy
/// (ResNet18's 11.7 M gradients go in two calls).
pub const GRADIENT_BUCKET: usize = (25 << 20) / 4;

static SYNC_BATCH_NORM: AtomicBool = AtomicBool::new(false);

/// Turns synchronised batch norm on (or off) for the process group's
/// training until the returned guard drops.
#[must_use = "synchronised batch norm is off again when the guard drops"]
pub fn set_sync_batch_norm(on: bool) -> SyncBatchNormGuard {
    SYNC_BATCH_NORM.store(on, Ordering::Relaxed);
    SyncBatchNormGuard(())
}

/// Turns synchronised batch norm off when dropped ([`set_sync_batch_norm`]).
pub struct SyncBatchNormGuard(());

impl Drop for SyncBatchNormGuard {
    fn drop(&mut self) {
        SYNC_BATCH_NORM.store(false, Ordering::Relaxed);
    }
}

/// The group batch norm synchronises over, while it is on and there are
/// ranks to synchronise with.
pub fn sync_batch_norm() -> Option<&'static Group> {
    if !SYNC_BATCH_NORM.load(Ordering::Relaxed) {
        return None;
    }
    current().filter(|g| g.world_size() > 1)
}

#[cfg(test)]
mod tests {
    use super::super::{Group, Launch};
    use tch::{nn, Device, Kind, Tensor};

    /// Runs `f` as two ranks in two threads of this process, over loopback
    /// (tensors stay in their thread: results come back as numbers).
    pub(crate) fn pair(f: impl Fn(&Group) -> Vec<Vec<f32>> + Sync) -> Vec<Vec<Vec<f32>>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|rank| {
                    let f = &f;
                    s.spawn(move || {
                        let launch = Launch {
                            rank,
                            world_size: 2,
                            local_rank: rank,
                            master_addr: "127.0.0.1".into(),
                            master_port: port,
                            agent_store: false,
                            attempt: 0,
                        };
                        let g = Group::join(&launch, std::time::Duration::from_secs(30)).unwrap();
                        f(&g)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn numbers(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap()
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let m = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
        f64::from(d) / f64::from(m).max(1e-12)
    }

    /// Synchronised batch norm of two halves equals batch norm of the whole:
    /// outputs, the input's gradient, γ's and β's (summed over ranks) and the
    /// running statistics.
    #[test]
    fn sync_batch_norm_is_batch_norm_of_the_global_batch() {
        let shape = [8i64, 3, 4, 4];
        let x = (0..96 * 4)
            .map(|i| ((i * 37 % 101) as f32 / 17.0).sin() * 2.0 + 0.5)
            .collect::<Vec<f32>>();
        let w = (0..96 * 4)
            .map(|i| ((i * 13 % 29) as f32 / 7.0).cos())
            .collect::<Vec<f32>>();
        let bn_cfg = nn::BatchNormConfig {
            ws_init: nn::Init::Const(1.5),
            bs_init: nn::Init::Const(0.2),
            ..Default::default()
        };
        let run = |rows: (i64, i64), bn: &dyn Fn(&Tensor, &nn::BatchNorm) -> Tensor| {
            let full = |v: &[f32]| Tensor::from_slice(v).view(shape).narrow(0, rows.0, rows.1);
            let vs = nn::VarStore::new(Device::Cpu);
            let norm = nn::batch_norm2d(vs.root(), 3, bn_cfg);
            let x = full(&x).set_requires_grad(true);
            let y = bn(&x, &norm);
            // A loss that is not symmetric in the samples.
            (&y * &y * full(&w)).sum(Kind::Float).backward();
            [
                y.detach(),
                x.grad(),
                norm.ws.as_ref().unwrap().grad(),
                norm.bs.as_ref().unwrap().grad(),
                norm.running_mean.shallow_clone(),
                norm.running_var.shallow_clone(),
            ]
            .iter()
            .map(numbers)
            .collect::<Vec<_>>()
        };
        let whole = run((0, 8), &|x, bn| x.apply_t(bn, true));
        let halves = pair(|g| {
            run((4 * g.rank() as i64, 4), &|x, bn| {
                g.batch_norm(x, bn, 1e-5, 0.1)
            })
        });
        let cat = |i: usize| [halves[0][i].clone(), halves[1][i].clone()].concat();
        assert!(max_rel(&cat(0), &whole[0]) < 1e-5, "output");
        assert!(max_rel(&cat(1), &whole[1]) < 1e-5, "input gradient");
        for (i, what) in [(2, "weight"), (3, "bias")] {
            // Each rank holds its share of the parameter gradient.
            let sum: Vec<f32> = halves[0][i]
                .iter()
                .zip(&halves[1][i])
                .map(|(a, b)| a + b)
                .collect();
            assert!(max_rel(&sum, &whole[i]) < 1e-5, "{what} gradient");
        }
        for (i, what) in [(4, "running mean"), (5, "running var")] {
            assert!(max_rel(&halves[0][i], &whole[i]) < 1e-5, "{what}");
            assert!(max_rel(&halves[1][i], &whole[i]) < 1e-5, "{what}");
        }
    }
}

#[cfg(test)]
mod gather_tests {
    use super::tests::pair;
    use tch::{Device, Tensor};

    /// NT-Xent over gathered projections after synchronised batch norm, as
    /// SimCLR trains: two ranks' mean gradients are one process's.
    #[test]
    fn differentiable_gather_trains_each_rank_as_the_whole_batch() {
        let n = 4i64;
        let x: Vec<f32> = (0..2 * n * 3)
            .map(|i| ((i * 7 % 11) as f32 / 3.0).sin())
            .collect();
        let run = |rows: (i64, i64),
                   gather: &dyn Fn(&Tensor) -> Tensor,
                   norm: &dyn Fn(&Tensor, &tch::nn::BatchNorm) -> Tensor| {
            let w = Tensor::from_slice(&[0.3f32, -0.2, 0.5, 0.1, 0.7, -0.4])
                .view([3, 2])
                .set_requires_grad(true);
            let xs = Tensor::from_slice(&x)
                .view([2 * n, 3])
                .narrow(0, rows.0, rows.1);
            let vs = tch::nn::VarStore::new(Device::Cpu);
            let bn_cfg = tch::nn::BatchNormConfig {
                ws_init: tch::nn::Init::Const(1.5),
                bs_init: tch::nn::Init::Const(0.2),
                ..Default::default()
            };
            let bn = tch::nn::batch_norm2d(vs.root(), 2, bn_cfg);
            let h =
                Tensor::cat(&[xs.matmul(&w), (xs.matmul(&w) * 0.5).tanh()], 0).view([-1, 2, 1, 1]);
            let h = norm(&h, &bn).view([-1, 2]);
            let m = rows.1;
            let z1 = gather(&h.narrow(0, 0, m));
            let z2 = gather(&h.narrow(0, m, m));
            let loss = crate::ssl::nt_xent_loss(&z1, &z2, 0.5).unwrap();
            loss.backward();
            let mut out = vec![loss.double_value(&[]) as f32];
            out.extend(Vec::<f32>::try_from(w.grad().reshape([-1])).unwrap());
            out.extend(Vec::<f32>::try_from(bn.ws.as_ref().unwrap().grad()).unwrap());
            out.extend(Vec::<f32>::try_from(bn.bs.as_ref().unwrap().grad()).unwrap());
            out
        };
        let whole = run((0, 2 * n), &|t| t.shallow_clone(), &|h, bn| {
            h.apply_t(bn, true)
        });
        let halves = pair(|g| {
            vec![run(
                (n * g.rank() as i64, n),
                &|t| g.all_gather(t, true, "test").unwrap(),
                &|h, bn| g.batch_norm(h, bn, 1e-5, 0.1),
            )]
        });
        // Each rank's gradient is its share: their mean is the whole batch's
        // (the loss, entry 0, is the whole batch's on every rank).
        for (i, w) in whole.iter().enumerate() {
            let (a, b) = (halves[0][0][i], halves[1][0][i]);
            let got = if i == 0 { a } else { (a + b) / 2.0 };
            assert!(
                (got - w).abs() <= 1e-5 * w.abs().max(1.0),
                "entry {i}: {got} vs {w}"
            );
        }
    }
}
