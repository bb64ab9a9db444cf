//! lab-node inside a VM: PID 1 ([`init`]) and the agent the host talks to ([`agent`]) over a
//! virtio-serial port, with JSON lines ([`protocol`], the `lab-protocol` crate's wire format).
pub mod agent;
pub mod init;
pub use lab_protocol::wire as protocol;
