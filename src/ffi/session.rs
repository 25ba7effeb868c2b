//! `amlmil_session`: a loaded encoder + MIL head, and the calls that classify bags.
use std::ffi::{c_char, c_void, CString};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tch::Tensor;

use super::bag::{amlmil_bag, BagCells};
use super::boundary::{
    arg_ref, arg_slice, arg_str, guard, guard_value, into_c_string, out_ptr, out_slice, FfiResult,
};
use super::cancel::with_cancel_check;
use super::model_info::InfoStrings;
use super::plugin::{amlmil_preprocess_callback, CallbackPreprocessor};
use super::result::amlmil_result;
use super::status::{amlmil_status, FfiError};
use crate::device::Precision;
use crate::error::Error;
use crate::inference::{Session, SessionOptions};
use crate::plugin::{PluginSpec, RustPlugin};

/// Opaque session. Create with `amlmil_session_new`, free with `amlmil_session_free`.
///
/// Thread safety: every function that takes a `const amlmil_session*` may be
/// called from several threads at once on the same session.
#[allow(non_camel_case_types)]
pub struct amlmil_session {
    inner: Arc<Session>,
    /// Moved by `amlmil_session_cancel`; calls that started before see it move.
    cancel_epoch: Arc<AtomicU64>,
    /// Strings of `amlmil_model_info`, owned here.
    info: InfoStrings,
}

impl amlmil_session {
    /// The session, shared (streaming bags keep it alive).
    pub(crate) fn shared(&self) -> Arc<Session> {
        self.inner.clone()
    }

    pub(crate) fn core(&self) -> &Session {
        &self.inner
    }

    pub(crate) fn info_strings(&self) -> &InfoStrings {
        &self.info
    }

    /// Runs `f` so that `amlmil_session_cancel` from another thread stops it
    /// at its next progress report.
    fn cancellable<R>(&self, f: impl FnOnce() -> R) -> R {
        let epoch = self.cancel_epoch.clone();
        let start = epoch.load(Ordering::SeqCst);
        with_cancel_check(Box::new(move || epoch.load(Ordering::SeqCst) != start), f)
    }
}

/// Arithmetic of the encoder (values of `amlmil_session_options.precision`).
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum amlmil_precision {
    /// 32-bit float (default).
    Fp32 = 0,
    /// 16-bit float (CUDA only).
    Fp16 = 1,
    /// bfloat16: on CUDA, and on a CPU with native bf16 (avx512_bf16 or AMX),
    /// where the fused path runs it; on another CPU `amlmil_session_new`
    /// returns AMLMIL_STATUS_UNSUPPORTED naming the missing instruction set.
    Bf16 = 2,
}

