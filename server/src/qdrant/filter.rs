//! Qdrant filters onto Quiver's filter, whose JSON form is Qdrant's (docs/FILTERS.md): a REST
//! filter passes through with its `has_id` lists mapped to Quiver's ids; a gRPC `Filter`
//! message is written out as that JSON. `has_vector` passes through, to be bound to the
//! collection's vectors by the operation ([`super::vectors::VectorForm::bind_filter`]);
//! `slice` is UNIMPLEMENTED.

use serde_json::{json, Map, Value};
use tonic::Status;

use super::ids::PointKey;
use super::proto::{self, condition::ConditionOneOf, r#match::MatchValue};
use super::unsupported;
use crate::status::invalid;

/// Deepest filter nesting walked here (Quiver's parser allows 16).
const MAX_DEPTH: usize = 32;

/// A REST filter (JSON) as Quiver's filter text; `null` or absent: none.
pub fn from_rest(field: &str, filter: Option<&Value>) -> Result<Option<String>, Status> {
    let Some(f) = filter.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let mut f = f.clone();
    map_has_id(field, &mut f, 0)?;
    Ok(Some(f.to_string()))
}

/// Rewrites every `has_id` list (ids or UUIDs) to Quiver's ids.
fn map_has_id(field: &str, v: &mut Value, depth: usize) -> Result<(), Status> {
    if depth > MAX_DEPTH {
        return Err(invalid(
            field,
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "has_id" {
                    if let Value::Array(ids) = x {
                        for (i, id) in ids.iter_mut().enumerate() {
                            let key = PointKey::from_json(&format!("{field}.has_id[{i}]"), id)?;
                            *id = Value::from(key.internal());
                        }
                        continue;
                    }
                }
                if k == "slice" {
                    return Err(unsupported(&format!("{field}: `{k}` conditions")));
                }
                map_has_id(field, x, depth + 1)?;
            }
        }
        Value::Array(a) => {
            for x in a {
                map_has_id(field, x, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A gRPC filter as Quiver's filter text; an empty filter: none.
pub fn from_grpc(field: &str, filter: Option<&proto::Filter>) -> Result<Option<String>, Status> {
    let Some(f) = filter else {
        return Ok(None);
    };
    let v = filter_json(field, f, 0)?;
    Ok((!v.as_object().is_some_and(Map::is_empty)).then(|| v.to_string()))
}

fn filter_json(field: &str, f: &proto::Filter, depth: usize) -> Result<Value, Status> {
    if depth > MAX_DEPTH {
        return Err(invalid(
            field,
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let list = |name: &str, cs: &[proto::Condition]| -> Result<Value, Status> {
        cs.iter()
            .enumerate()
            .map(|(i, c)| condition_json(&format!("{field}.{name}[{i}]"), c, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    };
    let mut o = Map::new();
    if !f.must.is_empty() {
        o.insert("must".into(), list("must", &f.must)?);
    }
    if !f.should.is_empty() {
        o.insert("should".into(), list("should", &f.should)?);
    }
    if !f.must_not.is_empty() {
        o.insert("must_not".into(), list("must_not", &f.must_not)?);
    }
    if let Some(m) = &f.min_should {
        o.insert(
            "min_should".into(),
            json!({
                "conditions": list("min_should.conditions", &m.conditions)?,
                "min_count": m.min_count,
            }),
        );
    }
    Ok(Value::Object(o))
}

fn condition_json(field: &str, c: &proto::Condition, depth: usize) -> Result<Value, Status> {
    match &c.condition_one_of {
        None => Err(invalid(field, "empty condition")),
        Some(ConditionOneOf::Field(fc)) => field_json(field, fc),
        Some(ConditionOneOf::IsEmpty(e)) => Ok(json!({"is_empty": {"key": e.key}})),
        Some(ConditionOneOf::IsNull(e)) => Ok(json!({"is_null": {"key": e.key}})),
        Some(ConditionOneOf::HasId(h)) => {
            let ids = h
                .has_id
                .iter()
                .enumerate()
                .map(|(i, id)| Ok(point_key(&format!("{field}.has_id[{i}]"), id)?.internal()))
                .collect::<Result<Vec<u64>, Status>>()?;
            Ok(json!({ "has_id": ids }))
        }
        Some(ConditionOneOf::Filter(f)) => filter_json(field, f, depth + 1),
        Some(ConditionOneOf::Nested(n)) => {
            let f = match &n.filter {
                Some(f) => filter_json(&format!("{field}.nested.filter"), f, depth + 1)?,
                None => return Err(invalid(&format!("{field}.nested.filter"), "missing")),
            };
            Ok(json!({"nested": {"key": n.key, "filter": f}}))
        }
        // Bound to the collection's vectors by `VectorForm::bind_filter`.
        Some(ConditionOneOf::HasVector(h)) => Ok(json!({"has_vector": h.has_vector})),
        Some(ConditionOneOf::Slice(_)) => Err(unsupported(&format!("{field}: `slice` conditions"))),
    }
}

fn field_json(field: &str, fc: &proto::FieldCondition) -> Result<Value, Status> {
    let key = &fc.key;
    let point =
        |p: &Option<proto::GeoPoint>| p.as_ref().map(|p| json!({"lon": p.lon, "lat": p.lat}));
    let ring = |r: &proto::GeoLineString| json!({"points": r.points.iter().map(|p| json!({"lon": p.lon, "lat": p.lat})).collect::<Vec<_>>()});
    if let Some(g) = &fc.geo_radius {
        return Ok(
            json!({"key": key, "geo_radius": {"center": point(&g.center), "radius": g.radius}}),
        );
    }
    if let Some(g) = &fc.geo_bounding_box {
        return Ok(json!({"key": key, "geo_bounding_box": {
            "top_left": point(&g.top_left), "bottom_right": point(&g.bottom_right)}}));
    }
    if let Some(g) = &fc.geo_polygon {
        return Ok(json!({"key": key, "geo_polygon": {
            "exterior": g.exterior.as_ref().map(ring),
            "interiors": g.interiors.iter().map(ring).collect::<Vec<_>>()}}));
    }
    if let Some(c) = &fc.values_count {
        let o: Map<String, Value> = [("lt", c.lt), ("gt", c.gt), ("gte", c.gte), ("lte", c.lte)]
            .into_iter()
            .filter_map(|(n, v)| Some((n.to_string(), json!(v?))))
            .collect();
        return Ok(json!({"key": key, "values_count": o}));
    }
    if let Some(r) = &fc.datetime_range {
        let mut o = Map::new();
        for (name, t) in [
            ("lt", &r.lt),
            ("gt", &r.gt),
            ("gte", &r.gte),
            ("lte", &r.lte),
        ] {
            if let Some(t) = t {
                let micros = t
                    .seconds
                    .checked_mul(1_000_000)
                    .and_then(|s| s.checked_add(i64::from(t.nanos) / 1_000))
                    .ok_or_else(|| {
                        invalid(&format!("{field}.datetime_range.{name}"), "out of range")
                    })?;
                o.insert(
                    name.into(),
                    json!(quiver_engine::payload::datetime::format_micros(micros)),
                );
            }
        }
        return Ok(json!({"key": key, "datetime_range": o}));
    }
    if let Some(m) = &fc.r#match {
        let m = match &m.match_value {
            None => return Err(invalid(&format!("{field}.match"), "empty match")),
            Some(MatchValue::Keyword(s)) => json!({ "value": s }),
            Some(MatchValue::Integer(i)) => json!({ "value": i }),
            Some(MatchValue::Boolean(b)) => json!({ "value": b }),
            Some(MatchValue::Keywords(k)) => json!({ "any": k.strings }),
            Some(MatchValue::Integers(k)) => json!({ "any": k.integers }),
            Some(MatchValue::ExceptKeywords(k)) => json!({ "except": k.strings }),
            Some(MatchValue::ExceptIntegers(k)) => json!({ "except": k.integers }),
            Some(MatchValue::Text(t)) => json!({ "text": t }),
            Some(MatchValue::Phrase(t)) => json!({ "phrase": t }),
            Some(MatchValue::TextAny(t)) => json!({ "text_any": t }),
            Some(MatchValue::Prefix(t)) => json!({ "prefix": t }),
            Some(MatchValue::Substring(t)) => json!({ "substring": t }),
        };
        return Ok(json!({ "key": key, "match": m }));
    }
    if let Some(r) = &fc.range {
        let mut o = Map::new();
        for (name, v) in [("lt", r.lt), ("gt", r.gt), ("gte", r.gte), ("lte", r.lte)] {
            if let Some(v) = v {
                let n = serde_json::Number::from_f64(v).ok_or_else(|| {
                    invalid(&format!("{field}.range.{name}"), "not a finite number")
                })?;
                o.insert(name.into(), Value::Number(n));
            }
        }
        return Ok(json!({ "key": key, "range": o }));
    }
    if fc.is_empty == Some(true) {
        return Ok(json!({"is_empty": {"key": key}}));
    }
    if fc.is_null == Some(true) {
        return Ok(json!({"is_null": {"key": key}}));
    }
    Err(invalid(
        field,
        format!("the condition on `{key}` has no match or range"),
    ))
}

/// A gRPC point id.
pub fn point_key(field: &str, id: &proto::PointId) -> Result<PointKey, Status> {
    use proto::point_id::PointIdOptions;
    match &id.point_id_options {
        Some(PointIdOptions::Num(n)) => PointKey::num(field, *n),
        Some(PointIdOptions::Uuid(u)) => PointKey::uuid(field, u),
        None => Err(invalid(field, "empty point id")),
    }
}

/// A point id in gRPC form.
pub fn point_id(key: PointKey) -> proto::PointId {
    use proto::point_id::PointIdOptions;
    proto::PointId {
        point_id_options: Some(match key {
            PointKey::Num(n) => PointIdOptions::Num(n),
            PointKey::Uuid(u) => PointIdOptions::Uuid(u.hyphenated().to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(key: &str, m: MatchValue) -> proto::Condition {
        proto::Condition {
            condition_one_of: Some(ConditionOneOf::Field(proto::FieldCondition {
                key: key.into(),
                r#match: Some(proto::Match {
                    match_value: Some(m),
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn grpc_filters_become_quivers_json() {
        let f = proto::Filter {
            must: vec![field("source", MatchValue::Keyword("numpy".into()))],
            must_not: vec![proto::Condition {
                condition_one_of: Some(ConditionOneOf::HasId(proto::HasIdCondition {
                    has_id: vec![point_id(PointKey::Num(4))],
                })),
            }],
            should: vec![proto::Condition {
                condition_one_of: Some(ConditionOneOf::Field(proto::FieldCondition {
                    key: "n".into(),
                    range: Some(proto::Range {
                        gte: Some(1.0),
                        lt: Some(5.0),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            }],
            min_should: None,
        };
        let text = from_grpc("filter", Some(&f)).unwrap().unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({
                "must": [{"key": "source", "match": {"value": "numpy"}}],
                "must_not": [{"has_id": [4]}],
                "should": [{"key": "n", "range": {"gte": 1.0, "lt": 5.0}}]
            })
        );
        assert_eq!(
            from_grpc("filter", Some(&proto::Filter::default())).unwrap(),
            None
        );
    }

    #[test]
    fn unsupported_conditions_are_named() {
        let f = proto::Filter {
            must: vec![proto::Condition {
                condition_one_of: Some(ConditionOneOf::Slice(proto::Unsupported {})),
            }],
            ..Default::default()
        };
        let e = from_grpc("filter", Some(&f)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        assert!(
            e.message().contains("filter.must[0]: `slice`"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn text_geo_count_datetime_and_nested_conditions_convert() {
        let f = proto::Filter {
            must: vec![
                field("t", MatchValue::Text("hello world".into())),
                proto::Condition {
                    condition_one_of: Some(ConditionOneOf::Field(proto::FieldCondition {
                        key: "when".into(),
                        datetime_range: Some(proto::DatetimeRange {
                            gte: Some(proto::Timestamp {
                                seconds: 1_675_853_340,
                                nanos: 5_000,
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                },
                proto::Condition {
                    condition_one_of: Some(ConditionOneOf::Nested(proto::NestedCondition {
                        key: "items".into(),
                        filter: Some(proto::Filter {
                            must: vec![field("name", MatchValue::Keyword("x".into()))],
                            ..Default::default()
                        }),
                    })),
                },
            ],
            ..Default::default()
        };
        let v: Value =
            serde_json::from_str(&from_grpc("filter", Some(&f)).unwrap().unwrap()).unwrap();
        assert_eq!(
            v["must"][0],
            json!({"key": "t", "match": {"text": "hello world"}})
        );
        assert_eq!(
            v["must"][1],
            json!({"key": "when", "datetime_range": {"gte": "2023-02-08T10:49:00.000005Z"}})
        );
        assert_eq!(v["must"][2]["nested"]["key"], json!("items"));
        quiver_engine::payload::filter::Filter::parse(&v).unwrap();
    }

    #[test]
    fn rest_has_id_lists_take_uuids() {
        let u = "5c56c793-69f3-4fbf-87e6-c4bf54c28c26";
        let text = from_rest("filter", Some(&json!({"must": [{"has_id": [1, u]}]})))
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let internal = PointKey::uuid("x", u).unwrap().internal();
        assert_eq!(v, json!({"must": [{"has_id": [1, internal]}]}));
        let e = from_rest("filter", Some(&json!({"has_id": [-1]}))).unwrap_err();
        assert!(e.message().contains("filter.has_id[0]"), "{}", e.message());
    }
}
