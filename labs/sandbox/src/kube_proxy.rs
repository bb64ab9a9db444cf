//! kube-proxy's iptables mode, rebuilt for a benchmark: the nat-table rules kube-proxy writes for
//! ClusterIP services (`pkg/proxy/iptables/proxier.go`), as one `iptables-restore` input.
//!
//! ```text
//! OUTPUT (and PREROUTING)  -> KUBE-SERVICES
//! KUBE-SERVICES            one rule per service port: -d VIP -p tcp --dport P -j KUBE-SVC-<hash>
//! KUBE-SVC-<hash>          one rule per endpoint: -m statistic --mode random --probability 1/(n-i)
//!                          -j KUBE-SEP-<hash>, the last one without a probability
//! KUBE-SEP-<hash>          -s EP -j KUBE-MARK-MASQ (hairpin), then -j DNAT --to-destination EP
//! ```
//!
//! A new connection walks KUBE-SERVICES rule by rule until its service's matches: the cost grows
//! with the number of services. (kube-proxy's nftables mode and IPVS use maps instead; its
//! iptables mode is the one most clusters still run.)
use std::{fmt::Write as _, net::SocketAddrV4};

/// The jump that sends locally made connections through the services (kube-proxy adds it to
/// OUTPUT for host-network processes, and the same to PREROUTING for pods).
pub const OUTPUT_JUMP: &[&str] = &[
    "-t",
    "nat",
    "-I",
    "OUTPUT",
    "-m",
    "comment",
    "--comment",
    "kubernetes service portals",
    "-j",
    "KUBE-SERVICES",
];

/// A chain name kube-proxy style: a prefix and 16 base32 characters of a hash of what it stands
/// for (kube-proxy hashes the service port name and protocol with SHA-256).
fn chain(prefix: &str, what: &str) -> String {
    // Two FNV-1a hashes make 128 bits, 80 of them shown: no crypto needed for a benchmark.
    let fnv = |seed: u64| what.bytes().fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let bits = (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x8422_2325_cbf2_9ce4));
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let tail: String = (0..16).map(|i| B32[((bits >> (i * 5)) & 31) as usize] as char).collect();
    format!("{prefix}{tail}")
}

// ANCHOR: rules
/// The nat table for `services` (virtual address and port, TCP) each load-balanced over
/// `endpoints`: a complete `iptables-restore` input that replaces the nat table. The jump from
/// OUTPUT is left out ([`OUTPUT_JUMP`] adds it), so the rules can be in place and unused.
pub fn nat_table(services: &[SocketAddrV4], endpoints: &[SocketAddrV4]) -> String {
    let mut t = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let names: Vec<(String, String, Vec<String>)> = services
        .iter()
        .enumerate()
        .map(|(i, vip)| {
            let svc = format!("default/svc-{i}:http");
            let seps = endpoints.iter().map(|ep| chain("KUBE-SEP-", &format!("{svc}/{ep}"))).collect();
            (svc.clone(), chain("KUBE-SVC-", &format!("{svc}/tcp/{vip}")), seps)
        })
        .collect();
    for (_, svc_chain, seps) in &names {
        let _ = writeln!(t, ":{svc_chain} - [0:0]");
        for sep in seps {
            let _ = writeln!(t, ":{sep} - [0:0]");
        }
    }
    t.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    for ((svc, svc_chain, seps), vip) in names.iter().zip(services) {
        let _ = writeln!(
            t,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{svc} cluster IP\" -m tcp --dport {} -j {svc_chain}",
            vip.ip(),
            vip.port()
        );
        let n = seps.len();
        for (i, (sep, ep)) in seps.iter().zip(endpoints).enumerate() {
            let comment = format!("-m comment --comment \"{svc} -> {ep}\"");
            if i + 1 < n {
                // Endpoint i of n gets 1/(n-i) of what reaches its rule: 1/n overall.
                let p = 1.0 / (n - i) as f64;
                let _ = writeln!(
                    t,
                    "-A {svc_chain} {comment} -m statistic --mode random --probability {p:.11} -j {sep}"
                );
            } else {
                let _ = writeln!(t, "-A {svc_chain} {comment} -j {sep}");
            }
            let _ = writeln!(t, "-A {sep} -s {}/32 {comment} -j KUBE-MARK-MASQ", ep.ip());
            let _ = writeln!(t, "-A {sep} -p tcp {comment} -m tcp -j DNAT --to-destination {ep}");
        }
    }
    t.push_str("COMMIT\n");
    t
}
// ANCHOR_END: rules

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_kube_proxy_chains_with_statistic_spreading() {
        let vips = ["10.99.0.1:80".parse().unwrap(), "10.99.0.2:80".parse().unwrap()];
        let eps: Vec<SocketAddrV4> = ["10.77.0.11:7000", "10.77.0.12:7000", "10.77.0.13:7000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let t = nat_table(&vips, &eps);
        assert_eq!(t.lines().filter(|l| l.starts_with("-A KUBE-SERVICES ")).count(), 2);
        assert!(t.contains("--probability 0.33333333333 -j KUBE-SEP-"), "{t}");
        assert!(t.contains("--probability 0.50000000000 -j KUBE-SEP-"), "{t}");
        assert_eq!(t.matches("-j DNAT --to-destination 10.77.0.13:7000").count(), 2);
        // Every chain a rule jumps to is declared, and names fit iptables' 28 characters.
        for l in t.lines().filter(|l| l.starts_with(':')) {
            let name = l[1..].split_whitespace().next().unwrap();
            assert!(name.len() <= 28, "{name}");
        }
        let declared: std::collections::BTreeSet<&str> =
            t.lines().filter_map(|l| l.strip_prefix(':')).map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(declared.len(), t.lines().filter(|l| l.starts_with(':')).count(), "names are unique");
        assert!(t.ends_with("COMMIT\n"));
    }
}