/// Options for `amlmil_session_new`. Always initialise with
/// `amlmil_session_options_init` (a macro for
/// `amlmil_session_options_init_sized(o, sizeof(amlmil_session_options))`),
/// then change fields:
/// new fields are only ever appended, and `struct_size` tells the library
/// which ones the caller knows.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct amlmil_session_options {
    /// `sizeof(amlmil_session_options)` as compiled by the caller (set by init).
    pub struct_size: usize,
    /// `"auto"` (default: first GPU if any, else CPU), `"cpu"`, `"cuda"` or
    /// `"cuda:N"`. NULL means `"auto"`. Only read during `amlmil_session_new`.
    pub device: *const c_char,
    /// One of `amlmil_precision`.
    pub precision: u32,
    /// Cells per encoder forward pass (default 32).
    pub batch_size: u32,
    /// libtorch intra-op threads; 0 keeps libtorch's default. Process-wide.
    pub num_threads: u32,
    /// 1 (default): on the CPU run the encoder with NHWC strides (faster); 0: plain
    /// NCHW, bit-identical to PyTorch's default layout. Ignored on CUDA and when
    /// `fused` is 1.
    pub channels_last: u32,
    /// 1 (default): on the CPU fold batch norm into the convolutions and run the
    /// encoder on oneDNN's layout with pre-packed weights (fastest; equal to the
    /// plain encoder to float rounding); 0: the plain encoder. Ignored on CUDA.
    pub fused: u32,
    /// 1 (default): run one small batch through the encoder in
    /// `amlmil_session_new`, so the first bag does not pay for set-up; 0: skip.
    pub warm_up: u32,
    /// Preprocessing callback run on each batch of cells before encoding
    /// (after the plugin of `plugin_path`, if both are set); NULL: none. See
    /// `amlmil_preprocess_callback` for the contract.
    pub preprocess: amlmil_preprocess_callback,
    /// Passed unchanged to every `preprocess` call.
    pub preprocess_user_data: *mut c_void,
    /// UTF-8 path of a Rust preprocessing plugin (a shared library built
    /// against the `amlmil-plugin` interface crate, `plugins/interface`);
    /// NULL: none. Loaded by `amlmil_session_new`, which fails with
    /// AMLMIL_STATUS_PLUGIN for a missing or incompatible file.
    pub plugin_path: *const c_char,
    /// Configuration string handed to the plugin's constructor (JSON by
    /// convention); NULL means "". Only read during `amlmil_session_new`.
    pub plugin_config: *const c_char,
    /// Most cells one call classifies, embeds or streams into a bag (default
    /// 50,000; must be at least 1). Larger bags are refused with
    /// AMLMIL_STATUS_LIMIT before any work or allocation.
    pub max_cells_per_bag: u64,
    /// Most bytes of working memory one encoder batch may take, estimated as
    /// `batch_size` × 160 bytes × `input_size`² (`amlmil_model_info`); 0
    /// (default): half the machine's physical memory. `amlmil_session_new`
    /// fails with AMLMIL_STATUS_LIMIT for a larger batch instead of risking an
    /// out-of-memory kill later.
    pub max_batch_bytes: u64,
}

/// Progress of a long call, passed to an `amlmil_progress_callback`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct amlmil_progress {
    /// What is running, e.g. `"encode"`; valid during the callback only.
    pub stage: *const c_char,
    /// Units done and total in this stage (e.g. cells encoded).
    pub done: u64,
    pub total: u64,
    /// Training epoch and cross-validation fold, or -1 when not applicable.
    pub epoch: i32,
    pub fold: i32,
    /// Current loss, or NaN when not applicable.
    pub loss: f64,
}

/// Called from the calling thread during long calls. Return 0 to continue,
/// anything else to cancel (the call then returns AMLMIL_STATUS_CANCELLED).
#[allow(non_camel_case_types)]
pub type amlmil_progress_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, progress: *const amlmil_progress) -> i32>;

/// One progress report to a C callback; `false` when the caller asks to cancel
/// (no callback: never). `epoch`/`fold` -1 and `loss` NaN mean "not applicable".
pub(crate) fn report_progress(
    cb: amlmil_progress_callback,
    user_data: *mut c_void,
    stage: &str,
    (done, total): (u64, u64),
    (epoch, fold): (i32, i32),
    loss: f64,
) -> bool {
    if super::cancel::cancel_requested() {
        return false;
    }
    let Some(f) = cb else { return true };
    let stage = CString::new(stage).unwrap_or_default();
    let p = amlmil_progress {
        stage: stage.as_ptr(),
        done,
        total,
        epoch,
        fold,
        loss,
    };
    // SAFETY: the caller vouches for `f` and `user_data`.
    unsafe { f(user_data, &p) == 0 }
}

/// Adapts a C progress callback to the core's progress closure.
pub(crate) fn progress_adapter(
    cb: amlmil_progress_callback,
    user_data: *mut c_void,
) -> impl FnMut(&str, usize, usize) -> bool {
    move |stage, done, total| {
        report_progress(
            cb,
            user_data,
            stage,
            (done as u64, total as u64),
            (-1, -1),
            f64::NAN,
        )
    }
}

impl Default for amlmil_session_options {
    fn default() -> Self {
        let d = SessionOptions::default();
        amlmil_session_options {
            struct_size: std::mem::size_of::<Self>(),
            device: std::ptr::null(),
            precision: amlmil_precision::Fp32 as u32,
            batch_size: d.batch_size as u32,
            num_threads: 0,
            channels_last: d.channels_last as u32,
            fused: d.fused as u32,
            warm_up: d.warm_up as u32,
            preprocess: None,
            preprocess_user_data: std::ptr::null_mut(),
            plugin_path: std::ptr::null(),
            plugin_config: std::ptr::null(),
            max_cells_per_bag: d.max_cells as u64,
            max_batch_bytes: 0,
        }
    }
}

