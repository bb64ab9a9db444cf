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
# libbpf for musl: see scripts/musl-libbpf/README.md.
shim="$here/target/musl-libbpf"
mkdir -p "$shim/lib" "$shim/kinclude"
for sym in argp:argp_parse fts:fts_close obstack:_obstack_free; do
  lib=${sym%%:*}
  [ -f "$shim/lib/lib$lib.a" ] && continue
  printf 'void %s(void) {}\n' "${sym#*:}" > "$shim/$lib.c"
  musl-gcc -c "$shim/$lib.c" -o "$shim/$lib.o"
  ar rcs "$shim/lib/lib$lib.a" "$shim/$lib.o"
done
ln -sfn /usr/include/x86_64-linux-gnu/asm "$shim/kinclude/asm"
ln -sfn /usr/include/asm-generic "$shim/kinclude/asm-generic"
ln -sfn /usr/include/linux "$shim/kinclude/linux"
export CC_x86_64_unknown_linux_musl=musl-gcc
export CFLAGS_x86_64_unknown_linux_musl="-I$here/scripts/musl-libbpf -idirafter $shim/kinclude -L$shim/lib"
# mesh-agent with `kubernetes`: the lab's container image runs `mesh-agent kubernetes` beside the
# agent (lab-runner cluster).
cargo build --quiet --release --target x86_64-unknown-linux-musl --features mesh-agent/kubernetes \
  -p lab-node --bin lab-node -p workloads --bin workload -p mesh-agent --bin mesh-agent 2>&1 | quiet_ebpf
test "${PIPESTATUS[0]}" -eq 0
