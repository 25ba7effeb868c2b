//! Typed model metadata of a session (`amlmil_model_info`), available before
//! any result: class count and names, input size, feature shapes, checkpoint
//! hashes and provenance, device.
use std::ffi::{c_char, CString};
use std::sync::OnceLock;

use super::boundary::{arg_ref, guard, guard_value};
use super::session::amlmil_session;
use super::status::amlmil_status;
use crate::error::Error;
use crate::inference::Session;

/// Typed facts about a session's models, written by
/// `amlmil_session_model_info(session, &info, sizeof info)`: fields are only
/// ever appended, and the library writes those that fit the size given.
/// Strings are owned by the session and valid until it is freed.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct amlmil_model_info {
    /// Bytes the library wrote (the smaller of the caller's and its own size).
    pub struct_size: usize,
    /// Number of classes C (`amlmil_session_class_name` gives their names).
    pub num_classes: usize,
    /// Side in pixels of the square encoder input every cell is resized to.
    pub input_size: u32,
    /// Length of a pooled feature vector (`amlmil_session_embed`): 512 for a
    /// ResNet, a ViT's D′ (384 for ViT-S/14 class tokens).
    pub feature_dim: u32,
    /// Feature map of one cell (`amlmil_session_feature_maps`,
    /// `amlmil_session_classify_features`): channels, height, width.
    pub feature_map_channels: u32,
    pub feature_map_height: u32,
    pub feature_map_width: u32,
    /// Physical pixel size the encoder was trained at, in µm, or NaN when the
    /// checkpoint does not record it (provenance detail `pixel_size_um`).
    pub pixel_size_um: f64,
    /// `"resnet18"` or `"resnet34"`.
    pub encoder_architecture: *const c_char,
    /// How the encoder was trained: `"simclr"`, `"swav"`, `"dino"`,
    /// `"supervised"`, `"imported"`, `"random-init"`, …
    pub encoder_method: *const c_char,
    /// Hex SHA-256 of the encoder checkpoint's contents (verified at load), or
    /// `""` for a file written before checksums.
    pub encoder_sha256: *const c_char,
    /// How the MIL head was made (`"mil"` when trained by this library).
    pub mil_method: *const c_char,
    /// Hex SHA-256 of the MIL checkpoint's contents, or `""`.
    pub mil_sha256: *const c_char,
    /// Tool that wrote the MIL checkpoint, e.g. `"amlmil 0.1.0"`.
    pub mil_tool: *const c_char,
    /// Device the session runs on: `"cpu"` or `"cuda:N"`.
    pub device: *const c_char,
    /// Arithmetic of the encoder in use: `"fp32"`, `"fp16"` or `"bf16"` (the
    /// attention, softmax and classifiers always run in fp32).
    pub precision: *const c_char,
    /// Attention-MIL heads in the MIL checkpoint: 1, or K ≥ 2 for an ensemble
    /// of cross-validation runs (`amlmil_ensemble`), whose class probabilities
    /// and per-class attention are the means of its heads'.
    pub num_heads: u32,
}

/// Each field of `amlmil_model_info` with its byte range: a caller's size
/// must not end inside one.
const FIELDS: [(&str, usize, usize); 17] = {
    macro_rules! fields {
        ($($f:ident: $t:ty),* $(,)?) => {
            [$((
                stringify!($f),
                std::mem::offset_of!(amlmil_model_info, $f),
                std::mem::offset_of!(amlmil_model_info, $f) + std::mem::size_of::<$t>(),
            )),*]
        };
    }
    fields!(
        struct_size: usize,
        num_classes: usize,
        input_size: u32,
        feature_dim: u32,
        feature_map_channels: u32,
        feature_map_height: u32,
        feature_map_width: u32,
        pixel_size_um: f64,
        encoder_architecture: *const c_char,
        encoder_method: *const c_char,
        encoder_sha256: *const c_char,
        mil_method: *const c_char,
        mil_sha256: *const c_char,
        mil_tool: *const c_char,
        device: *const c_char,
        precision: *const c_char,
        num_heads: u32,
    )
};

/// The session's strings behind `amlmil_model_info`, made on first use.
#[derive(Debug, Default)]
pub(crate) struct InfoStrings(OnceLock<Strings>);

#[derive(Debug)]
struct Strings {
    encoder_architecture: CString,
    encoder_method: CString,
    encoder_sha256: CString,
    mil_method: CString,
    mil_sha256: CString,
    mil_tool: CString,
    device: CString,
    precision: CString,
    classes: Vec<CString>,
}

