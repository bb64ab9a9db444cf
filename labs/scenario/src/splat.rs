//! Kernel splats: a warning, BUG, oops, sanitizer report, lockdep report, RCU stall, soft
//! lockup or hung task the kernel logged while a scenario ran. Any of them fails the run, with
//! its lines in the report, as libbpf's CI fails a run on one: a lab that loads programs into
//! five kernels must say when one of them complained. Known-harmless ones are allowed by
//! [`ALLOWED`], each with the reason.
//!
//! The log is `/dev/kmsg`: one record per read, `prio,seq,usec,flags;message` (see the
//! kernel's Documentation/ABI/testing/dev-kmsg). The engine marks the last sequence number when
//! the run starts and reads what came after when it ends, on the host and in a VM alike.
use std::{fs::OpenOptions, io, io::Read, os::unix::fs::OpenOptionsExt};

/// Text that starts a splat, matched anywhere in a record's message.
// ANCHOR: patterns
pub const SPLATS: &[&str] = &[
    // WARN_ON() and friends, lockdep ("WARNING: possible circular locking dependency"),
    // refcount and list debugging (they print through WARN too).
    "WARNING:",
    // BUG_ON(), "BUG: KASAN", "BUG: soft lockup", "BUG: unable to handle page fault".
    "BUG:",
    "kernel BUG at",
    "Oops:",
    "general protection fault",
    "UBSAN:",
    "KASAN:",
    "Kernel panic",
    // RCU stall warnings: "rcu_sched detected stalls", "rcu_preempt self-detected stall".
    "detected stall",
    // The hung-task detector: "INFO: task x:123 blocked for more than 120 seconds."
    "blocked for more than",
];
// ANCHOR_END: patterns

/// Splats known to be harmless: (text matched in the first line, why it is allowed). Empty: no
/// run of the pinned kernels under QEMU (TCG) or of the host has logged one yet.
pub const ALLOWED: &[(&str, &str)] = &[];

/// Records kept after a splat's first line at most: its registers and call trace.
const CONTEXT: usize = 30;
/// The kernel's last line of a WARN or an oops (`---[ end trace 0000000000000000 ]---`).
const END: &str = "---[ end trace";

/// Where the kernel log stood when the run started.
#[derive(Debug, Clone, Copy)]
pub struct KernelLog {
    /// The last record's sequence number then (`None`: the log was empty).
    last: Option<u64>,
}

impl KernelLog {
    /// Marks the log's end now. Fails when `/dev/kmsg` cannot be read (no root, no device).
    pub fn mark() -> io::Result<Self> {
        Ok(Self { last: read_records()?.last().map(|(seq, _)| *seq) })
    }

    /// Every record logged since the mark, its message on one line each.
    pub fn text_since(&self) -> io::Result<String> {
        Ok(read_records()?
            .into_iter()
            .filter(|(seq, _)| self.last.is_none_or(|l| *seq > l))
            .map(|(_, m)| format!("{m}\n"))
            .collect())
    }

    /// Every splat logged since the mark that [`ALLOWED`] does not excuse, each its lines joined.
    pub fn splats_since(&self) -> io::Result<Vec<String>> {
        let fresh: Vec<(u64, String)> =
            read_records()?.into_iter().filter(|(seq, _)| self.last.is_none_or(|l| *seq > l)).collect();
        Ok(splats(&fresh))
    }
}

