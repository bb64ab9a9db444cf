//! lab-node inside a VM: PID 1 ([`init`]) and the agent the host talks to ([`agent`]) over a
//! virtio-serial port, with JSON lines ([`protocol`]).
pub mod agent;
pub mod init;
pub mod protocol;
