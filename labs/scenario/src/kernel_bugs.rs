//! Differences the conformance suite finds that belong to the kernel, not to the mesh: the ways
//! `tcp_bpf_recvmsg` (the receive path of a socket in a sockmap) departs from `tcp_recvmsg`. The
//! conform step names them instead of failing on them; anything else is an unexplained
//! difference and fails the scenario. Each entry is documented in the book
//! (`book/src/hooks/redirect-changes.md`) with its symptom, kernels and mitigation.
use workloads::conform::CaseResult;

/// A known kernel behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelBug {
    pub id: &'static str,
    pub summary: &'static str,
}

// ANCHOR: bugs
/// A blocking read returns EAGAIN when something other than data wakes it.
pub const EAGAIN: KernelBug = KernelBug {
    id: "tcp-bpf-eagain",
    summary: "tcp_bpf_recvmsg returns EAGAIN from a blocking read woken without data (the ACK of \
              our FIN, an RST, freed send space)",
};
/// `MSG_WAITALL` is ignored for redirected bytes.
pub const WAITALL: KernelBug = KernelBug {
    id: "tcp-bpf-waitall",
    summary: "tcp_bpf_recvmsg ignores MSG_WAITALL: it returns what the redirect queue holds",
};
/// `SO_RCVLOWAT` is ignored for redirected bytes.
pub const RCVLOWAT: KernelBug = KernelBug {
    id: "tcp-bpf-rcvlowat",
    summary: "tcp_bpf_recvmsg ignores SO_RCVLOWAT for redirected bytes (the mesh keeps such sockets on TCP \
              where it can see the option)",
};
/// A reader that uses splice(2) never sees redirected bytes.
pub const SPLICE_READ: KernelBug = KernelBug {
    id: "tcp-bpf-splice-read",
    summary: "splice() from a socket in a sockmap reads only TCP's receive queue (tcp_splice_read is in \
              the socket's proto_ops, which the map does not swap): it misses the redirected bytes and \
              takes the FIN, which came through TCP, for the end of an empty stream",
};
/// FIONREAD (SIOCINQ) does not count redirected bytes.
pub const FIONREAD: KernelBug = KernelBug {
    id: "tcp-bpf-fionread",
    summary: "ioctl(FIONREAD) on a socket in a sockmap counts only TCP's receive queue (tcp_ioctl), not \
              the redirected bytes waiting in its psock queue: 0 while they are readable",
};
// ANCHOR_END: bugs

/// The known kernel behaviour that accounts for `got` differing from `want`, if there is one.
pub fn explain(got: &CaseResult, want: &CaseResult) -> Option<KernelBug> {
    // For these two, the same bytes in the end on both sides: only the first read differs.
    let only_first_read = got.server == want.server && got.client.get(1..) == want.client.get(1..);
    match got.case.as_str() {
        "waitall" if only_first_read && waitall_short(&got.client) && !waitall_short(&want.client) => {
            Some(WAITALL)
        }
        // The client wrote everything; the server's splice() saw fewer bytes: the FIN (which
        // took TCP) as an early end of the stream, or nothing until its SO_RCVTIMEO ran out.
        "splice-read"
            if got.client.first() == want.client.first()
                && (got.server.last().is_some_and(|l| l == "error: splice: EAGAIN")
                    || spliced(&got.server) < spliced(&want.server)) =>
        {
            Some(SPLICE_READ)
        }
        "fionread"
            if only_first_read
                && got.client.first().is_some_and(|l| l == "FIONREAD once readable: 0")
                && want.client.first().is_some_and(|l| l != "FIONREAD once readable: 0") =>
        {
            Some(FIONREAD)
        }
        "rcvlowat" | "rcvlowat-before-connect"
            if only_first_read
                && got.client.first().is_some_and(|l| l.ends_with(": false"))
                && want.client.first().is_some_and(|l| l.ends_with(": true")) =>
        {
            Some(RCVLOWAT)
        }
        _ => {
            let client = side_eagain(&got.client, &want.client);
            let server = side_eagain(&got.server, &want.server);
            let eagain_somewhere = client == Side::Eagain || server == Side::Eagain;
            // The other end of a connection whose reader gave up may not finish its side, or
            // find the connection gone under its next write (the reader closed it after its
            // error): EPIPE or ECONNRESET, and nothing else.
            let fine = |s: Side, lines: &[String]| {
                s != Side::Other
                    || lines.iter().any(|l| l == "server side did not finish")
                    || (eagain_somewhere && lines.len() == 1 && gone(&lines[0]))
            };
            (eagain_somewhere && fine(client, &got.client) && fine(server, &got.server)).then_some(EAGAIN)
        }
    }
}

