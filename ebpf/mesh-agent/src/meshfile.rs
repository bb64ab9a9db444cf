//! The mesh file: what the mesh should do, declared. Today it holds services; identities and
//! policy, then telemetry, join it as the next issues land (the book's "The mesh file" chapter
//! shows the planned sections). Every mistake is one error naming the file, the line and what was
//! expected; unknown keys are refused.
//!
//! ```toml
//! [[services]]
//! name = "web"
//! address = "10.96.0.10"      # virtual IPv4 address; address6 for IPv6 (at least one)
//! port = 80
//! protocol = "tcp"            # or "udp"
//! backends = [
//!   { pods = { app = "web" }, port = 8080 },          # every pod with these labels
//!   { address = "10.77.0.12:8080", weight = 2 },      # or one address, twice as often
//! ]
//! ```
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use mesh_common::{AF_INET, AF_INET6, Backend, IPPROTO_TCP, IPPROTO_UDP, ServiceKey};
use serde::Deserialize;

use crate::toml_span::{line_of, locate, subject};

// ANCHOR: schema
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    #[serde(default)]
    pub services: Vec<toml::Spanned<Service>>,
    /// Allowed flows. A pod an ingress rule names in `to` accepts only what the ingress rules
    /// allow; a pod an egress rule names in `from` reaches only what the egress rules allow;
    /// other pods are open that way.
    #[serde(default)]
    pub policy: Vec<toml::Spanned<Rule>>,
    /// Pods isolated whether or not a rule lets anything in or out (what a Kubernetes
    /// NetworkPolicy with no rules says: deny by default).
    #[serde(default)]
    pub isolate: Vec<toml::Spanned<Isolate>>,
}

/// One allowed flow: from the pods carrying `from`'s labels (every pod when empty) to the pods
/// carrying `to`'s (every pod when empty), on `ports` (every port when empty), over `protocol`.
/// A flow passes when the destination's ingress rules and the source's egress rules both
/// allow it (a side that is not isolated allows everything).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: BTreeMap<String, String>,
    #[serde(default)]
    pub to: BTreeMap<String, String>,
    /// Whose side the rule is on: `ingress` (the `to` pods are isolated and let this in) or
    /// `egress` (the `from` pods are isolated and may reach this).
    #[serde(default)]
    pub direction: Direction,
    /// The peer side (`from` of an ingress rule, `to` of an egress rule) also covers every
    /// address no pod has: the world outside the mesh.
    #[serde(default)]
    pub outside: bool,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP/1.1 requests the connection may carry (judged in the client's sk_msg); none: any
    /// bytes. Ingress rules only.
    #[serde(default)]
    pub http: Vec<HttpMatchDef>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Ingress,
    Egress,
}

/// Pods isolated for ingress, egress or both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Isolate {
    pub pods: BTreeMap<String, String>,
    #[serde(default)]
    pub ingress: bool,
    #[serde(default)]
    pub egress: bool,
}

/// One allowed request: `method` exactly (`GET`), the target starting with `path` (`/api`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatchDef {
    pub method: String,
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub backends: Vec<BackendDef>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// One backend entry: the pods that carry `pods`' labels (each on `port`), or one address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendDef {
    #[serde(default)]
    pub pods: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// How many slots: a backend of weight 2 gets twice the connections of one of weight 1.
    #[serde(default = "one")]
    pub weight: u32,
}
// ANCHOR_END: schema

fn one() -> u32 {
    1
}

/// Highest weight a backend may have (its slots are repeated entries in the map).
pub const MAX_WEIGHT: u32 = 100;

/// A mesh file that cannot be applied: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct MeshFileError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// A pod as backend selection and policy see it. `mesh-agent --pods FILE` reads a JSON list of
/// these: in the lab the lab writes it; on Kubernetes `mesh-agent kubernetes` writes it from the
/// API's Pods.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodAddrs {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ipv4: Ipv4Addr,
    /// None: the pod has no IPv6 address.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// The pod's cgroup v2 directories (one per container on Kubernetes): how policy knows who
    /// is connecting.
    #[serde(default)]
    pub cgroups: Vec<std::path::PathBuf>,
}

