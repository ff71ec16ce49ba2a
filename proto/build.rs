//! Generates the tonic/prost code and the file descriptor set that server reflection serves.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("classifier_descriptor.bin"))
        .compile_protos(&["proto/semroute/classifier/v1/classifier.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
