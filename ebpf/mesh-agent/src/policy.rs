//! Policy in the maps: pod label sets become identities, each pod's addresses and cgroups map to
//! its identity, every identity an ingress rule names as destination (an egress rule as source,
//! an `isolate` entry either way) becomes isolated that way (default deny), and the flows that
//! both ends' rules allow become allow-list entries. [`reconcile`] writes by difference.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt as _,
};

use aya::maps::{
    HashMap, Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use mesh_common::{
    AF_INET, AF_INET6, CGROUP_IDS_MAP, FIRST_POD_IDENTITY, HTTP_METHOD_MAX, HTTP_PATH_MAX, HTTP_RULES_MAP,
    HttpMatch, HttpRules, IDENTITIES_MAP, IPPROTO_TCP, IPPROTO_UDP, IdentityAddr, MAX_HTTP_MATCHES,
    POLICED_EGRESS, POLICED_INGRESS, POLICED_MAP, POLICY_MAP, PolicyKey, WORLD_IDENTITY,
};
use serde::Serialize;

use crate::{
    MeshError,
    meshfile::{Direction, HttpMatchDef, MeshFile, PodAddrs, Protocol, words},
};

/// What the policy maps must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// (prefix bits, address) -> identity.
    pub identities: BTreeMap<(u32, IdentityAddr), u32>,
    pub cgroups: BTreeMap<u64, u32>,
    /// Allowed flow -> rule number (from 1).
    pub allow: BTreeMap<PolicyKey, u32>,
    /// Isolated identity -> `POLICED_INGRESS` | `POLICED_EGRESS`.
    pub policed: BTreeMap<u32, u32>,
    /// Rule number -> its HTTP matches (rules that have some).
    pub http: BTreeMap<u32, HttpRules>,
    /// Identity -> the pods that have it (for messages).
    pub members: BTreeMap<u32, Vec<String>>,
}

impl Wanted {
    /// Whether these maps let `from` reach `to` on `port` over `protocol`: the datapath's
    /// verdict (`mesh-ebpf/src/policy.rs`, `judge`), for tests and tools.
    pub fn allows(&self, from: u32, to: u32, port: u32, protocol: u32) -> bool {
        let isolated = |id: u32, flag: u32| self.policed.get(&id).is_some_and(|f| f & flag != 0);
        if !isolated(to, POLICED_INGRESS) && !isolated(from, POLICED_EGRESS) {
            return true;
        }
        let exact = PolicyKey { from, to, port, protocol };
        self.allow.contains_key(&exact) || self.allow.contains_key(&PolicyKey { port: 0, ..exact })
    }

    /// The identity of the pod named `name`.
    pub fn identity_of(&self, name: &str) -> Option<u32> {
        self.members.iter().find(|(_, m)| m.iter().any(|n| n == name)).map(|(id, _)| *id)
    }
}

/// What [`reconcile`] wrote: entries added and removed over the four maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub added: usize,
    pub removed: usize,
}

/// Ports a side allows between two identities over one protocol: port (0: every port) -> the
/// rule that allows it.
type Ports = BTreeMap<u32, u32>;

