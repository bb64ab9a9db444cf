//! `lab-runner down`
use lab_vm::machine::{DEFAULT_NAME, Machine};

use crate::{exit, ui};

pub fn run() -> i32 {
    match Machine::find(DEFAULT_NAME) {
        Ok(Some(m)) => {
            let kernel = m.state.kernel.clone();
            match m.down() {
                Ok(()) => {
                    println!("VM down (kernel {kernel})");
                    exit::OK
                }
                Err(e) => ui::fail_vm(&e),
            }
        }
        Ok(None) => {
            println!("no VM is up");
            exit::OK
        }
        Err(e) => ui::fail_vm(&e),
    }
}
