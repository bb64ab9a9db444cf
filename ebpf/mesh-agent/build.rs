//! Builds `mesh-ebpf` for `bpfel-unknown-none` with aya-build and leaves the object in OUT_DIR,
//! where `src/object.rs` embeds it.
//!
//! Escape hatch: `AYA_BUILD_SKIP=1` writes an empty stub instead, so `cargo check`, clippy and
//! unit tests work without bpf-linker; loading the mesh from such a build fails with a clear
//! error. The lab, the tests and CI always build the real object.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const EBPF_PACKAGE: &str = "mesh-ebpf";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir.join("..").join(EBPF_PACKAGE).canonicalize()?;
    let workspace = manifest_dir.join("../..").canonicalize()?;

    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning=AYA_BUILD_SKIP is set: embedding an empty eBPF stub");
        fs::write(out_dir.join(EBPF_PACKAGE), [])?;
        return Ok(());
    }

    // Build with the one pinned toolchain (rust-toolchain.toml); RUSTC_BOOTSTRAP=1 unlocks
    // `-Z build-std=core` on that stable toolchain, for the nested eBPF build only.
    let toolchain_file = workspace.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = fs::read_to_string(&toolchain_file)?
        .lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_owned())
        })
        .ok_or_else(|| anyhow!("no channel in {}", toolchain_file.display()))?;
    // SAFETY: build scripts are single-threaded here; the variable is read by aya-build and
    // inherited by the nested cargo it spawns.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: EBPF_PACKAGE, root_dir, ..Default::default() }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
