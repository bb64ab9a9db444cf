//! The command line: one `Command` variant per subcommand module.
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::exit;

#[derive(Debug, Parser)]
#[command(
    name = "lab-runner",
    version,
    about = "Sidecarless Lab: run eBPF service-mesh scenarios on real kernels",
    after_help = exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario step by step and check what the kernel did.
    Scenario(ScenarioArgs),
    /// List the scenarios.
    List(ListArgs),
    /// Boot a VM on a pinned kernel and leave it running.
    Up(UpArgs),
    /// Show the running VM.
    Status(StatusArgs),
    /// Run a command in the VM; its exit code becomes ours.
    Exec(ExecArgs),
    /// Interactive shell in the VM (detach with Ctrl-]).
    Shell,
    /// Power the VM off and remove its state.
    Down,
    /// Every scenario on every pinned kernel: a compatibility table.
    Matrix(MatrixArgs),
    /// The pinned kernels: list them, fetch and verify them.
    #[command(subcommand)]
    Kernels(KernelsCommand),
    /// Remove what earlier labs left behind (namespaces, cgroups, pins, processes).
    Clean(CleanArgs),
    /// A real Kubernetes on this machine's kernel, built from Debian's source package.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a workload (used inside pods).
    #[command(hide = true, subcommand)]
    Workload(workloads::Workload),
    /// The mesh's per-node agent (the lab runs it as a daemon; see `mesh-agent --help`).
    #[command(hide = true, subcommand)]
    MeshAgent(mesh_agent::cli::Command),
}

/// Where the scenario's kernel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// A VM on a pinned kernel (QEMU); no root needed.
    Qemu,
    /// The running kernel, in a sandbox of namespaces and cgroups (needs root).
    Host,
    /// The Kubernetes cluster on this machine's kernel (`lab-runner cluster`), for scenarios with
    /// a [kubernetes] section: started for the run (and stopped after) unless one is up.
    Kubernetes,
}

/// How the VM's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    /// KVM if a probe boot shows it works here (cached), else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// Where `up` boots the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    Qemu,
    /// Render a Vagrantfile (libvirt) and run `vagrant up` if vagrant is installed.
    Vagrant,
}

