//! Policy in the maps: pod label sets become identities, each pod's addresses and cgroup map to
//! its identity, each rule becomes allow-list entries, and every identity a rule names as
//! destination becomes policed (default deny). [`reconcile`] writes by difference.
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
    POLICED_MAP, POLICY_MAP, PolicyKey,
};
use serde::Serialize;

use crate::{
    MeshError,
    meshfile::{HttpMatchDef, MeshFile, PodAddrs, Protocol, words},
};

/// What the policy maps must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// (prefix bits, address) -> identity.
    pub identities: BTreeMap<(u32, IdentityAddr), u32>,
    pub cgroups: BTreeMap<u64, u32>,
    /// Allowed flow -> rule number (from 1).
    pub allow: BTreeMap<PolicyKey, u32>,
    pub policed: BTreeSet<u32>,
    /// Rule number -> its HTTP matches (rules that have some).
    pub http: BTreeMap<u32, HttpRules>,
    /// Identity -> the pods that have it (for messages).
    pub members: BTreeMap<u32, Vec<String>>,
}

/// What [`reconcile`] wrote: entries added and removed over the four maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub added: usize,
    pub removed: usize,
}

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
        w.identities.insert((160, IdentityAddr { family: AF_INET6, ip: words(p.ipv6) }), id);
        if let Some(ino) = p.cgroup.as_ref().and_then(|c| std::fs::metadata(c).ok()).map(|m| m.ino()) {
            w.cgroups.insert(ino, id);
        }
    }
    let matching = |sel: &BTreeMap<String, String>| -> BTreeSet<u32> {
        pods.iter()
            .filter(|p| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .map(|p| id_of(&p.labels))
            .collect()
    };
    for (i, rule) in mf.policy.iter().enumerate() {
        let r = rule.get_ref();
        let protocol = if r.protocol == Protocol::Udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let ports: Vec<u32> =
            if r.ports.is_empty() { vec![0] } else { r.ports.iter().map(|p| u32::from(*p)).collect() };
        let to = matching(&r.to);
        for &from in &matching(&r.from) {
            for &dst in &to {
                for &port in &ports {
                    w.allow.entry(PolicyKey { from, to: dst, port, protocol }).or_insert(i as u32 + 1);
                }
            }
        }
        w.policed.extend(to);
        if !r.http.is_empty() {
            w.http.insert(i as u32 + 1, http_rules(&r.http));
        }
    }
    w
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
    let have_policed: BTreeSet<u32> = policed.keys().collect::<Result<_, _>>().map_err(err(POLICED_MAP))?;
    for id in w.policed.difference(&have_policed) {
        policed.insert(id, 1, 0).map_err(err(POLICED_MAP))?;
        out.added += 1;
    }
    // Removals: policing first, then allow entries, then identities.
    for id in have_policed.difference(&w.policed) {
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
