//! Requests one node sends another about a shard replica it holds, over NATS
//! request/reply: every node answers on `quiver.rpc.<node id>`. Bodies are JSON ([`ShardRequest`]
//! and [`ShardResponse`]); results carry only real neighbours (no padding), so every float is
//! finite. A request names the collection's incarnation, so a replica of a collection dropped
//! and created again under the same name never answers for the other one.

use std::time::Duration;

use quiver_store::IndexConfig;
use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, Result};

/// The subject node `node` answers on.
pub fn subject(node: &str) -> String {
    format!("quiver.rpc.{node}")
}

/// Which replica a request is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRef {
    /// The collection.
    pub collection: String,
    /// Its incarnation.
    pub incarnation: u64,
    /// The shard.
    pub shard: u32,
    /// The replica must have applied this op of the shard's log first (read-your-writes);
    /// it waits for it up to the request's deadline.
    #[serde(default)]
    pub min_seq: u64,
    /// How long the replica may wait for `min_seq`, in milliseconds (the caller's deadline).
    #[serde(default)]
    pub wait_ms: u64,
    /// The caller's request this is part of ([`crate::request_id`]; empty: none), for logs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

/// A request to a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardRequest {
    /// Nearest neighbours of `nq` queries.
    Search {
        /// The replica.
        shard: ShardRef,
        /// Row-major queries.
        queries: Vec<f32>,
        /// Number of queries.
        nq: usize,
        /// Neighbours per query.
        k: usize,
        /// Lists probed (0: the collection's default).
        nprobe: usize,
        /// Refine factor (0: the collection's default).
        refine_factor: usize,
        /// Only points passing this filter (its JSON text).
        filter: Option<String>,
    },
    /// Stored points by id.
    Get {
        /// The replica.
        shard: ShardRef,
        /// Ids (of this shard).
        ids: Vec<u64>,
    },
    /// Live points passing a filter (all without one).
    Count {
        /// The replica.
        shard: ShardRef,
        /// The filter's JSON text.
        filter: Option<String>,
    },
    /// Up to `limit` live points passing a filter, by ascending id from `from`.
    Scroll {
        /// The replica.
        shard: ShardRef,
        /// The filter's JSON text.
        filter: Option<String>,
        /// The first id.
        from: u64,
        /// Points at most.
        limit: usize,
        /// Answer the stored vectors too.
        with_vectors: bool,
    },
    /// What the replica holds: its points, whether it is trained and with what.
    Describe {
        /// The replica.
        shard: ShardRef,
    },
    /// How far the replica has applied its log (answered while it catches up too): a log is
    /// trimmed only below what every replica that answers has applied.
    Progress {
        /// The replica.
        shard: ShardRef,
    },
    /// Train quantizers on the replica's points and log the switch to them (the replica's
    /// node leads that shard's training while it holds the shard's training lease).
    Train {
        /// The replica.
        shard: ShardRef,
        /// Overrides of the collection's index parameters (zeros: chosen at training).
        index: Option<IndexConfig>,
    },
}

impl ShardRequest {
    /// The replica it is for.
    pub fn shard(&self) -> &ShardRef {
        match self {
            ShardRequest::Search { shard, .. }
            | ShardRequest::Get { shard, .. }
            | ShardRequest::Count { shard, .. }
            | ShardRequest::Scroll { shard, .. }
            | ShardRequest::Describe { shard }
            | ShardRequest::Progress { shard }
            | ShardRequest::Train { shard, .. } => shard,
        }
    }

    /// What it asks, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ShardRequest::Search { .. } => "search",
            ShardRequest::Get { .. } => "get",
            ShardRequest::Count { .. } => "count",
            ShardRequest::Scroll { .. } => "scroll",
            ShardRequest::Describe { .. } => "describe",
            ShardRequest::Progress { .. } => "progress",
            ShardRequest::Train { .. } => "train",
        }
    }

    /// The replica it is for, to change.
    pub fn shard_mut(&mut self) -> &mut ShardRef {
        match self {
            ShardRequest::Search { shard, .. }
            | ShardRequest::Get { shard, .. }
            | ShardRequest::Count { shard, .. }
            | ShardRequest::Scroll { shard, .. }
            | ShardRequest::Describe { shard }
            | ShardRequest::Progress { shard }
            | ShardRequest::Train { shard, .. } => shard,
        }
    }
}

