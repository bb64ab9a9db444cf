//! Where a scenario's pods live: the lab's own sandbox (namespaces and cgroups it makes, the
//! mesh agent its child), or the pods of the Kubernetes cluster on this machine (`[kubernetes]`:
//! the scenario's manifests applied, programs run with `kubectl exec`, the mesh a DaemonSet).
use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use lab_cluster::{ClusterError, session::Session};
use lab_protocol::Pod;
use lab_sandbox::{
    Lab, LabError,
    process::{self, Cancel},
};

use mesh_agent::Counters;
use mesh_common::{AF_INET, AF_INET6};
use workloads::Workload;

use super::{
    engine::{Client, Engine, RUN_TIMEOUT, Role, command_of},
    spec::{Family, Scenario},
};

#[expect(clippy::large_enum_variant, reason = "one per scenario run, never moved in a loop")]
pub enum Site {
    Sandbox(Lab),
    Kubernetes(Kube),
}

/// A scenario's session on the cluster, with the folder its manifests are written to.
pub struct Kube {
    pub session: Session,
    pub dir: PathBuf,
    pub id: String,
}

/// A cluster's failure as the engine reports it.
pub fn lab_error(e: ClusterError) -> LabError {
    match e {
        ClusterError::Cancelled => LabError::Cancelled,
        e => LabError::Kubernetes { unmet: e.is_unmet(), message: e.to_string() },
    }
}

