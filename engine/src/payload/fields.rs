//! Field indexes: for a payload key a user chose to index, value → roaring bitmap of the rows
//! holding it, so a filter on that key costs bitmap operations instead of a parse per row.
//!
//! An index answers exactly what evaluating the condition row by row would: rows whose values at
//! the key include one of another type than the index's (`foreign`, normally none) are still
//! checked row by row.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use roaring::{MultiOps, RoaringBitmap};
use serde_json::Value;

use super::path::KeyPath;

/// The type of an indexed field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// Strings, matched exactly.
    Keyword,
    /// Integers: match and range.
    Integer,
    /// Numbers: range.
    Float,
    /// Booleans: match.
    Bool,
}

impl FieldType {
    /// Its name as users write it.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Keyword => "keyword",
            FieldType::Integer => "integer",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
        }
    }

    /// Parses a type name.
    pub fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "keyword" => FieldType::Keyword,
            "integer" => FieldType::Integer,
            "float" => FieldType::Float,
            "bool" => FieldType::Bool,
            _ => return None,
        })
    }

    /// A small number for files and the log.
    pub fn code(self) -> u8 {
        match self {
            FieldType::Keyword => 1,
            FieldType::Integer => 2,
            FieldType::Float => 3,
            FieldType::Bool => 4,
        }
    }

    /// The type of [`FieldType::code`].
    pub fn from_code(c: u8) -> Option<FieldType> {
        Some(match c {
            1 => FieldType::Keyword,
            2 => FieldType::Integer,
            3 => FieldType::Float,
            4 => FieldType::Bool,
            _ => return None,
        })
    }
}

/// A field a user asked to index: its key and type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldSpec {
    /// The key path (`source`, `meta.lang`).
    pub key: String,
    /// Its type.
    pub kind: FieldType,
}

impl std::fmt::Display for FieldSpec {
    /// `NAME:TYPE`, as [`FieldSpec::parse`] reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.key, self.kind.name())
    }
}

impl FieldSpec {
    /// Parses `NAME:TYPE` (e.g. `source:keyword`).
    pub fn parse(s: &str) -> Result<FieldSpec, String> {
        let Some((key, kind)) = s.rsplit_once(':') else {
            return Err(format!(
                "`{s}`: expected NAME:TYPE with TYPE keyword, integer, float or bool"
            ));
        };
        KeyPath::parse(key)?;
        let kind = FieldType::parse(kind).ok_or_else(|| {
            format!("`{s}`: unknown type `{kind}` (keyword, integer, float or bool)")
        })?;
        Ok(FieldSpec {
            key: key.to_string(),
            kind,
        })
    }
}

/// What an index holds, by type.
#[derive(Debug, Clone)]
enum Body {
    Keyword(HashMap<String, RoaringBitmap>),
    /// Integer values, and any non-integer numbers (sorted) for ranges.
    Integer(BTreeMap<i64, RoaringBitmap>, Vec<(f64, u32)>),
    /// Every number, sorted by value.
    Float(Vec<(f64, u32)>),
    /// Rows holding false, and true.
    Bool([RoaringBitmap; 2]),
}

/// The index of one field over one set of rows.
#[derive(Debug, Clone)]
pub struct FieldIndex {
    spec: FieldSpec,
    path: KeyPath,
    body: Body,
    /// Rows with at least one non-null value at the key.
    nonempty: RoaringBitmap,
    /// Rows with a value the body does not hold (another type): checked row by row.
    foreign: RoaringBitmap,
}

/// A numeric interval; `None` bounds are open.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    /// Greater than.
    pub gt: Option<f64>,
    /// Greater than or equal.
    pub gte: Option<f64>,
    /// Less than.
    pub lt: Option<f64>,
    /// Less than or equal.
    pub lte: Option<f64>,
}

impl Range {
    /// True when `x` lies in the interval.
    pub fn contains(&self, x: f64) -> bool {
        self.gt.is_none_or(|b| x > b)
            && self.gte.is_none_or(|b| x >= b)
            && self.lt.is_none_or(|b| x < b)
            && self.lte.is_none_or(|b| x <= b)
    }

    /// The integers of the interval, as bounds for a map of i64 keys.
    fn integer_bounds(&self) -> Option<(Bound<i64>, Bound<i64>)> {
        // Smallest integer >= lower bound, largest <= upper bound.
        let mut lo = i64::MIN as f64;
        if let Some(b) = self.gte {
            lo = lo.max(b.ceil());
        }
        if let Some(b) = self.gt {
            lo = lo.max(b.floor() + 1.0);
        }
        let mut hi = i64::MAX as f64;
        if let Some(b) = self.lte {
            hi = hi.min(b.floor());
        }
        if let Some(b) = self.lt {
            hi = hi.min(b.ceil() - 1.0);
        }
        if lo > hi {
            return None;
        }
        // f64 → i64 saturates; i64::MAX as f64 rounds up to 2^63, which saturates back.
        Some((Bound::Included(lo as i64), Bound::Included(hi as i64)))
    }
}

