//! Generates the tonic/prost code and the file descriptor set that server reflection serves.
//! Uses `protoc` from $PROTOC or the PATH when present, else the vendored binary, so a fresh
//! machine needs no system package.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let have_protoc = std::env::var_os("PROTOC").is_some()
        || std::process::Command::new("protoc")
            .arg("--version")
            .output()
            .is_ok();
    if !have_protoc {
        // Build scripts are single-threaded: setting the variable here is race-free.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("classifier_descriptor.bin"))
        .compile_protos(
            &["proto/semroute/classifier/v1/classifier.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
