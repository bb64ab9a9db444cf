//! The sockmap scenario: the same request/response benchmark over plain TCP and with the mesh's
//! sock_ops + sk_msg redirect, between two pods on one node.
//!
//! Proof that redirection happened is read from the kernel: the sk_msg counter of redirected
//! messages, and the packets that crossed the pods' veth interfaces during each run.
use std::{net::SocketAddr, time::Duration};

use mesh_agent::{Counters, PROGRAMS};
use serde::Serialize;
use workloads::rr::RrReport;

use super::{Context, Outcome, kernel_release};
use crate::{Event, Lab, LabError, PodSpec};

/// Port the rr server listens on in the server pod.
const PORT: u16 = 7000;
/// Round trips of the short IPv6 check.
const IPV6_ROUND_TRIPS: u64 = 2_000;
/// Upper bound for one rr run (generous: emulated VMs are slow).
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// The mesh run may put at most this share of the plain run's packets on the wire.
pub const MAX_PACKET_SHARE: f64 = 0.01;
/// The benchmark target for the p50 ratio (printed, not enforced: machines are noisy).
pub const P50_RATIO_TARGET: f64 = 0.8;

/// One rr run and what the kernel saw during it.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub rr: RrReport,
    /// Packets through both pods' eth0, rx + tx.
    pub packets: u64,
    /// Mesh counters during the run (all zero without the mesh).
    pub mesh: Counters,
}

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lab: String,
    pub plain: Run,
    pub sockmap: Run,
    pub ipv6: Run,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub packet_share: f64,
}

const EXPLAIN_PLAIN: &str = "Plain TCP: every 64-byte request and response goes down the client's TCP/IP stack, \
through its veth, across the node's bridge, into the server pod's veth and up its stack. \
Each round trip is at least two packets on each pod interface.";
const EXPLAIN_MESH_ON: &str = "Mesh on: sock_ops is attached to the lab's cgroup and puts every established TCP \
socket of the pods into a sockhash keyed by its 4-tuple; sk_msg is attached to that sockhash.";
const EXPLAIN_SOCKMAP: &str = "Same benchmark with the mesh: on each send, sk_msg looks up the peer socket by the \
reversed 4-tuple and queues the bytes straight onto its receive queue. Only the TCP handshake \
and teardown still cross the interfaces.";
const EXPLAIN_IPV6: &str = "The same redirect over IPv6: the keys carry 128-bit addresses.";

/// Runs the scenario in a fresh lab and tears the lab down, also on error.
pub fn run(ctx: &Context) -> Result<Outcome, LabError> {
    let mut lab = Lab::create(&ctx.host, &[PodSpec::new("client"), PodSpec::new("server")])?;
    ctx.emit(Event::LabUp {
        id: lab.id().to_string(),
        pods: lab.pods().to_vec(),
    });
    let result = steps(ctx, &mut lab);
    // Teardown errors matter (a leak is a bug) but must not hide the scenario's own error.
    let teardown = lab.teardown();
    let outcome = result?;
    teardown?;
    Ok(outcome)
}

fn steps(ctx: &Context, lab: &mut Lab) -> Result<Outcome, LabError> {
    let size = ctx.options.size.to_string();
    let server = lab.pod("server").clone();
    step(
        ctx,
        "server",
        "Start the rr server in the server pod, listening on [::]:7000.",
        || {
            let cmd = ctx.workload.command(&[
                "rr-server",
                "--listen",
                &format!("[::]:{PORT}"),
                "--request-size",
                &size,
                "--response-size",
                &size,
            ]);
            lab.spawn("server", cmd).map(drop)
        },
    )?;
    let v4 = SocketAddr::new(server.ipv4.into(), PORT);
    let v6 = SocketAddr::new(server.ipv6.into(), PORT);

    let plain = step(ctx, "plain-tcp", EXPLAIN_PLAIN, || {
        measure(ctx, lab, "plain-tcp", v4, ctx.options.round_trips)
    })?;
    step(ctx, "mesh-on", EXPLAIN_MESH_ON, || {
        let mesh = lab.start_mesh()?;
        for (prog, hook) in PROGRAMS {
            ctx.emit(Event::Output {
                step: "mesh-on".into(),
                line: format!("{hook}: {prog} loaded and attached"),
            });
        }
        let pins = mesh.pin_dir().display();
        ctx.emit(Event::Output {
            step: "mesh-on".into(),
            line: format!("maps pinned in {pins}"),
        });
        for (map, what) in [
            ("COUNTERS", "per-CPU counters"),
            ("SOCKETS", "keys: the 4-tuples"),
        ] {
            ctx.emit(Event::Output {
                step: "mesh-on".into(),
                line: format!("try: bpftool map dump pinned {pins}/{map}   ({what})"),
            });
        }
        Ok(())
    })?;
    let sockmap = step(ctx, "sockmap", EXPLAIN_SOCKMAP, || {
        measure(ctx, lab, "sockmap", v4, ctx.options.round_trips)
    })?;
    let ipv6 = step(ctx, "ipv6", EXPLAIN_IPV6, || {
        measure(ctx, lab, "ipv6", v6, IPV6_ROUND_TRIPS)
    })?;
    lab.stop_mesh()?;

    let report = Report {
        lab: lab.id().to_string(),
        p50_ratio: sockmap.rr.latency_us.p50 / plain.rr.latency_us.p50,
        p99_ratio: sockmap.rr.latency_us.p99 / plain.rr.latency_us.p99,
        packet_share: sockmap.packets as f64 / plain.packets.max(1) as f64,
        plain,
        sockmap,
        ipv6,
    };
    let failures = verdict(ctx, &report);
    Ok(Outcome {
        scenario: "sockmap".into(),
        kernel: kernel_release(),
        passed: failures.is_empty(),
        failures,
        report: serde_json::to_value(&report).expect("report serializes"),
    })
}

