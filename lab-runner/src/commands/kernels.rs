//! `lab-runner kernels list|fetch`
use lab_vm::{catalog::Catalog, paths};

use crate::{cli::KernelsCommand, commands::signals, exit, ui, vmprep};

pub fn run(cmd: &KernelsCommand) -> i32 {
    let cat = Catalog::builtin();
    match cmd {
        KernelsCommand::List { json } => {
            let cache = paths::cache_dir().join("debs");
            let rows: Vec<_> = cat
                .kernels
                .iter()
                .map(|k| {
                    let cached = k.packages.iter().all(|p| cache.join(p.file_name()).exists());
                    serde_json::json!({ "name": k.name, "suite": k.suite, "release": k.release,
                        "packages": k.packages.iter().map(|p| &p.name).collect::<Vec<_>>(), "cached": cached })
                })
                .collect();
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("serializes"));
            } else {
                for (k, r) in cat.kernels.iter().zip(&rows) {
                    let cached = if r["cached"] == true { "cached" } else { "not fetched" };
                    println!("{:<6} {:<9} {:<32} {cached}", k.name, k.suite, k.release);
                }
            }
            exit::OK
        }
        KernelsCommand::Fetch { names, mirror } => {
            let names: Vec<&str> =
                if names.is_empty() { cat.names() } else { names.iter().map(String::as_str).collect() };
            let cancel = match signals::watch() {
                Ok(c) => c,
                Err(code) => return code,
            };
            for name in names {
                let result = cat.get(name).and_then(|k| vmprep::fetch_kernel(k, mirror.as_deref(), &cancel));
                match result {
                    Ok(files) => println!("{name}: {} (vmlinuz {})", files.release, files.vmlinuz.display()),
                    Err(e) => return ui::fail_vm(&e),
                }
            }
            exit::OK
        }
    }
}
