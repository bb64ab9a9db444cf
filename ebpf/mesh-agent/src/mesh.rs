use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, SockHash},
    programs::{CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SkMsg, SockOps},
};
use mesh_common::{
    BACKENDS_MAP, Backend, COUNTERS_MAP, Counter, SERVICES_MAP, SIDECAR_MAP, SOCK_STATE_MAP, SOCKETS_MAP,
    ServiceKey, SockKey,
};
use serde::Serialize;

use crate::{MeshError, mounts, object};

/// The two builds of the kernel programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Keys carry the network namespace's cookie (`bpf_get_netns_cookie` in sock_ops and sk_msg,
    /// 5.15 and later).
    Netns,
    /// Keys without it; loopback-to-loopback connections are not redirected.
    NoNetns,
}

impl Variant {
    /// The (sk_msg, sock_ops) programs of this build.
    pub const fn programs(self) -> (&'static str, &'static str) {
        match self {
            Variant::Netns => ("mesh_redirect", "mesh_sockops"),
            Variant::NoNetns => ("mesh_redirect_nocookie", "mesh_sockops_nocookie"),
        }
    }

    /// The cgroup/setsockopt program of this build.
    pub const fn setsockopt(self) -> &'static str {
        match self {
            Variant::Netns => "mesh_setsockopt",
            Variant::NoNetns => "mesh_setsockopt_nocookie",
        }
    }
}

/// The cgroup sock_addr programs of socket load balancing (`connect.rs`, `getpeername.rs`,
/// `udp.rs`).
const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "mesh_connect4",
    "mesh_connect6",
    "mesh_getpeername4",
    "mesh_getpeername6",
    "mesh_sendmsg4",
    "mesh_sendmsg6",
    "mesh_recvmsg4",
    "mesh_recvmsg6",
];

fn load_sk_msg(ebpf: &mut Ebpf, name: &'static str) -> Result<(), MeshError> {
    let prog: &mut SkMsg = program(ebpf, name)?.try_into().map_err(|e| MeshError::program(name, e))?;
    prog.load().map_err(|e| MeshError::program(name, e))
}

/// What the kernel programs counted, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub sockets_inserted: u64,
    pub insert_failed: u64,
    pub msg_redirected: u64,
    pub msg_passed: u64,
    pub loopback_skipped: u64,
    pub half_close_detached: u64,
    pub rcvlowat_tcp: u64,
    pub connect_balanced: u64,
    pub connect_refused: u64,
}

impl Counters {
    fn set(&mut self, c: Counter, v: u64) {
        match c {
            Counter::SocketsInserted => self.sockets_inserted = v,
            Counter::InsertFailed => self.insert_failed = v,
            Counter::MsgRedirected => self.msg_redirected = v,
            Counter::MsgPassed => self.msg_passed = v,
            Counter::LoopbackSkipped => self.loopback_skipped = v,
            Counter::HalfCloseDetached => self.half_close_detached = v,
            Counter::RcvlowatTcp => self.rcvlowat_tcp = v,
            Counter::ConnectBalanced => self.connect_balanced = v,
            Counter::ConnectRefused => self.connect_refused = v,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            sockets_inserted: self.sockets_inserted.saturating_sub(earlier.sockets_inserted),
            insert_failed: self.insert_failed.saturating_sub(earlier.insert_failed),
            msg_redirected: self.msg_redirected.saturating_sub(earlier.msg_redirected),
            msg_passed: self.msg_passed.saturating_sub(earlier.msg_passed),
            loopback_skipped: self.loopback_skipped.saturating_sub(earlier.loopback_skipped),
            half_close_detached: self.half_close_detached.saturating_sub(earlier.half_close_detached),
            rcvlowat_tcp: self.rcvlowat_tcp.saturating_sub(earlier.rcvlowat_tcp),
            connect_balanced: self.connect_balanced.saturating_sub(earlier.connect_balanced),
            connect_refused: self.connect_refused.saturating_sub(earlier.connect_refused),
        }
    }

    /// Both together (totals over several runs).
    pub fn plus(&self, other: &Counters) -> Counters {
        Counters {
            sockets_inserted: self.sockets_inserted + other.sockets_inserted,
            insert_failed: self.insert_failed + other.insert_failed,
            msg_redirected: self.msg_redirected + other.msg_redirected,
            msg_passed: self.msg_passed + other.msg_passed,
            loopback_skipped: self.loopback_skipped + other.loopback_skipped,
            half_close_detached: self.half_close_detached + other.half_close_detached,
            rcvlowat_tcp: self.rcvlowat_tcp + other.rcvlowat_tcp,
            connect_balanced: self.connect_balanced + other.connect_balanced,
            connect_refused: self.connect_refused + other.connect_refused,
        }
    }
}

