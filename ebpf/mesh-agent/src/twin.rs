//! The libbpf engine (`mesh-agent run --engine libbpf`): the redirect's two programs come from
//! the C twin (`ebpf/mesh-c`, loaded through its libbpf-rs skeletons) instead of mesh-ebpf.
//!
//! Everything else is the aya engine's: the agent creates every map from the aya object first,
//! and the twin's objects *reuse* them (`reuse_fd`: libbpf creates no map and points the
//! programs' map references at aya's), so both builds
//! read and write the same sockets, keys, states and counters, and the pins, the links, restart
//! adoption, `status` and uninstall stay as they are. The rest of the mesh (load balancing,
//! policy at connect and ingress, telemetry's sock_ops) keeps running the Rust programs beside
//! the C redirect; what the C sk_msg leaves out is in its file's header.
use std::{
    collections::HashMap,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    sync::Mutex,
};

use libbpf_rs::{
    OpenObject, PrintLevel,
    skel::{OpenSkel as _, Skel as _},
};
use mesh_c::{sk_msg::SkMsgSkelBuilder, sock_ops::SockOpsSkelBuilder};

use crate::{MeshError, Variant};

/// What libbpf printed while loading (the verifier's log among it), for an error message.
static LOG: Mutex<String> = Mutex::new(String::new());

fn capture(_level: PrintLevel, msg: String) {
    if let Ok(mut log) = LOG.lock() {
        log.push_str(&msg);
    }
}

/// Runs `f` with libbpf's messages going to [`LOG`] (cleared first); returns them too.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    if let Ok(mut log) = LOG.lock() {
        log.clear();
    }
    let before = libbpf_rs::set_print(Some((PrintLevel::Debug, capture)));
    let out = f();
    libbpf_rs::set_print(before);
    let log = LOG.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
    (out, log)
}

/// The verifier's part of what libbpf printed (libbpf frames it with these lines).
fn verifier_log(log: &str) -> String {
    let start = log.find("-- BEGIN PROG LOAD LOG --").unwrap_or(0);
    let end = log.find("-- END PROG LOAD LOG --").map_or(log.len(), |e| e + "-- END PROG LOAD LOG --".len());
    log[start..end].trim().to_owned()
}

fn libbpf(what: &'static str) -> impl FnOnce(libbpf_rs::Error) -> MeshError {
    move |source| MeshError::Libbpf { what, source }
}

// ANCHOR: load
/// The agent's maps by name (descriptors of the maps aya created), for the twin to reuse.
pub type Maps = HashMap<String, OwnedFd>;

