//! Key paths into a payload: `source`, `meta.source`, `authors[].name`, `tags[0]`,
//! `grid[][1]`, `meta."dotted.key"`.
//!
//! A path is keys joined by dots (a key holding a dot or a bracket is written in double
//! quotes); `[]` after a key stands for each element of the array there (Qdrant's wildcard:
//! `grid[][1]` is element 1 of every inner array of `grid`, `grid[][]` every inner array's
//! elements) and `[i]` picks one element. Arrays met by a key along a path are also traversed
//! (a Quiver extension: `authors.name` reaches every author's name, where Qdrant reaches
//! nothing), and an array at the end of a path stands for its elements: a condition on `tags`
//! holds when it holds for any element.

use serde_json::{Map, Value};

/// Longest key path, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// An object key.
    Key(String),
    /// One element of an array.
    Index(usize),
    /// Each element of an array (`[]`).
    Each,
}

/// A parsed key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath {
    text: String,
    steps: Vec<Step>,
}

impl KeyPath {
    /// Its steps.
    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Parses a path; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<KeyPath, String> {
        if text.is_empty() {
            return Err("the key is empty".into());
        }
        if text.len() > MAX_KEY_BYTES {
            return Err(format!("the key is longer than {MAX_KEY_BYTES} bytes"));
        }
        let mut steps = Vec::new();
        let mut rest = text;
        loop {
            // A key: quoted (a `"` opening it, another closing it, something between), or up
            // to the next `.` or `[` (quotes there are part of the key, as before quoting
            // existed: keys stored in older segments keep their meaning).
            let quoted = rest.strip_prefix('"').and_then(|q| {
                q.find('"')
                    .filter(|&close| close > 0)
                    .map(|close| (&q[..close], &q[close + 1..]))
            });
            let name;
            if let Some((inner, after)) = quoted {
                name = inner;
                rest = after;
            } else {
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                name = &rest[..end];
                rest = &rest[end..];
            }
            if name.is_empty() {
                return Err(format!("`{text}` has an empty key"));
            }
            steps.push(Step::Key(name.to_string()));
            while let Some(after) = rest.strip_prefix('[') {
                let Some(close) = after.find(']') else {
                    return Err(format!("`{text}` has an unclosed `[`"));
                };
                let inner = &after[..close];
                let index = || {
                    inner
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| inner.parse::<usize>().ok())
                        .flatten()
                        .ok_or_else(|| format!("`{text}`: `[{inner}]` is not an array index"))
                };
                steps.push(if inner.is_empty() {
                    Step::Each
                } else {
                    Step::Index(index()?)
                });
                rest = &after[close + 1..];
            }
            if rest.is_empty() {
                break;
            }
            rest = rest
                .strip_prefix('.')
                .ok_or_else(|| format!("`{text}`: unexpected `{rest}` after `]`"))?;
        }
        Ok(KeyPath {
            text: text.to_string(),
            steps,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The values the path reaches in a payload (arrays along the way traversed; an array at
    /// the end returned whole). Empty when the key is missing.
    pub fn resolve<'a>(&self, root: &'a Map<String, Value>) -> Vec<&'a Value> {
        let mut out = Vec::new();
        let Some(Step::Key(first)) = self.steps.first() else {
            return out;
        };
        if let Some(v) = root.get(first) {
            walk(v, &self.steps[1..], &mut out);
        }
        out
    }

    /// The scalar values the path reaches: [`KeyPath::resolve`] with arrays at the end opened
    /// into their elements (nulls and nested objects included).
    pub fn values<'a>(&self, root: &'a Map<String, Value>) -> Vec<&'a Value> {
        let mut out = Vec::new();
        for v in self.resolve(root) {
            match v {
                Value::Array(a) => out.extend(a.iter()),
                v => out.push(v),
            }
        }
        out
    }
}

