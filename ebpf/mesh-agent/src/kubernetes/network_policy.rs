//! NetworkPolicies (networking.k8s.io/v1) -> the mesh file's `[[policy]]` and `[[isolate]]`.
//!
//! - The pods a policy's `podSelector` picks (in its namespace) are isolated for each of its
//!   `policyTypes` (Ingress always when none are given, Egress when it has egress rules): an
//!   `[[isolate]]` entry per identity, so a policy with no rules denies everything that way.
//! - Each ingress rule becomes rules from each peer identity to each picked identity; each
//!   egress rule from each picked identity to each peer identity. Selectors (labels and
//!   expressions, pods and namespaces) are resolved here over the pods the API lists, and the
//!   rules name identities exactly (`sidecarless.io/identity`): the file is rendered again
//!   whenever a pod, namespace or policy changes.
//! - A rule without peers lets everything in (or out), the world outside the cluster too
//!   (`outside = true`); without ports, every port of TCP and UDP.
//! - Not enforced, and said in a warning: `ipBlock` peers, named ports, SCTP, port ranges wider
//!   than 1,024. Each fails closed: the rule lets nothing through that way.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        core::v1::Namespace,
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use serde::Serialize;

use super::pods::{IDENTITY_LABEL, NAMESPACE_LABEL};
use crate::meshfile::PodAddrs;

/// The widest `endPort` range enforced (each port is an allow entry per pair of identities).
const MAX_RANGE: i32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleOut {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub from: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub to: BTreeMap<String, String>,
    pub direction: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub outside: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IsolateOut {
    pub pods: BTreeMap<String, String>,
    pub ingress: bool,
    pub egress: bool,
}

/// What the policies render to, and what in them is not enforced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub rules: Vec<RuleOut>,
    pub isolate: Vec<IsolateOut>,
    pub warnings: BTreeSet<String>,
}

/// Who a rule's peers are: everyone (no peers listed), or these identities.
enum Peers {
    All,
    Some(BTreeSet<String>),
}

fn exactly(identity: &str) -> BTreeMap<String, String> {
    [(IDENTITY_LABEL.to_owned(), identity.to_owned())].into()
}

// ANCHOR: selects
/// Whether `labels` satisfy `sel` (every `matchLabels` pair and every expression); an unknown
/// operator is an error.
fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    let pairs = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let mut exprs = true;
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        exprs &= match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => return Err(format!("label selector operator {other:?} is unknown")),
        };
    }
    Ok(pairs && exprs)
}
// ANCHOR_END: selects

