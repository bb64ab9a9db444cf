#!/usr/bin/env bash
# Idempotent set-up for Sidecarless Lab on Debian 12 (run as root for the apt part).
# Installs only what is missing: apt packages, the pinned Rust toolchain's components and targets,
# bpf-linker (linked against the pinned toolchain's own libLLVM), mdbook.
# Usage: scripts/setup.sh   (both README commands run it, so `mdbook serve book` works after either)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/rust-toolchain.toml")
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export PATH="$cargo_home/bin:$PATH"

log() { printf '[setup] %s\n' "$*" >&2; }

# --- apt -------------------------------------------------------------------------------------
# qemu-system-x86 + busybox-static: the VM backend; iproute2/bpftool are also copied into VM images.
# vagrant: only to validate the rendered Vagrantfile in the tests.
# sockperf, iperf3: established tools the lab's own benchmarks are cross-checked against.
# prometheus: the telemetry scenario's real Prometheus server, and promtool for the metrics test.
# redis-server, redis-tools, nginx-light, wrk: the applications of scenarios/apps.toml.
# tcpdump: scenarios/invisible.toml watches the pods' interfaces with it.
apt_pkgs=(iproute2 iptables bpftool procps qemu-system-x86 busybox-static vagrant sockperf iperf3 prometheus
  redis-server redis-tools nginx-light wrk tcpdump)
# The C twin (ebpf/mesh-c): clang for the BPF objects; libbpf-sys builds libbpf, libelf (from
# elfutils, with autotools, flex, bison, gawk) and zlib from source, for the host and, with
# musl-gcc, for the static guest build.
apt_pkgs+=(clang-16 llvm-16 musl-tools libelf-dev zlib1g-dev pkg-config make gcc autoconf automake autopoint
  libtool m4 flex bison gawk gettext linux-libc-dev)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing apt packages: ${missing[*]} (run this script as root to install them)"
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  # Packages with a daemon (prometheus, redis, nginx) must not start it: the lab starts its own when a
  # scenario needs one. A policy-rc.d that says "no" for the length of the install does that.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # --no-remove: never let apt remove an installed package to make room (a newer qemu-utils once
  # went that way without a word); stop and say so instead.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}"; then
    log "apt-get could not install ${missing[*]} without removing installed packages (see above)."
    log "Resolve the conflict by hand (apt-get install ${missing[*]} shows what it would remove), then run this again."
    exit 1
  fi
fi

# --- rust toolchain ----------------------------------------------------------------------------
command -v rustup >/dev/null || { log "rustup not found on PATH; install rustup first"; exit 1; }
if ! rustup toolchain list | grep -q "^$toolchain"; then
  log "rustup toolchain install $toolchain"
  rustup toolchain install "$toolchain" --profile minimal
fi
installed=$(rustup component list --toolchain "$toolchain" --installed)
for c in rust-src clippy rustfmt; do
  grep -q "^$c" <<<"$installed" || { log "rustup component add $c"; rustup component add --toolchain "$toolchain" "$c"; }
done
rustup target list --toolchain "$toolchain" --installed | grep -q '^x86_64-unknown-linux-musl$' ||
  { log "rustup target add x86_64-unknown-linux-musl"; rustup target add --toolchain "$toolchain" x86_64-unknown-linux-musl; }

# --- bpf-linker against the pinned toolchain's libLLVM ------------------------------------------
# Debian 12 has no LLVM 22; the rustup toolchain ships one. A shim prefix holds two symlinks to it:
# libLLVM.so (for -lLLVM at link time) and the library's own SONAME (found at run time via rpath).
if ! bpf-linker --version >/dev/null 2>&1; then
  sysroot=$(rustup run "$toolchain" rustc --print sysroot)
  lib=$(cd "$sysroot/lib" && ls libLLVM.so.* | head -n1)
  major=$(sed -n 's/^libLLVM\.so\.\([0-9]*\)\..*/\1/p' <<<"$lib")
  shim="$cargo_home/bpf-linker-llvm"
  mkdir -p "$shim/lib"
  ln -sfn "$sysroot/lib/$lib" "$shim/lib/libLLVM.so"
  ln -sfn "$sysroot/lib/$lib" "$shim/lib/$lib"
  log "cargo install bpf-linker 0.13.0 (llvm-$major, via $shim)"
  LLVM_PREFIX="$shim" RUSTFLAGS="-C link-arg=-Wl,-rpath,$shim/lib" \
    rustup run "$toolchain" cargo install bpf-linker --locked --version 0.13.0 \
    --no-default-features --features "llvm-$major" --root "$cargo_home"
  bpf-linker --version >/dev/null
fi

# --- mdbook -------------------------------------------------------------------------------------
if ! mdbook --version >/dev/null 2>&1; then
  log "cargo install mdbook"
  rustup run "$toolchain" cargo install mdbook --locked --version '^0.4' --root "$cargo_home"
fi
# --- bpffs -------------------------------------------------------------------------------------
# Labs pin their maps under /sys/fs/bpf; some machines boot without it mounted. Mounting the
# standard bpffs is machine set-up (systemd does the same at boot), not lab state.
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  if [ "$(id -u)" -eq 0 ]; then
    log "mount -t bpf bpf /sys/fs/bpf"
    mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
  else
    log "bpffs is not mounted at /sys/fs/bpf (as root: mount -t bpf bpf /sys/fs/bpf)"
  fi
fi
log "ready"
