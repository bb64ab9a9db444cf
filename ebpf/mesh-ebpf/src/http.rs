//! HTTP/1.1 requests judged in sk_msg, without a proxy: the client's socket reads each request
//! line it sends and holds it against the method and path-prefix matches of the rule that
//! allows the connection. Not a hook itself: `sk_msg.rs` calls [`judge`] for a client socket
//! whose connection is allowed by a rule with HTTP matches.
//!
//! - The message is made linear (`bpf_msg_pull_data`, 4.17) over its first `SCAN` bytes and read
//!   with bounded loops (the verifier accepts bounded loops from 5.3).
//! - A request line whose target is not complete in the message: the message is held back
//!   (`bpf_msg_cork_bytes(size + 1)`) and the program runs again on it together with the next
//!   write, so a request line split across writes is judged whole.
//! - After a request line the headers follow up to the blank line (`\r\n\r\n`, found across
//!   messages too), which must end the message: one request per write.
//! - Fail closed: anything that is not an allowed request where a request must start is denied:
//!   a request body (no Content-Length or chunked parsing: a body could hide a request),
//!   pipelined requests (bytes after the blank line in the same write), TLS, HTTP/2, a target
//!   with `%` or `..` (the server may decode or normalise it into another path), a request line
//!   longer than 128 bytes, headers that do not end within the first `SCAN` bytes of a message.
//! - Book: `book/src/hooks/http.md`.
use aya_ebpf::{
    helpers::{bpf_msg_cork_bytes, bpf_msg_pull_data},
    programs::SkMsgContext,
};
use mesh_common::{HTTP_METHOD_MAX, HTTP_PATH_MAX, HttpRules, MAX_HTTP_MATCHES, SockPolicy};

use crate::maps::{HTTP_LINE, MSG_BUF, SCRATCH};

/// Bytes of a message that are judged; a longer message must have ended its last request's
/// headers within them.
pub const SCAN: usize = 512;

/// What to do with the message.
pub enum Http {
    Allow,
    /// Held back until the next write completes its request line.
    Cork,
    Deny,
}

// ANCHOR: judge
/// Judges the request in this message. `state` is the socket's `http_state`, updated when the
/// message is allowed.
#[inline(always)]
pub fn judge(ctx: &SkMsgContext, rules: &HttpRules, state: &mut u32) -> Http {
    let size = ctx.size() as usize;
    let want = if size < SCAN { size } else { SCAN };
    // SAFETY: the live sk_msg; the helper checks the range.
    if unsafe { bpf_msg_pull_data(ctx.msg.cast(), 0, want as u32, 0) } != 0 {
        return Http::Deny;
    }
    // The judged bytes, copied once into per-CPU memory: every loop after this one reads them
    // without a bounds check, and so without a way out that the verifier must follow.
    let Some(buf) = MSG_BUF.get_ptr_mut(0) else { return Http::Deny };
    // SAFETY: this CPU's buffer; nothing else runs on it meanwhile.
    let buf = unsafe { &mut *buf };
    let n = opaque(copy(ctx, buf));
    if *state & SockPolicy::HTTP_HEADERS == 0 {
        // A request line must start the message.
        match request_line(buf, n, rules) {
            Line::Allowed => {}
            Line::Denied => return Http::Deny,
            Line::Incomplete if size < SCAN => {
                // SAFETY: the live sk_msg.
                unsafe { bpf_msg_cork_bytes(ctx.msg.cast(), size as u32 + 1) };
                return Http::Cork;
            }
            Line::Incomplete => return Http::Deny,
        }
    }
    // Then headers, up to the blank line (a request line holds none, so the scan can start at
    // 0), which must be the message's last bytes: anything after it in the same write would be
    // a body or a second request, which this parser does not judge.
    let (st, next) = blank_line(buf, *state & 0xff);
    if st == 4 {
        if next == size {
            *state = SockPolicy::HTTP_REQUEST;
            return Http::Allow;
        }
        return Http::Deny;
    }
    if size > SCAN {
        // The rest of the message was never read: it could hold anything.
        return Http::Deny;
    }
    *state = SockPolicy::HTTP_HEADERS | st as u32;
    Http::Allow
}
// ANCHOR_END: judge