fn c(s: impl Into<String>) -> CString {
    CString::new(s.into().replace('\0', "")).unwrap_or_default()
}

impl InfoStrings {
    fn get(&self, s: &Session) -> &Strings {
        self.0.get_or_init(|| {
            let [enc_sha, mil_sha] = s.checksums();
            let device = match s.device() {
                tch::Device::Cuda(i) => format!("cuda:{i}"),
                _ => "cpu".to_owned(),
            };
            Strings {
                encoder_architecture: c(s.encoder_manifest().architecture.name()),
                encoder_method: c(s.encoder_manifest().provenance.method.clone()),
                encoder_sha256: c(enc_sha.unwrap_or("")),
                mil_method: c(s.mil_manifest().provenance.method.clone()),
                mil_sha256: c(mil_sha.unwrap_or("")),
                mil_tool: c(s.mil_manifest().provenance.tool.clone()),
                device: c(device),
                precision: c(s.precision().name()),
                classes: s.classes().iter().map(|n| c(n.clone())).collect(),
            }
        })
    }
}

/// Writes the session's model metadata into the first `info_size` bytes of
/// `out_info` (pass `sizeof(amlmil_model_info)`; a caller built against an
/// older header gets the fields it knows, never more bytes than it gave).
///
/// @return AMLMIL_STATUS_OK; _NULL_ARGUMENT; _INVALID_ARGUMENT when
///   `info_size` does not hold `input_size` whole or ends inside a field.
///   Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_model_info(
    session: *const amlmil_session,
    out_info: *mut amlmil_model_info,
    info_size: usize,
) -> amlmil_status {
    guard(|| {
        let session = arg_ref(session, "session")?;
        if out_info.is_null() {
            return Err(super::status::FfiError::Null("out_info"));
        }
        let size = info_size;
        let s = session.core();
        let strings = session.info_strings().get(s);
        let m = s.encoder_manifest();
        let pixel_size_um = m
            .provenance
            .details
            .get("pixel_size_um")
            .and_then(|v| v.as_f64())
            .unwrap_or(f64::NAN);
        let n = size.min(std::mem::size_of::<amlmil_model_info>());
        let full = amlmil_model_info {
            struct_size: n,
            num_classes: s.classes().len(),
            input_size: m.input_size as u32,
            feature_dim: s.feature_dim() as u32,
            feature_map_channels: m.feature_map[0] as u32,
            feature_map_height: m.feature_map[1] as u32,
            feature_map_width: m.feature_map[2] as u32,
            pixel_size_um,
            encoder_architecture: strings.encoder_architecture.as_ptr(),
            encoder_method: strings.encoder_method.as_ptr(),
            encoder_sha256: strings.encoder_sha256.as_ptr(),
            mil_method: strings.mil_method.as_ptr(),
            mil_sha256: strings.mil_sha256.as_ptr(),
            mil_tool: strings.mil_tool.as_ptr(),
            device: strings.device.as_ptr(),
            precision: strings.precision.as_ptr(),
            num_heads: s.mil_manifest().head_count() as u32,
        };
        let min = FIELDS
            .iter()
            .find(|(name, ..)| *name == "input_size")
            .map_or(0, |&(.., end)| end);
        if size < min {
            return Err(Error::invalid(
                "info_size",
                format!("{size} bytes does not hold `input_size` ({min}); pass sizeof(amlmil_model_info)"),
            )
            .into());
        }
        if let Some((name, start, end)) = FIELDS.iter().find(|(_, a, b)| *a < n && n < *b) {
            return Err(Error::invalid(
                "info_size",
                format!("{size} bytes ends inside `{name}` (bytes {start}..{end}); pass sizeof(amlmil_model_info)"),
            )
            .into());
        }
        // Copy only what the caller's (possibly older) struct has room for.
        std::ptr::copy_nonoverlapping(
            &full as *const amlmil_model_info as *const u8,
            out_info as *mut u8,
            n,
        );
        Ok(())
    })
}

/// Name of class `class_index` (bag label, e.g. `"PML_RARA"`), or NULL if
/// `session` is NULL or the index is out of range. Owned by the session.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_class_name(
    session: *const amlmil_session,
    class_index: usize,
) -> *const c_char {
    guard_value(std::ptr::null(), || {
        let Some(session) = session.as_ref() else {
            return std::ptr::null();
        };
        session
            .info_strings()
            .get(session.core())
            .classes
            .get(class_index)
            .map_or(std::ptr::null(), |c| c.as_ptr())
    })
}
