//! The seed corpus: small valid inputs of every target, made by Quiver's own writers, from
//! which the fuzzer mutates. `cargo test -p quiver-fuzz -- --ignored write_seed_corpus`
//! rewrites `corpus/`; the files are committed so that fuzz runs and the replay test start
//! from the same place.

use std::path::Path;
use std::sync::Arc;

use prost::Message;
use quiver_engine::backend::cpu::CpuBackend;
use quiver_engine::io::{self, ElementType, VectorWriter};
use quiver_engine::payload::fields::FieldSpec;
use quiver_engine::progress::NoProgress;
use quiver_engine::synth::ClusteredGaussian;
use quiver_engine::{FlatIndex, IndexParams, IvfPqIndex, Metric, RefineKind};
use quiver_server::proto;
use quiver_store::wal::PayloadEdit;
use quiver_store::{Collection, CollectionMeta, IndexConfig};

use crate::{archive, collection_files, grpc};

/// Deterministic vectors: `n` rows of the engine's seeded Gaussian mixture.
pub fn vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    ClusteredGaussian::new(dim, 4, 0.3, seed).rows(0, n)
}

fn payload(i: u64) -> Vec<u8> {
    let text = format!(
        r#"{{"source": "{}", "n": {}, "tags": ["t{}", "x"], "score": {}.5, "ok": {}}}"#,
        ["torch", "numpy", "scipy"][i as usize % 3],
        i % 100,
        i % 4,
        i % 7,
        i.is_multiple_of(2)
    );
    quiver_engine::payload::encode_text(&text).expect("seed payloads are valid")
}

/// A small trained index.
pub fn small_index(
    metric: Metric,
    dim: usize,
    pq_m: usize,
    bits: u32,
    refine: RefineKind,
) -> IvfPqIndex {
    let n = 300;
    let x = vectors(n, dim, dim as u64 + bits as u64);
    let mut p = IndexParams::new(metric, dim, 4, pq_m);
    p.pq_bits = bits;
    p.refine = refine;
    p.kmeans_iterations = 4;
    let mut index = IvfPqIndex::train(p, &x, &NoProgress).expect("training the seed index");
    let payloads: Vec<Vec<u8>> = (0..n as u64).map(payload).collect();
    index
        .add_with_payloads(&x, None, &payloads, &NoProgress)
        .expect("adding to the seed index");
    index.delete(&[3, 5, 8]);
    index
}

/// The files the `grpc` target's import folder holds: a valid index and a damaged one.
pub fn write_import_files(dir: &Path) -> std::io::Result<()> {
    let small = small_index(Metric::L2, 4, 2, 4, RefineKind::F16);
    quiver_engine::persist::save(&small, &dir.join("small.qvr")).map_err(std::io::Error::other)?;
    let good = std::fs::read(dir.join("small.qvr"))?;
    std::fs::write(dir.join("damaged.qvr"), &good[..good.len() / 2])?;
    Ok(())
}

fn with_prefix(prefix: u8, body: Vec<u8>) -> Vec<u8> {
    let mut v = vec![prefix];
    v.extend(body);
    v
}

fn index_file_seeds(tmp: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, metric, dim, m, bits, refine) in [
        ("l2-8bit-none", Metric::L2, 8, 2, 8, RefineKind::None),
        (
            "ip-4bit-f16",
            Metric::InnerProduct,
            8,
            4,
            4,
            RefineKind::F16,
        ),
        ("cos-8bit-f32", Metric::Cosine, 4, 2, 8, RefineKind::F32),
    ] {
        let path = tmp.join(format!("{name}.qvr"));
        quiver_engine::persist::save(&small_index(metric, dim, m, bits, refine), &path)
            .expect("saving a seed index");
        out.push((
            name.to_string(),
            with_prefix(0, std::fs::read(&path).unwrap()),
        ));
    }
    for (name, metric) in [("flat-l2", Metric::L2), ("flat-cos", Metric::Cosine)] {
        let mut flat = FlatIndex::new(metric, 4);
        let ids: Vec<u64> = (0..40).map(|i| i * 2).collect();
        let payloads: Vec<Vec<u8>> = ids.iter().map(|&i| payload(i)).collect();
        flat.upsert_with_payloads(&vectors(40, 4, 9), &ids, &payloads)
            .expect("a seed flat index");
        let path = tmp.join(format!("{name}.seg"));
        quiver_store::flatfile::save_flat(&flat, &path).expect("saving a seed flat segment");
        out.push((
            name.to_string(),
            with_prefix(1, std::fs::read(&path).unwrap()),
        ));
    }
    out
}

