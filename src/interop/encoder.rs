//! Finding a ResNet18/34 trunk among a file's tensors and writing it as a
//! libamlmil encoder checkpoint.
//!
//! A layout is a name prefix plus a naming: torchvision's (`conv1.weight`,
//! `layer1.0.bn1.running_mean`, … — also VISSL's, DINO's and SwAV's once their
//! prefixes are removed) or lightly's `nn.Sequential` indices (`0.weight` is
//! `conv1.weight`, `4.` is `layer1.`). The architecture is read off the block
//! counts; Bottleneck blocks (ResNet50 and up) and other counts are refused.
use std::collections::HashMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::{
    imported_provenance, write_encoder, DinoBranch, ImportOptions, ImportReport, ImportSource,
    SourceTensors,
};
use crate::checkpoint::{self, EncoderManifest};
use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderArch};

/// How the trunk's modules are named below the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Torchvision,
    /// `nn.Sequential(*resnet.children()[:-1])`: 0 conv1, 1 bn1, 4–7 layer1–4.
    Sequential,
}

/// torchvision module name ↔ `nn.Sequential` index of a ResNet's children.
const SEQUENTIAL: [(&str, &str); 6] = [
    ("conv1", "0"),
    ("bn1", "1"),
    ("layer1", "4"),
    ("layer2", "5"),
    ("layer3", "6"),
    ("layer4", "7"),
];

impl Naming {
    /// Our (torchvision) name for a name below the prefix, or `None` outside the trunk.
    fn to_ours(self, name: &str) -> Option<String> {
        let (head, rest) = name.split_once('.')?;
        match self {
            Naming::Torchvision => SEQUENTIAL
                .iter()
                .any(|(tv, _)| *tv == head)
                .then(|| name.to_owned()),
            Naming::Sequential => SEQUENTIAL
                .iter()
                .find(|(_, i)| *i == head)
                .map(|(tv, _)| format!("{tv}.{rest}")),
        }
    }

    /// The name below the prefix for one of ours (inverse of `to_ours`).
    fn to_source(self, ours: &str) -> String {
        match self {
            Naming::Torchvision => ours.to_owned(),
            Naming::Sequential => {
                let (head, rest) = ours.split_once('.').unwrap_or((ours, ""));
                let i = SEQUENTIAL
                    .iter()
                    .find(|(tv, _)| *tv == head)
                    .map_or(head, |(_, i)| i);
                format!("{i}.{rest}")
            }
        }
    }

    fn markers(self) -> [&'static str; 2] {
        match self {
            Naming::Torchvision => ["conv1.weight", "layer1.0.conv1.weight"],
            Naming::Sequential => ["0.weight", "4.0.conv1.weight"],
        }
    }
}

/// Known prefixes of each source, most specific first.
fn candidates(source: ImportSource, branch: DinoBranch) -> Vec<(String, Naming)> {
    let tv = |ps: &[&str]| -> Vec<(String, Naming)> {
        ps.iter()
            .map(|p| (p.to_string(), Naming::Torchvision))
            .collect()
    };
    match source {
        ImportSource::Torchvision => tv(&["", "module.", "state_dict.", "model."]),
        ImportSource::Vissl => tv(&[
            "classy_state_dict.base_model.model.trunk._feature_blocks.",
            "model.trunk._feature_blocks.",
            "trunk._feature_blocks.",
            "_feature_blocks.",
        ]),
        ImportSource::Dino => {
            let b = branch.name();
            let mut v = tv(&[]);
            for p in [
                format!("{b}.module.backbone."),
                format!("{b}.backbone."),
                "module.backbone.".into(),
                "backbone.".into(),
            ] {
                v.push((p, Naming::Torchvision));
            }
            v
        }
        ImportSource::Swav => tv(&["state_dict.module.", "module.", "state_dict.", ""]),
        ImportSource::Lightly => [
            "backbone.",
            "model.backbone.",
            "state_dict.backbone.",
            "resnet18_parameters.",
            "",
        ]
        .iter()
        .map(|p| (p.to_string(), Naming::Sequential))
        .collect(),
        ImportSource::Auto => {
            let mut all = Vec::new();
            for s in &ImportSource::ALL[1..6] {
                for (p, n) in candidates(*s, branch) {
                    if !all.iter().any(|(q, m, _)| *q == p && *m == n) {
                        all.push((p, n, *s));
                    }
                }
            }
            // DINO's other branch too, so that a file holding both is reported as ambiguous.
            let other = match branch {
                DinoBranch::Teacher => DinoBranch::Student,
                DinoBranch::Student => DinoBranch::Teacher,
            };
            for (p, n) in candidates(ImportSource::Dino, other) {
                if !all.iter().any(|(q, m, _)| *q == p && *m == n) {
                    all.push((p, n, ImportSource::Dino));
                }
            }
            all.into_iter().map(|(p, n, _)| (p, n)).collect()
        }
        ImportSource::Scemila | ImportSource::Dinov2 | ImportSource::Timm => Vec::new(),
    }
}

fn has_trunk(tensors: &HashMap<String, Tensor>, prefix: &str, naming: Naming) -> bool {
    naming
        .markers()
        .iter()
        .all(|m| tensors.contains_key(&format!("{prefix}{m}")))
}

