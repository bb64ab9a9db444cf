//! Host <-> guest protocol: one JSON object per line over the `lab.control` virtio-serial port.
//!
//! The host sends a [`Request`] with an id; the guest answers with [`Reply`]s carrying the same
//! id (several for a streaming request, ending with `exit`, `outcome` or `error`). Replies to an
//! id the host no longer waits for are ignored, so a host that went away mid-stream cannot
//! confuse the next one.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Event, Options, Outcome};

/// Name of the virtio-serial port the agent serves.
pub const CONTROL_PORT: &str = "lab.control";
/// A second port, served the same way, for commands run while a scenario holds the first
/// (`lab-runner exec` during a guided run).
pub const EXEC_PORT: &str = "lab.exec";

/// The protocol's version, sent in `ready`: raised whenever a message changes, so a host never
/// talks to a guest built from other sources (a VM left up by an older build). Guests from
/// before versioning send none, which reads as 0.
pub const VERSION: u32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub body: RequestBody,
}

// ANCHOR: messages
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RequestBody {
    /// Are you there? Answered with `ready`.
    Hello,
    /// Run a command; its output streams back, then its exit code.
    Exec { argv: Vec<String> },
    /// Run a scenario (the file's text travels with the request, and so do the mesh files its
    /// `apply` steps name by path: `mesh_files`, keyed as the steps name them); its events
    /// stream back, then its outcome. `guided`: pause after each step until `continue`.
    Scenario {
        file: String,
        source: String,
        #[serde(default)]
        mesh_files: BTreeMap<String, String>,
        options: Options,
        guided: bool,
    },
    /// Guided mode: go on with the next step.
    Continue,
    /// Interrupt the running exec or scenario (the lab is torn down).
    Cancel,
    /// Power the VM off.
    Poweroff,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    #[serde(flatten)]
    pub body: ReplyBody,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyBody {
    Ready {
        kernel: String,
        uptime_s: f64,
        /// The guest's [`VERSION`].
        #[serde(default)]
        protocol: u32,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        code: i32,
    },
    Event {
        event: Event,
    },
    Outcome {
        outcome: Outcome,
    },
    /// The request failed (or could not be read: then its id is 0 when none could be found).
    /// `unmet` marks a missing requirement rather than a fault.
    Error {
        message: String,
        unmet: bool,
    },
}
// ANCHOR_END: messages

impl ReplyBody {
    /// Whether this reply ends its request.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ReplyBody::Ready { .. }
                | ReplyBody::Exit { .. }
                | ReplyBody::Outcome { .. }
                | ReplyBody::Error { .. }
        )
    }
}

/// The id of a request line that does not parse as a [`Request`], if it has one: the guest
/// answers that id with an error instead of dropping the line.
pub fn id_of(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v.get("id")?.as_u64()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_that_is_not_a_number_crosses_the_wire() {
        let e = Event::Metric {
            step: "4. pod".into(),
            name: "min_ratio".into(),
            value: f64::NAN,
            unit: "x".into(),
        };
        let line = serde_json::to_string(&Reply { id: 1, body: ReplyBody::Event { event: e } }).unwrap();
        assert!(line.contains(r#""value":null"#), "{line}");
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert!(
            matches!(back.body, ReplyBody::Event { event: Event::Metric { value, .. } } if value.is_nan())
        );
    }

    #[test]
    fn a_guest_without_a_version_reads_as_version_0_and_bad_lines_keep_their_id() {
        let old: Reply =
            serde_json::from_str(r#"{"id":1,"kind":"ready","kernel":"6.1","uptime_s":2.5}"#).unwrap();
        assert!(matches!(old.body, ReplyBody::Ready { protocol: 0, .. }));
        assert_eq!(id_of(r#"{"id":42,"op":"frobnicate"}"#), 42);
        assert_eq!(id_of("not json"), 0);
    }

    #[test]
    fn wire_format_is_flat_json_lines() {
        let r = Request { id: 7, body: RequestBody::Exec { argv: vec!["uname".into(), "-r".into()] } };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"id":7,"op":"exec","argv":["uname","-r"]}"#);
        let back: Reply = serde_json::from_str(r#"{"id":7,"kind":"exit","code":3}"#).unwrap();
        assert!(matches!(back.body, ReplyBody::Exit { code: 3 }) && back.body.is_final());
        let s: Reply = serde_json::from_str(r#"{"id":7,"kind":"stdout","data":"x"}"#).unwrap();
        assert!(!s.body.is_final());
    }
}
