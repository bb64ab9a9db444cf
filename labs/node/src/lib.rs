//! lab-node: the lab VM's side. As PID 1 ([`guest::init`]) it sets the VM up; as the guest
//! agent ([`guest::agent`]) it runs scenarios (the `lab-scenario` crate) for the host and
//! answers over a virtio-serial port.
pub mod guest;
