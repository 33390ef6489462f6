use which::which;

/// Building this crate needs `bpf-linker`, which cargo cannot express as a dependency: rebuild
/// whenever the linker binary changes (as the aya-template does).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not on PATH: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
