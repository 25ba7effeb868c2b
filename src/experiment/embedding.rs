//! The paper's Figure 5: a 2-D map of typed cells' encoder features, one panel
//! per encoder, coloured by cell type.
//!
//! The map is UMAP (McInnes et al. 2018) from `umap-learn` in the Python of the
//! set-up environment (`AMLMIL_PYTHON`, which `scripts/env.sh` exports), on
//! L2-normalised pooled features with umap-learn's defaults (15 neighbours,
//! min_dist 0.1) and a fixed random state. Without that Python the map falls
//! back to the first two principal components, and the report says which was
//! used. No maintained Rust UMAP crate was found on crates.io; umap-learn is
//! the reference implementation.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::ssl::probe::{labelled_cells, pooled_features};

/// Environment variable naming the Python interpreter with umap-learn.
pub const PYTHON_ENV: &str = "AMLMIL_PYTHON";

/// 2-D coordinates of the same cells under every encoder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Embedding {
    /// `UMAP (umap-learn x.y.z, …)` or `PCA (…, because …)`.
    pub method: String,
    /// Cell-type names; `labels` index into them.
    pub cell_types: Vec<String>,
    pub labels: Vec<usize>,
    /// `(encoder, [N] points)`.
    pub panels: Panels,
}

const UMAP_SCRIPT: &str = r#"
import json, sys
from importlib.metadata import version
import numpy as np
import umap
data = json.load(sys.stdin)
out = {"version": version("umap-learn"), "panels": {}}
for name, rows in data["features"].items():
    x = np.asarray(rows, dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    r = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=data["seed"], n_jobs=1)
    out["panels"][name] = r.fit_transform(x).tolist()
json.dump(out, sys.stdout)
"#;

/// Features of at most `max_cells` typed cells of `dataset` under each encoder,
/// mapped to 2-D.
pub fn embed<'a>(
    dataset: &Dataset,
    encoders: impl Iterator<Item = (&'a str, &'a Path)>,
    max_cells: usize,
    seed: u64,
) -> Result<Embedding> {
    let mut features: Vec<(String, Tensor)> = Vec::new();
    let mut cells = None;
    for (name, path) in encoders {
        let (encoder, manifest, _vs) = crate::frozen::load_encoder(path, Device::Cpu)?;
        if cells.is_none() {
            cells = Some(labelled_cells(
                dataset,
                manifest.input_size,
                Some(max_cells),
                seed,
            )?);
        }
        let c = cells.as_ref().expect("set above");
        let f = pooled_features(
            &encoder,
            &c.images,
            &manifest.normalization,
            64,
            Device::Cpu,
        )?;
        features.push((name.to_owned(), f));
    }
    let cells = cells.ok_or_else(|| Error::invalid("encoders", "no encoder to embed"))?;
    let (method, panels) = match umap(&features, seed) {
        Ok(r) => r,
        Err(why) => {
            log::warn!("UMAP unavailable ({why}); using PCA for the embedding figure");
            let panels = features
                .iter()
                .map(|(n, f)| Ok((n.clone(), pca_2d(f)?)))
                .collect::<Result<Vec<_>>>()?;
            (
                format!("PCA (first two principal components of the L2-normalised features; UMAP unavailable: {why})"),
                panels,
            )
        }
    };
    Ok(Embedding {
        method,
        cell_types: cells.classes,
        labels: cells.labels,
        panels,
    })
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let d = t.size()[1] as usize;
    let flat = Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
    Ok(flat.chunks(d).map(<[f32]>::to_vec).collect())
}

/// `(encoder, [N] points)` of every encoder.
type Panels = Vec<(String, Vec<[f32; 2]>)>;

/// Runs umap-learn in `$AMLMIL_PYTHON`: the method's description and the
/// panels, or why it could not.
fn umap(features: &[(String, Tensor)], seed: u64) -> std::result::Result<(String, Panels), String> {
    let python = std::env::var_os(PYTHON_ENV)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("{PYTHON_ENV} is not set"))?;
    let mut input = serde_json::Map::new();
    for (name, f) in features {
        input.insert(
            name.clone(),
            serde_json::json!(rows(f).map_err(|e| e.to_string())?),
        );
    }
    let input = serde_json::json!({"features": input, "seed": seed});
    let mut child = Command::new(&python)
        .args(["-c", UMAP_SCRIPT])
        .env("NUMBA_NUM_THREADS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", Path::new(&python).display()))?;
    let text = input.to_string();
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_owned();
        return Err(format!("umap-learn failed: {last}"));
    }
    #[derive(Deserialize)]
    struct Out {
        version: String,
        panels: std::collections::BTreeMap<String, Vec<[f32; 2]>>,
    }
    let mut parsed: Out = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let panels = features
        .iter()
        .map(|(n, _)| {
            parsed
                .panels
                .remove(n)
                .map(|p| (n.clone(), p))
                .ok_or_else(|| format!("no panel for {n}"))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok((
        format!(
            "UMAP (umap-learn {}, 15 neighbours, min_dist 0.1, random_state {seed}, on L2-normalised pooled features)",
            parsed.version
        ),
        panels,
    ))
}

/// The first two principal components of the L2-normalised rows of `f` `[N, D]`.
fn pca_2d(f: &Tensor) -> Result<Vec<[f32; 2]>> {
    let x = f.to_kind(Kind::Double);
    let x = &x
        / x.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
            .clamp_min(1e-12);
    let centred = &x - x.mean_dim([0i64].as_slice(), true, Kind::Double);
    // Eigenvectors of the covariance, ascending: the last two are the top two.
    let (_values, vectors) = centred.tr().matmul(&centred).f_linalg_eigh("L")?;
    let d = vectors.size()[1];
    let pc = centred.matmul(&vectors.narrow(1, d - 2, 2).flip([1i64]));
    let flat = Vec::<f64>::try_from(pc.to_kind(Kind::Double).flatten(0, -1))?;
    Ok(flat.chunks(2).map(|p| [p[0] as f32, p[1] as f32]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_separates_two_clusters_along_the_first_component() {
        let mut v = Vec::new();
        for i in 0..20 {
            let mut row = vec![0.01f32 * (i % 3) as f32; 8];
            row[if i < 10 { 0 } else { 1 }] += 1.0;
            v.extend(row);
        }
        let f = Tensor::from_slice(&v).view([20, 8]);
        let p = pca_2d(&f).unwrap();
        let (a, b): (Vec<_>, Vec<_>) = p.iter().enumerate().partition(|(i, _)| *i < 10);
        let side = |g: &[(usize, &[f32; 2])]| g.iter().map(|(_, q)| q[0].signum()).sum::<f32>();
        assert_eq!(side(&a).abs(), 10.0);
        assert_eq!(side(&b), -side(&a));
    }
}
