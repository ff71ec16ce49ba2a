//! The one error type of the encoder library: loading a model, tokenizing, running it. The server
//! and the trainer map it onto their own errors (gRPC status, exit message) at their edges.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something the model cannot do (empty text, unknown task, bad shape...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A model directory or hub repo could not be loaded; says which file and why.
    #[error("cannot load model {model}: {reason}")]
    ModelLoad { model: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("inference failed: {0}")]
    Inference(#[from] candle_core::Error),
}

impl Error {
    pub fn load(model: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::ModelLoad {
            model: model.into(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
