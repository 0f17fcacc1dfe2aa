//! The filter language: which points a search, count, scroll or delete may touch, written as
//! JSON with the semantics of Qdrant's filter (docs/FILTERS.md has the rules and examples).
//!
//! ```json
//! {"must": [{"key": "source", "match": {"value": "torch"}}],
//!  "must_not": [{"key": "year", "range": {"lt": 2020}}]}
//! ```
//!
//! [`Filter::parse`] checks a filter whole before anything runs: an unknown operator, a value of
//! the wrong type, a filter nested too deep or too large is an error naming the path inside the
//! filter (`filter.must[0].match.value`). [`Filter::evaluate`] gives the bitmap of matching rows
//! of a segment, through field indexes where the segment has them and row by row where not;
//! [`Filter::matches`] decides one point (the reference the bitmaps must equal).

use roaring::RoaringBitmap;
use serde_json::{Map, Value};

use super::fields::{FieldIndexes, FieldSpec, FieldType, Range, Scalar};
use super::geo::{GeoPoint, GeoShape};
use super::path::KeyPath;
use super::text::TextTest;
use super::type_name;

/// Deepest nesting of filters inside filters.
pub const MAX_FILTER_DEPTH: usize = 16;
/// Most conditions in one filter, nested ones included.
pub const MAX_CONDITIONS: usize = 1024;
/// Most values in one filter's `any`, `except` and `has_id` lists together.
pub const MAX_FILTER_VALUES: usize = 100_000;
/// Largest filter, in bytes of JSON text.
pub const MAX_FILTER_BYTES: usize = 4 << 20;

/// A filter that cannot be used, and where in it the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FilterError {
    /// Where in the filter (`filter.must[0].range.gt`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError {
        path: path.to_string(),
        message: message.into(),
    })
}

/// What a field condition asks of the values at its key.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldTest {
    /// A value equals one of these (`match.value`, `match.any`).
    Match(Vec<Scalar>),
    /// A value is none of these (`match.except`).
    Except(Vec<Scalar>),
    /// A numeric value lies in the range.
    Range(Range),
    /// The count of values at the key (an array counts its elements, a missing or null
    /// value 0, any other 1) lies in the range, for one of the values reached.
    ValuesCount(Range),
    /// A datetime string value lies in the range (bounds in microseconds since the epoch).
    DatetimeRange(Range),
    /// A geo point value satisfies the shape.
    Geo(super::geo::GeoShape),
    /// A string value passes the text test.
    Text(super::text::TextTest),
}

/// One condition of a clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A test of the values at a key.
    Field {
        /// Where the condition is in the filter (for messages).
        at: String,
        /// The key.
        key: KeyPath,
        /// The test.
        test: FieldTest,
    },
    /// The key is missing, null, or holds no non-null value.
    IsEmpty(KeyPath),
    /// The key holds null.
    IsNull(KeyPath),
    /// The point's id is one of these (sorted).
    HasId(Vec<u64>),
    /// A nested filter.
    Nested(Box<Filter>),
    /// Qdrant's `nested`: some object element of the array at the key passes the filter (on
    /// its own, as if it were a payload).
    NestedKey {
        /// The array's key.
        key: KeyPath,
        /// The filter each element is tried against.
        filter: Box<Filter>,
    },
}

/// `min_should`: at least `min_count` of the conditions hold.
#[derive(Debug, Clone, PartialEq)]
pub struct MinShould {
    /// The conditions.
    pub conditions: Vec<Condition>,
    /// How many must hold.
    pub min_count: usize,
}

/// A parsed filter. The empty filter matches every point.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// Every one holds.
    pub must: Vec<Condition>,
    /// At least one holds (when there are any).
    pub should: Vec<Condition>,
    /// None holds.
    pub must_not: Vec<Condition>,
    /// At least `min_count` hold.
    pub min_should: Option<MinShould>,
}

/// The rows a filter is evaluated over (a segment's points, in row order).
pub trait Rows {
    /// Number of rows.
    fn len(&self) -> u32;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Row `row`'s stored payload (empty: none).
    fn payload(&self, row: u32) -> &[u8];
    /// Row `row`'s point id.
    fn id(&self, row: u32) -> u64;
    /// The row of a point id, if present.
    fn row_of(&self, id: u64) -> Option<u32>;
    /// The rows' field indexes, if any.
    fn fields(&self) -> Option<&FieldIndexes>;
}

struct Parser {
    conditions: usize,
    values: usize,
}

