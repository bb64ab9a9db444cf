//! Where a scenario's pods live: the lab's own sandbox (namespaces and cgroups it makes, the
//! mesh agent its child), or the pods of the Kubernetes cluster on this machine (`[kubernetes]`:
//! the scenario's manifests applied, programs run with `kubectl exec`, the mesh a DaemonSet).
use std::{
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

use super::spec::Scenario;

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
        if check && !out.status.success() {
            return Err(LabError::Command {
                command: what,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out)
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