/// The splats among `records` (in order), each with the records after it up to its end
/// marker, the next splat, or [`CONTEXT`] records, one string of lines each.
pub fn splats(records: &[(u64, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < records.len() {
        let first = &records[i].1;
        let starts = SPLATS.iter().any(|p| first.contains(p));
        if !starts || ALLOWED.iter().any(|(p, _)| first.contains(p)) {
            i += 1;
            continue;
        }
        let end = (i + 1 + CONTEXT).min(records.len());
        // The next splat starts a splat of its own; the end marker is the last line of this one.
        let mut len = 0;
        for (_, m) in &records[i + 1..end] {
            if SPLATS.iter().any(|p| m.contains(p)) {
                break;
            }
            len += 1;
            if m.contains(END) {
                break;
            }
        }
        let lines: Vec<&str> = records[i..=i + len].iter().map(|(_, m)| m.as_str()).collect();
        out.push(lines.join("\n"));
        i += len + 1;
    }
    out
}

/// `prio,seq,usec,flags[,...];message`: the sequence number and the message (its first line:
/// continuation lines, ` KEY=value` dictionary entries, are dropped).
pub fn parse(record: &str) -> Option<(u64, String)> {
    let (header, message) = record.split_once(';')?;
    let seq = header.split(',').nth(1)?.parse().ok()?;
    let message = message.lines().next().unwrap_or("");
    Some((seq, message.to_owned()))
}

/// Every record in the kernel's ring buffer now.
fn read_records() -> io::Result<Vec<(u64, String)>> {
    let mut kmsg = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg")?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend(parse(&String::from_utf8_lossy(&buf[..n]))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // A record overwritten while we read: the next read goes on from the oldest left.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(lines: &[&str]) -> Vec<(u64, String)> {
        lines.iter().enumerate().map(|(i, l)| (i as u64, (*l).to_owned())).collect()
    }

    #[test]
    fn a_record_reads_back() {
        assert_eq!(
            parse("4,1234,5678901,-;WARNING: CPU: 0 PID: 1 at net/core/skmsg.c:1 x\n SUBSYSTEM=net\n"),
            Some((1234, "WARNING: CPU: 0 PID: 1 at net/core/skmsg.c:1 x".into()))
        );
        assert_eq!(parse("6,17,5,c,more;hello"), Some((17, "hello".into())));
        assert_eq!(parse("no header"), None);
    }

    /// A WARN of the kind sockmap memory-accounting bugs print (inet_sock_destruct() called
    /// from sk_psock_destroy()), with ordinary lines around it.
    #[test]
    fn a_warning_is_found_with_its_trace() {
        let log = records(&[
            "eth0: link becomes ready",
            "------------[ cut here ]------------",
            "WARNING: CPU: 3 PID: 2094 at net/ipv4/af_inet.c:155 inet_sock_destruct+0x13c/0x260",
            "Call Trace:",
            " <TASK>",
            " __sk_destruct+0x24/0x1f0",
            " sk_psock_destroy+0x19b/0x1c0",
            " </TASK>",
            "---[ end trace 0000000000000000 ]---",
            "br0: port 1(v-a) entered disabled state",
        ]);
        let s = splats(&log);
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(s[0].starts_with("WARNING: CPU: 3 PID: 2094 at net/ipv4/af_inet.c:155"), "{s:?}");
        assert!(s[0].contains("sk_psock_destroy"), "{s:?}");
        assert!(s[0].ends_with("---[ end trace 0000000000000000 ]---"), "{s:?}");
        assert!(!s[0].contains("link becomes ready") && !s[0].contains("br0"));
    }

    #[test]
    fn every_kind_is_a_splat_and_ordinary_lines_are_not() {
        for line in [
            "BUG: KASAN: use-after-free in sk_psock_verdict_recv+0x1a/0x100",
            "watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [workload:812]",
            "rcu: INFO: rcu_preempt self-detected stall on CPU",
            "INFO: task workload:812 blocked for more than 120 seconds.",
            "UBSAN: shift-out-of-bounds in net/core/filter.c:1234:5",
            "general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP",
            "kernel BUG at net/core/skbuff.c:4319!",
            "WARNING: possible circular locking dependency detected",
        ] {
            assert_eq!(splats(&records(&[line])).len(), 1, "{line}");
        }
        let quiet = records(&[
            "bpf: Unrecognized arg#0 type PTR",
            "IPv6: ADDRCONF(NETDEV_CHANGE): veth0: link becomes ready",
            "clocksource: Marking clocksource 'tsc' as unstable because the skew is too large:",
            "audit: type=1334 audit(1700000000.000:2): prog-id=12 op=LOAD",
        ]);
        assert!(splats(&quiet).is_empty());
    }

    #[test]
    fn two_splats_in_a_row_are_two() {
        let log = records(&["WARNING: CPU: 0 PID: 1 at a.c:1 f", "Call Trace:", "BUG: KASAN: oops", "x"]);
        let s = splats(&log);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0], "WARNING: CPU: 0 PID: 1 at a.c:1 f\nCall Trace:");
    }
}
