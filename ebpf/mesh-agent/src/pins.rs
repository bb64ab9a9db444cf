//! The mesh as it lives in bpffs: everything a running datapath needs is pinned, so it keeps
//! working when its agent dies, and a new agent (or `mesh-agent apply`/`status`) finds it there.
//!
//! ```text
//! <pin dir>/layout-<LAYOUT_VERSION>/
//!     SOCKETS COUNTERS SIDECAR SOCK_STATE SERVICES BACKENDS   maps user space reads or writes
//!     IDENTITIES CGROUP_IDS POLICY POLICED POLICY_GEN SOCK_POLICY VERDICTS DENIALS
//!     HTTP_RULES MESH_CONNECTS HTTP_PROGS FLOWS FLOW_EVENTS TELEMETRY TRACE_LAYOUT
//!     UNREAD FLOW_CONTROL
//!     link-<program>                                           one bpf_link per cgroup program,
//!                                                              and the read counter's (fexit)
//!     cgroup-<id>/                                             written last: the install is complete,
//!                                                              and which cgroup it serves
//! ```
//!
//! sk_msg is not a link: it is attached to the `SOCKETS` sockhash and lives as long as that map.
//! A pinned link keeps its program attached with no process holding it; removing the pin (and
//! closing the last descriptor) detaches it. The layout version changes whenever a pinned map's
//! type, key, value or size changes; an agent never adopts pins of another layout, and checks
//! each map it adopts against [`MAPS`] as well.
use std::{
    collections::{BTreeMap, HashMap},
    fs,
    mem::size_of,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, MapType, PerCpuArray};
use mesh_common::{
    BACKENDS_MAP, Backend, BackendKey, CGROUP_IDS_MAP, COUNTER_SLOTS, COUNTERS_MAP, Counter, DENIALS_BYTES,
    DENIALS_MAP, FLOW_CONTROL_MAP, FLOW_EVENTS_BYTES, FLOW_EVENTS_MAP, FLOWS_MAP, FlowControl, FlowRecord,
    HTTP_PROGS_MAP, HTTP_RULES_MAP, Hook, HttpRules, IDENTITIES_MAP, IdentityAddr, MAX_BACKEND_SLOTS,
    MAX_IDENTITY_ADDRS, MAX_POLICY, MAX_RULES, MAX_SERVICES, MAX_SOCKETS, MESH_CONNECTS_MAP, POLICED_MAP,
    POLICY_GEN_MAP, POLICY_MAP, PolicyKey, SERVICES_MAP, SIDECAR_MAP, SOCK_POLICY_MAP, SOCK_STATE_MAP,
    SOCKETS_MAP, ServiceKey, ServiceValue, SockKey, SockPolicy, TELEMETRY_MAP, TRACE_LAYOUT_MAP, TraceLayout,
    UNREAD_MAP, Unread, VERDICTS_MAP,
};
use serde::Serialize;

use crate::{Counters, Engine, MeshError, Variant, services};

// ANCHOR: version
/// Bump when a pinned map's definition or meaning changes (8: `POLICED` holds ingress and egress
/// flags, which older programs read as ingress only), or the set of pins does.
pub const LAYOUT_VERSION: u32 = 8;
// ANCHOR_END: version

/// One pinned map as this build defines it.
#[derive(Debug, Clone, Copy)]
pub struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn spec(name: &'static str, map_type: MapType, key: usize, value: usize, max_entries: u32) -> MapSpec {
    MapSpec { name, map_type, key_size: key as u32, value_size: value as u32, max_entries }
}

