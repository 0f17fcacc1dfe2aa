//! Payloads and filters at the service's edge: JSON text from requests checked into the
//! engine's forms (errors are INVALID_ARGUMENT naming the field and the place in the filter),
//! and stored payloads rendered back as JSON with the keys a caller asked for.

use std::sync::Arc;

use quiver_engine::backend::NO_FILTER;
use quiver_engine::payload::fields::{FieldSpec, FieldType};
use quiver_engine::payload::{self, filter::Filter};
use tonic::Status;

use crate::proto;
use crate::status::invalid;

/// A filter from a request field (`filter`, `filters[3]`); `None` when the text is empty.
/// Conditions on an indexed field must suit its type (`fields`: the collection's indexed
/// fields). The error names the field and the place in the filter
/// (`filter.must[0].match.value`).
pub fn parse_filter(
    field: &str,
    text: &str,
    fields: &[FieldSpec],
) -> Result<Option<Filter>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let named = |e: quiver_engine::payload::filter::FilterError| {
        let place = e.path.strip_prefix("filter").unwrap_or(&e.path);
        Status::invalid_argument(format!("{field}{place}: {}", e.message))
    };
    let f = Filter::parse_text(text).map_err(named)?;
    f.check_fields(fields).map_err(named)?;
    Ok(Some(f))
}

/// An indexed field from a request (`field` names it in errors).
pub fn field_spec(field: &str, f: &proto::FieldIndex) -> Result<FieldSpec, Status> {
    let kind = match proto::FieldType::try_from(f.r#type) {
        Ok(proto::FieldType::Keyword) => FieldType::Keyword,
        Ok(proto::FieldType::Integer) => FieldType::Integer,
        Ok(proto::FieldType::Float) => FieldType::Float,
        Ok(proto::FieldType::Bool) => FieldType::Bool,
        _ => return Err(invalid(
            &format!("{field}.type"),
            "must be FIELD_TYPE_KEYWORD, FIELD_TYPE_INTEGER, FIELD_TYPE_FLOAT or FIELD_TYPE_BOOL",
        )),
    };
    if f.key.is_empty() {
        return Err(invalid(&format!("{field}.key"), "empty"));
    }
    quiver_engine::payload::path::KeyPath::parse(&f.key)
        .map_err(|e| invalid(&format!("{field}.key"), e))?;
    Ok(FieldSpec {
        key: f.key.clone(),
        kind,
    })
}

/// An indexed field as the service reports it.
pub fn field_to_proto(f: &FieldSpec) -> proto::FieldIndex {
    let t = match f.kind {
        FieldType::Keyword => proto::FieldType::Keyword,
        FieldType::Integer => proto::FieldType::Integer,
        FieldType::Float => proto::FieldType::Float,
        FieldType::Bool => proto::FieldType::Bool,
    };
    proto::FieldIndex {
        key: f.key.clone(),
        r#type: t as i32,
    }
}

/// The filters of a search: one for every query (`filter`) or one per query (`filters`),
/// as distinct filters and each query's choice ([`NO_FILTER`]: none).
pub fn query_filters(
    filter: &str,
    filters: &[String],
    nq: usize,
    fields: &[FieldSpec],
) -> Result<(Vec<Arc<Filter>>, Vec<u32>), Status> {
    if !filters.is_empty() {
        if !filter.is_empty() {
            return Err(invalid("filters", "give filter or filters, not both"));
        }
        if filters.len() != nq {
            return Err(invalid(
                "filters",
                format!(
                    "{} filters for {nq} queries (one per query, or none)",
                    filters.len()
                ),
            ));
        }
        let mut distinct: Vec<(&str, u32)> = Vec::new();
        let mut out = Vec::new();
        let mut of_query = Vec::with_capacity(nq);
        for (i, text) in filters.iter().enumerate() {
            if let Some(&(_, at)) = distinct.iter().find(|(t, _)| *t == text.as_str()) {
                of_query.push(at);
                continue;
            }
            match parse_filter(&format!("filters[{i}]"), text, fields)? {
                None => of_query.push(NO_FILTER),
                Some(f) => {
                    out.push(Arc::new(f));
                    let at = out.len() as u32 - 1;
                    distinct.push((text, at));
                    of_query.push(at);
                }
            }
        }
        if out.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        return Ok((out, of_query));
    }
    match parse_filter("filter", filter, fields)? {
        None => Ok((Vec::new(), Vec::new())),
        Some(f) => Ok((vec![Arc::new(f)], vec![0; nq])),
    }
}

