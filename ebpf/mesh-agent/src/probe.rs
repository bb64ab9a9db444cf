//! What the running kernel supports, asked of the kernel itself (aya's feature probes load a
//! minimal program or create a minimal map of each type).
use aya::{maps::MapType, programs::ProgramType};

/// Program types scenarios can require, by the names scenario files use.
pub const PROGRAMS: &[(&str, ProgramType)] = &[
    ("sock_ops", ProgramType::SockOps),
    ("sk_msg", ProgramType::SkMsg),
    ("cgroup_sock_addr", ProgramType::CgroupSockAddr),
    ("cgroup_skb", ProgramType::CgroupSkb),
    ("tracepoint", ProgramType::TracePoint),
    ("sched_cls", ProgramType::SchedClassifier),
];

/// Map types scenarios can require.
pub const MAPS: &[(&str, MapType)] = &[
    ("sockhash", MapType::SockHash),
    ("sockmap", MapType::SockMap),
    ("array", MapType::Array),
    ("percpu_array", MapType::PerCpuArray),
    ("hash", MapType::Hash),
    ("ringbuf", MapType::RingBuf),
];

/// `Some(Ok(supported))` for a known program type name, `None` for an unknown name. A probe
/// that could not ask (no permission to load anything, for one) is `Some(Err)`: that says
/// nothing about the kernel and must not pass for "unsupported".
pub fn program(name: &str) -> Option<Result<bool, String>> {
    let (_, t) = PROGRAMS.iter().find(|(n, _)| *n == name)?;
    Some(aya::sys::is_program_supported(*t).map_err(|e| format!("probing {name} programs: {e}")))
}

/// `Some(Ok(supported))` for a known map type name, `None` for an unknown name; `Some(Err)` as
/// for [`program`].
pub fn map(name: &str) -> Option<Result<bool, String>> {
    let (_, t) = MAPS.iter().find(|(n, _)| *n == name)?;
    Some(aya::sys::is_map_supported(*t).map_err(|e| format!("probing {name} maps: {e}")))
}
