//! `lab-runner cluster build|up|status|down|kubectl`: the Kubernetes backend.
use lab_cluster::{
    Cluster, ClusterError,
    bench::{BenchEvent, BenchOptions, Cell},
    daemons::{LAB_IMAGE, Options},
    image::File,
    source,
};
use lab_scenario::stats::Spread;
use serde::Serialize;

use crate::{
    cli::{ClusterBenchArgs, ClusterCommand, ClusterUpArgs},
    exit, ui, vmprep,
};

pub fn run(c: ClusterCommand) -> i32 {
    let r = match c {
        ClusterCommand::Build => build().map(|_| exit::OK),
        ClusterCommand::Up(a) => up(&a),
        ClusterCommand::Status { json } => status(json),
        ClusterCommand::Down => down(),
        ClusterCommand::Bench(a) => bench(&a),
        ClusterCommand::Kubectl { args } => kubectl(&args),
    };
    r.unwrap_or_else(|e| ui::fail_cluster(&e))
}

fn build() -> Result<source::Build, ClusterError> {
    let mut view = ui::BuildView::new();
    let b = source::ensure(&mut |e| view.event(&e))?;
    println!("Kubernetes {} (Debian {}): {}", b.git_version, b.version, b.bin.display());
    Ok(b)
}

/// What every `up` takes: the lab's image from the guest binaries, Ctrl-C watched.
fn base_options(guest_bin: Option<&std::path::PathBuf>) -> Result<Options, ClusterError> {
    // Ctrl-C during `up` stops and removes what was started (a second one exits at once).
    let cancel =
        super::signals::watch().map_err(|_| ClusterError::State("cannot install signal handlers".into()))?;
    Ok(options_with(guest_bin, cancel))
}

/// A cluster for one run (`lab-runner scenario` on Kubernetes): built if need be, started with
/// neither kube-proxy nor the mesh (the scenario deploys the mesh); `cancel` stops it half-way.
pub fn up_for_run(cancel: &lab_protocol::Cancel) -> Result<Cluster, ClusterError> {
    let b = build()?;
    let c = Cluster::up(&b, &options_with(None, cancel.clone()), &mut |e| ui::cluster_event(&e))?;
    eprintln!(
        "cluster up in {:.1} s for this run (Kubernetes {}); it goes down after it",
        c.state.ready_s, c.state.git_version
    );
    Ok(c)
}

fn options_with(guest_bin: Option<&std::path::PathBuf>, cancel: lab_protocol::Cancel) -> Options {
    let bins = vmprep::guest_bins(guest_bin);
    let lab_image: Vec<File> = ["workload", "mesh-agent"]
        .into_iter()
        .map(|n| File { path: n.into(), from: bins.join(n), mode: 0o755 })
        .filter(|f| f.from.is_file())
        .collect();
    if lab_image.is_empty() {
        eprintln!(
            "note: no static workload/mesh-agent in {} (scripts/build.sh makes them): no {LAB_IMAGE}",
            bins.display()
        );
    }
    Options { kube_proxy: false, mesh: false, lab_image, cancel }
}

fn up(a: &ClusterUpArgs) -> Result<i32, ClusterError> {
    let b = build()?;
    let opts = Options { kube_proxy: a.kube_proxy, mesh: a.mesh, ..base_options(a.guest_bin.as_ref())? };
    let c = Cluster::up(&b, &opts, &mut |e| ui::cluster_event(&e))?;
    let s = &c.state;
    println!(
        "cluster up in {:.1} s: Kubernetes {}, node {} at {}{}",
        s.ready_s,
        s.git_version,
        lab_cluster::NODE_NAME,
        s.node_ip,
        match (s.kube_proxy, s.mesh) {
            (true, true) => ", kube-proxy (iptables) and the mesh",
            (true, false) => ", kube-proxy (iptables)",
            (false, true) => ", the mesh in kube-proxy's place",
            (false, false) => ", no kube-proxy",
        }
    );
    println!("kubectl: {} --kubeconfig {}", s.kubectl.display(), s.kubeconfig.display());
    Ok(exit::OK)
}

