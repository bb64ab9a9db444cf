//! A Vagrantfile for laptops: a Debian box that installs the pinned kernel packages and the lab's
//! static binaries. Rendered with tera from `vm/templates/Vagrantfile.tera`.
use serde::Serialize;

use crate::{VmError, catalog::Kernel};

const TEMPLATE: &str = include_str!("../templates/Vagrantfile.tera");

/// Which Vagrant provider the file targets.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Libvirt,
    Virtualbox,
}

#[derive(Serialize)]
struct Pkg<'a> {
    name: &'a str,
    url: String,
    sha256: &'a str,
    file: &'a str,
}

/// Renders the Vagrantfile. `guest_bins` is the host folder with the static binaries; it is
/// synced into the box.
pub fn render(
    kernel: &Kernel,
    mirror: &str,
    provider: Provider,
    guest_bins: &str,
) -> Result<String, VmError> {
    let packages: Vec<Pkg> = kernel
        .packages
        .iter()
        .map(|p| Pkg {
            name: &p.name,
            url: format!("{}/{}", mirror.trim_end_matches('/'), p.path),
            sha256: &p.sha256,
            file: p.file_name(),
        })
        .collect();
    let mut ctx = tera::Context::new();
    ctx.insert("kernel", &kernel.name);
    ctx.insert("release", &kernel.release);
    ctx.insert("provider", &provider);
    ctx.insert("packages", &packages);
    ctx.insert("guest_bins", guest_bins);
    tera::Tera::one_off(TEMPLATE, &ctx, false)
        .map_err(|e| VmError::Broken { what: "Vagrantfile template".into(), detail: lab_protocol::chain(&e) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn renders_the_pinned_packages_with_their_checksums() {
        let cat = Catalog::builtin();
        let k = cat.get("7.2").unwrap();
        let v = render(k, "http://mirror.example/debian/", Provider::Libvirt, "/src/target/musl").unwrap();
        for p in &k.packages {
            assert!(v.contains(&format!("http://mirror.example/debian/{}", p.path)), "{v}");
            assert!(v.contains(&p.sha256));
        }
        assert!(v.contains("config.vm.provider \"libvirt\""));
        assert!(v.contains("/src/target/musl"));
        assert!(v.contains("7.2.13+deb14-cloud-amd64"));
        let vb = render(cat.get("6.1").unwrap(), "http://m/debian", Provider::Virtualbox, "/b").unwrap();
        assert!(vb.contains("config.vm.provider \"virtualbox\""));
    }

    /// The rendering for 6.1/libvirt is kept in vm/snapshots; `UPDATE_SNAPSHOTS=1 cargo test`
    /// rewrites it after an intended change. Where vagrant is installed, it must validate.
    #[test]
    fn rendering_matches_the_snapshot_and_validates() {
        let cat = Catalog::builtin();
        let v =
            render(cat.get("6.1").unwrap(), "http://mirror.example/debian", Provider::Libvirt, "/lab/guest")
                .unwrap();
        let snap = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots/Vagrantfile-6.1-libvirt");
        if std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
            std::fs::write(&snap, &v).unwrap();
        }
        assert_eq!(
            v,
            std::fs::read_to_string(&snap).unwrap(),
            "rendering changed; UPDATE_SNAPSHOTS=1 to accept"
        );
        // Validation checks that the synced folder exists: render against a real one.
        let dir = std::env::temp_dir().join(format!("sidecarless-vagrant-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("guest")).unwrap();
        let guest = dir.join("guest").display().to_string();
        let v = render(cat.get("6.1").unwrap(), "http://mirror.example/debian", Provider::Libvirt, &guest)
            .unwrap();
        std::fs::write(dir.join("Vagrantfile"), &v).unwrap();
        match std::process::Command::new("vagrant")
            .args(["validate", "--ignore-provider"])
            .current_dir(&dir)
            .output()
        {
            Ok(out) => {
                assert!(out.status.success(), "vagrant validate: {}", String::from_utf8_lossy(&out.stdout))
            }
            // A skip must be asked for (tests/common in the workspace's integration tests).
            Err(e) => {
                assert!(
                    std::env::var("SIDECARLESS_ALLOW_SKIP").is_ok_and(|v| v == "1"),
                    "vagrant validate: cannot run vagrant ({e}); scripts/setup.sh installs it \
                     (SIDECARLESS_ALLOW_SKIP=1 skips this where it cannot run)"
                );
                eprintln!("SKIPPED vagrant validate: vagrant is not installed");
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