// ANCHOR: layout
/// The pinned maps of [`LAYOUT_VERSION`]. Every install opens what it just pinned through
/// [`Pinned::open`], which checks each map against this table: a table that drifts from the
/// object fails every install, in every kernel test.
pub const MAPS: [MapSpec; 23] = [
    spec(SOCKETS_MAP, MapType::SockHash, size_of::<SockKey>(), 4, MAX_SOCKETS),
    spec(COUNTERS_MAP, MapType::PerCpuArray, 4, 8, COUNTER_SLOTS),
    spec(SIDECAR_MAP, MapType::Array, 4, 4, 1),
    spec(SOCK_STATE_MAP, MapType::LruHash, size_of::<SockKey>(), 4, MAX_SOCKETS),
    spec(SERVICES_MAP, MapType::Hash, size_of::<ServiceKey>(), size_of::<ServiceValue>(), MAX_SERVICES),
    spec(BACKENDS_MAP, MapType::Hash, size_of::<BackendKey>(), size_of::<Backend>(), MAX_BACKEND_SLOTS),
    // An LPM trie's key is its 4-byte prefix length, then the data.
    spec(IDENTITIES_MAP, MapType::LpmTrie, 4 + size_of::<IdentityAddr>(), 4, MAX_IDENTITY_ADDRS),
    spec(CGROUP_IDS_MAP, MapType::Hash, 8, 4, MAX_IDENTITY_ADDRS),
    spec(POLICY_MAP, MapType::Hash, size_of::<PolicyKey>(), 4, MAX_POLICY),
    spec(POLICED_MAP, MapType::Hash, 4, 4, MAX_IDENTITY_ADDRS),
    spec(POLICY_GEN_MAP, MapType::Array, 4, 4, 1),
    spec(SOCK_POLICY_MAP, MapType::LruHash, size_of::<SockKey>(), size_of::<SockPolicy>(), MAX_SOCKETS),
    spec(HTTP_RULES_MAP, MapType::Hash, 4, size_of::<HttpRules>(), MAX_RULES),
    spec(MESH_CONNECTS_MAP, MapType::LruHash, size_of::<SockKey>(), 4, MAX_SOCKETS),
    // Pinned for its user reference: a program array is emptied when the last one goes.
    spec(HTTP_PROGS_MAP, MapType::ProgramArray, 4, 4, 1),
    spec(VERDICTS_MAP, MapType::PerCpuArray, 4, 8, MAX_RULES * Hook::COUNT),
    // A ring buffer has no key or value; its size is its byte count.
    spec(DENIALS_MAP, MapType::RingBuf, 0, 0, DENIALS_BYTES),
    spec(FLOWS_MAP, MapType::LruHash, size_of::<SockKey>(), size_of::<FlowRecord>(), MAX_SOCKETS),
    spec(FLOW_EVENTS_MAP, MapType::RingBuf, 0, 0, FLOW_EVENTS_BYTES),
    spec(TELEMETRY_MAP, MapType::Array, 4, 4, 1),
    spec(TRACE_LAYOUT_MAP, MapType::Array, 4, size_of::<TraceLayout>(), 1),
    spec(UNREAD_MAP, MapType::LruHash, size_of::<SockKey>(), size_of::<Unread>(), MAX_SOCKETS),
    spec(FLOW_CONTROL_MAP, MapType::Array, 4, size_of::<FlowControl>(), 1),
];

/// The cgroup programs of a build, each held by one pinned link (sk_msg lives with `SOCKETS`).
pub fn linked_programs(variant: Variant) -> [&'static str; 12] {
    [
        variant.setsockopt(),
        variant.programs().1,
        "mesh_connect4",
        "mesh_connect6",
        "mesh_getpeername4",
        "mesh_getpeername6",
        "mesh_sendmsg4",
        "mesh_sendmsg6",
        "mesh_recvmsg4",
        "mesh_recvmsg6",
        "mesh_ingress",
        variant.telemetry(),
    ]
}

/// The read counter (fexit, see the kernel side's `unread.rs`), pinned as `link-mesh_unread`
/// where the kernel lets it attach. Optional: without it the mesh runs without flow control.
pub const UNREAD_PROGRAM: &str = "mesh_unread";

/// The pressure mark (fentry, see the kernel side's `pressure.rs`), pinned as
/// `link-mesh_pressure` where the kernel lets it attach. Optional: without it the budget
/// stays the same under TCP memory pressure.
pub const PRESSURE_PROGRAM: &str = "mesh_pressure";