// ANCHOR: blank_line
/// The state machine for `\r\n\r\n`: `BLANK[state << 8 | byte]` is the next state; 4 means
/// found (and stays 4); a zero byte (past the copied data) keeps the state. Read-only data
/// (`.rodata`, a frozen map): a table lookup is a load, not a branch, and every data-dependent
/// branch in a loop is a path the verifier must explore. `COUNTS` is 1 for a byte read before
/// the blank line was complete.
static BLANK: [u8; 2048] = blank_table(false);
static ROW: [u16; 8] = [0, 256, 512, 768, 1024, 1280, 1536, 1792];
static COUNTS: [u8; 2048] = blank_table(true);

const fn blank_table(counts: bool) -> [u8; 2048] {
    let mut t = [0u8; 2048];
    let mut s = 0;
    while s < 5 {
        let mut b = 0;
        while b < 256 {
            let cr = b == b'\r' as usize;
            let lf = b == b'\n' as usize;
            let next = match s {
                0 | 2 if cr => s + 1,
                1 | 3 if lf => s + 1,
                4 => 4,
                _ if cr => 1,
                _ => 0,
            };
            t[s * 256 + b] = if counts {
                (s < 4 && b != 0) as u8
            } else if b == 0 {
                s as u8
            } else {
                next as u8
            };
            b += 1;
        }
        s += 1;
    }
    t
}

/// Byte classes in a request target: 1 for `%`, CR, LF and controls (decoded or ends the line:
/// never allowed), 2 for `.` (two in a row could climb out of the prefix).
static TARGET: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = if b == b'%' as usize || b < 0x20 || b == 0x7f {
            1
        } else if b == b'.' as usize {
            2
        } else {
            0
        };
        b += 1;
    }
    t
};

/// Runs the state machine over the copied bytes, from `matched` bytes of `\r\n\r\n` already
/// seen at the end of the previous message: the final state (4: found) and how many bytes came
/// before the blank line ended.
#[inline(always)]
fn blank_line(buf: &[u8; SCAN], matched: u32) -> (usize, usize) {
    let mut st = (matched & 3) as usize;
    let mut before = 0usize;
    for &b in buf.iter() {
        // Row start from a table, then add and mask: written as `st << 8 | b`, LLVM moves the
        // mask inside the OR and 6.1's verifier loses the bound of the OR's result.
        let i = (usize::from(ROW[st & 7]) + usize::from(b)) & 2047;
        before += usize::from(COUNTS[i]);
        st = usize::from(BLANK[i]);
    }
    (st, before)
}
// ANCHOR_END: blank_line

// ANCHOR: request_allowed
enum Line {
    Allowed,
    Denied,
    /// The message ends before the target does.
    Incomplete,
}

/// Whether the request line at `from` is one the rule's matches allow: the method exactly, the
/// target starting with the path prefix, and nothing in the target a server could decode or
/// normalise into another path. Written without data-dependent branches inside its loops (table
/// lookups and arithmetic instead): every such branch is a path the verifier explores.
#[inline(always)]
fn request_line(buf: &[u8; SCAN], n: usize, rules: &HttpRules) -> Line {
    let line = &buf[..HTTP_LINE];
    // One pass over the copied line: phase 0 = method, 1 = target, 2 = after it.
    let (mut phase, mut method_len, mut target_len, mut bad) = (0usize, 0usize, 0usize, 0u8);
    let mut prev_dot = 0u8;
    // Bytes past n are zero: a control byte, which never ends a method or a target, so a line
    // cut short stays incomplete.
    for &b in line.iter() {
        let sp = usize::from(SPACE[usize::from(b)]) & 1;
        let in_method = usize::from(IN_METHOD[phase & 3]);
        let in_target = usize::from(IN_TARGET[phase & 3]);
        method_len += in_method & (sp ^ 1);
        target_len += in_target & (sp ^ 1);
        let class = TARGET[usize::from(b)] & (in_target & (sp ^ 1)) as u8 * 3;
        bad |= (class & 1) | (prev_dot & (class >> 1));
        prev_dot = class >> 1;
        phase = usize::from(PHASE_NEXT[(usize::from(PHASE_ROW[phase & 3]) + sp) & 7]);
    }
    if phase < 2 {
        // The target has not ended: more may come, unless the line is already too long.
        return if n < HTTP_LINE { Line::Incomplete } else { Line::Denied };
    }
    if bad != 0 || method_len == 0 || method_len > HTTP_METHOD_MAX || target_len == 0 {
        return Line::Denied;
    }
    let m = method_len;
    let count = rules.count as usize;
    for k in 0..MAX_HTTP_MATCHES {
        let r = &rules.matches[k];
        let plen = r.path_len as usize;
        let mut diff = u8::from(k >= count || r.method_len as usize != m || plen > target_len);
        for i in 0..HTTP_METHOD_MAX {
            diff |= (line[i] ^ r.method[i]) & r.method_mask[i];
        }
        for i in 0..HTTP_PATH_MAX {
            diff |= (line[(m + 1 + i) & (HTTP_LINE - 1)] ^ r.path[i]) & r.path_mask[i];
        }
        if diff == 0 {
            return Line::Allowed;
        }
    }
    Line::Denied
}

