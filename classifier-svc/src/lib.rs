//! classifier-svc: a batched BERT/ModernBERT classification server.
//!
//! `model` (pure inference) <- `batch` (admission, queue, batching, inference loop) <- `service`
//! (gRPC face) <- `server` (listeners, loading, health). `http` serves /metrics and /healthz;
//! `bench` measures it all. `config` holds every setting; `error` the one error type.

pub mod batch;
pub mod bench;
pub mod centroid;
pub mod config;
pub mod dataset;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod fixtures;
pub mod http;
pub mod metrics;
pub mod model;
pub mod server;
pub mod service;
pub mod train;
pub mod train_spans;
