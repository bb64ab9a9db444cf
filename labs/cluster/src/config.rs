//! The files the cluster's daemons read, all under [`STATE_DIR`](crate::STATE_DIR), and the
//! certificates between the API server and the kubelet.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::json;

use crate::{APISERVER_PORT, BRIDGE, ClusterError, POD_CIDR, run};

/// Where each piece of a cluster's state lives.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    pub fn state_json(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, daemon: &str) -> PathBuf {
        self.logs().join(format!("{daemon}.log"))
    }
    /// The API server's self-made serving certificate (its CA follows it in the file) and the
    /// service-account signing key.
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn apiserver_cert(&self) -> PathBuf {
        self.pki().join("apiserver.crt")
    }
    pub fn sa_key(&self) -> PathBuf {
        self.pki().join("sa.key")
    }
    /// The CA the kubelet trusts for client certificates, and the API server's client
    /// certificate signed by it (`kubectl logs` and `exec` go through the kubelet).
    pub fn kubelet_ca(&self) -> PathBuf {
        self.pki().join("kubelet-ca.crt")
    }
    pub fn kubelet_client(&self) -> (PathBuf, PathBuf) {
        (self.pki().join("apiserver-kubelet-client.crt"), self.pki().join("apiserver-kubelet-client.key"))
    }
    pub fn tokens(&self) -> PathBuf {
        self.pki().join("tokens.csv")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }
    pub fn containerd(&self) -> PathBuf {
        self.root.join("containerd")
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.containerd().join("config.toml")
    }
    pub fn containerd_sock(&self) -> PathBuf {
        self.containerd().join("containerd.sock")
    }
    pub fn cni_conf(&self) -> PathBuf {
        self.root.join("cni")
    }
    pub fn cni_ipam(&self) -> PathBuf {
        self.root.join("cni-ipam")
    }
    pub fn kubelet(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
}

/// A random bearer token (hex).
pub fn token() -> Result<String, ClusterError> {
    let mut b = [0u8; 16];
    let f = Path::new("/dev/urandom");
    std::io::Read::read_exact(&mut fs::File::open(f).map_err(ClusterError::io("cannot open", f))?, &mut b)
        .map_err(ClusterError::io("cannot read", f))?;
    Ok(hex::encode(b))
}

fn write(path: &Path, text: &str) -> Result<(), ClusterError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(ClusterError::io("cannot create", dir))?;
    }
    fs::write(path, text).map_err(ClusterError::io("cannot write", path))
}

/// Token file (one admin in `system:masters`: the lab's own components and `kubectl`) and
/// the kubeconfig that carries it.
pub fn write_auth(l: &Layout, node_ip: &str, token: &str) -> Result<(), ClusterError> {
    write(&l.tokens(), &format!("{token},lab-admin,lab-admin,system:masters\n"))?;
    write(&l.kubeconfig(), &kubeconfig(node_ip, token, &l.apiserver_cert()))
}

pub fn kubeconfig(node_ip: &str, token: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: sidecarless-lab
  cluster:
    server: https://{node_ip}:{APISERVER_PORT}
    certificate-authority: {ca}
users:
- name: lab-admin
  user:
    token: {token}
contexts:
- name: sidecarless-lab
  context:
    cluster: sidecarless-lab
    user: lab-admin
current-context: sidecarless-lab
",
        ca = ca.display()
    )
}

/// containerd's config: its own root, state and socket (beside, not instead of, any containerd
/// of the machine), the pause image built here, and the CNI network below.
pub fn containerd_config(l: &Layout, pause_image: &str) -> String {
    let c = l.containerd();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # This sandbox lacks CAP_SYS_RESOURCE: without it runc fails with "can't get final child's PID".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = c.join("root").display(),
        state = c.join("state").display(),
        sock = l.containerd_sock().display(),
        opt = c.join("opt").display(),
        cni = l.cni_conf().display(),
    )
}

// ANCHOR: cni
/// One bridge, addresses from host-local (its records under the cluster's own folder, not
/// /var/lib/cni), no masquerade and no port maps: nothing in iptables is the CNI's.
pub fn cni_conflist(l: &Layout) -> String {
    serde_json::to_string_pretty(&json!({
        "cniVersion": "0.4.0",
        "name": "sidecarless-lab",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_CIDR }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": l.cni_ipam(),
            },
        }],
    }))
    .expect("serializes")
}
// ANCHOR_END: cni

pub fn write_runtime(l: &Layout, pause_image: &str) -> Result<(), ClusterError> {
    write(&l.containerd_config(), &containerd_config(l, pause_image))?;
    write(&l.cni_conf().join("10-sidecarless-lab.conflist"), &cni_conflist(l))
}

/// A CA for the kubelet's API and the API server's client certificate from it (`kubectl logs`,
/// `exec`): the kubelet accepts nobody else.
pub fn kubelet_client_pki(l: &Layout) -> Result<(), ClusterError> {
    let ca_key = l.pki().join("kubelet-ca.key");
    let (crt, key) = l.kubelet_client();
    let csr = l.pki().join("apiserver-kubelet-client.csr");
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=sidecarless-lab-kubelet-ca",
        ])
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(l.kubelet_ca()))?;
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=kube-apiserver-kubelet-client/O=system:masters",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr))?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "30", "-CAcreateserial", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(l.kubelet_ca())
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-out")
        .arg(&crt))?;
    Ok(())
}
