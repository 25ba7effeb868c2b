//! Cross-validation under a distributed launch: its runs spread over the
//! ranks of the process group ([`crate::distributed`]), the report written by
//! rank 0 through the one-process loop of [`super::cv`].
use super::cv::{fold_features, prepare, run_fold, CvEvent, Prepared};
use super::CvConfig;
use crate::error::Result;

/// The runs of a distributed launch's ranks: rank 0 extracts the features
/// while the others wait, each rank trains the runs `i` with
/// `i mod WORLD_SIZE` = its rank (in the order of the one-process loop),
/// and rank 0 waits for them all. Then rank 0's one-process loop reloads
/// every finished run and writes the report, as a resumed run does; the
/// output directory must be one all ranks see. Returns the runs trained here
/// and the features.
pub(super) fn fan_out(
    config: &CvConfig,
    group: &crate::distributed::Group,
    progress: &mut dyn FnMut(CvEvent) -> bool,
) -> Result<(usize, Prepared)> {
    let key = |what: &str| format!("cv/{}/{what}", config.output.display());
    let p = if group.is_writer() {
        let p = prepare(config, progress)?;
        group.signal(&key("prepared"))?;
        p
    } else {
        group.wait_signal(&key("prepared"), 1, "waiting for rank 0's features")?;
        prepare(config, progress)?
    };
    let (ranks, runs_total) = (group.world_size(), config.seeds.len() * config.folds);
    let mut run = 0;
    let mut mine = 0;
    for &seed in &config.seeds {
        for split in p.dataset.folds(config.folds, seed)? {
            if run % ranks == group.rank() {
                let own = fold_features(&p, config, seed, split.fold, progress)?;
                let fold_p = own.as_ref().unwrap_or(&p);
                run_fold(fold_p, config, seed, &split, (run, runs_total), progress)?;
                mine += 1;
            }
            run += 1;
        }
    }
    group.signal(&key("runs"))?;
    if group.is_writer() {
        group.wait_signal(
            &key("runs"),
            ranks as i64,
            "waiting for the other ranks' runs",
        )?;
    }
    Ok((mine, p))
}