// ANCHOR: verdict
/// The checks that make the scenario pass: messages really were redirected (IPv4 and IPv6), and
/// the mesh run left the pods' interfaces nearly silent.
pub fn checks(r: &Report) -> Vec<String> {
    let mut failures = Vec::new();
    if r.sockmap.mesh.msg_redirected == 0 {
        failures.push("sk_msg redirected no message in the sockmap run".to_owned());
    }
    if r.ipv6.mesh.msg_redirected == 0 {
        failures.push("sk_msg redirected no message in the IPv6 run".to_owned());
    }
    if r.packet_share > MAX_PACKET_SHARE {
        failures.push(format!(
            "{} packets crossed the pod interfaces with the mesh vs {} without ({:.2}% > {:.0}%)",
            r.sockmap.packets,
            r.plain.packets,
            r.packet_share * 100.0,
            MAX_PACKET_SHARE * 100.0
        ));
    }
    failures
}
// ANCHOR_END: verdict

fn verdict(ctx: &Context, r: &Report) -> Vec<String> {
    let s = "verdict";
    ctx.emit(Event::StepStarted {
        step: s.into(),
        explain: "Compare the two runs.".into(),
    });
    let metric = |name: &str, value: f64, unit: &str| {
        ctx.emit(Event::Metric {
            step: s.into(),
            name: name.into(),
            value,
            unit: unit.into(),
        })
    };
    metric("p50_ratio", r.p50_ratio, "x");
    metric("p99_ratio", r.p99_ratio, "x");
    metric("packet_share", r.packet_share * 100.0, "%");
    let target = if r.p50_ratio <= P50_RATIO_TARGET {
        "met"
    } else {
        "NOT met"
    };
    ctx.emit(Event::Output {
        step: s.into(),
        line: format!(
            "benchmark target sockmap p50 <= {P50_RATIO_TARGET}x plain p50: {target} ({:.2}x)",
            r.p50_ratio
        ),
    });
    let failures = checks(r);
    if failures.is_empty() {
        ctx.emit(Event::StepPassed { step: s.into() });
    } else {
        ctx.emit(Event::StepFailed {
            step: s.into(),
            reason: failures.join("; "),
        });
    }
    failures
}

/// Runs `body` as a named step, reporting start, pass or failure.
fn step<T>(
    ctx: &Context,
    name: &str,
    explain: &str,
    body: impl FnOnce() -> Result<T, LabError>,
) -> Result<T, LabError> {
    ctx.cancel.check()?;
    ctx.emit(Event::StepStarted {
        step: name.into(),
        explain: explain.into(),
    });
    match body() {
        Ok(v) => {
            ctx.emit(Event::StepPassed { step: name.into() });
            Ok(v)
        }
        Err(e) => {
            ctx.emit(Event::StepFailed {
                step: name.into(),
                reason: e.to_string(),
            });
            Err(e)
        }
    }
}

/// One rr run from the client pod to `target`, with the packets and mesh counters around it.
fn measure(
    ctx: &Context,
    lab: &Lab,
    step: &str,
    target: SocketAddr,
    round_trips: u64,
) -> Result<Run, LabError> {
    let packets = || -> Result<u64, LabError> {
        Ok(lab.packets("client")?.total() + lab.packets("server")?.total())
    };
    let counters = || -> Result<Counters, LabError> {
        Ok(lab
            .mesh()
            .map(|m| m.counters())
            .transpose()?
            .unwrap_or_default())
    };
    let size = ctx.options.size.to_string();
    let cmd = ctx.workload.command(&[
        "rr",
        "--connect",
        &target.to_string(),
        "--round-trips",
        &round_trips.to_string(),
        "--request-size",
        &size,
        "--response-size",
        &size,
        "--json",
    ]);
    let (p0, c0) = (packets()?, counters()?);
    let out = lab.run("client", cmd, RUN_TIMEOUT, &ctx.cancel)?;
    let (p1, c1) = (packets()?, counters()?);
    let rr: RrReport = serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
        command: "rr --json".into(),
        detail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
    })?;
    let run = Run {
        rr,
        packets: p1 - p0,
        mesh: c1.since(&c0),
    };
    let emit = |name: &str, value: f64, unit: &str| {
        ctx.emit(Event::Metric {
            step: step.into(),
            name: name.into(),
            value,
            unit: unit.into(),
        })
    };
    emit("p50", run.rr.latency_us.p50, "us");
    emit("p99", run.rr.latency_us.p99, "us");
    emit("packets", run.packets as f64, "");
    if lab.mesh().is_some() {
        emit("msg_redirected", run.mesh.msg_redirected as f64, "");
        emit("msg_passed", run.mesh.msg_passed as f64, "");
        emit("sockets_inserted", run.mesh.sockets_inserted as f64, "");
    }
    Ok(run)
}