/// Opens `builder`'s object, points each of its maps at the agent's map of the same name, keeps
/// only `program` for loading, and loads it. A refusal carries the verifier log.
fn load<'obj, B>(
    builder: B,
    storage: &'obj mut MaybeUninit<OpenObject>,
    maps: &Maps,
    program: &'static str,
) -> Result<<B::Output as libbpf_rs::skel::OpenSkel<'obj>>::Output, MeshError>
where
    B: libbpf_rs::skel::SkelBuilder<'obj>,
{
    let mut open = builder.open(storage).map_err(libbpf("cannot open the C object"))?;
    let object = open.open_object_mut();
    for mut map in object.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        let fd = maps.get(&name).ok_or_else(|| MeshError::Io {
            what: "the C twin declares a map the agent does not have:",
            path: name.into(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        map.reuse_fd(fd.as_fd()).map_err(libbpf("cannot reuse map"))?;
    }
    for mut prog in object.progs_mut() {
        let keep = prog.name() == program;
        prog.set_autoload(keep);
    }
    let (loaded, log) = logged(|| open.load());
    loaded.map_err(|e| MeshError::Refused {
        program,
        source: std::io::Error::other(e),
        verifier_log: verifier_log(&log),
    })
}
// ANCHOR_END: load

// ANCHOR: attach
/// Loads the C sk_msg program (the build with the netns cookie where the verifier takes it,
/// else the one without) and attaches it to the `SOCKETS` sockhash. Returns the build loaded.
pub fn attach_sk_msg(maps: &Maps, sockets: BorrowedFd<'_>) -> Result<Variant, MeshError> {
    for variant in [Variant::Netns, Variant::NoNetns] {
        let mut storage = MaybeUninit::uninit();
        let name = variant.programs().0;
        let mut skel = match load(SkMsgSkelBuilder::default(), &mut storage, maps, name) {
            Ok(skel) => skel,
            // Before 5.15 sk_msg may not call bpf_get_netns_cookie: the build without it.
            Err(MeshError::Refused { verifier_log, .. })
                if variant == Variant::Netns && verifier_log.contains("get_netns_cookie") =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let prog =
            skel.object_mut().progs_mut().find(|p| p.name() == name).ok_or(MeshError::Missing { name })?;
        // A program attached to a map, not a link: it stays with the (pinned) sockhash.
        prog.attach_sockmap(sockets.as_raw_fd()).map_err(libbpf("cannot attach sk_msg to SOCKETS"))?;
        return Ok(variant);
    }
    Err(MeshError::Missing { name: Variant::NoNetns.programs().0 })
}

/// Loads the C sock_ops program of `variant` and links it to the cgroup; returns the link for
/// the agent to pin (the skeleton, and its descriptors, go when this returns).
pub fn attach_sock_ops(maps: &Maps, variant: Variant, cgroup: BorrowedFd<'_>) -> Result<OwnedFd, MeshError> {
    let mut storage = MaybeUninit::uninit();
    let name = variant.programs().1;
    let mut skel = load(SockOpsSkelBuilder::default(), &mut storage, maps, name)?;
    let prog = skel.object_mut().progs_mut().find(|p| p.name() == name).ok_or(MeshError::Missing { name })?;
    let link =
        prog.attach_cgroup(cgroup.as_raw_fd()).map_err(libbpf("cannot link sock_ops to the cgroup"))?;
    link.as_fd().try_clone_to_owned().map_err(|source| MeshError::Io {
        what: "cannot duplicate the link of",
        path: name.into(),
        source,
    })
}
// ANCHOR_END: attach

/// Loads the twin's two programs of `variant` without attaching them (for `mesh-agent
/// engines`): for each, its name, how long libbpf's load took (open to loaded: CO-RE
/// relocation against the kernel's BTF, map reuse, the verifier) and a descriptor of the program.
pub fn load_unattached(
    maps: &Maps,
    variant: Variant,
) -> Result<Vec<(&'static str, std::time::Duration, OwnedFd)>, MeshError> {
    let (msg, ops) = variant.programs();
    let dup = |name: &'static str, fd: BorrowedFd<'_>| {
        fd.try_clone_to_owned().map_err(|source| MeshError::Io {
            what: "cannot duplicate",
            path: name.into(),
            source,
        })
    };
    let mut out = Vec::new();
    let mut storage = MaybeUninit::uninit();
    let t = std::time::Instant::now();
    let mut skel = load(SkMsgSkelBuilder::default(), &mut storage, maps, msg)?;
    let took = t.elapsed();
    let prog =
        skel.object_mut().progs_mut().find(|p| p.name() == msg).ok_or(MeshError::Missing { name: msg })?;
    out.push((msg, took, dup(msg, prog.as_fd())?));
    let mut storage = MaybeUninit::uninit();
    let t = std::time::Instant::now();
    let mut skel = load(SockOpsSkelBuilder::default(), &mut storage, maps, ops)?;
    let took = t.elapsed();
    let prog =
        skel.object_mut().progs_mut().find(|p| p.name() == ops).ok_or(MeshError::Missing { name: ops })?;
    out.push((ops, took, dup(ops, prog.as_fd())?));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use mesh_c::{sk_msg, sock_ops};
    use mesh_common::{COUNTER_SLOTS, Counter, FlowControl, SockKey, SockPolicy, Unread};

    use libbpf_rs::skel::SkelBuilder as _;

    use super::*;
    use crate::pins::MAPS;

    // ANCHOR: layout_test
    /// The C structs, as libbpf-cargo generated them from the object's BTF, have the Rust
    /// layout: the same size and every field at the same offset.
    #[test]
    fn c_key_and_values_have_the_rust_layout() {
        type C = sock_ops::types::sock_key;
        assert_eq!(size_of::<C>(), size_of::<SockKey>());
        assert_eq!(offset_of!(C, netns), offset_of!(SockKey, netns));
        assert_eq!(offset_of!(C, local_ip), offset_of!(SockKey, local_ip));
        assert_eq!(offset_of!(C, remote_ip), offset_of!(SockKey, remote_ip));
        assert_eq!(offset_of!(C, local_port), offset_of!(SockKey, local_port));
        assert_eq!(offset_of!(C, remote_port), offset_of!(SockKey, remote_port));
        assert_eq!(offset_of!(C, family), offset_of!(SockKey, family));
        assert_eq!(offset_of!(C, pad), offset_of!(SockKey, pad));
        type P = sock_ops::types::sock_policy;
        assert_eq!(size_of::<P>(), size_of::<SockPolicy>());
        assert_eq!(offset_of!(P, flags), offset_of!(SockPolicy, flags));
        assert_eq!(offset_of!(P, generation), offset_of!(SockPolicy, generation));
        assert_eq!(offset_of!(P, http_rule), offset_of!(SockPolicy, http_rule));
        assert_eq!(offset_of!(P, http_state), offset_of!(SockPolicy, http_state));
        assert_eq!(size_of::<sk_msg::types::sock_key>(), size_of::<SockKey>());
        type U = sk_msg::types::unread;
        assert_eq!(size_of::<U>(), size_of::<Unread>());
        assert_eq!(offset_of!(U, redirected), offset_of!(Unread, redirected));
        assert_eq!(offset_of!(U, read), offset_of!(Unread, read));
        type F = sk_msg::types::flow_control;
        assert_eq!(size_of::<F>(), size_of::<FlowControl>());
        assert_eq!(offset_of!(F, budget), offset_of!(FlowControl, budget));
        assert_eq!(offset_of!(F, reads_counted), offset_of!(FlowControl, reads_counted));
        assert_eq!(offset_of!(F, pressure_budget), offset_of!(FlowControl, pressure_budget));
        assert_eq!(offset_of!(F, pressure_watched), offset_of!(FlowControl, pressure_watched));
        assert_eq!(offset_of!(F, pressure_at), offset_of!(FlowControl, pressure_at));
    }

    /// The counters the C programs move sit in the Rust slots of the same name.
    #[test]
    fn c_counters_are_the_rust_counters() {
        use sock_ops::types::counter as C;
        let c = [
            (C::COUNTER_SOCKETS_INSERTED, Counter::SocketsInserted),
            (C::COUNTER_INSERT_FAILED, Counter::InsertFailed),
            (C::COUNTER_MSG_REDIRECTED, Counter::MsgRedirected),
            (C::COUNTER_MSG_PASSED, Counter::MsgPassed),
            (C::COUNTER_LOOPBACK_SKIPPED, Counter::LoopbackSkipped),
            (C::COUNTER_HALF_CLOSE_DETACHED, Counter::HalfCloseDetached),
            (C::COUNTER_RCVLOWAT_TCP, Counter::RcvlowatTcp),
            (C::COUNTER_FLOW_FALLBACK, Counter::FlowFallback),
            (C::COUNTER_PRESSURE_FALLBACK, Counter::PressureFallback),
        ];
        for (c, rust) in c {
            assert_eq!(c.0, rust as u32, "{rust:?}");
        }
        assert_eq!(C::COUNTER_SLOTS.0, COUNTER_SLOTS);
    }

    /// Every map either object declares is one of the agent's, with the same type, key and
    /// value sizes and capacity (opening parses the object; nothing reaches the kernel). The
    /// agent's maps are mesh-ebpf's (checked at every install): pinned ones against the table
    /// in pins.rs, SIDECAR_ALIASES (not pinned) here.
    #[test]
    fn c_maps_are_the_agents_maps() {
        let aliases = crate::pins::MapSpec {
            name: "SIDECAR_ALIASES",
            map_type: aya::maps::MapType::LruHash,
            key_size: size_of::<SockKey>() as u32,
            value_size: size_of::<SockKey>() as u32,
            max_entries: mesh_common::MAX_SOCKETS,
        };
        let mut checked = 0;
        let mut s1 = MaybeUninit::uninit();
        let mut s2 = MaybeUninit::uninit();
        let mut a = SockOpsSkelBuilder::default().open(&mut s1).expect("open sock_ops object");
        let mut b = SkMsgSkelBuilder::default().open(&mut s2).expect("open sk_msg object");
        for object in [a.open_object_mut(), b.open_object_mut()] {
            for map in object.maps() {
                let name = map.name().to_string_lossy().into_owned();
                let spec = MAPS
                    .iter()
                    .chain([&aliases])
                    .find(|m| m.name == name)
                    .unwrap_or_else(|| panic!("{name} is not the agent's"));
                assert_eq!(map.map_type() as u32, spec.map_type as u32, "{name}: type");
                assert_eq!(map.key_size(), spec.key_size, "{name}: key size");
                assert_eq!(map.value_size(), spec.value_size, "{name}: value size");
                assert_eq!(map.max_entries(), spec.max_entries, "{name}: capacity");
                checked += 1;
            }
        }
        assert_eq!(checked, 9 + 9, "both objects declare the nine maps of the redirect");
    }
    // ANCHOR_END: layout_test

    #[test]
    fn verifier_log_is_cut_from_libbpfs_output() {
        let out = "libbpf: prog 'x': BPF program load failed: Permission denied\n\
                   libbpf: prog 'x': -- BEGIN PROG LOAD LOG --\n0: R1=ctx\nunknown func bpf_get_netns_cookie#122\n\
                   -- END PROG LOAD LOG --\nlibbpf: failed to load object\n";
        let log = verifier_log(out);
        assert!(log.starts_with("-- BEGIN PROG LOAD LOG --"), "{log}");
        assert!(log.contains("get_netns_cookie") && log.ends_with("-- END PROG LOAD LOG --"), "{log}");
    }
}