impl Parser {
    fn filter(&mut self, v: &Value, path: &str, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_FILTER_DEPTH {
            return err(
                path,
                format!("filters nest deeper than {MAX_FILTER_DEPTH} levels"),
            );
        }
        let Value::Object(obj) = v else {
            return err(
                path,
                format!(
                    "expected an object with must, should, must_not or min_should, got {}",
                    type_name(v)
                ),
            );
        };
        let mut f = Filter::default();
        for (k, val) in obj {
            let at = format!("{path}.{k}");
            match k.as_str() {
                "must" => f.must = self.clause(val, &at, depth)?,
                "should" => f.should = self.clause(val, &at, depth)?,
                "must_not" => f.must_not = self.clause(val, &at, depth)?,
                "min_should" => {
                    if val.is_null() {
                        continue;
                    }
                    let Value::Object(ms) = val else {
                        return err(&at, format!("expected an object, got {}", type_name(val)));
                    };
                    let mut conditions = Vec::new();
                    let mut min_count = None;
                    for (mk, mv) in ms {
                        let mat = format!("{at}.{mk}");
                        match mk.as_str() {
                            "conditions" => conditions = self.clause(mv, &mat, depth)?,
                            "min_count" => {
                                min_count = Some(mv.as_u64().ok_or_else(|| FilterError {
                                    path: mat.clone(),
                                    message: format!(
                                        "expected a non-negative integer, got {}",
                                        type_name(mv)
                                    ),
                                })? as usize)
                            }
                            _ => {
                                return err(
                                    &mat,
                                    format!("unknown field `{mk}` (conditions, min_count)"),
                                )
                            }
                        }
                    }
                    let Some(min_count) = min_count else {
                        return err(&at, "min_count is missing");
                    };
                    f.min_should = Some(MinShould {
                        conditions,
                        min_count,
                    });
                }
                _ => {
                    return err(
                        &at,
                        format!("unknown clause `{k}` (must, should, must_not, min_should)"),
                    )
                }
            }
        }
        Ok(f)
    }