fn vector_file_seeds(tmp: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let x = vectors(6, 3, 1);
    // Prefix bytes: 0 fvecs, 1 ivecs, 2 bvecs, 3 npy (vector_file::EXTENSIONS).
    let p = tmp.join("a.fvecs");
    io::write_f32(&p, 3, ElementType::F32, &x).unwrap();
    out.push((
        "fvecs".to_string(),
        with_prefix(0, std::fs::read(&p).unwrap()),
    ));
    let p = tmp.join("a.ivecs");
    io::write_i32(&p, 4, &[1, 2, 3, 4, -1, 7, 8, 9]).unwrap();
    out.push((
        "ivecs".to_string(),
        with_prefix(1, std::fs::read(&p).unwrap()),
    ));
    let p = tmp.join("a.bvecs");
    let bytes: Vec<f32> = (0..12).map(|i| (i * 20) as f32).collect();
    io::write_f32(&p, 4, ElementType::U8, &bytes).unwrap();
    out.push((
        "bvecs".to_string(),
        with_prefix(2, std::fs::read(&p).unwrap()),
    ));
    for (name, element) in [
        ("npy-f32", ElementType::F32),
        ("npy-f16", ElementType::F16),
        ("npy-u8", ElementType::U8),
        ("npy-i32", ElementType::I32),
    ] {
        let p = tmp.join(format!("{name}.npy"));
        let mut w = VectorWriter::create(&p, 3, element).unwrap();
        if element == ElementType::I32 {
            w.write_i32(&[1, 2, 3, 4, 5, 6]).unwrap();
        } else if element == ElementType::U8 {
            w.write_f32(&[1.0, 2.0, 3.0, 250.0, 0.0, 9.0]).unwrap();
        } else {
            w.write_f32(&x).unwrap();
        }
        w.finish().unwrap();
        out.push((name.to_string(), with_prefix(3, std::fs::read(&p).unwrap())));
    }
    out
}

fn filter_seeds() -> Vec<(String, Vec<u8>)> {
    let rows = (0..8u64)
        .map(|i| String::from_utf8(payload(i)).unwrap())
        .chain([
            r#"{"source": null, "tags": [], "meta": {"lang": "en", "n": [1, 2]}}"#.to_string(),
            r#"{"n": "7", "score": 3, "ok": "true", "tags": [null, "t1"]}"#.to_string(),
            "{}".to_string(),
            "not json".to_string(),
        ])
        .collect::<Vec<_>>()
        .join("\n");
    let filters = [
        (
            "must-match",
            r#"{"must": [{"key": "source", "match": {"value": "torch"}}]}"#,
            "source:keyword",
        ),
        (
            "should-range",
            r#"{"should": [{"key": "source", "match": {"value": "numpy"}}, {"key": "source", "match": {"value": "scipy"}}], "must": [{"key": "n", "range": {"gte": 0, "lt": 100}}]}"#,
            "source:keyword,n:integer",
        ),
        (
            "any-except",
            r#"{"must": [{"key": "tags", "match": {"any": ["t1", "t2"]}}], "must_not": [{"key": "source", "match": {"except": ["torch"]}}]}"#,
            "tags:keyword",
        ),
        (
            "min-should",
            r#"{"min_should": {"min_count": 2, "conditions": [{"key": "ok", "match": {"value": true}}, {"key": "score", "range": {"gt": 2.0}}, {"has_id": [1, 4, 7]}]}}"#,
            "ok:bool,score:float",
        ),
        (
            "empty-null",
            r#"{"must": [{"is_empty": {"key": "tags"}}], "should": [{"is_null": {"key": "source"}}, {"key": "meta.lang", "match": {"value": "en"}}]}"#,
            "meta.lang:keyword",
        ),
        (
            "nested",
            r#"{"must": {"filter": {"should": [{"must_not": [{"key": "n", "range": {"lte": 10}}]}, {"key": "meta.n", "match": {"any": [1, 3]}}]}}}"#,
            "n:float,meta.n:integer",
        ),
        ("empty", "{}", ""),
    ];
    filters
        .iter()
        .map(|(name, f, specs)| {
            (
                name.to_string(),
                format!("{f}\n{specs}\n{rows}").into_bytes(),
            )
        })
        .collect()
}

