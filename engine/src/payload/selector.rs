//! Which parts of a payload an answer shows (Qdrant's `with_payload` include and exclude
//! lists): key paths merged into a tree, applied to a payload.
//!
//! `a.b` selects key `b` of object `a`; `l[].c` key `c` of each element of array `l`; a path
//! selects everything under where it ends. As in Qdrant, `[i]` (one element) matches nothing
//! in a selection, a path through a value that is not an object or array keeps that value
//! (include) or leaves it (exclude), and a shorter path wins over a longer one under it.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::path::{KeyPath, Step};

/// A tree of selected paths.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    keys: BTreeMap<String, Node>,
    each: Option<Box<Node>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Everything under here.
    All,
    /// These parts under here.
    Some(Selection),
}

impl Selection {
    /// The selection of `keys` (key paths); the error names the first that does not parse.
    pub fn parse(keys: &[String]) -> Result<Selection, String> {
        let mut root = Selection::default();
        for key in keys {
            let path = KeyPath::parse(key).map_err(|e| format!("`{key}`: {e}"))?;
            root.add(path.steps());
        }
        Ok(root)
    }

    fn add(&mut self, steps: &[Step]) {
        let Some((first, rest)) = steps.split_first() else {
            return;
        };
        let slot = match first {
            Step::Key(k) => self
                .keys
                .entry(k.clone())
                .or_insert(Node::Some(Selection::default())),
            Step::Each => self
                .each
                .get_or_insert_with(|| Box::new(Node::Some(Selection::default()))),
            // One element matches nothing in a selection (as Qdrant).
            Step::Index(_) => return,
        };
        if rest.is_empty() {
            *slot = Node::All;
            return;
        }
        if let Node::Some(sub) = slot {
            sub.add(rest);
        }
    }

    /// Only the selected parts of `payload`.
    pub fn include(&self, payload: Map<String, Value>) -> Map<String, Value> {
        payload
            .into_iter()
            .filter_map(|(k, v)| match self.keys.get(&k)? {
                Node::All => Some((k, v)),
                Node::Some(sub) => Some((k, sub.include_value(v))),
            })
            .collect()
    }

    fn include_value(&self, v: Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(self.include(o)),
            Value::Array(a) => match self.each.as_deref() {
                None => Value::Array(Vec::new()),
                Some(Node::All) => Value::Array(a),
                Some(Node::Some(sub)) => {
                    Value::Array(a.into_iter().map(|x| sub.include_value(x)).collect())
                }
            },
            other => other,
        }
    }

    /// `payload` without the selected parts.
    pub fn exclude(&self, payload: Map<String, Value>) -> Map<String, Value> {
        payload
            .into_iter()
            .filter_map(|(k, v)| match self.keys.get(&k) {
                None => Some((k, v)),
                Some(Node::All) => None,
                Some(Node::Some(sub)) => Some((k, sub.exclude_value(v))),
            })
            .collect()
    }

    fn exclude_value(&self, v: Value) -> Value {
        match v {
            Value::Object(o) => Value::Object(self.exclude(o)),
            Value::Array(a) => match self.each.as_deref() {
                None => Value::Array(a),
                Some(Node::All) => Value::Array(Vec::new()),
                Some(Node::Some(sub)) => {
                    Value::Array(a.into_iter().map(|x| sub.exclude_value(x)).collect())
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload() -> Map<String, Value> {
        match json!({"a": {"b": 1, "c": 2}, "aa": {"b": 3}, "a.b": 4, "l": [{"b": 5, "c": 6}], "n": 7})
        {
            Value::Object(o) => o,
            _ => unreachable!(),
        }
    }

    fn sel(keys: &[&str]) -> Selection {
        Selection::parse(&keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()).unwrap()
    }

    /// The examples of qdrant-client's local mode (its reference for the server's semantics).
    #[test]
    fn include_and_exclude_as_qdrant() {
        assert_eq!(
            Value::Object(sel(&["a.b"]).include(payload())),
            json!({"a": {"b": 1}})
        );
        assert_eq!(
            Value::Object(sel(&["\"a.b\"", "l[].c"]).include(payload())),
            json!({"a.b": 4, "l": [{"c": 6}]})
        );
        assert_eq!(
            Value::Object(sel(&["a", "l[].b"]).exclude(payload())),
            json!({"aa": {"b": 3}, "a.b": 4, "l": [{"c": 6}], "n": 7})
        );
    }

    #[test]
    fn shorter_paths_win_and_indices_match_nothing() {
        assert_eq!(
            Value::Object(sel(&["a.b", "a"]).include(payload())),
            json!({"a": {"b": 1, "c": 2}})
        );
        assert_eq!(
            Value::Object(sel(&["a", "a.b"]).include(payload())),
            json!({"a": {"b": 1, "c": 2}})
        );
        assert_eq!(
            Value::Object(sel(&["l[0]"]).include(payload())),
            json!({"l": []})
        );
        assert_eq!(
            Value::Object(sel(&["l[0]"]).exclude(payload())),
            Value::Object(payload())
        );
        // Through a scalar: kept by include, left by exclude.
        assert_eq!(
            Value::Object(sel(&["n.x"]).include(payload())),
            json!({"n": 7})
        );
        assert_eq!(
            Value::Object(sel(&["n.x"]).exclude(payload())),
            Value::Object(payload())
        );
        assert!(Selection::parse(&["a..b".to_string()]).is_err());
    }
}
