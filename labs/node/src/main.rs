//! `lab-node`: PID 1 and guest agent of the lab VM.
//!
//! As PID 1 it sets the VM up and starts `lab-node guest-agent` (itself) as a child.
fn main() {
    if std::process::id() == 1 {
        lab_node::guest::init::run();
    }
    if let Some("guest-agent") = std::env::args().nth(1).as_deref() {
        if let Err(e) = lab_node::guest::agent::serve() {
            lab_node::guest::init::log(&format!("agent: {e}"));
            std::process::exit(1);
        }
    } else {
        eprintln!("usage: lab-node guest-agent   (lab-node is the lab VM's init and agent)");
        std::process::exit(2);
    }
}
