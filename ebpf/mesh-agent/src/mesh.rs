use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps},
};
use mesh_common::{COUNTERS_MAP, Counter, SIDECAR_MAP, SOCKETS_MAP, SockKey};
use serde::Serialize;

use crate::{MeshError, mounts, object};

/// The kernel programs the mesh loads, by name, with the hook each one uses.
pub const PROGRAMS: [(&str, &str); 2] = [("mesh_sockops", "sock_ops"), ("mesh_redirect", "sk_msg")];

/// What the kernel programs counted, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub sockets_inserted: u64,
    pub insert_failed: u64,
    pub msg_redirected: u64,
    pub msg_passed: u64,
}

impl Counters {
    fn set(&mut self, c: Counter, v: u64) {
        match c {
            Counter::SocketsInserted => self.sockets_inserted = v,
            Counter::InsertFailed => self.insert_failed = v,
            Counter::MsgRedirected => self.msg_redirected = v,
            Counter::MsgPassed => self.msg_passed = v,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            sockets_inserted: self.sockets_inserted.saturating_sub(earlier.sockets_inserted),
            insert_failed: self.insert_failed.saturating_sub(earlier.insert_failed),
            msg_redirected: self.msg_redirected.saturating_sub(earlier.msg_redirected),
            msg_passed: self.msg_passed.saturating_sub(earlier.msg_passed),
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

        let sockops: &mut SockOps =
            program(ebpf, "mesh_sockops")?.try_into().map_err(|e| MeshError::program("mesh_sockops", e))?;
        sockops.load().map_err(|e| MeshError::program("mesh_sockops", e))?;
        // Single = no flags. On >= 5.7 aya attaches through a bpf_link, which coexists with
        // other programs on the cgroup anyway (link_create refuses BPF_F_ALLOW_MULTI: EINVAL).
        sockops
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(|e| MeshError::program("mesh_sockops", e))?;

        let redirect: &mut SkMsg =
            program(ebpf, "mesh_redirect")?.try_into().map_err(|e| MeshError::program("mesh_redirect", e))?;
        redirect.load().map_err(|e| MeshError::program("mesh_redirect", e))?;
        redirect.attach(&sockets_fd).map_err(|e| MeshError::program("mesh_redirect", e))?;
        // ANCHOR_END: attach

        fs::create_dir_all(pin_dir).map_err(|source| MeshError::Io {
            what: "cannot create pin directory",
            path: pin_dir.to_owned(),
            source,
        })?;
        for name in [SOCKETS_MAP, COUNTERS_MAP, SIDECAR_MAP] {
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
