fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "token.proto",
        "recovery.proto",
        "chunk.proto",
        "node.proto",
        "coordinator.proto",
        "federation.proto",
        "observe.proto",
    ]
    .map(|f| root.join("collective/v1").join(f));
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