/// Options shared by everything that prepares a VM.
#[derive(Debug, Clone, clap::Args)]
pub struct VmArgs {
    /// Pinned kernel (see `lab-runner kernels list`) [default: 6.1, or the running VM's].
    #[arg(long)]
    pub kernel: Option<String>,
    /// Debian mirror (default: $SIDECARLESS_DEBIAN_MIRROR, else the one apt uses).
    #[arg(long)]
    pub mirror: Option<String>,
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Folder with the static guest binaries (default: target/x86_64-unknown-linux-musl/release
    /// next to this executable's target folder).
    #[arg(long, env = "SIDECARLESS_GUEST_BIN", hide_env_values = true)]
    pub guest_bin: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ScenarioArgs {
    /// Scenario name (see `lab-runner list`), or the path of a scenario file.
    pub name: String,
    /// Guided mode: pause after each step with its explanation and commands to try.
    #[arg(long)]
    pub step: bool,
    /// Where to write outcome.json, report.md and latency.svg (in <scenario>/<time>/).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Where to run it: a VM (booted for the run unless one is up), this machine's kernel, or
    /// the Kubernetes cluster on this machine. Default: qemu, or kubernetes for a scenario with a
    /// [kubernetes] section.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Print the outcome as one JSON object on stdout instead of the step-by-step view.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    #[arg(long, value_enum, default_value_t = Provider::Qemu)]
    pub provider: Provider,
    /// Print the QEMU command line and exit without booting.
    #[arg(long)]
    pub print_qemu: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Give up (and report) if the command has not finished after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// The VM to run it in: the one `up` started, or a scenario's own (its guided run names it
    /// in each `try` line). It runs beside a scenario running there.
    #[arg(long, default_value = lab_vm::machine::DEFAULT_NAME)]
    pub vm: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    /// Kernels to run (comma-separated; default: all pinned).
    #[arg(long, value_delimiter = ',')]
    pub kernels: Vec<String>,
    /// Scenarios to run (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Boots per kernel for the boot-time figure (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub boots: u32,
    /// Where to write matrix.md and matrix.json.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Run every scenario once per engine (comma-separated, e.g. `aya,libbpf`; default: the
    /// `--engine` option's).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub engines: Vec<mesh_agent::Engine>,
    #[arg(long)]
    pub mirror: Option<String>,
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
    #[arg(long, env = "SIDECARLESS_GUEST_BIN", hide_env_values = true)]
    pub guest_bin: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// How scenarios measure (shared by `scenario` and `matrix`).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Measured round trips per latency run (per repetition).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub round_trips: u64,
    /// Repetitions of each bench step; its data paths take turns in every repetition.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub repetitions: u32,
    /// Pin benchmark clients to the first CPU and servers to the last (recorded in the report).
    #[arg(long)]
    pub pin: bool,
    /// Request and response size in bytes for the latency measure.
    #[arg(long, default_value_t = 64, value_parser = parse_size)]
    pub size: usize,
    /// Connections in the conformance suite's `short-lived` case (where a step does not set it).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub short_lived: u32,
    /// Who loads the mesh's redirect (sock_ops + sk_msg): the Rust programs through aya, or their
    /// C twin (CO-RE) through libbpf. Bench paths may name their own.
    #[arg(long, value_enum, default_value_t = mesh_agent::Engine::Aya)]
    pub engine: mesh_agent::Engine,
}

impl RunArgs {
    pub fn options(&self) -> lab_scenario::Options {
        lab_scenario::Options {
            round_trips: self.round_trips,
            repetitions: self.repetitions,
            pin: self.pin,
            size: self.size,
            short_lived: self.short_lived,
            engine: self.engine,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KernelsCommand {
    /// The pinned kernels and whether they are cached.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Download, verify and extract kernels (default: all).
    Fetch {
        names: Vec<String>,
        #[arg(long)]
        mirror: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Build the control plane, kubelet, kube-proxy and kubectl from Debian's `kubernetes` source
    /// package (once; cached by its version).
    Build,
    /// Start etcd, the API server, controller manager, scheduler, containerd and a kubelet (after
    /// building, if no build is cached); the lab's image is imported into containerd.
    Up(ClusterUpArgs),
    /// Show the cluster: its daemons, node, addresses.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop every daemon and pod and remove what they left (netns, mounts, bridge, iptables chains,
    /// pod logs, the state folder).
    Down,
    /// kube-proxy (iptables) against the mesh: connect + first round trip at each number of
    /// Services, and the time from `kubectl scale` to the new pod answering. Starts its own
    /// clusters (one per datapath; none may be up) and takes them down.
    Bench(ClusterBenchArgs),
    /// Run the cluster's kubectl (built from the same source): `lab-runner cluster kubectl get pods -A`.
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ClusterUpArgs {
    /// Also run the real kube-proxy (iptables mode), for comparison with the mesh's socket LB.
    #[arg(long)]
    pub kube_proxy: bool,
    /// Deploy the mesh as a DaemonSet (deploy/mesh.yaml): the agent balances ClusterIP Services
    /// at connect(), in kube-proxy's place.
    #[arg(long)]
    pub mesh: bool,
    /// Folder of the static `workload` and `mesh-agent` binaries for the lab's image [default:
    /// target/x86_64-unknown-linux-musl/release beside this executable].
    #[arg(long)]
    pub guest_bin: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ClusterBenchArgs {
    /// Numbers of Services to measure at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    pub services: Vec<usize>,
    /// Connections per latency repetition.
    #[arg(long, default_value_t = 1000)]
    pub connections: u32,
    /// Latency repetitions per number of Services (each against another Service).
    #[arg(long, default_value_t = 5)]
    pub repetitions: usize,
    /// Scale-to-reachable repetitions per number of Services.
    #[arg(long, default_value_t = 3)]
    pub scale_repetitions: usize,
    /// Also write the samples and their summaries here (JSON).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// As for `cluster up`.
    #[arg(long)]
    pub guest_bin: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
        _ => Err(format!("expected a size in bytes between 1 and 1048576, got {s:?}")),
    }
}
