//! The scenario file format (scenarios/*.toml). Errors name the file, the line and what was
//! expected; a scenario that parses is also checked for references to undefined pods and
//! results before anything runs.
use std::collections::{BTreeMap, BTreeSet};

use mesh_agent::toml_span::{line_of, locate, subject};
use serde::{Deserialize, Serialize};

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub summary: String,
    #[serde(default)]
    pub requires: Requires,
    pub pods: Vec<PodDef>,
    pub steps: Vec<toml::Spanned<Step>>,
    /// Files the scenario's programs read (a server's configuration, a client's script), by
    /// name: written into the lab's run folder when the lab comes up; `<file:NAME>` in a command
    /// is the file's path. They travel inside the scenario, so a VM gets them too.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The text of every mesh file an `apply` step names by path, read when the scenario is
    /// loaded ([`super::load`]) and sent with it, so a VM applies the file the user has on the
    /// host. Keyed by the step's `file`; shipped mesh files (`mesh/NAME.toml`) are not here.
    #[serde(skip)]
    pub mesh_files: BTreeMap<String, String>,
}

/// What the kernel must offer; anything missing turns the scenario into a skip with the reason.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// Minimum kernel version, `"4.18"`.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Program types (`sock_ops`, `sk_msg`, ...), probed by loading a minimal program.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Map types (`sockhash`, ...), probed by creating a minimal map.
    #[serde(default)]
    pub maps: Vec<String>,
    /// Kernel config options that must be `y` or `m`.
    #[serde(default)]
    pub config: Vec<String>,
    /// Programs that must be installed (`iptables`).
    #[serde(default)]
    pub tools: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodDef {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Started when the lab comes up.
    #[serde(default)]
    pub workload: Option<WorkloadDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WorkloadDef {
    /// `workload rr-server`: answers rr requests.
    RrServer { port: u16 },
    /// `workload echo`.
    Echo { port: u16 },
    /// `workload conform-server`: the server side of the TCP conformance suite.
    ConformServer { port: u16 },
    /// `workload http-server`: 200 OK to every HTTP/1.1 request.
    HttpServer { port: u16 },
    /// `workload transfer-server`: reads to the end, answers with the bytes asked for.
    TransferServer { port: u16 },
    /// Any program (a real server: sockperf, iperf3, redis-server, ...), started with
    /// `command` in the pod and ready once `port` accepts connections.
    Command { port: u16, command: Vec<String> },
}

impl WorkloadDef {
    /// The port the workload listens on.
    pub fn port(&self) -> u16 {
        match self {
            WorkloadDef::RrServer { port }
            | WorkloadDef::Echo { port }
            | WorkloadDef::ConformServer { port }
            | WorkloadDef::HttpServer { port }
            | WorkloadDef::TransferServer { port }
            | WorkloadDef::Command { port, .. } => *port,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

pub use crate::sidecar::SidecarMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
}

impl Op {
    pub fn holds(self, l: f64, r: f64) -> bool {
        match self {
            Op::Lt => l < r,
            Op::Le => l <= r,
            Op::Gt => l > r,
            Op::Ge => l >= r,
            Op::Eq => l == r,
        }
    }
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        }
    }
}

/// Whether a failed expectation fails the scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Check,
    /// A figure to report against a target, not a pass condition (machines are noisy).
    Benchmark,
}

fn one() -> f64 {
    1.0
}

fn thousand() -> u32 {
    1000
}

fn isolation_port() -> u16 {
    7300
}

fn both_families() -> Vec<Family> {
    vec![Family::Ipv4, Family::Ipv6]
}

// ANCHOR: paths
/// One data path of a bench step: what is in the path while it is measured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathDef {
    /// Its results are stored under this name.
    pub name: String,
    #[serde(default = "sidecars_off")]
    pub sidecars: SidecarMode,
    #[serde(default = "off")]
    pub mesh: OnOff,
    /// With the mesh on: its flow records (telemetry) on or off for this path's connections.
    #[serde(default = "on")]
    pub telemetry: OnOff,
    /// With the mesh on: who loads the redirect for this path (default: the run's `--engine`).
    #[serde(default)]
    pub engine: Option<mesh_agent::Engine>,
    /// Shown (with `try`) the first time the path is measured.
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}

/// What a bench step measures on each path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Measure {
    /// Ping-pong round trips at the `--size` option (64 bytes by default).
    #[serde(rename = "latency")]
    Latency,
    /// Ping-pong with 4 KiB requests and responses.
    #[serde(rename = "latency-4k")]
    Latency4k,
    /// Ping-pong with 64 KiB requests and responses.
    #[serde(rename = "latency-64k")]
    Latency64k,
    /// One bulk stream for a second.
    #[serde(rename = "throughput")]
    Throughput,
    /// Four bulk streams at once.
    #[serde(rename = "throughput-4")]
    Throughput4,
    /// Connections per second: connect, one request and response, close.
    #[serde(rename = "connect-rate")]
    ConnectRate,
    /// HTTP/1.1 `GET /api` round trips on one keep-alive connection (the target must be an
    /// `http-server` pod): through the mesh, each request is judged by the HTTP rules.
    #[serde(rename = "http-latency")]
    HttpLatency,
}

impl Measure {
    /// The figures it stores under each path.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Measure::Latency => &[
                "p50",
                "p90",
                "p99",
                "p999",
                "max",
                "mean",
                "rps",
                "packets",
                "msg_redirected",
                "msg_passed",
                "sockets_inserted",
            ],
            Measure::Latency4k => &["p50_4k", "p99_4k"],
            Measure::Latency64k => &["p50_64k", "p99_64k"],
            Measure::Throughput => &["mb_s", "cpu_s_per_gb", "write_errors"],
            Measure::Throughput4 => &["mb_s_4", "cpu_s_per_gb_4", "write_errors_4"],
            Measure::ConnectRate => &["conn_s", "conn_p50"],
            Measure::HttpLatency => &["http_p50", "http_p99"],
        }
    }
}