    fn clause(
        &mut self,
        v: &Value,
        path: &str,
        depth: usize,
    ) -> Result<Vec<Condition>, FilterError> {
        match v {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, c)| self.condition(c, &format!("{path}[{i}]"), depth))
                .collect(),
            Value::Object(_) => Ok(vec![self.condition(v, path, depth)?]),
            _ => err(
                path,
                format!("expected a list of conditions, got {}", type_name(v)),
            ),
        }
    }

    fn key(&self, obj: &Map<String, Value>, path: &str) -> Result<KeyPath, FilterError> {
        match obj.get("key") {
            Some(Value::String(s)) => KeyPath::parse(s).or_else(|m| err(&format!("{path}.key"), m)),
            Some(v) => err(
                &format!("{path}.key"),
                format!("expected a string, got {}", type_name(v)),
            ),
            None => err(path, "key is missing"),
        }
    }

    fn condition(&mut self, v: &Value, path: &str, depth: usize) -> Result<Condition, FilterError> {
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return err(
                path,
                format!("the filter has more than {MAX_CONDITIONS} conditions"),
            );
        }
        let Value::Object(obj) = v else {
            return err(
                path,
                format!("expected a condition object, got {}", type_name(v)),
            );
        };
        if obj.contains_key("key") {
            return self.field_condition(obj, path);
        }
        let only = |name: &str| -> Result<(), FilterError> {
            if obj.len() != 1 {
                let other = obj.keys().find(|k| *k != name).cloned().unwrap_or_default();
                return err(path, format!("`{name}` cannot be combined with `{other}`"));
            }
            Ok(())
        };
        if let Some(inner) = obj.get("is_empty").or_else(|| obj.get("is_null")) {
            let name = if obj.contains_key("is_empty") {
                "is_empty"
            } else {
                "is_null"
            };
            only(name)?;
            let at = format!("{path}.{name}");
            let key = match inner {
                Value::Object(o) => {
                    if let Some(k) = o.keys().find(|k| *k != "key") {
                        return err(&format!("{at}.{k}"), format!("unknown field `{k}` (key)"));
                    }
                    self.key(o, &at)?
                }
                Value::String(s) => KeyPath::parse(s).or_else(|m| err(&at, m))?,
                v => {
                    return err(
                        &at,
                        format!("expected {{\"key\": ...}}, got {}", type_name(v)),
                    )
                }
            };
            return Ok(if name == "is_empty" {
                Condition::IsEmpty(key)
            } else {
                Condition::IsNull(key)
            });
        }
        if let Some(ids) = obj.get("has_id") {
            only("has_id")?;
            let at = format!("{path}.has_id");
            let Value::Array(items) = ids else {
                return err(
                    &at,
                    format!("expected a list of point ids, got {}", type_name(ids)),
                );
            };
            self.count_values(items.len(), &at)?;
            let mut out = Vec::with_capacity(items.len());
            for (i, id) in items.iter().enumerate() {
                match id.as_u64() {
                    Some(x) => out.push(x),
                    None => {
                        return err(
                            &format!("{at}[{i}]"),
                            format!("expected a non-negative integer id, got {}", type_name(id)),
                        )
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            return Ok(Condition::HasId(out));
        }
        if let Some(inner) = obj.get("filter") {
            only("filter")?;
            return Ok(Condition::Nested(Box::new(self.filter(
                inner,
                &format!("{path}.filter"),
                depth + 1,
            )?)));
        }
        if ["must", "should", "must_not", "min_should"]
            .iter()
            .any(|k| obj.contains_key(*k))
        {
            return Ok(Condition::Nested(Box::new(self.filter(
                v,
                path,
                depth + 1,
            )?)));
        }
        if let Some(inner) = obj.get("nested") {
            only("nested")?;
            let at = format!("{path}.nested");
            let Value::Object(n) = inner else {
                return err(
                    &at,
                    format!("expected {{\"key\", \"filter\"}}, got {}", type_name(inner)),
                );
            };
            if let Some(k) = n.keys().find(|k| *k != "key" && *k != "filter") {
                return err(
                    &format!("{at}.{k}"),
                    format!("unknown field `{k}` (key, filter)"),
                );
            }
            // `data` and `data[]` name the same array.
            let mut key = self.key(n, &at)?;
            if let Some(base) = key.as_str().strip_suffix("[]").filter(|b| !b.is_empty()) {
                key = KeyPath::parse(base).or_else(|m| err(&format!("{at}.key"), m))?;
            }
            let Some(f) = n.get("filter") else {
                return err(&at, "filter is missing");
            };
            return Ok(Condition::NestedKey {
                key,
                filter: Box::new(self.filter(f, &format!("{at}.filter"), depth + 1)?),
            });
        }
        match obj.keys().next() {
            Some(k) => err(
                &format!("{path}.{k}"),
                format!("unknown condition `{k}` (key, is_empty, is_null, has_id, filter, or a nested must/should/must_not)"),
            ),
            None => err(path, "empty condition"),
        }
    }

    fn count_values(&mut self, n: usize, path: &str) -> Result<(), FilterError> {
        self.values += n;
        if self.values > MAX_FILTER_VALUES {
            return err(
                path,
                format!("the filter lists more than {MAX_FILTER_VALUES} values"),
            );
        }
        Ok(())
    }

    fn field_condition(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
    ) -> Result<Condition, FilterError> {
        let key = self.key(obj, path)?;
        let mut test = None;
        for (k, v) in obj {
            let at = format!("{path}.{k}");
            let t = match k.as_str() {
                "key" => continue,
                "match" => self.match_test(v, &at)?,
                // A range of strings is a datetime range (Qdrant tells them apart so too).
                "range" if range_of_strings(v) => FieldTest::DatetimeRange(datetime_range(v, &at)?),
                "range" => FieldTest::Range(range(v, &at)?),
                "datetime_range" => FieldTest::DatetimeRange(datetime_range(v, &at)?),
                "values_count" => FieldTest::ValuesCount(range(v, &at)?),
                "geo_radius" | "geo_bounding_box" | "geo_polygon" => {
                    if v.is_null() {
                        continue;
                    }
                    FieldTest::Geo(geo_shape(k, v, &at)?)
                }
                _ => {
                    return err(
                        &at,
                        format!("unknown operator `{k}` (match, range, datetime_range, values_count, geo_radius, geo_bounding_box, geo_polygon)"),
                    )
                }
            };
            if v.is_null() {
                continue;
            }
            if test.is_some() {
                return err(
                    &at,
                    "a condition takes one test (match, range, values_count, a geo shape)",
                );
            }
            test = Some(t);
        }
        let Some(test) = test else {
            return err(
                path,
                "the condition has a key but no test (match, range, values_count, a geo shape)",
            );
        };
        Ok(Condition::Field {
            at: path.to_string(),
            key,
            test,
        })
    }

    fn match_test(&mut self, v: &Value, path: &str) -> Result<FieldTest, FilterError> {
        let Value::Object(obj) = v else {
            if v.is_null() {
                return Ok(FieldTest::Match(Vec::new()));
            }
            return err(path, format!("expected an object, got {}", type_name(v)));
        };
        if obj.len() != 1 {
            return err(
                path,
                "expected exactly one of value, any, except".to_string(),
            );
        }
        let (k, val) = obj.iter().next().expect("one entry");
        let at = format!("{path}.{k}");
        match k.as_str() {
            "value" => Ok(FieldTest::Match(vec![scalar(val, &at)?])),
            "any" | "except" => {
                let Value::Array(items) = val else {
                    return err(&at, format!("expected a list, got {}", type_name(val)));
                };
                self.count_values(items.len(), &at)?;
                let values = items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| scalar(x, &format!("{at}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if k == "any" {
                    FieldTest::Match(values)
                } else {
                    FieldTest::Except(values)
                })
            }
            "text" | "text_any" | "phrase" => {
                let Value::String(q) = val else {
                    return err(&at, format!("expected a string, got {}", type_name(val)));
                };
                let words = super::text::words(q);
                Ok(FieldTest::Text(match k.as_str() {
                    "text" => TextTest::All(words),
                    "text_any" => TextTest::Any(words),
                    _ => TextTest::Phrase(words),
                }))
            }
            "prefix" | "substring" => {
                let Value::String(q) = val else {
                    return err(&at, format!("expected a string, got {}", type_name(val)));
                };
                Ok(FieldTest::Text(if k == "prefix" {
                    TextTest::Prefix(q.clone())
                } else {
                    TextTest::Substring(q.clone())
                }))
            }
            _ => err(
                &at,
                format!("unknown match `{k}` (value, any, except, text, text_any, phrase, prefix, substring)"),
            ),
        }
    }
}

fn scalar(v: &Value, path: &str) -> Result<Scalar, FilterError> {
    match v {
        Value::String(s) => Ok(Scalar::Str(s.clone())),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Scalar::Int(i)),
            None => err(
                path,
                "expected a string, an integer or a boolean, got a float (use range for floats)",
            ),
        },
        _ => err(
            path,
            format!(
                "expected a string, an integer or a boolean, got {}",
                type_name(v)
            ),
        ),
    }
}

