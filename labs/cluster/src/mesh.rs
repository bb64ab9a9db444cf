//! The mesh as a DaemonSet (`deploy/mesh.yaml`), rendered for this cluster and applied with its
//! kubectl.
use std::{path::PathBuf, process::Command};

use crate::{APISERVER_PORT, ClusterError, daemons::LAB_IMAGE, run};

/// The manifest, as the repository has it (a Tera template).
pub const TEMPLATE: &str = include_str!("../../../deploy/mesh.yaml");

/// What the template needs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Values {
    pub image: String,
    pub pull_policy: String,
    pub cgroup_root: PathBuf,
    pub cgroup_subtree: String,
    pub apiserver_host: String,
    pub apiserver_port: u16,
}

impl Values {
    /// For the lab's cluster on this machine: its image, imported; containerd's cgroupfs layout.
    pub fn lab(node_ip: &str) -> Result<Values, ClusterError> {
        Ok(Values {
            image: LAB_IMAGE.into(),
            pull_policy: "Never".into(),
            cgroup_root: cgroup2_root().ok_or_else(|| {
                ClusterError::Unmet("no cgroup v2 hierarchy is mounted: the mesh attaches there".into())
            })?,
            cgroup_subtree: "/k8s.io".into(),
            apiserver_host: node_ip.into(),
            apiserver_port: APISERVER_PORT,
        })
    }
}

/// The cgroup containerd puts every container of the node under (`<cgroup2>/k8s.io`): where the
/// mesh attaches, and the parent of each container's own cgroup.
pub fn pods_cgroup() -> PathBuf {
    cgroup2_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")).join("k8s.io")
}

/// The first cgroup2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = procfs::process::Process::myself().ok()?.mountinfo().ok()?;
    info.into_iter().find(|m| m.fs_type == "cgroup2").map(|m| m.mount_point)
}

pub fn render(v: &Values) -> Result<String, ClusterError> {
    let ctx = tera::Context::from_serialize(v)
        .map_err(|e| ClusterError::State(format!("deploy/mesh.yaml: {e}")))?;
    tera::Tera::one_off(TEMPLATE, &ctx, false)
        .map_err(|e| ClusterError::State(format!("deploy/mesh.yaml: {e:?}")))
}

/// Applies the rendered manifest and waits for the DaemonSet's pod to be ready on the node.
pub fn deploy(
    kubectl: &dyn Fn() -> Command,
    manifest: &str,
    dir: &std::path::Path,
) -> Result<(), ClusterError> {
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, manifest).map_err(ClusterError::io("cannot write", &path))?;
    let mut apply = kubectl();
    apply.arg("apply").arg("-f").arg(&path);
    run(&mut apply)?;
    let mut wait = kubectl();
    wait.args(["-n", "sidecarless-mesh", "rollout", "status", "daemonset/mesh-agent", "--timeout=120s"]);
    run(&mut wait)?;
    Ok(())
}

/// Validates manifests as a modern cluster would take them: every object valid against the
/// Kubernetes 1.33 schemas, no unknown field (kubernetes-validate from PyPI, offline; set up by
/// scripts/setup.sh in the lab's venv). Its output, or why it refused.
#[cfg(test)]
pub(crate) fn validate_1_33(manifest: &str) -> Result<String, String> {
    let tool = crate::cache_dir().join("venv/bin/kubernetes-validate");
    assert!(tool.exists(), "{} is missing: run scripts/setup.sh", tool.display());
    let dir = tempfile_dir();
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, manifest).unwrap();
    let out = Command::new(&tool).args(["--strict", "-k", "1.33"]).arg(&file).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
    if out.status.success() { Ok(text) } else { Err(text) }
}

#[cfg(test)]
fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lab-cluster-validate-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Values {
        Values {
            image: "docker.io/local/sidecarless-lab:dev".into(),
            pull_policy: "Never".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_subtree: "/k8s.io".into(),
            apiserver_host: "192.0.2.2".into(),
            apiserver_port: 16443,
        }
    }

    #[test]
    fn the_template_renders_every_value() {
        let text = render(&example()).unwrap();
        assert!(!text.contains("{{"), "{text}");
        assert!(text.contains("- /host/cgroup/k8s.io\n"), "{text}");
        assert!(text.contains("value: \"192.0.2.2\""), "{text}");
    }

    /// The DaemonSet as a modern cluster would take it: every object valid against the
    /// Kubernetes 1.33 schemas, no unknown field (kubernetes-validate from PyPI, offline; set up
    /// by scripts/setup.sh in the lab's venv).
    #[test]
    fn the_manifest_is_valid_for_kubernetes_1_33() {
        let text = validate_1_33(&render(&example()).unwrap()).unwrap_or_else(|e| panic!("{e}"));
        // One line per object, each passing.
        for kind in ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"] {
            let passed = format!("passed for resource {}/", kind.to_lowercase());
            assert!(text.lines().any(|l| l.contains(&passed)), "{kind}: {text}");
        }
    }
}
