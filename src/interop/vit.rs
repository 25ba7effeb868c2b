//! Finding a DINOv2-layout vision transformer among a file's tensors (a
//! DINOv2 hub backbone, a DINOv2/DinoBloom training checkpoint's
//! `teacher.backbone.`, a timm `vit_*_patch14_dinov2`) and writing it as a
//! libamlmil encoder checkpoint.
//!
//! The shape is read off the tensors: width from `cls_token`, depth from the
//! blocks, the feed-forward network from `mlp.fc1`/`mlp.w12`, registers from
//! `register_tokens`/`reg_token`, the position grid from `pos_embed` (with a
//! class-token row, DINOv2's, or without, timm's `no_embed_class`). DINOv2's
//! chunked blocks (`blocks.1.4.`) are unchunked; timm's names become DINOv2's
//! (`reg_token` → `register_tokens`, packed SwiGLU `mlp.fc1`/`fc2` →
//! `mlp.w12`/`w3`). A file whose names are both layouts' (no registers, no
//! SwiGLU) is taken as DINOv2's unless `--source timm` says otherwise; the
//! layout decides how position embeddings are resized to another input.
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
use crate::model::vit::{Ffn, PosResize};
use crate::model::{EncoderArch, Vit, VitConfig};

/// Known prefixes, most specific first.
fn candidates(branch: DinoBranch) -> Vec<String> {
    let b = branch.name();
    vec![
        format!("{b}.backbone."),
        format!("{b}.module.backbone."),
        format!("{b}."),
        "module.backbone.".into(),
        "backbone.".into(),
        "model.".into(),
        "module.".into(),
        "state_dict.".into(),
        "".into(),
    ]
}

fn has_vit(tensors: &HashMap<String, Tensor>, prefix: &str) -> bool {
    ["cls_token", "pos_embed", "patch_embed.proj.weight"]
        .iter()
        .all(|m| tensors.contains_key(&format!("{prefix}{m}")))
}

/// Whether the file holds a ViT under a known prefix (or under `prefix`).
pub fn is_vit(tensors: &HashMap<String, Tensor>, prefix: Option<&str>) -> bool {
    match prefix {
        Some(p) => has_vit(tensors, p),
        None => [DinoBranch::Teacher, DinoBranch::Student]
            .iter()
            .flat_map(|b| candidates(*b))
            .any(|p| has_vit(tensors, &p)),
    }
}

/// The transformer's prefix, or why none or several fit.
fn locate(
    src: &Path,
    tensors: &HashMap<String, Tensor>,
    options: &ImportOptions,
) -> Result<String> {
    let found: Vec<String> = match &options.prefix {
        Some(p) => has_vit(tensors, p).then(|| p.clone()).into_iter().collect(),
        None => {
            let all = candidates(options.branch);
            // `teacher.` also matches `teacher.backbone.`: keep the most specific.
            let hits: Vec<String> = all.into_iter().filter(|p| has_vit(tensors, p)).collect();
            hits.iter()
                .filter(|p| !hits.iter().any(|q| q != *p && q.starts_with(p.as_str())))
                .cloned()
                .collect()
        }
    };
    match found.as_slice() {
        [p] => Ok(p.clone()),
        [] => Err(Error::checkpoint(
            src,
            format!(
                "no ViT for source `{}`: no `cls_token`, `pos_embed` and `patch_embed.proj.weight` under {}",
                options.source.name(),
                options
                    .prefix
                    .as_ref()
                    .map_or("any known prefix".to_owned(), |p| format!("`{p}`"))
            ),
        )),
        several => {
            let list: Vec<String> = several.iter().map(|p| format!("`{p}`")).collect();
            Err(Error::checkpoint(
                src,
                format!(
                    "ViTs under several prefixes: {}; say which with --branch or --prefix",
                    list.join(", ")
                ),
            ))
        }
    }
}

