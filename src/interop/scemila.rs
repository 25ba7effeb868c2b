//! SCEMILA's attention-MIL model (Hehr et al., `ml_pipeline/model.py`, class
//! `AMiL`) as a libamlmil MIL head.
//!
//! Its multi-column branch is our head with `cell_net = scemila`: `ftr_proc.*` is
//! our `g.*`, `attention_multi_column.*` our `attention.*`,
//! `classifier_multi_column.{c}.*` our `classifiers.{c}.*`. The single-attention
//! branch (`attention.*`, `classifier.*`), which every `AMiL` also carries, is
//! ignored; a pickled module whose `multicolumn` attribute is false (or 0, as
//! SCEMILA's `int(args.multi_att)` stores it) is refused,
//! since its multi-column weights were never trained. The file does not hold
//! the class order: it comes from `class_conversion.csv` or the user.
use std::collections::HashMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::{
    ignored_names, imported_provenance, ImportOptions, ImportReport, ImportSource, SourceTensors,
};
use crate::checkpoint::{self, Manifest, MilManifest};
use crate::error::{Error, Result};
use crate::model::{AttentionMil, CellNet, EncoderArch, MilConfig, MilHeadConfig};

const PREFIXES: [&str; 4] = ["", "module.", "state_dict.", "model."];
/// SCEMILA's module names and ours.
const RENAMES: [(&str, &str); 3] = [
    ("ftr_proc.", "g."),
    ("attention_multi_column.", "attention."),
    ("classifier_multi_column.", "classifiers."),
];

/// The prefix under which a SCEMILA model's tensors lie, if any.
pub fn find_prefix(tensors: &HashMap<String, Tensor>, prefix: Option<&str>) -> Option<String> {
    let given = prefix.map(|p| vec![p]);
    given
        .unwrap_or_else(|| PREFIXES.to_vec())
        .into_iter()
        .find(|p| tensors.contains_key(&format!("{p}ftr_proc.0.weight")))
        .map(str::to_owned)
}

fn ours(name: &str) -> Option<String> {
    RENAMES.iter().find_map(|(theirs, ours)| {
        name.strip_prefix(theirs)
            .map(|rest| format!("{ours}{rest}"))
    })
}

fn theirs(name: &str) -> String {
    RENAMES
        .iter()
        .find_map(|(theirs, ours)| {
            name.strip_prefix(ours)
                .map(|rest| format!("{theirs}{rest}"))
        })
        .unwrap_or_else(|| name.to_owned())
}

/// Reads SCEMILA's `class_conversion.csv` (a pandas frame with columns `art_lbl`,
/// `true_lbl`, …): class names ordered by `art_lbl`, which must be 0..n once each.
pub fn read_class_conversion(path: &Path) -> Result<Vec<String>> {
    let bad = |why: String| Error::Dataset {
        path: path.to_path_buf(),
        reason: why,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let header = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |name: &str| {
        header.iter().position(|c| c.trim() == name).ok_or_else(|| {
            bad(format!(
                "has no `{name}` column (header: {})",
                header.iter().collect::<Vec<_>>().join(",")
            ))
        })
    };
    let (art, name) = (col("art_lbl")?, col("true_lbl")?);
    let mut rows: Vec<(usize, String)> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(e.to_string()))?;
        let line = i + 2;
        let label = record.get(art).unwrap_or("").trim();
        let index = label
            .parse::<f64>()
            .ok()
            .filter(|v| v.fract() == 0.0 && *v >= 0.0)
            .ok_or_else(|| {
                bad(format!(
                    "line {line}: art_lbl `{label}` is not a class index"
                ))
            })?;
        rows.push((
            index as usize,
            record.get(name).unwrap_or("").trim().to_owned(),
        ));
    }
    rows.sort();
    if let Some((i, (index, _))) = rows.iter().enumerate().find(|(i, (index, _))| index != i) {
        return Err(bad(format!(
            "art_lbl values must be 0..{} once each, found {index} at position {i}",
            rows.len()
        )));
    }
    if rows.is_empty() {
        return Err(bad("lists no classes".into()));
    }
    Ok(rows.into_iter().map(|(_, n)| n).collect())
}

fn dim(
    src: &Path,
    t: &HashMap<String, Tensor>,
    ours: &str,
    prefix: &str,
    axis: usize,
    rank: usize,
) -> Result<i64> {
    let name = format!("{prefix}{}", theirs(ours));
    let tensor = t.get(ours).ok_or_else(|| {
        Error::checkpoint(
            src,
            format!("tensor `{name}` is missing; not a SCEMILA AMiL model"),
        )
    })?;
    let size = tensor.size();
    if size.len() != rank {
        return Err(Error::checkpoint(
            src,
            format!(
                "tensor `{name}` has shape {size:?}; SCEMILA's AMiL has a {rank}-d tensor there"
            ),
        ));
    }
    Ok(size[axis])
}