/// The tracing programs of flow control, each optional (see above).
pub const FLOW_PROGRAMS: [&str; 2] = [UNREAD_PROGRAM, PRESSURE_PROGRAM];

/// Roles with a second build that refuses with ECONNREFUSED instead of EPERM
/// (`bpf_set_retval`, 5.18): (role, that build). The link is pinned under the role's name
/// whichever build the kernel took.
pub const REFUSED_BUILDS: [(&str, &str); 4] = [
    ("mesh_connect4", "mesh_connect4_refused"),
    ("mesh_connect6", "mesh_connect6_refused"),
    ("mesh_sendmsg4", "mesh_sendmsg4_refused"),
    ("mesh_sendmsg6", "mesh_sendmsg6_refused"),
];
// ANCHOR_END: layout

/// This build's folder under `pin_dir`.
pub fn layout_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("layout-{LAYOUT_VERSION}"))
}

pub(crate) fn link_pin(layout: &Path, program: &str) -> PathBuf {
    layout.join(format!("link-{program}"))
}

pub(crate) fn cgroup_marker(layout: &Path, cgroup_id: u64) -> PathBuf {
    layout.join(format!("cgroup-{cgroup_id}"))
}

/// A directory (bpffs holds no plain files) saying which engine loaded the redirect; absent for
/// aya, the default.
pub(crate) fn engine_marker(layout: &Path, engine: Engine) -> Option<PathBuf> {
    (engine != Engine::Aya).then(|| layout.join(format!("engine-{}", engine.name())))
}

/// The id the kernel gives a cgroup v2 directory (its inode number).
pub fn cgroup_id(cgroup: &Path) -> Result<u64, MeshError> {
    fs::metadata(cgroup)
        .map(|m| m.ino())
        .map_err(|source| MeshError::Cgroup { path: cgroup.to_owned(), source })
}

/// What `pin_dir` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing of the mesh.
    Nothing,
    /// A complete install of this layout.
    Complete { variant: Variant, cgroup_id: u64, engine: Engine },
    /// Pins of this layout without the completion marker: an agent died while installing.
    Partial,
    /// Pins of another layout (`layout-N`, or the unversioned maps of the first agents).
    Other { what: String },
}

/// Looks at `pin_dir` without opening anything.
pub fn find(pin_dir: &Path) -> Found {
    let Ok(entries) = fs::read_dir(pin_dir) else { return Found::Nothing };
    let ours = format!("layout-{LAYOUT_VERSION}");
    let mut have_ours = false;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ours {
            have_ours = true;
        } else if name.starts_with("layout-") || MAPS.iter().any(|m| m.name == name) {
            return Found::Other { what: name };
        }
    }
    if !have_ours {
        return Found::Nothing;
    }
    let layout = layout_dir(pin_dir);
    let marker = fs::read_dir(&layout).into_iter().flatten().flatten().find_map(|e| {
        e.file_name().to_string_lossy().strip_prefix("cgroup-").and_then(|id| id.parse::<u64>().ok())
    });
    let variant =
        [Variant::Netns, Variant::NoNetns].into_iter().find(|v| link_pin(&layout, v.programs().1).exists());
    match (marker, variant) {
        (Some(cgroup_id), Some(variant))
            if MAPS.iter().all(|m| layout.join(m.name).exists())
                && linked_programs(variant).iter().all(|p| link_pin(&layout, p).exists()) =>
        {
            let engine = [Engine::Libbpf]
                .into_iter()
                .find(|e| engine_marker(&layout, *e).is_some_and(|m| m.is_dir()))
                .unwrap_or(Engine::Aya);
            Found::Complete { variant, cgroup_id, engine }
        }
        _ => Found::Partial,
    }
}