/// Counts a bench stores per path over its latency runs, or over its tools' runs when it has
/// no latency measure.
pub const COUNTED: [&str; 4] = ["packets", "msg_redirected", "msg_passed", "sockets_inserted"];

// ANCHOR: tools
/// An established tool run on each path beside the lab's own measures (sockperf, iperf3, ...),
/// from the bench's `from` pod; `<ip:POD>` in its command is the pod's IPv4 address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    pub command: Vec<String>,
    /// Figure name -> how to read it from the tool's output.
    pub figures: BTreeMap<String, FigureDef>,
}

/// A figure read from a program's output: the first capture group of the last line the regular
/// expression matches, times `factor`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FigureDef {
    pub regex: String,
    #[serde(default = "one")]
    pub factor: f64,
}
// ANCHOR_END: tools

/// Every figure's regular expression compiles and captures the number.
fn check_figures(figures: &BTreeMap<String, FigureDef>) -> Result<(), String> {
    for (name, f) in figures {
        if name.is_empty() || name.contains('.') {
            return Err(format!("figure name {name:?}: expected a name without dots"));
        }
        let re = regex::Regex::new(&f.regex).map_err(|e| {
            format!("figure {name:?}: `regex` does not compile: {}", e.to_string().replace('\n', " "))
        })?;
        if re.captures_len() < 2 {
            return Err(format!("figure {name:?}: `regex` needs a capture group for the number"));
        }
    }
    Ok(())
}

/// Figures every path stores besides its measures'.
pub const PATH_METRICS: &[&str] =
    &["proxies", "proxy_rss_kb", "proxy_rss_total_kb", "agent_rss_kb", "map_kb", "agent_total_kb"];

fn latency_only() -> Vec<Measure> {
    vec![Measure::Latency]
}

fn sidecars_off() -> SidecarMode {
    SidecarMode::Off
}

fn off() -> OnOff {
    OnOff::Off
}
// ANCHOR_END: paths

