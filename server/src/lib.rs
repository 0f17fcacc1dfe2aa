//! Quiver's gRPC search service: a thin front over the store layer (`quiver_store`: segments,
//! write-ahead log, checkpoints) for collections under a data directory, and a per-collection
//! micro-batcher that gathers concurrent searches into
//! batches for the engine's backend.
//!
//! The service never panics on client input: every request is validated against the
//! configured limits and engine errors are mapped once to gRPC status codes ([`status`]).
#![warn(missing_docs)]

pub mod proto {
    //! Generated protobuf and gRPC code for `quiver.v1`.
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("quiver.v1");

    /// The encoded file descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quiver_descriptor");
}

pub mod admission;
pub mod auth;
pub mod backend;
pub mod batcher;
pub mod cluster;
pub mod collection;
pub mod config;
pub mod imports;
pub mod metrics;
pub mod payloads;
pub mod qdrant;
pub mod ratelimit;
pub mod registry;
pub mod request_id;
pub mod requests;
pub mod server;
pub mod service;
pub mod signals;
pub mod status;
pub mod tls;
pub mod unknown_method;
pub mod writes;
