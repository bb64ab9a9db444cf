//! Exit codes, in one place (also listed in `--help` and in the book).

/// Everything asked for ran and passed.
pub const OK: i32 = 0;
/// The scenario ran and at least one of its checks failed.
pub const SCENARIO_FAILED: i32 = 1;
/// Bad command line: unknown scenario or kernel, invalid scenario file, bad arguments (clap
/// uses 2 as well).
pub const USAGE: i32 = 2;
/// A requirement is unmet: not root (host backend), no cgroup v2, no bpffs, a tool missing
/// (qemu, busybox, dpkg-deb), the kernel refused a program, or a scenario was skipped for one.
pub const UNMET: i32 = 3;
/// The backend failed: a command, a namespace or a file did not behave, a VM died or stopped
/// answering, a download failed its checksum, a state file, cached package or template is
/// broken (never a skip).
pub const BACKEND: i32 = 4;
/// Interrupted by SIGINT or SIGTERM; the lab was torn down.
pub const INTERRUPTED: i32 = 130;

/// The table printed at the end of `--help`.
pub const HELP: &str = "Exit codes:
  0    ok: everything passed
  1    a scenario ran and a check failed
  2    usage: bad arguments, unknown scenario or kernel, invalid scenario file
  3    requirement unmet: not root (host backend), no cgroup v2, no bpffs, a tool missing
       (qemu, busybox), program refused by the kernel; or a scenario skipped because the
       kernel lacks what it requires (the reason is printed)
  4    backend failure: a VM died or went silent, a download failed its checksum, a state
       file, cached package or template is broken, ...
  130  interrupted (SIGINT/SIGTERM/SIGHUP); the lab was torn down (a second signal exits
       at once)";
