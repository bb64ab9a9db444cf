//! What a cluster leaves on the machine, found and removed: its processes (daemons, containerd's
//! shims, the containers), mounts under the state folder, pods' network namespaces that no
//! process holds any more, the CNI bridge, the KUBE-*/CNI-* iptables chains, kubelet's pod logs,
//! and the state folder itself. `down` sweeps after stopping the daemons; `lab-runner clean`
//! (and the tests) list what is left when no cluster is up.
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    BRIDGE, CONTAINER_LOGS, ClusterError, MESH_PINS, POD_LOGS, STATE_DIR,
    config::Layout,
    daemons::{State, UpEvent},
};

/// One thing a cluster left behind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Leftover {
    ClusterProcess { pid: i32, cmd: String },
    ClusterMount { path: PathBuf },
    ClusterNetns { path: PathBuf },
    ClusterBridge { name: String },
    ClusterIptables { family: String, chains: Vec<String> },
    ClusterFiles { path: PathBuf },
    ClusterCgroup { path: PathBuf },
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::ClusterProcess { pid, cmd } => write!(f, "cluster process {pid} ({cmd})"),
            Leftover::ClusterMount { path } => write!(f, "cluster mount {}", path.display()),
            Leftover::ClusterNetns { path } => write!(f, "pod network namespace {}", path.display()),
            Leftover::ClusterBridge { name } => write!(f, "CNI bridge {name}"),
            Leftover::ClusterIptables { family, chains } => {
                write!(f, "{family} chains {}", chains.join(", "))
            }
            Leftover::ClusterFiles { path } => write!(f, "cluster files {}", path.display()),
            Leftover::ClusterCgroup { path } => write!(f, "cluster cgroup {}", path.display()),
        }
    }
}

/// Whether a process belongs to a cluster of the lab: a daemon started with the state folder in
/// its command line (etcd, containerd, its shims), a binary of the lab's Kubernetes build, or a
/// container of the lab's containerd (its cgroup names the containerd namespace `k8s.io` under
/// the lab's runtime, see [`container_cgroup`]).
fn ours(pid: i32, cmdline: &[String], exe: Option<&Path>) -> bool {
    let build = crate::cache_dir().join("kubernetes");
    cmdline.iter().any(|a| a.contains(STATE_DIR))
        || exe.is_some_and(|e| e.starts_with(&build))
        || container_cgroup(pid).is_some()
}

/// The cgroup path of a container started by the lab's containerd: runc puts each under
/// `/k8s.io/<id>` (cgroupfs driver, no QoS tree), recorded in the shim's state folder.
fn container_cgroup(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.splitn(3, ':').nth(2).filter(|p| p.starts_with("/k8s.io/")))?;
    let id = path.trim_start_matches("/k8s.io/").split('/').next()?;
    let task = Path::new(STATE_DIR).join("containerd/state/io.containerd.runtime.v2.task/k8s.io").join(id);
    (task.exists() || !Path::new(STATE_DIR).exists()).then(|| path.to_owned())
}

fn processes() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    all.flatten()
        .filter(|p| p.pid != me && p.stat().is_ok_and(|s| s.state != 'Z'))
        .filter_map(|p| {
            let cmd = p.cmdline().ok()?;
            let exe = p.exe().ok();
            ours(p.pid, &cmd, exe.as_deref()).then(|| (p.pid, cmd.join(" ").chars().take(120).collect()))
        })
        .collect()
}

fn mounts_under(dir: &str) -> Vec<PathBuf> {
    let Ok(info) = procfs::process::Process::myself().and_then(|p| p.mountinfo()) else { return Vec::new() };
    let mut m: Vec<PathBuf> =
        info.into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(dir)).collect();
    // Deepest first.
    m.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    m.dedup();
    m
}

/// `/run/netns/cni-*` that no process has as its network namespace: a pod sandbox's, whose
/// pause process is gone.
fn orphan_netns() -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir("/run/netns") else { return Vec::new() };
    let held: BTreeSet<u64> = procfs::process::all_processes()
        .map(|all| {
            all.flatten()
                .filter_map(|p| fs::metadata(format!("/proc/{}/ns/net", p.pid)).ok().map(|m| m.ino()))
                .collect()
        })
        .unwrap_or_default();
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cni-"))
        .filter(|e| fs::metadata(e.path()).map_or(true, |m| !held.contains(&m.ino())))
        .map(|e| e.path())
        .collect()
}

