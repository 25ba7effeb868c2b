//! The crate's error type. Every variant carries the argument, file or shape it is
//! about, so the message that reaches a C caller through `amlmil_last_error()` says
//! what to fix. The C ABI maps each variant to a fixed `amlmil_status` number.
use std::path::PathBuf;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument is out of range or inconsistent (names the argument).
    #[error("invalid argument `{arg}`: {reason}")]
    InvalidArgument { arg: String, reason: String },

    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Image bytes could not be decoded or have an unsupported pixel layout.
    #[error("cannot decode image {source_name}: {reason}")]
    Decode { source_name: String, reason: String },

    /// A checkpoint is missing its manifest, is of another kind, or disagrees with its tensors.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    /// Two parts that must fit together do not (encoder vs MIL head, shapes).
    #[error("mismatch: {0}")]
    Mismatch(String),

    /// A bag without cells cannot be classified.
    #[error("bag `{0}` is empty: add at least one cell before classifying")]
    EmptyBag(String),

    /// NaN or infinite values where finite numbers are required.
    #[error("non-finite values in {0}")]
    NonFinite(String),

    /// Unknown device string or a device that is not present.
    #[error("device `{device}`: {reason}")]
    Device { device: String, reason: String },

    /// A dataset folder does not follow the documented layout.
    #[error("dataset {path}: {reason}")]
    Dataset { path: PathBuf, reason: String },

    /// The caller asked to stop (progress callback returned non-zero).
    #[error("cancelled by the caller during {0}")]
    Cancelled(String),

    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// A preprocessing plugin could not be loaded, or failed on a batch.
    #[error("preprocessing plugin {name}: {reason}")]
    Plugin { name: String, reason: String },

    /// A call that runs one at a time per process is already running.
    #[error("busy: {0}")]
    Busy(String),

    /// A request exceeds a configured resource limit (names the option that sets it).
    #[error("limit `{option}` exceeded: {reason}")]
    Limit { option: String, reason: String },

    /// What was asked for is valid but this machine or build cannot do it
    /// (names the option and what is missing, e.g. an instruction set).
    #[error("`{option}` is not supported here: {reason}")]
    Unsupported { option: String, reason: String },
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(arg: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            arg: arg.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Limit`].
    pub fn limit(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Limit {
            option: option.into(),
            reason: reason.into(),
        }
    }

    /// Renames the argument of an [`Error::InvalidArgument`] — to name the
    /// section or file it sits in (`training.epochs`, `run.toml (seed)`);
    /// other errors pass unchanged.
    pub fn map_arg(self, rename: impl FnOnce(&str) -> String) -> Self {
        match self {
            Error::InvalidArgument { arg, reason } => Error::InvalidArgument {
                arg: rename(&arg),
                reason,
            },
            other => other,
        }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unsupported {
            option: option.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Checkpoint`].
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
