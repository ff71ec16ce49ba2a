//! Load tooling for the semantic router: the vLLM simulator (`sim`) used by tests, the quickstart
//! and load tests, the open-loop generator (`loadgen`) that measures the router at rates where
//! k6 itself would saturate the machine, the process helpers shared with the cross-service tests
//! (`procs`), and the chaos run (`chaos`).

pub mod chaos;
pub mod loadgen;
pub mod procs;
pub mod sim;