/// The source whose layouts include `(prefix, naming)`, for reporting what `auto` found.
fn source_of(prefix: &str, naming: Naming) -> ImportSource {
    for s in &ImportSource::ALL[1..6] {
        for b in [DinoBranch::Teacher, DinoBranch::Student] {
            if candidates(*s, b)
                .iter()
                .any(|(p, n)| p == prefix && *n == naming)
            {
                return *s;
            }
        }
    }
    ImportSource::Auto
}

/// Picks the trunk's prefix and naming, or says why none or several fit.
fn locate(
    src: &Path,
    tensors: &HashMap<String, Tensor>,
    options: &ImportOptions,
) -> Result<(String, Naming, ImportSource)> {
    let found: Vec<(String, Naming)> = match &options.prefix {
        Some(p) => [Naming::Torchvision, Naming::Sequential]
            .into_iter()
            .filter(|n| has_trunk(tensors, p, *n))
            .map(|n| (p.clone(), n))
            .collect(),
        None => candidates(options.source, options.branch)
            .into_iter()
            .filter(|(p, n)| has_trunk(tensors, p, *n))
            .collect(),
    };
    match found.as_slice() {
        [(p, n)] => {
            let source = match options.source {
                ImportSource::Auto => source_of(p, *n),
                s => s,
            };
            Ok((p.clone(), *n, source))
        }
        [] => {
            let mut sample: Vec<&String> = tensors.keys().collect();
            sample.sort();
            sample.truncate(4);
            let sample: Vec<String> = sample.iter().map(|s| format!("`{s}`")).collect();
            let wanted = match &options.prefix {
                Some(p) => format!("`{p}conv1.weight` (or `{p}0.weight`)"),
                None if options.source == ImportSource::Auto => {
                    "`conv1.weight` under any known prefix".to_owned()
                }
                None => format!(
                    "`{}conv1.weight`",
                    candidates(options.source, options.branch)
                        .first()
                        .map_or("", |(p, _)| p.as_str())
                ),
            };
            Err(Error::checkpoint(
                src,
                format!(
                    "no ResNet trunk for source `{}`: no tensor {wanted}; the file's tensors start {} ({} in all); \
                     choose --source, or --prefix for another layout",
                    options.source.name(),
                    sample.join(", "),
                    tensors.len()
                ),
            ))
        }
        several => {
            let list: Vec<String> = several.iter().map(|(p, _)| format!("`{p}`")).collect();
            Err(Error::checkpoint(
                src,
                format!(
                    "ResNet trunks under several prefixes: {}; say which with --source and --branch, or --prefix",
                    list.join(", ")
                ),
            ))
        }
    }
}

/// ResNet18 or 34 from the block counts of `layer1`…`layer4` (names ours).
fn architecture(
    src: &Path,
    trunk: &HashMap<String, Tensor>,
    source_name: &dyn Fn(&str) -> String,
) -> Result<EncoderArch> {
    let mut bottleneck: Vec<&String> = trunk.keys().filter(|k| k.contains(".conv3.")).collect();
    bottleneck.sort();
    if let Some(k) = bottleneck.first() {
        return Err(Error::checkpoint(
            src,
            format!(
                "tensor `{}` with shape {:?} belongs to a Bottleneck block (ResNet50/101/152); \
                 libamlmil's encoders are ResNet18 and ResNet34",
                source_name(k),
                trunk[*k].size()
            ),
        ));
    }
    let blocks: Vec<usize> = (1..=4)
        .map(|l| {
            (0..)
                .take_while(|i| trunk.contains_key(&format!("layer{l}.{i}.conv1.weight")))
                .count()
        })
        .collect();
    for arch in [EncoderArch::ResNet18, EncoderArch::ResNet34] {
        if blocks == arch.blocks() {
            return Ok(arch);
        }
    }
    Err(Error::checkpoint(
        src,
        format!(
            "layer1..layer4 have {blocks:?} blocks (counted from `{}`…); ResNet18 has [2, 2, 2, 2], ResNet34 [3, 4, 6, 3]",
            source_name("layer1.0.conv1.weight")
        ),
    ))
}

pub(super) fn import(
    src: &Path,
    source: SourceTensors,
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportReport> {
    let (prefix, naming, resolved) = locate(src, &source.tensors, options)?;
    let mut trunk = HashMap::new();
    let mut ignored = Vec::new();
    for (name, t) in source.tensors {
        match name
            .strip_prefix(prefix.as_str())
            .and_then(|rest| naming.to_ours(rest))
        {
            Some(ours) => {
                trunk.insert(ours, t);
            }
            None => ignored.push(name),
        }
    }
    let source_name = |ours: &str| format!("{prefix}{}", naming.to_source(ours));
    let arch = architecture(src, &trunk, &source_name)?;
    let mut vs = VarStore::new(Device::Cpu);
    let _encoder = Encoder::new(&vs.root(), arch);
    checkpoint::load_into_named(&mut vs, trunk, src, &[".num_batches_tracked"], &source_name)?;

    let mut provenance = imported_provenance(src, resolved, &prefix);
    if resolved == ImportSource::Dino {
        provenance
            .details
            .insert("branch".into(), options.branch.name().into());
    }
    let manifest = EncoderManifest::new(arch, options.resnet_input_size(), provenance);
    write_encoder(out, manifest, &vs, options, (resolved, prefix), ignored)
}