fn range(v: &Value, path: &str) -> Result<Range, FilterError> {
    let Value::Object(obj) = v else {
        return err(path, format!("expected an object, got {}", type_name(v)));
    };
    let mut r = Range::default();
    for (k, b) in obj {
        let at = format!("{path}.{k}");
        let slot = match k.as_str() {
            "gt" => &mut r.gt,
            "gte" => &mut r.gte,
            "lt" => &mut r.lt,
            "lte" => &mut r.lte,
            _ => return err(&at, format!("unknown bound `{k}` (gt, gte, lt, lte)")),
        };
        *slot = match b {
            Value::Null => None,
            Value::Number(n) => Some(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(_) => {
                return err(&at, "expected a number (datetime ranges are not supported)")
            }
            _ => return err(&at, format!("expected a number, got {}", type_name(b))),
        };
        if slot.is_some_and(|x| !x.is_finite()) {
            return err(&at, "expected a finite number");
        }
    }
    Ok(r)
}

/// True when a range's bounds are strings (a datetime range written as a range).
fn range_of_strings(v: &Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.values().any(Value::is_string))
}

/// A datetime range: bounds are datetime strings ([`super::datetime::parse_micros`]); held
/// as microseconds since the epoch.
fn datetime_range(v: &Value, path: &str) -> Result<Range, FilterError> {
    let Value::Object(obj) = v else {
        return err(path, format!("expected an object, got {}", type_name(v)));
    };
    let mut r = Range::default();
    for (k, b) in obj {
        let at = format!("{path}.{k}");
        let slot = match k.as_str() {
            "gt" => &mut r.gt,
            "gte" => &mut r.gte,
            "lt" => &mut r.lt,
            "lte" => &mut r.lte,
            _ => return err(&at, format!("unknown bound `{k}` (gt, gte, lt, lte)")),
        };
        *slot = match b {
            Value::Null => None,
            Value::String(t) => match super::datetime::parse_micros(t) {
                Some(m) => Some(m as f64),
                None => {
                    return err(
                        &at,
                        format!("`{t}` is not a datetime (RFC 3339, e.g. 2024-05-01T12:00:00Z)"),
                    )
                }
            },
            _ => {
                return err(
                    &at,
                    format!("expected a datetime string, got {}", type_name(b)),
                )
            }
        };
    }
    Ok(r)
}

fn geo_point(v: Option<&Value>, path: &str) -> Result<GeoPoint, FilterError> {
    match v {
        Some(v) => GeoPoint::of(v).ok_or_else(|| FilterError {
            path: path.to_string(),
            message: "expected {\"lon\": number, \"lat\": number}".into(),
        }),
        None => err(path, "missing"),
    }
}

fn geo_ring(v: Option<&Value>, path: &str) -> Result<Vec<GeoPoint>, FilterError> {
    let Some(Value::Object(o)) = v else {
        return err(path, "expected {\"points\": [...]}");
    };
    let Some(Value::Array(points)) = o.get("points") else {
        return err(&format!("{path}.points"), "expected a list of points");
    };
    let ring: Vec<GeoPoint> = points
        .iter()
        .enumerate()
        .map(|(i, p)| geo_point(Some(p), &format!("{path}.points[{i}]")))
        .collect::<Result<_, _>>()?;
    if ring.len() < 4 || ring.first() != ring.last() {
        return err(
            &format!("{path}.points"),
            "a ring needs at least 4 points, the last equal to the first",
        );
    }
    Ok(ring)
}

fn geo_shape(kind: &str, v: &Value, path: &str) -> Result<GeoShape, FilterError> {
    let Value::Object(o) = v else {
        return err(path, format!("expected an object, got {}", type_name(v)));
    };
    Ok(match kind {
        "geo_radius" => {
            let radius = o
                .get("radius")
                .and_then(Value::as_f64)
                .filter(|r| r.is_finite());
            let Some(radius) = radius else {
                return err(&format!("{path}.radius"), "expected a number of metres");
            };
            GeoShape::Radius {
                center: geo_point(o.get("center"), &format!("{path}.center"))?,
                radius,
            }
        }
        "geo_bounding_box" => GeoShape::Box {
            top_left: geo_point(o.get("top_left"), &format!("{path}.top_left"))?,
            bottom_right: geo_point(o.get("bottom_right"), &format!("{path}.bottom_right"))?,
        },
        _ => {
            let interiors = match o.get("interiors") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(rings)) => rings
                    .iter()
                    .enumerate()
                    .map(|(i, r)| geo_ring(Some(r), &format!("{path}.interiors[{i}]")))
                    .collect::<Result<_, _>>()?,
                Some(_) => return err(&format!("{path}.interiors"), "expected a list of rings"),
            };
            GeoShape::Polygon {
                exterior: geo_ring(o.get("exterior"), &format!("{path}.exterior"))?,
                interiors,
            }
        }
    })
}

