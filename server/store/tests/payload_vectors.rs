//! Vectors kept in the payload under reserved keys: sparse vectors, searched exactly through
//! each segment's inverted index, and the dense vectors of a named space, searched exactly
//! through each segment's gathered set. Both top-ks equal brute force over the points as
//! written (upserts, deletes, payload edits that keep or drop them) with filters (and the idf
//! modifier), across sealed segments, a training, a checkpoint and a restart.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{small_meta, Rng};
use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::payload::{self, filter::Filter};
use quiver_engine::sparse::{idf, SparseVector};
use quiver_engine::{dense_set, Metric};
use quiver_store::wal::{dense_key, sparse_key, PayloadEdit};
use quiver_store::{Collection, StoreConfig};
use serde_json::{json, Value};

type C = Collection<CpuBackend>;

const DIM: usize = 4;

fn sparse(rng: &mut Rng) -> SparseVector {
    let n = rng.below(8) + 1;
    let mut terms: Vec<u32> = (0..n).map(|_| rng.below(40) as u32).collect();
    terms.sort_unstable();
    terms.dedup();
    let values = terms
        .iter()
        .map(|_| (rng.below(1000) as f32 + 1.0) / 500.0)
        .collect();
    SparseVector::new(terms, values).unwrap()
}

/// The named dense space's size (cosine).
const IMG_DIM: usize = 3;

fn dense(rng: &mut Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..IMG_DIM)
        .map(|_| rng.below(2000) as f32 / 1000.0 - 0.999)
        .collect();
    dense_set::prepare(Metric::Cosine, IMG_DIM, &v).unwrap()
}

/// What the test believes each live point holds: its sparse vector (if any), its `g`, and
/// its vector of the named dense space `img` (if any).
type Model = BTreeMap<u64, (Option<SparseVector>, u64, Option<Vec<f32>>)>;

fn payload_of(v: Option<&SparseVector>, g: u64, img: Option<&[f32]>) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("g".into(), json!(g));
    if let Some(v) = v {
        m.insert(sparse_key("text"), v.to_json());
    }
    if let Some(img) = img {
        m.insert(dense_key("img"), json!(dense_set::encode(img)));
    }
    payload::encode(&Value::Object(m)).unwrap()
}

fn brute(
    model: &Model,
    q: &SparseVector,
    k: usize,
    g: Option<u64>,
    with_idf: bool,
) -> Vec<(u64, f32)> {
    let n = model.values().filter(|(v, _, _)| v.is_some()).count();
    let q = if with_idf {
        let values = q
            .indices
            .iter()
            .zip(&q.values)
            .map(|(t, w)| {
                let df = model
                    .values()
                    .filter(|(v, _, _)| v.as_ref().is_some_and(|v| v.indices.contains(t)))
                    .count();
                w * idf(df, n)
            })
            .collect();
        SparseVector {
            indices: q.indices.clone(),
            values,
        }
    } else {
        q.clone()
    };
    let mut hits: Vec<(u64, f32)> = model
        .iter()
        .filter(|(_, (_, pg, _))| g.is_none_or(|g| *pg == g))
        .filter_map(|(id, (v, _, _))| Some((*id, q.dot(v.as_ref()?)?)))
        .collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    hits.truncate(k);
    hits
}

/// Exact cosine neighbours in the `img` space among points of group `g` (all: `None`).
fn brute_dense(model: &Model, q: &[f32], k: usize, g: Option<u64>) -> Vec<(u64, f32)> {
    let q = dense_set::prepare(Metric::Cosine, IMG_DIM, q).unwrap();
    let mut hits: Vec<(u64, f32)> = model
        .iter()
        .filter(|(_, (_, pg, _))| g.is_none_or(|g| *pg == g))
        .filter_map(|(id, (_, _, img))| {
            let img = img.as_ref()?;
            Some((*id, img.iter().zip(&q).map(|(a, b)| a * b).sum()))
        })
        .collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    hits.truncate(k);
    hits
}