/// A scalar a filter compares payload values with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    /// True when a payload value equals this scalar.
    pub fn equals(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(s), Value::String(t)) => s == t,
            (Scalar::Int(i), Value::Number(n)) => n.as_i64() == Some(*i),
            (Scalar::Bool(b), Value::Bool(c)) => b == c,
            _ => false,
        }
    }
}

fn collect_sorted(pairs: &[(f64, u32)], range: &Range, out: &mut RoaringBitmap) {
    let mut start = 0;
    if let Some(a) = range.gt {
        start = start.max(pairs.partition_point(|&(v, _)| v <= a));
    }
    if let Some(b) = range.gte {
        start = start.max(pairs.partition_point(|&(v, _)| v < b));
    }
    for &(v, row) in &pairs[start..] {
        if range.lt.is_some_and(|b| v >= b) || range.lte.is_some_and(|b| v > b) {
            break;
        }
        if range.contains(v) {
            out.insert(row);
        }
    }
}

impl FieldIndex {
    /// Indexes `spec` over rows given as stored payload bytes, in row order.
    pub fn build<'a>(spec: &FieldSpec, rows: impl Iterator<Item = &'a [u8]>) -> FieldIndex {
        let path =
            KeyPath::parse(&spec.key).unwrap_or_else(|_| KeyPath::parse("_").expect("a key"));
        let mut keyword: HashMap<String, RoaringBitmap> = HashMap::new();
        let mut ints: BTreeMap<i64, RoaringBitmap> = BTreeMap::new();
        let mut nums: Vec<(f64, u32)> = Vec::new();
        let mut bools = [RoaringBitmap::new(), RoaringBitmap::new()];
        let mut nonempty = RoaringBitmap::new();
        let mut foreign = RoaringBitmap::new();
        for (row, bytes) in rows.enumerate() {
            let row = row as u32;
            if bytes.is_empty() {
                continue;
            }
            let payload = super::decode(bytes);
            for v in path.values(&payload) {
                if v.is_null() {
                    continue;
                }
                nonempty.insert(row);
                let held = match (spec.kind, v) {
                    (FieldType::Keyword, Value::String(s)) => {
                        keyword.entry(s.clone()).or_default().insert(row);
                        true
                    }
                    (FieldType::Integer, Value::Number(n)) => {
                        match n.as_i64() {
                            Some(i) => {
                                ints.entry(i).or_default().insert(row);
                            }
                            None => nums.push((n.as_f64().unwrap_or(f64::NAN), row)),
                        }
                        true
                    }
                    (FieldType::Float, Value::Number(n)) => {
                        nums.push((n.as_f64().unwrap_or(f64::NAN), row));
                        true
                    }
                    (FieldType::Bool, Value::Bool(b)) => {
                        bools[*b as usize].insert(row);
                        true
                    }
                    _ => false,
                };
                if !held {
                    foreign.insert(row);
                }
            }
        }
        nums.retain(|(v, _)| v.is_finite());
        nums.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let body = match spec.kind {
            FieldType::Keyword => Body::Keyword(keyword),
            FieldType::Integer => Body::Integer(ints, nums),
            FieldType::Float => Body::Float(nums),
            FieldType::Bool => Body::Bool(bools),
        };
        FieldIndex {
            spec: spec.clone(),
            path,
            body,
            nonempty,
            foreign,
        }
    }

    /// The field.
    pub fn spec(&self) -> &FieldSpec {
        &self.spec
    }

    /// Rows with at least one non-null value at the key.
    pub fn nonempty(&self) -> &RoaringBitmap {
        &self.nonempty
    }

    /// Rows the index does not answer for alone (values of another type): the caller checks
    /// them row by row and adds those that match.
    pub fn foreign(&self) -> &RoaringBitmap {
        &self.foreign
    }

    /// Rows with a value equal to one of `values`, among the values of the index's type; `None`
    /// when such a match does not apply to the type (checked before, by [`super::filter`]).
    pub fn matching(&self, values: &[Scalar]) -> Option<RoaringBitmap> {
        let mut out = RoaringBitmap::new();
        if let (Body::Keyword(m), true) = (&self.body, values.len() > 1) {
            let hits: Option<Vec<&RoaringBitmap>> = values
                .iter()
                .map(|v| match v {
                    Scalar::Str(s) => Some(m.get(s)),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|v| v.into_iter().flatten().collect());
            if let Some(hits) = hits {
                return Some(hits.into_iter().union());
            }
        }
        for v in values {
            match (&self.body, v) {
                (Body::Keyword(m), Scalar::Str(s)) => {
                    if let Some(b) = m.get(s) {
                        out |= b;
                    }
                }
                (Body::Integer(m, _), Scalar::Int(i)) => {
                    if let Some(b) = m.get(i) {
                        out |= b;
                    }
                }
                (Body::Bool(b), Scalar::Bool(x)) => out |= &b[*x as usize],
                _ => return None,
            }
        }
        Some(out)
    }

    /// Rows with a value of the index's type not among `values` (`except`).
    pub fn not_matching(&self, values: &[Scalar]) -> Option<RoaringBitmap> {
        let mut out = RoaringBitmap::new();
        match &self.body {
            Body::Keyword(m) => {
                for (k, b) in m {
                    if !values.iter().any(|v| matches!(v, Scalar::Str(s) if s == k)) {
                        out |= b;
                    }
                }
            }
            Body::Integer(m, nums) => {
                for (k, b) in m {
                    if !values.contains(&Scalar::Int(*k)) {
                        out |= b;
                    }
                }
                out.extend(nums.iter().map(|&(_, r)| r));
            }
            Body::Bool(b) => {
                for x in [false, true] {
                    if !values.contains(&Scalar::Bool(x)) {
                        out |= &b[x as usize];
                    }
                }
            }
            Body::Float(_) => return None,
        }
        Some(out)
    }

    /// Rows with a numeric value in `range`; `None` for non-numeric types.
    pub fn in_range(&self, range: &Range) -> Option<RoaringBitmap> {
        let mut out = RoaringBitmap::new();
        match &self.body {
            Body::Integer(m, nums) => {
                if let Some(bounds) = range.integer_bounds() {
                    // One multi-way union, not a growing bitmap or-ed value by value.
                    out = m.range(bounds).map(|(_, b)| b).union();
                }
                collect_sorted(nums, range, &mut out);
            }
            Body::Float(nums) => collect_sorted(nums, range, &mut out),
            _ => return None,
        }
        Some(out)
    }

    /// The key path.
    pub fn path(&self) -> &KeyPath {
        &self.path
    }
}