/// The count of one value reached by a key (Qdrant's `values_count`).
fn value_count(v: &Value) -> usize {
    match v {
        Value::Null => 0,
        Value::Array(a) => a.len(),
        _ => 1,
    }
}

/// Whether a test applies to values of an indexed type (so an index answers it).
fn applies(test: &FieldTest, kind: FieldType) -> Result<(), String> {
    let scalars = match test {
        // Evaluated value by value, whatever the index.
        FieldTest::ValuesCount(_)
        | FieldTest::DatetimeRange(_)
        | FieldTest::Geo(_)
        | FieldTest::Text(_) => return Ok(()),
        FieldTest::Range(_) => {
            return match kind {
                FieldType::Integer | FieldType::Float => Ok(()),
                _ => Err(format!(
                    "the field is indexed as {}: range needs an integer or float field",
                    kind.name()
                )),
            }
        }
        FieldTest::Match(v) | FieldTest::Except(v) => v,
    };
    for s in scalars {
        let ok = matches!(
            (s, kind),
            (Scalar::Str(_), FieldType::Keyword)
                | (Scalar::Int(_), FieldType::Integer)
                | (Scalar::Bool(_), FieldType::Bool)
        );
        if !ok {
            let what = match s {
                Scalar::Str(_) => "a string",
                Scalar::Int(_) => "an integer",
                Scalar::Bool(_) => "a boolean",
            };
            return Err(format!(
                "the field is indexed as {}: cannot match {what}",
                kind.name()
            ));
        }
    }
    Ok(())
}

impl Filter {
    /// Parses a filter (a JSON value); errors name their place under `filter`.
    pub fn parse(v: &Value) -> Result<Filter, FilterError> {
        Parser {
            conditions: 0,
            values: 0,
        }
        .filter(v, "filter", 0)
    }

