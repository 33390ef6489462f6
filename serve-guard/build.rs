//! Builds the XDP program with the pinned eBPF nightly (aya-build runs `cargo +<nightly> build
//! -Z build-std=core --target bpfel-unknown-none`) and leaves the object in OUT_DIR, from where
//! `src/filter/object.rs` embeds it.
//!
//! The object is the same whatever this crate's profile or target (always a release build for
//! the BPF target), so every build of the workspace shares one eBPF build under
//! `<target dir>/ebpf` instead of one per OUT_DIR: `cargo xtask test` makes three (the agent,
//! the static package, the tests), and each eBPF build takes half a minute.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;
use std::{fs, path::Path};

/// The object's name: the eBPF crate's binary.
const OBJECT: &str = "serve-guard";
/// The shared build's directory under the workspace's target directory.
const SHARED_DIR: &str = "ebpf";

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
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let shared = metadata.target_directory.as_std_path().join(SHARED_DIR);
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    // Two builds at once (another profile, an editor's check) take turns: the nested cargo
    // would wait on its own lock, but the object's copy below must not read a half-written one.
    let lock_path = shared.join(".lock");
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    // aya-build builds under, and copies the object to, OUT_DIR: point it at the shared
    // directory for the call.
    // SAFETY: a build script is single-threaded here (aya-build starts its threads after
    // reading the variable).
    unsafe { std::env::set_var("OUT_DIR", &shared) };
    let built = aya_build::build_ebpf([ebpf_package], Toolchain::Custom(&nightly));
    // SAFETY: as above; aya-build's threads have ended when it returns.
    unsafe { std::env::set_var("OUT_DIR", &out_dir) };
    built?;
    copy_object(&shared, Path::new(&out_dir))
}

fn copy_object(from: &Path, to: &Path) -> anyhow::Result<()> {
    let (from, to) = (from.join(OBJECT), to.join(OBJECT));
    fs::copy(&from, &to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}