/// Size of `amlmil_session_options` in the first release of ABI 1 (through
/// `warm_up`): what the unsized `amlmil_session_options_init` writes.
const OPTIONS_SIZE_V1: usize = std::mem::offset_of!(amlmil_session_options, preprocess);

/// Fills the first `size` bytes of `options` (the caller's
/// `sizeof(amlmil_session_options)`) with this library's defaults and sets
/// `struct_size` to the part written: a library newer than the caller's header
/// never writes past the caller's struct, an older one leaves the fields it
/// does not know as they were (zero them first) and ignores them.
///
/// @return AMLMIL_STATUS_OK; _INVALID_ARGUMENT when `size` does not reach the
///   `device` field.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_options_init_sized(
    options: *mut amlmil_session_options,
    size: usize,
) -> amlmil_status {
    guard(|| {
        if options.is_null() {
            return Err(FfiError::Null("options"));
        }
        let min = std::mem::offset_of!(amlmil_session_options, precision);
        if size < min {
            return Err(Error::invalid(
                "size",
                format!("{size} bytes does not reach `device` ({min}); pass sizeof(amlmil_session_options)"),
            )
            .into());
        }
        let n = size.min(std::mem::size_of::<amlmil_session_options>());
        let defaults = amlmil_session_options {
            struct_size: n,
            ..Default::default()
        };
        std::ptr::copy_nonoverlapping(
            &defaults as *const amlmil_session_options as *const u8,
            options as *mut u8,
            n,
        );
        Ok(())
    })
}

/// Fills `options` with the defaults; writes only the fields of the first
/// ABI-1 release (through `warm_up`), which every caller's struct has. The
/// header defines a macro of the same name after this declaration that calls
/// `amlmil_session_options_init_sized(options, sizeof(amlmil_session_options))`
/// instead, so code compiled against this header initialises every field it
/// knows (`AMLMIL_NO_INIT_MACRO` turns the macro off).
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_options_init(
    options: *mut amlmil_session_options,
) -> amlmil_status {
    amlmil_session_options_init_sized(options, OPTIONS_SIZE_V1)
}

/// What the options ask to run on cells before encoding.
#[derive(Default)]
struct Preprocessing {
    plugin: Option<PluginSpec>,
    callback: Option<CallbackPreprocessor>,
}

/// Reads the fields a caller's (possibly older or newer) struct has; fields
/// beyond its `struct_size` keep their defaults.
unsafe fn read_options(
    options: *const amlmil_session_options,
) -> FfiResult<(SessionOptions, Preprocessing)> {
    let mut out = SessionOptions::default();
    let mut pre = Preprocessing::default();
    let Some(o) = options.as_ref() else {
        return Ok((out, pre));
    };
    let size = o.struct_size;
    macro_rules! present {
        ($field:ident) => {
            size >= std::mem::offset_of!(amlmil_session_options, $field)
                + std::mem::size_of_val(&o.$field)
        };
    }
    if !present!(device) {
        return Err(Error::invalid(
            "options.struct_size",
            format!("{size} is too small; initialise options with amlmil_session_options_init"),
        )
        .into());
    }
    if !o.device.is_null() {
        out.device = arg_str(o.device, "options.device")?.parse()?;
    }
    if present!(precision) {
        out.precision = match o.precision {
            0 => Precision::Fp32,
            1 => Precision::Fp16,
            2 => Precision::Bf16,
            p => {
                return Err(Error::invalid(
                    "options.precision",
                    format!("{p} is not an amlmil_precision"),
                )
                .into())
            }
        };
    }
    if present!(batch_size) {
        if o.batch_size == 0 {
            return Err(Error::invalid("options.batch_size", "must be at least 1").into());
        }
        out.batch_size = o.batch_size as usize;
    }
    if present!(num_threads) && o.num_threads > 0 {
        out.num_threads = Some(o.num_threads as usize);
    }
    if present!(channels_last) {
        out.channels_last = o.channels_last != 0;
    }
    if present!(fused) {
        out.fused = o.fused != 0;
    }
    if present!(warm_up) {
        out.warm_up = o.warm_up != 0;
    }
    if present!(preprocess_user_data) {
        pre.callback = CallbackPreprocessor::new(o.preprocess, o.preprocess_user_data);
    }
    if present!(plugin_config) && !o.plugin_path.is_null() {
        let path = arg_str(o.plugin_path, "options.plugin_path")?;
        let config = if o.plugin_config.is_null() {
            ""
        } else {
            arg_str(o.plugin_config, "options.plugin_config")?
        };
        pre.plugin = Some(PluginSpec {
            path: path.into(),
            config: config.to_owned(),
        });
    }
    if present!(max_cells_per_bag) {
        if o.max_cells_per_bag == 0 {
            return Err(Error::invalid("options.max_cells_per_bag", "must be at least 1").into());
        }
        out.max_cells = usize::try_from(o.max_cells_per_bag).unwrap_or(usize::MAX);
    }
    if present!(max_batch_bytes) && o.max_batch_bytes > 0 {
        out.max_batch_bytes = Some(o.max_batch_bytes);
    }
    Ok((out, pre))
}

