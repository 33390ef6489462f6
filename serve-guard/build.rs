//! Builds the XDP program with the pinned eBPF nightly (aya-build runs `cargo +<nightly> build
//! -Z build-std=core --target bpfel-unknown-none`) and leaves the object in OUT_DIR, from where
//! `src/filter/object.rs` embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    // libxdp manages the shared XDP dispatcher (filter/libxdp.rs). The static musl package
    // cannot load a shared library and goes without it.
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("musl") {
        println!("cargo:rustc-link-lib=dylib=xdp");
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let nightly = metadata.workspace_metadata["toolchains"]["ebpf"]
        .as_str()
        .ok_or_else(|| anyhow!("[workspace.metadata.toolchains] ebpf missing in Cargo.toml"))?
        .to_owned();
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "serve-guard-ebpf")
        .ok_or_else(|| anyhow!("serve-guard-ebpf package not found"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    let ebpf_package = aya_build::Package {
        name: package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::Custom(&nightly))
}