/// Stored payloads from a request's JSON texts (empty list: none; an empty string: none for
/// that point).
pub fn encode_payloads(texts: &[String], ids: usize) -> Result<Vec<Vec<u8>>, Status> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    if texts.len() != ids {
        return Err(invalid(
            "payloads",
            format!(
                "{} payloads for {ids} ids (one per id, or none)",
                texts.len()
            ),
        ));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.trim().is_empty() {
                return Ok(Vec::new());
            }
            payload::encode_text(t).map_err(|e| invalid(&format!("payloads[{i}]"), e))
        })
        .collect()
}

/// A stored payload as JSON text, only `keys` (all when empty).
pub fn render(stored: &[u8], keys: &[String]) -> String {
    let map = payload::decode(stored);
    let map = payload::select(map, (!keys.is_empty()).then_some(keys));
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_and_the_place() {
        let e = parse_filter(
            "filter",
            r#"{"must":[{"key":"a","match":{"value":1.5}}]}"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("filter.must[0].match.value: "),
            "{}",
            e.message()
        );
        let e = query_filters("", &["{}".into(), "{\"x\":1}".into()], 2, &[]).unwrap_err();
        assert!(e.message().starts_with("filters[1].x: "), "{}", e.message());
        assert!(query_filters("", &["{}".into()], 2, &[]).is_err());
        assert!(encode_payloads(&["[1]".into()], 1)
            .unwrap_err()
            .message()
            .starts_with("payloads[0]: "));
        let (f, of) = query_filters("", &["".into(), "{}".into(), "{}".into()], 3, &[]).unwrap();
        assert_eq!((f.len(), of), (1, vec![NO_FILTER, 0, 0]));
        assert_eq!(render(br#"{"a":1,"b":2}"#, &["b".into()]), r#"{"b":2}"#);
        assert_eq!(render(b"", &[]), "{}");
    }

    #[test]
    fn filters_must_suit_the_indexed_fields() {
        let fields = [FieldSpec::parse("n:integer").unwrap()];
        let text = r#"{"must":[{"key":"n","match":{"value":"seven"}}]}"#;
        let e = parse_filter("filter", text, &fields).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("filter.must[0]: "),
            "{}",
            e.message()
        );
        assert!(parse_filter("filter", text, &[]).unwrap().is_some());
        let e = query_filters("", &["".into(), text.into()], 2, &fields).unwrap_err();
        assert!(
            e.message().starts_with("filters[1].must[0]: "),
            "{}",
            e.message()
        );
    }

    #[test]
    fn field_specs_are_checked() {
        let ok = proto::FieldIndex {
            key: "meta.lang".into(),
            r#type: proto::FieldType::Keyword as i32,
        };
        let spec = field_spec("field", &ok).unwrap();
        assert_eq!(spec.to_string(), "meta.lang:keyword");
        assert_eq!(field_to_proto(&spec), ok);
        let e = field_spec(
            "field",
            &proto::FieldIndex {
                key: "x".into(),
                r#type: 0,
            },
        )
        .unwrap_err();
        assert!(e.message().starts_with("field.type: "), "{}", e.message());
        let e = field_spec(
            "field",
            &proto::FieldIndex {
                key: String::new(),
                r#type: 1,
            },
        )
        .unwrap_err();
        assert!(e.message().starts_with("field.key: "), "{}", e.message());
    }
}