fn check(c: &C, model: &Model, rng: &mut Rng, what: &str) {
    for i in 0..20 {
        let q = dense(rng);
        let g = (i % 3 == 0).then(|| rng.below(3));
        let filter = g.map(|g| {
            Filter::parse(&json!({"must": [{"key": "g", "match": {"value": g}}]})).unwrap()
        });
        let got = c
            .search_dense("img", Metric::Cosine, IMG_DIM, &q, 10, filter.as_ref())
            .unwrap();
        let want = brute_dense(model, &q, 10, g);
        let got_hits: Vec<(u64, f32)> = got
            .ids
            .iter()
            .zip(&got.distances)
            .filter(|(id, _)| **id >= 0)
            .map(|(&id, &d)| (id as u64, d))
            .collect();
        assert_eq!(got_hits.len(), want.len(), "{what}: dense query {i}");
        for (a, b) in got_hits.iter().zip(&want) {
            // Ties (equal scores) may come in either order.
            assert!(
                (a.1 - b.1).abs() <= 1e-5,
                "{what}: dense query {i}: {got_hits:?} vs {want:?}"
            );
            assert!(model[&a.0].2.is_some() && g.is_none_or(|g| model[&a.0].1 == g));
        }
    }
    for i in 0..40 {
        let q = sparse(rng);
        let g = (i % 3 == 0).then(|| rng.below(3));
        let with_idf = i % 2 == 1;
        let filter = g.map(|g| {
            Filter::parse(&json!({"must": [{"key": "g", "match": {"value": g}}]})).unwrap()
        });
        let got = c.search_sparse("text", &q, 10, filter.as_ref(), with_idf);
        let want = brute(model, &q, 10, g, with_idf);
        assert_eq!(
            got.iter().map(|h| h.0).collect::<Vec<_>>(),
            want.iter().map(|h| h.0).collect::<Vec<_>>(),
            "{what}: query {i} ({q:?}, g {g:?}, idf {with_idf})"
        );
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a.1 - b.1).abs() <= 1e-4 * b.1.abs().max(1.0),
                "{what}: {a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn payload_vectors_search_equals_brute_force_through_edits_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let cfg = StoreConfig {
        seal_rows: 64,
        ..StoreConfig::default()
    };
    let mut c =
        Arc::new(C::create(&path, small_meta("s", DIM, 0), CpuBackend, cfg.clone()).unwrap());
    let mut rng = Rng(11);
    let mut model = Model::new();
    for round in 0..12u64 {
        // Upserts: some points without a sparse vector, some replacing others.
        let ids: Vec<u64> = (0..60).map(|_| rng.below(1000)).collect();
        let mut uniq = ids.clone();
        uniq.sort_unstable();
        uniq.dedup();
        let mut payloads = Vec::new();
        let mut vectors = Vec::new();
        for &id in &uniq {
            let v = (!rng.chance(0.15)).then(|| sparse(&mut rng));
            let g = rng.below(3);
            let img = (!rng.chance(0.2)).then(|| dense(&mut rng));
            payloads.push(payload_of(v.as_ref(), g, img.as_deref()));
            vectors.extend((0..DIM).map(|j| (id as f32 + j as f32) / 1000.0));
            model.insert(id, (v, g, img));
        }
        c.upsert_with_payloads(uniq, vectors, payloads).unwrap();
        // Deletes.
        let gone: Vec<u64> = (0..8).map(|_| rng.below(1000)).collect();
        c.delete(gone.clone()).unwrap();
        for id in gone {
            model.remove(&id);
        }
        // Payload edits: a merge keeps the sparse vector, deleting its key drops it.
        let edited: Vec<u64> = model.keys().copied().filter(|_| rng.chance(0.1)).collect();
        if !edited.is_empty() {
            let g = rng.below(3);
            c.set_payload(
                edited.clone(),
                PayloadEdit::Merge(payload::encode(&json!({"g": g})).unwrap()),
            )
            .unwrap();
            for id in &edited {
                model.get_mut(id).unwrap().1 = g;
            }
        }
        let dropped: Vec<u64> = model.keys().copied().filter(|_| rng.chance(0.05)).collect();
        if !dropped.is_empty() {
            c.set_payload(
                dropped.clone(),
                PayloadEdit::DeleteKeys(vec![sparse_key("text"), dense_key("img")]),
            )
            .unwrap();
            for id in &dropped {
                let p = model.get_mut(id).unwrap();
                p.0 = None;
                p.2 = None;
            }
        }
        // A named vector replaced by a payload merge (Qdrant's UpdateVectors).
        let moved: Vec<u64> = model.keys().copied().filter(|_| rng.chance(0.05)).collect();
        for id in moved {
            let img = dense(&mut rng);
            let edit = json!({ dense_key("img"): dense_set::encode(&img) });
            c.set_payload(
                vec![id],
                PayloadEdit::Merge(payload::encode(&edit).unwrap()),
            )
            .unwrap();
            model.get_mut(&id).unwrap().2 = Some(img);
        }
        check(&c, &model, &mut rng, &format!("round {round}"));
        if round == 7 {
            // Trained: every segment an IVF-PQ index, the payloads carried.
            c.start_train(None).unwrap();
            c.wait_job().unwrap();
            check(&c, &model, &mut rng, "after training");
        }
        if round % 4 == 3 {
            c.checkpoint().unwrap();
            c.close();
            drop(c);
            c = Arc::new(C::open(&path, CpuBackend, cfg.clone()).unwrap());
            check(
                &c,
                &model,
                &mut rng,
                &format!("reopened after round {round}"),
            );
        }
    }
    assert!(
        c.version().segments.len() > 1,
        "sealed segments were searched"
    );
}
