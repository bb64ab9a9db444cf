//! Getting a VM ready: kernel fetched and verified, image built, accelerator chosen. Shared by
//! `up`, `scenario` and `matrix`; progress goes to stderr so `--json` output stays clean.
use std::{fs, path::PathBuf, time::Duration};

use lab_protocol::Cancel;
use lab_vm::{
    VmError,
    catalog::{Catalog, Kernel},
    fetch::{self, FetchEvent},
    image::{self, Image},
    kernel::{self, KernelFiles, LAB_MODULES},
    machine::{BootOptions, Machine},
    mirror, paths,
    qemu::{self, Accel},
};
use serde::{Deserialize, Serialize};

use crate::{
    cli::{AccelArg, VmArgs},
    ui,
};

/// The kernel a VM boots when none is named.
pub const DEFAULT_KERNEL: &str = "6.1";

/// A kernel and an image, ready to boot.
pub struct Prepared {
    pub kernel: Kernel,
    pub files: KernelFiles,
    pub image: Image,
}

/// The static guest binaries: the flag, else the musl release folder beside this executable's
/// target folder (`target/x86_64-unknown-linux-musl/release`).
pub fn guest_bins(flag: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p.clone();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe.parent().and_then(|p| p.parent()).map(PathBuf::from).unwrap_or_default();
    target.join("x86_64-unknown-linux-musl").join("release")
}

/// Fetches (verified) and extracts the kernel's packages.
pub fn fetch_kernel(
    kernel: &Kernel,
    mirror_flag: Option<&str>,
    cancel: &Cancel,
) -> Result<KernelFiles, VmError> {
    let cache = paths::cache_dir();
    let mirror = mirror::resolve(mirror_flag)?;
    let mut view = ui::FetchView::new();
    let debs = kernel
        .packages
        .iter()
        .map(|p| fetch::package(&mirror, p, &cache, cancel, &mut |e: FetchEvent| view.event(&e)))
        .collect::<Result<Vec<_>, _>>()?;
    kernel::extract(kernel, &debs, &cache)
}

/// The programs an image carries beside its own: every shipped scenario's `[requires] tools`
/// and `extra` (a scenario file's), so one image (and the VM `up` boots) runs them all.
pub fn image_tools(extra: &[String]) -> Vec<String> {
    let mut tools: Vec<String> = lab_scenario::builtin()
        .into_iter()
        .flat_map(|(_, s)| s.requires.tools)
        .chain(extra.iter().cloned())
        .collect();
    tools.sort();
    tools.dedup();
    tools
}

/// Kernel + image for `kernel_name`; the image carries [`image_tools`]`(extra_tools)`.
pub fn prepare(
    kernel_name: &str,
    mirror_flag: Option<&str>,
    guest_bin: Option<&PathBuf>,
    extra_tools: &[String],
    cancel: &Cancel,
) -> Result<Prepared, VmError> {
    let kernel = Catalog::builtin().get(kernel_name)?.clone();
    let files = fetch_kernel(&kernel, mirror_flag, cancel)?;
    // `missing`: no module of that name (absent, or compiled into another module).
    let (modules, missing) = kernel::resolve(&files, LAB_MODULES)?;
    let bins = guest_bins(guest_bin);
    let image = image::build(
        &image::Inputs {
            guest_bins: &bins,
            kernel: &files,
            modules: &modules,
            tools: &image_tools(extra_tools),
        },
        &paths::cache_dir(),
        cancel,
    )?;
    let missing =
        if missing.is_empty() { String::new() } else { format!("; no module for {}", missing.join(", ")) };
    eprintln!(
        "image {} ({}{} modules{missing})",
        image.path.display(),
        if image.cached { "cached, " } else { "" },
        modules.len()
    );
    Ok(Prepared { kernel, files, image })
}

#[derive(Serialize, Deserialize)]
struct Probe {
    host_kernel: String,
    accel: Accel,
    reason: String,
}

