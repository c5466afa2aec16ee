fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tsweep_descriptor.bin"))
        .type_attribute(".tsweep.v1.TaskResult", "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]")
        .field_attribute(".tsweep.v1.TaskResult.metric", "#[serde(with = \"crate::vocab::metric_field\")]")
        .type_attribute(".tsweep.v1.Checkpoint", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_protos(&["proto/tsweep/v1/tsweep.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