// ANCHOR: uninstall
/// Removes the mesh under `pin_dir`, at once and for every layout found (`layout-N`, and the
/// unversioned maps of the first agents): each pinned link is detached (`BPF_LINK_DETACH`: no new
/// connection is balanced or inserted from here on), the sockhash is emptied (its sockets get
/// their TCP operations back now, not when the map is freed), then the pins are removed and
/// `pin_dir` too if that left it empty. Returns the pins removed.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<PathBuf>, MeshError> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(pin_dir) else { return Ok(removed) };
    for e in entries.flatten() {
        let (name, path) = (e.file_name().to_string_lossy().into_owned(), e.path());
        if name.starts_with("layout-") && path.is_dir() {
            detach_links(&path);
            empty_sockhash(&path.join(SOCKETS_MAP));
            remove_tree(&path, &mut removed)?;
        } else if MAPS.iter().any(|m| m.name == name) {
            fs::remove_file(&path).map_err(|source| MeshError::Io {
                what: "cannot unpin",
                path: path.clone(),
                source,
            })?;
            removed.push(path);
        }
    }
    // Shared with something else: leave it.
    let _ = fs::remove_dir(pin_dir);
    Ok(removed)
}
// ANCHOR_END: uninstall

/// Detaches every pinned link in `layout` (best effort: removing the pin detaches it later
/// anyway).
fn detach_links(layout: &Path) {
    use std::os::fd::AsFd as _;
    for e in fs::read_dir(layout).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("link-")
            && let Ok(link) = crate::sys::obj_get(&e.path())
        {
            let _ = crate::sys::link_detach(link.as_fd());
        }
    }
}

/// Deletes every socket from the pinned sockhash at `path`, if it is one of ours.
fn empty_sockhash(path: &Path) {
    let Ok(data) = MapData::from_pin(path) else { return };
    let Ok(map) = Map::from_map_data(data) else { return };
    let Ok(mut hash) = aya::maps::SockHash::<MapData, SockKey>::try_from(map) else { return };
    let keys: Vec<SockKey> = hash.keys().flatten().collect();
    for k in keys {
        let _ = hash.remove(&k);
    }
}

fn remove_tree(dir: &Path, removed: &mut Vec<PathBuf>) -> Result<(), MeshError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| MeshError::Io { what, path, source }
    };
    for e in fs::read_dir(dir).map_err(io("cannot read", dir))? {
        let path = e.map_err(io("cannot read", dir))?.path();
        if path.is_dir() {
            remove_tree(&path, removed)?;
        } else {
            fs::remove_file(&path).map_err(io("cannot unpin", &path))?;
            removed.push(path);
        }
    }
    fs::remove_dir(dir).map_err(io("cannot remove", dir))
}

/// The running mesh's maps, opened from their pins: what user space reads and writes, whether
/// the agent that installed the mesh is this process, another one, or dead.
///
/// Holding it keeps the maps alive: drop it before uninstalling.
pub struct Pinned {
    layout: PathBuf,
    variant: Variant,
    cgroup_id: u64,
    engine: Engine,
    maps: HashMap<&'static str, Map>,
}

impl Pinned {
    /// Opens a complete install of this layout under `pin_dir`, checking every map's definition.
    pub fn open(pin_dir: &Path) -> Result<Pinned, MeshError> {
        let (variant, cgroup_id, engine) = match find(pin_dir) {
            Found::Complete { variant, cgroup_id, engine } => (variant, cgroup_id, engine),
            Found::Nothing => return Err(MeshError::NotInstalled { path: pin_dir.to_owned() }),
            Found::Partial => return Err(MeshError::Partial { pin_dir: pin_dir.to_owned() }),
            Found::Other { what } => {
                return Err(MeshError::Layout { pin_dir: pin_dir.to_owned(), found: what });
            }
        };
        let layout = layout_dir(pin_dir);
        let mut maps = HashMap::new();
        for s in MAPS {
            let path = layout.join(s.name);
            let data = MapData::from_pin(&path).map_err(|source| MeshError::Map { map: s.name, source })?;
            check(&data, &s, &path, pin_dir)?;
            maps.insert(
                s.name,
                Map::from_map_data(data).map_err(|source| MeshError::Map { map: s.name, source })?,
            );
        }
        Ok(Pinned { layout, variant, cgroup_id, engine, maps })
    }