/// The bytes a splice-read server reported (`spliced N bytes ...`), 0 when it reported none.
fn spliced(lines: &[String]) -> u64 {
    lines
        .first()
        .and_then(|l| l.strip_prefix("spliced "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The peer closed the connection under this side's operation.
fn gone(line: &str) -> bool {
    line.starts_with("error: ") && (line.ends_with(": EPIPE") || line.ends_with(": ECONNRESET"))
}

fn waitall_short(lines: &[String]) -> bool {
    lines
        .first()
        .and_then(|l| l.strip_prefix("recv(10000, MSG_WAITALL) returned "))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n < 10_000)
}

#[derive(Debug, PartialEq, Eq)]
enum Side {
    Same,
    Eagain,
    Other,
}

/// Whether one side's transcript equals the reference, or departs from it exactly where an
/// EAGAIN appears (an operation that failed with it, or a tally of connections that did).
fn side_eagain(got: &[String], want: &[String]) -> Side {
    if got == want {
        return Side::Same;
    }
    let at = got.iter().zip(want).take_while(|(g, w)| g == w).count();
    let Some(line) = got.get(at) else { return Side::Other };
    let eagain_line = |l: &String| l.contains("EAGAIN") && !want.contains(l);
    if eagain_line(line) {
        return Side::Eagain;
    }
    // A tally: "N of M ... echoed intact", then "K failed with OP: ERRNO" lines.
    let tally = |lines: &[String]| lines.first().is_some_and(|l| l.contains(" echoed intact"));
    let failures = &got[at + 1..];
    if at == 0
        && tally(got)
        && tally(want)
        && want.len() == 1
        && !failures.is_empty()
        && failures.iter().all(eagain_line)
    {
        return Side::Eagain;
    }
    Side::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, client: &[&str], server: &[&str]) -> CaseResult {
        CaseResult {
            case: name.into(),
            client: client.iter().map(|s| (*s).to_owned()).collect(),
            server: server.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn eagain_instead_of_econnreset_is_the_known_bug() {
        let want = case("abortive-close", &["read: ECONNRESET"], &["close() with SO_LINGER 0"]);
        let got = case("abortive-close", &["read: EAGAIN"], &["close() with SO_LINGER 0"]);
        assert_eq!(explain(&got, &want), Some(EAGAIN));
    }

    #[test]
    fn eagain_tallies_and_an_unfinished_server_are_explained() {
        let want = case("short-lived", &["10 of 10 short-lived connections echoed intact"], &[]);
        let got = case(
            "short-lived",
            &["9 of 10 short-lived connections echoed intact", "1 failed with read: EAGAIN"],
            &[],
        );
        assert_eq!(explain(&got, &want), Some(EAGAIN));
        let want = case("write-16m", &["sent x", "echo x"], &["echoed x"]);
        let got = case("write-16m", &["sent x", "error: read: EAGAIN"], &["server side did not finish"]);
        assert_eq!(explain(&got, &want), Some(EAGAIN));
        // Seen on 6.1: the client gave up with EAGAIN and closed; the echoing server's next write
        // found the connection gone.
        let want = case("write-1m", &["sent x", "echo x"], &["echoed x, then eof"]);
        let got = case("write-1m", &["sent x", "error: read: EAGAIN"], &["error: write: EPIPE"]);
        assert_eq!(explain(&got, &want), Some(EAGAIN));
    }

    #[test]
    fn other_differences_stay_unexplained() {
        let want = case("write-1m", &["sent x", "echo x"], &["echoed x"]);
        // Reordered or lost bytes: a different checksum, no EAGAIN anywhere.
        assert_eq!(explain(&case("write-1m", &["sent x", "echo y"], &["echoed x"]), &want), None);
        // A broken connection without an EAGAIN anywhere stays unexplained.
        assert_eq!(explain(&case("write-1m", &["sent x", "echo x"], &["error: write: EPIPE"]), &want), None);
        // EAGAIN on one side does not excuse a wrong checksum on the other.
        assert_eq!(
            explain(&case("write-1m", &["sent x", "error: read: EAGAIN"], &["echoed y"]), &want),
            None
        );
        // A tally with a failure that is not EAGAIN.
        let want = case("short-lived", &["10 of 10 short-lived connections echoed intact"], &[]);
        let got = case(
            "short-lived",
            &["9 of 10 short-lived connections echoed intact", "1 failed with connect: ECONNREFUSED"],
            &[],
        );
        assert_eq!(explain(&got, &want), None);
        // A short MSG_WAITALL read whose bytes then differ is not the waitall bug.
        let server = ["sent 10 writes of 1000 bytes, 5 ms apart"];
        let want = case("waitall", &["recv(10000, MSG_WAITALL) returned 10000", "in all x"], &server);
        let got = case("waitall", &["recv(10000, MSG_WAITALL) returned 1000", "in all y"], &server);
        assert_eq!(explain(&got, &want), None);
        // A short read anywhere else is not the waitall bug.
        let want = case("peek", &["peek \"hello\""], &[]);
        assert_eq!(explain(&case("peek", &["peek \"he\""], &[]), &want), None);
    }

    #[test]
    fn waitall_and_rcvlowat() {
        let server = ["sent 10 writes of 1000 bytes, 5 ms apart"];
        let want = case("waitall", &["recv(10000, MSG_WAITALL) returned 10000", "in all x"], &server);
        let got = case("waitall", &["recv(10000, MSG_WAITALL) returned 1000", "in all x"], &server);
        assert_eq!(explain(&got, &want), Some(WAITALL));
        let want = case("rcvlowat", &["SO_RCVLOWAT 4000: first read >= 4000: true", "in all x"], &[]);
        let got = case("rcvlowat", &["SO_RCVLOWAT 4000: first read >= 4000: false", "in all x"], &[]);
        assert_eq!(explain(&got, &want), Some(RCVLOWAT));
    }

    #[test]
    fn fionread_zero_is_the_known_bug_and_a_wrong_count_is_not() {
        let server = ["sent 1000 bytes in one write, then read 1 byte"];
        let want = case("fionread", &["FIONREAD once readable: 1000", "then read x"], &server);
        let got = case("fionread", &["FIONREAD once readable: 0", "then read x"], &server);
        assert_eq!(explain(&got, &want), Some(FIONREAD));
        let wrong = case("fionread", &["FIONREAD once readable: 500", "then read x"], &server);
        assert_eq!(explain(&wrong, &want), None);
        let lost = case("fionread", &["FIONREAD once readable: 0", "then read y"], &server);
        assert_eq!(explain(&lost, &want), None);
    }

    #[test]
    fn a_splice_reader_that_times_out_is_the_known_bug_and_nothing_else_is() {
        let sent = "sent 100000 bytes fnv 1";
        let want = case(
            "splice-read",
            &[sent, "server spliced 100000 bytes fnv 1, eof"],
            &["spliced 100000 bytes fnv 1, eof"],
        );
        let got =
            case("splice-read", &[sent, "server spliced 0 bytes fnv 2, eof"], &["error: splice: EAGAIN"]);
        assert_eq!(explain(&got, &want), Some(SPLICE_READ));
        // The FIN took TCP and splice() took it for the end of an empty stream.
        let early_eof = case(
            "splice-read",
            &[sent, "server spliced 33 bytes fnv 2, eof"],
            &["spliced 0 bytes fnv 4, eof"],
        );
        assert_eq!(explain(&early_eof, &want), Some(SPLICE_READ));
        // Spliced, but the wrong bytes: not this bug.
        let wrong = case(
            "splice-read",
            &[sent, "server spliced 100000 bytes fnv 3, eof"],
            &["spliced 100000 bytes fnv 3, eof"],
        );
        assert_eq!(explain(&wrong, &want), None);
    }
}