/// The running mesh. Dropping it detaches the programs and removes the pins; [`Mesh::stop`] does
/// the same and reports failures.
pub struct Mesh {
    /// Owns the programs and their links; dropping it detaches them.
    ebpf: Option<Ebpf>,
    pin_dir: PathBuf,
    pins: Vec<PathBuf>,
    cgroup: PathBuf,
    variant: Variant,
}

impl Mesh {
    /// Loads the programs, attaches sock_ops to `cgroup` (a cgroup v2 directory) and sk_msg to
    /// the sockhash, and pins the maps under `pin_dir` (created; must be on bpffs).
    pub fn start(cgroup: &Path, pin_dir: &Path) -> Result<Mesh, MeshError> {
        if !object::is_real() {
            return Err(MeshError::StubObject);
        }
        if !mounts::is_on_bpffs(pin_dir) {
            return Err(MeshError::NoBpffs { path: PathBuf::from(mounts::BPFFS) });
        }
        let cgroup_dir =
            File::open(cgroup).map_err(|source| MeshError::Cgroup { path: cgroup.to_owned(), source })?;
        let ebpf = Ebpf::load(object::MESH_EBPF).map_err(MeshError::Parse)?;
        // From here on, Drop cleans up whatever was done if a later step fails.
        let mut mesh = Mesh {
            ebpf: Some(ebpf),
            pin_dir: pin_dir.to_owned(),
            pins: Vec::new(),
            cgroup: cgroup.to_owned(),
            variant: Variant::Netns,
        };
        let ebpf = mesh.ebpf.as_mut().expect("just set");

        // ANCHOR: attach
        let sockets_fd = {
            let sockets: SockHash<&MapData, SockKey> = map(ebpf, SOCKETS_MAP)?
                .try_into()
                .map_err(|source| MeshError::Map { map: SOCKETS_MAP, source })?;
            sockets.fd().try_clone().map_err(|source| MeshError::Io {
                what: "cannot duplicate the fd of map",
                path: PathBuf::from(SOCKETS_MAP),
                source,
            })?
        };

        // The build whose keys carry the netns cookie, unless this kernel's verifier does not
        // know the helper for these program types (before 5.15): then the one without it.
        let variant = match load_sk_msg(ebpf, Variant::Netns.programs().0) {
            Ok(_) => Variant::Netns,
            Err(MeshError::Refused { verifier_log, .. }) if verifier_log.contains("get_netns_cookie") => {
                load_sk_msg(ebpf, Variant::NoNetns.programs().0)?;
                Variant::NoNetns
            }
            Err(e) => return Err(e),
        };
        mesh.variant = variant;
        // sk_msg first: a socket sock_ops inserts must find its verdict program already there.
        let msg_name = variant.programs().0;
        let redirect: &mut SkMsg =
            program(ebpf, msg_name)?.try_into().map_err(|e| MeshError::program(msg_name, e))?;
        redirect.attach(&sockets_fd).map_err(|e| MeshError::program(msg_name, e))?;

        // Then the setsockopt guard, so no socket can enter the map before it is watched.
        let sockopt_name = variant.setsockopt();
        let sockopt: &mut CgroupSockopt =
            program(ebpf, sockopt_name)?.try_into().map_err(|e| MeshError::program(sockopt_name, e))?;
        sockopt.load().map_err(|e| MeshError::program(sockopt_name, e))?;
        sockopt
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(|e| MeshError::program(sockopt_name, e))?;

        let sockops_name = variant.programs().1;
        let sockops: &mut SockOps =
            program(ebpf, sockops_name)?.try_into().map_err(|e| MeshError::program(sockops_name, e))?;
        sockops.load().map_err(|e| MeshError::program(sockops_name, e))?;
        // Single = no flags. On >= 5.7 aya attaches through a bpf_link, which coexists with
        // other programs on the cgroup anyway (link_create refuses BPF_F_ALLOW_MULTI: EINVAL).
        sockops
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(|e| MeshError::program(sockops_name, e))?;
        // ANCHOR_END: attach

        // Socket load balancing: with no service in the map these let every call through.
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr =
                program(ebpf, name)?.try_into().map_err(|e| MeshError::program(name, e))?;
            prog.load().map_err(|e| MeshError::program(name, e))?;
            prog.attach(&cgroup_dir, CgroupAttachMode::Single).map_err(|e| MeshError::program(name, e))?;
        }