/// One service ready for the maps, with the names of the backends behind each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub keys: Vec<ServiceKey>,
    pub slots: Vec<Backend>,
    /// Who is behind each slot: a pod name or an address.
    pub slot_names: Vec<String>,
}

impl MeshFile {
    /// Parses and checks a mesh file (`file` is its name in messages).
    pub fn parse(text: &str, file: &str) -> Result<MeshFile, MeshFileError> {
        let err = |line: usize, message: String| MeshFileError { file: file.to_owned(), line, message };
        let mf: MeshFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let line = e.span().map_or(1, |s| locate(text, s, subject(&message).as_deref()));
            err(line, message)
        })?;
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for spanned in &mf.services {
            let s = spanned.get_ref();
            let at = |needle: &str| locate(text, spanned.span(), Some(needle));
            let quoted = format!("\"{}\"", s.name);
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(err(
                    at(&quoted),
                    format!("service name {quoted}: expected a unique, non-empty name"),
                ));
            }
            if s.port == 0 {
                return Err(err(at("port"), format!("service {quoted}: `port` must be 1-65535")));
            }
            if s.address.is_none() && s.address6.is_none() {
                return Err(err(
                    line_of(text, spanned.span().start),
                    format!("service {quoted}: expected `address` (IPv4) and/or `address6` (IPv6)"),
                ));
            }
            for a in [s.address.map(IpAddr::V4), s.address6.map(IpAddr::V6)].into_iter().flatten() {
                if !addrs.insert((a, s.port, s.protocol == Protocol::Udp)) {
                    return Err(err(
                        at(&a.to_string()),
                        format!("service {quoted}: {a} port {} is already another service's", s.port),
                    ));
                }
            }
            for b in &s.backends {
                let what = match (&b.pods, &b.address, b.port) {
                    (Some(_), None, Some(p)) if p != 0 => None,
                    (Some(_), None, _) => Some("a `pods` backend needs a `port` (1-65535)"),
                    (None, Some(a), None) if a.port() != 0 => None,
                    (None, Some(_), Some(_)) => Some("an `address` backend carries its port in the address"),
                    (None, Some(_), None) => Some("backend address port must be 1-65535"),
                    _ => Some(
                        "a backend is either `pods = { label = \"value\" }` with `port`, or `address = \"ip:port\"`",
                    ),
                };
                if let Some(m) = what {
                    return Err(err(at("backends"), format!("service {quoted}: {m}")));
                }
                if !(1..=MAX_WEIGHT).contains(&b.weight) {
                    return Err(err(
                        at("weight"),
                        format!("service {quoted}: `weight` must be 1-{MAX_WEIGHT}"),
                    ));
                }
            }
        }
        for spanned in &mf.policy {
            let r = spanned.get_ref();
            let at = |needle: &str| locate(text, spanned.span(), Some(needle));
            match r.direction {
                Direction::Ingress if r.to.is_empty() => {
                    return Err(err(
                        line_of(text, spanned.span().start),
                        "policy rule: `to` must name the labels of the pods it lets in".into(),
                    ));
                }
                Direction::Egress if r.from.is_empty() => {
                    return Err(err(
                        line_of(text, spanned.span().start),
                        "policy rule: an egress rule's `from` must name the labels of the pods it lets out"
                            .into(),
                    ));
                }
                Direction::Egress if !r.http.is_empty() => {
                    return Err(err(at("http"), "policy rule: `http` is for ingress rules only".into()));
                }
                _ => {}
            }
            if r.ports.contains(&0) {
                return Err(err(
                    at("ports"),
                    "policy rule: `ports` must be 1-65535 (leave it out for every port)".into(),
                ));
            }
            if let Some(problem) = http_problem(r) {
                return Err(err(at("http"), format!("policy rule: {problem}")));
            }
        }
        for spanned in &mf.isolate {
            let i = spanned.get_ref();
            let line = line_of(text, spanned.span().start);
            if i.pods.is_empty() {
                return Err(err(line, "isolate: `pods` must name the labels of the pods it isolates".into()));
            }
            if !i.ingress && !i.egress {
                return Err(err(line, "isolate: expected `ingress = true`, `egress = true` or both".into()));
            }
        }
        Ok(mf)
    }

    // ANCHOR: resolve
    /// The services with their backend slots, pods selected by label from `pods`.
    pub fn resolve(&self, pods: &[PodAddrs]) -> Vec<Resolved> {
        self.services
            .iter()
            .map(|s| {
                let s = s.get_ref();
                let protocol = match s.protocol {
                    Protocol::Tcp => IPPROTO_TCP,
                    Protocol::Udp => IPPROTO_UDP,
                };
                let mut keys = Vec::new();
                if let Some(a) = s.address {
                    let ip = [u32::from_ne_bytes(a.octets()), 0, 0, 0];
                    keys.push(ServiceKey { ip, port: u32::from(s.port), family: AF_INET, protocol, pad: 0 });
                }
                if let Some(a) = s.address6 {
                    keys.push(ServiceKey {
                        ip: words(a),
                        port: u32::from(s.port),
                        family: AF_INET6,
                        protocol,
                        pad: 0,
                    });
                }
                let (mut slots, mut slot_names) = (Vec::new(), Vec::new());
                for b in &s.backends {
                    let chosen: Vec<(String, Backend)> = match (&b.pods, b.address) {
                        (Some(sel), _) => pods
                            .iter()
                            .filter(|p| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                            .map(|p| {
                                let ip4 = u32::from_ne_bytes(p.ipv4.octets());
                                let port = u32::from(b.port.unwrap_or(0));
                                (p.name.clone(), Backend { ip4, ip6: p.ipv6.map_or([0; 4], words), port })
                            })
                            .collect(),
                        (None, Some(SocketAddr::V4(a))) => {
                            let ip4 = u32::from_ne_bytes(a.ip().octets());
                            vec![(a.to_string(), Backend { ip4, ip6: [0; 4], port: u32::from(a.port()) })]
                        }
                        (None, Some(SocketAddr::V6(a))) => {
                            vec![(
                                a.to_string(),
                                Backend { ip4: 0, ip6: words(*a.ip()), port: u32::from(a.port()) },
                            )]
                        }
                        (None, None) => Vec::new(),
                    };
                    for (name, backend) in chosen {
                        for _ in 0..b.weight {
                            slots.push(backend);
                            slot_names.push(name.clone());
                        }
                    }
                }
                Resolved { name: s.name.clone(), keys, slots, slot_names }
            })
            .collect()
    }
    // ANCHOR_END: resolve
}

