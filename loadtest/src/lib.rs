//! Load tooling arrives with the deployment/load issue.
