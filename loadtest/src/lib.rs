//! Load tooling for the semantic router: the vLLM simulator (`sim`) used by tests, the quickstart
//! and load tests, and the open-loop generator (`loadgen`) that measures the router at rates
//! where k6 itself would saturate the machine.

pub mod loadgen;
pub mod sim;
