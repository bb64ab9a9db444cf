//! Starting and stopping the cluster's daemons. `up` leaves them running (each in its own
//! process group, logging to `logs/`), records them in `cluster.json`, and returns; `down` stops
//! them in reverse order and sweeps what they leave ([`teardown`](crate::teardown)).
use std::{
    fs,
    net::TcpStream,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    APISERVER_PORT, ClusterError, ETCD_PEER_PORT, ETCD_PORT, NODE_NAME, POD_CIDR, POD_LOGS, SERVICE_CIDR,
    STATE_DIR,
    config::{self, Layout},
    image::{File, Image},
    log_tail, run,
    source::Build,
    teardown,
};

/// One daemon of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Daemon {
    pub name: String,
    pub pid: u32,
    pub binary: PathBuf,
}

impl Daemon {
    /// Running, and still the program we started (a reused pid is not ours).
    pub fn alive(&self) -> bool {
        let Ok(p) = procfs::process::Process::new(self.pid as i32) else { return false };
        let running = p.stat().is_ok_and(|s| s.state != 'Z');
        running
            && p.exe().is_ok_and(|e| {
                e == self.binary || e.to_string_lossy().starts_with(&*self.binary.to_string_lossy())
            })
    }
}

/// What `up` recorded: enough for `status`, for `down` after a crash, and for clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Debian version of the build that runs.
    pub version: String,
    pub git_version: String,
    pub node_ip: String,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub kube_proxy: bool,
    /// The mesh's DaemonSet was deployed.
    #[serde(default)]
    pub mesh: bool,
    pub daemons: Vec<Daemon>,
    /// `net.ipv4.ip_forward` before `up` set it to 1 (routed pod traffic needs it).
    pub ip_forward_before: String,
    /// Whether kubelet's fixed log folders existed before `up` (then `down` leaves them).
    pub pod_logs_existed: bool,
    /// Images imported into containerd (full names).
    pub images: Vec<String>,
    /// Seconds from start to a Ready node.
    pub ready_s: f64,
}

/// What `up` should start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run the real kube-proxy (iptables mode) beside the rest.
    pub kube_proxy: bool,
    /// Static binaries for the lab's image (`/workload`, `/mesh-agent`), when present.
    pub lab_image: Vec<File>,
    /// Deploy the mesh (`deploy/mesh.yaml`) once the node is ready.
    pub mesh: bool,
    /// Set by Ctrl-C: `up` stops, and stops and removes what it started.
    pub cancel: lab_protocol::Cancel,
}

/// The lab image's name in containerd (pods use it with `imagePullPolicy: Never`).
pub const LAB_IMAGE: &str = "docker.io/local/sidecarless-lab:dev";

/// Progress of `up` and `down`, for the UI.
#[derive(Debug, Clone)]
pub enum UpEvent {
    Started { daemon: String, pid: u32 },
    Ready { what: String, secs: f64 },
    Imported { image: String },
    Stopped { daemon: String },
    Swept { what: String },
}

/// A cluster that is up (its state read back from `cluster.json`).
#[derive(Debug, Clone)]
pub struct Cluster {
    pub layout: Layout,
    pub state: State,
}

/// The machine's address toward its default route: the node's InternalIP and the API server's
/// address (pods and the host reach it there; loopback would not do for the `kubernetes`
/// Service).
pub fn node_ip() -> Result<String, ClusterError> {
    let out = run(Command::new("ip").args(["-4", "route", "get", "192.0.2.1"]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            return words
                .next()
                .map(str::to_owned)
                .ok_or_else(|| ClusterError::State(format!("no address in `{text}`")));
        }
    }
    Err(ClusterError::Unmet(format!(
        "no IPv4 default route to take the node's address from (`ip route get` said: {text})"
    )))
}

