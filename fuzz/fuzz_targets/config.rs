//! Configuration parsing: every input is parsed as JSON and as TOML into each
//! configuration type (experiment, pre-training, cross-validation, MIL
//! training), and a valid experiment config is expanded into the pre-training
//! and cross-validation configs it implies. Every input must give `Ok` or `Err`.
#![no_main]

use amlmil::experiment::ExperimentConfig;
use amlmil::ssl::{PretrainConfig, SslMethod};
use amlmil::training::{CvConfig, MilTrainConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: amlmil_fuzz::init("config"), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for is_toml in [false, true] {
        let experiment = ExperimentConfig::parse(text, is_toml);
        amlmil_fuzz::report("ExperimentConfig::parse", &experiment);
        if let Ok(c) = experiment {
            for m in [SslMethod::SimClr, SslMethod::Swav, SslMethod::Dino, SslMethod::Supervised] {
                let _ = c.pretrain_config(m, "data".into(), "out".into(), "probe".into());
            }
            let _ = c.cv_config("data".into(), "encoder.safetensors".into(), "out".into());
        }
        let pretrain = PretrainConfig::parse(text, is_toml);
        amlmil_fuzz::report("PretrainConfig::parse", &pretrain);
        if let Ok(c) = pretrain {
            let _ = c.peak_learning_rate();
            let _ = c.multi_crop();
        }
        amlmil_fuzz::report("CvConfig::parse", &CvConfig::parse(text, is_toml));
        if let Ok(v) = amlmil::settings::parse_value(text, is_toml) {
            let train = MilTrainConfig::from_value(v);
            amlmil_fuzz::report("MilTrainConfig::from_value", &train);
            if let Ok(c) = train {
                for epoch in [0, 1, c.epochs / 2, c.epochs, c.epochs.saturating_add(1)] {
                    let _ = c.learning_rate_at(epoch);
                }
            }
        }
    }
});
