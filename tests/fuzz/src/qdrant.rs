//! Target `qdrant`: Qdrant's API on Quiver — every method of its gRPC services
//! (`qdrant.Qdrant`, `qdrant.Collections`, `qdrant.Points`, through the API-key layer and
//! tonic's decoding) and every route of its REST API (through axum's router and body limit),
//! fed request bodies of arbitrary content. The input is a sequence of calls laid out as the
//! `grpc` target's (`[op: u8][flags: u8][length: u16 LE][bytes]`): `op` indexes [`OPS`];
//! flags bits 0–1 and 3 pick the credentials, bit 2 sends a gRPC body raw (framing included). A REST
//! call sends `bytes` as its JSON body; the [`Op::RestRaw`] call takes its method and path from
//! `bytes` too (`METHOD PATH\n` then the body), so the router meets arbitrary paths and query
//! strings. It runs on the `grpc` target's server (same keys and limits); collections an input
//! made are dropped after it.

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::Full;
use quiver_server::qdrant::grpc::QdrantGrpc;
use quiver_server::qdrant::proto::{
    collections_server::CollectionsServer, points_server::PointsServer, qdrant_server::QdrantServer,
};
use quiver_server::qdrant::rest::{PeerAddr, Rest};
use tonic::service::Routes;
use tower::Layer;

use crate::grpc::{call, grpc_request, reset, server, with_key, Call};

/// One call's kind.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// A gRPC method, by path.
    Grpc(&'static str),
    /// A REST route: method and path (on the collection `fz`).
    Rest(&'static str, &'static str),
    /// A REST call whose method and path lead the bytes.
    RestRaw,
}

/// The calls, by the index an input names them with.
pub const OPS: &[Op] = &[
    Op::Grpc("/qdrant.Qdrant/HealthCheck"),
    Op::Grpc("/qdrant.Collections/Get"),
    Op::Grpc("/qdrant.Collections/List"),
    Op::Grpc("/qdrant.Collections/Create"),
    Op::Grpc("/qdrant.Collections/Update"),
    Op::Grpc("/qdrant.Collections/Delete"),
    Op::Grpc("/qdrant.Collections/CollectionExists"),
    Op::Grpc("/qdrant.Points/Upsert"),
    Op::Grpc("/qdrant.Points/Delete"),
    Op::Grpc("/qdrant.Points/Get"),
    Op::Grpc("/qdrant.Points/SetPayload"),
    Op::Grpc("/qdrant.Points/OverwritePayload"),
    Op::Grpc("/qdrant.Points/DeletePayload"),
    Op::Grpc("/qdrant.Points/ClearPayload"),
    Op::Grpc("/qdrant.Points/CreateFieldIndex"),
    Op::Grpc("/qdrant.Points/DeleteFieldIndex"),
    Op::Grpc("/qdrant.Points/Search"),
    Op::Grpc("/qdrant.Points/SearchBatch"),
    Op::Grpc("/qdrant.Points/Scroll"),
    Op::Grpc("/qdrant.Points/Count"),
    Op::Grpc("/qdrant.Points/Query"),
    Op::Grpc("/qdrant.Points/QueryBatch"),
    Op::Rest("GET", "/"),
    Op::Rest("GET", "/healthz"),
    Op::Rest("GET", "/collections"),
    Op::Rest("GET", "/collections/fz"),
    Op::Rest("PUT", "/collections/fz"),
    Op::Rest("PATCH", "/collections/fz"),
    Op::Rest("DELETE", "/collections/fz"),
    Op::Rest("GET", "/collections/fz/exists"),
    Op::Rest("PUT", "/collections/fz/points"),
    Op::Rest("POST", "/collections/fz/points"),
    Op::Rest("GET", "/collections/fz/points/7"),
    Op::Rest(
        "GET",
        "/collections/fz/points/5c56c793-69f3-4fbf-87e6-c4bf54c28c26",
    ),
    Op::Rest("POST", "/collections/fz/points/delete"),
    Op::Rest("POST", "/collections/fz/points/payload"),
    Op::Rest("PUT", "/collections/fz/points/payload"),
    Op::Rest("POST", "/collections/fz/points/payload/delete"),
    Op::Rest("POST", "/collections/fz/points/payload/clear"),
    Op::Rest("PUT", "/collections/fz/index"),
    Op::Rest("DELETE", "/collections/fz/index/city"),
    Op::Rest("POST", "/collections/fz/points/search"),
    Op::Rest("POST", "/collections/fz/points/search/batch"),
    Op::Rest("POST", "/collections/fz/points/query"),
    Op::Rest("POST", "/collections/fz/points/query/batch"),
    Op::Rest("POST", "/collections/fz/points/scroll"),
    Op::Rest("POST", "/collections/fz/points/count"),
    Op::RestRaw,
];

