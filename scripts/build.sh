#!/usr/bin/env bash
# Builds lab-runner (host, debug or --release) and the static guest binaries that VM images
# carry (lab-node, workload, mesh-agent for x86_64-unknown-linux-musl, always release).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
profile=()
[ "${1:-}" = "--release" ] && profile=(--release)
quiet_ebpf() { grep -v '^warning: mesh-agent@' || true; }
cd "$here"
cargo build --quiet "${profile[@]}" -p lab-runner 2>&1 | quiet_ebpf
test "${PIPESTATUS[0]}" -eq 0
cargo build --quiet --release --target x86_64-unknown-linux-musl \
  -p lab-node --bin lab-node -p workloads --bin workload -p mesh-agent --bin mesh-agent 2>&1 | quiet_ebpf
test "${PIPESTATUS[0]}" -eq 0
