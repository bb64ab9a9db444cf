//! SIGINT and SIGTERM set a [`Cancel`] flag instead of killing the process, so whatever is
//! running can tear its lab or VM down first.
use std::{sync::mpsc, thread};

use lab_node::process::Cancel;

use crate::exit;

/// Installs the handlers and returns the flag they set (or the exit code if they could not be
/// installed). Returns once the handlers are in place.
pub fn watch() -> Result<Cancel, i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let cancel = Cancel::new();
    let flag = cancel.clone();
    let (ready, installed) = mpsc::channel();
    thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return drop(ready.send(Err(e))),
        };
        rt.block_on(async move {
            let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
            {
                (Ok(i), Ok(t)) => (i, t),
                (Err(e), _) | (_, Err(e)) => return drop(ready.send(Err(e))),
            };
            let _ = ready.send(Ok(()));
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            flag.cancel();
        });
    });
    match installed.recv() {
        Ok(Ok(())) => Ok(cancel),
        Ok(Err(e)) => {
            eprintln!("lab-runner: cannot install signal handlers: {e}");
            Err(exit::BACKEND)
        }
        Err(_) => {
            eprintln!("lab-runner: cannot install signal handlers");
            Err(exit::BACKEND)
        }
    }
}