/// The rules for every policy over `pods` (the pods file: their labels include the namespace
/// and identity labels, which no selector is meant to see).
pub fn render(
    policies: &BTreeMap<String, NetworkPolicy>,
    pods: &[PodAddrs],
    namespaces: &BTreeMap<String, Namespace>,
) -> Rendered {
    let mut out = Rendered::default();
    let warnings = std::cell::RefCell::new(BTreeSet::new());
    let mut isolated: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    // Each pod: its namespace, its own labels, its identity.
    let pods: Vec<(&str, BTreeMap<String, String>, &str)> = pods
        .iter()
        .map(|p| {
            let mut own = p.labels.clone();
            own.remove(NAMESPACE_LABEL);
            own.remove(IDENTITY_LABEL);
            (p.labels[NAMESPACE_LABEL].as_str(), own, p.labels[IDENTITY_LABEL].as_str())
        })
        .collect();
    for (name, np) in policies {
        let Some(spec) = &np.spec else { continue };
        let ns = np.metadata.namespace.as_deref().unwrap_or("default");
        let warn = |w: String| {
            warnings.borrow_mut().insert(format!("NetworkPolicy {name}: {w}"));
        };
        let pick = |ns_sel: Option<&LabelSelector>, pod_sel: Option<&LabelSelector>| -> BTreeSet<String> {
            let mut ids = BTreeSet::new();
            for (pod_ns, own, id) in &pods {
                let ns_ok = match ns_sel {
                    None => *pod_ns == ns,
                    Some(sel) => {
                        let labels = namespaces
                            .get(*pod_ns)
                            .and_then(|n| n.metadata.labels.clone())
                            .unwrap_or_default();
                        selects(sel, &labels).unwrap_or_else(|e| {
                            warn(e);
                            false
                        })
                    }
                };
                let pod_ok = pod_sel.is_none_or(|sel| {
                    selects(sel, own).unwrap_or_else(|e| {
                        warn(e);
                        false
                    })
                });
                if ns_ok && pod_ok {
                    ids.insert(id.to_string());
                }
            }
            ids
        };
        let everyone = LabelSelector::default();
        let picked = pick(None, Some(spec.pod_selector.as_ref().unwrap_or(&everyone)));
        let peers = |list: Option<&Vec<NetworkPolicyPeer>>| -> Peers {
            let Some(list) = list.filter(|l| !l.is_empty()) else { return Peers::All };
            let mut ids = BTreeSet::new();
            for peer in list {
                if peer.ip_block.is_some() {
                    warn("ipBlock peers are not enforced (nothing is let through by them)".into());
                    continue;
                }
                ids.extend(pick(peer.namespace_selector.as_ref(), peer.pod_selector.as_ref()));
            }
            Peers::Some(ids)
        };
        let types: Vec<&str> = match &spec.policy_types {
            Some(t) => t.iter().map(String::as_str).collect(),
            None if spec.egress.is_some() => vec!["Ingress", "Egress"],
            None => vec!["Ingress"],
        };
        let (ingress, egress) = (types.contains(&"Ingress"), types.contains(&"Egress"));
        let mut rules = Vec::new();
        if ingress {
            for r in spec.ingress.iter().flatten() {
                let from = peers(r.from.as_ref());
                rules.push(("ingress", from, r.ports.as_ref()));
            }
        }
        if egress {
            for r in spec.egress.iter().flatten() {
                let to = peers(r.to.as_ref());
                rules.push(("egress", to, r.ports.as_ref()));
            }
        }
        for id in &picked {
            let flags = isolated.entry(id.clone()).or_default();
            flags.0 |= ingress;
            flags.1 |= egress;
        }
        for (direction, peers, ports) in rules {
            for (protocol, ports) in port_sets(ports, &warn) {
                for me in &picked {
                    let rule = |peer: BTreeMap<String, String>, outside: bool| {
                        let (from, to) =
                            if direction == "ingress" { (peer, exactly(me)) } else { (exactly(me), peer) };
                        RuleOut { from, to, direction, outside, ports: ports.clone(), protocol }
                    };
                    match &peers {
                        Peers::All => out.rules.push(rule(BTreeMap::new(), true)),
                        Peers::Some(ids) => out.rules.extend(ids.iter().map(|p| rule(exactly(p), false))),
                    }
                }
            }
        }
    }
    out.isolate = isolated
        .into_iter()
        .map(|(id, (ingress, egress))| IsolateOut { pods: exactly(&id), ingress, egress })
        .collect();
    out.warnings = warnings.into_inner();
    out
}

/// A rule's ports by protocol (an empty list: every port); none listed: every port of TCP and
/// UDP. Ports that cannot be enforced are left out, with a warning.
fn port_sets(ports: Option<&Vec<NetworkPolicyPort>>, warn: &dyn Fn(String)) -> Vec<(&'static str, Vec<u16>)> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return vec![("tcp", Vec::new()), ("udp", Vec::new())];
    };
    // Protocol -> None (every port) or the ports.
    let mut by: BTreeMap<&'static str, Option<BTreeSet<u16>>> = BTreeMap::new();
    for p in ports {
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => "tcp",
            "UDP" => "udp",
            other => {
                warn(format!("protocol {other} is not enforced (nothing is let through on it)"));
                continue;
            }
        };
        let wanted = by.entry(protocol).or_insert_with(|| Some(BTreeSet::new()));
        match &p.port {
            None => *wanted = None,
            Some(IntOrString::String(named)) => {
                warn(format!("named port {named:?} is not enforced (nothing is let through on it)"))
            }
            Some(IntOrString::Int(first)) => {
                let last = p.end_port.unwrap_or(*first);
                if last - first >= MAX_RANGE {
                    warn(format!("port range {first}-{last} is wider than {MAX_RANGE} ports: not enforced"));
                    continue;
                }
                if let Some(set) = wanted {
                    set.extend((*first..=last).filter_map(|n| u16::try_from(n).ok()).filter(|n| *n != 0));
                }
            }
        }
    }
    by.into_iter()
        .filter_map(|(protocol, ports)| match ports {
            None => Some((protocol, Vec::new())),
            Some(set) if set.is_empty() => None,
            Some(set) => Some((protocol, set.into_iter().collect())),
        })
        .collect()
}
