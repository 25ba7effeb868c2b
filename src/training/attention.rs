//! Attention against truth: where cell types are known (synthetic truth or the
//! annotated subset), how much attention abnormal cells get, and a gallery of
//! each test patient's top-ranked cells for a cytologist to review.
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::mil::TrainBag;
use crate::classes::class_index;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::metrics;

/// Attention against cell-type truth (the paper's Fig. 4 question).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AttentionAnalysis {
    /// Mean of N·a (1 = an average cell of its bag) per cell type, over the test
    /// bags of leukemic patients, for the row of the patient's true class.
    pub mean_scaled_attention_by_type: BTreeMap<String, f64>,
    pub cells_by_type: BTreeMap<String, usize>,
    /// ROC AUC of N·a for abnormal (positive) vs normal cells in those bags.
    pub abnormal_vs_normal_roc_auc: Option<f64>,
    pub note: String,
}

/// Abnormal cell types of the synthetic generator and the usual annotation names.
pub fn is_abnormal(cell_type: &str) -> bool {
    cell_type
        .parse::<crate::synth::CellType>()
        .map(|t| t.is_abnormal())
        .unwrap_or_else(|_| {
            let t = cell_type.to_ascii_lowercase();
            t.contains("blast")
                || t.contains("promyelocyte")
                || t.contains("abnormal")
                || t.contains("faggot")
        })
}

/// Mean N·a per cell type and the abnormal-vs-normal ROC AUC, over `(patient, attention [C×N])`.
pub fn analyse<'a>(
    dataset: &Dataset,
    bags: &[TrainBag],
    outputs: impl Iterator<Item = (usize, &'a [f32])>,
) -> Result<AttentionAnalysis> {
    let control = class_index("control");
    let mut sum: BTreeMap<String, f64> = BTreeMap::new();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let (mut truth, mut score) = (Vec::new(), Vec::new());
    for (pi, attention) in outputs {
        let bag = &bags[pi];
        if Some(bag.label) == control {
            continue;
        }
        let patient = &dataset.patients()[pi];
        let n = bag.num_cells();
        let row = &attention[bag.label * n..(bag.label + 1) * n];
        for (k, &id) in bag.cell_ids.iter().enumerate() {
            let Some(t) = patient.cell(id).and_then(|c| c.cell_type.clone()) else {
                continue;
            };
            let scaled = f64::from(row[k]) * n as f64;
            *sum.entry(t.clone()).or_default() += scaled;
            *count.entry(t.clone()).or_default() += 1;
            truth.push(is_abnormal(&t));
            score.push(scaled);
        }
    }
    let mean = sum
        .iter()
        .map(|(t, s)| (t.clone(), s / count[t] as f64))
        .collect();
    let auc = if truth.iter().any(|&t| t) && truth.iter().any(|&t| !t) {
        Some(metrics::roc_curve(&truth, &score)?.auc())
    } else {
        None
    };
    Ok(AttentionAnalysis {
        mean_scaled_attention_by_type: mean,
        cells_by_type: count,
        abnormal_vs_normal_roc_auc: auc,
        note: "test bags of leukemic patients, attention row of the true class, scaled by bag size (1 = average cell)".into(),
    })
}

/// One PNG per test patient: its `k` cells with the highest attention for the
/// predicted class, left to right; cells whose known type is abnormal get a red
/// frame, known-normal cells a grey one.
pub fn write_galleries(
    dataset: &Dataset,
    bags: &[TrainBag],
    outputs: &[(usize, &[f32], usize)],
    k: usize,
    dir: &Path,
) -> Result<()> {
    if k == 0 {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))?;
    const SIDE: u32 = 96;
    const PAD: u32 = 4;
    for &(pi, attention, predicted) in outputs {
        let bag = &bags[pi];
        let patient = &dataset.patients()[pi];
        let n = bag.num_cells();
        let row = &attention[predicted * n..(predicted + 1) * n];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        order.truncate(k);
        let width = order.len() as u32 * (SIDE + 2 * PAD);
        let mut canvas =
            image::RgbImage::from_pixel(width, SIDE + 2 * PAD, image::Rgb([255, 255, 255]));
        for (slot, &i) in order.iter().enumerate() {
            let id = bag.cell_ids[i];
            let cell = patient.load_cell(id)?.resized(SIDE);
            let frame = match patient.cell(id).and_then(|c| c.cell_type.as_deref()) {
                Some(t) if is_abnormal(t) => image::Rgb([200, 30, 30]),
                Some(_) => image::Rgb([160, 160, 160]),
                None => image::Rgb([255, 255, 255]),
            };
            let x0 = slot as u32 * (SIDE + 2 * PAD);
            for y in 0..SIDE + 2 * PAD {
                for x in 0..SIDE + 2 * PAD {
                    let inner = (PAD..SIDE + PAD).contains(&x) && (PAD..SIDE + PAD).contains(&y);
                    let px = if inner {
                        let o = (((y - PAD) * SIDE + (x - PAD)) * 3) as usize;
                        let rgb = cell.rgb();
                        image::Rgb([rgb[o], rgb[o + 1], rgb[o + 2]])
                    } else {
                        frame
                    };
                    canvas.put_pixel(x0 + x, y, px);
                }
            }
        }
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(canvas)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| Error::invalid("gallery", e.to_string()))?;
        write_atomic(&dir.join(format!("{}.png", bag.patient_id)), &png)?;
    }
    Ok(())
}