/// A stored point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Its id.
    pub id: u64,
    /// Its stored vector.
    pub vector: Vec<f32>,
    /// Its stored payload bytes (empty: none).
    pub payload: Vec<u8>,
}

/// What a replica holds ([`ShardRequest::Describe`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardState {
    /// Live points.
    pub count: u64,
    /// Trained (searched through IVF-PQ; otherwise exhaustively).
    pub trained: bool,
    /// Its index parameters (those chosen at training once trained).
    pub index: IndexConfig,
    /// Sealed segments plus the appendable one.
    pub segments: u32,
    /// Bytes held by vectors, codes and centroids.
    pub memory_bytes: u64,
    /// Coarse drift since training (0 until known).
    pub drift: f64,
    /// The number of the last op applied.
    pub applied: u64,
}

/// A replica's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardResponse {
    /// Per query, its neighbours best first as (id, distance).
    Neighbors(Vec<Vec<(u64, f32)>>),
    /// The points found.
    Points(Vec<Point>),
    /// A count.
    Count(u64),
    /// What the replica holds.
    Described(ShardState),
    /// The number of the last op the replica has applied.
    Progress(u64),
    /// The training's switch was logged as this op of the shard's log.
    Trained(u64),
    /// The request cannot be done in the collection's present state (too few points to
    /// train, a training under way): no replica would do it now.
    Precondition(String),
    /// The replica could not answer; another may.
    Failed(String),
    /// The replica is not there yet (its node has not read the collection's creation) or is
    /// catching up after a start: asked again shortly, it may answer.
    NotReady(String),
    /// The request is not valid (a bad filter or parameter, too large): no replica would
    /// answer it.
    Refused(String),
}

/// Sends `request` to node `node` and waits up to `timeout` for its answer.
pub async fn call(
    client: &async_nats::Client,
    node: &str,
    request: &ShardRequest,
    timeout: Duration,
) -> Result<ShardResponse> {
    let body = serde_json::to_vec(request).map_err(|e| ClusterError::broker("encoding", e))?;
    let limit = client.server_info().max_payload;
    if limit > 0 && body.len() > limit {
        return Err(ClusterError::TooLarge {
            bytes: body.len(),
            limit,
        });
    }
    let req = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject(node), req)
        .await
        .map_err(|e| ClusterError::broker("asking a replica", format!("node {node}: {e}")))?;
    serde_json::from_slice(&reply.payload)
        .map_err(|e| ClusterError::broker("asking a replica", format!("node {node} answered: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_exactly() {
        let r = ShardRequest::Search {
            shard: ShardRef {
                collection: "docs".into(),
                incarnation: 3,
                shard: 1,
                min_seq: 9,
                wait_ms: 100,
                request_id: "r-7".into(),
            },
            queries: vec![0.1, f32::MIN_POSITIVE, -3.5e-12, f32::MAX],
            nq: 1,
            k: 10,
            nprobe: 0,
            refine_factor: 0,
            filter: Some(r#"{"must":[]}"#.into()),
        };
        let back: ShardRequest = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        let ShardRequest::Search { queries, .. } = &back else {
            panic!("a search")
        };
        assert_eq!(
            queries.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            [0.1f32, f32::MIN_POSITIVE, -3.5e-12, f32::MAX].map(f32::to_bits)
        );
        assert_eq!(back.shard().min_seq, 9);
        let a = ShardResponse::Neighbors(vec![vec![(7, 0.25), (u64::MAX >> 2, 1e-30)]]);
        let back: ShardResponse = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        let ShardResponse::Neighbors(n) = back else {
            panic!("neighbours")
        };
        assert_eq!(n, vec![vec![(7, 0.25), (u64::MAX >> 2, 1e-30)]]);
    }
}
