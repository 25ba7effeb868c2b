//! Example libamlmil preprocessing plugin (loaded at run time through
//! `amlmil-plugin`'s abi_stable interface).
//!
//! * **Grey-world stain normalisation**: each cell's three channels are scaled
//!   so their means become equal (the grey-world assumption), which removes a
//!   global colour cast between scanners or staining batches.
//! * **Faint-cell filter** (optional): cells whose luminance standard
//!   deviation is below `min_contrast` (blank or out-of-focus crops) are
//!   dropped from the bag.
//!
//! Configuration (the session options' plugin configuration string, JSON):
//! `{"min_contrast": 4.0}`; empty means `{}`. `"fail": "error"` or
//! `"fail": "panic"` makes every batch fail that way — for testing how a host
//! reports a failing plugin.
use amlmil_plugin::{export_plugin, PluginCell, Preprocess};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Drop cells whose luminance standard deviation (0..255 scale) is lower.
    pub min_contrast: Option<f64>,
    /// Testing aid: "error" or "panic" on every batch.
    pub fail: Option<String>,
}

#[derive(Debug)]
pub struct GreyWorld {
    config: Config,
}

/// Parses the configuration string (empty = defaults).
pub fn new(config: &str) -> Result<GreyWorld, String> {
    let config: Config = if config.trim().is_empty() {
        Config::default()
    } else {
        serde_json::from_str(config).map_err(|e| format!("plugin configuration: {e}"))?
    };
    if let Some(f) = &config.fail {
        if f != "error" && f != "panic" {
            return Err(format!(
                "plugin configuration: `fail` is {f:?}, expected \"error\" or \"panic\""
            ));
        }
    }
    if config
        .min_contrast
        .is_some_and(|c| !c.is_finite() || c < 0.0)
    {
        return Err("plugin configuration: `min_contrast` must be a finite number >= 0".into());
    }
    Ok(GreyWorld { config })
}

/// Scales the channels of packed RGB pixels so their means are equal (to the
/// mean of the three), rounding to nearest and saturating at 255.
pub fn grey_world(rgb: &mut [u8]) {
    let n = (rgb.len() / 3) as f64;
    if n == 0.0 {
        return;
    }
    let mut sum = [0f64; 3];
    for px in rgb.chunks_exact(3) {
        for c in 0..3 {
            sum[c] += px[c] as f64;
        }
    }
    let mean = sum.map(|s| s / n);
    let grey = (mean[0] + mean[1] + mean[2]) / 3.0;
    let gain = mean.map(|m| if m > 0.0 { grey / m } else { 1.0 });
    for px in rgb.chunks_exact_mut(3) {
        for c in 0..3 {
            px[c] = (px[c] as f64 * gain[c]).round().min(255.0) as u8;
        }
    }
}

/// Standard deviation of the luminance (Rec. 601 weights) of packed RGB pixels.
pub fn contrast(rgb: &[u8]) -> f64 {
    let lum: Vec<f64> = rgb
        .chunks_exact(3)
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect();
    let n = lum.len().max(1) as f64;
    let mean = lum.iter().sum::<f64>() / n;
    (lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n).sqrt()
}

impl Preprocess for GreyWorld {
    fn process(&self, cells: &mut [PluginCell]) -> Result<(), String> {
        match self.config.fail.as_deref() {
            Some("error") => return Err("configured to fail (\"fail\": \"error\")".into()),
            Some("panic") => panic!("configured to panic (\"fail\": \"panic\")"),
            _ => {}
        }
        for cell in cells {
            if let Some(min) = self.config.min_contrast {
                if contrast(&cell.rgb) < min {
                    cell.keep = false;
                    continue;
                }
            }
            grey_world(&mut cell.rgb);
        }
        Ok(())
    }
}

export_plugin!("grey-world", new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_world_equalises_channel_means() {
        let mut rgb: Vec<u8> = (0..300).map(|i| [200u8, 100, 50][i % 3]).collect();
        rgb[0] = 180;
        grey_world(&mut rgb);
        let means: Vec<f64> = (0..3)
            .map(|c| {
                rgb.iter()
                    .skip(c)
                    .step_by(3)
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / 100.0
            })
            .collect();
        for m in &means {
            assert!((m - means[0]).abs() < 1.0, "{means:?}");
        }
    }

    #[test]
    fn flat_cells_have_no_contrast_and_bad_configs_are_refused() {
        assert_eq!(contrast(&[9; 30]), 0.0);
        assert!(contrast(&[0, 0, 0, 255, 255, 255]) > 100.0);
        assert!(new("{\"min_contrast\": -1}").is_err());
        assert!(new("{\"colour\": 1}").unwrap_err().contains("colour"));
        assert!(new("").is_ok());
    }
}
