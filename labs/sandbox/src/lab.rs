//! A lab: pods on the running kernel, each a network namespace plus a cgroup, and the mesh.
use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File, OpenOptions},
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use mesh_agent::{Engine, Pinned, mounts::BPFFS};
use serde::Serialize;

use crate::{
    LabError,
    agent::Agent,
    cgroup,
    netns::{self, Packets},
    preflight::Host,
    process::Cmd,
    process::{self, Cancel},
};

/// Prefix of every network namespace a lab creates.
pub const NETNS_PREFIX: &str = "slab-";
/// Where labs keep their files ([`LabId::run_dir`]).
pub const RUN_DIR: &str = "/run/sidecarless-lab";
/// The mesh file applied last and the pods it was resolved against, in the lab's run folder.
pub const MESH_FILE: &str = "mesh.toml";
pub const PODS_FILE: &str = "pods.json";
/// The agent's flow log, in the lab's folder (see `mesh-agent run --flow-log`).
pub const FLOW_LOG: &str = "flows.jsonl";
/// The running agent's control socket, in the run folder: every mesh file goes through it.
pub const CONTROL_SOCKET: &str = "agent.sock";
/// Everything the agent said on stderr.
pub const AGENT_LOG: &str = "agent.log";

/// Name of the bridge in the node namespace.
const BRIDGE: &str = "br0";
/// Name reserved for the node namespace.
pub const NODE: &str = "node";
/// How long teardown waits for pod processes to die.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Identifies one lab: the pid of the process that owns it and a sequence number within that
/// process. `clean` removes labs whose owner is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct LabId {
    pub owner: u32,
    pub seq: u32,
}

impl LabId {
    /// A new id owned by this process.
    pub fn new() -> LabId {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        LabId { owner: std::process::id(), seq: SEQ.fetch_add(1, Ordering::Relaxed) }
    }

    /// Parses the `OWNER-SEQ` form that [`fmt::Display`] writes.
    pub fn parse(s: &str) -> Option<LabId> {
        let (owner, seq) = s.split_once('-')?;
        Some(LabId { owner: owner.parse().ok()?, seq: seq.parse().ok()? })
    }

    /// Whether the owning process still runs.
    pub fn owner_alive(&self) -> bool {
        Path::new("/proc").join(self.owner.to_string()).exists()
    }

    /// Network namespace of pod `pod` (or of the node, for `"node"`).
    pub fn netns(&self, pod: &str) -> String {
        format!("{NETNS_PREFIX}{self}-{pod}")
    }

    /// The lab's cgroup directory under the cgroup v2 root.
    pub fn cgroup(&self, cgroup2: &Path) -> PathBuf {
        cgroup2.join(cgroup::LABS_DIR).join(self.to_string())
    }

    /// The lab's folder for files its processes read (the mesh file and pods file the agent
    /// applies when it restarts).
    pub fn run_dir(&self) -> PathBuf {
        Path::new(RUN_DIR).join(self.to_string())
    }

    /// The lab's bpffs pin directory.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPFFS).join(cgroup::LABS_DIR).join(self.to_string())
    }
}

impl Default for LabId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LabId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.owner, self.seq)
    }
}

/// A pod to create.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl PodSpec {
    pub fn new(name: &str) -> PodSpec {
        PodSpec { name: name.to_owned(), labels: BTreeMap::new() }
    }
}

/// A pod that exists: where it lives and how to reach it.
pub use lab_protocol::Pod;

/// A running lab. Drop (or [`Lab::teardown`]) stops the mesh, kills the pods' processes and
/// removes the cgroups, namespaces and pins.
pub struct Lab {
    id: LabId,
    cgroup: PathBuf,
    pods: Vec<Pod>,
    /// The node itself, as a place to run things (a per-node proxy): the node namespace, its
    /// own cgroup, and 10.77.0.1 on the bridge once something needs an address there.
    node: Pod,
    /// Background processes (servers); reaped at teardown.
    children: Vec<Child>,
    agent: Option<Agent>,
    torn_down: bool,
}

