//! Model checkpoints: one `.safetensors` file per model whose `__metadata__` holds a
//! JSON manifest under the key `amlmil` (DESIGN §4).
//!
//! Encoder tensors use torchvision's names, so `model.load_state_dict(
//! safetensors.torch.load_file(path), strict=False)` works in PyTorch (our files
//! also carry `num_batches_tracked`, so `strict=True` works too). Loading checks
//! the manifest against the tensors and names the first disagreement. Every file
//! carries a SHA-256 of its contents ([`CHECKSUM_KEY`]) checked on each read, so a
//! checkpoint corrupted on its way (a network share, a bad copy) is refused
//! rather than silently giving another diagnosis. Files are written to a
//! temporary sibling and renamed, so a crash never leaves half a file.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::{EncoderArch, MilConfig, VitConfig};

/// Version of the manifest layout written by this library.
pub const FORMAT_VERSION: u32 = 1;
/// `__metadata__` key that holds the manifest JSON.
pub const MANIFEST_KEY: &str = "amlmil";
/// `__metadata__` key of the SHA-256 over every other metadata entry and every
/// tensor's name, dtype, shape and bytes ([`content_sha256`]); written with each
/// file and checked on every read, so a flipped byte anywhere is refused.
pub const CHECKSUM_KEY: &str = "amlmil.sha256";

/// Per-channel input normalisation, applied to pixels scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Normalization {
    /// ImageNet statistics, as torchvision's pre-trained ResNets expect.
    fn default() -> Self {
        Normalization {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// Where a model came from: enough to reproduce or audit it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `amlmil <version>` or another tool.
    pub tool: String,
    /// `random-init`, `simclr`, `swav`, `dino`, `supervised`, `mil`, `imported`, …
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Free-form details (configuration, data set, metrics).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Provenance {
    /// Provenance stamped with this library's name and version.
    pub fn new(method: &str, seed: Option<u64>) -> Self {
        Provenance {
            tool: format!("amlmil {}", crate::VERSION),
            method: method.to_owned(),
            seed,
            details: Default::default(),
        }
    }
}

/// Manifest of an encoder checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderManifest {
    pub format_version: u32,
    pub architecture: EncoderArch,
    /// Side of the square input in pixels (144 for the AML cells).
    pub input_size: i64,
    pub normalization: Normalization,
    /// `[channels, height, width]` of the last feature map (`[D′, 1, 1]` for a
    /// ViT: the features it hands the MIL head).
    pub feature_map: [i64; 3],
    pub provenance: Provenance,
    /// The transformer's shape and feature choice, for a ViT architecture
    /// (absent for ResNets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vit: Option<VitConfig>,
}

impl EncoderManifest {
    /// The manifest of a ResNet, or of a ViT of `architecture`'s preset size
    /// with position embeddings for `input_size`.
    pub fn new(architecture: EncoderArch, input_size: i64, provenance: Provenance) -> Self {
        if let Some(mut vit) = VitConfig::preset(architecture) {
            vit.pos_grid = vit.grid(input_size).max(1);
            return Self::new_vit(architecture, vit, input_size, provenance);
        }
        let side = architecture.feature_side(input_size);
        EncoderManifest {
            format_version: FORMAT_VERSION,
            architecture,
            input_size,
            normalization: Normalization::default(),
            feature_map: [architecture.feature_dim(), side, side],
            provenance,
            vit: None,
        }
    }

    /// The manifest of a ViT encoder of shape `vit`.
    pub fn new_vit(
        architecture: EncoderArch,
        vit: VitConfig,
        input_size: i64,
        provenance: Provenance,
    ) -> Self {
        EncoderManifest {
            format_version: FORMAT_VERSION,
            architecture,
            input_size,
            normalization: Normalization::default(),
            feature_map: [vit.feature_dim(), 1, 1],
            provenance,
            vit: Some(vit),
        }
    }
}

/// Manifest of an attention-MIL checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilManifest {
    pub format_version: u32,
    /// Always `attention_mil` for now.
    pub architecture: String,
    pub config: MilConfig,
    /// Class names (bag labels) in output order.
    pub classes: Vec<String>,
    /// Encoder input size and feature map this head was trained on.
    pub input_size: i64,
    pub feature_map: [i64; 3],
    pub provenance: Provenance,
    /// Present when the checkpoint holds K ≥ 2 heads deployed together (the
    /// runs of a cross-validation; [`crate::model::MilHeads`]); absent for one head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Ensemble>,
}

/// The heads of an ensemble MIL checkpoint and where they came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ensemble {
    /// Number of heads K (≥ 2); head `k`'s tensors are named `heads.k.…`.
    pub heads: usize,
    /// The run each head came from, in head order.
    pub members: Vec<EnsembleMember>,
}