/// Copies the message's first `SCAN` bytes (or fewer) into `buf`, zero after them, sixteen
/// per bounds check; returns how many.
#[inline(always)]
fn copy(ctx: &SkMsgContext, buf: &mut [u8; SCAN]) -> usize {
    *buf = [0; SCAN];
    let (data, end) = bounds(ctx);
    let mut n = 0usize;
    for w in 0..SCAN / 16 {
        let p = data + 16 * w;
        if p + 16 > end {
            break;
        }
        // SAFETY: 16 bytes within [data, data_end), checked above.
        let (a, b) = unsafe {
            (core::ptr::read_unaligned(p as *const u64), core::ptr::read_unaligned((p + 8) as *const u64))
        };
        buf[(16 * w) & (SCAN - 16)..][..8].copy_from_slice(&a.to_ne_bytes());
        buf[(16 * w + 8) & (SCAN - 8)..][..8].copy_from_slice(&b.to_ne_bytes());
        n = 16 * w + 16;
    }
    for _ in 0..16 {
        if n >= SCAN {
            break;
        }
        let Some(b) = byte(data, end, n) else { break };
        buf[n & (SCAN - 1)] = b;
        n += 1;
    }
    n
}

/// Per phase (method, target, after, unused): whether it is the method, the target, and the
/// next phase after a byte that is (odd index) or is not (even) a space. Comparisons would be
/// branches: BPF has no instruction that turns a comparison into a value.
static IN_METHOD: [u8; 4] = [1, 0, 0, 0];
static IN_TARGET: [u8; 4] = [0, 1, 0, 0];
static PHASE_NEXT: [u8; 8] = [0, 1, 1, 2, 2, 2, 2, 2];
static PHASE_ROW: [u8; 4] = [0, 2, 4, 6];
static SPACE: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b' ' as usize] = 1;
    t
};
// ANCHOR_END: request_allowed

/// The linear part of the message, read afresh. Each bounds check teaches the verifier how far
/// the packet pointer it used is readable, and a loop that stops at the end of the data leaves
/// it one such pointer per iteration; were those pointers kept for later, every way out of the
/// loop would be a different state and everything after it verified once per iteration. Fresh
/// pointers know nothing, so the ways out look alike and are verified once.
#[inline(always)]
fn bounds(ctx: &SkMsgContext) -> (usize, usize) {
    // SAFETY: fields of the live sk_msg_md.
    unsafe {
        (
            core::ptr::read_volatile(&raw const (*ctx.msg).__bindgen_anon_1.data) as usize,
            core::ptr::read_volatile(&raw const (*ctx.msg).__bindgen_anon_2.data_end) as usize,
        )
    }
}

/// `x`, but unknown to the verifier: it went through map memory, which the verifier does not
/// track. An offset found by a loop is otherwise a different constant on each path out of it,
/// and everything after the loop is verified once per constant (past the 1M instruction limit).
/// The result is masked to `0..2 * SCAN`, a range every caller's offsets fit in (a missing
/// map, which cannot happen, gives the top of it: past every bound, so judged as too long).
#[inline(always)]
fn opaque(x: usize) -> usize {
    let v = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; nothing else runs on it meanwhile.
        Some(p) => unsafe {
            core::ptr::write_volatile(p, x as u64);
            core::ptr::read_volatile(p) as usize
        },
        None => usize::MAX,
    };
    v & (2 * SCAN - 1)
}

/// The message's byte at `at`, if it is within the linear part.
#[inline(always)]
fn byte(data: usize, end: usize, at: usize) -> Option<u8> {
    let p = data + at;
    if p + 1 > end {
        return None;
    }
    // SAFETY: within [data, data_end), which the verifier checks by the comparison above.
    Some(unsafe { *(p as *const u8) })
}