fn wait(
    what: &str,
    secs: u64,
    log: &Path,
    daemon: Option<&Daemon>,
    cancel: &lab_protocol::Cancel,
    mut ok: impl FnMut() -> bool,
) -> Result<f64, ClusterError> {
    let t0 = Instant::now();
    loop {
        if cancel.is_cancelled() {
            return Err(ClusterError::Cancelled);
        }
        if ok() {
            return Ok(t0.elapsed().as_secs_f64());
        }
        let dead = daemon.is_some_and(|d| !d.alive());
        if dead || t0.elapsed() > Duration::from_secs(secs) {
            let why = if dead { format!("{what} exited") } else { what.to_owned() };
            return Err(ClusterError::NotReady {
                what: why,
                secs: t0.elapsed().as_secs(),
                log_tail: log_tail(log, 15),
            });
        }
        thread::sleep(Duration::from_millis(250));
    }
}

impl Cluster {
    pub fn layout() -> Layout {
        Layout::new(STATE_DIR)
    }

    /// The cluster recorded in `cluster.json`, if any.
    pub fn find() -> Result<Option<Cluster>, ClusterError> {
        let layout = Cluster::layout();
        let path = layout.state_json();
        match fs::read_to_string(&path) {
            Ok(text) => {
                let state = serde_json::from_str(&text).map_err(|e| {
                    ClusterError::State(format!(
                        "{}: {e} (remove it with `lab-runner cluster down`)",
                        path.display()
                    ))
                })?;
                Ok(Some(Cluster { layout, state }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClusterError::Io { what: "cannot read", path, source: e }),
        }
    }

    /// Every daemon still running.
    pub fn healthy(&self) -> bool {
        self.state.daemons.iter().all(Daemon::alive)
    }

    /// `kubectl` against this cluster.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.state.kubectl);
        c.arg("--kubeconfig").arg(&self.state.kubeconfig);
        c
    }

    /// Starts a cluster. On failure everything started so far is stopped and swept.
    pub fn up(
        build: &Build,
        opts: &Options,
        events: &mut dyn FnMut(UpEvent),
    ) -> Result<Cluster, ClusterError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(ClusterError::Unmet("a cluster needs root (kubelet, containerd, iptables)".into()));
        }
        for tool in
            ["etcd", "containerd", "containerd-shim-runc-v2", "ctr", "runc", "openssl", "iptables-save"]
        {
            if !crate::have(tool) {
                return Err(ClusterError::Unmet(format!(
                    "`{tool}` is missing: run scripts/setup.sh as root"
                )));
            }
        }
        if let Some(c) = Cluster::find()?
            && c.healthy()
        {
            return Err(ClusterError::State(format!(
                "a cluster is already up (node {NODE_NAME}, {}); `lab-runner cluster down` first",
                c.state.git_version
            )));
        }
        // Whatever a crashed cluster left goes first.
        teardown::sweep(&Cluster::layout(), None, events)?;
        let layout = Cluster::layout();
        let state = State {
            version: build.version.clone(),
            git_version: build.git_version.clone(),
            node_ip: node_ip()?,
            kubeconfig: layout.kubeconfig(),
            kubectl: build.binary("kubectl"),
            kube_proxy: opts.kube_proxy,
            mesh: false,
            daemons: Vec::new(),
            ip_forward_before: fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            pod_logs_existed: Path::new(POD_LOGS).exists(),
            images: Vec::new(),
            ready_s: 0.0,
        };
        let mut cluster = Cluster { layout, state };
        match cluster.start(build, opts, events) {
            Ok(()) => Ok(cluster),
            Err(e) => {
                let _ = cluster.down(events);
                Err(e)
            }
        }
    }

    fn save(&self) -> Result<(), ClusterError> {
        let path = self.layout.state_json();
        fs::write(&path, serde_json::to_string_pretty(&self.state).expect("serializes"))
            .map_err(ClusterError::io("cannot write", &path))
    }

    fn spawn(
        &mut self,
        name: &str,
        binary: PathBuf,
        args: &[String],
        events: &mut dyn FnMut(UpEvent),
    ) -> Result<Daemon, ClusterError> {
        let log = self.layout.log(name);
        let f = fs::File::create(&log).map_err(ClusterError::io("cannot create", &log))?;
        let mut cmd = Command::new(&binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().map_err(ClusterError::io("cannot write", &log))?)
            .stderr(f)
            // Its own process group: a Ctrl-C in the terminal that ran `up` does not reach it.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| ClusterError::Command { cmd: crate::describe(&cmd), detail: e.to_string() })?;
        let binary = fs::canonicalize(&binary).unwrap_or(binary);
        let d = Daemon { name: name.to_owned(), pid: child.id(), binary };
        events(UpEvent::Started { daemon: name.to_owned(), pid: d.pid });
        self.state.daemons.push(d.clone());
        self.save()?;
        Ok(d)
    }

    fn start(
        &mut self,
        build: &Build,
        opts: &Options,
        events: &mut dyn FnMut(UpEvent),
    ) -> Result<(), ClusterError> {
        let t0 = Instant::now();
        let l = self.layout.clone();
        for d in [l.root.clone(), l.logs(), l.pki(), l.images(), l.kubelet()] {
            fs::create_dir_all(&d).map_err(ClusterError::io("cannot create", &d))?;
        }
        self.save()?;
        let ip = self.state.node_ip.clone();
        let token = config::token()?;
        config::write_auth(&l, &ip, &token)?;
        run(Command::new("openssl").args(["genrsa", "-out"]).arg(l.sa_key()).arg("2048"))?;
        crate::config::kubelet_client_pki(&l)?;
        let pause_image = format!("docker.io/local/pause:{}", build.pause_tag());
        config::write_runtime(&l, &pause_image)?;
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(ClusterError::io("cannot write", "/proc/sys/net/ipv4/ip_forward"))?;

        let s = |v: &str| v.to_owned();
        let etcd = self.spawn(
            "etcd",
            PathBuf::from("/usr/bin/etcd"),
            &[
                s("--name=slab"),
                format!("--data-dir={}", l.etcd_data().display()),
                format!("--listen-client-urls=http://127.0.0.1:{ETCD_PORT}"),
                format!("--advertise-client-urls=http://127.0.0.1:{ETCD_PORT}"),
                format!("--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}"),
                format!("--initial-cluster=slab=http://127.0.0.1:{ETCD_PEER_PORT}"),
            ],
            events,
        )?;
        let secs = wait("etcd", 30, &l.log("etcd"), Some(&etcd), &opts.cancel, || {
            TcpStream::connect(("127.0.0.1", ETCD_PORT)).is_ok()
        })?;
        events(UpEvent::Ready { what: "etcd".into(), secs });

        let sa = l.sa_key().display().to_string();
        let apiserver = self.spawn(
            "kube-apiserver",
            build.binary("kube-apiserver"),
            &[
                format!("--etcd-servers=http://127.0.0.1:{ETCD_PORT}"),
                format!("--advertise-address={ip}"),
                format!("--bind-address={ip}"),
                format!("--secure-port={APISERVER_PORT}"),
                s("--insecure-port=0"),
                format!("--cert-dir={}", l.pki().display()),
                format!("--token-auth-file={}", l.tokens().display()),
                s("--authorization-mode=RBAC"),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                s("--service-account-issuer=https://kubernetes.default.svc"),
                format!("--service-account-key-file={sa}"),
                format!("--service-account-signing-key-file={sa}"),
                s("--allow-privileged=true"),
                s("--kubelet-preferred-address-types=InternalIP"),
                format!("--kubelet-client-certificate={}", l.kubelet_client().0.display()),
                format!("--kubelet-client-key={}", l.kubelet_client().1.display()),
                s("--profiling=false"),
            ],
            events,
        )?;
        let kubectl = self.kubectl_cmd();
        let secs = wait(
            "kube-apiserver /readyz",
            90,
            &l.log("kube-apiserver"),
            Some(&apiserver),
            &opts.cancel,
            || {
                let mut c = kubectl();
                c.args(["get", "--raw", "/readyz"]);
                c.output().is_ok_and(|o| o.status.success())
            },
        )?;
        events(UpEvent::Ready { what: "kube-apiserver".into(), secs });

        let kc = format!("--kubeconfig={}", l.kubeconfig().display());
        self.spawn(
            "kube-controller-manager",
            build.binary("kube-controller-manager"),
            &[
                kc.clone(),
                format!("--service-account-private-key-file={sa}"),
                format!("--root-ca-file={}", l.apiserver_cert().display()),
                s("--use-service-account-credentials=false"),
                s("--leader-elect=false"),
                s("--port=0"),
                s("--bind-address=127.0.0.1"),
                s("--secure-port=0"),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                format!("--cluster-cidr={POD_CIDR}"),
                s("--profiling=false"),
            ],
            events,
        )?;
        self.spawn(
            "kube-scheduler",
            build.binary("kube-scheduler"),
            &[
                kc.clone(),
                s("--leader-elect=false"),
                s("--port=0"),
                s("--bind-address=127.0.0.1"),
                s("--secure-port=0"),
                s("--profiling=false"),
            ],
            events,
        )?;

        let containerd = self.spawn(
            "containerd",
            PathBuf::from("/usr/bin/containerd"),
            &[format!("--config={}", l.containerd_config().display())],
            events,
        )?;
        let sock = l.containerd_sock();
        let secs = wait("containerd", 30, &l.log("containerd"), Some(&containerd), &opts.cancel, || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        })?;
        events(UpEvent::Ready { what: "containerd".into(), secs });

        let mut images = vec![Image {
            name: pause_image.clone(),
            files: vec![File { path: "pause".into(), from: build.binary("pause"), mode: 0o755 }],
            entrypoint: vec![s("/pause")],
        }];
        if !opts.lab_image.is_empty() {
            images.push(Image {
                name: LAB_IMAGE.into(),
                files: opts.lab_image.clone(),
                entrypoint: vec![s("/workload")],
            });
        }
        for img in images {
            let archive = l
                .images()
                .join(format!("{}.tar", img.name.rsplit('/').next().unwrap_or("image").replace(':', "_")));
            img.write_archive(&archive)?;
            run(Command::new("ctr")
                .arg("--address")
                .arg(&sock)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(&archive))?;
            events(UpEvent::Imported { image: img.name.clone() });
            self.state.images.push(img.name);
        }
        self.save()?;

        // ANCHOR: kubelet
        let kubelet = self.spawn(
            "kubelet",
            build.binary("kubelet"),
            &[
                kc.clone(),
                s("--container-runtime=remote"),
                format!("--container-runtime-endpoint=unix://{}", sock.display()),
                s("--cgroup-driver=cgroupfs"),
                s("--cgroups-per-qos=false"),
                s("--enforce-node-allocatable="),
                s("--fail-swap-on=false"),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={ip}"),
                format!("--root-dir={}", l.kubelet().display()),
                format!("--cert-dir={}", l.kubelet().join("pki").display()),
                format!("--volume-plugin-dir={}", l.kubelet().join("volume-plugins").display()),
                format!("--pod-infra-container-image={pause_image}"),
                format!("--address={ip}"),
                s("--read-only-port=0"),
                s("--anonymous-auth=false"),
                format!("--client-ca-file={}", l.kubelet_ca().display()),
                s("--authorization-mode=AlwaysAllow"),
                s("--make-iptables-util-chains=false"),
                s("--eviction-hard="),
                s("--image-gc-high-threshold=100"),
                s("--serialize-image-pulls=false"),
            ],
            events,
        )?;
        // ANCHOR_END: kubelet
        let kubectl = self.kubectl_cmd();
        let secs = wait("node Ready", 90, &l.log("kubelet"), Some(&kubelet), &opts.cancel, || {
            let mut c = kubectl();
            c.args([
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            c.output().is_ok_and(|o| o.status.success() && o.stdout == b"True")
        })?;
        events(UpEvent::Ready { what: format!("node {NODE_NAME}"), secs });

        if opts.kube_proxy {
            self.start_kube_proxy(build, events)?;
        }
        // Pods need the default ServiceAccount, which the controller manager creates.
        let secs = wait(
            "ServiceAccount default/default",
            60,
            &l.log("kube-controller-manager"),
            None,
            &opts.cancel,
            || {
                let mut c = kubectl();
                c.args(["get", "serviceaccount", "default", "-n", "default"]);
                c.output().is_ok_and(|o| o.status.success())
            },
        )?;
        events(UpEvent::Ready { what: "ServiceAccount default".into(), secs });
        if opts.mesh {
            let t = Instant::now();
            let manifest = crate::mesh::render(&crate::mesh::Values::lab(&self.state.node_ip)?)?;
            crate::mesh::deploy(&kubectl, &manifest, &l.root)?;
            self.state.mesh = true;
            events(UpEvent::Ready { what: "mesh DaemonSet".into(), secs: t.elapsed().as_secs_f64() });
        }
        self.state.ready_s = t0.elapsed().as_secs_f64();
        self.save()
    }

    /// Starts the real kube-proxy (iptables mode).
    pub fn start_kube_proxy(
        &mut self,
        build: &Build,
        events: &mut dyn FnMut(UpEvent),
    ) -> Result<(), ClusterError> {
        let l = self.layout.clone();
        self.spawn(
            "kube-proxy",
            build.binary("kube-proxy"),
            &[
                format!("--kubeconfig={}", l.kubeconfig().display()),
                "--proxy-mode=iptables".into(),
                format!("--hostname-override={NODE_NAME}"),
                format!("--cluster-cidr={POD_CIDR}"),
                "--metrics-bind-address=127.0.0.1:10249".into(),
                "--healthz-bind-address=127.0.0.1:10256".into(),
                // It would otherwise try to raise nf_conntrack_max, which this sandbox refuses.
                "--conntrack-max-per-core=0".into(),
                "--profiling=false".into(),
            ],
            events,
        )?;
        self.state.kube_proxy = true;
        self.save()
    }

    fn kubectl_cmd(&self) -> impl Fn() -> Command + use<> {
        let (bin, kc) = (self.state.kubectl.clone(), self.state.kubeconfig.clone());
        move || {
            let mut c = Command::new(&bin);
            c.arg("--kubeconfig").arg(&kc).arg("--request-timeout=5s");
            c
        }
    }

    /// Stops everything and sweeps what is left; the state folder goes last.
    pub fn down(&self, events: &mut dyn FnMut(UpEvent)) -> Result<(), ClusterError> {
        let apiserver_up = self.state.daemons.iter().any(|d| d.name == "kube-apiserver" && d.alive());
        let kubelet_up = self.state.daemons.iter().any(|d| d.name == "kubelet" && d.alive());
        if apiserver_up && kubelet_up {
            // The kubelet stops the pods itself: CNI DEL for each sandbox, network namespaces
            // unmounted, containers killed. What it does not finish, the sweep does.
            let mut c = self.kubectl_cmd()();
            c.args([
                "delete",
                "deployments,daemonsets,replicasets,statefulsets,jobs,pods",
                "--all",
                "--all-namespaces",
            ])
            .args(["--grace-period=1", "--wait=true", "--timeout=40s"]);
            let _ = c.output();
        }
        // Reverse order of start: kube-proxy and the kubelet first, etcd last.
        for d in self.state.daemons.iter().rev() {
            if d.alive() {
                stop(d);
                events(UpEvent::Stopped { daemon: d.name.clone() });
            }
        }
        teardown::sweep(&self.layout, Some(&self.state), events)?;
        let left = teardown::leftovers();
        if left.is_empty() {
            Ok(())
        } else {
            let list: Vec<String> = left.iter().map(ToString::to_string).collect();
            Err(ClusterError::State(format!("the sweep left: {}", list.join("; "))))
        }
    }
}

/// SIGTERM, up to 10 s, then SIGKILL (and the group: a daemon's helpers go with it).
fn stop(d: &Daemon) {
    let pid = nix::unistd::Pid::from_raw(d.pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    while d.alive() && t0.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(100));
    }
    if d.alive() {
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let t0 = Instant::now();
        while d.alive() && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(100));
        }
    }
}
