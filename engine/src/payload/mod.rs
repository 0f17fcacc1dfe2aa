//! Payloads: the JSON object a point may carry beside its vector, the field indexes built over
//! them and the filter language that selects points by them.
//!
//! A payload is stored as compact JSON text (validated once, when written): an object whose
//! values are strings, numbers, booleans, null, arrays and nested objects. Rows of an index are
//! its entries in list order (global slots, see [`crate::backend::allow`]), so a filter's result
//! is directly the scan's allow-set.
//!
//! - [`path`]: dotted keys (`meta.source`, `tags[]`) and the values they reach;
//! - [`fields`]: per-field indexes, value → roaring bitmap of rows;
//! - [`filter`]: the filter (Qdrant's semantics), parsed with errors naming the offending path and
//!   evaluated to a bitmap of rows.

pub mod column;
pub mod datetime;
pub mod fields;
pub mod filter;
pub mod geo;
pub mod path;
pub mod selector;
pub mod text;

use serde_json::{Map, Value};

/// Largest payload, in bytes of compact JSON.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Deepest nesting of objects and arrays in a payload.
pub const MAX_PAYLOAD_DEPTH: usize = 32;

/// A payload that cannot be stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    /// Not valid JSON.
    #[error("payload is not valid JSON: {0}")]
    Json(String),
    /// Valid JSON, but not an object.
    #[error("payload must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// Larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload is {bytes} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its size as compact JSON.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Nested deeper than [`MAX_PAYLOAD_DEPTH`].
    #[error("payload nests deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}

/// The JSON type name of a value (for messages).
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks a payload and encodes it as stored (compact JSON). An empty object encodes to no
/// bytes: a point without a payload.
pub fn encode(value: &Value) -> Result<Vec<u8>, PayloadError> {
    let Value::Object(map) = value else {
        return Err(PayloadError::NotObject(type_name(value)));
    };
    if map.is_empty() {
        return Ok(Vec::new());
    }
    if depth(value) > MAX_PAYLOAD_DEPTH {
        return Err(PayloadError::TooDeep {
            max: MAX_PAYLOAD_DEPTH,
        });
    }
    let bytes = serde_json::to_vec(value).map_err(|e| PayloadError::Json(e.to_string()))?;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge {
            bytes: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(bytes)
}

/// Parses JSON text and encodes it as a stored payload ([`encode`]).
pub fn encode_text(text: &str) -> Result<Vec<u8>, PayloadError> {
    if text.len() > 4 * MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge {
            bytes: text.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    let v: Value = serde_json::from_str(text).map_err(|e| PayloadError::Json(e.to_string()))?;
    encode(&v)
}

/// A stored payload as a JSON object (empty for none). Stored bytes were validated when
/// written; bytes that do not parse (a damaged file) read as an empty object.
pub fn decode(bytes: &[u8]) -> Map<String, Value> {
    if bytes.is_empty() {
        return Map::new();
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Only the chosen top-level keys of a payload (`None`: all of it).
pub fn select(payload: Map<String, Value>, keys: Option<&[String]>) -> Map<String, Value> {
    match keys {
        None => payload,
        Some(keys) => payload
            .into_iter()
            .filter(|(k, _)| keys.iter().any(|s| s == k))
            .collect(),
    }
}

/// `base` with the keys of `update` set (overwriting top-level keys of the same name), checked
/// as a whole.
pub fn merged(base: &[u8], update: &Map<String, Value>) -> Result<Vec<u8>, PayloadError> {
    let mut map = decode(base);
    for (k, v) in update {
        map.insert(k.clone(), v.clone());
    }
    encode(&Value::Object(map))
}

/// `base` without the given top-level keys.
pub fn without_keys(base: &[u8], keys: &[String]) -> Result<Vec<u8>, PayloadError> {
    let mut map = decode(base);
    for k in keys {
        map.remove(k);
    }
    encode(&Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_round_trip_and_bad_ones_are_refused() {
        let p = json!({"source": "torch", "n": 7, "tags": ["a", "b"], "meta": {"x": null}});
        let bytes = encode(&p).unwrap();
        assert_eq!(Value::Object(decode(&bytes)), p);
        assert!(encode(&json!({})).unwrap().is_empty());
        assert!(decode(&[]).is_empty());
        assert_eq!(
            encode(&json!([1, 2])),
            Err(PayloadError::NotObject("an array"))
        );
        assert!(matches!(encode_text("{"), Err(PayloadError::Json(_))));
        let big = json!({"s": "x".repeat(MAX_PAYLOAD_BYTES)});
        assert!(matches!(encode(&big), Err(PayloadError::TooLarge { .. })));
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "a": deep });
        }
        assert!(matches!(encode(&deep), Err(PayloadError::TooDeep { .. })));
    }

    #[test]
    fn keys_are_set_selected_and_deleted() {
        let base = encode(&json!({"a": 1, "b": 2})).unwrap();
        let m = merged(&base, json!({"b": 3, "c": 4}).as_object().unwrap()).unwrap();
        assert_eq!(Value::Object(decode(&m)), json!({"a": 1, "b": 3, "c": 4}));
        let d = without_keys(&m, &["a".into(), "zz".into()]).unwrap();
        assert_eq!(Value::Object(decode(&d)), json!({"b": 3, "c": 4}));
        let s = select(decode(&d), Some(&["c".into()]));
        assert_eq!(Value::Object(s), json!({"c": 4}));
    }
}
