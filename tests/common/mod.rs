//! What the integration test binaries share: how a test whose precondition is missing ends.
//!
//! It fails. A test that returns early and passes would let CI go green without having loaded a
//! program or booted a VM. Where such tests cannot run (a laptop without root or QEMU), set
//! `SIDECARLESS_ALLOW_SKIP=1`: each then prints `SKIPPED <test>: <why>` and passes.
// Each test binary uses part of this module.
#![allow(dead_code)]

/// The variable that lets tests skip when what they need is missing.
pub const ALLOW_SKIP: &str = "SIDECARLESS_ALLOW_SKIP";

/// Ends a test that cannot run here: a failure, unless skipping is allowed (then `false`, after
/// printing why; the caller returns).
pub fn cannot_run(test: &str, why: &str) -> bool {
    if std::env::var(ALLOW_SKIP).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: {why}");
        return false;
    }
    panic!("{test}: {why} (set {ALLOW_SKIP}=1 to skip the tests that cannot run on this machine)");
}

/// `true` when running as root, else [`cannot_run`] for `test`.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    root || cannot_run(test, "needs root (namespaces, cgroups, eBPF)")
}