/// What the maps must hold for these services: each virtual address with its backend slots.
pub fn wanted(resolved: &[Resolved]) -> std::collections::BTreeMap<ServiceKey, Vec<Backend>> {
    resolved.iter().flat_map(|r| r.keys.iter().map(|k| (*k, r.slots.clone()))).collect()
}

/// A mesh file read from disk with the pods it is resolved against.
pub struct Loaded {
    pub file: MeshFile,
    pub pods: Vec<PodAddrs>,
    pub services: Vec<Resolved>,
}

/// Reads a mesh file and, for backends and rules chosen by label, a pods file (JSON list of
/// [`PodAddrs`]); every error is one line naming the file.
pub fn load(file: &std::path::Path, pods: Option<&std::path::Path>) -> Result<Loaded, String> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let mf = MeshFile::parse(&text, &shown).map_err(|e| e.to_string())?;
    let pods: Vec<PodAddrs> = pods.map(load_pods).transpose()?.unwrap_or_default();
    let services = mf.resolve(&pods);
    Ok(Loaded { file: mf, pods, services })
}

/// Reads a pods file (JSON list of [`PodAddrs`]); an error names the file and line.
pub fn load_pods(p: &std::path::Path) -> Result<Vec<PodAddrs>, String> {
    let t = std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
    serde_json::from_str(&t).map_err(|e| format!("{}:{}: {e}", p.display(), e.line()))
}

