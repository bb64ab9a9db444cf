//! `mesh-agent engines`: the redirect's two programs loaded by each engine on this kernel, side
//! by side, without attaching anything: the object each comes from, how long loading took, and
//! what the kernel made of each program (translated and JIT-ed sizes, instructions the verifier
//! walked). The figures `book/src/hooks/twin.md` quotes.
use std::{
    os::fd::{AsFd as _, BorrowedFd},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{SkMsg, SockOps},
};
use serde::Serialize;

use crate::{
    Engine, MeshError,
    mesh::{load_redirect, map_fds, program},
    object, twin,
};

/// One program as one engine loaded it (medians over the runs).
#[derive(Debug, Clone, Serialize)]
pub struct Loaded {
    pub engine: Engine,
    pub program: &'static str,
    /// Bytes of the ELF object the program comes from (aya's holds the whole mesh).
    pub object_bytes: usize,
    /// aya: the program's load (the verifier; relocation happened when the object was parsed).
    /// libbpf: opening its object to loaded (CO-RE relocation against the kernel's BTF, map
    /// reuse, the verifier).
    pub load_ms: f64,
    /// The program after the verifier rewrote it (context accesses, helper calls): bytes and
    /// 8-byte instructions.
    pub xlated_bytes: u32,
    pub xlated_insns: u32,
    /// Machine code from the JIT (0: JIT off).
    pub jited_bytes: u32,
    /// Instructions the verifier processed (kernels from 5.16 report it; 0 before).
    pub verified_insns: u32,
}

/// What the kernel says about a loaded program.
struct Info {
    xlated: u32,
    jited: u32,
    verified: u32,
}

fn info(fd: BorrowedFd<'_>) -> Result<Info, MeshError> {
    use std::os::fd::AsRawFd as _;
    let mut i = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = size_of::<libbpf_rs::libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `i` is a live bpf_prog_info of `len` bytes; the kernel fills what it knows.
    let ret =
        unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &raw mut i, &raw mut len) };
    if ret != 0 {
        return Err(MeshError::Io {
            what: "cannot read program info of",
            path: "bpf_prog_get_info_by_fd".into(),
            source: std::io::Error::from_raw_os_error(-ret),
        });
    }
    Ok(Info { xlated: i.xlated_prog_len, jited: i.jited_prog_len, verified: i.verified_insns })
}

/// The median load time in milliseconds, the middle pair averaged (as `lab_scenario::stats`
/// does: this crate sits below it).
fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => ms(&v[n / 2]),
        n => f64::midpoint(ms(&v[n / 2 - 1]), ms(&v[n / 2])),
    }
}

// ANCHOR: measure
/// Loads the redirect `runs` times with each engine; the kernel's figures come from the last run.
pub fn measure(runs: u32) -> Result<Vec<Loaded>, MeshError> {
    let mut times: Vec<(Engine, &'static str, Vec<Duration>)> = Vec::new();
    let mut infos: Vec<(Engine, &'static str, Info)> = Vec::new();
    let mut record = |engine, name, took, i: Option<Info>, infos: &mut Vec<_>| {
        match times.iter_mut().find(|(e, n, _)| *e == engine && *n == name) {
            Some((_, _, t)) => t.push(took),
            None => times.push((engine, name, vec![took])),
        }
        if let Some(i) = i {
            infos.retain(|(e, n, _): &(Engine, &str, Info)| !(*e == engine && *n == name));
            infos.push((engine, name, i));
        }
    };
    for _ in 0..runs.max(1) {
        // The maps (created here, once per run) serve both engines, as in the agent.
        let mut ebpf = Ebpf::load(object::MESH_EBPF).map_err(MeshError::Parse)?;
        let t = Instant::now();
        let variant = load_redirect(&mut ebpf)?;
        let took = t.elapsed();
        let (msg, ops) = variant.programs();
        let p: &mut SkMsg = program(&mut ebpf, msg)?.try_into().map_err(|e| MeshError::program(msg, e))?;
        let fd = p.fd().map_err(|e| MeshError::program(msg, e))?;
        record(Engine::Aya, msg, took, Some(info(fd.as_fd())?), &mut infos);
        let p: &mut SockOps = program(&mut ebpf, ops)?.try_into().map_err(|e| MeshError::program(ops, e))?;
        let t = Instant::now();
        p.load().map_err(|e| MeshError::program(ops, e))?;
        let took = t.elapsed();
        let fd = p.fd().map_err(|e| MeshError::program(ops, e))?;
        record(Engine::Aya, ops, took, Some(info(fd.as_fd())?), &mut infos);
        for (name, took, fd) in twin::load_unattached(&map_fds(&ebpf)?, variant)? {
            record(Engine::Libbpf, name, took, Some(info(fd.as_fd())?), &mut infos);
        }
    }
    let object_bytes = |engine: Engine, name: &str| match engine {
        Engine::Aya => object::MESH_EBPF.len(),
        Engine::Libbpf => {
            let hook = if name.starts_with("mesh_redirect") { "sk_msg" } else { "sock_ops" };
            mesh_c::OBJECTS.iter().find(|(h, _)| *h == hook).map_or(0, |(_, o)| o.len())
        }
    };
    Ok(times
        .into_iter()
        .filter_map(|(engine, program, t)| {
            let (_, _, i) = infos.iter().find(|(e, n, _)| *e == engine && *n == program)?;
            Some(Loaded {
                engine,
                program,
                object_bytes: object_bytes(engine, program),
                load_ms: median(t),
                xlated_bytes: i.xlated,
                xlated_insns: i.xlated / 8,
                jited_bytes: i.jited,
                verified_insns: i.verified,
            })
        })
        .collect())
}
// ANCHOR_END: measure

/// The human form: one line per engine and program.
pub fn render(loaded: &[Loaded]) -> String {
    let mut out = format!(
        "{:<7} {:<24} {:>12} {:>9} {:>13} {:>12} {:>10} {:>9}\n",
        "engine", "program", "object B", "load ms", "xlated insns", "xlated B", "jited B", "verified"
    );
    for l in loaded {
        out.push_str(&format!(
            "{:<7} {:<24} {:>12} {:>9.2} {:>13} {:>12} {:>10} {:>9}\n",
            l.engine.name(),
            l.program,
            l.object_bytes,
            l.load_ms,
            l.xlated_insns,
            l.xlated_bytes,
            l.jited_bytes,
            if l.verified_insns == 0 { "-".to_owned() } else { l.verified_insns.to_string() }
        ));
    }
    out
}
