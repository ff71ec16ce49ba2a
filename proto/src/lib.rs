//! The gRPC contract between the semantic router's services, generated from `proto/`.
//!
//! Nothing but generated types and the descriptor set for server reflection lives here.

pub mod classifier {
    pub mod v1 {
        tonic::include_proto!("semroute.classifier.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto in this crate, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("classifier_descriptor");
