//! `lab-runner exec -- CMD`: runs CMD in the VM, streaming its output; exits with its code.
use std::{io::Write, time::Duration};

use lab_protocol::wire::{ReplyBody, RequestBody};
use lab_vm::{
    VmError,
    machine::{DEFAULT_NAME, Machine},
};

use crate::{cli::ExecArgs, commands::signals, exit, ui};

pub fn run(args: &ExecArgs) -> i32 {
    let m = match Machine::find(&args.vm) {
        Ok(Some(m)) => m,
        Ok(None) if args.vm == DEFAULT_NAME => return ui::fail_vm(&VmError::NotUp),
        Ok(None) => {
            eprintln!("lab-runner: no VM named {} is up", args.vm);
            return exit::USAGE;
        }
        Err(e) => return ui::fail_vm(&e),
    };
    let cancel = match signals::watch() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The second port: free even while a scenario runs on the first.
    let result = m.exec_channel(Duration::from_secs(args.timeout)).and_then(|mut ch| {
        ch.request(
            RequestBody::Exec { argv: args.command.clone() },
            Duration::from_secs(args.timeout),
            &format!("running `{}`", args.command.join(" ")),
            Some(&cancel),
            |reply| {
                match reply {
                    ReplyBody::Stdout { data } => {
                        let mut o = std::io::stdout().lock();
                        let _ = o.write_all(data.as_bytes());
                        let _ = o.flush();
                    }
                    ReplyBody::Stderr { data } => eprint!("{data}"),
                    _ => {}
                }
                None
            },
        )
    });
    match result {
        Ok(ReplyBody::Exit { code }) => code,
        Ok(ReplyBody::Error { message, unmet }) => ui::fail_vm(&VmError::Guest { message, unmet }),
        Ok(other) => {
            ui::fail_vm(&VmError::Guest { message: format!("unexpected reply {other:?}"), unmet: false })
        }
        Err(e) => ui::fail_vm(&e),
    }
}