        fs::create_dir_all(pin_dir).map_err(|source| MeshError::Io {
            what: "cannot create pin directory",
            path: pin_dir.to_owned(),
            source,
        })?;
        for name in [SOCKETS_MAP, COUNTERS_MAP, SIDECAR_MAP, SOCK_STATE_MAP, SERVICES_MAP, BACKENDS_MAP] {
            let path = pin_dir.join(name);
            let ebpf = mesh.ebpf.as_ref().expect("set above");
            map(ebpf, name)?.pin(&path).map_err(|source| MeshError::Pin { path: path.clone(), source })?;
            mesh.pins.push(path);
        }
        Ok(mesh)
    }

    /// The cgroup the sock_ops program is attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Which build of the programs runs (depends on the kernel).
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The loaded programs with their hooks, and what the build means on this kernel.
    pub fn describe(&self) -> Vec<String> {
        let (msg, ops) = self.variant.programs();
        let mut lines = vec![
            format!("sk_msg: {msg} attached to the sockhash"),
            format!("cgroup/setsockopt: {} attached to the cgroup", self.variant.setsockopt()),
            format!("sock_ops: {ops} attached to the cgroup"),
            format!(
                "cgroup/connect4,6 + getpeername4,6: {} attached to the cgroup",
                SOCK_ADDR_PROGRAMS.join(", ")
            ),
        ];
        lines.push(match self.variant {
            Variant::Netns => "loopback sockets keyed by network namespace cookie and 4-tuple".into(),
            Variant::NoNetns => "this kernel cannot give sock_ops/sk_msg the netns cookie (before 5.15): loopback-to-loopback connections are not redirected".into(),
        });
        lines
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Current counter totals (summed over CPUs).
    pub fn counters(&self) -> Result<Counters, MeshError> {
        let ebpf = self.ebpf.as_ref().expect("running mesh");
        let array: PerCpuArray<&MapData, u64> = ebpf
            .map(COUNTERS_MAP)
            .ok_or(MeshError::Missing { name: COUNTERS_MAP })?
            .try_into()
            .map_err(|source| MeshError::Map { map: COUNTERS_MAP, source })?;
        let mut out = Counters::default();
        for c in Counter::ALL {
            let per_cpu =
                array.get(&(c as u32), 0).map_err(|source| MeshError::Map { map: COUNTERS_MAP, source })?;
            out.set(c, per_cpu.iter().sum());
        }
        Ok(out)
    }

    /// Tells the datapath that pods run sidecar proxies whose transparent outbound listener is
    /// `port` (0: no sidecars), so app <-> sidecar hops are redirected too.
    pub fn set_sidecar_port(&mut self, port: u16) -> Result<(), MeshError> {
        let ebpf = self.ebpf.as_mut().expect("running mesh");
        let map = ebpf.map_mut(SIDECAR_MAP).ok_or(MeshError::Missing { name: SIDECAR_MAP })?;
        let mut array: Array<&mut MapData, u32> =
            map.try_into().map_err(|source| MeshError::Map { map: SIDECAR_MAP, source })?;
        array.set(0, u32::from(port), 0).map_err(|source| MeshError::Map { map: SIDECAR_MAP, source })
    }

    /// Makes the service maps hold exactly `wanted`, by difference (see [`crate::services`]).
    pub fn set_services(
        &mut self,
        wanted: &std::collections::BTreeMap<ServiceKey, Vec<Backend>>,
    ) -> Result<crate::services::Applied, MeshError> {
        crate::services::reconcile(self.ebpf.as_mut().expect("running mesh"), wanted)
    }

    /// Detaches the programs and removes the pins, reporting the first failure.
    pub fn stop(mut self) -> Result<(), MeshError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), MeshError> {
        // Dropping the Ebpf closes the program links: sock_ops leaves the cgroup, sk_msg the map.
        drop(self.ebpf.take());
        let mut first = None;
        for path in self.pins.drain(..) {
            if let Err(source) = fs::remove_file(&path) {
                first.get_or_insert(MeshError::Io { what: "cannot unpin", path, source });
            }
        }
        // Remove the pin directory if the mesh left it empty (it may be shared, so never force).
        let _ = fs::remove_dir(&self.pin_dir);
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, MeshError> {
    ebpf.map(name).ok_or(MeshError::Missing { name })
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::programs::Program, MeshError> {
    ebpf.program_mut(name).ok_or(MeshError::Missing { name })
}
