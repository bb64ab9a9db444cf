//! `mesh-agent status`: what is loaded, attached and pinned, and how full each map is, read from
//! the pins and the kernel (not from an agent's memory: it works with the agent dead).
use std::{collections::BTreeMap, fs::File, os::fd::AsFd as _, path::Path};

use serde::Serialize;

use crate::{
    Counters, MeshError,
    pins::{self, MapFill, Pinned},
    sys,
};

/// One pinned link and the program it holds attached.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub pin: String,
    pub link_id: u32,
    pub program_id: u32,
    /// As the kernel stores it (at most 15 characters).
    pub program: String,
}

/// The cgroup hooks the mesh uses, as `bpf_attach_type` values (`<linux/bpf.h>`).
pub const HOOKS: [(&str, u32); 11] = [
    ("ingress", 0),
    ("sock_ops", 3),
    ("connect4", 10),
    ("connect6", 11),
    ("sendmsg4", 14),
    ("sendmsg6", 15),
    ("recvmsg4", 19),
    ("recvmsg6", 20),
    ("setsockopt", 22),
    ("getpeername4", 29),
    ("getpeername6", 30),
];

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub layout: String,
    pub variant: crate::Variant,
    /// Who loaded the redirect's programs (aya, or libbpf with the C twin).
    pub engine: crate::Engine,
    pub cgroup_id: u64,
    pub links: Vec<LinkStatus>,
    /// Per hook of the cgroup (when given): the programs attached, by name. The mesh's own
    /// appear exactly once each when it is healthy.
    pub attached: BTreeMap<String, Vec<String>>,
    pub maps: Vec<MapFill>,
    pub counters: Counters,
    /// The errno of a connect() refused for want of a backend.
    pub refusal: &'static str,
    /// How many times the policy changed (0: never applied).
    pub policy_generation: u32,
    /// The HTTP judge (`mesh_http`) is in `HTTP_PROGS`, where the redirect program tail-calls it.
    pub http_judge: bool,
    /// Flow records (telemetry) are on.
    pub telemetry: bool,
    /// Flow control (see `mesh_common::FlowControl`): the budget in bytes (0: off), and whether
    /// reads are counted (the read counter is attached) or estimated.
    pub flow_budget: u32,
    pub reads_counted: bool,
    /// The budget while the node's TCP memory is under pressure, and whether that pressure is
    /// watched (the pressure mark is attached).
    pub pressure_budget: u32,
    pub pressure_watched: bool,
    /// Verdicts per rule (0: denials) and hook.
    pub verdicts: Vec<RuleVerdicts>,
}

/// What one rule (or, as rule 0, the default deny) decided at each hook.
#[derive(Debug, Clone, Serialize)]
pub struct RuleVerdicts {
    pub rule: u32,
    pub hook: &'static str,
    pub count: u64,
}

/// Reads the status of the mesh pinned under `pin_dir`; with `cgroup`, also what that cgroup
/// has attached at each of the mesh's hooks.
pub fn read(pin_dir: &Path, cgroup: Option<&Path>) -> Result<Status, MeshError> {
    let pinned = Pinned::open(pin_dir)?;
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect();
    let mut links = Vec::new();
    for p in pins::linked_programs(pinned.variant()) {
        let path = pins::link_pin(pinned.layout(), p);
        let (link_id, program_id, program) = pins::link_program(&path).ok_or_else(|| MeshError::Link {
            path: path.clone(),
            source: aya::programs::links::LinkError::InvalidLink,
        })?;
        links.push(LinkStatus { pin: path.display().to_string(), link_id, program_id, program });
    }
    // Flow control's tracing programs' links, where the kernel let them attach.
    for p in pins::FLOW_PROGRAMS {
        let path = pins::link_pin(pinned.layout(), p);
        if let Some((link_id, program_id, program)) = pins::link_program(&path) {
            links.push(LinkStatus { pin: path.display().to_string(), link_id, program_id, program });
        }
    }
    let mut attached = BTreeMap::new();
    if let Some(cg) = cgroup {
        let dir = File::open(cg).map_err(|source| MeshError::Cgroup { path: cg.to_owned(), source })?;
        for (hook, attach_type) in HOOKS {
            let ids = sys::prog_query(dir.as_fd(), attach_type).map_err(|source| MeshError::Io {
                what: "cannot query the programs of",
                path: cg.to_owned(),
                source,
            })?;
            let progs =
                ids.iter().map(|id| names.get(id).cloned().unwrap_or_else(|| format!("id {id}"))).collect();
            attached.insert(hook.to_owned(), progs);
        }
    }
    let flow = pinned.flow_control()?;
    Ok(Status {
        layout: pinned.layout().display().to_string(),
        variant: pinned.variant(),
        engine: pinned.engine(),
        cgroup_id: pinned.cgroup_id(),
        links,
        attached,
        maps: pinned.fill(),
        counters: pinned.counters()?,
        refusal: pinned.refusal(),
        policy_generation: pinned.policy_generation()?,
        http_judge: pinned.http_judge_present()?,
        telemetry: pinned.telemetry()?,
        flow_budget: flow.budget,
        reads_counted: flow.reads_counted != 0,
        pressure_budget: flow.pressure_budget,
        pressure_watched: flow.pressure_watched != 0,
        verdicts: pinned
            .verdicts()?
            .into_iter()
            .map(|((rule, hook), count)| RuleVerdicts { rule, hook: mesh_common::Hook::name(hook), count })
            .collect(),
    })
}