    /// Which build of the programs is attached.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Which engine loaded the redirect (aya, or libbpf with the C twin).
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The cgroup the programs serve.
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    /// The errno of a connect() or sendto() refused for want of a backend: which build of
    /// connect4 the kernel runs (the kernel keeps 15 characters of a program's name).
    pub fn refusal(&self) -> &'static str {
        let name = link_program(&link_pin(&self.layout, "mesh_connect4")).map(|(_, _, n)| n);
        if name.is_some_and(|n| n.starts_with("mesh_connect4_r")) { "ECONNREFUSED" } else { "EPERM" }
    }

    /// The attached programs and what the build means on this kernel.
    pub fn describe(&self) -> Vec<String> {
        let (msg, ops) = self.variant.programs();
        let linked = linked_programs(self.variant);
        let (msg, ops) = match self.engine {
            Engine::Aya => (
                format!(
                    "sk_msg: {msg} attached to the sockhash; it tail-calls {} for HTTP rules",
                    self.variant.http()
                ),
                format!("sock_ops: {ops} attached to the cgroup"),
            ),
            Engine::Libbpf => (
                format!(
                    "sk_msg: {msg} of the C twin (libbpf) attached to the sockhash: redirect only, no per-message policy, HTTP judge or telemetry bytes"
                ),
                format!("sock_ops: {ops} of the C twin (libbpf) attached to the cgroup"),
            ),
        };
        vec![
            msg,
            format!("cgroup/setsockopt: {} attached to the cgroup", self.variant.setsockopt()),
            ops,
            format!(
                "cgroup/connect, getpeername, sendmsg, recvmsg: {} attached to the cgroup",
                linked[2..10].join(", ")
            ),
            format!("cgroup_skb/ingress: {} attached to the cgroup", linked[10]),
            format!("sock_ops (telemetry): {} attached to the cgroup", linked[11]),
            format!("a service without backends refuses connect() and sendto() with {}", self.refusal()),
            match self.variant {
                Variant::Netns => "loopback sockets keyed by network namespace cookie and 4-tuple".into(),
                Variant::NoNetns => "this kernel cannot give sock_ops/sk_msg the netns cookie (before 5.15): loopback-to-loopback connections are not redirected".into(),
            },
        ]
    }

    /// The folder holding the pins.
    pub fn layout(&self) -> &Path {
        &self.layout
    }

    fn map(&self, name: &'static str) -> &Map {
        self.maps.get(name).expect("every map of MAPS but a taken DENIALS is opened")
    }

    /// Current counter totals (summed over CPUs).
    pub fn counters(&self) -> Result<Counters, MeshError> {
        let err = |source| MeshError::Map { map: COUNTERS_MAP, source };
        let array: PerCpuArray<&MapData, u64> = self.map(COUNTERS_MAP).try_into().map_err(err)?;
        let mut out = Counters::default();
        for c in Counter::ALL {
            out.set(c, array.get(&(c as u32), 0).map_err(err)?.iter().sum());
        }
        Ok(out)
    }

    /// Tells the datapath that pods run sidecar proxies whose transparent outbound listener is
    /// `port` (0: no sidecars), so app <-> sidecar hops are redirected too.
    pub fn set_sidecar_port(&mut self, port: u16) -> Result<(), MeshError> {
        let err = |source| MeshError::Map { map: SIDECAR_MAP, source };
        let map = self.maps.get_mut(SIDECAR_MAP).expect("opened");
        let mut array: Array<&mut MapData, u32> = map.try_into().map_err(err)?;
        array.set(0, u32::from(port), 0).map_err(err)
    }

    /// Makes the service maps hold exactly `wanted`, by difference (see [`services`]).
    pub fn set_services(
        &mut self,
        wanted: &BTreeMap<ServiceKey, Vec<Backend>>,
    ) -> Result<services::Applied, MeshError> {
        let [Some(s), Some(b)] = self.maps.get_disjoint_mut([SERVICES_MAP, BACKENDS_MAP]) else {
            unreachable!("every map of MAPS is opened")
        };
        services::reconcile(s, b, wanted)
    }

    /// Makes the policy maps hold exactly `wanted`, by difference: new identities and allow
    /// entries first, then the destinations to police, then what is gone (so a flow that stays
    /// allowed is never denied in between).
    pub fn set_policy(
        &mut self,
        wanted: &crate::policy::Wanted,
    ) -> Result<crate::policy::Applied, MeshError> {
        let [Some(ids), Some(cgroups), Some(policy), Some(policed), Some(http)] = self
            .maps
            .get_disjoint_mut([IDENTITIES_MAP, CGROUP_IDS_MAP, POLICY_MAP, POLICED_MAP, HTTP_RULES_MAP])
        else {
            unreachable!("every map of MAPS is opened")
        };
        let applied = crate::policy::reconcile([ids, cgroups, policy, policed, http], wanted)?;
        // Established connections are judged again at their next message (sk_msg) once the
        // generation moves; it moves only when something changed.
        if applied.added + applied.removed > 0 {
            let err = |source| MeshError::Map { map: POLICY_GEN_MAP, source };
            let map = self.maps.get_mut(POLICY_GEN_MAP).expect("opened");
            let mut array: Array<&mut MapData, u32> = map.try_into().map_err(err)?;
            let generation = array.get(&0, 0).map_err(err)?;
            array.set(0, generation.wrapping_add(1).max(1), 0).map_err(err)?;
        }
        Ok(applied)
    }

    /// Whether the HTTP judge is in its program array (without it, every request on a
    /// connection whose rule has HTTP matches is denied).
    pub fn http_judge_present(&self) -> Result<bool, MeshError> {
        let err = |source| MeshError::Map { map: HTTP_PROGS_MAP, source };
        let progs: aya::maps::ProgramArray<&MapData> = self.map(HTTP_PROGS_MAP).try_into().map_err(err)?;
        Ok(progs.indices().next().is_some())
    }

    /// The policy generation (0: no policy was ever applied).
    pub fn policy_generation(&self) -> Result<u32, MeshError> {
        let err = |source| MeshError::Map { map: POLICY_GEN_MAP, source };
        let array: Array<&MapData, u32> = self.map(POLICY_GEN_MAP).try_into().map_err(err)?;
        array.get(&0, 0).map_err(err)
    }

    /// Verdicts counted so far, summed over CPUs: (rule number, hook) -> count, nonzero only;
    /// rule 0 holds the denials.
    pub fn verdicts(&self) -> Result<BTreeMap<(u32, u32), u64>, MeshError> {
        let err = |source| MeshError::Map { map: VERDICTS_MAP, source };
        let array: PerCpuArray<&MapData, u64> = self.map(VERDICTS_MAP).try_into().map_err(err)?;
        let mut out = BTreeMap::new();
        for (i, per_cpu) in array.iter().enumerate() {
            let n: u64 = per_cpu.map_err(err)?.iter().sum();
            if n > 0 {
                let i = i as u32;
                out.insert((i / Hook::COUNT, i % Hook::COUNT + 1), n);
            }
        }
        Ok(out)
    }

    /// The ring buffer of denials, for one reader (the running agent).
    pub fn take_denials(&mut self) -> Option<Map> {
        self.maps.remove(DENIALS_MAP)
    }

    /// The ring buffer of closed flows, for one reader (the running agent).
    pub fn take_flow_events(&mut self) -> Option<Map> {
        self.maps.remove(FLOW_EVENTS_MAP)
    }

    /// Switches telemetry (flow records) on or off; sockets established while it is off have
    /// no record.
    pub fn set_telemetry(&mut self, on: bool) -> Result<(), MeshError> {
        let err = |source| MeshError::Map { map: TELEMETRY_MAP, source };
        let map = self.maps.get_mut(TELEMETRY_MAP).expect("opened");
        let mut array: Array<&mut MapData, u32> = map.try_into().map_err(err)?;
        array.set(0, u32::from(on), 0).map_err(err)
    }

    /// Whether telemetry is on.
    pub fn telemetry(&self) -> Result<bool, MeshError> {
        let err = |source| MeshError::Map { map: TELEMETRY_MAP, source };
        let array: Array<&MapData, u32> = self.map(TELEMETRY_MAP).try_into().map_err(err)?;
        Ok(array.get(&0, 0).map_err(err)? != 0)
    }

    /// Sets the budget of flow control (0: off), keeping the rest of its settings.
    pub fn set_flow_budget(&mut self, budget: u32) -> Result<(), MeshError> {
        let flow = self.flow_control()?;
        self.set_flow_control(FlowControl { budget, ..flow })
    }

    /// Sets how sk_msg bounds the redirect queues (see `mesh_common::FlowControl`).
    pub fn set_flow_control(&mut self, flow: FlowControl) -> Result<(), MeshError> {
        let err = |source| MeshError::Map { map: FLOW_CONTROL_MAP, source };
        let map = self.maps.get_mut(FLOW_CONTROL_MAP).expect("opened");
        let mut array: Array<&mut MapData, FlowControl> = map.try_into().map_err(err)?;
        array.set(0, flow, 0).map_err(err)
    }

    /// How sk_msg bounds the redirect queues (budget 0: it does not).
    pub fn flow_control(&self) -> Result<FlowControl, MeshError> {
        let err = |source| MeshError::Map { map: FLOW_CONTROL_MAP, source };
        let array: Array<&MapData, FlowControl> = self.map(FLOW_CONTROL_MAP).try_into().map_err(err)?;
        array.get(&0, 0).map_err(err)
    }

    /// How many entries each map holds, beside its capacity.
    pub fn fill(&self) -> Vec<MapFill> {
        MAPS.iter()
            .map(|s| {
                let entries = match s.map_type {
                    MapType::Array | MapType::PerCpuArray => Ok(s.max_entries as usize),
                    // Bytes, not entries; what is unread is the agent's business.
                    MapType::RingBuf => Err("a ring buffer holds bytes, not entries".to_owned()),
                    _ => crate::sys::obj_get(&self.layout.join(s.name))
                        .and_then(|fd| crate::sys::count_keys(fd.as_fd(), s.key_size as usize))
                        .map_err(|e| e.to_string()),
                };
                MapFill {
                    name: s.name,
                    map_type: format!("{:?}", s.map_type),
                    entries: entries.ok(),
                    max_entries: s.max_entries,
                }
            })
            .collect()
    }
}

