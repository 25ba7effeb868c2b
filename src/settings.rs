//! Settings files: every configuration (pre-training, cross-validation, the
//! experiment) is read from JSON or TOML into one JSON value, then merged over
//! a preset and checked by its own type.
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Parses JSON, or TOML when `is_toml`, into a JSON value.
pub fn parse_value(text: &str, is_toml: bool) -> Result<Value> {
    if is_toml {
        toml::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))
    } else {
        serde_json::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))
    }
}

/// Reads a `.toml` (TOML) or other (JSON) settings file; errors name the file.
pub fn read_value(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io("cannot read config", path, e))?;
    parse_value(&text, path.extension().is_some_and(|e| e == "toml")).map_err(|e| in_file(path, e))
}

/// Names `path` in an invalid-argument error about its contents.
pub fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::InvalidArgument { arg, reason } => {
            Error::invalid(format!("{} ({arg})", path.display()), reason)
        }
        other => other,
    }
}
