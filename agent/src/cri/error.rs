//! The CRI server's error type. Each variant maps to the gRPC code a kubelet expects
//! (`NotFound` for unknown ids, `InvalidArgument` naming the field of a bad config).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CriError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("runtime: {0}")]
    Runtime(#[from] hull_runtime::error::Error),
    #[error("image: {0}")]
    Image(#[from] hull_runtime::image::Error),
    #[error("network: {0}")]
    Network(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = CriError> = std::result::Result<T, E>;

impl CriError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CriError {
        let what = what.into();
        move |source| CriError::Io { what, source }
    }
}

impl From<CriError> for tonic::Status {
    fn from(e: CriError) -> Self {
        let msg = e.to_string();
        match e {
            CriError::NotFound(_) => tonic::Status::not_found(msg),
            CriError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            CriError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            CriError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            CriError::Image(hull_runtime::image::Error::NotFound(_)) => {
                tonic::Status::not_found(msg)
            }
            _ => tonic::Status::internal(msg),
        }
    }
}
