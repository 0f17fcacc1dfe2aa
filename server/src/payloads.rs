//! Payloads and filters at the service's edge: JSON text from requests checked into the
//! engine's forms (errors are INVALID_ARGUMENT naming the field and the place in the filter),
//! and stored payloads rendered back as JSON with the keys a caller asked for.

use std::sync::Arc;

use quiver_engine::backend::NO_FILTER;
use quiver_engine::payload::{self, filter::Filter};
use tonic::Status;

use crate::status::invalid;

/// A filter from a request field (`filter`, `filters[3]`); `None` when the text is empty.
/// The error names the field and the place in the filter (`filter.must[0].match.value`).
pub fn parse_filter(field: &str, text: &str) -> Result<Option<Filter>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Filter::parse_text(text).map(Some).map_err(|e| {
        let place = e.path.strip_prefix("filter").unwrap_or(&e.path);
        Status::invalid_argument(format!("{field}{place}: {}", e.message))
    })
}

/// The filters of a search: one for every query (`filter`) or one per query (`filters`),
/// as distinct filters and each query's choice ([`NO_FILTER`]: none).
pub fn query_filters(
    filter: &str,
    filters: &[String],
    nq: usize,
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
            match parse_filter(&format!("filters[{i}]"), text)? {
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
    match parse_filter("filter", filter)? {
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
        let e =
            parse_filter("filter", r#"{"must":[{"key":"a","match":{"value":1.5}}]}"#).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("filter.must[0].match.value: "),
            "{}",
            e.message()
        );
        let e = query_filters("", &["{}".into(), "{\"x\":1}".into()], 2).unwrap_err();
        assert!(e.message().starts_with("filters[1].x: "), "{}", e.message());
        assert!(query_filters("", &["{}".into()], 2).is_err());
        assert!(encode_payloads(&["[1]".into()], 1)
            .unwrap_err()
            .message()
            .starts_with("payloads[0]: "));
        let (f, of) = query_filters("", &["".into(), "{}".into(), "{}".into()], 3).unwrap();
        assert_eq!((f.len(), of), (1, vec![NO_FILTER, 0, 0]));
        assert_eq!(render(br#"{"a":1,"b":2}"#, &["b".into()]), r#"{"b":2}"#);
        assert_eq!(render(b"", &[]), "{}");
    }
}
