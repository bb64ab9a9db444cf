use std::{
    fs::{self, File},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{MapData, ProgramArray, SockHash},
    programs::{
        CgroupAttachMode, CgroupSkbAttachType, CgroupSockAddr, FEntry, FExit, Program, SkMsg,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use mesh_common::{
    Counter, FlowControl, HTTP_PROGS_MAP, PRESSURE_BUDGET, REDIRECT_BUDGET, SERVICES_MAP, SOCKETS_MAP,
    SockKey,
};
use serde::Serialize;

use crate::{
    MeshError, mounts, object,
    pins::{self, Found, Pinned},
    sys, twin,
};

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

    /// The HTTP-judging sk_msg program of this build (tail-called through `HTTP_PROGS`).
    pub const fn http(self) -> &'static str {
        match self {
            Variant::Netns => "mesh_http",
            Variant::NoNetns => "mesh_http_nocookie",
        }
    }

    /// The telemetry sock_ops program of this build.
    pub const fn telemetry(self) -> &'static str {
        match self {
            Variant::Netns => "mesh_telemetry",
            Variant::NoNetns => "mesh_telemetry_nocookie",
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

/// Who loads the redirect's sock_ops and sk_msg programs (shared with the lab's scenario options).
pub use lab_protocol::Engine;

fn load_sk_msg(ebpf: &mut Ebpf, name: &'static str) -> Result<(), MeshError> {
    let prog: &mut SkMsg = program(ebpf, name)?.try_into().map_err(|e| MeshError::program(name, e))?;
    prog.load().map_err(|e| MeshError::program(name, e))
}

/// Loads aya's sk_msg redirect: the build whose keys carry the netns cookie, unless this
/// kernel's verifier does not know the helper for sk_msg (before 5.15): then the one without.
pub(crate) fn load_redirect(ebpf: &mut Ebpf) -> Result<Variant, MeshError> {
    match load_sk_msg(ebpf, Variant::Netns.programs().0) {
        Ok(()) => Ok(Variant::Netns),
        Err(MeshError::Refused { verifier_log, .. }) if verifier_log.contains("get_netns_cookie") => {
            load_sk_msg(ebpf, Variant::NoNetns.programs().0)?;
            Ok(Variant::NoNetns)
        }
        Err(e) => Err(e),
    }
}

/// Declares [`Counters`]: one field per [`Counter`] (its `name()`), and the arithmetic on them.
macro_rules! counters {
    ($($field:ident = $variant:ident),* $(,)?) => {
        /// What the kernel programs counted, summed over CPUs.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct Counters {
            $(pub $field: u64,)*
        }

        impl Counters {
            pub(crate) fn set(&mut self, c: Counter, v: u64) {
                match c {
                    $(Counter::$variant => self.$field = v,)*
                }
            }

            /// What happened between `earlier` and `self`.
            #[must_use]
            pub fn since(&self, earlier: &Counters) -> Counters {
                Counters { $($field: self.$field.saturating_sub(earlier.$field),)* }
            }

            /// Both together (totals over several runs).
            #[must_use]
            pub fn plus(&self, other: &Counters) -> Counters {
                Counters { $($field: self.$field + other.$field,)* }
            }
        }
    };
}

counters! {
    sockets_inserted = SocketsInserted,
    insert_failed = InsertFailed,
    msg_redirected = MsgRedirected,
    msg_passed = MsgPassed,
    loopback_skipped = LoopbackSkipped,
    half_close_detached = HalfCloseDetached,
    rcvlowat_tcp = RcvlowatTcp,
    connect_balanced = ConnectBalanced,
    connect_refused = ConnectRefused,
    policy_denied = PolicyDenied,
    ingress_denied = IngressDenied,
    message_denied = MessageDenied,
    events_lost = EventsLost,
    http_denied = HttpDenied,
    flow_events_lost = FlowEventsLost,
    flow_fallback = FlowFallback,
    inq_tcp = InqTcp,
    pressure_fallback = PressureFallback,
}

/// How [`Mesh::start`] found the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "how", rename_all = "kebab-case")]
pub enum Started {
    /// Nothing was there (or only an incomplete install, removed first): loaded, attached, pinned.
    Installed { replaced_partial: bool },
    /// A complete install of this layout for this cgroup was there, left by an agent that is
    /// gone: its programs stay attached through their pinned links, nothing was attached again.
    Adopted { links: usize, services: usize, engine: Engine },
}

/// The mesh as its agent runs it: installed by this process or adopted from the pins of a
/// previous agent. [`Mesh::stop`] (or drop) uninstalls it: detaches every program and removes
/// the pins. An agent killed outright leaves it running from the pins.
pub struct Mesh {
    pinned: Option<Pinned>,
    /// Set when this process installed the mesh: it holds sk_msg's attachment to the sockhash
    /// (a program attached to a map, not a link).
    ebpf: Option<Ebpf>,
    pin_dir: PathBuf,
    cgroup: PathBuf,
    started: Started,
    /// Why reads are estimated rather than counted (no read counter), if they are.
    reads_estimated: Option<String>,
    pressure_unwatched: Option<String>,
    stopped: bool,
}

impl Mesh {
    /// Serves `cgroup` (a cgroup v2 directory) from the pins under `pin_dir` (on bpffs): adopts a
    /// complete install of this layout for the same cgroup, else installs (see [`crate::pins`]).
    /// Pins of another layout, or of another cgroup, are refused.
    ///
    /// `engine` chooses who loads the redirect when installing; an adopted mesh keeps the
    /// engine it was installed with (see [`Started::Adopted`]).
    pub fn start(cgroup: &Path, pin_dir: &Path, engine: Engine) -> Result<Mesh, MeshError> {
        if !object::is_real() {
            return Err(MeshError::StubObject);
        }
        if !mounts::is_on_bpffs(pin_dir) {
            return Err(MeshError::NoBpffs { path: PathBuf::from(mounts::BPFFS) });
        }
        let wanted = pins::cgroup_id(cgroup)?;
        let mut mesh = Mesh {
            pinned: None,
            ebpf: None,
            pin_dir: pin_dir.to_owned(),
            cgroup: cgroup.to_owned(),
            started: Started::Installed { replaced_partial: false },
            reads_estimated: None,
            pressure_unwatched: None,
            stopped: false,
        };
        match pins::find(pin_dir) {
            Found::Other { what } => {
                return Err(MeshError::Layout { pin_dir: pin_dir.to_owned(), found: what });
            }
            Found::Complete { cgroup_id, .. } if cgroup_id != wanted => {
                return Err(MeshError::OtherCgroup {
                    path: pin_dir.to_owned(),
                    pinned: cgroup_id,
                    cgroup: cgroup.to_owned(),
                    wanted,
                });
            }
            Found::Complete { variant, engine: installed, .. } => {
                // ANCHOR: adopt
                let layout = pins::layout_dir(pin_dir);
                for p in pins::linked_programs(variant) {
                    let path = pins::link_pin(&layout, p);
                    // Opening checks that the pin is a link; dropping our handle leaves it pinned.
                    PinnedLink::from_pin(&path).map_err(|source| MeshError::Link { path, source })?;
                }
                let pinned = Pinned::open(pin_dir)?;
                let flow = pinned.flow_control()?;
                if flow.reads_counted == 0 {
                    mesh.reads_estimated =
                        Some("the agent that installed the mesh could not count reads".into());
                }
                if flow.pressure_watched == 0 {
                    mesh.pressure_unwatched =
                        Some("the agent that installed the mesh could not watch it".into());
                }
                let services = pinned.fill().iter().find(|f| f.name == SERVICES_MAP).and_then(|f| f.entries);
                mesh.started = Started::Adopted {
                    links: pins::linked_programs(variant).len(),
                    services: services.unwrap_or(0),
                    engine: installed,
                };
                mesh.pinned = Some(pinned);
                // ANCHOR_END: adopt
            }
            found => {
                if found == Found::Partial {
                    pins::uninstall(pin_dir)?;
                    mesh.started = Started::Installed { replaced_partial: true };
                }
                // Drop (on an error) removes whatever part was pinned.
                let (ebpf, flow) = install(cgroup, wanted, pin_dir, engine)?;
                mesh.ebpf = Some(ebpf);
                let mut pinned = Pinned::open(pin_dir)?;
                // Telemetry starts on; an adopted mesh keeps what its pins say.
                pinned.set_telemetry(true)?;
                // Reads counted by the fexit program where it attached, else estimated by sk_msg.
                pinned.set_flow_control(FlowControl {
                    budget: REDIRECT_BUDGET,
                    reads_counted: u32::from(flow.unread.is_ok()),
                    pressure_budget: PRESSURE_BUDGET,
                    pressure_watched: u32::from(flow.pressure.is_ok()),
                    pressure_at: 0,
                })?;
                mesh.reads_estimated = flow.unread.err();
                mesh.pressure_unwatched = flow.pressure.err();
                mesh.pinned = Some(pinned);
            }
        }
        Ok(mesh)
    }

    /// How the agent came to serve the node.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// Why sk_msg estimates what its peers read instead of counting it (see
    /// `mesh_common::FlowControl`): `None` when the read counter is attached.
    pub fn reads_estimated(&self) -> Option<&str> {
        self.reads_estimated.as_deref()
    }

    /// Why sk_msg does not see TCP memory pressure (`mesh_common::FlowControl`): `None` when
    /// the pressure mark is attached.
    pub fn pressure_unwatched(&self) -> Option<&str> {
        self.pressure_unwatched.as_deref()
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Where the pins are.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The pinned maps.
    pub fn pins(&self) -> &Pinned {
        self.pinned.as_ref().expect("running mesh")
    }

    pub fn pins_mut(&mut self) -> &mut Pinned {
        self.pinned.as_mut().expect("running mesh")
    }

    /// Current counter totals (summed over CPUs).
    pub fn counters(&self) -> Result<Counters, MeshError> {
        self.pins().counters()
    }

    /// Detaches the programs and removes the pins, reporting the first failure.
    pub fn stop(mut self) -> Result<(), MeshError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), MeshError> {
        if std::mem::replace(&mut self.stopped, true) {
            return Ok(());
        }
        // Our own descriptors first (maps, and the sk_msg attachment if we made it), then the
        // pins: the last reference gone, each link detaches and each map is freed.
        drop(self.pinned.take());
        drop(self.ebpf.take());
        pins::uninstall(&self.pin_dir).map(drop)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

// ANCHOR: install
/// Whether flow control's tracing programs attached, or why not: the mesh runs without them.
struct FlowTracing {
    /// The read counter (`mesh_unread`).
    unread: Result<(), String>,
    /// The pressure mark (`mesh_pressure`).
    pressure: Result<(), String>,
}

/// Loads the programs, pins the maps, attaches the programs to `cgroup`, and pins the links and
/// last the completion marker. On an error nothing stays attached or pinned.
fn install(
    cgroup: &Path,
    cgroup_id: u64,
    pin_dir: &Path,
    engine: Engine,
) -> Result<(Ebpf, FlowTracing), MeshError> {
    let cgroup_dir =
        File::open(cgroup).map_err(|source| MeshError::Cgroup { path: cgroup.to_owned(), source })?;
    let mut ebpf = Ebpf::load(object::MESH_EBPF).map_err(MeshError::Parse)?;
    let layout = pins::layout_dir(pin_dir);
    let mut flow = FlowTracing { unread: Ok(()), pressure: Ok(()) };
    let installed = pin_maps(&ebpf, &layout)
        .and_then(|()| attach(&mut ebpf, &cgroup_dir, engine))
        .map(|mut links| {
            // Parsed once for both: the kernel's BTF is megabytes.
            let btf =
                aya::Btf::from_sys_fs().map_err(|e| format!("no kernel BTF (/sys/kernel/btf/vmlinux): {e}"));
            match btf.clone().and_then(|btf| attach_unread(&mut ebpf, &btf)) {
                Ok(link) => links.push((pins::UNREAD_PROGRAM, ToPin::Aya(link))),
                Err(why) => flow.unread = Err(why),
            }
            match btf.and_then(|btf| attach_pressure(&mut ebpf, &btf)) {
                Ok(link) => links.push((pins::PRESSURE_PROGRAM, ToPin::Aya(link))),
                Err(why) => flow.pressure = Err(why),
            }
            links
        })
        .and_then(|links| pin_links(links, cgroup_id, engine, &layout));
    if installed.is_err() {
        let _ = pins::uninstall(pin_dir);
    }
    installed.map(|()| (ebpf, flow))
}

// ANCHOR: attach_unread
/// Attaches the read counter (fexit) to the function that copies a socket's redirected bytes
/// to its reader: `sk_msg_recvmsg` (5.12 and later), else its older name.
fn attach_unread(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<FdLink, String> {
    let name = pins::UNREAD_PROGRAM;
    let prog: &mut FExit =
        program(ebpf, name).map_err(|e| e.to_string())?.try_into().map_err(|e| format!("{name}: {e}"))?;
    let mut tried = Vec::new();
    for function in ["sk_msg_recvmsg", "__tcp_bpf_recvmsg"] {
        match prog.load(function, btf) {
            Ok(()) => {
                let id = prog.attach().map_err(|e| format!("{name}: attach to {function}: {e}"))?;
                let link = prog.take_link(id).map_err(|e| format!("{name}: {e}"))?;
                return Ok(link.into());
            }
            Err(e) => tried.push(format!("{function}: {}", MeshError::program(name, e))),
        }
    }
    Err(format!("cannot attach {name}: {}", tried.join("; ")))
}
// ANCHOR_END: attach_unread

/// Attaches the pressure mark (fentry) to `tcp_enter_memory_pressure`.
fn attach_pressure(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<FdLink, String> {
    let (name, function) = (pins::PRESSURE_PROGRAM, "tcp_enter_memory_pressure");
    let prog: &mut FEntry =
        program(ebpf, name).map_err(|e| e.to_string())?.try_into().map_err(|e| format!("{name}: {e}"))?;
    prog.load(function, btf).map_err(|e| format!("{function}: {}", MeshError::program(name, e)))?;
    let id = prog.attach().map_err(|e| format!("{name}: attach to {function}: {e}"))?;
    let link = prog.take_link(id).map_err(|e| format!("{name}: {e}"))?;
    Ok(link.into())
}

fn pin_maps(ebpf: &Ebpf, layout: &Path) -> Result<(), MeshError> {
    fs::create_dir_all(layout).map_err(|source| MeshError::Io {
        what: "cannot create pin directory",
        path: layout.to_owned(),
        source,
    })?;
    for spec in pins::MAPS {
        let path = layout.join(spec.name);
        map(ebpf, spec.name)?.pin(&path).map_err(|source| MeshError::Pin { path: path.clone(), source })?;
    }
    Ok(())
}

fn pin_links(
    links: Vec<(&'static str, ToPin)>,
    cgroup_id: u64,
    engine: Engine,
    layout: &Path,
) -> Result<(), MeshError> {
    for (program, link) in links {
        let path = pins::link_pin(layout, program);
        // The pin keeps the program attached after our descriptor closes.
        match link {
            ToPin::Aya(l) => {
                drop(l.pin(&path).map_err(|source| MeshError::Pin { path: path.clone(), source })?)
            }
            ToPin::Raw(fd) => sys::obj_pin(fd.as_fd(), &path).map_err(|source| MeshError::Io {
                what: "cannot pin",
                path: path.clone(),
                source,
            })?,
        }
    }
    let mkdir = |dir: PathBuf| {
        fs::create_dir(&dir).map_err(|source| MeshError::Io { what: "cannot create", path: dir, source })
    };
    if let Some(marker) = pins::engine_marker(layout, engine) {
        mkdir(marker)?;
    }
    mkdir(pins::cgroup_marker(layout, cgroup_id))
}
// ANCHOR_END: install

/// Loads the program for a sock_addr role: its ECONNREFUSED build where the verifier takes it
/// (5.18 and later: `bpf_set_retval`), else the plain one. Returns the name of the one loaded.
fn load_sock_addr(ebpf: &mut Ebpf, role: &'static str) -> Result<&'static str, MeshError> {
    if let Some((_, refused)) = pins::REFUSED_BUILDS.iter().find(|(r, _)| *r == role) {
        let p: &mut CgroupSockAddr =
            program(ebpf, refused)?.try_into().map_err(|e| MeshError::program(refused, e))?;
        match p.load().map_err(|e| MeshError::program(refused, e)) {
            Ok(()) => return Ok(refused),
            // An older verifier does not know the helper: the plain build below.
            Err(MeshError::Refused { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let p: &mut CgroupSockAddr = program(ebpf, role)?.try_into().map_err(|e| MeshError::program(role, e))?;
    p.load().map_err(|e| MeshError::program(role, e))?;
    Ok(role)
}

/// A link made by aya or by us ([`sys::link_create`]), to be pinned.
enum ToPin {
    Aya(FdLink),
    Raw(OwnedFd),
}

/// Only a bpf_link can be pinned (kernels before 5.7 attach cgroup programs without one).
fn fd_link(name: &'static str, link: Result<FdLink, LinkError>) -> Result<FdLink, MeshError> {
    link.map_err(|source| MeshError::Link { path: PathBuf::from(name), source })
}

/// Attaches sk_msg to the sockhash and every cgroup program to `cgroup_dir`; returns the cgroup
/// programs' links, taken from aya so they can be pinned.
fn attach(
    ebpf: &mut Ebpf,
    cgroup_dir: &File,
    engine: Engine,
) -> Result<Vec<(&'static str, ToPin)>, MeshError> {
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
    // sk_msg first: a socket sock_ops inserts must find its verdict program already there.
    // The C twin reuses aya's maps: their descriptors, taken once for both of its programs.
    let twin_maps = if engine == Engine::Libbpf { Some(map_fds(ebpf)?) } else { None };
    let variant = match &twin_maps {
        None => {
            let variant = load_redirect(ebpf)?;
            let msg_name = variant.programs().0;
            let redirect: &mut SkMsg =
                program(ebpf, msg_name)?.try_into().map_err(|e| MeshError::program(msg_name, e))?;
            redirect.attach(&sockets_fd).map_err(|e| MeshError::program(msg_name, e))?;
            variant
        }
        Some(maps) => twin::attach_sk_msg(maps, sockets_fd.as_fd())?,
    };
    // The HTTP judge, in the program array the redirect program tail-calls (see pins.rs: the
    // array is pinned, or it would empty itself when this process exits).
    load_sk_msg(ebpf, variant.http())?;
    let http_fd = {
        let p: &SkMsg = ebpf
            .program(variant.http())
            .ok_or(MeshError::Missing { name: variant.http() })?
            .try_into()
            .map_err(|e| MeshError::program(variant.http(), e))?;
        p.fd()
            .map_err(|e| MeshError::program(variant.http(), e))?
            .try_clone()
            .map_err(|e| MeshError::program(variant.http(), aya::programs::ProgramError::from(e)))?
    };
    let mut progs: ProgramArray<&mut MapData> = ebpf
        .map_mut(HTTP_PROGS_MAP)
        .ok_or(MeshError::Missing { name: HTTP_PROGS_MAP })?
        .try_into()
        .map_err(|source| MeshError::Map { map: HTTP_PROGS_MAP, source })?;
    progs.set(0, &http_fd, 0).map_err(|source| MeshError::Map { map: HTTP_PROGS_MAP, source })?;

    // Then the setsockopt guard, so no socket can enter the map before it is watched; then
    // sock_ops; then socket load balancing (with no service in the map it lets every call
    // through). Single = no flags: on >= 5.7 aya attaches through a bpf_link, which coexists
    // with other programs on the cgroup anyway.
    let mut links = Vec::new();
    for name in pins::linked_programs(variant) {
        let err = |e| MeshError::program(name, e);
        let link = match program(ebpf, name)? {
            Program::CgroupSockopt(p) => {
                // aya keeps this link to itself (no FdLink conversion in 0.14): make our own.
                p.load().map_err(err)?;
                let prog = p.fd().map_err(err)?.as_fd();
                ToPin::Raw(sys::link_create(prog, cgroup_dir.as_fd(), sys::BPF_CGROUP_SETSOCKOPT).map_err(
                    |source| MeshError::Io {
                        what: "cannot link program to cgroup",
                        path: name.into(),
                        source,
                    },
                )?)
            }
            Program::SockOps(_) if twin_maps.is_some() && name == variant.programs().1 => {
                let maps = twin_maps.as_ref().expect("checked");
                ToPin::Raw(twin::attach_sock_ops(maps, variant, cgroup_dir.as_fd())?)
            }
            Program::SockOps(p) => {
                p.load().map_err(err)?;
                let id = p.attach(cgroup_dir, CgroupAttachMode::Single).map_err(err)?;
                ToPin::Aya(fd_link(name, p.take_link(id).map_err(err)?.try_into())?)
            }
            Program::CgroupSkb(p) => {
                p.load().map_err(err)?;
                let id = p
                    .attach(cgroup_dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                    .map_err(err)?;
                ToPin::Aya(fd_link(name, p.take_link(id).map_err(err)?.try_into())?)
            }
            Program::CgroupSockAddr(_) => {
                let loaded = load_sock_addr(ebpf, name)?;
                let p: &mut CgroupSockAddr =
                    program(ebpf, loaded)?.try_into().map_err(|e| MeshError::program(loaded, e))?;
                let id = p.attach(cgroup_dir, CgroupAttachMode::Single).map_err(err)?;
                ToPin::Aya(fd_link(name, p.take_link(id).map_err(err)?.try_into())?)
            }
            _ => return Err(MeshError::Missing { name }),
        };
        links.push((name, link));
    }
    // ANCHOR_END: attach
    Ok(links)
}

/// Descriptors of the maps the C twin declares (their kinds), by name, for libbpf to reuse.
pub(crate) fn map_fds(ebpf: &Ebpf) -> Result<twin::Maps, MeshError> {
    use aya::maps::Map;
    ebpf.maps()
        .filter_map(|(name, m)| match m {
            Map::SockHash(d) | Map::PerCpuArray(d) | Map::LruHashMap(d) | Map::Array(d) => Some((name, d)),
            _ => None,
        })
        .map(|(name, d)| {
            let fd = d.fd().as_fd().try_clone_to_owned().map_err(|source| MeshError::Io {
                what: "cannot duplicate the fd of map",
                path: PathBuf::from(name),
                source,
            })?;
            Ok((name.to_owned(), fd))
        })
        .collect()
}

fn map<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a aya::maps::Map, MeshError> {
    ebpf.map(name).ok_or(MeshError::Missing { name })
}

pub(crate) fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, MeshError> {
    ebpf.program_mut(name).ok_or(MeshError::Missing { name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_fields_are_the_counters_names() {
        let mut c = Counters::default();
        for (i, k) in Counter::ALL.into_iter().enumerate() {
            c.set(k, i as u64 + 1);
        }
        let json = serde_json::to_value(c).unwrap();
        for (i, k) in Counter::ALL.into_iter().enumerate() {
            assert_eq!(json[k.name()], i as u64 + 1, "{}", k.name());
        }
    }
}