fn collection_meta(name: &str, dim: usize, metric: &str, refine: &str) -> CollectionMeta {
    CollectionMeta {
        name: name.into(),
        dim,
        metric: metric.into(),
        index: IndexConfig {
            nlist: 4,
            pq_m: 2,
            refine: refine.into(),
            refine_factor: 0,
            seed: 3,
            train_at: 0,
        },
        fields: vec![FieldSpec::parse("source:keyword").unwrap()],
        settings: serde_json::Value::Null,
    }
}

type C = Collection<CpuBackend>;

fn write_points(c: &C, ids: std::ops::Range<u64>, dim: usize) {
    let n = (ids.end - ids.start) as usize;
    let ids: Vec<u64> = ids.collect();
    let payloads = ids.iter().map(|&i| payload(i)).collect();
    c.upsert_with_payloads(ids.clone(), vectors(n, dim, ids[0]), payloads)
        .expect("seed upsert");
}

fn collection_seeds(tmp: &Path) -> Vec<(String, Vec<u8>)> {
    let cfg = collection_files::config(false);
    let mut out = Vec::new();
    let mut push = |name: &str, dir: &Path| {
        out.push((
            name.to_string(),
            with_prefix(0, archive::pack_dir(dir).unwrap()),
        ));
    };
    // Only a log: flat points, payload edits, deletes by id and by filter.
    let dir = tmp.join("log-only");
    let c = C::create(
        &dir,
        collection_meta("a", 4, "l2", "f32"),
        CpuBackend,
        cfg.clone(),
    )
    .unwrap();
    write_points(&c, 0..20, 4);
    c.set_payload(vec![1, 2], PayloadEdit::Merge(br#"{"n": 50}"#.to_vec()))
        .unwrap();
    c.set_payload(vec![3], PayloadEdit::DeleteKeys(vec!["tags".into()]))
        .unwrap();
    c.set_payload(vec![4], PayloadEdit::Clear).unwrap();
    c.delete(vec![5, 6]).unwrap();
    c.delete_filter(r#"{"must": [{"key": "source", "match": {"value": "scipy"}}]}"#)
        .unwrap();
    c.close();
    push("log-only", &dir);
    // A checkpoint, then more log.
    let dir = tmp.join("checkpoint-and-log");
    let c = C::create(
        &dir,
        collection_meta("b", 4, "cosine", "f16"),
        CpuBackend,
        cfg.clone(),
    )
    .unwrap();
    write_points(&c, 0..30, 4);
    c.delete(vec![2]).unwrap();
    c.checkpoint().unwrap();
    write_points(&c, 30..40, 4);
    c.set_payload(
        vec![31],
        PayloadEdit::Replace(br#"{"source": "numpy"}"#.to_vec()),
    )
    .unwrap();
    c.delete(vec![7, 33]).unwrap();
    c.close();
    push("checkpoint-and-log", &dir);
    // Trained: sealed IVF-PQ segments with deletes, a field index, a log on top.
    let dir = tmp.join("trained");
    let c = Arc::new(
        C::create(
            &dir,
            collection_meta("c", 4, "ip", "none"),
            CpuBackend,
            cfg.clone(),
        )
        .unwrap(),
    );
    write_points(&c, 0..300, 4);
    c.start_train(None).unwrap();
    c.wait_job().unwrap();
    c.create_field_index(FieldSpec::parse("n:integer").unwrap())
        .unwrap();
    c.delete(vec![10, 11, 12]).unwrap();
    c.checkpoint().unwrap();
    write_points(&c, 300..330, 4);
    c.delete(vec![305]).unwrap();
    c.close();
    push("trained", &dir);
    out
}

fn grpc_seeds() -> Vec<(String, Vec<u8>)> {
    let name = "fz".to_string();
    let create = proto::CreateCollectionRequest {
        name: name.clone(),
        dim: 4,
        metric: proto::Metric::L2 as i32,
        index: Some(proto::IndexParams {
            nlist: 2,
            pq_m: 2,
            ..Default::default()
        }),
        field_indexes: vec![proto::FieldIndex {
            key: "source".into(),
            r#type: proto::FieldType::Keyword as i32,
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let upsert = |from: u64, n: u64| {
        let ids: Vec<u64> = (from..from + n).collect();
        proto::UpsertRequest {
            collection: name.clone(),
            vectors: vectors(n as usize, 4, from),
            payloads: ids
                .iter()
                .map(|&i| String::from_utf8(payload(i)).unwrap())
                .collect(),
            ids,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let filter = r#"{"must": [{"key": "source", "match": {"value": "torch"}}]}"#.to_string();
    let search = proto::SearchRequest {
        collection: name.clone(),
        vector: vectors(1, 4, 77),
        k: 5,
        filter: filter.clone(),
        with_payload: true,
        ..Default::default()
    }
    .encode_to_vec();
    let batch = proto::SearchBatchRequest {
        collection: name.clone(),
        vectors: vectors(3, 4, 78),
        k: 3,
        filters: vec![
            filter.clone(),
            String::new(),
            r#"{"must": [{"key": "n", "range": {"lt": 10}}]}"#.into(),
        ],
        with_payload: true,
        payload_keys: vec!["n".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let count = proto::CountRequest {
        collection: name.clone(),
        filter: filter.clone(),
    }
    .encode_to_vec();
    let scroll = proto::ScrollRequest {
        collection: name.clone(),
        offset: Some(3),
        limit: 4,
        with_payload: true,
        with_vectors: true,
        ..Default::default()
    }
    .encode_to_vec();
    let get = proto::GetRequest {
        collection: name.clone(),
        ids: vec![1, 2, 99],
        with_vectors: true,
        with_payload: true,
        ..Default::default()
    }
    .encode_to_vec();
    let set_payload = proto::SetPayloadRequest {
        collection: name.clone(),
        ids: vec![1, 2],
        payload: r#"{"source": "numpy", "extra": [1, 2]}"#.into(),
        replace: false,
    }
    .encode_to_vec();
    let delete_payload = proto::DeletePayloadRequest {
        collection: name.clone(),
        ids: vec![2],
        keys: vec!["extra".into()],
    }
    .encode_to_vec();
    let field = proto::CreateFieldIndexRequest {
        collection: name.clone(),
        field: Some(proto::FieldIndex {
            key: "n".into(),
            r#type: proto::FieldType::Integer as i32,
        }),
    }
    .encode_to_vec();
    let unfield = proto::DeleteFieldIndexRequest {
        collection: name.clone(),
        key: "n".into(),
    }
    .encode_to_vec();
    let delete_ids = proto::DeleteRequest {
        collection: name.clone(),
        ids: vec![4, 5],
        filter: String::new(),
        ..Default::default()
    }
    .encode_to_vec();
    let delete_filter = proto::DeleteRequest {
        collection: name.clone(),
        ids: vec![],
        filter: r#"{"must": [{"key": "n", "range": {"gte": 90}}]}"#.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let train = proto::TrainRequest {
        collection: name.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let flush = proto::FlushRequest {
        collection: name.clone(),
        compact: true,
    }
    .encode_to_vec();
    let get_coll = proto::GetCollectionRequest { name: name.clone() }.encode_to_vec();
    let drop = proto::DropCollectionRequest { name: name.clone() }.encode_to_vec();
    let load = proto::LoadIndexRequest {
        collection: "loaded".into(),
        path: "small.qvr".into(),
        background: false,
    }
    .encode_to_vec();
    let load_bad = proto::LoadIndexRequest {
        collection: "bad".into(),
        path: "damaged.qvr".into(),
        background: true,
    }
    .encode_to_vec();
    let search_loaded = proto::SearchRequest {
        collection: "loaded".into(),
        vector: vectors(1, 4, 5),
        k: 4,
        nprobe: 2,
        ..Default::default()
    }
    .encode_to_vec();
    // UpsertStream's body: several framed messages, sent raw (flag 4).
    let mut stream = grpc::frame(&upsert(500, 3));
    stream.extend(grpc::frame(&upsert(503, 2)));

    let rw = 0u8;
    let calls = |list: &[(&str, u8, &Vec<u8>)]| -> Vec<u8> {
        grpc::pack(
            &list
                .iter()
                .map(|(m, f, b)| (*m, *f, (*b).clone()))
                .collect::<Vec<_>>(),
        )
    };
    let empty = Vec::new();
    let up = upsert(0, 40);
    let up2 = upsert(40, 240);
    vec![
        (
            "reads-and-writes".to_string(),
            calls(&[
                ("CreateCollection", rw, &create),
                ("Upsert", rw, &up),
                ("Search", 1, &search),
                ("SearchBatch", 2, &batch),
                ("Count", rw, &count),
                ("Scroll", rw, &scroll),
                ("Get", rw, &get),
                ("SetPayload", rw, &set_payload),
                ("DeletePayload", rw, &delete_payload),
                ("CreateFieldIndex", rw, &field),
                ("Count", rw, &count),
                ("Delete", rw, &delete_ids),
                ("Delete", rw, &delete_filter),
                ("DeleteFieldIndex", rw, &unfield),
                ("GetCollection", rw, &get_coll),
                ("ListCollections", rw, &empty),
                ("DropCollection", rw, &drop),
            ]),
        ),
        (
            "train-and-search".to_string(),
            calls(&[
                ("CreateCollection", rw, &create),
                ("Upsert", rw, &up),
                ("Upsert", rw, &up2),
                ("Train", rw, &train),
                ("Search", rw, &search),
                ("SearchBatch", rw, &batch),
                ("UpsertStream", rw | 4, &stream),
                ("Flush", rw, &flush),
                ("Scroll", rw, &scroll),
                ("GetCollection", rw, &get_coll),
            ]),
        ),
        (
            "imports-and-keys".to_string(),
            calls(&[
                ("LoadIndex", rw, &load),
                ("Search", 1, &search_loaded),
                ("LoadIndex", rw, &load_bad),
                ("CreateCollection", 1, &create),
                ("CreateCollection", 3, &create),
                ("ListCollections", 3, &empty),
                ("GetCollection", 1, &get_coll),
                ("CreateCollection", 8, &create),
                ("LoadIndex", 8, &load),
                ("ListCollections", 8, &empty),
                ("Search", 8, &search_loaded),
                ("DropCollection", 8, &drop),
            ]),
        ),
    ]
}

/// Every target's seeds: `(target, name, input)`.
pub fn all(tmp: &Path) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, data) in index_file_seeds(tmp) {
        out.push(("index_file", name, data));
    }
    for (name, data) in vector_file_seeds(tmp) {
        out.push(("vector_file", name, data));
    }
    for (name, data) in filter_seeds() {
        out.push(("filter", name, data));
    }
    for (name, data) in collection_seeds(tmp) {
        out.push(("collection_files", name, data));
    }
    for (name, data) in grpc_seeds() {
        out.push(("grpc", name, data));
    }
    for (name, data) in crate::qdrant::seeds() {
        out.push(("qdrant", name, data));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use anyhow::Context;

    fn crate_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Rewrites `corpus/` from Quiver's writers (run by hand after a format change).
    #[test]
    #[ignore]
    fn write_seed_corpus() -> anyhow::Result<()> {
        let tmp = std::env::temp_dir().join(format!("quiver-fuzz-seeds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (target, name, data) in super::all(&tmp) {
            let dir = crate_dir().join("corpus").join(target);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(name);
            std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
        }
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))
    }

    /// Every committed seed and every saved finding (`regressions/<target>/`) runs through
    /// its target without a panic: the fuzzers' findings stay fixed.
    #[test]
    fn seeds_and_regressions_replay() -> anyhow::Result<()> {
        let mut ran = 0;
        for (target, run) in crate::TARGETS {
            for folder in ["corpus", "regressions"] {
                let dir = crate_dir().join(folder).join(target);
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut files = Vec::new();
                for e in entries {
                    files.push(
                        e.with_context(|| format!("listing {}", dir.display()))?
                            .path(),
                    );
                }
                files.sort();
                for f in files {
                    let data =
                        std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
                    eprintln!("{target}: {}", f.display());
                    run(&data);
                    ran += 1;
                }
            }
        }
        anyhow::ensure!(ran >= 20, "only {ran} committed inputs found");
        Ok(())
    }
}
