//! The bpf(2) commands aya 0.14 does not offer for our case: a pinnable link for a
//! cgroup/setsockopt program (aya keeps that link to itself: no `FdLink` conversion), detaching
//! a link at once, and querying which programs a cgroup runs for one hook (what
//! `bpftool cgroup show` prints). Through libbpf's low-level API (`libbpf-sys`, already linked
//! for the C twin): its `union bpf_attr` and command numbers, not ours.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use libbpf_rs::libbpf_sys as sys;

/// `enum bpf_attach_type` value of cgroup/setsockopt.
pub const BPF_CGROUP_SETSOCKOPT: u32 = sys::BPF_CGROUP_SETSOCKOPT;

/// A libbpf low-level call's result: a non-negative value, or `-errno`.
fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::from_raw_os_error(-r)) } else { Ok(r) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` (a cgroup) through a new link.
pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    // SAFETY: two live descriptors; no options (null is allowed).
    let fd = check(unsafe {
        sys::bpf_link_create(prog.as_raw_fd(), target.as_raw_fd(), attach_type, std::ptr::null())
    })?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_DETACH` (5.9): detaches the link's program now, whoever else holds the link. (The
/// last reference going detaches too, but a pin's reference goes with its inode, which the kernel
/// frees after an RCU grace period: later, not when `unlink()` returns.)
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a live descriptor.
    check(unsafe { sys::bpf_link_detach(link.as_raw_fd()) }).map(drop)
}

/// `BPF_OBJ_PIN`: pins any bpf object (a link here) at `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a live descriptor and a NUL-terminated path that outlives the call.
    check(unsafe { sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `BPF_OBJ_GET`: a descriptor for the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    let fd = check(unsafe { sys::bpf_obj_get(c.as_ptr()) })?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_PROG_QUERY`: the ids of the programs attached to `cgroup` for `attach_type` (this
/// cgroup's own, not inherited ones).
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut count = ids.len() as u32;
    let mut flags = 0u32;
    // SAFETY: `ids` has room for `count` ids; the kernel writes at most that many and the
    // number it wrote back into `count`.
    check(unsafe {
        sys::bpf_prog_query(
            cgroup.as_raw_fd(),
            attach_type,
            0,
            &raw mut flags,
            ids.as_mut_ptr(),
            &raw mut count,
        )
    })?;
    ids.truncate(count as usize);
    Ok(ids)
}

/// Keys in a hash-like map (hash, LPM trie, sockhash), counted with `BPF_MAP_GET_NEXT_KEY` over
/// raw keys of `key_size` bytes: one walk for every key type.
pub fn count_keys(map: BorrowedFd<'_>, key_size: usize) -> io::Result<usize> {
    let (mut key, mut next) = (vec![0u8; key_size], vec![0u8; key_size]);
    let mut n = 0;
    loop {
        // The first call asks for the first key (a null key); then the one after `key`.
        let prev: *const libc::c_void = if n == 0 { std::ptr::null() } else { key.as_ptr().cast() };
        // SAFETY: `prev` is null or `key_size` readable bytes, `next` has room for `key_size`
        // bytes, the size the map was created with, which the kernel writes at most.
        match check(unsafe { sys::bpf_map_get_next_key(map.as_raw_fd(), prev, next.as_mut_ptr().cast()) }) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
            Err(e) => return Err(e),
        }
        n += 1;
        std::mem::swap(&mut key, &mut next);
    }
}
