//! classifier-svc: a batched BERT/ModernBERT classification server over gRPC.
//!
//! The encoders themselves live in `semroute-encoder` (pure inference) and training in
//! `semroute-trainer`. Here: `batch` (admission, queue, batching, inference loop) <- `service`
//! (gRPC face, with `cascade`: the fast tier that answers where it is sure and where the encoder
//! cannot) <- `server` (listeners, loading, health). `http` serves /metrics and /healthz;
//! `bench` measures it all. `config` holds every setting; `error` the one error type.

pub mod batch;
pub mod bench;
pub mod cascade;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod server;
pub mod service;
pub mod trace;
