//! Where the kernel's pseudo file systems are mounted.
use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The conventional bpffs mount point.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Mount points of every file system of type `fstype`, from /proc/mounts, in mount order.
pub fn mounts_of(fstype: &str) -> Vec<PathBuf> {
    parse_mounts(&fs::read_to_string("/proc/mounts").unwrap_or_default(), fstype)
}

fn parse_mounts(table: &str, fstype: &str) -> Vec<PathBuf> {
    table
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, dir, ty) = (f.next()?, f.next()?, f.next()?);
            // /proc/mounts escapes spaces and friends as octal (\040).
            (ty == fstype).then(|| PathBuf::from(dir.replace("\\040", " ")))
        })
        .collect()
}

/// The cgroup v2 mount: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Option<PathBuf> {
    mounts_of("cgroup2").into_iter().next()
}

/// Whether `path` (or its nearest existing ancestor) lives on a bpffs.
pub fn is_on_bpffs(path: &Path) -> bool {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => return false,
        }
    }
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; `c` is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &raw mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_table() {
        let table = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n\
                     cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n\
                     bpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(parse_mounts(table, "cgroup2"), vec![PathBuf::from("/sys/fs/cgroup/unified")]);
        assert_eq!(parse_mounts(table, "bpf"), vec![PathBuf::from("/sys/fs/bpf")]);
        assert!(parse_mounts(table, "tracefs").is_empty());
    }

    #[test]
    fn tmp_is_not_bpffs() {
        assert!(!is_on_bpffs(Path::new("/tmp/definitely/not/here")));
    }
}
