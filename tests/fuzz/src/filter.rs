//! Target `filter`: payload and filter parsing and evaluation. The input is text: the first
//! line a filter (JSON), the second indexed fields (`key:type`, comma-separated), every further
//! line a point's payload (JSON). Besides never panicking, three ways of answering a filter
//! must agree: point by point ([`Filter::matches`]), over stored rows
//! ([`Filter::evaluate`]), and through field indexes where the filter's fields are indexed.

use quiver_engine::payload::fields::{FieldIndexes, FieldSpec};
use quiver_engine::payload::filter::{Filter, Rows};
use quiver_engine::payload::{self, path::KeyPath};
use quiver_server::payloads::parse_filter;
use serde_json::{Map, Value};

/// Most payload rows read from one input.
const MAX_ROWS: usize = 64;

struct Mem {
    payloads: Vec<Vec<u8>>,
    ids: Vec<u64>,
    fields: Option<FieldIndexes>,
}

impl Rows for Mem {
    fn len(&self) -> u32 {
        self.payloads.len() as u32
    }
    fn payload(&self, row: u32) -> &[u8] {
        &self.payloads[row as usize]
    }
    fn id(&self, row: u32) -> u64 {
        self.ids[row as usize]
    }
    fn row_of(&self, id: u64) -> Option<u32> {
        self.ids.iter().position(|&x| x == id).map(|r| r as u32)
    }
    fn fields(&self) -> Option<&FieldIndexes> {
        self.fields.as_ref()
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let filter_text = lines.next().unwrap_or("");
    let spec_text = lines.next().unwrap_or("");
    let mut specs: Vec<FieldSpec> = Vec::new();
    for s in spec_text.split(',').filter(|s| !s.trim().is_empty()) {
        if let Ok(spec) = FieldSpec::parse(s.trim()) {
            if !specs.iter().any(|x| x.key == spec.key) {
                specs.push(spec);
            }
        }
    }
    let payloads: Vec<Vec<u8>> = lines
        .take(MAX_ROWS)
        .map(|l| payload::encode_text(l).unwrap_or_default())
        .collect();
    // Stored payloads read back, and edited as SetPayload / DeletePayload do.
    let decoded: Vec<Map<String, Value>> = payloads.iter().map(|p| payload::decode(p)).collect();
    if let (Some(first), Some(second)) = (payloads.first(), decoded.get(1)) {
        let _ = payload::merged(first, second);
        let keys: Vec<String> = second.keys().cloned().collect();
        let _ = payload::without_keys(first, &keys);
        let _ = quiver_server::payloads::render(first, &keys);
        for k in &keys {
            if let Ok(path) = KeyPath::parse(k) {
                let _ = path.values(&decoded[0]);
            }
        }
    }

    let service_answer = parse_filter("filter", filter_text, &specs);
    let Ok(filter) = Filter::parse_text(filter_text) else {
        assert!(
            service_answer.is_err() || filter_text.trim().is_empty(),
            "the service accepted a filter the engine refuses: {filter_text}"
        );
        return;
    };
    let ids: Vec<u64> = (0..payloads.len() as u64).map(|i| i * 3 + 1).collect();
    let expected: Vec<u32> = (0..payloads.len() as u32)
        .filter(|&r| filter.matches(ids[r as usize], &decoded[r as usize]))
        .collect();
    let mut rows = Mem {
        payloads,
        ids,
        fields: None,
    };
    let plain: Vec<u32> = filter.evaluate(&rows).iter().collect();
    assert_eq!(
        plain, expected,
        "evaluate and matches disagree on filter {filter_text}"
    );
    if filter.check_fields(&specs).is_ok() && !specs.is_empty() {
        let indexes = FieldIndexes::build(&specs, rows.len(), || {
            rows.payloads.iter().map(|p| p.as_slice())
        });
        rows.fields = Some(indexes);
        let indexed: Vec<u32> = filter.evaluate(&rows).iter().collect();
        assert_eq!(
            indexed, plain,
            "field indexes {specs:?} change the answer to filter {filter_text}"
        );
    }
}
