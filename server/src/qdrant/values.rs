//! JSON values in Qdrant's gRPC form (`qdrant.Value`: JSON with distinct integers) and back,
//! for payloads and collection metadata.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use tonic::Status;

use super::proto::{self, value::Kind};
use crate::status::invalid;

/// Nesting accepted in a value (payloads are checked again, to their own limit, when stored).
const MAX_DEPTH: usize = 64;

/// A gRPC value as JSON; a non-finite double or a value nested too deep is refused, naming
/// `field`.
pub fn to_json(field: &str, v: &proto::Value) -> Result<Value, Status> {
    to_json_at(field, v, 0)
}

fn to_json_at(field: &str, v: &proto::Value, depth: usize) -> Result<Value, Status> {
    if depth > MAX_DEPTH {
        return Err(invalid(
            field,
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::DoubleValue(d)) => Value::Number(
            Number::from_f64(*d)
                .ok_or_else(|| invalid(field, format!("{d} is not a finite number")))?,
        ),
        Some(Kind::IntegerValue(i)) => Value::from(*i),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => Value::Object(map_to_json_at(field, &s.fields, depth + 1)?),
        Some(Kind::ListValue(l)) => Value::Array(
            l.values
                .iter()
                .map(|x| to_json_at(field, x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A gRPC map of values (a payload) as a JSON object.
pub fn map_to_json(
    field: &str,
    m: &HashMap<String, proto::Value>,
) -> Result<Map<String, Value>, Status> {
    map_to_json_at(field, m, 0)
}

fn map_to_json_at(
    field: &str,
    m: &HashMap<String, proto::Value>,
    depth: usize,
) -> Result<Map<String, Value>, Status> {
    let mut out = Map::new();
    for (k, v) in m {
        out.insert(k.clone(), to_json_at(field, v, depth)?);
    }
    Ok(out)
}

/// A JSON value in gRPC form: integers that fit an i64 stay integers, other numbers are
/// doubles.
pub fn from_json(v: &Value) -> proto::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(proto::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(proto::ListValue {
            values: a.iter().map(from_json).collect(),
        }),
        Value::Object(o) => Kind::StructValue(proto::Struct {
            fields: map_from_json(o),
        }),
    };
    proto::Value { kind: Some(kind) }
}

/// A JSON object in gRPC form.
pub fn map_from_json(o: &Map<String, Value>) -> HashMap<String, proto::Value> {
    o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_keep_integers_apart_from_doubles() {
        let v = serde_json::json!({
            "s": "x", "i": -3, "f": 2.5, "b": true, "n": null,
            "a": [1, "two", [3.0]], "o": {"deep": {"er": 1}}
        });
        let g = from_json(&v);
        assert!(matches!(
            &g.kind,
            Some(Kind::StructValue(s)) if matches!(s.fields["i"].kind, Some(Kind::IntegerValue(-3)))
        ));
        assert_eq!(to_json("payload", &g).unwrap(), v);
    }

    #[test]
    fn non_finite_and_too_deep_values_are_refused() {
        let nan = proto::Value {
            kind: Some(Kind::DoubleValue(f64::NAN)),
        };
        let e = to_json("payload", &nan).unwrap_err();
        assert!(e.message().starts_with("payload:"), "{}", e.message());
        let mut deep = proto::Value { kind: None };
        for _ in 0..100 {
            deep = proto::Value {
                kind: Some(Kind::ListValue(proto::ListValue { values: vec![deep] })),
            };
        }
        assert!(to_json("payload", &deep).is_err());
    }
}
