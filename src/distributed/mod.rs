//! Data-parallel training on PyTorch's own c10d process groups, joined from the
//! environment `torchrun` (or a SLURM/Kubernetes launcher) sets: `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`.
//!
//! **What is here.** [`Group`] is one process's membership: a c10d `TCPStore`
//! (rank 0 hosts it, or torchrun's agent does when it says
//! `TORCHELASTIC_USE_AGENT_STORE=True`) and a `ProcessGroupGloo` over it, built
//! by libtorch's own classes through `csrc/c10d/shim.cpp`. Nothing here moves
//! bytes itself. [`Group::all_reduce_sum`], [`Group::all_gather`] (optionally
//! differentiable: its backward pass all-reduces the gathered rows' gradient and
//! keeps this rank's), [`Group::broadcast`] and [`Group::barrier`] are the
//! collectives the training loops use.
//!
//! **The process group.** One per process, as torch's default group:
//! [`init_from_env`] joins it the first time a training entry point runs with
//! the variables set, and [`current`] returns it (`None` without the variables:
//! then nothing changes anywhere).
//!
//! **Failure.** Every rank bumps a counter in the store twice a second from a
//! thread of its own. When a collective fails (Gloo reports a closed
//! connection at once, a silent peer after `timeout`), the survivor reads the
//! counters 1.5 s apart and names the ranks whose counter stopped — or rank 0,
//! the store's host, when the store itself is gone — in an [`Error::Device`]
//! whose device is `process group`. Work of unknown length on other ranks
//! (feature extraction, cross-validation runs) is awaited with
//! [`Group::signal`] / [`Group::wait_signal`], which has no time limit but
//! fails as soon as a rank stops beating.
//!
//! CUDA tensors go through Gloo too (c10d stages them through host memory);
//! NCCL is not built yet (its header includes CUDA toolkit headers the wheel
//! does not ship): see docs/distributed.md.
mod data_parallel;
mod ffi;

pub use data_parallel::{
    set_sync_batch_norm, sync_batch_norm, SyncBatchNormGuard, GRADIENT_BUCKET,
};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tch::Tensor;

use crate::error::{Error, Result};