/// The field indexes of one set of rows (a segment), by key.
#[derive(Debug, Clone, Default)]
pub struct FieldIndexes {
    rows: u32,
    by_key: HashMap<String, FieldIndex>,
}

impl FieldIndexes {
    /// Builds an index for each spec over rows given as payload bytes (called once per spec).
    pub fn build<'a, I>(specs: &[FieldSpec], rows: u32, payloads: impl Fn() -> I) -> FieldIndexes
    where
        I: Iterator<Item = &'a [u8]>,
    {
        let by_key = specs
            .iter()
            .map(|s| (s.key.clone(), FieldIndex::build(s, payloads())))
            .collect();
        FieldIndexes { rows, by_key }
    }

    /// Rows indexed.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// The index of a key, if it has one.
    pub fn get(&self, key: &str) -> Option<&FieldIndex> {
        self.by_key.get(key)
    }

    /// The indexed fields.
    pub fn specs(&self) -> impl Iterator<Item = &FieldSpec> {
        self.by_key.values().map(|f| &f.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows() -> Vec<Vec<u8>> {
        [
            json!({"s": "a", "n": 1, "f": 0.5, "b": true}),
            json!({"s": ["a", "b"], "n": [2, 3], "f": 1.5}),
            json!({"s": "c", "n": 2.5, "b": false}),
            json!({"s": 7, "n": null}),
            json!({}),
        ]
        .iter()
        .map(|v| super::super::encode(v).unwrap())
        .collect()
    }

    fn index(spec: &str) -> FieldIndex {
        let r = rows();
        FieldIndex::build(
            &FieldSpec::parse(spec).unwrap(),
            r.iter().map(|v| v.as_slice()),
        )
    }

    fn set(b: RoaringBitmap) -> Vec<u32> {
        b.iter().collect()
    }

    #[test]
    fn indexes_answer_match_range_and_except() {
        let s = index("s:keyword");
        assert_eq!(set(s.matching(&[Scalar::Str("a".into())]).unwrap()), [0, 1]);
        assert_eq!(
            set(s.not_matching(&[Scalar::Str("a".into())]).unwrap()),
            [1, 2]
        );
        assert_eq!(set(s.foreign().clone()), [3]);
        assert_eq!(set(s.nonempty().clone()), [0, 1, 2, 3]);
        assert!(s.in_range(&Range::default()).is_none());

        let n = index("n:integer");
        let r = |gte, lt| Range {
            gte,
            lt,
            ..Range::default()
        };
        assert_eq!(set(n.in_range(&r(Some(2.0), None)).unwrap()), [1, 2]);
        assert_eq!(set(n.in_range(&r(None, Some(2.0))).unwrap()), [0]);
        assert_eq!(set(n.in_range(&r(Some(2.6), Some(3.5))).unwrap()), [1]);
        assert_eq!(set(n.matching(&[Scalar::Int(3)]).unwrap()), [1]);
        assert_eq!(set(n.nonempty().clone()), [0, 1, 2]);

        let f = index("f:float");
        let gt = Range {
            gt: Some(0.5),
            ..Range::default()
        };
        assert_eq!(set(f.in_range(&gt).unwrap()), [1]);
        assert!(f.matching(&[Scalar::Int(1)]).is_none());

        let b = index("b:bool");
        assert_eq!(set(b.matching(&[Scalar::Bool(false)]).unwrap()), [2]);
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            FieldSpec::parse("meta.source:keyword").unwrap(),
            FieldSpec {
                key: "meta.source".into(),
                kind: FieldType::Keyword
            }
        );
        assert!(FieldSpec::parse("source").is_err());
        assert!(FieldSpec::parse("source:text").is_err());
        assert!(FieldSpec::parse(":keyword").is_err());
    }
}
