//! SIGINT, SIGTERM and SIGHUP (the terminal went away) set a [`Cancel`] flag instead of killing
//! the process, so whatever is running can tear its lab or VM down first. A second signal exits
//! at once: the user asked twice.
use std::{sync::mpsc, thread};

use lab_protocol::Cancel;

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
            let kinds = [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()];
            let (mut int, mut term, mut hup) = match kinds.map(signal) {
                [Ok(i), Ok(t), Ok(h)] => (i, t, h),
                [Err(e), ..] | [_, Err(e), _] | [.., Err(e)] => return drop(ready.send(Err(e))),
            };
            let _ = ready.send(Ok(()));
            for n in 0.. {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
                if n > 0 {
                    eprintln!("lab-runner: interrupted twice; exiting without cleaning up (`lab-runner clean` removes what is left)");
                    std::process::exit(exit::INTERRUPTED);
                }
                eprintln!("lab-runner: stopping (interrupt again to exit at once)");
                flag.cancel();
            }
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
