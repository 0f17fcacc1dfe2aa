//! Compiles the services' .proto files with protox (pure Rust, no system protoc) and tonic-prost,
//! and writes the file descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Quiver's own API and the supported part of Qdrant's (crate::qdrant).
    let fds = protox::compile(["quiver/v1/quiver.proto", "qdrant/qdrant.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("quiver_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