/// One head of an ensemble: its cross-validation run and that run's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleMember {
    /// The run's folder name (`seed0_fold3`).
    pub run: String,
    pub seed: u64,
    pub fold: usize,
    /// Lowest validation loss of the run (what early stopping chose the head by).
    pub best_validation_loss: f64,
    /// Macro F1 on the run's held-out test fold.
    pub test_macro_f1: f64,
    /// Content SHA-256 of the run's own checkpoint.
    pub mil_sha256: Option<String>,
}

impl MilManifest {
    pub fn new(
        config: MilConfig,
        classes: Vec<String>,
        input_size: i64,
        provenance: Provenance,
    ) -> Self {
        MilManifest {
            format_version: FORMAT_VERSION,
            architecture: "attention_mil".into(),
            feature_map: [config.in_channels, config.in_side, config.in_side],
            config,
            classes,
            input_size,
            provenance,
            ensemble: None,
        }
    }

    /// Number of heads in the checkpoint (1 unless it is an ensemble).
    pub fn head_count(&self) -> usize {
        self.ensemble.as_ref().map_or(1, |e| e.heads)
    }
}

/// A manifest of either kind; serialised with a `kind` tag (`encoder` | `mil`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Manifest {
    Encoder(EncoderManifest),
    Mil(MilManifest),
}

impl Manifest {
    pub fn kind(&self) -> &'static str {
        match self {
            Manifest::Encoder(_) => "encoder",
            Manifest::Mil(_) => "mil",
        }
    }
}

/// Writes `vs`'s variables and `manifest` to `path` atomically (temp file + rename).
///
/// `extra` tensors (e.g. torchvision's `num_batches_tracked`) are added verbatim.
pub fn save(path: &Path, manifest: &Manifest, vs: &VarStore) -> Result<()> {
    let mut named: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.detach()
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous(),
            )
        })
        .collect();
    if matches!(manifest, Manifest::Encoder(_)) {
        // torchvision's BatchNorm keeps a step counter; inference ignores it.
        let bns: Vec<String> = named
            .keys()
            .filter_map(|k| k.strip_suffix(".running_mean").map(str::to_owned))
            .collect();
        for bn in bns {
            named.insert(format!("{bn}.num_batches_tracked"), Tensor::from(0i64));
        }
    }
    let json =
        serde_json::to_string(manifest).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let metadata = HashMap::from([(MANIFEST_KEY.to_owned(), json)]);
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_tensors(path, &refs, Some(metadata))
}