impl Resolved {
    /// Whether this service answers at `a` (one of its virtual addresses and its port).
    pub fn serves(&self, a: SocketAddr) -> bool {
        // A dual-stack socket names an IPv4 service by its IPv4-mapped address.
        let ip = match a.ip().to_canonical() {
            IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            IpAddr::V6(v6) => words(v6),
        };
        self.keys.iter().any(|k| k.ip == ip && k.port == u32::from(a.port()))
    }
}

/// An IPv6 address as four words in network byte order, as the kernel hands them to BPF.
/// An IPv6 address as the kernel's four network-order words.
pub(crate) fn words(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    [0, 4, 8, 12].map(|i| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]))
}

/// What is wrong with a rule's `http` list, if anything.
fn http_problem(r: &Rule) -> Option<String> {
    use mesh_common::{HTTP_METHOD_MAX, HTTP_PATH_MAX, MAX_HTTP_MATCHES};
    if r.http.is_empty() {
        return None;
    }
    if r.http.len() > MAX_HTTP_MATCHES {
        return Some(format!("`http` takes at most {MAX_HTTP_MATCHES} matches per rule"));
    }
    if r.protocol == Protocol::Udp {
        return Some("`http` needs `protocol = \"tcp\"`".into());
    }
    for m in &r.http {
        if m.method.is_empty()
            || m.method.len() > HTTP_METHOD_MAX
            || !m.method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Some(format!(
                "`http` method {:?} must be 1-{HTTP_METHOD_MAX} capital letters (GET, POST, ...)",
                m.method
            ));
        }
        if !m.path.starts_with('/') || m.path.len() > HTTP_PATH_MAX {
            return Some(format!(
                "`http` path {:?} must start with / and be at most {HTTP_PATH_MAX} bytes",
                m.path
            ));
        }
        if m.path.bytes().any(|b| b == b'%' || b.is_ascii_whitespace() || !b.is_ascii_graphic())
            || m.path.contains("..")
        {
            return Some(format!(
                "`http` path {:?} must be plain printable ASCII without %, .. or spaces (targets with them are always refused)",
                m.path
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[services]]
name = "web"
address = "10.96.0.10"
address6 = "fd96::10"
port = 80
backends = [
  { pods = { app = "web" }, port = 8080 },
  { address = "10.77.0.99:8080", weight = 2 },
]

[[services]]
name = "empty"
address = "10.96.0.11"
port = 80
"#;

    fn err(text: &str) -> String {
        MeshFile::parse(text, "m.toml").unwrap_err().to_string()
    }

    fn pods() -> Vec<PodAddrs> {
        let pod = |name: &str, app: &str, n: u8| PodAddrs {
            name: name.into(),
            labels: [("app".to_owned(), app.to_owned())].into(),
            ipv4: Ipv4Addr::new(10, 77, 0, n),
            ipv6: Some(format!("fd77::{n:x}").parse().unwrap()),
            cgroups: Vec::new(),
        };
        vec![pod("a", "web", 11), pod("b", "web", 12), pod("c", "db", 13)]
    }

    #[test]
    fn resolves_pods_by_label_addresses_and_weights() {
        let mf = MeshFile::parse(GOOD, "m.toml").unwrap();
        let r = mf.resolve(&pods());
        assert_eq!(r[0].keys.len(), 2);
        assert_eq!(r[0].keys[0].port, 80);
        assert_eq!(r[0].keys[0].ip[0], u32::from_ne_bytes([10, 96, 0, 10]));
        assert_eq!(r[0].keys[1].family, AF_INET6);
        assert_eq!(r[0].slot_names, ["a", "b", "10.77.0.99:8080", "10.77.0.99:8080"]);
        assert_eq!(r[0].slots[0].port, 8080);
        assert_eq!(r[0].slots[2].ip6, [0; 4], "an IPv4 address backend has no IPv6 address");
        assert!(r[1].slots.is_empty(), "a service without backends refuses");
        assert!(
            r[0].serves("10.96.0.10:80".parse().unwrap()) && r[0].serves("[fd96::10]:80".parse().unwrap())
        );
        assert!(!r[0].serves("10.96.0.10:81".parse().unwrap()));
        assert!(r[0].serves("[::ffff:10.96.0.10]:80".parse().unwrap()));
    }

    #[test]
    fn mistakes_name_file_line_and_what_was_expected() {
        let e = err(&GOOD.replace("port = 80\nbackends", "prot = 80\nbackends"));
        assert!(e.starts_with("m.toml:6: unknown field `prot`, expected one of"), "{e}");
        let e = err(&GOOD.replace("\"10.96.0.10\"", "\"10.96.0.300\""));
        assert!(e.starts_with("m.toml:4: invalid IPv4 address syntax"), "{e}");
        let e = err(&GOOD.replace("name = \"empty\"", "name = \"web\""));
        assert!(e.starts_with("m.toml:13: service name \"web\": expected a unique"), "{e}");
        let e =
            err(&GOOD.replace("{ pods = { app = \"web\" }, port = 8080 }", "{ pods = { app = \"web\" } }"));
        assert!(e.starts_with("m.toml:7: service \"web\": a `pods` backend needs a `port`"), "{e}");
        let e = err(&GOOD.replace("weight = 2", "weight = 0"));
        assert!(e.contains("`weight` must be 1-100"), "{e}");
        let e = err(&GOOD.replace("address = \"10.96.0.11\"\n", ""));
        assert!(e.starts_with("m.toml:12: service \"empty\": expected `address`"), "{e}");
        let e = err(&GOOD.replace("\"10.96.0.11\"", "\"10.96.0.10\""));
        assert!(e.contains("10.96.0.10 port 80 is already another service's"), "{e}");
        let e = err("[[policy]]\nfrom = \"a\"\n");
        assert!(e.starts_with("m.toml:2: invalid type: string \"a\", expected a map"), "{e}");
        let e = err("[[policy]]\nfrom = { app = \"a\" }\nports = [80]\n");
        assert!(e.starts_with("m.toml:1: policy rule: `to` must name the labels"), "{e}");
        let e = err("[[policy]]\ndirection = \"egress\"\nto = { app = \"a\" }\n");
        assert!(e.starts_with("m.toml:1: policy rule: an egress rule's `from` must name"), "{e}");
        let e = err("[[policy]]\ndirection = \"out\"\nto = { app = \"a\" }\n");
        assert!(e.starts_with("m.toml:2: unknown variant `out`, expected `ingress` or `egress`"), "{e}");
        let e = err("[[isolate]]\npods = { app = \"a\" }\n");
        assert!(e.starts_with("m.toml:1: isolate: expected `ingress = true`"), "{e}");
        let e = err("[[policy]]\nto = { app = \"b\" }\nports = [0]\n");
        assert!(e.starts_with("m.toml:3: policy rule: `ports` must be 1-65535"), "{e}");
        let e = err("[[identities]]\nname = \"x\"\n");
        assert!(
            e.starts_with(
                "m.toml:1: unknown field `identities`, expected one of `services`, `policy`, `isolate`"
            ),
            "{e}"
        );
    }

    #[test]
    fn http_matches_are_checked_where_they_are_written() {
        let rule =
            |http: &str| format!("[[policy]]\nfrom = {{ app = \"a\" }}\nto = {{ app = \"b\" }}\n{http}\n");
        let e = err(&rule("http = [{ method = \"get\", path = \"/api\" }]"));
        assert!(
            e.starts_with("m.toml:4: policy rule: `http` method \"get\" must be 1-8 capital letters"),
            "{e}"
        );
        let e = err(&rule("http = [{ method = \"GET\", path = \"api\" }]"));
        assert!(e.starts_with("m.toml:4: policy rule: `http` path \"api\" must start with /"), "{e}");
        let e = err(&rule("http = [{ method = \"GET\", path = \"/a/../b\" }]"));
        assert!(e.contains("without %, .. or spaces"), "{e}");
        let e = err(&rule("http = [{ method = \"GET\", pth = \"/api\" }]"));
        assert!(e.starts_with("m.toml:4: unknown field `pth`, expected `method` or `path`"), "{e}");
        let five = ["{ method = \"GET\", path = \"/\" }"; 5].join(", ");
        let e = err(&rule(&format!("http = [{five}]")));
        assert!(e.contains("at most 4 matches"), "{e}");
        let e = err(&rule("protocol = \"udp\"\nhttp = [{ method = \"GET\", path = \"/\" }]"));
        assert!(e.contains("`http` needs `protocol = \"tcp\"`"), "{e}");
        let ok = MeshFile::parse(&rule("http = [{ method = \"GET\", path = \"/api\" }]"), "m.toml").unwrap();
        let h = crate::policy::http_rules(&ok.policy[0].get_ref().http);
        assert_eq!((h.count, h.matches[0].method_len, h.matches[0].path_len), (1, 3, 4));
        assert_eq!(&h.matches[0].path[..5], b"/api\0");
    }

    #[test]
    fn policy_rules_become_identities_and_allow_entries() {
        let mf = MeshFile::parse(
            "[[policy]]\nfrom = { app = \"web\" }\nto = { app = \"db\" }\nports = [5432]\n",
            "m.toml",
        )
        .unwrap();
        let w = crate::policy::resolve(&mf, &pods());
        // Two label sets: web (a, b share it) and db.
        assert_eq!(w.members.len(), 2);
        let db = *w.members.iter().find(|(_, m)| m == &&vec!["c".to_owned()]).unwrap().0;
        let web = *w.members.iter().find(|(_, m)| m.len() == 2).unwrap().0;
        assert_eq!(w.policed, [(db, mesh_common::POLICED_INGRESS)].into());
        let keys: Vec<_> = w.allow.keys().collect();
        assert_eq!(keys, [&mesh_common::PolicyKey { from: web, to: db, port: 5432, protocol: IPPROTO_TCP }]);
        // Each pod's two addresses carry its identity.
        assert_eq!(w.identities.len(), 6);
    }

    /// Egress rules isolate their `from`; a flow passes where both ends' rules agree (every
    /// port on one side, two on the other: those two); `outside` takes in the world.
    #[test]
    fn egress_rules_and_isolation_meet_ingress_rules() {
        let mf = MeshFile::parse(
            r#"
[[policy]]
to = { app = "db" }

[[policy]]
direction = "egress"
from = { app = "web" }
to = { app = "db" }
ports = [5432, 6432]

[[policy]]
direction = "egress"
from = { app = "web" }
outside = true
ports = [53]
protocol = "udp"

[[isolate]]
pods = { app = "web" }
ingress = true
"#,
            "m.toml",
        )
        .unwrap();
        let w = crate::policy::resolve(&mf, &pods());
        let (web, db) = (w.identity_of("a").unwrap(), w.identity_of("c").unwrap());
        let world = mesh_common::WORLD_IDENTITY;
        use mesh_common::{POLICED_EGRESS, POLICED_INGRESS};
        assert_eq!(w.policed, [(web, POLICED_INGRESS | POLICED_EGRESS), (db, POLICED_INGRESS)].into());
        let ports: Vec<u32> =
            w.allow.keys().filter(|k| k.from == web && k.to == db).map(|k| k.port).collect();
        assert_eq!(ports, [5432, 6432]);
        assert!(w.allows(web, db, 5432, IPPROTO_TCP) && !w.allows(web, db, 80, IPPROTO_TCP));
        assert!(w.allows(web, world, 53, IPPROTO_UDP) && !w.allows(web, world, 53, IPPROTO_TCP));
        assert!(!w.allows(db, web, 80, IPPROTO_TCP), "web is isolated for ingress with no rule");
        assert!(!w.allows(world, db, 5432, IPPROTO_TCP), "`from = {{}}` is every pod, not the world");
        assert!(w.allows(db, db, 1, IPPROTO_TCP));
    }
}
