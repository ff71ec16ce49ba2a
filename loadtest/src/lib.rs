//! Load tooling for the semantic router: the vLLM simulator (`sim`) used by tests, the quickstart
//! and load tests. k6 scripts and the open-loop generator join it with the load issue.

pub mod sim;
