//! `lab-runner up`: boot a VM on a pinned kernel and leave it running in the background.
use lab_protocol::Cancel;
use lab_vm::{
    VmError,
    catalog::Catalog,
    machine::{self, DEFAULT_NAME, Machine},
    mirror,
    qemu::{self, Accel},
    vagrant,
};

use crate::{
    cli::{AccelArg, Provider, UpArgs},
    commands::signals,
    exit, ui,
    vmprep::{self, DEFAULT_KERNEL},
};

pub fn run(args: &UpArgs) -> i32 {
    match args.provider {
        Provider::Vagrant => return vagrant_up(args),
        Provider::Qemu => {}
    }
    if args.print_qemu {
        return print_qemu(args);
    }
    // Ctrl-C, SIGTERM or SIGHUP while fetching, building or booting: stop, leave nothing.
    let cancel = match signals::watch() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match vmprep::boot(DEFAULT_NAME, &args.vm, false, &[], &cancel) {
        Ok(m) => {
            println!(
                "VM up: kernel {} ({}), {}, ready in {:.1} s; state in {}",
                m.state.kernel,
                m.state.release,
                m.state.accel,
                m.state.boot_s,
                m.dir.display()
            );
            exit::OK
        }
        Err(VmError::Cancelled) => {
            eprintln!("lab-runner: interrupted; nothing was left running");
            exit::INTERRUPTED
        }
        Err(e) => ui::fail_vm(&e),
    }
}

fn print_qemu(args: &UpArgs) -> i32 {
    let kernel = args.vm.kernel.as_deref().unwrap_or(DEFAULT_KERNEL);
    let p = match vmprep::prepare(
        kernel,
        args.vm.mirror.as_deref(),
        args.vm.guest_bin.as_ref(),
        &[],
        &Cancel::new(),
    ) {
        Ok(p) => p,
        Err(e) => return ui::fail_vm(&e),
    };
    let accel = match args.vm.accel {
        AccelArg::Kvm => Accel::Kvm,
        _ => Accel::Tcg,
    };
    let qemu = qemu::find_qemu().unwrap_or_else(|| "qemu-system-x86_64".into());
    let dir = Machine::dir_of(DEFAULT_NAME);
    let spec = machine::spec(&dir, qemu, &p.files, &p.image, accel, args.vm.memory, args.vm.cpus);
    println!("{}", qemu::shell_line(&spec));
    exit::OK
}

fn vagrant_up(args: &UpArgs) -> i32 {
    let name = args.vm.kernel.as_deref().unwrap_or(DEFAULT_KERNEL);
    let cat = Catalog::builtin();
    let kernel = match cat.get(name) {
        Ok(k) => k,
        Err(e) => return ui::fail_vm(&e),
    };
    let mirror = match mirror::resolve(args.vm.mirror.as_deref()) {
        Ok(m) => m,
        Err(e) => return ui::fail_vm(&e),
    };
    let bins = vmprep::guest_bins(args.vm.guest_bin.as_ref());
    let text = match vagrant::render(kernel, &mirror, vagrant::Provider::Libvirt, &bins.display().to_string())
    {
        Ok(t) => t,
        Err(e) => return ui::fail_vm(&e),
    };
    let dir = lab_vm::paths::state_root().join(format!("vagrant-{name}"));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("Vagrantfile"), text))
    {
        eprintln!("lab-runner: cannot write {}: {e}", dir.join("Vagrantfile").display());
        return exit::BACKEND;
    }
    println!("wrote {}", dir.join("Vagrantfile").display());
    match std::process::Command::new("vagrant").arg("up").current_dir(&dir).status() {
        Ok(s) if s.success() => exit::OK,
        Ok(_) => exit::BACKEND,
        Err(_) => {
            eprintln!(
                "vagrant is not installed: run `vagrant up` in {} on a machine that has it",
                dir.display()
            );
            exit::UNMET
        }
    }
}