/// Where this process sits in a launched job, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`).
    pub agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT`: the store keys of each attempt are apart.
    pub attempt: u64,
}

/// The variables that make a launch; all or none must be set.
pub const LAUNCH_VARS: [&str; 5] = [
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
];

/// How long a collective or the rendezvous may wait (`AMLMIL_DIST_TIMEOUT_S`,
/// seconds; 600 by default).
pub const TIMEOUT_VAR: &str = "AMLMIL_DIST_TIMEOUT_S";
const DEFAULT_TIMEOUT_S: f64 = 600.0;

impl Launch {
    /// The launch the environment describes: `None` when none of
    /// [`LAUNCH_VARS`] is set; an error naming the variable when only some
    /// are, or one does not parse.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] over any variable lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let set: Vec<&str> = LAUNCH_VARS
            .iter()
            .copied()
            .filter(|k| get(k).is_some())
            .collect();
        if set.is_empty() {
            return Ok(None);
        }
        if let Some(missing) = LAUNCH_VARS.iter().find(|k| get(k).is_none()) {
            return Err(Error::invalid(
                *missing,
                format!(
                    "is not set but {} are: a distributed launch sets all of {}",
                    set.join(", "),
                    LAUNCH_VARS.join(", ")
                ),
            ));
        }
        fn num<T: std::str::FromStr>(get: &dyn Fn(&str) -> Option<String>, k: &str) -> Result<T> {
            let v = get(k).unwrap_or_default();
            v.trim()
                .parse()
                .map_err(|_| Error::invalid(k, format!("`{v}` is not a non-negative integer")))
        }
        let launch = Launch {
            rank: num(&get, "RANK")?,
            world_size: num(&get, "WORLD_SIZE")?,
            local_rank: num(&get, "LOCAL_RANK")?,
            master_addr: get("MASTER_ADDR").unwrap_or_default(),
            master_port: num(&get, "MASTER_PORT")?,
            agent_store: get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
            attempt: match get("TORCHELASTIC_RESTART_COUNT") {
                Some(_) => num(&get, "TORCHELASTIC_RESTART_COUNT")?,
                None => 0,
            },
        };
        if launch.world_size == 0 || launch.rank >= launch.world_size {
            return Err(Error::invalid(
                "RANK",
                format!(
                    "{} is not below WORLD_SIZE {}",
                    launch.rank, launch.world_size
                ),
            ));
        }
        if launch.master_addr.is_empty() {
            return Err(Error::invalid("MASTER_ADDR", "is empty"));
        }
        Ok(Some(launch))
    }
}

/// The collective timeout from [`TIMEOUT_VAR`].
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_VAR) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(Error::invalid(
                TIMEOUT_VAR,
                format!("`{v}` is not a positive number of seconds"),
            )),
        },
        Err(_) => Ok(Duration::from_secs_f64(DEFAULT_TIMEOUT_S)),
    }
}

/// One process's membership of a c10d process group (see the module docs).
pub struct Group {
    handle: ffi::Handle,
    rank: usize,
    world: usize,
    launch: Launch,
    timeout: Duration,
    /// A collective failure met where no error can be returned.
    pending: parking_lot::Mutex<Option<Error>>,
    /// The heartbeat's own store connection and its stop flag.
    heartbeat: Option<(
        Arc<ffi::Handle>,
        Arc<AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
}

const HEARTBEAT: Duration = Duration::from_millis(500);

impl Group {
    /// Joins the group `launch` describes (blocks until every rank has).
    pub fn join(launch: &Launch, timeout: Duration) -> Result<Group> {
        let prefix = format!("amlmil/attempt_{}", launch.attempt);
        let handle = ffi::Handle::new(
            &launch.master_addr,
            launch.master_port,
            launch.rank,
            launch.world_size,
            launch.rank == 0 && !launch.agent_store,
            launch.agent_store,
            &prefix,
            timeout,
        )
        .map_err(|e| {
            group_error(
                launch,
                format!(
                    "cannot join the group at {}:{} within {:.0} s: {e}",
                    launch.master_addr,
                    launch.master_port,
                    timeout.as_secs_f64()
                ),
            )
        })?;
        let beat = Arc::new(
            handle
                .store_clone(&format!("{prefix}/heartbeat"))
                .map_err(|e| group_error(launch, e))?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (beat, stop, key) = (beat.clone(), stop.clone(), launch.rank.to_string());
            std::thread::Builder::new()
                .name(format!("amlmil-heartbeat-{}", launch.rank))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if beat.store_add(&key, 1).is_err() {
                            return;
                        }
                        std::thread::sleep(HEARTBEAT);
                    }
                })
                .map_err(|e| group_error(launch, format!("cannot start the heartbeat: {e}")))?
        };
        log::info!(
            "joined process group: rank {} of {} (local rank {}) at {}:{}",
            launch.rank,
            launch.world_size,
            launch.local_rank,
            launch.master_addr,
            launch.master_port
        );
        Ok(Group {
            handle,
            rank: launch.rank,
            world: launch.world_size,
            launch: launch.clone(),
            timeout,
            pending: parking_lot::Mutex::new(None),
            heartbeat: Some((beat, stop, thread)),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// Whether this rank writes files (rank 0).
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// Sums `t` over the ranks, in place.
    pub fn all_reduce_sum(&self, t: &Tensor, what: &str) -> Result<()> {
        self.handle
            .all_reduce_sum(t)
            .map_err(|e| self.failure(what, e))
    }

    /// Every rank's `t` (equal shapes) concatenated along dim 0, rank 0 first.
    /// With `differentiable`, a loss of the result back-propagates into every
    /// rank's `t` (each rank must then run its backward pass).
    pub fn all_gather(&self, t: &Tensor, differentiable: bool, what: &str) -> Result<Tensor> {
        self.handle
            .all_gather(t, differentiable)
            .map_err(|e| self.failure(what, e))
    }

    /// Rank `root`'s `t` into every rank's, in place.
    pub fn broadcast(&self, t: &Tensor, root: usize, what: &str) -> Result<()> {
        self.handle
            .broadcast(t, root)
            .map_err(|e| self.failure(what, e))
    }

    /// Waits until every rank reaches it.
    pub fn barrier(&self, what: &str) -> Result<()> {
        self.handle.barrier().map_err(|e| self.failure(what, e))
    }

    /// Marks `key` in the store once more (a rank saying it reached a point).
    pub fn signal(&self, key: &str) -> Result<()> {
        self.handle
            .store_add(&format!("signal/{key}"), 1)
            .map(drop)
            .map_err(|e| self.failure(&format!("signalling `{key}`"), e))
    }

    /// Waits, without a time limit, until `key` has been signalled `count`
    /// times — for work of unknown length on other ranks (feature
    /// extraction, cross-validation runs) — failing as soon as a rank
    /// stops beating.
    pub fn wait_signal(&self, key: &str, count: i64, what: &str) -> Result<()> {
        let Some((beat, ..)) = &self.heartbeat else {
            return Ok(());
        };
        let beats = || -> std::result::Result<Vec<i64>, String> {
            (0..self.world)
                .map(|r| beat.store_add(&r.to_string(), 0))
                .collect()
        };
        let mut last = (
            beats().map_err(|e| self.failure(what, e))?,
            std::time::Instant::now(),
        );
        loop {
            let n = self
                .handle
                .store_add(&format!("signal/{key}"), 0)
                .map_err(|e| self.failure(what, e))?;
            if n >= count {
                return Ok(());
            }
            std::thread::sleep(HEARTBEAT);
            if last.1.elapsed() >= HEARTBEAT * 6 {
                let now = beats().map_err(|e| self.failure(what, e))?;
                if let Some(r) = (0..self.world).find(|&r| r != self.rank && now[r] == last.0[r]) {
                    return Err(group_error(
                        &self.launch,
                        format!("{what} failed: lost rank {r} (its heartbeat stopped: killed or crashed)"),
                    ));
                }
                last = (now, std::time::Instant::now());
            }
        }
    }

    /// This rank's rows `[rank·n, (rank+1)·n)` of a global batch of `world·n`.
    pub fn shard(&self, global: &Tensor) -> Result<Tensor> {
        let rows = global.size().first().copied().unwrap_or(0);
        if rows % self.world as i64 != 0 {
            return Err(Error::Mismatch(format!(
                "a global batch of {rows} rows does not split over {} ranks",
                self.world
            )));
        }
        let n = rows / self.world as i64;
        Ok(global.f_narrow(0, self.rank as i64 * n, n)?)
    }

    /// A collective failed: name the ranks that stopped beating, if any.
    fn failure(&self, what: &str, cause: String) -> Error {
        let lost = self.lost_ranks();
        let who = match &lost {
            Ok(ranks) if ranks.is_empty() => "no rank has stopped".to_owned(),
            Ok(ranks) => format!(
                "lost rank {} (its heartbeat stopped: killed or crashed)",
                ranks
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", rank ")
            ),
            Err(e) if self.launch.agent_store => {
                format!(
                    "the launcher's store at {}:{} is gone ({e})",
                    self.launch.master_addr, self.launch.master_port
                )
            }
            Err(e) => format!(
                "lost rank 0, which hosts the store at {}:{} ({e})",
                self.launch.master_addr, self.launch.master_port
            ),
        };
        group_error(
            &self.launch,
            format!(
                "{what} failed: {who}; c10d said: {} (timeout {:.0} s, {TIMEOUT_VAR})",
                first_line(&cause),
                self.timeout.as_secs_f64()
            ),
        )
    }

    /// The ranks whose heartbeat did not move over three beats.
    fn lost_ranks(&self) -> std::result::Result<Vec<usize>, String> {
        let Some((beat, ..)) = &self.heartbeat else {
            return Ok(Vec::new());
        };
        let read = || -> std::result::Result<Vec<i64>, String> {
            (0..self.world)
                .map(|r| beat.store_add(&r.to_string(), 0))
                .collect()
        };
        let before = read()?;
        std::thread::sleep(HEARTBEAT * 3);
        let after = read()?;
        Ok((0..self.world)
            .filter(|&r| r != self.rank && after[r] == before[r])
            .collect())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some((_, stop, thread)) = self.heartbeat.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

fn group_error(launch: &Launch, reason: impl Into<String>) -> Error {
    Error::Device {
        device: format!(
            "process group (rank {} of {})",
            launch.rank, launch.world_size
        ),
        reason: reason.into(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

static GROUP: OnceLock<Option<Group>> = OnceLock::new();

/// Joins the process group the environment describes, once per process
/// (later calls return the same group); `None` without [`LAUNCH_VARS`].
pub fn init_from_env() -> Result<Option<&'static Group>> {
    if let Some(g) = GROUP.get() {
        return Ok(g.as_ref());
    }
    let group = match Launch::from_env()? {
        Some(launch) => Some(Group::join(&launch, timeout_from_env()?)?),
        None => None,
    };
    // A second thread joining at once would fail on the store's port; the
    // entry points that call this run one at a time.
    Ok(GROUP.get_or_init(|| group).as_ref())
}

/// The group joined by [`init_from_env`], if any.
pub fn current() -> Option<&'static Group> {
    GROUP.get().and_then(Option::as_ref)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn launch_from_variables() {
        assert_eq!(Launch::from_lookup(lookup(&[])).unwrap(), None);
        let full = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "3"),
        ];
        let l = Launch::from_lookup(lookup(&full)).unwrap().unwrap();
        assert_eq!(
            (l.rank, l.world_size, l.master_port, l.attempt),
            (1, 2, 29500, 3)
        );
        assert!(l.agent_store);
        let e = Launch::from_lookup(lookup(&full[..3]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`MASTER_ADDR`"), "{e}");
        let mut bad = full;
        bad[0] = ("RANK", "2");
        let e = Launch::from_lookup(lookup(&bad)).unwrap_err().to_string();
        assert!(e.contains("`RANK`") && e.contains("WORLD_SIZE 2"), "{e}");
        bad[0] = ("RANK", "x");
        let e = Launch::from_lookup(lookup(&bad)).unwrap_err().to_string();
        assert!(e.contains("`RANK`") && e.contains("`x`"), "{e}");
    }
}