// ANCHOR: resolve
/// Identities and allow-list for `mf`'s rules over `pods`. A pod's identity is its label set's:
/// pods with the same labels share one.
pub fn resolve(mf: &MeshFile, pods: &[PodAddrs]) -> Wanted {
    let mut w = Wanted::default();
    let sets: BTreeSet<&BTreeMap<String, String>> = pods.iter().map(|p| &p.labels).collect();
    let id_of = |labels: &BTreeMap<String, String>| {
        FIRST_POD_IDENTITY + sets.iter().position(|s| *s == labels).expect("every pod's set is in") as u32
    };
    for p in pods {
        let id = id_of(&p.labels);
        w.members.entry(id).or_default().push(p.name.clone());
        w.identities.insert(
            (64, IdentityAddr { family: AF_INET, ip: [u32::from_ne_bytes(p.ipv4.octets()), 0, 0, 0] }),
            id,
        );
        if let Some(v6) = p.ipv6 {
            w.identities.insert((160, IdentityAddr { family: AF_INET6, ip: words(v6) }), id);
        }
        for ino in p.cgroups.iter().filter_map(|c| std::fs::metadata(c).ok()).map(|m| m.ino()) {
            w.cgroups.insert(ino, id);
        }
    }
    let matching = |sel: &BTreeMap<String, String>| -> BTreeSet<u32> {
        pods.iter()
            .filter(|p| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .map(|p| id_of(&p.labels))
            .collect()
    };
    let peers = |sel: &BTreeMap<String, String>, outside: bool| {
        let mut ids = matching(sel);
        if outside {
            ids.insert(WORLD_IDENTITY);
        }
        ids
    };
    for i in &mf.isolate {
        let i = i.get_ref();
        let flags = if i.ingress { POLICED_INGRESS } else { 0 } | if i.egress { POLICED_EGRESS } else { 0 };
        for id in matching(&i.pods) {
            *w.policed.entry(id).or_default() |= flags;
        }
    }
    // What each side's rules grant: (from, to, protocol) -> ports, ingress [0] and egress [1].
    let mut grants: [BTreeMap<(u32, u32, u32), Ports>; 2] = Default::default();
    for (i, rule) in mf.policy.iter().enumerate() {
        let (r, number) = (rule.get_ref(), i as u32 + 1);
        let protocol = if r.protocol == Protocol::Udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let ports: Vec<u32> =
            if r.ports.is_empty() { vec![0] } else { r.ports.iter().map(|p| u32::from(*p)).collect() };
        let (froms, tos, side) = match r.direction {
            Direction::Ingress => (peers(&r.from, r.outside), matching(&r.to), 0),
            Direction::Egress => (matching(&r.from), peers(&r.to, r.outside), 1),
        };
        let (isolated, flag) = if side == 0 { (&tos, POLICED_INGRESS) } else { (&froms, POLICED_EGRESS) };
        for &id in isolated {
            *w.policed.entry(id).or_default() |= flag;
        }
        for &from in &froms {
            for &to in &tos {
                let granted = grants[side].entry((from, to, protocol)).or_default();
                for &port in &ports {
                    granted.entry(port).or_insert(number);
                }
            }
        }
        if !r.http.is_empty() {
            w.http.insert(number, http_rules(&r.http));
        }
    }
    // A flow passes when the destination's ingress and the source's egress both let it: a side
    // that is not isolated lets everything, an isolated side what its rules grant.
    let none = Ports::new();
    let isolated = |id: u32, flag: u32| w.policed.get(&id).is_some_and(|f| f & flag != 0);
    let flows: BTreeSet<(u32, u32, u32)> = grants.iter().flat_map(|g| g.keys().copied()).collect();
    let mut allow = BTreeMap::new();
    for flow @ (from, to, protocol) in flows {
        let ingress = isolated(to, POLICED_INGRESS).then(|| grants[0].get(&flow).unwrap_or(&none));
        let egress = isolated(from, POLICED_EGRESS).then(|| grants[1].get(&flow).unwrap_or(&none));
        for (port, rule) in both(ingress, egress) {
            allow.insert(PolicyKey { from, to, port, protocol }, rule);
        }
    }
    w.allow = allow;
    w
}

/// The ports two sides both allow (None: the side is not isolated and allows every port); the
/// ingress side's rule numbers win (its HTTP matches apply).
fn both(ingress: Option<&Ports>, egress: Option<&Ports>) -> Ports {
    match (ingress, egress) {
        (None, None) => Ports::new(),
        (Some(one), None) | (None, Some(one)) => one.clone(),
        (Some(i), Some(e)) => {
            let mut out = Ports::new();
            for (&port, &rule) in i {
                if port == 0 {
                    out.extend(e.keys().map(|&p| (p, rule)));
                } else if e.contains_key(&port) || e.contains_key(&0) {
                    out.insert(port, rule);
                }
            }
            out
        }
    }
}

/// A rule's HTTP matches as the kernel reads them (checked by the mesh file's parser: at most
/// `MAX_HTTP_MATCHES`, each method and path within its array).
pub fn http_rules(defs: &[HttpMatchDef]) -> HttpRules {
    let empty = HttpMatch {
        method: [0; HTTP_METHOD_MAX],
        method_mask: [0; HTTP_METHOD_MAX],
        method_len: 0,
        path_len: 0,
        path: [0; HTTP_PATH_MAX],
        path_mask: [0; HTTP_PATH_MAX],
    };
    let mut rules =
        HttpRules { count: defs.len().min(MAX_HTTP_MATCHES) as u32, matches: [empty; MAX_HTTP_MATCHES] };
    for (slot, d) in rules.matches.iter_mut().zip(defs) {
        slot.method[..d.method.len()].copy_from_slice(d.method.as_bytes());
        slot.method_mask[..d.method.len()].fill(0xff);
        slot.method_len = d.method.len() as u32;
        slot.path[..d.path.len()].copy_from_slice(d.path.as_bytes());
        slot.path_mask[..d.path.len()].fill(0xff);
        slot.path_len = d.path.len() as u32;
    }
    rules
}
// ANCHOR_END: resolve

/// Brings the five maps to `w`: additions first, removals last (HTTP matches go in before the
/// allow entries that use them, and out after).
pub fn reconcile(
    [ids, cgroups, policy, policed, http]: [&mut Map; 5],
    w: &Wanted,
) -> Result<Applied, MeshError> {
    let err = |map: &'static str| move |source| MeshError::Map { map, source };
    let mut ids: LpmTrie<&mut MapData, IdentityAddr, u32> = ids.try_into().map_err(err(IDENTITIES_MAP))?;
    let mut cgroups: HashMap<&mut MapData, u64, u32> = cgroups.try_into().map_err(err(CGROUP_IDS_MAP))?;
    let mut policy: HashMap<&mut MapData, PolicyKey, u32> = policy.try_into().map_err(err(POLICY_MAP))?;
    let mut policed: HashMap<&mut MapData, u32, u32> = policed.try_into().map_err(err(POLICED_MAP))?;
    let mut http: HashMap<&mut MapData, u32, HttpRules> = http.try_into().map_err(err(HTTP_RULES_MAP))?;
    let mut out = Applied::default();
    let have_http: BTreeMap<u32, HttpRules> =
        http.iter().collect::<Result<_, _>>().map_err(err(HTTP_RULES_MAP))?;
    for (rule, h) in &w.http {
        if have_http.get(rule) != Some(h) {
            http.insert(rule, h, 0).map_err(err(HTTP_RULES_MAP))?;
            out.added += 1;
        }
    }

    let have_ids: BTreeMap<(u32, IdentityAddr), u32> = ids
        .iter()
        .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
        .collect::<Result<_, _>>()
        .map_err(err(IDENTITIES_MAP))?;
    for (k, v) in &w.identities {
        if have_ids.get(k) != Some(v) {
            ids.insert(&Key::new(k.0, k.1), *v, 0).map_err(err(IDENTITIES_MAP))?;
            out.added += 1;
        }
    }
    let have_cg: BTreeMap<u64, u32> =
        cgroups.iter().collect::<Result<_, _>>().map_err(err(CGROUP_IDS_MAP))?;
    for (k, v) in &w.cgroups {
        if have_cg.get(k) != Some(v) {
            cgroups.insert(k, v, 0).map_err(err(CGROUP_IDS_MAP))?;
            out.added += 1;
        }
    }
    let have_allow: BTreeMap<PolicyKey, u32> =
        policy.iter().collect::<Result<_, _>>().map_err(err(POLICY_MAP))?;
    for (k, v) in &w.allow {
        if have_allow.get(k) != Some(v) {
            policy.insert(k, v, 0).map_err(err(POLICY_MAP))?;
            out.added += 1;
        }
    }
    let have_policed: BTreeMap<u32, u32> =
        policed.iter().collect::<Result<_, _>>().map_err(err(POLICED_MAP))?;
    for (id, flags) in &w.policed {
        if have_policed.get(id) != Some(flags) {
            policed.insert(id, flags, 0).map_err(err(POLICED_MAP))?;
            out.added += 1;
        }
    }
    // Removals: isolation first, then allow entries, then identities.
    for id in have_policed.keys().filter(|id| !w.policed.contains_key(id)) {
        policed.remove(id).map_err(err(POLICED_MAP))?;
        out.removed += 1;
    }
    for k in have_allow.keys().filter(|k| !w.allow.contains_key(k)) {
        policy.remove(k).map_err(err(POLICY_MAP))?;
        out.removed += 1;
    }
    for k in have_cg.keys().filter(|k| !w.cgroups.contains_key(k)) {
        cgroups.remove(k).map_err(err(CGROUP_IDS_MAP))?;
        out.removed += 1;
    }
    for k in have_ids.keys().filter(|k| !w.identities.contains_key(k)) {
        ids.remove(&Key::new(k.0, k.1)).map_err(err(IDENTITIES_MAP))?;
        out.removed += 1;
    }
    for rule in have_http.keys().filter(|r| !w.http.contains_key(r)) {
        http.remove(rule).map_err(err(HTTP_RULES_MAP))?;
        out.removed += 1;
    }
    Ok(out)
}