/// The link pinned at `path`: its id, its program's id and the program's name (as the kernel
/// keeps it: 15 characters).
pub fn link_program(path: &Path) -> Option<(u32, u32, String)> {
    let link: aya::programs::links::FdLink = aya::programs::links::PinnedLink::from_pin(path).ok()?.into();
    let info = link.info().ok()?;
    let name = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == info.program_id())
        .map(|p| p.name_as_str().unwrap_or("?").to_owned())
        .unwrap_or_default();
    Some((info.id(), info.program_id(), name))
}

/// One map's occupancy (`entries` is `None` when it could not be counted).
#[derive(Debug, Clone, Serialize)]
pub struct MapFill {
    pub name: &'static str,
    pub map_type: String,
    pub entries: Option<usize>,
    pub max_entries: u32,
}

/// Refuses a pinned map whose definition is not this build's.
fn check(data: &MapData, s: &MapSpec, path: &Path, pin_dir: &Path) -> Result<(), MeshError> {
    let info = data.info().map_err(|source| MeshError::Map { map: s.name, source })?;
    let have = (info.map_type().ok(), info.key_size(), info.value_size(), info.max_entries());
    let want = (Some(s.map_type), s.key_size, s.value_size, s.max_entries);
    if have != want {
        return Err(MeshError::MapMismatch {
            path: path.to_owned(),
            pin_dir: pin_dir.to_owned(),
            found: describe(have),
            expected: describe(want),
        });
    }
    Ok(())
}

fn describe((t, k, v, n): (Option<MapType>, u32, u32, u32)) -> String {
    let t = t.map_or_else(|| "unknown type".to_owned(), |t| format!("{t:?}"));
    format!("{t}, key {k} B, value {v} B, {n} entries")
}
