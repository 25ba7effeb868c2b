//! What the fuzz targets share: the start-up hook that writes seed corpora
//! (`AMLMIL_FUZZ_WRITE_SEEDS=DIR target` writes that target's seeds into DIR and
//! exits, so the seeds come from the library itself and are never committed) and
//! the dataset trees generated from fuzz input.
use std::path::{Path, PathBuf};

/// PNG files whose header declares a size (shared with tests/fuzz_regressions.rs).
#[path = "../../tests/common/png_header.rs"]
pub mod png_header;
pub mod seeds;
pub mod tree;

/// Environment variable naming the folder a target writes its seeds into.
pub const SEEDS_ENV: &str = "AMLMIL_FUZZ_WRITE_SEEDS";

/// With `AMLMIL_FUZZ_VERBOSE` set (when running a target on one file to see what
/// the library made of it), prints `what` and the outcome.
pub fn report<T, E: std::fmt::Display>(what: &str, result: &Result<T, E>) {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *VERBOSE.get_or_init(|| std::env::var_os("AMLMIL_FUZZ_VERBOSE").is_some()) {
        match result {
            Ok(_) => eprintln!("{what}: ok"),
            Err(e) => eprintln!("{what}: error: {e}"),
        }
    }
}

/// Called from every target's `init`: one libtorch thread (the runs share two
/// cores), and the seed-writing mode.
pub fn init(target: &str) {
    tch::set_num_threads(1);
    let Some(dir) = std::env::var_os(SEEDS_ENV).map(PathBuf::from) else {
        return;
    };
    match write_seeds(target, &dir) {
        Ok(n) => {
            eprintln!("{target}: wrote {n} seed(s) to {}", dir.display());
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{target}: cannot write seeds to {}: {e}", dir.display());
            std::process::exit(2);
        }
    }
}

fn write_seeds(target: &str, dir: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let seeds = match target {
        "cell_image" => seeds::cell_images()?,
        "checkpoint" => seeds::checkpoints()?,
        "config" => seeds::configs()?,
        "dataset" => seeds::dataset_trees(),
        other => return Err(format!("no seeds for target `{other}`").into()),
    };
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}