pub(super) fn import(
    src: &Path,
    source: SourceTensors,
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportReport> {
    let prefix = find_prefix(&source.tensors, options.prefix.as_deref()).ok_or_else(|| {
        Error::checkpoint(
            src,
            format!(
                "no SCEMILA model: no tensor `{}ftr_proc.0.weight`",
                options.prefix.as_deref().unwrap_or("")
            ),
        )
    })?;
    let multicolumn = source
        .attributes
        .iter()
        .find(|(k, _)| k.strip_prefix(prefix.as_str()) == Some("multicolumn"));
    if let Some((k, v)) = multicolumn {
        // SCEMILA passes `int(args.multi_att)`: 0 or 1, not only a bool.
        let off = match v {
            serde_json::Value::Bool(b) => !b,
            serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
            _ => false,
        };
        if off {
            let shown = if v.is_boolean() {
                "False".to_string()
            } else {
                v.to_string()
            };
            return Err(Error::checkpoint(
                src,
                format!("the model was trained with `{k}` = {shown} (one attention for all classes); libamlmil's head is the multi-column one, whose weights in this file are untrained"),
            ));
        }
    } else {
        log::warn!(
            "{}: a state_dict does not say whether SCEMILA ran with multicolumn=True; importing its multi-column weights",
            src.display()
        );
    }
    let mut head = HashMap::new();
    let mut ignored = Vec::new();
    for (name, t) in source.tensors {
        match name.strip_prefix(prefix.as_str()).and_then(ours) {
            Some(o) => {
                head.insert(o, t);
            }
            None => ignored.push(name),
        }
    }
    let d = |ours: &str, axis: usize, rank: usize| dim(src, &head, ours, &prefix, axis, rank);
    let config = MilConfig {
        head: MilHeadConfig {
            cell_net: CellNet::Scemila,
            instance_dim: d("g.6.weight", 0, 2)?,
            attention_dim: d("attention.0.weight", 0, 2)?,
            classifier_dim: d("classifiers.0.0.weight", 0, 2)?,
        },
        in_channels: d("g.0.weight", 1, 4)?,
        in_side: EncoderArch::ResNet18.feature_side(options.resnet_input_size()),
        num_classes: d("attention.2.weight", 0, 2)?,
    };
    config.validate().map_err(|e| {
        Error::checkpoint(
            src,
            format!("the model's shapes give an unusable head: {e}"),
        )
    })?;
    let classes = match (&options.class_conversion, options.classes.is_empty()) {
        (Some(csv), true) => read_class_conversion(csv)?,
        (None, false) => options.classes.clone(),
        (Some(_), false) => {
            return Err(Error::invalid(
                "classes",
                "give the class names or a class_conversion.csv, not both",
            ))
        }
        (None, true) => {
            return Err(Error::invalid(
                "classes",
                "a SCEMILA model does not store its class names: give them in output order (--classes) or SCEMILA's class_conversion.csv (--class-conversion)",
            ))
        }
    };
    if classes.len() as i64 != config.num_classes {
        return Err(Error::invalid(
            "classes",
            format!(
                "the model has {} classes (`{prefix}attention_multi_column.2.weight` is {:?}) but {} class names were given",
                config.num_classes,
                head["attention.2.weight"].size(),
                classes.len()
            ),
        ));
    }
    let mut vs = VarStore::new(Device::Cpu);
    let _mil = AttentionMil::new(&vs.root(), config.clone());
    let count = vs.variables().len();
    let source_name = |o: &str| format!("{prefix}{}", theirs(o));
    checkpoint::load_into_named(&mut vs, head, src, &[], &source_name)?;

    let provenance = imported_provenance(src, ImportSource::Scemila, &prefix);
    let manifest = MilManifest::new(config, classes, options.resnet_input_size(), provenance);
    checkpoint::save(out, &Manifest::Mil(manifest), &vs)?;
    let (ignored, ignored_count) = ignored_names(ignored);
    Ok(ImportReport {
        kind: "mil".into(),
        source: ImportSource::Scemila,
        prefix,
        architecture: "attention_mil".into(),
        tensors: count,
        ignored,
        ignored_count,
        output: out.to_path_buf(),
    })
}