/// Writes CPU tensors (f32, f16 or i64; others are stored as f32) to a safetensors
/// file atomically, with optional `__metadata__`.
pub fn write_tensors(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut buffers: Vec<(&str, Vec<u8>, Dtype, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let (dtype, bytes) = match t.kind() {
            Kind::Int64 => (Dtype::I64, tensor_bytes::<i64>(&t)?),
            Kind::Half => (Dtype::F16, tensor_bytes::<half::f16>(&t)?),
            Kind::Float => (Dtype::F32, tensor_bytes::<f32>(&t)?),
            _ => (Dtype::F32, tensor_bytes::<f32>(&t.to_kind(Kind::Float))?),
        };
        buffers.push((name, bytes, dtype, shape));
    }
    let views = buffers
        .iter()
        .map(|(n, b, d, s)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (*n, v))
                .map_err(|e| Error::checkpoint(path, format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = metadata.unwrap_or_default();
    metadata.remove(CHECKSUM_KEY);
    let digest = content_sha256(
        &metadata,
        views
            .iter()
            .map(|(n, v)| (*n, v.dtype(), v.shape(), v.data())),
    );
    metadata.insert(CHECKSUM_KEY.to_owned(), digest);
    let data = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::checkpoint(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, &data)
}

/// SHA-256 (hex) of a file's contents as libamlmil reads them: the metadata
/// entries other than the checksum, sorted by key, then the tensors sorted by
/// name, each as name, dtype, shape and little-endian bytes.
pub fn content_sha256<'a>(
    metadata: &HashMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut keys: Vec<&String> = metadata.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    for k in keys {
        for part in [k.as_bytes(), b"\0", metadata[k].as_bytes(), b"\0"] {
            h.update(part);
        }
    }
    let mut tensors: Vec<_> = tensors.collect();
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, data) in tensors {
        h.update(name.as_bytes());
        h.update(format!("\0{dtype:?}\0").as_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn tensor_bytes<T: tch::kind::Element + Copy>(t: &Tensor) -> Result<Vec<u8>> {
    let n = t.numel();
    let mut v = vec![T::ZERO; n];
    t.f_copy_data(&mut v, n)?;
    // SAFETY: plain-old-data numbers reinterpreted as bytes; safetensors is little-endian
    // and so are all targets we build for (checked at compile time below).
    let bytes = unsafe {
        std::slice::from_raw_parts(v.as_ptr() as *const u8, n * std::mem::size_of::<T>())
    };
    Ok(bytes.to_vec())
}
const _: () = assert!(
    cfg!(target_endian = "little"),
    "safetensors needs a little-endian target"
);

/// Named tensors as read from a file, in file order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Decodes safetensors bytes into CPU tensors of their stored kind (f32, f16,
/// bf16, f64, i64) and the `__metadata__` map; `path` names the file in errors.
pub fn decode_tensors(
    bytes: &[u8],
    path: &Path,
) -> Result<(HashMap<String, String>, NamedTensors)> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file ({e})")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::checkpoint(path, format!("corrupt tensor data ({e})")))?;
    if let Some(expected) = metadata.get(CHECKSUM_KEY) {
        let views = st.tensors();
        let actual = content_sha256(
            &metadata,
            views
                .iter()
                .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
        );
        if &actual != expected {
            return Err(Error::checkpoint(
                path,
                format!(
                    "is corrupt: its contents do not match the SHA-256 written with it ({}… expected, {}… found); copy it again from a good source",
                    expected.get(..12).unwrap_or(expected),
                    &actual[..12]
                ),
            ));
        }
    }
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    Ok((metadata, tensors))
}

/// The content SHA-256 a checkpoint was written with (`None` for files
/// written before checksums), read from the safetensors header only. The
/// tensors are checked against it when the checkpoint is loaded.
pub fn stored_checksum(path: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::io("cannot read checkpoint", path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| Error::io("cannot read checkpoint header of", path, e))?;
    let len = u64::from_le_bytes(len);
    // safetensors caps its header at 100 MB.
    if len > 100_000_000 {
        return Err(Error::checkpoint(
            path,
            format!("header of {len} bytes is not a safetensors header"),
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| Error::io("cannot read checkpoint header of", path, e))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::checkpoint(path, format!("header is not JSON ({e})")))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.get(CHECKSUM_KEY))
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

/// The manifest of a checkpoint file, read from its safetensors header alone:
/// no tensor is read and the checksum is not checked (loading the model does
/// both). For decisions that need only the manifest, e.g. a feature-map shape.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    use std::io::Read;
    let io = |e| Error::io("cannot read checkpoint", path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) || n > 100 << 20 {
        return Err(Error::checkpoint(
            path,
            format!("declares a {n}-byte header in a {len}-byte file"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::checkpoint(path, format!("header is not JSON: {e}")))?;
    let json = header["__metadata__"][MANIFEST_KEY]
        .as_str()
        .ok_or_else(|| {
            Error::checkpoint(
                path,
                format!("no `{MANIFEST_KEY}` manifest in __metadata__"),
            )
        })?;
    serde_json::from_str(json)
        .map_err(|e| Error::checkpoint(path, format!("manifest is not valid: {e}")))
}

/// A checkpoint read from disk: its manifest and its tensors (on the CPU, f32).
#[derive(Debug)]
pub struct Checkpoint {
    pub manifest: Manifest,
    pub tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads a checkpoint file; fails when the manifest is missing or unreadable.
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io("cannot read checkpoint", path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a checkpoint file (header, checksum, manifest, tensors);
    /// `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let (meta, raw) = decode_tensors(bytes, path)?;
        // Only our two entries: a flipped byte in the checksum's own key would
        // otherwise pass the file off as one written before checksums.
        if let Some(k) = meta
            .keys()
            .find(|k| *k != MANIFEST_KEY && *k != CHECKSUM_KEY)
        {
            return Err(Error::checkpoint(
                path,
                format!("has an unexpected `__metadata__` entry `{k}`; the file is corrupt or was not written by amlmil"),
            ));
        }
        if !meta.contains_key(CHECKSUM_KEY) {
            log::warn!(
                "{}: no checksum (written before libamlmil checked its files); corruption cannot be detected. Save it again to add one",
                path.display()
            );
        }
        let json = meta.get(MANIFEST_KEY).ok_or_else(|| {
            Error::checkpoint(
                path,
                format!("no `{MANIFEST_KEY}` manifest in __metadata__; was it written by amlmil (or `amlmil import`)?"),
            )
        })?;
        let manifest: Manifest = serde_json::from_str(json)
            .map_err(|e| Error::checkpoint(path, format!("manifest is not valid: {e}")))?;
        let tensors = raw
            .into_iter()
            .map(|(name, t)| {
                let t = if t.kind() == Kind::Int64 {
                    t
                } else {
                    t.to_kind(Kind::Float)
                };
                (name, t)
            })
            .collect();
        Ok(Checkpoint { manifest, tensors })
    }

    /// Reads a checkpoint that must be an encoder.
    pub fn read_encoder(path: &Path) -> Result<(EncoderManifest, HashMap<String, Tensor>)> {
        let ck = Self::read(path)?;
        match ck.manifest {
            Manifest::Encoder(m) => Ok((m, ck.tensors)),
            other => Err(Error::checkpoint(
                path,
                format!(
                    "is a `{}` checkpoint, expected an `encoder` checkpoint",
                    other.kind()
                ),
            )),
        }
    }

    /// Reads a checkpoint that must be an attention-MIL head.
    pub fn read_mil(path: &Path) -> Result<(MilManifest, HashMap<String, Tensor>)> {
        let ck = Self::read(path)?;
        match ck.manifest {
            Manifest::Mil(m) => Ok((m, ck.tensors)),
            other => Err(Error::checkpoint(
                path,
                format!(
                    "is a `{}` checkpoint, expected a `mil` checkpoint",
                    other.kind()
                ),
            )),
        }
    }
}

/// Copies `tensors` into the variables of `vs`, checking names, shapes and finiteness.
///
/// Every variable must be present with the same shape; tensors that are not
/// variables are ignored only when listed in `ignorable_suffixes`.
pub fn load_into(
    vs: &mut VarStore,
    tensors: HashMap<String, Tensor>,
    path: &Path,
    ignorable_suffixes: &[&str],
) -> Result<()> {
    load_into_named(vs, tensors, path, ignorable_suffixes, &|name| {
        name.to_owned()
    })
}

/// [`load_into`] for tensors renamed on their way in (`amlmil import`): errors
/// name a tensor as `source_name` gives it, i.e. as the user's file spells it.
pub fn load_into_named(
    vs: &mut VarStore,
    mut tensors: HashMap<String, Tensor>,
    path: &Path,
    ignorable_suffixes: &[&str],
    source_name: &dyn Fn(&str) -> String,
) -> Result<()> {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let src = tensors.remove(name).ok_or_else(|| {
            Error::checkpoint(
                path,
                format!(
                    "tensor `{}` is missing (expected shape {:?})",
                    source_name(name),
                    var.size()
                ),
            )
        })?;
        if src.size() != var.size() {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor `{}` has shape {:?}, the model's architecture needs {:?}",
                    source_name(name),
                    src.size(),
                    var.size()
                ),
            ));
        }
        if !bool::try_from(src.isfinite().all())? {
            return Err(Error::NonFinite(format!(
                "tensor `{}` of checkpoint {}",
                source_name(name),
                path.display()
            )));
        }
        tch::no_grad(|| var.shallow_clone().f_copy_(&src))?;
    }
    let mut extra: Vec<String> = tensors
        .into_keys()
        .filter(|k| !ignorable_suffixes.iter().any(|s| k.ends_with(s)))
        .collect();
    extra.sort();
    if let Some(first) = extra.first() {
        return Err(Error::checkpoint(
            path,
            format!(
                "tensor `{}` is not part of the model's architecture ({} unexpected tensors)",
                source_name(first),
                extra.len()
            ),
        ));
    }
    Ok(())
}

/// Writes a seeded random encoder checkpoint for `input_size` px cells.
pub fn write_random_encoder(
    path: &Path,
    arch: EncoderArch,
    input_size: i64,
    seed: u64,
) -> Result<EncoderManifest> {
    if input_size < 32 {
        return Err(crate::Error::invalid(
            "input_size",
            format!("{input_size} px is below the 32 px minimum"),
        ));
    }
    let manifest =
        EncoderManifest::new(arch, input_size, Provenance::new("random-init", Some(seed)));
    let vs = match &manifest.vit {
        Some(vit) => {
            vit.validate(arch, input_size)?;
            crate::model::init::random_vit(vit, seed).1
        }
        None => crate::model::init::random_encoder(arch, seed).1,
    };
    save(path, &Manifest::Encoder(manifest.clone()), &vs)?;
    Ok(manifest)
}

/// Writes a seeded random MIL checkpoint for the given classes and encoder geometry.
pub fn write_random_mil(
    path: &Path,
    config: &MilConfig,
    classes: Vec<String>,
    input_size: i64,
    seed: u64,
) -> Result<MilManifest> {
    if classes.len() as i64 != config.num_classes {
        return Err(crate::Error::invalid(
            "classes",
            format!(
                "{} names for num_classes = {}",
                classes.len(),
                config.num_classes
            ),
        ));
    }
    let (_, vs) = crate::model::init::random_mil(config, seed)?;
    let manifest = MilManifest::new(
        config.clone(),
        classes,
        input_size,
        Provenance::new("random-init", Some(seed)),
    );
    save(path, &Manifest::Mil(manifest.clone()), &vs)?;
    Ok(manifest)
}