impl Status {
    /// Hooks where the cgroup does not run exactly one program of the mesh, and a missing HTTP
    /// judge.
    pub fn attach_problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .attached
            .iter()
            .filter_map(|(hook, progs)| {
                // sock_ops runs two (the redirect's and telemetry's); each exactly once.
                let ours: Vec<&String> = progs.iter().filter(|p| p.starts_with("mesh_")).collect();
                let once = ours.iter().all(|p| ours.iter().filter(|q| *q == p).count() == 1);
                (ours.is_empty() || !once)
                    .then(|| format!("{hook}: {} mesh programs attached ({})", ours.len(), progs.join(", ")))
            })
            .collect();
        if !self.http_judge {
            problems.push("HTTP_PROGS is empty: requests under HTTP rules are all denied".into());
        }
        problems
    }

    /// The human form.
    pub fn render(&self) -> String {
        let mut out = format!(
            "pins:     {} (cgroup id {}, build {:?}, redirect loaded by {})\nsk_msg:   {} attached to the SOCKETS sockhash (lives as long as the map)\n",
            self.layout,
            self.cgroup_id,
            self.variant,
            self.engine.name(),
            self.variant.programs().0
        );
        out.push_str("links:\n");
        for l in &self.links {
            out.push_str(&format!(
                "  link {:>5}  prog {:>5}  {:<16} {}\n",
                l.link_id, l.program_id, l.program, l.pin
            ));
        }
        if !self.attached.is_empty() {
            out.push_str("cgroup hooks (programs attached):\n");
            for (hook, progs) in &self.attached {
                out.push_str(&format!(
                    "  {hook:<13} {}\n",
                    if progs.is_empty() { "-".into() } else { progs.join(", ") }
                ));
            }
            let problems = self.attach_problems();
            out.push_str(&if problems.is_empty() {
                "  each mesh program attached once\n".to_owned()
            } else {
                format!("  NOT HEALTHY: {}\n", problems.join("; "))
            });
        }
        out.push_str("maps:\n");
        for m in &self.maps {
            let entries = m.entries.map_or_else(|| "?".to_owned(), |e| e.to_string());
            let pct = m.entries.map_or(0.0, |e| 100.0 * e as f64 / f64::from(m.max_entries));
            out.push_str(&format!(
                "  {:<12} {:<12} {entries:>7} / {:<7} ({pct:.1} %)\n",
                m.name, m.map_type, m.max_entries
            ));
        }
        out.push_str(&format!("no backend: connect() and sendto() fail with {}\n", self.refusal));
        out.push_str(&format!("counters: {}\n", serde_json::to_string(&self.counters).unwrap_or_default()));
        out.push_str(&format!(
            "policy generation {}; HTTP judge {}; telemetry {}\n",
            self.policy_generation,
            if self.http_judge { "in HTTP_PROGS" } else { "MISSING" },
            if self.telemetry { "on" } else { "off" }
        ));
        out.push_str(&match (self.flow_budget, self.reads_counted) {
            (0, _) => "flow control: OFF: redirected bytes can outrun their reader\n".to_owned(),
            (b, false) => format!(
                "flow control: a connection takes TCP once it redirected {b} bytes its peer did not answer (reads estimated)\n"
            ),
            (b, _) => format!("flow control: a connection takes TCP once its peer has {b} redirected bytes unread\n"),
        });
        if self.flow_budget != 0 {
            out.push_str(&if self.pressure_watched {
                format!("  under TCP memory pressure (tcp_mem[1] passed): {} bytes\n", self.pressure_budget)
            } else {
                "  TCP memory pressure: not watched (the budget stays the same)\n".to_owned()
            });
        }
        for v in &self.verdicts {
            let what = if v.rule == 0 { "denied".to_owned() } else { format!("rule {} allowed", v.rule) };
            out.push_str(&format!("  {what:<16} at {:<8} {}\n", v.hook, v.count));
        }
        out
    }
}