impl Kube {
    /// Applies the scenario's manifests on the cluster that is up and finds its pods.
    pub fn open(sc: &Scenario, cancel: &Cancel) -> Result<Kube, LabError> {
        let k = sc.kubernetes.as_ref().expect("a [kubernetes] scenario");
        let id = format!("kubernetes-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("slab-{id}"));
        let manifests: Vec<(String, String)> =
            k.manifests.iter().map(|m| (m.clone(), sc.files.get(m).cloned().unwrap_or_default())).collect();
        let pods: Vec<String> = sc.pods.iter().map(|p| p.name.clone()).collect();
        let session = Session::open(&dir, &manifests, &pods, cancel).map_err(lab_error)?;
        Ok(Kube { session, dir, id })
    }

    /// Deletes what the scenario applied and its folder.
    pub fn close(self, cancel: &Cancel) -> Result<(), LabError> {
        let r = self.session.close(cancel).map_err(lab_error);
        let _ = std::fs::remove_dir_all(&self.dir);
        r
    }

    /// The workload `argv` (as `workload` takes it) run in `pod`: the image's `/workload`.
    pub fn workload(&self, pod: &str, argv: &[String]) -> Command {
        let words: Vec<String> =
            std::iter::once("/workload".to_owned()).chain(argv.iter().cloned()).collect();
        self.session.exec(pod, &words)
    }

    /// Runs `cmd` (a `kubectl exec`) to its end, within `timeout`; a non-zero exit is an error
    /// when `check`.
    pub fn run(
        &self,
        mut cmd: Command,
        timeout: Duration,
        cancel: &Cancel,
        check: bool,
    ) -> Result<Output, LabError> {
        let what = process::describe(&cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let child = cmd.spawn().map_err(|source| LabError::Spawn { command: what.clone(), source })?;
        let out = process::wait_output(child, &what, timeout, cancel)?;
        if check { process::succeeded(what, out) } else { Ok(out) }
    }
}

impl Site {
    pub fn id(&self) -> String {
        match self {
            Site::Sandbox(lab) => lab.id().to_string(),
            Site::Kubernetes(k) => k.id.clone(),
        }
    }

    pub fn pods(&self) -> &[Pod] {
        match self {
            Site::Sandbox(lab) => lab.pods(),
            Site::Kubernetes(k) => k.session.pods(),
        }
    }

    pub fn pod(&self, name: &str) -> Result<&Pod, LabError> {
        match self {
            Site::Sandbox(lab) => lab.pod(name),
            Site::Kubernetes(k) => k.session.pod(name).ok_or_else(|| LabError::NoPod {
                name: name.to_owned(),
                known: k.session.pods().iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The sandbox, for what only it has (a step the scenario's checks let through on
    /// Kubernetes would be a lab bug).
    pub fn lab(&self) -> Result<&Lab, LabError> {
        match self {
            Site::Sandbox(lab) => Ok(lab),
            Site::Kubernetes(_) => Err(sandbox_only()),
        }
    }

    pub fn lab_mut(&mut self) -> Result<&mut Lab, LabError> {
        match self {
            Site::Sandbox(lab) => Ok(lab),
            Site::Kubernetes(_) => Err(sandbox_only()),
        }
    }

    /// The sandbox's lab, if that is where the pods are.
    pub fn sandbox(&self) -> Option<&Lab> {
        match self {
            Site::Sandbox(lab) => Some(lab),
            Site::Kubernetes(_) => None,
        }
    }

    /// Where the mesh pins its maps (the agent's `--pin-dir`) and the cgroup it attaches to.
    pub fn mesh_place(&self) -> (PathBuf, PathBuf) {
        match self {
            Site::Sandbox(lab) => (lab.id().pin_dir(), lab.cgroup().to_owned()),
            Site::Kubernetes(_) => (PathBuf::from(lab_cluster::MESH_PINS), lab_cluster::mesh::pods_cgroup()),
        }
    }

    pub fn teardown(self, cancel: &Cancel) -> Result<(), LabError> {
        match self {
            Site::Sandbox(lab) => lab.teardown(),
            Site::Kubernetes(k) => k.close(cancel),
        }
    }
}

fn sandbox_only() -> LabError {
    LabError::Bug(
        "a step that needs the lab's sandbox ran on Kubernetes (the checks should refuse it)".into(),
    )
}

/// What the engine asks of wherever the pods are: placeholders, addresses, running programs in
/// pods, the mesh's pins.
impl Engine<'_> {
    /// Fills the placeholders of a `try` command: `<pins>` (the folder holding the mesh's
    /// pinned maps and links), `<pin-dir>` (the agent's `--pin-dir`, above it), `<cgroup>` (the
    /// lab's cgroup), `<flow-log>` (the agent's flow log), `<mesh-agent>` (the agent command),
    /// `<workload>` (the workload command), `<file:NAME>` (a file of the scenario's `[files]`),
    /// `<netns:POD>`, `<ip:POD>` and `<ip6:POD>`; on Kubernetes also `<kubectl>` (the cluster's
    /// kubectl with its kubeconfig), and `<cgroup>` is the pods' cgroup.
    pub(crate) fn fill(&self, t: &str) -> String {
        let (pin_dir, cgroup) = self.site.mesh_place();
        let flow_log = match &self.site {
            Site::Sandbox(lab) => lab.id().run_dir().join(lab_sandbox::lab::FLOW_LOG),
            // The agent container's path (its flow log is in the pod, not on the host).
            Site::Kubernetes(_) => PathBuf::from("/run/mesh/flows.jsonl"),
        };
        let mut s = t.replace("<pins>", &mesh_agent::pins::layout_dir(&pin_dir).display().to_string());
        s = s.replace("<pin-dir>", &pin_dir.display().to_string());
        s = s.replace("<cgroup>", &cgroup.display().to_string());
        s = s.replace("<flow-log>", &flow_log.display().to_string());
        if let Site::Kubernetes(k) = &self.site {
            s = s.replace("<kubectl>", &k.session.kubectl_line());
        }
        let agent = &self.ctx.agent;
        let agent = std::iter::once(agent.program.display().to_string()).chain(agent.prefix.iter().cloned());
        s = s.replace("<mesh-agent>", &agent.collect::<Vec<_>>().join(" "));
        let workload = &self.ctx.workload;
        let workload =
            std::iter::once(workload.program.display().to_string()).chain(workload.prefix.iter().cloned());
        s = s.replace("<workload>", &workload.collect::<Vec<_>>().join(" "));
        for (name, path) in &self.files {
            s = s.replace(&format!("<file:{name}>"), &path.display().to_string());
        }
        for p in self.site.pods() {
            s = s.replace(&format!("<netns:{}>", p.name), &p.netns);
            s = s.replace(&format!("<ip:{}>", p.name), &p.ipv4.to_string());
            s = s.replace(&format!("<ip6:{}>", p.name), &p.ipv6.to_string());
        }
        s
    }

    /// A service's virtual address for `family`, from the mesh file applied last.
    /// On Kubernetes, the Service of that name (its ClusterIP and first port; IPv4 only).
    pub(crate) fn service_address(&self, service: &str, family: Family) -> Option<SocketAddr> {
        if let Site::Kubernetes(k) = &self.site {
            return k
                .session
                .service_address(service)
                .ok()
                .filter(|a| a.is_ipv4() == (family == Family::Ipv4));
        }
        let r = self.services.iter().find(|r| r.name == service)?;
        let k =
            r.keys.iter().find(|k| k.family == if family == Family::Ipv4 { AF_INET } else { AF_INET6 })?;
        let ip: std::net::IpAddr = if k.family == AF_INET {
            Ipv4Addr::from(k.ip[0].to_ne_bytes()).into()
        } else {
            let mut b = [0u8; 16];
            for (i, w) in k.ip.iter().enumerate() {
                b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            std::net::Ipv6Addr::from(b).into()
        };
        Some(SocketAddr::new(ip, k.port as u16))
    }

    /// Who is behind each slot of the service at `address`: from the mesh file applied last, or
    /// on Kubernetes from the Service's Endpoints (one slot per pod). Empty for no service.
    pub(crate) fn service_slots(&self, address: SocketAddr) -> Result<Vec<String>, LabError> {
        match &self.site {
            Site::Sandbox(_) => Ok(self
                .services
                .iter()
                .find(|s| s.serves(address))
                .map(|s| s.slot_names.clone())
                .unwrap_or_default()),
            Site::Kubernetes(k) => k.session.backends(address).map_err(crate::site::lab_error),
        }
    }

    pub(crate) fn pod_ip(&self, pod: &str, family: Family) -> Result<std::net::IpAddr, LabError> {
        let pod = self.site.pod(pod)?;
        Ok(match family {
            Family::Ipv4 => pod.ipv4.into(),
            Family::Ipv6 => pod.ipv6.into(),
        })
    }

    /// Runs a workload client in `from` and parses its one JSON line.
    pub(crate) fn run_json<T: serde::de::DeserializeOwned>(
        &self,
        from: &str,
        w: &Workload,
    ) -> Result<T, LabError> {
        self.run_json_as(Client { pod: from, outside_mesh: false }, w)
    }

    /// [`Self::run_json`], in a pod or outside the mesh in its network namespace.
    pub(crate) fn run_json_as<T: serde::de::DeserializeOwned>(
        &self,
        from: Client<'_>,
        w: &Workload,
    ) -> Result<T, LabError> {
        let args = w.argv();
        let out = if from.outside_mesh {
            let cmd = self.pinned(self.ctx.workload.command(&args), Role::Client);
            self.site.lab()?.run_outside(from.pod, cmd, RUN_TIMEOUT, &self.ctx.cancel)?
        } else {
            self.run_workload(from.pod, &args, Role::Client)?
        };
        serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
            command: format!("workload {}", args.join(" ")),
            detail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
        })
    }

    /// A workload client (`args` as `workload` takes them) run in `pod` to its end; a non-zero
    /// exit is an error. In the sandbox it is this program joining the pod; on Kubernetes the
    /// image's `/workload`, run with `kubectl exec`.
    pub(crate) fn run_workload(
        &self,
        pod: &str,
        args: &[String],
        role: Role,
    ) -> Result<std::process::Output, LabError> {
        match &self.site {
            Site::Sandbox(lab) => {
                let cmd = self.pinned(self.ctx.workload.command(args), role);
                lab.run(pod, cmd, RUN_TIMEOUT, &self.ctx.cancel)
            }
            Site::Kubernetes(k) => k.run(k.workload(pod, args), RUN_TIMEOUT, &self.ctx.cancel, true),
        }
    }

    /// A command (program and arguments) run in `pod` to its end, whatever its exit status.
    pub(crate) fn run_command(&self, pod: &str, words: &[String]) -> Result<std::process::Output, LabError> {
        match &self.site {
            Site::Sandbox(lab) => lab.run_status(pod, command_of(words)?, RUN_TIMEOUT, &self.ctx.cancel),
            Site::Kubernetes(k) => k.run(k.session.exec(pod, words), RUN_TIMEOUT, &self.ctx.cancel, false),
        }
    }

    /// Packets through every pod's eth0, rx + tx.
    pub(crate) fn packets(&self) -> Result<u64, LabError> {
        let lab = self.site.lab()?;
        lab.pods().iter().map(|p| Ok(lab.packets(&p.name)?.total())).sum()
    }

    /// The mesh's counters (zero while it is off). On Kubernetes they are the DaemonSet's pins.
    pub(crate) fn counters(&self) -> Result<Counters, LabError> {
        Ok(self.with_mesh(mesh_agent::Pinned::counters)?.transpose()?.unwrap_or_default())
    }

    /// `f` on the running mesh's pins (`None` while it is off): the lab agent's, or on
    /// Kubernetes the DaemonSet's, opened for the call.
    pub(crate) fn with_mesh<T>(
        &self,
        f: impl FnOnce(&mesh_agent::Pinned) -> T,
    ) -> Result<Option<T>, LabError> {
        match &self.site {
            Site::Sandbox(lab) => Ok(lab.mesh().map(f)),
            Site::Kubernetes(_) => {
                let dir = std::path::Path::new(lab_cluster::MESH_PINS);
                if !dir.exists() {
                    return Ok(None);
                }
                Ok(Some(f(&mesh_agent::Pinned::open(dir)?)))
            }
        }
    }

    /// With `--pin`, the command runs on one CPU: clients on the first, servers on the last.
    pub(crate) fn pinned(&self, mut cmd: std::process::Command, role: Role) -> std::process::Command {
        if self.ctx.options.pin {
            use std::os::unix::process::CommandExt;
            let cpus = self.report.machine.cpus.max(1);
            let cpu = match role {
                Role::Client => 0,
                Role::Server => cpus - 1,
            };
            let mut set = nix::sched::CpuSet::new();
            if let Err(e) = set.set(cpu) {
                self.out("lab", format!("--pin: CPU {cpu}: {e} (running unpinned)"));
                return cmd;
            }
            // SAFETY: between fork and exec only sched_setaffinity runs, which is
            // async-signal-safe; the set was built before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                        .map_err(std::io::Error::from)
                });
            }
        }
        cmd
    }
}