fn status(json: bool) -> Result<i32, ClusterError> {
    let Some(c) = Cluster::find()? else {
        println!("{}", if json { "null" } else { "no cluster is up" });
        return Ok(exit::OK);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&c.state).expect("serializes"));
        return Ok(exit::OK);
    }
    let s = &c.state;
    println!(
        "Kubernetes {} (Debian {}), node {} at {}",
        s.git_version,
        s.version,
        lab_cluster::NODE_NAME,
        s.node_ip
    );
    for d in &s.daemons {
        println!("  {:<24} pid {:<8} {}", d.name, d.pid, if d.alive() { "running" } else { "NOT RUNNING" });
    }
    println!("kubectl: {} --kubeconfig {}", s.kubectl.display(), s.kubeconfig.display());
    Ok(if c.healthy() { exit::OK } else { exit::BACKEND })
}

fn down() -> Result<i32, ClusterError> {
    if let Some(c) = Cluster::find()? {
        c.down(&mut |e| ui::cluster_event(&e))?;
        println!("cluster down; nothing left");
    } else {
        // No record, but perhaps what a crashed cluster left.
        lab_cluster::teardown::sweep(&Cluster::layout(), None, &mut |e| ui::cluster_event(&e))?;
        println!("no cluster is up");
    }
    Ok(exit::OK)
}

fn kubectl(args: &[String]) -> Result<i32, ClusterError> {
    let Some(c) = Cluster::find()? else {
        return Err(ClusterError::State("no cluster is up (`lab-runner cluster up`)".into()));
    };
    let status = c
        .kubectl()
        .args(args)
        .status()
        .map_err(|e| ClusterError::Command { cmd: "kubectl".into(), detail: e.to_string() })?;
    Ok(status.code().unwrap_or(exit::BACKEND))
}

/// One row of the comparison: a datapath at a number of Services, summarized.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    cell: Cell,
    p50_us_summary: Option<Spread>,
    p99_us_summary: Option<Spread>,
    scale_ms_summary: Option<Spread>,
}

fn show(s: Option<&Spread>, digits: usize) -> String {
    s.map_or("-".into(), |s| format!("{:.digits$} [{:.digits$}, {:.digits$}]", s.median, s.lo, s.hi))
}

fn bench(a: &ClusterBenchArgs) -> Result<i32, ClusterError> {
    if Cluster::find()?.is_some() {
        return Err(ClusterError::State(
            "a cluster is up: the benchmark starts its own (`lab-runner cluster down` first)".into(),
        ));
    }
    let mut services = a.services.clone();
    services.sort_unstable();
    services.dedup();
    let b = build()?;
    let base = base_options(a.guest_bin.as_ref())?;
    let opts = BenchOptions {
        services,
        connections: a.connections,
        repetitions: a.repetitions,
        scale_repetitions: a.scale_repetitions,
    };
    let cells = lab_cluster::bench::run_bench(&b, &base, &opts, &mut |e| match e {
        BenchEvent::Up(e) => ui::cluster_event(&e),
        BenchEvent::Stage(s) => eprintln!("== {s}"),
        BenchEvent::Cell(c) => eprintln!(
            "{} at {} Services: created in {:.1} s, answering {:.2} s later; connect+rr p50 {} us; scale {} ms",
            c.datapath.name(),
            c.services,
            c.create_s,
            c.programmed_s,
            show(Spread::of(&c.p50_us).as_ref(), 1),
            show(Spread::of(&c.scale_ms).as_ref(), 0),
        ),
    })?;
    let rows: Vec<Row> = cells
        .into_iter()
        .map(|cell| Row {
            p50_us_summary: Spread::of(&cell.p50_us),
            p99_us_summary: Spread::of(&cell.p99_us),
            scale_ms_summary: Spread::of(&cell.scale_ms),
            cell,
        })
        .collect();
    println!(
        "| Services | datapath | connect + round trip p50, µs | p99, µs | scale to reachable, ms | programmed, s |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} |",
            r.cell.services,
            r.cell.datapath.name(),
            show(r.p50_us_summary.as_ref(), 1),
            show(r.p99_us_summary.as_ref(), 1),
            show(r.scale_ms_summary.as_ref(), 0),
            r.cell.programmed_s
        );
    }
    println!("(median [95% interval of the median] over the repetitions)");
    if let Some(out) = &a.out {
        let json = serde_json::json!({
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "kubernetes": b.git_version,
            "connections": a.connections,
            "rows": rows,
        });
        std::fs::write(out, serde_json::to_string_pretty(&json).expect("serializes"))
            .map_err(ClusterError::io("cannot write", out))?;
        eprintln!("samples: {}", out.display());
    }
    Ok(exit::OK)
}
