//! A Qdrant collection's vectors as its clients name them: one dense vector (unnamed, or under
//! a name), several named dense vectors, sparse vectors by name, or no dense vector at all;
//! and the vectors a point carries, a query names and an answer shows.
//!
//! One dense vector is the store collection's vector (IVF-PQ, every backend). Sparse vectors
//! are kept in the point's payload under reserved keys ([`quiver_store::wal::sparse_key`]),
//! written, logged and replayed with it, and searched through each segment's inverted index.
//! A collection with several dense vectors keeps each of them likewise
//! ([`quiver_store::wal::dense_key`], any subset per point), searched exactly (brute force
//! over each segment's vectors of that name). A collection whose dense vectors are not the
//! store's keeps a one-dimension placeholder per point that no answer shows.

use std::collections::BTreeMap;

use quiver_engine::sparse::SparseVector;
use quiver_engine::{dense_set, Metric};
use quiver_store::wal::{dense_key, sparse_key, RESERVED_KEY_PREFIX};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tonic::Status;

use super::api::Distance;
use crate::status::invalid;

/// How the client described the collection's vectors, kept in its settings under
/// [`VectorForm::KEY`] so that `GetCollectionInfo` answers in the same form (LangChain reads
/// back `vectors[name]`) and requests are checked against the names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VectorForm {
    /// The dense vector was given by name (`{"name": {…}}`, the name possibly `""`).
    #[serde(default)]
    pub named: bool,
    /// Its name (`""`: the unnamed one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The store collection holds no dense vector of the client's (sparse vectors only, or
    /// several dense vectors: [`Self::spaces`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_dense: bool,
    /// The dense vectors by name, when there are several (each kept in the payload).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub spaces: BTreeMap<String, SpaceParams>,
    /// `on_disk`, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disk: Option<bool>,
    /// `datatype` was given (as what it says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<DatatypeName>,
    /// The sparse vectors, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sparse: BTreeMap<String, SparseParams>,
}

/// A named dense vector of a collection with several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceParams {
    /// Size.
    pub size: u64,
    /// Distance.
    pub distance: Distance,
    /// `on_disk`, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_disk: Option<bool>,
    /// `datatype`, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<DatatypeName>,
    /// A multi-vector space (`multivector_config` with the `max_sim` comparator): a point
    /// holds any number (at least one) of `size`-long vectors, scored by MaxSim.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub multi: bool,
}

impl SpaceParams {
    /// The metric it is searched with.
    pub fn metric(&self) -> Metric {
        self.distance.metric()
    }
}

/// A `datatype` as the client named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatatypeName {
    /// `float32`.
    Float32,
    /// `float16`.
    Float16,
}

/// A sparse vector's parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseParams {
    /// Queries weigh their terms by inverse document frequency (`modifier: idf`).
    #[serde(default)]
    pub idf: bool,
    /// The client's `index` parameters (REST form), kept and reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Value>,
}

impl VectorForm {
    /// Its key in the settings.
    pub const KEY: &'static str = "vectors";

