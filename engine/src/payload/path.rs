//! Key paths into a payload: `source`, `meta.source`, `authors[].name`, `tags[0]`.
//!
//! A path is keys joined by dots; `[]` after a key says "each element of this array" and `[i]`
//! picks one element. Arrays met along a path are traversed whether or not `[]` is written (so
//! `authors.name` reaches every author's name), and an array at the end of a path stands for its
//! elements: a condition on `tags` holds when it holds for any element.

use serde_json::{Map, Value};

/// Longest key path, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// An object key.
    Key(String),
    /// One element of an array.
    Index(usize),
}

/// A parsed key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPath {
    text: String,
    steps: Vec<Step>,
}

impl KeyPath {
    /// Parses a path; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<KeyPath, String> {
        if text.is_empty() {
            return Err("the key is empty".into());
        }
        if text.len() > MAX_KEY_BYTES {
            return Err(format!("the key is longer than {MAX_KEY_BYTES} bytes"));
        }
        let mut steps = Vec::new();
        for part in text.split('.') {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if name.is_empty() {
                return Err(format!("`{text}` has an empty key between dots"));
            }
            steps.push(Step::Key(name.to_string()));
            while !rest.is_empty() {
                let Some(close) = rest.find(']') else {
                    return Err(format!("`{text}` has an unclosed `[`"));
                };
                let inner = &rest[1..close];
                if !inner.is_empty() {
                    let i = inner
                        .parse::<usize>()
                        .map_err(|_| format!("`{text}`: `[{inner}]` is not an array index"))?;
                    steps.push(Step::Index(i));
                }
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(format!("`{text}`: unexpected `{rest}` after `]`"));
                }
            }
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

    #[test]
    fn paths_reach_nested_keys_and_array_elements() {
        let p = obj(json!({
            "source": "torch",
            "meta": {"lang": "en", "tags": ["a", "b"]},
            "authors": [{"name": "x"}, {"name": "y"}, {"other": 1}],
        }));
        let vals = |k: &str| -> Vec<Value> {
            KeyPath::parse(k)
                .unwrap()
                .values(&p)
                .into_iter()
                .cloned()
                .collect()
        };
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

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["", "a..b", ".a", "a[", "a[x]", "a[]b", &"k".repeat(600)] {
            assert!(KeyPath::parse(bad).is_err(), "{bad}");
        }
    }
}