/// The index of `op` in [`OPS`] (for seeds).
pub fn op_index(op: &Op) -> u8 {
    let same = |a: &Op| match (a, op) {
        (Op::Grpc(x), Op::Grpc(y)) => x == y,
        (Op::Rest(m, p), Op::Rest(n, q)) => m == n && p == q,
        (Op::RestRaw, Op::RestRaw) => true,
        _ => false,
    };
    OPS.iter()
        .position(same)
        .unwrap_or_else(|| panic!("{op:?} is not in OPS")) as u8
}

/// Qdrant's gRPC services and REST router over the shared server.
struct Front {
    grpc: Routes,
    rest: axum::Router,
}

fn front() -> &'static Front {
    static FRONT: OnceLock<Front> = OnceLock::new();
    FRONT.get_or_init(|| {
        let s = server();
        let svc = QdrantGrpc::new(s.registry.clone());
        let grpc = Routes::new(QdrantServer::new(svc.clone()))
            .add_service(
                CollectionsServer::new(svc.clone())
                    .max_decoding_message_size(s.limit)
                    .max_encoding_message_size(s.limit),
            )
            .add_service(
                PointsServer::new(svc)
                    .max_decoding_message_size(s.limit)
                    .max_encoding_message_size(s.limit),
            )
            .prepare();
        let keys = std::sync::Arc::new(s.registry.config().api_keys.clone());
        let rest = Rest::new(s.registry.clone(), keys).router();
        Front { grpc, rest }
    })
}

/// A REST request: `method path` with `body`, the credentials of `flags`, from a fixed peer.
fn rest_request(
    method: &str,
    path: &str,
    flags: u8,
    body: &[u8],
) -> Option<http::Request<tonic::body::Body>> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    let mut req = with_key(req, flags)
        .body(tonic::body::Body::new(Full::new(Bytes::copy_from_slice(
            body,
        ))))
        .ok()?;
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(PeerAddr(peer)));
    Some(req)
}

/// Splits a raw REST call's bytes into method, path and body (`None`: not a request line).
fn raw_parts(bytes: &[u8]) -> Option<(&str, &str, &[u8])> {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let line = std::str::from_utf8(&bytes[..end]).ok()?;
    let (method, path) = line.split_once(' ')?;
    Some((method, path, bytes.get(end + 1..).unwrap_or(&[])))
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let s = server();
    let f = front();
    s.runtime.block_on(async {
        for Call {
            method,
            flags,
            bytes,
        } in crate::grpc::parse(data)
        {
            let op = OPS[method as usize % OPS.len()];
            match op {
                Op::Grpc(path) => {
                    let req = grpc_request(path, flags, bytes);
                    call(path, s.layer.layer(f.grpc.clone()), req).await;
                }
                Op::Rest(m, path) => {
                    if let Some(req) = rest_request(m, path, flags, bytes) {
                        call(path, f.rest.clone(), req).await;
                    }
                }
                Op::RestRaw => {
                    // Not a request line, or one http refuses (bad method or URI): nothing to send.
                    let Some((m, path, body)) = raw_parts(bytes) else {
                        continue;
                    };
                    if let Some(req) = rest_request(m, path, flags, body) {
                        call("raw", f.rest.clone(), req).await;
                    }
                }
            }
        }
        reset(s).await;
    });
}