/// Loads an encoder and an attention-MIL checkpoint into a new session.
///
/// @param encoder_path, mil_path `.safetensors` checkpoints (UTF-8 paths).
/// @param options NULL for defaults, or initialised with `amlmil_session_options_init`.
/// @param[out] out_session receives the session; free with `amlmil_session_free`.
///   Untouched on failure.
/// @return AMLMIL_STATUS_OK; AMLMIL_STATUS_IO, _CHECKPOINT (missing manifest, wrong
///   kind, truncated, tensors not matching the manifest), _MISMATCH (head does not
///   fit the encoder), _DEVICE (unknown device or no such GPU), _INVALID_ARGUMENT,
///   _LIMIT (`batch_size` over `max_batch_bytes`), _PLUGIN, _UNSUPPORTED (bf16
///   on a CPU without native bf16).
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_new(
    encoder_path: *const c_char,
    mil_path: *const c_char,
    options: *const amlmil_session_options,
    out_session: *mut *mut amlmil_session,
) -> amlmil_status {
    guard(|| {
        let encoder_path = arg_str(encoder_path, "encoder_path")?;
        let mil_path = arg_str(mil_path, "mil_path")?;
        let out = out_ptr(out_session, "out_session")?;
        let (options, pre) = read_options(options)?;
        // The plugin first: a bad plugin fails before the models load.
        let plugin = match &pre.plugin {
            Some(spec) => Some(RustPlugin::load(&spec.path, &spec.config)?),
            None => None,
        };
        let mut inner = Session::new(Path::new(encoder_path), Path::new(mil_path), &options)?;
        if let Some(p) = plugin {
            inner = inner.with_preprocessor(Arc::new(p));
        }
        if let Some(cb) = pre.callback {
            inner = inner.with_preprocessor(Arc::new(cb));
        }
        *out = Box::into_raw(Box::new(amlmil_session {
            inner: Arc::new(inner),
            cancel_epoch: Arc::new(AtomicU64::new(0)),
            info: InfoStrings::default(),
        }));
        Ok(())
    })
}

/// Cancels every `amlmil_session_classify` and `amlmil_session_embed` call
/// running on `session` now, from any thread: each returns
/// AMLMIL_STATUS_CANCELLED before its next encoder batch. Calls started after
/// this one run normally. `NULL` is a no-op.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_cancel(session: *const amlmil_session) {
    guard_value((), || {
        if let Some(s) = session.as_ref() {
            s.cancel_epoch.fetch_add(1, Ordering::SeqCst);
        }
    })
}

/// Frees a session. `NULL` is a no-op. No call on it may be running.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_free(session: *mut amlmil_session) {
    guard_value((), || {
        if !session.is_null() {
            drop(Box::from_raw(session));
        }
    })
}