    /// The form kept in `settings` (the default when there is none: collections made before
    /// it was kept).
    pub fn of(settings: &Map<String, Value>) -> VectorForm {
        settings
            .get(Self::KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// True when answers show vectors by name (`{"name": …}`) rather than the bare one.
    pub fn shows_names(&self) -> bool {
        self.named || (self.no_dense && self.unnamed_space().is_none()) || !self.sparse.is_empty()
    }

    /// The one unnamed vector kept in the payload (an unnamed multi-vector), if that is the
    /// collection's vector.
    pub fn unnamed_space(&self) -> Option<&SpaceParams> {
        match (self.named, self.spaces.len()) {
            (false, 1) => self.spaces.get(""),
            _ => None,
        }
    }

    /// Every vector name, the dense ones first.
    pub fn names(&self) -> Vec<String> {
        let dense = (!self.no_dense).then(|| self.name.clone());
        dense
            .into_iter()
            .chain(self.spaces.keys().cloned())
            .chain(self.sparse.keys().cloned())
            .collect()
    }

    /// What `name` is in this collection; a clear error naming `field` when nothing.
    pub fn kind_of(&self, field: &str, name: &str) -> Result<VectorKind, Status> {
        if !self.no_dense && name == self.name {
            return Ok(VectorKind::Dense);
        }
        if let Some(p) = self.spaces.get(name) {
            return Ok(VectorKind::Space {
                dim: p.size as usize,
                distance: p.distance,
                multi: p.multi,
            });
        }
        if let Some(p) = self.sparse.get(name) {
            return Ok(VectorKind::Sparse { idf: p.idf });
        }
        Err(self.no_such(field, name))
    }

    /// The error for a vector name the collection does not have.
    pub fn no_such(&self, field: &str, name: &str) -> Status {
        let names = self
            .names()
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        invalid(
            field,
            format!("Wrong input: Not existing vector name error: `{name}` (the collection has: {names})"),
        )
    }
}

impl VectorForm {
    /// Quiver's filter text `text` with each `{"has_vector": NAME}` condition (Qdrant's: the
    /// point holds that vector) bound to this collection: always true for the dense vector
    /// the store indexes (every point holds it), else "its payload key is there". A name the
    /// collection lacks is refused as for queries.
    pub fn bind_filter(&self, field: &str, text: &str) -> Result<String, Status> {
        if !text.contains("has_vector") {
            return Ok(text.to_string());
        }
        let mut v: Value = serde_json::from_str(text).map_err(|e| invalid(field, e.to_string()))?;
        self.bind(field, &mut v, 0)?;
        Ok(v.to_string())
    }

    fn bind(&self, field: &str, v: &mut Value, depth: usize) -> Result<(), Status> {
        if depth > 64 {
            return Err(invalid(field, "nested too deep"));
        }
        match v {
            Value::Object(o) => {
                if let Some(name) = o.get("has_vector") {
                    let at = format!("{field}.has_vector");
                    let Some(name) = name.as_str().filter(|_| o.len() == 1) else {
                        return Err(invalid(&at, "expected {\"has_vector\": \"name\"}"));
                    };
                    *v = match self.kind_of(&at, name)? {
                        VectorKind::Dense => json!({"must_not": [{"has_id": []}]}),
                        VectorKind::Space { .. } => key_present(&dense_key(name)),
                        VectorKind::Sparse { .. } => key_present(&sparse_key(name)),
                    };
                    return Ok(());
                }
                for x in o.values_mut() {
                    self.bind(field, x, depth + 1)?;
                }
            }
            Value::Array(a) => {
                for x in a {
                    self.bind(field, x, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The condition "the payload holds top-level key `key`" (quoted when it holds a dot or a
/// bracket, so the whole key is one step of the path).
fn key_present(key: &str) -> Value {
    let path = match key.contains(['.', '[']) && !key.contains('"') {
        true => format!("\"{key}\""),
        false => key.to_string(),
    };
    json!({"must_not": [{"is_empty": {"key": path}}]})
}

/// What a vector name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorKind {
    /// The store collection's dense vector.
    Dense,
    /// A named dense vector kept in the payload.
    Space {
        /// Its size.
        dim: usize,
        /// Its distance.
        distance: Distance,
        /// A point holds several vectors of it, scored by MaxSim.
        multi: bool,
    },
    /// A sparse vector (`idf`: its modifier).
    Sparse {
        /// Queries are weighed by inverse document frequency.
        idf: bool,
    },
}

/// A vector as a request gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorIn {
    /// Dense values.
    Dense(Vec<f32>),
    /// A sparse vector (checked and sorted).
    Sparse(SparseVector),
    /// A multi-vector: several dense vectors of one size.
    Multi(Vec<Vec<f32>>),
}

/// A vector as an answer shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorOut {
    /// Dense values.
    Dense(Vec<f32>),
    /// A sparse vector.
    Sparse(SparseVector),
    /// A multi-vector.
    Multi(Vec<Vec<f32>>),
}

impl From<VectorOut> for VectorIn {
    fn from(v: VectorOut) -> VectorIn {
        match v {
            VectorOut::Dense(d) => VectorIn::Dense(d),
            VectorOut::Sparse(s) => VectorIn::Sparse(s),
            VectorOut::Multi(m) => VectorIn::Multi(m),
        }
    }
}

/// A point's vectors in an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorsOut {
    /// The collection's one unnamed vector, bare.
    Unnamed(VectorOut),
    /// By name.
    Named(Vec<(String, VectorOut)>),
}

/// Which vectors an answer carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum VectorSel {
    /// None.
    #[default]
    None,
    /// All of them.
    All,
    /// These names.
    Only(Vec<String>),
}

impl VectorSel {
    /// True when the dense vector is wanted.
    pub fn wants_dense(&self, form: &VectorForm) -> bool {
        !form.no_dense
            && match self {
                VectorSel::None => false,
                VectorSel::All => true,
                VectorSel::Only(n) => n.contains(&form.name),
            }
    }

    /// True when any vector is wanted.
    pub fn any(&self) -> bool {
        *self != VectorSel::None
    }

    /// The vectors to answer of a point whose stored dense vector is `dense` and payload
    /// `payload` (`None`: none asked for).
    pub fn select(
        &self,
        form: &VectorForm,
        dense: &[f32],
        payload: &Map<String, Value>,
    ) -> Option<VectorsOut> {
        if !self.any() {
            return None;
        }
        if !form.shows_names() {
            if form.unnamed_space().is_some() {
                let named = self.select_named(form, dense, payload);
                return named
                    .into_iter()
                    .next()
                    .map(|(_, v)| VectorsOut::Unnamed(v));
            }
            return self
                .wants_dense(form)
                .then(|| VectorsOut::Unnamed(VectorOut::Dense(dense.to_vec())));
        }
        Some(VectorsOut::Named(self.select_named(form, dense, payload)))
    }

    /// The vectors selected, by name.
    fn select_named(
        &self,
        form: &VectorForm,
        dense: &[f32],
        payload: &Map<String, Value>,
    ) -> Vec<(String, VectorOut)> {
        let wanted = |n: &str| match self {
            VectorSel::None => false,
            VectorSel::All => true,
            VectorSel::Only(names) => names.iter().any(|x| x == n),
        };
        let mut out = Vec::new();
        if !form.no_dense && wanted(&form.name) {
            out.push((form.name.clone(), VectorOut::Dense(dense.to_vec())));
        }
        for (name, p) in form.spaces.iter().filter(|(n, _)| wanted(n)) {
            if let Some(v) = payload
                .get(&dense_key(name))
                .and_then(Value::as_str)
                .and_then(dense_set::decode)
            {
                out.push((
                    name.clone(),
                    match p.multi {
                        true => VectorOut::Multi(
                            v.chunks(p.size.max(1) as usize)
                                .map(<[f32]>::to_vec)
                                .collect(),
                        ),
                        false => VectorOut::Dense(v),
                    },
                ));
            }
        }
        for name in form.sparse.keys().filter(|n| wanted(n)) {
            if let Some(v) = payload
                .get(&sparse_key(name))
                .and_then(SparseVector::from_json)
            {
                out.push((name.clone(), VectorOut::Sparse(v)));
            }
        }
        out
    }
}

/// The placeholder a point of a collection without a dense vector keeps.
pub const PLACEHOLDER: [f32; 1] = [0.0];

/// A point's vectors split into what the store keeps: the dense values (the placeholder
/// when the collection has none), and each sparse vector written into `payload` under its
/// reserved key. `field` names the point's vector in errors.
pub fn split_point(
    form: &VectorForm,
    dim: usize,
    field: &str,
    vectors: Vec<(String, VectorIn)>,
    payload: &mut Map<String, Value>,
) -> Result<Vec<f32>, Status> {
    let dense = split_vectors(form, dim, field, vectors, payload)?;
    if form.no_dense {
        return Ok(PLACEHOLDER.to_vec());
    }
    dense.ok_or_else(|| {
        invalid(
            field,
            format!(
                "missing the dense vector{}: Quiver keeps one for every point",
                if form.name.is_empty() {
                    String::new()
                } else {
                    format!(" `{}`", form.name)
                }
            ),
        )
    })
}

/// The vectors a request gives a point, checked against the collection's: the store's dense
/// vector if given, the others written into `payload` under their reserved keys.
pub fn split_vectors(
    form: &VectorForm,
    dim: usize,
    field: &str,
    vectors: Vec<(String, VectorIn)>,
    payload: &mut Map<String, Value>,
) -> Result<Option<Vec<f32>>, Status> {
    let mut dense = None;
    for (name, v) in vectors {
        let at = if name.is_empty() && !form.shows_names() {
            field.to_string()
        } else {
            format!("{field}.{name}")
        };
        match (form.kind_of(&at, &name)?, v) {
            (VectorKind::Dense, VectorIn::Dense(d)) => {
                if d.len() != dim {
                    return Err(invalid(
                        &at,
                        format!("dimension mismatch: expected {dim}, got {}", d.len()),
                    ));
                }
                dense = Some(d);
            }
            (
                VectorKind::Space {
                    dim,
                    distance,
                    multi: false,
                },
                VectorIn::Dense(d),
            ) => {
                let kept = dense_set::prepare(distance.metric(), dim, &d)
                    .map_err(|e| invalid(&at, e.to_string()))?;
                payload.insert(dense_key(&name), Value::String(dense_set::encode(&kept)));
            }
            (
                VectorKind::Space {
                    dim,
                    distance,
                    multi: true,
                },
                VectorIn::Multi(m),
            ) => {
                let kept =
                    prepare_multi(distance.metric(), dim, &m).map_err(|e| invalid(&at, e))?;
                payload.insert(dense_key(&name), Value::String(dense_set::encode(&kept)));
            }
            (VectorKind::Sparse { .. }, VectorIn::Sparse(s)) => {
                payload.insert(sparse_key(&name), s.to_json());
            }
            (VectorKind::Space { multi: true, .. }, _) => {
                return Err(invalid(
                    &at,
                    format!("`{name}` is a multi-vector: give a list of vectors"),
                ))
            }
            (VectorKind::Dense | VectorKind::Space { .. }, VectorIn::Multi(_)) => {
                return Err(invalid(
                    &at,
                    format!("`{name}` is a dense vector; a multi-vector was given"),
                ))
            }
            (VectorKind::Dense | VectorKind::Space { .. }, VectorIn::Sparse(_)) => {
                return Err(invalid(
                    &at,
                    format!("`{name}` is a dense vector; a sparse one was given"),
                ))
            }
            (VectorKind::Sparse { .. }, VectorIn::Dense(_) | VectorIn::Multi(_)) => {
                return Err(invalid(
                    &at,
                    format!("`{name}` is a sparse vector; a dense one was given"),
                ))
            }
        }
    }
    Ok(dense)
}

/// Most vectors in one multi-vector.
pub const MAX_MULTI_VECTORS: usize = 4096;

/// A multi-vector in the form it is kept: each of its vectors checked (`dim` values, finite)
/// and, for cosine, scaled to unit length, one after the other; at least one vector.
pub fn prepare_multi(metric: Metric, dim: usize, m: &[Vec<f32>]) -> Result<Vec<f32>, String> {
    if m.is_empty() {
        return Err("a multi-vector holds at least one vector".into());
    }
    if m.len() > MAX_MULTI_VECTORS {
        return Err(format!(
            "{} vectors in one multi-vector; at most {MAX_MULTI_VECTORS}",
            m.len()
        ));
    }
    let mut kept = Vec::with_capacity(m.len() * dim);
    for (i, v) in m.iter().enumerate() {
        let one = dense_set::prepare(metric, dim, v).map_err(|e| format!("[{i}]: {e}"))?;
        kept.extend_from_slice(&one);
    }
    Ok(kept)
}

/// True when `key` is one of the payload keys a front end reserves (a UUID point's id, sparse
/// vectors): never shown in an answer's payload.
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_KEY_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hybrid() -> VectorForm {
        let mut sparse = BTreeMap::new();
        sparse.insert(
            "text".to_string(),
            SparseParams {
                idf: true,
                index: None,
            },
        );
        VectorForm {
            named: true,
            name: "dense".into(),
            sparse,
            ..VectorForm::default()
        }
    }

    #[test]
    fn points_split_into_the_dense_vector_and_payload_keys() {
        let form = hybrid();
        let mut payload = Map::new();
        let sv = SparseVector::new(vec![3, 1], vec![0.3, 0.1]).unwrap();
        let dense = split_point(
            &form,
            2,
            "points[0].vector",
            vec![
                ("dense".into(), VectorIn::Dense(vec![1.0, 2.0])),
                ("text".into(), VectorIn::Sparse(sv.clone())),
            ],
            &mut payload,
        )
        .unwrap();
        assert_eq!(dense, vec![1.0, 2.0]);
        let out = VectorSel::All.select(&form, &dense, &payload).unwrap();
        assert_eq!(
            out,
            VectorsOut::Named(vec![
                ("dense".into(), VectorOut::Dense(vec![1.0, 2.0])),
                ("text".into(), VectorOut::Sparse(sv)),
            ])
        );
        let e = split_point(
            &form,
            2,
            "points[0].vector",
            vec![("other".into(), VectorIn::Dense(vec![1.0, 2.0]))],
            &mut Map::new(),
        )
        .unwrap_err();
        assert!(
            e.message().contains("points[0].vector.other"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("`other`"), "{}", e.message());
        let e = split_point(&form, 2, "points[0].vector", vec![], &mut Map::new()).unwrap_err();
        assert!(
            e.message().contains("missing the dense vector `dense`"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn an_unnamed_collection_shows_the_bare_vector() {
        let form = VectorForm::default();
        let out = VectorSel::All.select(&form, &[1.0], &Map::new());
        assert_eq!(out, Some(VectorsOut::Unnamed(VectorOut::Dense(vec![1.0]))));
        assert_eq!(VectorSel::None.select(&form, &[1.0], &Map::new()), None);
    }
}