/// Encodes calls as an input (for seeds): `(op, flags, bytes)`.
pub fn pack(calls: &[(Op, u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (op, flags, bytes) in calls {
        out.extend_from_slice(&[op_index(op), *flags]);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The seeds: a session through each front end, as qdrant-client would send it.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use prost::Message;
    use quiver_server::qdrant::proto as q;
    use std::collections::HashMap;

    let name = "fz".to_string();
    let int = |i: i64| q::Value {
        kind: Some(q::value::Kind::IntegerValue(i)),
    };
    let text = |s: &str| q::Value {
        kind: Some(q::value::Kind::StringValue(s.into())),
    };
    let strukt = |fields: Vec<(&str, q::Value)>| q::Value {
        kind: Some(q::value::Kind::StructValue(q::Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        })),
    };
    let num = |n: u64| q::PointId {
        point_id_options: Some(q::point_id::PointIdOptions::Num(n)),
    };
    let uuid = |u: &str| q::PointId {
        point_id_options: Some(q::point_id::PointIdOptions::Uuid(u.into())),
    };
    let dense = |v: Vec<f32>| q::Vectors {
        vectors_options: Some(q::vectors::VectorsOptions::Vector(q::Vector {
            vector: Some(q::vector::Vector::Dense(q::DenseVector { data: v })),
            ..Default::default()
        })),
    };
    let keyword = |key: &str, word: &str| q::Condition {
        condition_one_of: Some(q::condition::ConditionOneOf::Field(q::FieldCondition {
            key: key.into(),
            r#match: Some(q::Match {
                match_value: Some(q::r#match::MatchValue::Keyword(word.into())),
            }),
            ..Default::default()
        })),
    };
    let range = q::Condition {
        condition_one_of: Some(q::condition::ConditionOneOf::Field(q::FieldCondition {
            key: "n".into(),
            range: Some(q::Range {
                gte: Some(10.0),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let filter = q::Filter {
        must: vec![keyword("city", "Paris")],
        must_not: vec![range.clone()],
        ..Default::default()
    };
    let with_payload = Some(q::WithPayloadSelector {
        selector_options: Some(q::with_payload_selector::SelectorOptions::Enable(true)),
    });
    let ids = |v: Vec<q::PointId>| {
        Some(q::PointsSelector {
            points_selector_one_of: Some(q::points_selector::PointsSelectorOneOf::Points(
                q::PointsIdsList { ids: v },
            )),
        })
    };

    let create = q::CreateCollection {
        collection_name: name.clone(),
        vectors_config: Some(q::VectorsConfig {
            config: Some(q::vectors_config::Config::Params(q::VectorParams {
                size: 4,
                distance: q::Distance::Cosine as i32,
                ..Default::default()
            })),
        }),
        hnsw_config: Some(q::HnswConfigDiff {
            m: Some(16),
            ..Default::default()
        }),
        metadata: HashMap::from([(
            "quiver".to_string(),
            strukt(vec![
                ("nlist", int(2)),
                ("pq_m", int(2)),
                ("train_at", int(60)),
            ]),
        )]),
        ..Default::default()
    }
    .encode_to_vec();
    let points: Vec<q::PointStruct> = (0..80u64)
        .map(|i| q::PointStruct {
            id: Some(if i % 9 == 0 {
                uuid(&format!("5c56c793-69f3-4fbf-87e6-{i:012x}"))
            } else {
                num(i)
            }),
            payload: HashMap::from([
                (
                    "city".to_string(),
                    text(["Paris", "Oslo", "Lima"][i as usize % 3]),
                ),
                ("n".to_string(), int(i as i64)),
            ]),
            vectors: Some(dense(crate::seeds::vectors(1, 4, i))),
        })
        .collect();
    let upsert = q::UpsertPoints {
        collection_name: name.clone(),
        wait: Some(true),
        points,
        ..Default::default()
    }
    .encode_to_vec();
    let search = q::SearchPoints {
        collection_name: name.clone(),
        vector: crate::seeds::vectors(1, 4, 99),
        filter: Some(filter.clone()),
        limit: 5,
        with_payload: with_payload.clone(),
        params: Some(q::SearchParams {
            hnsw_ef: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    };
    let search_batch = q::SearchBatchPoints {
        collection_name: name.clone(),
        search_points: vec![search.clone(), search.clone()],
        ..Default::default()
    }
    .encode_to_vec();
    let query = q::QueryPoints {
        collection_name: name.clone(),
        query: Some(q::Query {
            variant: Some(q::query::Variant::Nearest(q::VectorInput {
                variant: Some(q::vector_input::Variant::Dense(q::DenseVector {
                    data: crate::seeds::vectors(1, 4, 7),
                })),
            })),
        }),
        filter: Some(filter.clone()),
        limit: Some(4),
        offset: Some(1),
        with_payload: with_payload.clone(),
        with_vectors: Some(q::WithVectorsSelector {
            selector_options: Some(q::with_vectors_selector::SelectorOptions::Enable(true)),
        }),
        ..Default::default()
    };
    let by_id = q::QueryPoints {
        query: Some(q::Query {
            variant: Some(q::query::Variant::Nearest(q::VectorInput {
                variant: Some(q::vector_input::Variant::Id(num(3))),
            })),
        }),
        ..query.clone()
    };
    let query_batch = q::QueryBatchPoints {
        collection_name: name.clone(),
        query_points: vec![query.clone(), by_id],
        ..Default::default()
    }
    .encode_to_vec();
    let get = q::GetPoints {
        collection_name: name.clone(),
        ids: vec![num(1), num(2), uuid("5c56c793-69f3-4fbf-87e6-000000000009")],
        with_payload: with_payload.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let scroll = q::ScrollPoints {
        collection_name: name.clone(),
        filter: Some(q::Filter {
            should: vec![keyword("city", "Oslo"), keyword("city", "Lima")],
            ..Default::default()
        }),
        offset: Some(num(5)),
        limit: Some(7),
        with_payload: with_payload.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let count = q::CountPoints {
        collection_name: name.clone(),
        filter: Some(filter.clone()),
        exact: Some(true),
        ..Default::default()
    }
    .encode_to_vec();
    let set_payload = q::SetPayloadPoints {
        collection_name: name.clone(),
        payload: HashMap::from([("tag".to_string(), text("x"))]),
        points_selector: ids(vec![num(1), num(2)]),
        ..Default::default()
    }
    .encode_to_vec();
    let delete_payload = q::DeletePayloadPoints {
        collection_name: name.clone(),
        keys: vec!["tag".into()],
        points_selector: Some(q::PointsSelector {
            points_selector_one_of: Some(q::points_selector::PointsSelectorOneOf::Filter(
                filter.clone(),
            )),
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let clear = q::ClearPayloadPoints {
        collection_name: name.clone(),
        points: ids(vec![num(4)]),
        ..Default::default()
    }
    .encode_to_vec();
    let field = q::CreateFieldIndexCollection {
        collection_name: name.clone(),
        field_name: "city".into(),
        field_type: Some(q::FieldType::Keyword as i32),
        ..Default::default()
    }
    .encode_to_vec();
    let unfield = q::DeleteFieldIndexCollection {
        collection_name: name.clone(),
        field_name: "city".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let delete = q::DeletePoints {
        collection_name: name.clone(),
        points: ids(vec![num(5), uuid("5c56c793-69f3-4fbf-87e6-000000000012")]),
        ..Default::default()
    }
    .encode_to_vec();
    let update = q::UpdateCollection {
        collection_name: name.clone(),
        optimizers_config: Some(q::OptimizersConfigDiff {
            indexing_threshold: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let info = q::GetCollectionInfoRequest {
        collection_name: name.clone(),
    }
    .encode_to_vec();
    let exists = q::CollectionExistsRequest {
        collection_name: name.clone(),
    }
    .encode_to_vec();
    let drop = q::DeleteCollection {
        collection_name: name.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let none = Vec::new();
    let g = Op::Grpc;
    let grpc = pack(&[
        (g("/qdrant.Qdrant/HealthCheck"), 3, none.clone()),
        (g("/qdrant.Collections/Create"), 0, create),
        (g("/qdrant.Points/Upsert"), 0, upsert),
        (g("/qdrant.Points/Search"), 1, search.encode_to_vec()),
        (g("/qdrant.Points/SearchBatch"), 2, search_batch),
        (g("/qdrant.Points/Query"), 1, query.encode_to_vec()),
        (g("/qdrant.Points/QueryBatch"), 0, query_batch),
        (g("/qdrant.Points/Get"), 0, get),
        (g("/qdrant.Points/Scroll"), 0, scroll),
        (g("/qdrant.Points/Count"), 0, count),
        (g("/qdrant.Points/SetPayload"), 0, set_payload.clone()),
        (g("/qdrant.Points/OverwritePayload"), 0, set_payload),
        (g("/qdrant.Points/DeletePayload"), 0, delete_payload),
        (g("/qdrant.Points/ClearPayload"), 0, clear),
        (g("/qdrant.Points/CreateFieldIndex"), 0, field),
        (g("/qdrant.Points/DeleteFieldIndex"), 0, unfield),
        (g("/qdrant.Points/Delete"), 0, delete),
        (g("/qdrant.Collections/Update"), 0, update),
        (g("/qdrant.Collections/Get"), 1, info),
        (g("/qdrant.Collections/CollectionExists"), 1, exists),
        (g("/qdrant.Collections/List"), 8, none.clone()),
        (g("/qdrant.Collections/Delete"), 8, drop),
    ]);

    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let r = Op::Rest;
    let points: Vec<serde_json::Value> = (0..80u64)
        .map(|i| {
            let id = if i % 9 == 0 {
                serde_json::json!(format!("5c56c793-69f3-4fbf-87e6-{i:012x}"))
            } else {
                serde_json::json!(i)
            };
            let city = ["Paris", "Oslo", "Lima"][i as usize % 3];
            serde_json::json!({
                "id": id,
                "vector": crate::seeds::vectors(1, 4, i),
                "payload": {"city": city, "n": i},
            })
        })
        .collect();
    let filter = serde_json::json!({
        "must": [{"key": "city", "match": {"value": "Paris"}}],
        "must_not": [{"key": "n", "range": {"gte": 10}}],
        "should": [{"has_id": [1, 2, 3]}],
    });
    let query = serde_json::json!({
        "query": crate::seeds::vectors(1, 4, 7),
        "filter": filter,
        "limit": 4,
        "with_payload": true,
        "params": {"hnsw_ef": 2, "quantization": {"oversampling": 2.0}},
    });
    let rest = pack(&[
        (r("GET", "/"), 3, none.clone()),
        (
            r("PUT", "/collections/fz"),
            0,
            json(serde_json::json!({
                "vectors": {"size": 4, "distance": "Dot"},
                "optimizers_config": {"indexing_threshold": 1},
                "metadata": {"quiver": {"nlist": 2, "pq_m": 2, "train_at": 60}},
            })),
        ),
        (
            r("PUT", "/collections/fz/points"),
            0,
            json(serde_json::json!({ "points": points })),
        ),
        (
            r("POST", "/collections/fz/points/query"),
            1,
            json(query.clone()),
        ),
        (
            r("POST", "/collections/fz/points/query/batch"),
            2,
            json(serde_json::json!({ "searches": [query.clone(), {"query": 3, "limit": 2}] })),
        ),
        (
            r("POST", "/collections/fz/points/search"),
            1,
            json(
                serde_json::json!({"vector": crate::seeds::vectors(1, 4, 8), "limit": 3, "offset": 1, "score_threshold": -1.0}),
            ),
        ),
        (
            r("POST", "/collections/fz/points/search/batch"),
            1,
            json(
                serde_json::json!({"searches": [{"vector": crate::seeds::vectors(1, 4, 8), "limit": 3, "filter": filter}]}),
            ),
        ),
        (
            r("POST", "/collections/fz/points"),
            1,
            json(
                serde_json::json!({"ids": [1, "5c56c793-69f3-4fbf-87e6-000000000009"], "with_vector": true}),
            ),
        ),
        (r("GET", "/collections/fz/points/7"), 1, none.clone()),
        (
            r("POST", "/collections/fz/points/scroll"),
            1,
            json(
                serde_json::json!({"filter": filter, "limit": 5, "offset": 2, "with_payload": ["city"]}),
            ),
        ),
        (
            r("POST", "/collections/fz/points/count"),
            1,
            json(serde_json::json!({"filter": filter, "exact": true})),
        ),
        (
            r("POST", "/collections/fz/points/payload"),
            0,
            json(serde_json::json!({"payload": {"tag": [1, 2]}, "points": [1, 2]})),
        ),
        (
            r("PUT", "/collections/fz/points/payload"),
            0,
            json(serde_json::json!({"payload": {"tag": "y"}, "filter": filter})),
        ),
        (
            r("POST", "/collections/fz/points/payload/delete"),
            0,
            json(serde_json::json!({"keys": ["tag"], "points": [2]})),
        ),
        (
            r("POST", "/collections/fz/points/payload/clear"),
            0,
            json(serde_json::json!({"points": [4]})),
        ),
        (
            r("PUT", "/collections/fz/index"),
            0,
            json(serde_json::json!({"field_name": "city", "field_schema": "keyword"})),
        ),
        (r("DELETE", "/collections/fz/index/city"), 0, none.clone()),
        (
            r("POST", "/collections/fz/points/delete"),
            0,
            json(serde_json::json!({"filter": {"must": [{"key": "n", "range": {"lt": 3}}]}})),
        ),
        (
            r("PATCH", "/collections/fz"),
            0,
            json(
                serde_json::json!({"optimizers_config": {"indexing_threshold": 0}, "metadata": {"team": "a"}}),
            ),
        ),
        (r("GET", "/collections/fz"), 1, none.clone()),
        (r("GET", "/collections/fz/exists"), 1, none.clone()),
        (r("GET", "/collections"), 3, none.clone()),
        (r("GET", "/collections"), 8, none.clone()),
        (
            Op::RestRaw,
            0,
            b"POST /collections/fz/points/count?wait=true&timeout=3\n{\"exact\": false}".to_vec(),
        ),
        (r("DELETE", "/collections/fz"), 0, none.clone()),
    ]);
    vec![
        ("grpc-session".to_string(), grpc),
        ("rest-session".to_string(), rest),
    ]
}
