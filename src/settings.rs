//! Settings files: every configuration (pre-training, cross-validation, the
//! experiment) is read from JSON or TOML into one JSON value, then merged over
//! a preset with [`merge`] and checked by its own type.
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
    e.map_arg(|arg| format!("{} ({arg})", path.display()))
}

/// Deserialises a merged settings value; an error names the key path that
/// failed (`pretrain.byol`, `cohort.seed`), or `config` at the top level.
pub fn deserialize<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let arg = if path == "." {
            "config".to_string()
        } else {
            path
        };
        Error::invalid(arg, e.into_inner().to_string())
    })
}

/// [`deserialize`], then checks that the result keeps every key of `value`:
/// serde silently drops some (keys beside the `type` tag of a variant without
/// fields, such as `{"type": "pooled", "chanels": 4}`), which would otherwise
/// pass as settings. A dropped key is an error naming its path; empty
/// objects and `null` may be dropped (they set nothing).
pub fn deserialize_strict<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: Value,
) -> Result<T> {
    let config: T = deserialize(value.clone())?;
    let kept =
        serde_json::to_value(&config).map_err(|e| Error::invalid("config", e.to_string()))?;
    match first_dropped(&value, &kept, "") {
        Some(path) => Err(Error::invalid(path, "unknown key (not a setting here)")),
        None => Ok(config),
    }
}

/// `path.key`, or `key` at the top level.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The path of the first key of `input` that `kept` lacks.
fn first_dropped(input: &Value, kept: &Value, path: &str) -> Option<String> {
    let (Value::Object(input), Value::Object(kept)) = (input, kept) else {
        return None;
    };
    for (key, v) in input {
        let p = join(path, key);
        match kept.get(key) {
            Some(k) => {
                if let Some(d) = first_dropped(v, k, &p) {
                    return Some(d);
                }
            }
            None if v.is_null() || v.as_object().is_some_and(|o| o.is_empty()) => {}
            None => return Some(p),
        }
    }
    None
}

/// Merges `over` into `base` key by key: objects recursively, anything else
/// (numbers, lists, `null`) replaced; an object whose `type` tag differs from
/// the base's replaces it whole (another variant of a tagged setting). A key
/// `base` lacks is an error naming its path (`swav.num_prototypes`) and
/// `what` (`swav pre-training`); with `what = None` it is added instead.
pub fn merge(base: &mut Value, over: Value, what: Option<&str>) -> Result<()> {
    merge_at(base, over, "", what)
}

fn merge_at(base: &mut Value, over: Value, path: &str, what: Option<&str>) -> Result<()> {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) if same_variant(b, &o) => {
            for (k, v) in o {
                let key = join(path, &k);
                match (b.get_mut(&k), what) {
                    (Some(slot), _) => merge_at(slot, v, &key, what)?,
                    (None, None) => {
                        b.insert(k, v);
                    }
                    (None, Some(what)) => {
                        return Err(Error::invalid(
                            key,
                            format!("unknown key (not a setting of {what})"),
                        ))
                    }
                }
            }
            Ok(())
        }
        (slot, v) => {
            *slot = v;
            Ok(())
        }
    }
}

/// Whether an override object keeps the base's `type` tag (or has none).
fn same_variant(
    base: &serde_json::Map<String, Value>,
    over: &serde_json::Map<String, Value>,
) -> bool {
    match (base.get("type"), over.get("type")) {
        (Some(b), Some(o)) => b == o,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_key_by_key_and_names_unknown_keys() {
        let mut base = json!({"a": 1, "b": {"c": 2, "d": [1, 2]}, "g": {"type": "x", "k": 1}});
        merge(
            &mut base,
            json!({"b": {"d": [3]}, "g": {"type": "y"}}),
            Some("t"),
        )
        .unwrap();
        assert_eq!(
            base,
            json!({"a": 1, "b": {"c": 2, "d": [3]}, "g": {"type": "y"}})
        );
        let e = merge(&mut base, json!({"b": {"e": 1}}), Some("tests")).unwrap_err();
        assert!(e.to_string().contains("b.e"), "{e}");
        merge(&mut base, json!({"b": {"e": 1}}), None).unwrap();
        assert_eq!(base["b"]["e"], 1);
    }
}