// ANCHOR: steps
/// One step. `do` picks the kind; `explain` (Markdown) is shown before the step runs, and `try`
/// lists commands a reader can run at that point (`lab-runner scenario --step` pauses there).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Only text.
    Explain { title: String, text: String },
    /// Data paths measured against each other. Every repetition visits each path in turn
    /// (switching proxies and the mesh to what the path names) and runs every measure there, so
    /// whatever the machine does during the run lands on all paths alike. Figures are stored as
    /// `<path>.<key>` (the median over repetitions, with its spread in the report); after the
    /// step, proxies and mesh are as they were before it.
    Bench {
        from: String,
        to: String,
        /// Where `to` runs `rr-server`.
        port: u16,
        #[serde(default)]
        family: Family,
        paths: Vec<PathDef>,
        #[serde(default = "latency_only")]
        measures: Vec<Measure>,
        /// Established tools run on each visit too, after the measures.
        #[serde(default)]
        tools: Vec<ToolDef>,
        /// Measured repetitions (default: the `--repetitions` option).
        #[serde(default)]
        repetitions: Option<u32>,
        /// Round trips per latency run (default: the `--round-trips` option).
        #[serde(default)]
        round_trips: Option<u64>,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// The TCP conformance suite (`workload conform`) from one pod to another, once per family.
    /// With `compare`, every case's transcript must equal the one the step named there recorded
    /// for the same case and family; `across_mesh` also holds one connection open while the mesh
    /// starts and stops (the mesh must be off at this step).
    Conform {
        name: String,
        from: String,
        to: String,
        port: u16,
        #[serde(default = "both_families")]
        families: Vec<Family>,
        #[serde(default)]
        compare: Option<String>,
        /// A second acceptable reference: a case that differs from `compare` but equals this
        /// run's transcript is `same` (the proxies' own timing can go either way; plain TCP's
        /// behaviour is never the mesh's fault).
        #[serde(default)]
        also_accept: Option<String>,
        /// Only these cases (default: all).
        #[serde(default)]
        cases: Vec<String>,
        /// Connections in the `short-lived` case (default 10,000).
        #[serde(default)]
        short_lived: Option<u32>,
        #[serde(default)]
        across_mesh: bool,
        /// Connect through this service of the mesh file applied last (its virtual address for
        /// each family) instead of to `to`'s own address: socket load balancing in the path.
        #[serde(default)]
        via: Option<String>,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// The same loopback 4-tuple in every listed pod at once (`workload loopback-isolation`):
    /// counts bytes that reached another pod's socket.
    Isolation {
        name: String,
        pods: Vec<String>,
        #[serde(default = "isolation_port")]
        port: u16,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// Turn the eBPF mesh on or off.
    Mesh {
        state: OnOff,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// Put proxies in the data path (or take them out).
    Sidecars {
        mode: SidecarMode,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// Run a command in a pod; its exit code is stored as `<name>.exit`, and each figure read
    /// from its output as `<name>.<figure>`.
    Exec {
        name: String,
        pod: String,
        command: Vec<String>,
        #[serde(default)]
        expect_exit: Option<i32>,
        #[serde(default)]
        figures: BTreeMap<String, FigureDef>,
        #[serde(default)]
        explain: String,
    },
    /// Apply a mesh file to the running mesh, by difference (scenarios/mesh/NAME.toml as
    /// `mesh/NAME.toml`, or a path); stores `added`, `changed`, `removed`, `unchanged`.
    Apply {
        name: String,
        file: String,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// New connections from a pod to a service address, one after another (`workload lb-probe`):
    /// which backend each reached, and what getpeername() said.
    Balance {
        name: String,
        from: String,
        /// The service address, `10.96.0.10:80` or `[fd96::10]:80`.
        address: std::net::SocketAddr,
        /// `udp`: each connection is a new unconnected UDP socket sending two datagrams.
        #[serde(default)]
        protocol: mesh_agent::meshfile::Protocol,
        #[serde(default = "thousand")]
        connections: u32,
        /// Run the client in `from`'s network namespace but outside the lab's cgroup: a process
        /// the mesh never sees connect (no connect4, no sock_ops, no load balancing).
        #[serde(default)]
        outside_mesh: bool,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// HTTP/1.1 requests from a pod over one connection (`workload http-probe`): which were
    /// answered, which failed.
    Http {
        name: String,
        from: String,
        address: std::net::SocketAddr,
        /// `METHOD /path` each, sent in order.
        requests: Vec<String>,
        /// `keep-alive` (one write per request), `split` (each request line in two writes),
        /// `split-headers` (request line, then headers) or `pipeline` (all in one write).
        #[serde(default)]
        mode: workloads::http::Mode,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// Byte-exact transfers from a pod to a `transfer-server` pod (`workload transfer`), one
    /// connection after another, each checked against the mesh's flow log: every flow record of
    /// those connections (the client's, the server's) must carry exactly the bytes the
    /// client wrote and read, each way.
    Transfer {
        name: String,
        from: String,
        to: String,
        port: u16,
        /// Payload bytes each connection sends to the server (plus an 8-byte hello).
        #[serde(default = "million")]
        send: u64,
        /// Bytes the server answers with on each connection.
        #[serde(default = "hundred_thousand")]
        receive: u64,
        #[serde(default = "four")]
        connections: u32,
        /// As for `balance`: the client outside the lab's cgroup. Its socket is not in the
        /// mesh, so nothing is redirected: the flows take TCP, and only the server reports them.
        #[serde(default)]
        outside_mesh: bool,
        /// `tc ... netem` parameters for `to`'s eth0 during the step (`"delay 20ms"`,
        /// `"loss 5%"`). On a kernel without sch_netem the step is skipped with the reason, and
        /// so is every later step that reads its results.
        #[serde(default)]
        netem: Option<String>,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// A real Prometheus server (the `prometheus` binary, in the node's namespace, with a
    /// generated config and its own storage in the lab's folder) scrapes the mesh agent's
    /// metrics; a PromQL query over its HTTP API must find the byte and flow totals the flow
    /// log holds. Skipped with the reason where no `prometheus` binary exists (the VM images).
    Prometheus {
        name: String,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// Steady request/response traffic from a pod in the background (`workload load`), for
    /// `seconds`; the step returns once every connection is up. An `await` step collects it.
    Load {
        name: String,
        from: String,
        /// Where `rr-server` answers: a pod's address and port, or a service address.
        address: std::net::SocketAddr,
        #[serde(default = "four")]
        connections: u32,
        #[serde(default = "ten")]
        seconds: f64,
        /// As for `balance`: outside the lab's cgroup, unseen by the mesh.
        #[serde(default)]
        outside_mesh: bool,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// Waits for the `load` step named `load` to finish; stores its figures under that name.
    Await {
        load: String,
        #[serde(default)]
        explain: String,
    },
    /// The mesh agent process: `kill` it (SIGKILL: no clean-up, the datapath stays in the
    /// pins) or `start` it again (it adopts the pins and re-applies the last mesh file).
    Agent {
        name: String,
        action: AgentAction,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// The cost of one connection (connect() plus the first round trip) to a service against how
    /// many services exist: socket load balancing (services in the mesh's maps) beside
    /// kube-proxy's iptables mode (rules built the way kube-proxy builds them, in `from`'s
    /// namespace). Every count in turn; at each, the repetitions alternate the two. Stores
    /// `mesh_<count>` and `iptables_<count>` (microseconds, the median connection).
    ServiceScale {
        name: String,
        from: String,
        /// The backends: pods with these labels, their rr-server on `port`.
        pods: BTreeMap<String, String>,
        port: u16,
        #[serde(default = "scale_counts")]
        counts: Vec<u32>,
        /// Connections per run.
        #[serde(default = "thousand")]
        connections: u32,
        /// Runs per count and mode (default: the `--repetitions` option).
        #[serde(default)]
        repetitions: Option<u32>,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// The cost of one connection (connect() plus the first round trip) to `address` against how
    /// many allow-list entries the policy holds: the rules of the mesh file applied last, plus
    /// `count` entries between identities no pod has. Stores `rules_<count>` (microseconds, the
    /// median connection).
    PolicyScale {
        name: String,
        from: String,
        address: std::net::SocketAddr,
        #[serde(default = "rule_counts")]
        counts: Vec<u32>,
        #[serde(default = "thousand")]
        connections: u32,
        #[serde(default)]
        repetitions: Option<u32>,
        #[serde(default)]
        explain: String,
        #[serde(default, rename = "try")]
        try_: Vec<String>,
    },
    /// `name.value = factor * metric` (divided by `of` when given): ratios, extrapolations.
    Compute {
        name: String,
        metric: String,
        #[serde(default)]
        of: Option<String>,
        #[serde(default = "one")]
        factor: f64,
        #[serde(default)]
        unit: String,
        #[serde(default)]
        explain: String,
    },
    /// `metric op value`, or `metric op factor * of`.
    Expect {
        metric: String,
        op: Op,
        #[serde(default)]
        value: Option<f64>,
        #[serde(default)]
        of: Option<String>,
        #[serde(default = "one")]
        factor: f64,
        #[serde(default)]
        severity: Severity,
        #[serde(default)]
        explain: String,
    },
}
// ANCHOR_END: steps

/// What an `agent` step does to the mesh agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentAction {
    Kill,
    Start,
}

fn rule_counts() -> Vec<u32> {
    vec![0, 100, 1_000, 10_000]
}

/// Most extra allow entries a `policy-scale` step may add (the map holds 65,536).
pub const MAX_SCALE_RULES: u32 = 60_000;

fn scale_counts() -> Vec<u32> {
    vec![1, 100, 1_000, 10_000]
}

/// Most services a `service-scale` step may install (the mesh's map holds 16,384).
pub const MAX_SCALE_SERVICES: u32 = 10_000;

fn four() -> u32 {
    4
}

fn on() -> OnOff {
    OnOff::On
}

fn million() -> u64 {
    1_000_000
}

fn hundred_thousand() -> u64 {
    100_000
}

fn ten() -> f64 {
    10.0
}

impl Step {
    /// Short kind name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Explain { .. } => "explain",
            Step::Bench { .. } => "bench",
            Step::Conform { .. } => "conform",
            Step::Isolation { .. } => "isolation",
            Step::Mesh { .. } => "mesh",
            Step::Sidecars { .. } => "sidecars",
            Step::Exec { .. } => "exec",
            Step::Apply { .. } => "apply",
            Step::Balance { .. } => "balance",
            Step::Load { .. } => "load",
            Step::Http { .. } => "http",
            Step::Transfer { .. } => "transfer",
            Step::Prometheus { .. } => "prometheus",
            Step::Await { .. } => "await",
            Step::Agent { .. } => "agent",
            Step::ServiceScale { .. } => "service-scale",
            Step::PolicyScale { .. } => "policy-scale",
            Step::Compute { .. } => "compute",
            Step::Expect { .. } => "expect",
        }
    }
}

/// Metrics every conform step stores under its name.
pub const CONFORM_METRICS: &[&str] = &["cases", "differences", "kernel_bugs", "msg_redirected", "held_ok"];

/// Metrics every apply step stores under its name.
pub const APPLY_METRICS: &[&str] = &["added", "changed", "removed", "unchanged"];

/// Metrics every balance step stores under its name: connections made and failed, backends
/// reached, the least and most loaded backend's share against its fair share (1.0 = exactly
/// fair; weights count), connections that reached no backend the service has now, and the share
/// of connections whose getpeername() (UDP: the replies' source) was the service address; messages
/// sk_msg redirected, messages sk_msg saw at all (`msg_seen`: redirected + passed) and sockets
/// sock_ops inserted meanwhile (all the lab's, not only the step's); UDP: the share of sockets whose two datagrams reached one backend; `errno`: the
/// error number every failed connection got (0 when none failed or they differ);
/// `ingress_denied`: packets the ingress policy dropped meanwhile.
pub const BALANCE_METRICS: &[&str] = &[
    "connections",
    "errors",
    "backends",
    "min_ratio",
    "max_ratio",
    "outside",
    "peer_is_service",
    "msg_redirected",
    "msg_seen",
    "inserted",
    "sticky",
    "errno",
    "ingress_denied",
];

/// Metrics every http step stores under its name: requests answered 200 (`ok`), requests that
/// got no answer (`failed`), the error number that ended the connection (`errno`, 0 if none)
/// and requests sk_msg dropped meanwhile (`http_denied`).
pub const HTTP_METRICS: &[&str] = &["ok", "failed", "errno", "http_denied"];

/// Metrics a `prometheus` step stores under its name: byte and flow totals as Prometheus
/// answered them (`sum(mesh_tcp_bytes_total)`, `sum(mesh_tcp_flows_total)`), the same totals
/// from the flow log, and the seconds until they agreed (or the step gave up).
pub const PROMETHEUS_METRICS: &[&str] = &["bytes", "flows", "flow_log_bytes", "flow_log_flows", "seconds"];

/// Metrics a `transfer` step stores under its name: connections done, flow records found and
/// expected, records whose bytes equal the client's count both ways, bytes the client counted,
/// bytes the records say sk_msg redirected and TCP carried (summed over connections, from one
/// record each), the median smoothed RTT and the largest RTT sample (µs), RTT samples, and
/// retransmissions: segments (the kernel's count, the callback's) and the tracepoint's events,
/// over all records.
pub const TRANSFER_METRICS: &[&str] = &[
    "connections",
    "records",
    "expected_records",
    "exact",
    "bytes",
    "redirected_bytes",
    "tcp_bytes",
    "srtt_us",
    "rtt_max_us",
    "rtt_samples",
    "retransmits",
    "retransmits_seen",
    "retransmits_traced",
];

/// Metrics a load stores under its name once awaited: round trips done and failed, the longest
/// round trip in milliseconds, the seconds it ran, and the messages sk_msg dropped by policy
/// meanwhile (`message_denied`, all the lab's connections).
pub const LOAD_METRICS: &[&str] =
    &["round_trips", "failed", "message_denied", "max_round_trip_ms", "seconds"];

/// Metrics every agent step stores under its name: for `kill`, `killed` (1); for `start`,
/// `adopted` (1 when it found the pins and attached nothing, 0 when it installed), `links` and
/// `services` it adopted, `attached_once` (1 when the cgroup runs each mesh program exactly
/// once), and the changes re-applying the mesh file made (`reapplied_changes`).
pub const AGENT_METRICS: &[&str] =
    &["killed", "adopted", "links", "services", "attached_once", "reapplied_changes"];

/// Metrics every isolation step stores under its name.
pub const ISOLATION_METRICS: &[&str] =
    &["bytes", "foreign_bytes", "errors", "msg_redirected", "loopback_skipped"];

/// Pods a lab can hold: one address each in 10.77.0.10-10.77.0.249.
pub const MAX_PODS: usize = 240;
/// Longest pod name: it becomes part of namespace, cgroup and veth names (`v-<pod>` fits
/// IFNAMSIZ).
pub const MAX_POD_NAME: usize = 12;

/// A scenario file that cannot be used: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl Scenario {
    /// Parses and checks a scenario file.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, SpecError> {
        let sc: Scenario = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let line = e.span().map_or(1, |s| locate(text, s, subject(&message).as_deref()));
            SpecError { file: file.to_owned(), line, message }
        })?;
        sc.check(text, file)?;
        Ok(sc)
    }

    /// Pod names become namespace, cgroup and interface names, and each pod one address.
    fn check_pods(&self, text: &str, file: &str) -> Result<(), SpecError> {
        let at = |needle: &str, nth: usize| {
            let line = text.match_indices(needle).nth(nth).map_or(1, |(i, _)| line_of(text, i));
            move |message: String| SpecError { file: file.to_owned(), line, message }
        };
        if self.pods.len() > MAX_PODS {
            let e = at("[[pods]]", MAX_PODS);
            return Err(e(format!(
                "{} pods: the lab's address plan (10.77.0.10-10.77.0.249) holds at most {MAX_PODS}",
                self.pods.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for (k, p) in self.pods.iter().enumerate() {
            let quoted = format!("\"{}\"", p.name);
            let e = at(&quoted, usize::from(seen.contains(p.name.as_str())));
            let valid = p.name.len() <= MAX_POD_NAME
                && p.name.starts_with(|c: char| c.is_ascii_lowercase())
                && p.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                return Err(e(format!(
                    "pod name {quoted}: expected 1 to {MAX_POD_NAME} characters a-z, 0-9 or '-', starting with a letter"
                )));
            }
            if p.name == crate::lab::NODE {
                return Err(e(format!("pod name {quoted} is reserved for the node itself")));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(e(format!("pod name {quoted} is used twice")));
            }
            if p.workload.as_ref().is_some_and(|w| w.port() == 0) {
                return Err(e(format!("pod {quoted}: workload port must be 1-65535")));
            }
            if let Some(WorkloadDef::Command { command, .. }) = &p.workload
                && command.is_empty()
            {
                // The line of the pod's `command =`, after its `[[pods]]` header.
                let from = text.match_indices("[[pods]]").nth(k).map_or(0, |(i, _)| i);
                let line = text[from..].find("command").map_or(1, |i| line_of(text, from + i));
                return Err(SpecError {
                    file: file.to_owned(),
                    line,
                    message: format!(
                        "pod {quoted}: a command workload needs a non-empty `command` (the program, then its arguments)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// File names become paths in the lab's run folder; every `<file:NAME>` names one of them.
    fn check_files(&self, text: &str, file: &str) -> Result<(), SpecError> {
        let at = |needle: &str, message: String| {
            let line = text.find(needle).map_or(1, |i| line_of(text, i));
            SpecError { file: file.to_owned(), line, message }
        };
        for name in self.files.keys() {
            let valid = !name.is_empty()
                && name.len() <= 64
                && !name.starts_with('.')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(at(
                    name,
                    format!(
                        "file name {name:?}: expected 1 to 64 characters a-z, A-Z, 0-9, '.', '_' or '-', not starting with '.'"
                    ),
                ));
            }
        }
        for (i, _) in text.match_indices("<file:") {
            let name: String = text[i + 6..].chars().take_while(|&c| c != '>' && c != '\n').collect();
            if !self.files.contains_key(&name) {
                let known: Vec<&str> = self.files.keys().map(String::as_str).collect();
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                return Err(SpecError {
                    file: file.to_owned(),
                    line: line_of(text, i),
                    message: format!("<file:{name}>: no such file in [files] (known: {known})"),
                });
            }
        }
        Ok(())
    }

    /// A misspelt requirement is the file's mistake, not a missing kernel feature: refuse it
    /// instead of skipping the scenario for it.
    fn check_requires(&self, text: &str, file: &str) -> Result<(), SpecError> {
        let err = |needle: &str, message: String| {
            let line = text.find(needle).map_or(1, |i| line_of(text, i));
            SpecError { file: file.to_owned(), line, message }
        };
        let r = &self.requires;
        if let Some(p) = r.programs.iter().find(|p| !mesh_agent::probe::PROGRAMS.iter().any(|(n, _)| n == p))
        {
            let known = mesh_agent::probe::PROGRAMS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
            return Err(err(
                &format!("\"{p}\""),
                format!("[requires] unknown program type \"{p}\" (known: {known})"),
            ));
        }
        if let Some(m) = r.maps.iter().find(|m| !mesh_agent::probe::MAPS.iter().any(|(n, _)| n == m)) {
            let known = mesh_agent::probe::MAPS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
            return Err(err(
                &format!("\"{m}\""),
                format!("[requires] unknown map type \"{m}\" (known: {known})"),
            ));
        }
        if let Some(c) = r.config.iter().find(|c| !c.starts_with("CONFIG_")) {
            return Err(err(
                &format!("\"{c}\""),
                format!("[requires] config \"{c}\": expected a name like CONFIG_BPF_SYSCALL"),
            ));
        }
        if let Some(k) = &r.kernel {
            let parts: Vec<&str> = k.split('.').collect();
            if !(2..=3).contains(&parts.len())
                || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(err(
                    &format!("\"{k}\""),
                    format!("[requires] kernel \"{k}\": expected a version like \"5.10\""),
                ));
            }
        }
        Ok(())
    }

    /// References: pods exist, metrics name results of earlier steps.
    fn check(&self, text: &str, file: &str) -> Result<(), SpecError> {
        self.check_requires(text, file)?;
        self.check_pods(text, file)?;
        self.check_files(text, file)?;
        let pods: BTreeSet<&str> = self.pods.iter().map(|p| p.name.as_str()).collect();
        let mut results: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        let mut conform_results: BTreeSet<&str> = BTreeSet::new();
        let mut loads: BTreeSet<String> = BTreeSet::new();
        // Keys that depend on a step's settings, owned here so `results` can borrow them.
        let scale_keys: Vec<Vec<String>> = self
            .steps
            .iter()
            .map(|s| match s.get_ref() {
                Step::ServiceScale { counts, .. } => {
                    counts.iter().flat_map(|c| [format!("mesh_{c}"), format!("iptables_{c}")]).collect()
                }
                Step::PolicyScale { counts, .. } => counts.iter().map(|c| format!("rules_{c}")).collect(),
                _ => Vec::new(),
            })
            .collect();
        for (i, step) in self.steps.iter().enumerate() {
            let err = |message: String| {
                let line = locate(text, step.span(), subject(&message).as_deref());
                SpecError { file: file.to_owned(), line, message }
            };
            let pod = |p: &str| {
                if pods.contains(p) {
                    Ok(())
                } else {
                    Err(err(format!(
                        "step {} ({}): no pod named {p:?} (pods: {})",
                        i + 1,
                        step.get_ref().kind(),
                        pods.iter().copied().collect::<Vec<_>>().join(", ")
                    )))
                }
            };
            let metric = |m: &str| -> Result<(), SpecError> {
                let (name, key) = m
                    .rsplit_once('.')
                    .ok_or_else(|| err(format!("step {}: metric {m:?} must look like RESULT.KEY", i + 1)))?;
                match results.get(name) {
                    Some(keys) if keys.contains(&key) => Ok(()),
                    Some(keys) => Err(err(format!(
                        "step {}: metric {m:?}: result {name:?} has no {key:?} (it has: {})",
                        i + 1,
                        keys.join(", ")
                    ))),
                    None => Err(err(format!(
                        "step {}: metric {m:?}: no earlier step stores a result named {name:?} (known: {})",
                        i + 1,
                        results.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))),
                }
            };
            let port_ok = |p: u16| {
                if p == 0 { Err(err(format!("step {}: `port` must be 1-65535", i + 1))) } else { Ok(()) }
            };
            match step.get_ref() {
                Step::Bench { port: 0, .. }
                | Step::Conform { port: 0, .. }
                | Step::Isolation { port: 0, .. } => port_ok(0)?,
                Step::Bench { round_trips: Some(0), .. } => {
                    return Err(err(format!("step {}: `round_trips` must be at least 1", i + 1)));
                }
                Step::Bench { repetitions: Some(0), .. } => {
                    return Err(err(format!("step {}: `repetitions` must be at least 1", i + 1)));
                }
                Step::Bench { from, to, paths, measures, tools, .. } => {
                    pod(from)?;
                    pod(to)?;
                    for t in tools {
                        if t.command.is_empty() || t.figures.is_empty() {
                            return Err(err(format!(
                                "step {}: a tool needs a non-empty `command` and at least one figure",
                                i + 1
                            )));
                        }
                        check_figures(&t.figures).map_err(|m| err(format!("step {}: {m}", i + 1)))?;
                    }
                    if paths.is_empty() || (measures.is_empty() && tools.is_empty()) {
                        return Err(err(format!(
                            "step {}: a bench needs at least one entry in `paths`, and one in `measures` or `tools`",
                            i + 1
                        )));
                    }
                    for p in paths {
                        let quoted = format!("\"{}\"", p.name);
                        if p.name.is_empty() || p.name.contains('.') || p.name.contains(char::is_whitespace) {
                            return Err(err(format!(
                                "step {}: path name {quoted}: expected a name without dots or spaces",
                                i + 1
                            )));
                        }
                        if results.contains_key(&p.name) {
                            return Err(err(format!(
                                "step {}: path name {quoted}: an earlier step already stores results under it",
                                i + 1
                            )));
                        }
                        let mut keys: Vec<&str> = PATH_METRICS.to_vec();
                        for m in measures {
                            keys.extend(m.keys());
                        }
                        keys.extend(tools.iter().flat_map(|t| t.figures.keys().map(String::as_str)));
                        if !tools.is_empty() && !measures.contains(&Measure::Latency) {
                            keys.extend(COUNTED);
                        }
                        results.insert(p.name.clone(), keys);
                    }
                }
                Step::Conform { name, from, to, compare, also_accept, cases, families, .. } => {
                    pod(from)?;
                    pod(to)?;
                    for (key, c) in [("compare", compare), ("also_accept", also_accept)] {
                        if let Some(c) = c
                            && !conform_results.contains(c.as_str())
                        {
                            return Err(err(format!(
                                "step {}: {key} = {c:?}: no earlier conform step is named so",
                                i + 1
                            )));
                        }
                    }
                    if let Some(bad) = cases.iter().find(|c| !workloads::conform::CASES.contains(&c.as_str()))
                    {
                        return Err(err(format!(
                            "step {}: unknown case \"{bad}\" (cases: {})",
                            i + 1,
                            workloads::conform::CASES.join(", ")
                        )));
                    }
                    if families.is_empty() {
                        return Err(err(format!("step {}: families must name ipv4 and/or ipv6", i + 1)));
                    }
                    conform_results.insert(name);
                    results.insert(name.clone(), CONFORM_METRICS.to_vec());
                }
                Step::Isolation { name, pods: ps, .. } => {
                    if ps.len() < 2 {
                        return Err(err(format!("step {}: isolation needs at least two pods", i + 1)));
                    }
                    for p in ps {
                        pod(p)?;
                    }
                    results.insert(name.clone(), ISOLATION_METRICS.to_vec());
                }
                Step::Exec { name, pod: p, command, figures, .. } => {
                    pod(p)?;
                    if command.is_empty() {
                        return Err(err(format!("step {}: exec needs a non-empty command", i + 1)));
                    }
                    check_figures(figures).map_err(|m| err(format!("step {}: {m}", i + 1)))?;
                    let mut keys = vec!["exit"];
                    keys.extend(figures.keys().map(String::as_str));
                    results.insert(name.clone(), keys);
                }
                Step::Compute { name, metric: m, of, .. } => {
                    metric(m)?;
                    if let Some(o) = of {
                        metric(o)?;
                    }
                    results.insert(name.clone(), vec!["value"]);
                }
                Step::Expect { metric: m, of, value, .. } => {
                    metric(m)?;
                    match (of, value) {
                        (Some(o), None) => metric(o)?,
                        (None, Some(_)) => {}
                        _ => {
                            return Err(err(format!(
                                "step {}: expect needs exactly one of `value` or `of`",
                                i + 1
                            )));
                        }
                    }
                }
                Step::Apply { name, .. } => {
                    results.insert(name.clone(), APPLY_METRICS.to_vec());
                }
                Step::Balance { name, from, connections, .. } => {
                    pod(from)?;
                    if *connections == 0 {
                        return Err(err(format!("step {}: `connections` must be at least 1", i + 1)));
                    }
                    results.insert(name.clone(), BALANCE_METRICS.to_vec());
                }
                Step::Http { name, from, requests, .. } => {
                    pod(from)?;
                    if requests.is_empty() {
                        return Err(err(format!(
                            "step {}: `requests` must name at least one request",
                            i + 1
                        )));
                    }
                    results.insert(name.clone(), HTTP_METRICS.to_vec());
                }
                Step::Transfer { name, from, to, connections, netem, .. } => {
                    pod(from)?;
                    pod(to)?;
                    if *connections == 0 {
                        return Err(err(format!("step {}: `connections` must be at least 1", i + 1)));
                    }
                    if netem.as_ref().is_some_and(|n| n.split_whitespace().next().is_none()) {
                        return Err(err(format!(
                            "step {}: `netem` needs tc netem parameters, like \"delay 20ms\"",
                            i + 1
                        )));
                    }
                    results.insert(name.clone(), TRANSFER_METRICS.to_vec());
                }
                Step::Prometheus { name, .. } => {
                    results.insert(name.clone(), PROMETHEUS_METRICS.to_vec());
                }
                Step::Load { name, from, connections, seconds, .. } => {
                    pod(from)?;
                    if *connections == 0 || !(*seconds > 0.0 && *seconds <= 600.0) {
                        return Err(err(format!(
                            "step {}: a load needs at least 1 connection and 0 < seconds <= 600",
                            i + 1
                        )));
                    }
                    if results.contains_key(name) {
                        return Err(err(format!("step {}: name {name:?} is already used", i + 1)));
                    }
                    loads.insert(name.clone());
                }
                Step::Await { load, .. } => {
                    if !loads.remove(load) {
                        return Err(err(format!(
                            "step {}: await {load:?}: no earlier load step by that name is still running",
                            i + 1
                        )));
                    }
                    results.insert(load.clone(), LOAD_METRICS.to_vec());
                }
                Step::Agent { name, .. } => {
                    results.insert(name.clone(), AGENT_METRICS.to_vec());
                }
                Step::PolicyScale { name, from, counts, connections, .. } => {
                    pod(from)?;
                    if counts.is_empty() || counts.iter().any(|c| *c > MAX_SCALE_RULES) {
                        return Err(err(format!(
                            "step {}: counts must be 0 to {MAX_SCALE_RULES} rules each",
                            i + 1
                        )));
                    }
                    if *connections == 0 {
                        return Err(err(format!("step {}: `connections` must be at least 1", i + 1)));
                    }
                    results.insert(name.clone(), scale_keys[i].iter().map(String::as_str).collect());
                }
                Step::ServiceScale { name, from, port, counts, connections, .. } => {
                    pod(from)?;
                    port_ok(*port)?;
                    if counts.is_empty() || counts.iter().any(|c| *c == 0 || *c > MAX_SCALE_SERVICES) {
                        return Err(err(format!(
                            "step {}: counts must be 1 to {MAX_SCALE_SERVICES} services each",
                            i + 1
                        )));
                    }
                    if *connections == 0 {
                        return Err(err(format!("step {}: `connections` must be at least 1", i + 1)));
                    }
                    results.insert(name.clone(), scale_keys[i].iter().map(String::as_str).collect());
                }
                Step::Explain { .. } | Step::Mesh { .. } | Step::Sidecars { .. } => {}
            }
        }
        if let Some(l) = loads.first() {
            let line = text.find(&format!("\"{l}\"")).map_or(1, |i| line_of(text, i));
            return Err(SpecError {
                file: file.to_owned(),
                line,
                message: format!("load {l:?} is never awaited (add a step: do = \"await\", load = {l:?})"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared with the CLI tests (tests/cli.rs), which assert the same messages end to end.
    const GOOD: &str = include_str!("testdata/two-pods.toml");

    #[test]
    fn parses_a_good_file() {
        let s = Scenario::parse(GOOD, "t.toml").unwrap();
        assert_eq!(s.steps.len(), 2);
        assert!(matches!(s.steps[1].get_ref(), Step::Expect { op: Op::Gt, .. }));
    }

    fn err(text: &str) -> String {
        Scenario::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_typo_in_a_key_names_file_line_and_the_expected_keys() {
        let e = err(&GOOD.replace("from = \"a\"", "form = \"a\""));
        assert!(e.starts_with("t.toml:12: unknown field `form`, expected one of"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_file_and_line() {
        let e = err(&GOOD.replace("port = 7000\n\n[[steps]]", "port = \"seven\"\n\n[[steps]]"));
        assert!(e.starts_with("t.toml:14: invalid type: string \"seven\", expected u16"), "{e}");
    }

    #[test]
    fn an_unknown_step_names_the_known_ones() {
        let e = err(&GOOD.replace("do = \"expect\"", "do = \"expekt\""));
        assert!(
            e.starts_with("t.toml:17: unknown variant `expekt`, expected one of `explain`, `bench`"),
            "{e}"
        );
    }

    #[test]
    fn references_are_checked() {
        let e = err(&GOOD.replace("to = \"b\"", "to = \"c\""));
        assert!(e.starts_with("t.toml:13: step 1 (bench): no pod named \"c\""), "{e}");
        let e = err(&GOOD.replace("metric = \"direct.p50\"", "metric = \"sidecars.p50\""));
        assert!(e.starts_with("t.toml:18: step 2: metric \"sidecars.p50\": no earlier step stores a result named \"sidecars\""), "{e}");
        let e = err(&GOOD.replace("metric = \"direct.p50\"", "metric = \"direct.p42\""));
        assert!(e.contains("has no \"p42\""), "{e}");
    }

    #[test]
    fn bad_pods_and_ports_name_file_and_line() {
        let e = err(&GOOD.replace("name = \"b\"", "name = \"node\""));
        assert!(e.starts_with("t.toml:") && e.contains("\"node\" is reserved"), "{e}");
        let e = err(&GOOD.replace("name = \"b\"", "name = \"a\""));
        assert!(e.contains("pod name \"a\" is used twice"), "{e}");
        let e = err(&GOOD.replace("name = \"b\"", "name = \"with space\""));
        assert!(e.contains("expected 1 to 12 characters"), "{e}");
        let e = err(&GOOD.replace("name = \"b\"", "name = \"thirteen-char\""));
        assert!(e.contains("expected 1 to 12 characters"), "{e}");
        let e = err(&GOOD.replace("port = 7000\n\n[[steps]]", "port = 0\n\n[[steps]]"));
        assert!(e.starts_with("t.toml:") && e.contains("`port` must be 1-65535"), "{e}");
        let many: String = (0..241).map(|i| format!("[[pods]]\nname = \"p{i}\"\n")).collect();
        let text = format!("name = \"x\"\nsummary = \"x\"\nsteps = []\n{many}");
        let e = err(&text);
        assert!(e.contains("241 pods") && e.contains("at most 240"), "{e}");
    }

    #[test]
    fn bench_paths_and_measures_are_checked() {
        let e = err(&GOOD.replace("{ name = \"direct\" }", "{ name = \"di.rect\" }"));
        assert!(
            e.starts_with("t.toml:11: step 1: path name \"di.rect\": expected a name without dots"),
            "{e}"
        );
        let e = err(&GOOD.replace("paths = [{ name = \"direct\" }]", "paths = []"));
        assert!(e.contains("at least one entry in `paths`, and one in `measures` or `tools`"), "{e}");
        let e = err(&GOOD.replace("port = 7000\n", "port = 7000\nmeasures = []\n"));
        assert!(e.contains("at least one entry in `paths`, and one in `measures` or `tools`"), "{e}");
        let e = err(&GOOD.replace("{ name = \"direct\" }", "{ name = \"direct\", mesh = \"yes\" }"));
        assert!(e.starts_with("t.toml:11: unknown variant `yes`, expected `on` or `off`"), "{e}");
        let e = err(&GOOD.replace("port = 7000\n", "port = 7000\nmeasures = [\"latency-1k\"]\n"));
        assert!(e.contains("unknown variant `latency-1k`, expected one of `latency`, `latency-4k`"), "{e}");
        let e = err(&GOOD.replace("port = 7000\n", "port = 7000\nrepetitions = 0\n"));
        assert!(e.contains("`repetitions` must be at least 1"), "{e}");
        let twice = GOOD
            .replace("{ name = \"direct\" }", "{ name = \"direct\" }, { name = \"direct\", mesh = \"on\" }");
        assert!(
            err(&twice).contains("path name \"direct\": an earlier step already stores results under it")
        );
    }

    #[test]
    fn figures_need_a_regex_that_compiles_and_captures() {
        let exec = "[[steps]]\ndo = \"exec\"\nname = \"e\"\npod = \"a\"\ncommand = [\"true\"]\n";
        let bad = format!("{GOOD}\n{exec}figures = {{ x = {{ regex = '([0-9' }} }}\n");
        let e = err(&bad);
        assert!(e.contains("step 3: figure \"x\": `regex` does not compile"), "{e}");
        let bad = format!("{GOOD}\n{exec}figures = {{ x = {{ regex = '[0-9]+' }} }}\n");
        assert!(err(&bad).contains("needs a capture group"));
        let good = format!("{GOOD}\n{exec}figures = {{ x = {{ regex = '([0-9]+) ops' }} }}\n");
        Scenario::parse(&good, "t.toml").unwrap();
    }

    #[test]
    fn a_command_workload_needs_a_program() {
        let pod = "[[pods]]\nname = \"c\"\nworkload = { kind = \"command\", port = 80, command = [] }\n";
        let text = format!("{GOOD}\n{pod}");
        let line = text.lines().position(|l| l.contains("command = []")).unwrap() + 1;
        assert_eq!(
            err(&text),
            format!(
                "t.toml:{line}: pod \"c\": a command workload needs a non-empty `command` (the program, then its arguments)"
            )
        );
    }

    #[test]
    fn files_are_named_plainly_and_every_file_placeholder_names_one() {
        let exec =
            "[[steps]]\ndo = \"exec\"\nname = \"x\"\npod = \"a\"\ncommand = [\"cat\", \"<file:a.conf>\"]\n";
        let good = format!("{GOOD}\n{exec}\n[files]\n\"a.conf\" = \"x\"\n");
        Scenario::parse(&good, "t.toml").unwrap();
        let e = err(&format!("{GOOD}\n{exec}"));
        let line = format!("{GOOD}\n{exec}").lines().position(|l| l.contains("<file:")).unwrap() + 1;
        assert_eq!(e, format!("t.toml:{line}: <file:a.conf>: no such file in [files] (known: none)"));
        let e = err(&format!("{GOOD}\n{exec}\n[files]\n\"../a.conf\" = \"x\"\n"));
        assert!(e.contains("file name \"../a.conf\": expected 1 to 64 characters"), "{e}");
    }

    #[test]
    fn a_typo_in_requires_is_the_file_s_error() {
        let with = |req: &str| format!("{GOOD}\n{req}\n");
        let line = GOOD.lines().count() + 3;
        let e = err(&with("[requires]\nprograms = [\"sock_opz\"]"));
        let want = format!("t.toml:{line}: [requires] unknown program type \"sock_opz\" (known: sock_ops");
        assert!(e.starts_with(&want), "{e}");
        let e = err(&with("[requires]\nmaps = [\"sockhsah\"]"));
        assert!(e.contains("unknown map type \"sockhsah\""), "{e}");
        let e = err(&with("[requires]\nkernel = \"5.1O\""));
        let want = format!("t.toml:{line}: [requires] kernel \"5.1O\": expected a version");
        assert!(e.starts_with(&want), "{e}");
        let e = err(&with("[requires]\nconfig = [\"BPF_SYSCALL\"]"));
        assert!(e.contains("expected a name like CONFIG_BPF_SYSCALL"), "{e}");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        for (file, text) in super::super::BUILTIN {
            Scenario::parse(text, file).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
