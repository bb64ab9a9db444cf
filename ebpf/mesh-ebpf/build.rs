//! Rebuild the eBPF object when the bpf-linker binary changes (it is an undeclared dependency).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
