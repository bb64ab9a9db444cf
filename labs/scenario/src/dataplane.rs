//! The data path the engine puts pods in: proxies (per pod or per node) and the eBPF mesh, on
//! or off, changing only what differs.
use mesh_agent::Pinned;

use super::{
    engine::Engine,
    site::{self, Site},
    spec::{OnOff, SidecarMode},
};
use lab_sandbox::{
    LabError,
    sidecar::{self, OUTBOUND_PORT},
};

impl Engine<'_> {
    /// Starts the mesh; returns what to tell the reader.
    pub(crate) fn mesh_on(&mut self) -> Result<Vec<String>, LabError> {
        self.mesh_on_with(self.ctx.options.engine)
    }

    pub(crate) fn mesh_on_with(&mut self, engine: mesh_agent::Engine) -> Result<Vec<String>, LabError> {
        let port = self.sidecar_port();
        let lab = match &mut self.site {
            Site::Sandbox(lab) => lab,
            // The DaemonSet's agent runs the default engine (aya).
            Site::Kubernetes(k) => {
                let mut lines = k.session.start_mesh(&self.ctx.cancel).map_err(site::lab_error)?;
                if let Some(described) = self.with_mesh(Pinned::describe)? {
                    lines.extend(described);
                }
                return Ok(lines);
            }
        };
        let said = lab.start_mesh(&self.ctx.agent, engine)?;
        let pid = lab.agent_mut().and_then(|a| a.pid()).unwrap_or_default();
        let mut lines = lab.mesh().expect("started").describe();
        lines.extend(said.into_iter().map(|l| format!("agent (pid {pid}): {l}")));
        lab.agent_mut().expect("started").set_sidecar_port(port)?;
        if port != 0 {
            lines.push(format!("sidecars present: app <-> proxy hops redirected via 127.0.0.1:{port}"));
        }
        Ok(lines)
    }

    /// Stops the mesh: the lab's agent, or the DaemonSet (its agent uninstalls on SIGTERM).
    pub(crate) fn mesh_off(&mut self) -> Result<(), LabError> {
        match &mut self.site {
            Site::Sandbox(lab) => lab.stop_mesh(),
            Site::Kubernetes(k) => k.session.stop_mesh(&self.ctx.cancel).map_err(site::lab_error),
        }
    }

    /// Replaces the proxies with `mode`'s (none for `off`); returns what to tell the reader.
    pub(crate) fn set_sidecars(&mut self, mode: SidecarMode) -> Result<Vec<String>, LabError> {
        let old = std::mem::take(&mut self.sidecars);
        sidecar::disable(self.site.lab_mut()?, old)?;
        let routes: Vec<_> = self
            .site
            .pods()
            .iter()
            .flat_map(|p| {
                self.workload_ports(&p.name).into_iter().map(move |port| (p.name.clone(), p.ipv4, port))
            })
            .collect();
        self.sidecars = sidecar::enable(self.site.lab_mut()?, mode, &self.ctx.workload, &routes)?;
        let lines = self
            .sidecars
            .proxies
            .iter()
            .map(|p| format!("proxy for {} running as pid {}", p.at, p.pid))
            .collect();
        let port = self.sidecar_port();
        if let Some(agent) = self.site.lab_mut()?.agent_mut() {
            agent.set_sidecar_port(port)?;
        }
        Ok(lines)
    }

    /// Puts proxies and mesh in the given state, changing only what differs.
    /// Proxies and mesh as a path wants them; `engine` (default: the run's) loads the redirect
    /// when the mesh is on: a mesh running with the other engine is stopped and started again.
    pub(crate) fn switch_to(
        &mut self,
        sidecars: SidecarMode,
        mesh: OnOff,
        engine: Option<mesh_agent::Engine>,
    ) -> Result<Vec<String>, LabError> {
        let mut lines = Vec::new();
        if self.sidecars.mode.unwrap_or(SidecarMode::Off) != sidecars {
            lines.extend(self.set_sidecars(sidecars)?);
        }
        let engine = engine.unwrap_or(self.ctx.options.engine);
        match (mesh, self.with_mesh(Pinned::engine)?) {
            (OnOff::On, None) => lines.extend(self.mesh_on_with(engine)?),
            (OnOff::On, Some(running)) if running != engine => {
                self.mesh_off()?;
                lines.extend(self.mesh_on_with(engine)?);
            }
            (OnOff::Off, Some(_)) => self.mesh_off()?,
            _ => {}
        }
        Ok(lines)
    }

    /// Telemetry on or off for connections established from now on (nothing to do without the
    /// mesh).
    pub(crate) fn set_telemetry(&mut self, state: OnOff) -> Result<(), LabError> {
        if let Some(agent) = self.site.lab_mut()?.agent_mut() {
            agent.set_telemetry(state == OnOff::On)?;
        }
        Ok(())
    }

    /// Flow control through the redirect on or off (nothing to do without the mesh).
    pub(crate) fn set_flow_control(&mut self, state: OnOff) -> Result<(), LabError> {
        if let Some(agent) = self.site.lab_mut()?.agent_mut() {
            agent.set_flow_control(state == OnOff::On)?;
        }
        Ok(())
    }

    pub(crate) fn sidecar_port(&self) -> u16 {
        if self.sidecars.mode == Some(SidecarMode::PerPod) { OUTBOUND_PORT } else { 0 }
    }

    pub(crate) fn workload_ports(&self, pod: &str) -> Vec<u16> {
        self.ports.get(pod).cloned().unwrap_or_default()
    }

    pub(crate) fn config(&self) -> String {
        let mut parts = Vec::new();
        match self.sidecars.mode {
            Some(SidecarMode::PerPod) => parts.push("sidecars per pod"),
            Some(SidecarMode::PerNode) => parts.push("proxy per node"),
            _ => {}
        }
        if let Site::Kubernetes(_) = self.site {
            parts.push(if lab_cluster::session::mesh_on() { "eBPF mesh (DaemonSet)" } else { "direct" });
            return parts.join(" + ");
        }
        match self.with_mesh(|m| (m.telemetry().unwrap_or(true), m.engine())).ok().flatten() {
            Some((true, mesh_agent::Engine::Aya)) => parts.push("eBPF mesh"),
            Some((false, mesh_agent::Engine::Aya)) => parts.push("eBPF mesh (telemetry off)"),
            Some((true, mesh_agent::Engine::Libbpf)) => {
                parts.push("eBPF mesh (redirect by the C twin, libbpf)")
            }
            Some((false, mesh_agent::Engine::Libbpf)) => {
                parts.push("eBPF mesh (redirect by the C twin, libbpf; telemetry off)")
            }
            None => {}
        }
        if parts.is_empty() { "direct".into() } else { parts.join(" + ") }
    }
}
