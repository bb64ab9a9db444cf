//! Compiles the C twin (`src/*.bpf.c`) with Debian's clang and generates a libbpf-rs skeleton
//! per hook into OUT_DIR (libbpf-cargo's `SkeletonBuilder`), where `src/lib.rs` includes them.
//!
//! `vmlinux.h` (every kernel type, for CO-RE) is dumped from this machine's kernel BTF with
//! bpftool, once per OUT_DIR: CO-RE means the object compiled against one kernel's types loads
//! on another, libbpf relocating each field access against the running kernel's BTF.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use libbpf_cargo::SkeletonBuilder;

const HOOKS: [&str; 2] = ["sock_ops", "sk_msg"];
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let src = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?).join("src");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", src.join("mesh.h").display());

    let vmlinux = out.join("vmlinux.h");
    if !vmlinux.exists() {
        dump_vmlinux(&vmlinux)?;
    }
    let clang = env::var_os("CLANG").map_or_else(find_clang, PathBuf::from);
    for hook in HOOKS {
        let source = src.join(format!("{hook}.bpf.c"));
        println!("cargo:rerun-if-changed={}", source.display());
        SkeletonBuilder::new()
            .source(&source)
            .obj(out.join(format!("{hook}.bpf.o")))
            .clang(&clang)
            .clang_args(["-I".as_ref(), out.as_os_str(), "-Wall".as_ref(), "-Werror".as_ref()])
            .build_and_generate(out.join(format!("{hook}.skel.rs")))
            .with_context(|| format!("cannot build {} with {}", source.display(), clang.display()))?;
    }
    Ok(())
}

/// Debian names its clang by version (`clang-16`, from scripts/setup.sh); a plain `clang`
/// elsewhere.
fn find_clang() -> PathBuf {
    ["clang-16", "clang"]
        .into_iter()
        .map(PathBuf::from)
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
        .unwrap_or_else(|| PathBuf::from("clang"))
}

fn dump_vmlinux(to: &Path) -> anyhow::Result<()> {
    if !Path::new(KERNEL_BTF).exists() {
        bail!(
            "{KERNEL_BTF} is missing: this kernel has no BTF to generate vmlinux.h from (CONFIG_DEBUG_INFO_BTF)"
        );
    }
    let bpftool = ["bpftool", "/usr/sbin/bpftool"]
        .into_iter()
        .find(|b| Command::new(b).arg("version").output().is_ok_and(|o| o.status.success()))
        .context("bpftool not found (scripts/setup.sh installs it)")?;
    let dump = Command::new(bpftool)
        .args(["btf", "dump", "file", KERNEL_BTF, "format", "c"])
        .output()
        .context("cannot run bpftool")?;
    if !dump.status.success() {
        bail!("bpftool btf dump failed: {}", String::from_utf8_lossy(&dump.stderr).trim());
    }
    fs::write(to, dump.stdout).with_context(|| format!("cannot write {}", to.display()))
}
