//! `lab-runner status`
use lab_vm::machine::{DEFAULT_NAME, Machine};

use crate::{cli::StatusArgs, exit, ui};

pub fn run(args: &StatusArgs) -> i32 {
    match Machine::find(DEFAULT_NAME) {
        Ok(Some(m)) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&m.state).expect("serializes"));
            } else {
                let s = &m.state;
                println!(
                    "VM {}: kernel {} ({}), {}, qemu pid {}, booted in {:.1} s",
                    s.name, s.kernel, s.release, s.accel, s.pid, s.boot_s
                );
                println!("state: {}", m.dir.display());
            }
            exit::OK
        }
        Ok(None) => {
            if args.json {
                println!("null");
            } else {
                println!("no VM is up");
            }
            exit::OK
        }
        Err(e) => ui::fail_vm(&e),
    }
}