    /// Parses a filter from JSON text.
    pub fn parse_text(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return err("filter", format!("larger than {MAX_FILTER_BYTES} bytes"));
        }
        let v: Value = serde_json::from_str(text)
            .or_else(|e| err("filter", format!("not valid JSON: {e}")))?;
        Filter::parse(&v)
    }

    /// True when the filter has no conditions (it matches every point).
    pub fn is_empty(&self) -> bool {
        self.must.is_empty()
            && self.should.is_empty()
            && self.must_not.is_empty()
            && self.min_should.is_none()
    }

    fn conditions(&self) -> impl Iterator<Item = &Condition> {
        self.must
            .iter()
            .chain(&self.should)
            .chain(&self.must_not)
            .chain(self.min_should.iter().flat_map(|m| &m.conditions))
    }

    /// Checks the filter against the indexed fields: a condition on an indexed key must suit
    /// its type (matching a string against an integer field is an error, not an empty result).
    pub fn check_fields(&self, fields: &[FieldSpec]) -> Result<(), FilterError> {
        for c in self.conditions() {
            match c {
                Condition::Field { at, key, test } => {
                    if let Some(spec) = fields.iter().find(|f| f.key == key.as_str()) {
                        applies(test, spec.kind).or_else(|m| err(at, m))?;
                    }
                }
                Condition::Nested(f) => f.check_fields(fields)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// True when the point (id and payload) passes the filter.
    pub fn matches(&self, id: u64, payload: &Map<String, Value>) -> bool {
        let holds = |c: &Condition| condition_matches(c, id, payload);
        self.must.iter().all(holds)
            && (self.should.is_empty() || self.should.iter().any(holds))
            && !self.must_not.iter().any(holds)
            && self
                .min_should
                .as_ref()
                .is_none_or(|m| m.conditions.iter().filter(|c| holds(c)).count() >= m.min_count)
    }

    /// The rows that pass the filter (deleted rows included: the caller drops them).
    pub fn evaluate(&self, rows: &dyn Rows) -> RoaringBitmap {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..rows.len());
        self.evaluate_within(rows, &all)
    }

    /// The rows of `universe` that pass the filter.
    pub fn evaluate_within(&self, rows: &dyn Rows, universe: &RoaringBitmap) -> RoaringBitmap {
        let mut acc = universe.clone();
        // Indexed conditions first: they narrow what the row-by-row ones must parse.
        let mut must: Vec<&Condition> = self.must.iter().collect();
        must.sort_by_key(|c| cost(c, rows));
        for c in must {
            if acc.is_empty() {
                return acc;
            }
            acc = condition_rows(c, rows, &acc);
        }
        if let Some(ms) = &self.min_should {
            if ms.min_count > 0 {
                let mut counts: std::collections::HashMap<u32, usize> = Default::default();
                for c in &ms.conditions {
                    for r in condition_rows(c, rows, &acc).iter() {
                        *counts.entry(r).or_default() += 1;
                    }
                }
                acc = counts
                    .into_iter()
                    .filter(|&(_, n)| n >= ms.min_count)
                    .map(|(r, _)| r)
                    .collect();
            }
        }
        if !self.should.is_empty() {
            let mut any = RoaringBitmap::new();
            for c in &self.should {
                let rest = &acc - &any;
                if rest.is_empty() {
                    break;
                }
                any |= condition_rows(c, rows, &rest);
            }
            acc &= any;
        }
        for c in &self.must_not {
            if acc.is_empty() {
                break;
            }
            let hit = condition_rows(c, rows, &acc);
            acc -= hit;
        }
        acc
    }
}

/// Rough cost order: 0 answered by an index or ids, 1 nested, 2 row by row.
fn cost(c: &Condition, rows: &dyn Rows) -> u8 {
    match c {
        Condition::HasId(_) => 0,
        Condition::Field {
            test:
                FieldTest::ValuesCount(_)
                | FieldTest::DatetimeRange(_)
                | FieldTest::Geo(_)
                | FieldTest::Text(_),
            ..
        } => 2,
        Condition::Field { key, .. } | Condition::IsEmpty(key) => {
            if rows.fields().and_then(|f| f.get(key.as_str())).is_some() {
                0
            } else {
                2
            }
        }
        Condition::IsNull(_) | Condition::NestedKey { .. } => 2,
        Condition::Nested(_) => 1,
    }
}

fn test_matches(test: &FieldTest, key: &KeyPath, payload: &Map<String, Value>) -> bool {
    let values = key.values(payload);
    match test {
        FieldTest::Match(want) => values.iter().any(|v| want.iter().any(|w| w.equals(v))),
        FieldTest::Except(not) => values
            .iter()
            .any(|v| !v.is_null() && !not.iter().any(|w| w.equals(v))),
        FieldTest::Range(r) => values
            .iter()
            .any(|v| !v.is_boolean() && v.as_f64().is_some_and(|x| r.contains(x))),
        FieldTest::ValuesCount(r) => {
            let reached = key.resolve(payload);
            if reached.iter().all(|v| v.is_null()) {
                return r.contains(0.0);
            }
            reached.iter().any(|v| r.contains(value_count(v) as f64))
        }
        FieldTest::DatetimeRange(r) => values.iter().any(|v| {
            v.as_str()
                .and_then(super::datetime::parse_micros)
                .is_some_and(|m| r.contains(m as f64))
        }),
        FieldTest::Geo(shape) => values
            .iter()
            .any(|v| GeoPoint::of(v).is_some_and(|p| shape.contains(p))),
        FieldTest::Text(t) => values
            .iter()
            .any(|v| v.as_str().is_some_and(|s| t.matches(s))),
    }
}

fn condition_matches(c: &Condition, id: u64, payload: &Map<String, Value>) -> bool {
    match c {
        Condition::Field { key, test, .. } => test_matches(test, key, payload),
        Condition::IsEmpty(key) => key.values(payload).iter().all(|v| v.is_null()),
        Condition::IsNull(key) => key.resolve(payload).iter().any(|v| v.is_null()),
        Condition::HasId(ids) => ids.binary_search(&id).is_ok(),
        Condition::Nested(f) => f.matches(id, payload),
        // An element is not a point: `has_id` inside never holds (no id is u64::MAX).
        Condition::NestedKey { key, filter } => key.resolve(payload).iter().any(|v| {
            v.as_array().is_some_and(|a| {
                a.iter()
                    .filter_map(Value::as_object)
                    .any(|o| filter.matches(u64::MAX, o))
            })
        }),
    }
}

/// The rows of `within` that satisfy `c`, evaluated one by one.
fn rows_matching(c: &Condition, rows: &dyn Rows, within: &RoaringBitmap) -> RoaringBitmap {
    within
        .iter()
        .filter(|&r| condition_matches(c, rows.id(r), &super::decode(rows.payload(r))))
        .collect()
}

/// The rows of `within` that satisfy `c`.
fn condition_rows(c: &Condition, rows: &dyn Rows, within: &RoaringBitmap) -> RoaringBitmap {
    match c {
        Condition::Field { key, test, .. } => {
            if let Some(ix) = rows.fields().and_then(|f| f.get(key.as_str())) {
                let answered = match test {
                    FieldTest::Match(v) => ix.matching(v),
                    FieldTest::Except(v) => ix.not_matching(v),
                    FieldTest::Range(r) => ix.in_range(r),
                    _ => None,
                };
                if let Some(mut hit) = answered {
                    hit &= within;
                    let foreign = ix.foreign() & within;
                    if !foreign.is_empty() {
                        hit |= rows_matching(c, rows, &foreign);
                    }
                    return hit;
                }
            }
            rows_matching(c, rows, within)
        }
        Condition::IsEmpty(key) => match rows.fields().and_then(|f| f.get(key.as_str())) {
            Some(ix) => within - ix.nonempty(),
            None => rows_matching(c, rows, within),
        },
        Condition::IsNull(_) | Condition::NestedKey { .. } => rows_matching(c, rows, within),
        Condition::HasId(ids) => {
            if (ids.len() as u64) < within.len() {
                ids.iter()
                    .filter_map(|&id| rows.row_of(id))
                    .filter(|r| within.contains(*r))
                    .collect()
            } else {
                within
                    .iter()
                    .filter(|&r| ids.binary_search(&rows.id(r)).is_ok())
                    .collect()
            }
        }
        Condition::Nested(f) => f.evaluate_within(rows, within),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Rows in memory: payload bytes and ids.
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

    fn points() -> Vec<Value> {
        vec![
            json!({"source": "torch", "n": 1, "tags": ["a", "b"], "meta": {"lang": "en"}}),
            json!({"source": "numpy", "n": 50, "tags": ["b"], "score": 0.5}),
            json!({"source": "torch", "n": 500, "meta": {"lang": "de"}, "flag": true}),
            json!({"source": ["scipy", "numpy"], "n": 999, "tags": [], "flag": false}),
            json!({"n": null, "source": null}),
            json!({}),
            json!({"source": 7, "n": "x", "meta": [{"lang": "fr"}, {"lang": "en"}]}),
        ]
    }

    fn mem(indexed: bool) -> Mem {
        let payloads: Vec<Vec<u8>> = points()
            .iter()
            .map(|p| super::super::encode(p).unwrap())
            .collect();
        let fields = indexed.then(|| {
            let specs = [
                FieldSpec::parse("source:keyword").unwrap(),
                FieldSpec::parse("n:integer").unwrap(),
                FieldSpec::parse("score:float").unwrap(),
                FieldSpec::parse("flag:bool").unwrap(),
                FieldSpec::parse("meta.lang:keyword").unwrap(),
            ];
            FieldIndexes::build(&specs, payloads.len() as u32, || {
                payloads.iter().map(|p| p.as_slice())
            })
        });
        Mem {
            ids: (0..payloads.len() as u64).map(|i| 100 + i).collect(),
            payloads,
            fields,
        }
    }

    /// Rows passing `f`, checked three ways: indexed, row by row, and point by point.
    fn rows_of(f: Value) -> Vec<u32> {
        let f = Filter::parse(&f).unwrap();
        let with = f.evaluate(&mem(true));
        let without = f.evaluate(&mem(false));
        let one_by_one: Vec<u32> = points()
            .iter()
            .enumerate()
            .filter(|(i, p)| f.matches(100 + *i as u64, p.as_object().unwrap()))
            .map(|(i, _)| i as u32)
            .collect();
        assert_eq!(
            with.iter().collect::<Vec<_>>(),
            one_by_one,
            "indexed vs one by one"
        );
        assert_eq!(
            without.iter().collect::<Vec<_>>(),
            one_by_one,
            "unindexed vs one by one"
        );
        one_by_one
    }

    #[test]
    fn conditions_follow_the_documented_semantics() {
        let m = |k: &str, v: Value| json!({"must": [{"key": k, "match": {"value": v}}]});
        assert_eq!(rows_of(m("source", json!("torch"))), [0, 2]);
        assert_eq!(rows_of(m("source", json!("numpy"))), [1, 3]);
        assert_eq!(rows_of(m("source", json!(7))), [6]);
        assert_eq!(rows_of(m("n", json!(50))), [1]);
        assert_eq!(rows_of(m("flag", json!(false))), [3]);
        assert_eq!(rows_of(m("tags", json!("b"))), [0, 1]);
        assert_eq!(rows_of(m("meta.lang", json!("en"))), [0, 6]);
        assert_eq!(
            rows_of(json!({"must": {"key": "source", "match": {"any": ["scipy", "torch"]}}})),
            [0, 2, 3]
        );
        assert_eq!(
            rows_of(json!({"must": [{"key": "source", "match": {"except": ["torch", "numpy"]}}]})),
            [3, 6]
        );
        let r = |b: Value| json!({"must": [{"key": "n", "range": b}]});
        assert_eq!(rows_of(r(json!({"gte": 50, "lt": 999}))), [1, 2]);
        assert_eq!(rows_of(r(json!({"gt": 1}))), [1, 2, 3]);
        assert_eq!(rows_of(r(json!({"lte": 1.5}))), [0]);
        assert_eq!(
            rows_of(json!({"must": [{"key": "score", "range": {"gt": 0.1}}]})),
            [1]
        );
        assert_eq!(
            rows_of(json!({"must": [{"is_empty": {"key": "tags"}}]})),
            [2, 3, 4, 5, 6]
        );
        assert_eq!(
            rows_of(json!({"must": [{"is_empty": {"key": "source"}}]})),
            [4, 5]
        );
        assert_eq!(rows_of(json!({"must": [{"is_null": {"key": "n"}}]})), [4]);
        assert_eq!(
            rows_of(json!({"must": [{"has_id": [101, 105, 999]}]})),
            [1, 5]
        );
    }

    #[test]
    fn clauses_combine_and_nest() {
        assert_eq!(rows_of(json!({})), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(
            rows_of(json!({"should": [
                {"key": "source", "match": {"value": "numpy"}},
                {"key": "flag", "match": {"value": true}}]})),
            [1, 2, 3]
        );
        assert_eq!(
            rows_of(json!({"must_not": [{"key": "source", "match": {"value": "torch"}}]})),
            [1, 3, 4, 5, 6]
        );
        assert_eq!(
            rows_of(json!({
                "must": [{"key": "n", "range": {"gte": 0}}],
                "must_not": [{"should": [
                    {"key": "source", "match": {"value": "numpy"}},
                    {"must": [{"key": "meta.lang", "match": {"value": "de"}}]}]}]})),
            [0]
        );
        assert_eq!(
            rows_of(json!({"min_should": {"min_count": 2, "conditions": [
                {"key": "source", "match": {"value": "torch"}},
                {"key": "n", "range": {"gt": 100}},
                {"key": "meta.lang", "match": {"value": "de"}}]}})),
            [2]
        );
        assert_eq!(
            rows_of(json!({"must": [{"filter": {"must_not": [{"has_id": [100]}]}}]})),
            [1, 2, 3, 4, 5, 6]
        );
    }

    fn error_of(f: Value) -> FilterError {
        Filter::parse(&f).expect_err("a bad filter")
    }

    #[test]
    fn bad_filters_name_the_path() {
        let cases = [
            (json!([]), "filter"),
            (
                json!({"must": [{"key": "a", "match": {"valu": 1}}]}),
                "filter.must[0].match.valu",
            ),
            (
                json!({"must": [{"key": "a", "match": {"value": 1.5}}]}),
                "filter.must[0].match.value",
            ),
            (
                json!({"must": [{"key": "a", "match": {"value": {"x": 1}}}]}),
                "filter.must[0].match.value",
            ),
            (
                json!({"must": [{"key": "a", "range": {"gt": "2020"}}]}),
                "filter.must[0].range.gt",
            ),
            (
                json!({"must": [{"key": "a", "range": {"between": 1}}]}),
                "filter.must[0].range.between",
            ),
            (
                json!({"must": [{"key": "a", "like": "x"}]}),
                "filter.must[0].like",
            ),
            (json!({"must": [{"key": "a"}]}), "filter.must[0]"),
            (
                json!({"must": [{"key": 5, "match": {"value": 1}}]}),
                "filter.must[0].key",
            ),
            (
                json!({"must": [{"key": "a..b", "match": {"value": 1}}]}),
                "filter.must[0].key",
            ),
            (
                json!({"should": [{"frobnicate": 1}]}),
                "filter.should[0].frobnicate",
            ),
            (
                json!({"must_not": [{"has_id": [1, -2]}]}),
                "filter.must_not[0].has_id[1]",
            ),
            (json!({"musts": []}), "filter.musts"),
            (json!({"must": 3}), "filter.must"),
            (
                json!({"must": [{"key": "a", "match": {"any": "x"}}]}),
                "filter.must[0].match.any",
            ),
            (
                json!({"must": [{"key": "a", "match": {"value": 1}, "range": {"gt": 1}}]}),
                "filter.must[0].range",
            ),
        ];
        for (f, path) in cases {
            let e = error_of(f.clone());
            assert_eq!(e.path, path, "{f}: {e}");
        }
        let mut deep = json!({"must": [{"key": "a", "match": {"value": 1}}]});
        for _ in 0..20 {
            deep = json!({"must": [deep]});
        }
        assert!(error_of(deep).message.contains("deeper"));
        let many: Vec<Value> = (0..2000)
            .map(|i| json!({"key": "a", "match": {"value": i}}))
            .collect();
        assert!(error_of(json!({ "should": many }))
            .message
            .contains("conditions"));
        let ids: Vec<u64> = (0..200_000).collect();
        assert!(error_of(json!({"must": [{"has_id": ids}]}))
            .message
            .contains("values"));
        assert!(Filter::parse_text("{")
            .unwrap_err()
            .message
            .contains("JSON"));
    }

    #[test]
    fn conditions_must_suit_indexed_types() {
        let specs = [
            FieldSpec::parse("source:keyword").unwrap(),
            FieldSpec::parse("n:integer").unwrap(),
        ];
        let check = |f: Value| Filter::parse(&f).unwrap().check_fields(&specs);
        assert!(check(json!({"must": [{"key": "source", "match": {"value": "x"}}]})).is_ok());
        let e = check(json!({"must": [{"key": "n", "match": {"value": "x"}}]})).unwrap_err();
        assert_eq!(e.path, "filter.must[0]");
        let e = check(json!({"should": [{"must": [{"key": "source", "range": {"gt": 1}}]}]}))
            .unwrap_err();
        assert_eq!(e.path, "filter.should[0].must[0]");
        assert!(check(json!({"must": [{"key": "other", "range": {"gt": 1}}]})).is_ok());
    }
}
