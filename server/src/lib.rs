//! Quiver's gRPC search service (placeholder crate).
//!
//! Will hold the protobuf API, the deadline-aware micro-batcher, collection storage with a
//! write-ahead log, and the admin and metrics endpoints. Empty on purpose until the server issue.