fn walk<'a>(v: &'a Value, steps: &[Step], out: &mut Vec<&'a Value>) {
    let Some(step) = steps.first() else {
        out.push(v);
        return;
    };
    match (v, step) {
        (Value::Array(a), Step::Index(i)) => {
            if let Some(e) = a.get(*i) {
                walk(e, &steps[1..], out);
            }
        }
        (Value::Array(a), Step::Each) => {
            for e in a {
                walk(e, &steps[1..], out);
            }
        }
        (Value::Array(a), Step::Key(_)) => {
            for e in a {
                walk(e, steps, out);
            }
        }
        (Value::Object(o), Step::Key(k)) => {
            if let Some(e) = o.get(k) {
                walk(e, &steps[1..], out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// The values key `k` reaches in `p`.
    fn values_at(p: &Map<String, Value>, k: &str) -> Vec<Value> {
        KeyPath::parse(k)
            .unwrap()
            .values(p)
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn paths_reach_nested_keys_and_array_elements() {
        let p = obj(json!({
            "source": "torch",
            "meta": {"lang": "en", "tags": ["a", "b"]},
            "authors": [{"name": "x"}, {"name": "y"}, {"other": 1}],
        }));
        let vals = |k: &str| values_at(&p, k);
        assert_eq!(vals("source"), vec![json!("torch")]);
        assert_eq!(vals("meta.lang"), vec![json!("en")]);
        assert_eq!(vals("meta.tags"), vec![json!("a"), json!("b")]);
        assert_eq!(vals("meta.tags[1]"), vec![json!("b")]);
        assert_eq!(vals("authors[].name"), vec![json!("x"), json!("y")]);
        assert_eq!(vals("authors.name"), vec![json!("x"), json!("y")]);
        assert_eq!(vals("authors[0].name"), vec![json!("x")]);
        assert!(vals("missing").is_empty());
        assert!(vals("source.deeper").is_empty());
    }

    /// Qdrant's wildcard (`[]`) and quoted keys, as qdrant-client's local mode resolves them.
    #[test]
    fn wildcards_flatten_each_level_and_quoted_keys_hold_dots() {
        let p = obj(json!({
            "grid": [[1, 2], [3, 4], [5, 6]],
            "meta": {"lang": "en"},
            "the": {"nested.key": "cuckoo", "a[0]": 7},
            "location": [{"counts": [1, 2]}, {"counts": [3]}],
        }));
        let vals = |k: &str| values_at(&p, k);
        assert_eq!(vals("grid[][1]"), vec![json!(2), json!(4), json!(6)]);
        assert_eq!(
            vals("grid[][]"),
            (1..=6).map(|i| json!(i)).collect::<Vec<_>>()
        );
        assert_eq!(vals("grid[0][]"), vec![json!(1), json!(2)]);
        assert_eq!(vals("grid[0][1]"), vec![json!(2)]);
        // An array at the end stands for its elements, as Qdrant's checks take it.
        let inner = KeyPath::parse("grid[]").unwrap();
        assert_eq!(
            inner.resolve(&p),
            vec![&json!([1, 2]), &json!([3, 4]), &json!([5, 6])]
        );
        assert_eq!(vals("grid[]"), vals("grid[][]"));
        assert_eq!(
            vals("location[].counts"),
            vec![json!(1), json!(2), json!(3)]
        );
        // `[]` where there is no array reaches nothing.
        assert!(vals("meta[].lang").is_empty());
        assert_eq!(vals(r#"the."nested.key""#), vec![json!("cuckoo")]);
        assert_eq!(vals(r#"the."a[0]""#), vec![json!(7)]);
        assert_eq!(vals(r#""the"."nested.key""#), vec![json!("cuckoo")]);
    }

    /// Keys older segments may hold (quotes inside a key, an unclosed or empty quote) still
    /// parse, as one literal key each.
    #[test]
    fn quotes_that_do_not_quote_a_key_are_part_of_it() {
        let p = obj(json!({"a\"b": 1, "\"c": {"d": 2}, "\"\"": 3}));
        assert_eq!(values_at(&p, "a\"b"), vec![json!(1)]);
        assert_eq!(values_at(&p, "\"c.d"), vec![json!(2)]);
        assert_eq!(values_at(&p, "\"\""), vec![json!(3)]);
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "a[",
            "a[x]",
            "a[]b",
            "a[+1]",
            &"k".repeat(600),
        ] {
            assert!(KeyPath::parse(bad).is_err(), "{bad}");
        }
    }
}
