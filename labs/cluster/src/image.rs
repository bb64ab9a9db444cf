//! Container images without a registry: a one-layer OCI image layout in a tar archive, which
//! `ctr images import` reads (it names the image from the `io.containerd.image.name`
//! annotation). The pods then use it with `imagePullPolicy: Never`.
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::ClusterError;

/// One file of the image's only layer.
#[derive(Debug, Clone)]
pub struct File {
    /// Path inside the image, without the leading `/`.
    pub path: String,
    pub from: PathBuf,
    pub mode: u32,
}

/// An image: its full name (`docker.io/local/pause:3.4`), files and entrypoint.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub files: Vec<File>,
    pub entrypoint: Vec<String>,
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A tar archive of `entries` (path, mode, contents), deterministic (mtime 0, root-owned).
fn tar_of(entries: &[(String, u32, Vec<u8>)]) -> Result<Vec<u8>, ClusterError> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data.as_slice())
            .map_err(|e| ClusterError::State(format!("cannot build the image archive ({path}): {e}")))?;
    }
    b.into_inner().map_err(|e| ClusterError::State(format!("cannot build the image archive: {e}")))
}

impl Image {
    /// Writes the image as an OCI layout archive at `out`.
    pub fn write_archive(&self, out: &Path) -> Result<(), ClusterError> {
        let mut files = Vec::new();
        for f in &self.files {
            let data = std::fs::read(&f.from).map_err(ClusterError::io("cannot read", &f.from))?;
            files.push((f.path.clone(), f.mode, data));
        }
        let layer = tar_of(&files)?;
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Entrypoint": self.entrypoint },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha(&layer))] },
        }))
        .expect("serializes");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", sha(&config)),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{}", sha(&layer)),
                "size": layer.len(),
            }],
        }))
        .expect("serializes");
        let tag = self.name.rsplit_once(':').map_or("latest", |(_, t)| t);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", sha(&manifest)),
                "size": manifest.len(),
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }))
        .expect("serializes");
        let mut entries = vec![
            ("oci-layout".to_owned(), 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("index.json".to_owned(), 0o644, index),
        ];
        for blob in [layer, config, manifest] {
            entries.push((format!("blobs/sha256/{}", sha(&blob)), 0o644, blob));
        }
        let archive = tar_of(&entries)?;
        std::fs::write(out, archive).map_err(ClusterError::io("cannot write", out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_an_oci_layout_whose_digests_match() {
        let dir = std::env::temp_dir().join(format!("lab-cluster-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello"), b"hi").unwrap();
        let img = Image {
            name: "docker.io/local/test:1".into(),
            files: vec![File { path: "hello".into(), from: dir.join("hello"), mode: 0o755 }],
            entrypoint: vec!["/hello".into()],
        };
        img.write_archive(&dir.join("img.tar")).unwrap();
        let data = std::fs::read(dir.join("img.tar")).unwrap();
        let mut ar = tar::Archive::new(data.as_slice());
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            if let Some(d) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(d, sha(&body), "blob {path} is named by its digest");
            }
            if path == "index.json" {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(
                    v["manifests"][0]["annotations"]["io.containerd.image.name"],
                    "docker.io/local/test:1"
                );
            }
            names.push(path);
        }
        assert_eq!(names.len(), 5, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
