//! The one place engine and storage errors become gRPC statuses.

use quiver_engine::EngineError;
use tonic::{Code, Status};

/// Maps an engine error to the status a client should see.
pub fn from_engine(e: EngineError) -> Status {
    let code = match &e {
        EngineError::DimensionMismatch { .. }
        | EngineError::NonFinite { .. }
        | EngineError::ZeroVector { .. }
        | EngineError::InvalidParameter { .. }
        | EngineError::KOutOfRange { .. }
        | EngineError::NprobeOutOfRange { .. }
        | EngineError::PqDoesNotDivide { .. }
        | EngineError::IdCountMismatch { .. }
        | EngineError::InvalidId { .. }
        | EngineError::DuplicateId { .. }
        | EngineError::RefineUnavailable { .. } => Code::InvalidArgument,
        EngineError::TooFewTrainingVectors { .. } => Code::FailedPrecondition,
        EngineError::BackendUnavailable { .. } => Code::Unavailable,
        EngineError::Cancelled { .. } => Code::Aborted,
        EngineError::Io(_)
        | EngineError::BackendFailed { .. }
        | EngineError::CorruptIndex { .. }
        | EngineError::ChecksumMismatch { .. }
        | EngineError::UnsupportedVersion { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// Maps an error reading a file a client named (LoadIndex): the client's mistake, not ours.
pub fn from_client_file(e: EngineError) -> Status {
    match e {
        EngineError::Io(io) => Status::invalid_argument(io.to_string()),
        e @ (EngineError::CorruptIndex { .. }
        | EngineError::ChecksumMismatch { .. }
        | EngineError::UnsupportedVersion { .. }) => Status::invalid_argument(e.to_string()),
        e => from_engine(e),
    }
}

/// An internal I/O failure (WAL, snapshot).
pub fn from_io(context: &str, e: std::io::Error) -> Status {
    Status::internal(format!("{context}: {e}"))
}

/// INVALID_ARGUMENT naming the field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Maps a store error to the status a client should see.
pub fn from_store(e: quiver_store::StoreError) -> Status {
    use quiver_store::StoreError as S;
    match e {
        S::Engine(e) => from_engine(e),
        e @ S::Invalid { .. } => Status::invalid_argument(e.to_string()),
        S::Precondition(m) => Status::failed_precondition(m),
        e @ (S::WalFailed { .. } | S::WritesStopped(_)) => Status::unavailable(e.to_string()),
        e @ S::Corrupt { .. } => Status::data_loss(e.to_string()),
        e @ (S::Io { .. } | S::Failed(_)) => Status::internal(e.to_string()),
        e @ S::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
    }
}