/// DINOv2's chunked block names (`blocks.<chunk>.<i>.…`, FSDP training) as
/// plain ones (`blocks.<i>.…`); other names unchanged.
fn unchunk(name: &str) -> String {
    let parts: Vec<&str> = name.splitn(4, '.').collect();
    match parts.as_slice() {
        ["blocks", c, i, rest]
            if c.parse::<usize>().is_ok() && i.parse::<usize>().is_ok() && !rest.is_empty() =>
        {
            format!("blocks.{i}.{rest}")
        }
        _ => name.to_owned(),
    }
}

fn shape(src: &Path, t: &HashMap<String, Tensor>, name: &str, dims: usize) -> Result<Vec<i64>> {
    let s = t
        .get(name)
        .ok_or_else(|| Error::checkpoint(src, format!("tensor `{name}` is missing")))?
        .size();
    if s.len() != dims {
        return Err(Error::checkpoint(
            src,
            format!("tensor `{name}` has shape {s:?}, expected {dims} dimensions"),
        ));
    }
    Ok(s)
}

/// Side of a square grid of `n` cells, if it is one.
fn square_side(n: i64) -> Option<i64> {
    let s = (n as f64).sqrt().round() as i64;
    (s > 0 && s * s == n).then_some(s)
}

pub(super) fn import(
    src: &Path,
    source: SourceTensors,
    out: &Path,
    options: &ImportOptions,
) -> Result<ImportReport> {
    let prefix = locate(src, &source.tensors, options)?;
    // The model's tensors by our (DINOv2) names; what the file calls each.
    let mut model: HashMap<String, Tensor> = HashMap::new();
    let mut spelled: HashMap<String, String> = HashMap::new();
    let mut ignored = Vec::new();
    for (name, t) in source.tensors {
        let Some(rest) = name.strip_prefix(prefix.as_str()) else {
            ignored.push(name);
            continue;
        };
        let ours = match unchunk(rest).as_str() {
            "reg_token" => "register_tokens".to_owned(),
            // DINOv2's masked-image-modelling token, and heads a file may carry.
            "mask_token" => {
                ignored.push(name);
                continue;
            }
            other if other.starts_with("head.") || other.starts_with("fc_norm.") => {
                ignored.push(name);
                continue;
            }
            other => other.to_owned(),
        };
        if !(ours == "cls_token"
            || ours == "pos_embed"
            || ours == "register_tokens"
            || ours.starts_with("patch_embed.")
            || ours.starts_with("blocks.")
            || ours.starts_with("norm."))
        {
            ignored.push(name);
            continue;
        }
        spelled.insert(ours.clone(), name);
        model.insert(ours, t);
    }
    let timm_markers = spelled.values().any(|n| n.ends_with("reg_token"));
    let dinov2_markers = spelled.keys().any(|n| n.contains(".mlp.w12."))
        || spelled.values().any(|n| n.ends_with("register_tokens"));
    let resolved = match options.source {
        ImportSource::Timm => ImportSource::Timm,
        ImportSource::Dinov2 => ImportSource::Dinov2,
        _ if timm_markers && !dinov2_markers => ImportSource::Timm,
        _ => ImportSource::Dinov2,
    };
    let d = shape(src, &model, "cls_token", 3)?[2];
    let arch = [
        EncoderArch::VitS14,
        EncoderArch::VitB14,
        EncoderArch::VitL14,
        EncoderArch::VitG14,
    ]
    .into_iter()
    .find(|a| a.feature_dim() == d)
    .ok_or_else(|| {
        Error::checkpoint(
            src,
            format!(
                "tensor `{}` is {d} wide; libamlmil's ViTs are ViT-S (384), ViT-B (768), ViT-L (1024) and ViT-g (1536)",
                spelled["cls_token"]
            ),
        )
    })?;
    let preset = VitConfig::preset(arch).expect("a ViT architecture");
    let depth = (0..)
        .take_while(|i| model.contains_key(&format!("blocks.{i}.norm1.weight")))
        .count() as i64;
    // SwiGLU: DINOv2 names it `w12`/`w3`; timm packs it into `fc1` (2H rows)/`fc2` (H columns).
    let swiglu = model.contains_key("blocks.0.mlp.w12.weight")
        || match (
            model.get("blocks.0.mlp.fc1.weight"),
            model.get("blocks.0.mlp.fc2.weight"),
        ) {
            (Some(f1), Some(f2)) => f1.size().first() == f2.size().get(1).map(|h| 2 * h).as_ref(),
            _ => false,
        };
    if swiglu && model.contains_key("blocks.0.mlp.fc1.weight") {
        let renamed: Vec<(String, String)> = model
            .keys()
            .filter_map(|k| {
                let to = k
                    .replace(".mlp.fc1.", ".mlp.w12.")
                    .replace(".mlp.fc2.", ".mlp.w3.");
                (to != *k).then(|| (k.clone(), to))
            })
            .collect();
        for (from, to) in renamed {
            let t = model.remove(&from).expect("listed above");
            let name = spelled.remove(&from).expect("listed above");
            model.insert(to.clone(), t);
            spelled.insert(to, name);
        }
    }
    let mlp_hidden = if swiglu {
        shape(src, &model, "blocks.0.mlp.w3.weight", 2)?[1]
    } else {
        shape(src, &model, "blocks.0.mlp.fc1.weight", 2)?[0]
    };
    let registers = match model.get("register_tokens") {
        Some(_) => shape(src, &model, "register_tokens", 3)?[1],
        None => 0,
    };
    let patch_size = shape(src, &model, "patch_embed.proj.weight", 4)?[3];
    let rows = shape(src, &model, "pos_embed", 3)?[1];
    let (pos_grid, class_pos) = match (square_side(rows - 1), square_side(rows)) {
        (Some(g), _) => (g, true),
        (None, Some(g)) => (g, false),
        (None, None) => {
            return Err(Error::checkpoint(
                src,
                format!(
                "tensor `{}` has {rows} rows: neither a square grid nor one plus a class token's",
                spelled["pos_embed"]
            ),
            ))
        }
    };
    let config = VitConfig {
        patch_size,
        depth,
        mlp_hidden,
        ffn: if swiglu { Ffn::Swiglu } else { Ffn::Mlp },
        registers,
        layer_scale: model.contains_key("blocks.0.ls1.gamma"),
        pos_grid,
        class_pos,
        pos_resize: match resolved {
            ImportSource::Timm => PosResize::Timm,
            _ => PosResize::Dinov2,
        },
        features: options.vit_features,
        ..preset
    };
    let input_size = options.input_size.unwrap_or(pos_grid * patch_size);
    config
        .validate(arch, input_size)
        .map_err(|e| Error::checkpoint(src, format!("the ViT read off its tensors: {e}")))?;
    let mut vs = VarStore::new(Device::Cpu);
    let _vit = Vit::new(&vs.root(), config.clone());
    let source_name = |ours: &str| {
        spelled
            .get(ours)
            .cloned()
            .unwrap_or_else(|| format!("{prefix}{ours}"))
    };
    checkpoint::load_into_named(&mut vs, model, src, &[], &source_name)?;

    let mut provenance = imported_provenance(src, resolved, &prefix);
    if prefix.starts_with(options.branch.name()) {
        provenance
            .details
            .insert("branch".into(), options.branch.name().into());
    }
    let manifest = EncoderManifest::new_vit(arch, config, input_size, provenance);
    write_encoder(out, manifest, &vs, options, (resolved, prefix), ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_blocks_are_unchunked() {
        assert_eq!(
            unchunk("blocks.1.4.attn.qkv.weight"),
            "blocks.4.attn.qkv.weight"
        );
        assert_eq!(
            unchunk("blocks.4.attn.qkv.weight"),
            "blocks.4.attn.qkv.weight"
        );
        assert_eq!(unchunk("blocks.4.ls1.gamma"), "blocks.4.ls1.gamma");
        assert_eq!(unchunk("pos_embed"), "pos_embed");
        assert_eq!(square_side(256), Some(16));
        assert_eq!(square_side(257), None);
    }
}
