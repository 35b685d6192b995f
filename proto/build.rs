//! Compiles proto/chat/v1/*.proto with prost, and generates the canonical proto3 JSON mapping
//! (serde impls) for the client protocol with pbjson.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("descriptors.bin");
    let protos = [
        "chat/v1/client.proto",
        "chat/v1/store.proto",
        "chat/v1/cluster.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    prost_build::Config::new()
        .file_descriptor_set_path(&descriptors)
        .compile_well_known_types()
        .compile_protos(&protos, &["."])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .build(&[".chat.v1"])?;
    Ok(())
}
