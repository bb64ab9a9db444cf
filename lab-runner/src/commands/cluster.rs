//! `lab-runner cluster build|up|status|down|kubectl`: the Kubernetes backend.
use lab_cluster::{
    Cluster, ClusterError,
    daemons::{LAB_IMAGE, Options},
    image::File,
    source,
};

use crate::{
    cli::{ClusterCommand, ClusterUpArgs},
    exit, ui, vmprep,
};

pub fn run(c: ClusterCommand) -> i32 {
    let r = match c {
        ClusterCommand::Build => build().map(|_| exit::OK),
        ClusterCommand::Up(a) => up(&a),
        ClusterCommand::Status { json } => status(json),
        ClusterCommand::Down => down(),
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

fn up(a: &ClusterUpArgs) -> Result<i32, ClusterError> {
    let b = build()?;
    let bins = vmprep::guest_bins(a.guest_bin.as_ref());
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
    // Ctrl-C during `up` stops and removes what was started (a second one exits at once).
    let cancel =
        super::signals::watch().map_err(|_| ClusterError::State("cannot install signal handlers".into()))?;
    let opts = Options { kube_proxy: a.kube_proxy, mesh: a.mesh, lab_image, cancel };
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
