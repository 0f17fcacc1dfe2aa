//! Qdrant's API on Quiver: Qdrant's gRPC services (`qdrant.Qdrant`, `qdrant.Collections`,
//! `qdrant.Points`) and its REST API, so that Qdrant's clients (`qdrant-client`, and through
//! it LangChain and LlamaIndex) work against Quiver unchanged. docs/QDRANT.md lists the
//! supported surface; anything outside it is UNIMPLEMENTED (gRPC) or 400 (REST), naming the
//! feature.
//!
//! - [`ids`]: Qdrant's point ids (integers and UUIDs) on Quiver's;
//! - [`values`]: JSON values in gRPC form;
//! - [`filter`]: Qdrant filters onto Quiver's;
//! - [`vectors`]: a collection's vectors by name (dense, sparse) and a point's;
//! - [`fusion`]: fusing rankings (the Query API's RRF and DBSF);
//! - [`api`]: the operations, shared by both front ends;
//! - [`grpc`], [`rest`]: the front ends.

pub mod api;
pub mod filter;
pub mod fusion;
pub mod grpc;
pub mod ids;
pub mod rest;
pub mod values;
pub mod vectors;

pub mod proto {
    //! Generated protobuf and gRPC code for the supported part of Qdrant's API (`qdrant`).
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("qdrant");
}

/// The Qdrant API version Quiver answers as (its wire contract).
pub const API_VERSION: &str = "1.19.0";

/// UNIMPLEMENTED naming a feature outside the supported surface.
pub fn unsupported(what: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!(
        "{what} is not supported by Quiver's Qdrant API (see docs/QDRANT.md)"
    ))
}