/// The accelerator: as asked, or for `auto` KVM only if a probe boot answered here. The probe's
/// verdict is cached per host kernel (a failed KVM probe costs a boot timeout once).
pub fn choose_accel(arg: AccelArg, p: &Prepared, cancel: &Cancel) -> Result<Accel, VmError> {
    match arg {
        AccelArg::Tcg => return Ok(Accel::Tcg),
        AccelArg::Kvm if qemu::kvm_device_usable() => return Ok(Accel::Kvm),
        AccelArg::Kvm => {
            return Err(VmError::Missing {
                what: "KVM".into(),
                detail: "/dev/kvm cannot be opened for reading and writing".into(),
            });
        }
        AccelArg::Auto => {}
    }
    if !qemu::kvm_device_usable() {
        eprintln!("accel: tcg (/dev/kvm is not usable)");
        return Ok(Accel::Tcg);
    }
    let host_kernel = lab_sandbox::preflight::kernel_release();
    let cache = paths::cache_dir().join("accel-probe.json");
    if let Some(probe) = fs::read_to_string(&cache).ok().and_then(|t| serde_json::from_str::<Probe>(&t).ok())
        && probe.host_kernel == host_kernel
    {
        eprintln!("accel: {} ({}, cached probe)", probe.accel, probe.reason);
        return Ok(probe.accel);
    }
    eprintln!("accel: probing KVM with a test boot...");
    let opts = BootOptions {
        name: "kvm-probe",
        kernel_name: &p.kernel.name,
        files: &p.files,
        image: &p.image,
        accel: Accel::Kvm,
        memory_mb: qemu::DEFAULT_MEMORY_MB,
        cpus: 1,
        tied: true,
        cancel,
    };
    let (accel, reason) = match Machine::boot(&opts) {
        Ok(m) => {
            let r = format!("KVM probe boot answered in {:.1} s", m.state.boot_s);
            let _ = m.down();
            (Accel::Kvm, r)
        }
        Err(VmError::Cancelled) => return Err(VmError::Cancelled),
        Err(e) => (Accel::Tcg, format!("KVM probe boot failed: {}", one_line(&e.to_string()))),
    };
    eprintln!("accel: {accel} ({reason})");
    let probe = Probe { host_kernel, accel, reason };
    let _ = fs::create_dir_all(paths::cache_dir());
    let _ = fs::write(&cache, serde_json::to_string(&probe).expect("serializes"));
    Ok(accel)
}

/// A multi-line error on one line, at most 200 characters.
fn one_line(s: &str) -> String {
    let joined = s.lines().map(|l| l.trim().trim_start_matches("| ")).collect::<Vec<_>>().join(" ");
    joined.chars().take(200).collect()
}

/// Boots a VM for `args` under `name`.
pub fn boot(
    name: &str,
    args: &VmArgs,
    tied: bool,
    extra_tools: &[String],
    cancel: &Cancel,
) -> Result<Machine, VmError> {
    let kernel_name = args.kernel.as_deref().unwrap_or(DEFAULT_KERNEL);
    let p = prepare(kernel_name, args.mirror.as_deref(), args.guest_bin.as_ref(), extra_tools, cancel)?;
    let accel = choose_accel(args.accel, &p, cancel)?;
    eprintln!("booting kernel {} ({}) with {accel}...", p.kernel.name, p.kernel.release);
    let m = Machine::boot(&BootOptions {
        name,
        kernel_name: &p.kernel.name,
        files: &p.files,
        image: &p.image,
        accel,
        memory_mb: args.memory,
        cpus: args.cpus,
        tied,
        cancel,
    })?;
    eprintln!("VM {name} up: {} ({accel}), agent ready after {:.1} s", m.state.release, m.state.boot_s);
    Ok(m)
}

/// Per-request deadlines on the guest, longer under emulation.
pub fn scenario_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_mins(10),
        Accel::Tcg => Duration::from_mins(30),
    }
}
