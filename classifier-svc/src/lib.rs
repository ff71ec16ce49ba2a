//! classifier-svc: a batched BERT/ModernBERT classification server.
//!
//! `model` (pure inference) <- `batch` (admission, queue, batching, inference loop) <- `service`
//! (gRPC) and `http` (metrics, health). `config` holds every setting; `error` the one error type.

pub mod batch;
pub mod error;
pub mod fixtures;
pub mod metrics;
pub mod model;
