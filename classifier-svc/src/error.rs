//! The one error type of classifier-svc. Mapping to gRPC status happens at the edge (service.rs).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something we cannot serve (empty text, unknown task, too many texts...).
    #[error("{0}")]
    InvalidArgument(String),
    /// Admission control refused the request: the server is at its concurrency limit.
    #[error("server overloaded: {in_flight} texts in flight, limit {limit}; retry later or add replicas")]
    Overloaded { in_flight: usize, limit: usize },
    /// The request's deadline passed before it could be served.
    #[error("deadline exceeded after {0:?} in queue; the request was dropped before inference")]
    DeadlineExceeded(Duration),
    /// A model or task is not loaded (yet).
    #[error("{0}")]
    Unavailable(String),
    /// A model directory or hub repo could not be loaded; says which file and why.
    #[error("cannot load model {model}: {reason}")]
    ModelLoad { model: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("inference failed: {0}")]
    Inference(#[from] candle_core::Error),
    #[error("internal: {0}")]
    Internal(String),
}

/// The encoder's errors keep their meaning (a bad argument stays INVALID_ARGUMENT at the edge).
impl From<semroute_encoder::error::Error> for Error {
    fn from(e: semroute_encoder::error::Error) -> Self {
        use semroute_encoder::error::Error as E;
        match e {
            E::InvalidArgument(m) => Error::InvalidArgument(m),
            E::ModelLoad { model, reason } => Error::ModelLoad { model, reason },
            E::Tokenizer(m) => Error::Tokenizer(m),
            E::Inference(e) => Error::Inference(e),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