/// The containers' cgroups: runc (cgroupfs driver, no QoS tree) makes `/k8s.io/<container>` in
/// every hierarchy (each v1 controller and the unified one); the parents stay when the
/// containers are gone. Children first.
fn container_cgroups() -> Vec<PathBuf> {
    let Ok(info) = procfs::process::Process::myself().and_then(|p| p.mountinfo()) else { return Vec::new() };
    let mut out = Vec::new();
    for m in info.into_iter().filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2") {
        let parent = m.mount_point.join("k8s.io");
        if let Ok(rd) = fs::read_dir(&parent) {
            out.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            out.push(parent);
        }
    }
    out
}

fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// Chains named KUBE-* or CNI-* (kubelet's, kube-proxy's, CNI plugins') in `family`'s tables,
/// and the rule set without them (for `*-restore`).
fn iptables_without_ours(family: &str) -> Option<(Vec<String>, String)> {
    let save = format!("{family}-save");
    let out = Command::new(&save).output().ok().filter(|o| o.status.success())?;
    Some(without_ours(&String::from_utf8_lossy(&out.stdout)))
}

/// The KUBE-*/CNI-* chains declared in an `iptables-save` text, and the text without them and
/// without every rule in them or jumping to them.
fn without_ours(text: &str) -> (Vec<String>, String) {
    let is_ours = |c: &str| c.starts_with("KUBE-") || c.starts_with("CNI-");
    let mut chains = Vec::new();
    let mut kept = String::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let declared = line.strip_prefix(':').and_then(|l| l.split_whitespace().next());
        let appended_to = (words.first() == Some(&"-A")).then(|| words.get(1).copied()).flatten();
        let jumps_to = words.windows(2).find(|w| w[0] == "-j" || w[0] == "-g").map(|w| w[1]);
        if let Some(c) = declared.filter(|c| is_ours(c)) {
            chains.push(c.to_owned());
            continue;
        }
        if appended_to.is_some_and(is_ours) || jumps_to.is_some_and(is_ours) {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    (chains, kept)
}

/// A kubelet or kube-proxy that is not the lab's: then KUBE-* chains may be a real cluster's.
fn foreign_kubernetes() -> bool {
    let Ok(all) = procfs::process::all_processes() else { return false };
    all.flatten().any(|p| {
        // A zombie runs nothing: one of ours, stopped and not yet reaped by whoever adopted it
        // (its command line is gone, so it cannot be told from a foreign one).
        let Ok(stat) = p.stat() else { return false };
        if stat.state == 'Z' {
            return false;
        }
        let name = stat.comm;
        (name == "kubelet" || name == "kube-proxy")
            && !p.cmdline().is_ok_and(|c| c.iter().any(|a| a.contains(STATE_DIR) || a.contains("slab-node")))
    })
}

// ANCHOR: leftovers
/// What a cluster left, when none is up.
pub fn leftovers() -> Vec<Leftover> {
    let mut out = Vec::new();
    for (pid, cmd) in processes() {
        out.push(Leftover::ClusterProcess { pid, cmd });
    }
    for path in mounts_under(STATE_DIR) {
        out.push(Leftover::ClusterMount { path });
    }
    for path in orphan_netns() {
        out.push(Leftover::ClusterNetns { path });
    }
    if bridge_exists() {
        out.push(Leftover::ClusterBridge { name: BRIDGE.into() });
    }
    if !foreign_kubernetes() {
        for family in ["iptables", "ip6tables"] {
            if let Some((chains, _)) = iptables_without_ours(family).filter(|(c, _)| !c.is_empty()) {
                out.push(Leftover::ClusterIptables { family: family.into(), chains });
            }
        }
    }
    if !foreign_kubernetes() {
        out.extend(container_cgroups().into_iter().map(|path| Leftover::ClusterCgroup { path }));
    }
    for dir in [POD_LOGS, CONTAINER_LOGS, STATE_DIR, MESH_PINS] {
        if Path::new(dir).exists() && (dir == STATE_DIR || dir == MESH_PINS || !foreign_kubernetes()) {
            out.push(Leftover::ClusterFiles { path: dir.into() });
        }
    }
    out
}
// ANCHOR_END: leftovers

/// Removes everything a cluster leaves. `state` (when `down` has it) restores ip_forward and
/// says whether kubelet's log folders were there before.
pub fn sweep(
    layout: &Layout,
    state: Option<&State>,
    events: &mut dyn FnMut(UpEvent),
) -> Result<(), ClusterError> {
    // Processes: containers, shims, daemons; SIGKILL until none is left.
    let t0 = Instant::now();
    loop {
        let left = processes();
        if left.is_empty() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let list: Vec<String> = left.iter().map(|(p, c)| format!("{p} ({c})")).collect();
            return Err(ClusterError::State(format!("processes survive SIGKILL: {}", list.join("; "))));
        }
        for (pid, cmd) in &left {
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL)
                .is_ok()
            {
                events(UpEvent::Swept { what: format!("process {pid} ({cmd})") });
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    for path in mounts_under(&layout.root.to_string_lossy()) {
        if nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).is_ok() {
            events(UpEvent::Swept { what: format!("mount {}", path.display()) });
        }
    }
    for path in orphan_netns() {
        let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        fs::remove_file(&path).map_err(ClusterError::io("cannot remove", &path))?;
        events(UpEvent::Swept { what: format!("netns {}", path.display()) });
    }
    if bridge_exists() {
        crate::run(Command::new("ip").args(["link", "del", BRIDGE]))?;
        events(UpEvent::Swept { what: format!("bridge {BRIDGE}") });
    }
    if !foreign_kubernetes() {
        for family in ["iptables", "ip6tables"] {
            let Some((chains, kept)) = iptables_without_ours(family) else { continue };
            if chains.is_empty() {
                continue;
            }
            let mut child = Command::new(format!("{family}-restore"))
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| ClusterError::Command {
                    cmd: format!("{family}-restore"),
                    detail: e.to_string(),
                })?;
            std::io::Write::write_all(child.stdin.as_mut().expect("piped"), kept.as_bytes()).map_err(
                |e| ClusterError::Command { cmd: format!("{family}-restore"), detail: e.to_string() },
            )?;
            let out = child.wait_with_output().map_err(|e| ClusterError::Command {
                cmd: format!("{family}-restore"),
                detail: e.to_string(),
            })?;
            if !out.status.success() {
                return Err(ClusterError::Command {
                    cmd: format!("{family}-restore"),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            events(UpEvent::Swept { what: format!("{family} chains {}", chains.join(" ")) });
        }
    }
    let cgroups = if foreign_kubernetes() { Vec::new() } else { container_cgroups() };
    for path in &cgroups {
        // Empty once its processes are gone; rmdir is how a cgroup is removed.
        fs::remove_dir(path).map_err(ClusterError::io("cannot remove cgroup", path))?;
    }
    if !cgroups.is_empty() {
        events(UpEvent::Swept { what: format!("{} container cgroups (k8s.io)", cgroups.len()) });
    }
    let logs_were_there = state.is_some_and(|s| s.pod_logs_existed);
    if !logs_were_there && !foreign_kubernetes() {
        for dir in [POD_LOGS, CONTAINER_LOGS] {
            if Path::new(dir).exists() {
                fs::remove_dir_all(dir).map_err(ClusterError::io("cannot remove", dir))?;
                events(UpEvent::Swept { what: dir.to_owned() });
            }
        }
    }
    // An agent killed before it could uninstall leaves its pins (and, through the pinned links,
    // its programs attached); removing the pins detaches them.
    if Path::new(MESH_PINS).exists() {
        fs::remove_dir_all(MESH_PINS).map_err(ClusterError::io("cannot remove", MESH_PINS))?;
        events(UpEvent::Swept { what: MESH_PINS.to_owned() });
    }
    if let Some(s) = state.filter(|s| !s.ip_forward_before.is_empty()) {
        let _ = fs::write("/proc/sys/net/ipv4/ip_forward", &s.ip_forward_before);
    }
    if layout.root.exists() {
        fs::remove_dir_all(&layout.root).map_err(ClusterError::io("cannot remove", &layout.root))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_chains_and_the_rules_that_reach_them_are_dropped_and_nothing_else() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:CNI-abc - [0:0]\n:MINE - [0:0]\n\
                    -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                    -A PREROUTING -j MINE\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n";
        let (chains, kept) = without_ours(text);
        assert_eq!(chains, ["KUBE-SERVICES", "CNI-abc"]);
        let kept: Vec<&str> = kept.lines().collect();
        assert_eq!(
            kept,
            ["*nat", ":PREROUTING ACCEPT [0:0]", ":MINE - [0:0]", "-A PREROUTING -j MINE", "COMMIT"]
        );
    }
}
