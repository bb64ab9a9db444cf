//! The bpf(2) commands aya 0.14 does not offer for our case: a pinnable link for a
//! cgroup/setsockopt program (aya keeps that link to itself: no `FdLink` conversion), detaching
//! a link at once, and querying which programs a cgroup runs for one hook (what
//! `bpftool cgroup show` prints).
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

/// `enum bpf_cmd` values from `<linux/bpf.h>`.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_attach_type` value of cgroup/setsockopt.
pub const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// `union bpf_attr` as a zeroed buffer large enough for every command used here.
#[repr(C, align(8))]
struct Attr([u32; 32]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised buffer of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, size_of::<Attr>()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` (a cgroup) through a new link.
pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    let mut a = Attr([0; 32]);
    a.0[0] = prog.as_raw_fd() as u32;
    a.0[1] = target.as_raw_fd() as u32;
    a.0[2] = attach_type;
    let fd = bpf(BPF_LINK_CREATE, &mut a)?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_DETACH` (5.9): detaches the link's program now, whoever else holds the link. (The
/// last reference going detaches too, but a pin's reference goes with its inode, which the kernel
/// frees after an RCU grace period: later, not when `unlink()` returns.)
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut a = Attr([0; 32]);
    a.0[0] = link.as_raw_fd() as u32;
    bpf(BPF_LINK_DETACH, &mut a).map(drop)
}

/// `BPF_OBJ_PIN`: pins any bpf object (a link here) at `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut a = Attr([0; 32]);
    let p = c.as_ptr() as u64;
    a.0[0] = p as u32;
    a.0[1] = (p >> 32) as u32;
    a.0[2] = fd.as_raw_fd() as u32;
    bpf(BPF_OBJ_PIN, &mut a).map(drop)
}

/// `BPF_OBJ_GET`: a descriptor for the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut a = Attr([0; 32]);
    let p = c.as_ptr() as u64;
    a.0[0] = p as u32;
    a.0[1] = (p >> 32) as u32;
    let fd = bpf(BPF_OBJ_GET, &mut a)?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_PROG_QUERY`: the ids of the programs attached to `cgroup` for `attach_type` (this
/// cgroup's own, not inherited ones).
pub fn prog_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut a = Attr([0; 32]);
    a.0[0] = cgroup.as_raw_fd() as u32; // target_fd
    a.0[1] = attach_type; // attach_type
    a.0[2] = 0; // query_flags
    // a.0[3]: attach_flags (out)
    let p = ids.as_mut_ptr() as u64;
    a.0[4] = p as u32; // prog_ids (u64, 8-aligned at byte 16)
    a.0[5] = (p >> 32) as u32;
    a.0[6] = ids.len() as u32; // prog_cnt (in: room, out: count)
    bpf(BPF_PROG_QUERY, &mut a)?;
    ids.truncate(a.0[6] as usize);
    Ok(ids)
}