/// Length of the per-cell feature vector written by `amlmil_session_embed` (512
/// for a ResNet, a ViT's D′),
/// or 0 if `session` is NULL.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_feature_dim(session: *const amlmil_session) -> usize {
    guard_value(0, || session.as_ref().map_or(0, |s| s.inner.feature_dim()))
}

/// Number of floats per cell that `amlmil_session_classify_features` expects
/// (channels × height × width of the encoder's feature map: 512·5·5 for a
/// ResNet at 144 px, D′·1·1 for a ViT),
/// or 0 if `session` is NULL.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_feature_map_len(session: *const amlmil_session) -> usize {
    guard_value(0, || {
        session.as_ref().map_or(0, |s| s.inner.feature_map_len())
    })
}

/// Session details as JSON: device, classes, both manifests.
///
/// @param[out] out_json library-owned string; free with `amlmil_string_free`.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_info(
    session: *const amlmil_session,
    out_json: *mut *mut c_char,
) -> amlmil_status {
    guard(|| {
        let s = &arg_ref(session, "session")?.inner;
        let out = out_ptr(out_json, "out_json")?;
        let info = serde_json::json!({
            "device": crate::device::device_name(s.device()),
            "classes": s.classes(),
            "encoder": s.encoder_manifest(),
            "mil": s.mil_manifest(),
        });
        *out = into_c_string(info.to_string());
        Ok(())
    })
}

/// Classifies a bag: subtype, probabilities and per-class attention over its cells.
///
/// Cells go through the session's preprocessing (`preprocess`, `plugin_path`)
/// first; the result lists only the cells kept.
///
/// @param progress optional; called before each encoder batch (stage
///   "encode", `done` cells encoded of `total`) and once after the last; may
///   cancel. `amlmil_session_cancel` cancels from another thread.
/// @param[out] out_result receives the result; free with `amlmil_result_free`.
///   Untouched on failure.
/// @return AMLMIL_STATUS_OK; _EMPTY_BAG (also when preprocessing dropped every
///   cell), _LIMIT (more than `max_cells_per_bag` cells), _NON_FINITE,
///   _CANCELLED, _PLUGIN, _TORCH.
/// Thread safety: concurrent calls on one session (and one bag) are allowed.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_classify(
    session: *const amlmil_session,
    bag: *const amlmil_bag,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out_result: *mut *mut amlmil_result,
) -> amlmil_status {
    guard(|| {
        let session = arg_ref(session, "session")?;
        let s = &session.inner;
        let bag = arg_ref(bag, "bag")?;
        let out = out_ptr(out_result, "out_result")?;
        let mut progress = progress_adapter(progress, user_data);
        let prediction = session.cancellable(|| match &*bag.inner.read() {
            BagCells::Plain(b) => s.classify(b, &mut progress),
            BagCells::Streaming(b) if Arc::ptr_eq(b.session(), s) => b.classify(&mut progress),
            BagCells::Streaming(_) => Err(Error::Mismatch(
                "the bag streams to another session; classify it with that one".into(),
            )),
        })?;
        *out = Box::into_raw(Box::new(amlmil_result::new(prediction)));
        Ok(())
    })
}