impl Lab {
    /// Builds the sandbox: cgroups, the node namespace with its bridge, one namespace per pod.
    /// A failure part-way removes what was already made.
    pub fn create(host: &Host, pods: &[PodSpec]) -> Result<Lab, LabError> {
        let id = LabId::new();
        let cgroup = id.cgroup(&host.cgroup2);
        let mut lab = Lab {
            id,
            node: Pod {
                name: NODE.into(),
                labels: BTreeMap::new(),
                netns: id.netns(NODE),
                cgroup: cgroup.join(NODE),
                interface: BRIDGE.into(),
                ipv4: Ipv4Addr::new(10, 77, 0, 1),
                ipv6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1),
            },
            cgroup,
            pods: Vec::new(),
            children: Vec::new(),
            agent: None,
            torn_down: false,
        };
        cgroup::create(&lab.cgroup)?;
        cgroup::create(&lab.node.cgroup)?;
        let node = id.netns(NODE);
        netns::add(&node)?;
        netns::add_bridge(&node, BRIDGE)?;
        for (i, spec) in pods.iter().enumerate() {
            // Scenario files are checked where they are parsed (spec.rs); this only guards callers
            // that build pods in code.
            debug_assert!(spec.name != NODE && spec.name.len() <= 12 && i < 240, "pod {:?}", spec.name);
            let host_part = 10 + i as u8;
            let pod = Pod {
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                netns: id.netns(&spec.name),
                cgroup: lab.cgroup.join(&spec.name),
                interface: "eth0".into(),
                ipv4: Ipv4Addr::new(10, 77, 0, host_part),
                ipv6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, u16::from(host_part)),
            };
            cgroup::create(&pod.cgroup)?;
            netns::add(&pod.netns)?;
            lab.pods.push(pod.clone());
            let addrs = [format!("{}/24", pod.ipv4), format!("{}/64", pod.ipv6)];
            netns::plug(&node, BRIDGE, &format!("v-{}", pod.name), &pod.netns, &addrs)?;
        }
        Ok(lab)
    }

    pub fn id(&self) -> LabId {
        self.id
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The lab's cgroup: the mesh's sock_ops attaches here.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// A pod by name; `"node"` is the node itself.
    pub fn pod(&self, name: &str) -> Result<&Pod, LabError> {
        if name == NODE {
            return Ok(&self.node);
        }
        self.pods.iter().find(|p| p.name == name).ok_or_else(|| LabError::NoPod {
            name: name.to_owned(),
            known: self.pods.iter().map(|p| p.name.as_str()).chain([NODE]).collect::<Vec<_>>().join(", "),
        })
    }

    /// The node as a place to run things; its address on the bridge is set on first use.
    pub fn node(&mut self) -> Result<&Pod, LabError> {
        let ns = self.node.netns.clone();
        let shown = process::ip(&["-n", &ns, "-4", "addr", "show", "dev", BRIDGE])?;
        if !shown.stdout.windows(5).any(|w| w == b"inet ") {
            let addr = format!("{}/24", self.node.ipv4);
            process::ip(&["-n", &ns, "addr", "add", &addr, "dev", BRIDGE])?;
        }
        Ok(&self.node)
    }

    /// Starts `cmd` in `pod` and leaves it running until teardown (or [`Lab::stop`]).
    pub fn spawn(&mut self, pod: &str, cmd: Command) -> Result<u32, LabError> {
        self.spawn_as(pod, cmd, None)
    }

    /// Like [`Lab::spawn`], switching to user `uid` after joining the pod (a sidecar proxy runs
    /// as 1337, which its iptables rules exempt from capture).
    /// Its output (stdout and stderr) goes to the pod's log in the run folder ([`Lab::log_tail`]).
    pub fn spawn_as(&mut self, pod: &str, mut cmd: Command, uid: Option<u32>) -> Result<u32, LabError> {
        let log = self.log_path(pod);
        let dir = self.id.run_dir();
        fs::create_dir_all(&dir).map_err(LabError::io("cannot create", &dir))?;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(LabError::io("cannot open", &log))?;
        let err = out.try_clone().map_err(LabError::io("cannot open", &log))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = self.start(pod, cmd, uid, true)?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Starts `cmd` in `pod` with its stdout and stderr piped; the caller owns (and reaps) it.
    pub fn spawn_piped(&self, pod: &str, mut cmd: Command) -> Result<Child, LabError> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.start(pod, cmd, None, true)
    }

    /// Like [`Lab::spawn_piped`], but the process joins only the pod's network namespace, not
    /// its cgroup: a process outside the lab's cgroup, which the mesh's cgroup programs never
    /// see (it stays in the caller's cgroup).
    pub fn spawn_piped_outside(&self, pod: &str, mut cmd: Command) -> Result<Child, LabError> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        self.start(pod, cmd, None, false)
    }

    /// [`Lab::run`] for a process outside the lab's cgroup (see [`Lab::spawn_piped_outside`]).
    pub fn run_outside(
        &self,
        pod: &str,
        cmd: Command,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Output, LabError> {
        let command = process::describe(&cmd);
        process::succeeded(command, self.run_to_end(pod, cmd, timeout, cancel, false)?)
    }

    /// Where the output of the pod's long-running processes goes.
    pub fn log_path(&self, pod: &str) -> PathBuf {
        self.id.run_dir().join(format!("{pod}.log"))
    }

    /// The last `lines` lines of the pod's log (empty when it has none), for error messages.
    pub fn log_tail(&self, pod: &str, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path(pod)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills and reaps one process started with [`Lab::spawn`].
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.swap_remove(i);
            process::kill_tree(&mut c);
            let _ = c.wait();
        }
    }

    /// Runs `cmd` in `pod` to completion and returns its output whatever its exit status.
    pub fn run_status(
        &self,
        pod: &str,
        cmd: Command,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Output, LabError> {
        self.run_to_end(pod, cmd, timeout, cancel, true)
    }

    fn run_to_end(
        &self,
        pod: &str,
        mut cmd: Command,
        timeout: Duration,
        cancel: &Cancel,
        join_cgroup: bool,
    ) -> Result<Output, LabError> {
        let what = process::describe(&cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = self.start(pod, cmd, None, join_cgroup)?;
        process::wait_output(child, &what, timeout, cancel)
    }

    /// Runs `cmd` in `pod` to completion and returns its output; fails on a non-zero exit, on
    /// `timeout`, or when `cancel` is set (the process is killed first).
    pub fn run(
        &self,
        pod: &str,
        cmd: Command,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Output, LabError> {
        let command = process::describe(&cmd);
        process::succeeded(command, self.run_status(pod, cmd, timeout, cancel)?)
    }

    // ANCHOR: enter_pod
    /// Spawns `cmd` inside the pod: the child joins the pod's network namespace and cgroup
    /// between fork and exec, so every socket it makes is the pod's (and sock_ops sees it).
    /// Without `join_cgroup` it joins the namespace only.
    fn start(
        &self,
        pod: &str,
        mut cmd: Command,
        uid: Option<u32>,
        join_cgroup: bool,
    ) -> Result<Child, LabError> {
        let pod = self.pod(pod)?;
        let ns_path = Path::new(netns::NETNS_DIR).join(&pod.netns);
        let ns = File::open(&ns_path).map_err(LabError::io("cannot open network namespace", &ns_path))?;
        let procs_path = pod.cgroup.join("cgroup.procs");
        let procs = OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(LabError::io("cannot open", &procs_path))?;
        let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
        // SAFETY: the closure runs in the forked child and only makes async-signal-safe
        // syscalls on fds that stay open until spawn() returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" moves the writing process itself into the cgroup.
                if join_cgroup && libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                // Drop root last: joining the namespace and the cgroup needed it.
                if let Some(id) = uid
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0)
                {
                    return Err(io::Error::last_os_error());
                }
                // Die with the lab's owner thread, even if it is killed outright.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // Its own process group: a deadline or a cancel kills what it started too.
        cmd.process_group(0);
        let what = process::describe(&cmd);
        cmd.spawn().map_err(|source| LabError::Spawn { command: what, source })
    }
    // ANCHOR_END: enter_pod

    /// Packet counters of the pod's interface.
    pub fn packets(&self, pod: &str) -> Result<Packets, LabError> {
        let pod = self.pod(pod)?;
        netns::packets(&pod.netns, &pod.interface)
    }

    /// Starts the mesh agent (`agent`: how to run `mesh-agent`) on this lab's cgroup, pinning
    /// in the lab's pin dir; returns what the agent said (installed, or adopted).
    pub fn start_mesh(&mut self, agent: &Cmd, engine: Engine) -> Result<Vec<String>, LabError> {
        if self.agent.is_some() {
            return Ok(Vec::new());
        }
        // The mesh file applied last is the lab's declared mesh: a mesh switched off and on
        // again comes back with it (the same as an agent restarted after a crash).
        let mesh_file = Some(self.id.run_dir().join(MESH_FILE)).filter(|f| f.exists());
        let pods = self.write_file(PODS_FILE, &self.pods_json())?;
        let run_dir = self.id.run_dir();
        let files = crate::agent::Files {
            flow_log: run_dir.join(FLOW_LOG),
            pods,
            control: run_dir.join(CONTROL_SOCKET),
            log: run_dir.join(AGENT_LOG),
            mesh_file,
        };
        let (a, said) = Agent::start(agent, engine, &self.cgroup, &self.id.pin_dir(), files)?;
        self.agent = Some(a);
        Ok(said)
    }

    /// The running mesh's maps (also while its agent is down).
    pub fn mesh(&self) -> Option<&Pinned> {
        self.agent.as_ref().map(Agent::pins)
    }

    pub fn mesh_mut(&mut self) -> Option<&mut Pinned> {
        self.agent.as_mut().map(Agent::pins_mut)
    }

    /// Applies a mesh file through the running agent (the one control plane: the agent knows
    /// the file and the pods behind each identity) and keeps it (see [`MESH_FILE`]): a
    /// restarted agent, and the mesh switched on again, apply it too.
    pub fn apply_mesh_file(&mut self, mesh: &[u8]) -> Result<mesh_agent::control::Applied, LabError> {
        let Some(agent) = self.agent.as_ref() else {
            return Err(LabError::Agent {
                message: "the mesh is off: turn it on first".into(),
                unmet: false,
            });
        };
        // Refused before the file replaces the one a restarted agent would apply.
        if agent.pid().is_none() {
            return Err(LabError::Agent {
                message: "the mesh agent is not running (an `agent` step killed it: start it again first)"
                    .into(),
                unmet: false,
            });
        }
        let file = self.write_file(MESH_FILE, mesh)?;
        self.agent.as_mut().expect("checked").apply(&file)
    }

    /// The pods as the mesh agent's `--pods` file lists them: names, labels, addresses, cgroups.
    pub fn pod_addrs(&self) -> Vec<mesh_agent::meshfile::PodAddrs> {
        self.pods
            .iter()
            .map(|p| mesh_agent::meshfile::PodAddrs {
                name: p.name.clone(),
                labels: p.labels.clone(),
                ipv4: p.ipv4,
                ipv6: Some(p.ipv6),
                cgroups: vec![p.cgroup.clone()],
            })
            .collect()
    }

    fn pods_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.pod_addrs()).expect("pods serialize")
    }

    /// Writes `name` into the lab's run folder (a scenario's `[files]`); returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<PathBuf, LabError> {
        let dir = self.id.run_dir();
        fs::create_dir_all(&dir).map_err(LabError::io("cannot create", &dir))?;
        let path = dir.join(name);
        fs::write(&path, contents).map_err(LabError::io("cannot write", &path))?;
        Ok(path)
    }

    /// The mesh agent process and its pins.
    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    pub fn agent_mut(&mut self) -> Option<&mut Agent> {
        self.agent.as_mut()
    }

    /// Stops the agent, which detaches the mesh and removes its pins.
    pub fn stop_mesh(&mut self) -> Result<(), LabError> {
        match self.agent.take() {
            Some(a) => a.stop(),
            None => Ok(()),
        }
    }

    /// Removes everything, reporting the first failure (it still tries every step).
    pub fn teardown(mut self) -> Result<(), LabError> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<(), LabError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut first: Option<LabError> = None;
        let mut keep = |r: Result<(), LabError>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        keep(self.stop_mesh());
        keep(cgroup::remove_tree(&self.cgroup, KILL_TIMEOUT));
        for mut child in self.children.drain(..) {
            process::kill_tree(&mut child);
            let _ = child.wait();
        }
        for pod in &self.pods {
            keep(netns::delete(&pod.netns));
        }
        keep(netns::delete(&self.id.netns(NODE)));
        let run_dir = self.id.run_dir();
        if run_dir.exists() {
            keep(fs::remove_dir_all(&run_dir).map_err(LabError::io("cannot remove", &run_dir)));
        }
        let _ = fs::remove_dir(RUN_DIR);
        let pin_dir = self.id.pin_dir();
        if pin_dir.exists() {
            keep(fs::remove_dir_all(&pin_dir).map_err(LabError::io("cannot remove", &pin_dir)));
        }
        // The shared parents go too once the last lab has left them.
        for shared in [self.cgroup.parent(), pin_dir.parent()].into_iter().flatten() {
            let _ = fs::remove_dir(shared);
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.teardown_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        let (a, b) = (LabId::new(), LabId::new());
        assert_ne!(a, b);
        assert_eq!(LabId::parse(&a.to_string()), Some(a));
        assert_eq!(LabId::parse("12-x"), None);
        assert!(a.owner_alive());
        assert!(a.netns("client").starts_with(NETNS_PREFIX));
        assert!(a.netns("client").len() <= 40);
    }
}