/// Classifies precomputed encoder feature maps (e.g. cached by the caller).
///
/// @param features `num_cells` × `amlmil_session_feature_map_len()` floats, row-major.
/// @param features_len number of floats in `features` (must equal the product above).
/// @param cell_ids `num_cells` ids, or NULL for 0, 1, …, num_cells-1.
/// @return _NON_FINITE for NaN/inf features, _INVALID_ARGUMENT for a wrong
///   length or a cell id given twice, _LIMIT for more than
///   `max_cells_per_bag` cells.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_classify_features(
    session: *const amlmil_session,
    features: *const f32,
    features_len: usize,
    num_cells: usize,
    cell_ids: *const u64,
    out_result: *mut *mut amlmil_result,
) -> amlmil_status {
    guard(|| {
        let s = &arg_ref(session, "session")?.inner;
        let out = out_ptr(out_result, "out_result")?;
        if num_cells == 0 {
            return Err(Error::EmptyBag("features (num_cells = 0)".into()).into());
        }
        s.check_cells(num_cells, "features")?;
        let [c, h, w] = s.encoder_manifest().feature_map;
        let per_cell = (c * h * w) as usize;
        let needed = num_cells.checked_mul(per_cell).ok_or_else(|| {
            Error::invalid(
                "num_cells",
                format!("{num_cells} cells overflow the buffer size"),
            )
        })?;
        if features_len != needed {
            return Err(Error::invalid(
                "features_len",
                format!("{features_len} floats given, {num_cells} cells x {c}x{h}x{w} = {needed} expected"),
            )
            .into());
        }
        let features = arg_slice(features, features_len, "features")?;
        let ids: Vec<u64> = if cell_ids.is_null() {
            (0..num_cells as u64).collect()
        } else {
            arg_slice(cell_ids, num_cells, "cell_ids")?.to_vec()
        };
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| !seen.insert(**id)) {
            return Err(Error::invalid(
                "cell_ids",
                format!(
                    "id {id} at position {i} appears earlier too; ids must be unique within a bag"
                ),
            )
            .into());
        }
        let maps = Tensor::f_from_slice(features)?.f_view([num_cells as i64, c, h, w])?;
        let prediction = s.classify_feature_maps(&maps, &ids)?;
        *out = Box::into_raw(Box::new(amlmil_result::new(prediction)));
        Ok(())
    })
}

/// Writes each cell's pooled encoder features (bag order, row-major N × feature_dim).
///
/// @param out buffer of `out_len` floats, at least N × `amlmil_session_feature_dim()`.
///   Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_embed(
    session: *const amlmil_session,
    bag: *const amlmil_bag,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out: *mut f32,
    out_len: usize,
) -> amlmil_status {
    encode_into(
        (session, bag, "amlmil_session_embed"),
        (progress, user_data),
        (out, out_len),
        Session::feature_dim,
        Session::embed,
    )
}

/// Writes each cell's encoder feature map (bag order; per cell channels ×
/// height × width floats, row-major, exactly what
/// `amlmil_session_classify_features` takes), so a caller can cache features
/// and classify later without re-encoding.
///
/// @param out buffer of `out_len` floats, at least N × `amlmil_session_feature_map_len()`.
///   Untouched on failure.
/// @return _EMPTY_BAG; _BUFFER_TOO_SMALL; _INVALID_ARGUMENT for a streaming bag
///   (it keeps no images) or when preprocessing drops cells; _CANCELLED.
#[no_mangle]
pub unsafe extern "C" fn amlmil_session_feature_maps(
    session: *const amlmil_session,
    bag: *const amlmil_bag,
    progress: amlmil_progress_callback,
    user_data: *mut c_void,
    out: *mut f32,
    out_len: usize,
) -> amlmil_status {
    encode_into(
        (session, bag, "amlmil_session_feature_maps"),
        (progress, user_data),
        (out, out_len),
        Session::feature_map_len,
        Session::feature_maps_flat,
    )
}

type EncodeFn = fn(&Session, &[crate::CellImage], crate::Progress) -> crate::Result<Vec<f32>>;

/// The body of `amlmil_session_embed` and `_feature_maps`: `per_cell` floats
/// for each cell of a plain, non-empty bag, the buffer checked before the
/// (slow) encoder runs and written only on success.
unsafe fn encode_into(
    (session, bag, call): (*const amlmil_session, *const amlmil_bag, &'static str),
    (progress, user_data): (amlmil_progress_callback, *mut c_void),
    (out, out_len): (*mut f32, usize),
    per_cell: fn(&Session) -> usize,
    encode: EncodeFn,
) -> amlmil_status {
    guard(|| {
        let session = arg_ref(session, "session")?;
        let s = &session.inner;
        let cells = arg_ref(bag, "bag")?.inner.read();
        let bag = cells.plain(call)?;
        if bag.is_empty() {
            return Err(Error::EmptyBag("bag".into()).into());
        }
        s.check_cells(bag.len(), "bag")?;
        let needed = bag.len() * per_cell(s);
        out_slice(out, out_len, needed, "out")?;
        let values = session
            .cancellable(|| encode(s, bag.cells(), &mut progress_adapter(progress, user_data)))?;
        out_slice(out, out_len, needed, "out")?.copy_from_slice(&values);
        Ok(())
    })
}
