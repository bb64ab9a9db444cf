//! The `tcp:tcp_retransmit_skb` tracepoint program (`mesh_retransmit`, see the kernel side's
//! `trace.rs`): the field offsets read from tracefs into `TRACE_LAYOUT`, then the program
//! loaded against the pinned maps and attached. It is not pinned: it lives as long as the
//! [`Tracepoint`] the running agent holds, and each agent attaches its own.
use std::path::{Path, PathBuf};

use aya::{
    EbpfLoader,
    maps::{Array, MapData},
    programs::TracePoint,
};
use mesh_common::{TRACE_LAYOUT_MAP, TraceLayout};

use crate::{object, pins};

const CATEGORY: &str = "tcp";
const EVENT: &str = "tcp_retransmit_skb";
const PROGRAM: &str = "mesh_retransmit";

/// The attached program (detached when dropped).
pub struct Tracepoint {
    _ebpf: aya::Ebpf,
}

/// Where tracefs is mounted, if it is.
fn tracefs() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

// ANCHOR: layout
/// The offsets of the fields `mesh_retransmit` reads, from a tracepoint's `format` text.
pub fn layout(format: &str) -> Result<TraceLayout, String> {
    let offset = |field: &str| -> Result<u32, String> {
        format
            .lines()
            .find_map(|l| {
                let decl = l.trim().strip_prefix("field:")?.split(';').next()?;
                // `__u8 saddr[4]`, `__u16 sport`: the name is the last word, less any [..].
                let name = decl.rsplit(' ').next()?.split('[').next()?;
                if name != field {
                    return None;
                }
                l.split(';').find_map(|p| p.trim().strip_prefix("offset:")?.parse().ok())
            })
            .ok_or_else(|| format!("the tracepoint has no field `{field}` on this kernel"))
    };
    Ok(TraceLayout {
        sport: offset("sport")?,
        dport: offset("dport")?,
        saddr_v6: offset("saddr_v6")?,
        daddr_v6: offset("daddr_v6")?,
        // Only kernels whose tracepoint also fires for failed attempts have it.
        err: offset("err").unwrap_or(0),
        ready: 1,
    })
}
// ANCHOR_END: layout

/// Writes the layout into the pinned `TRACE_LAYOUT` and attaches the program; `Err` says why
/// it could not (no tracefs, a field missing, the kernel refused), in one line.
pub fn attach(pin_dir: &Path) -> Result<Tracepoint, String> {
    let fs = tracefs().ok_or("tracefs is not mounted (/sys/kernel/tracing)")?;
    let format_path = fs.join("events").join(CATEGORY).join(EVENT).join("format");
    let format =
        std::fs::read_to_string(&format_path).map_err(|e| format!("{}: {e}", format_path.display()))?;
    let layout = layout(&format)?;
    let dir = pins::layout_dir(pin_dir);
    // Every pinned map reused by path: nothing the datapath uses is created twice.
    let mut loader = EbpfLoader::new();
    for spec in pins::MAPS {
        loader.map_pin_path(spec.name, dir.join(spec.name));
    }
    let mut ebpf = loader.load(object::MESH_EBPF).map_err(|e| format!("cannot load the object: {e}"))?;
    let mut slot: Array<&mut MapData, TraceLayout> = ebpf
        .map_mut(TRACE_LAYOUT_MAP)
        .ok_or("no TRACE_LAYOUT map")?
        .try_into()
        .map_err(|e| format!("{TRACE_LAYOUT_MAP}: {e}"))?;
    slot.set(0, layout, 0).map_err(|e| format!("{TRACE_LAYOUT_MAP}: {e}"))?;
    let prog: &mut TracePoint = ebpf
        .program_mut(PROGRAM)
        .ok_or("no tracepoint program")?
        .try_into()
        .map_err(|e| format!("{PROGRAM}: {e}"))?;
    prog.load().map_err(|e| format!("{PROGRAM}: {}", crate::MeshError::program(PROGRAM, e)))?;
    prog.attach(CATEGORY, EVENT).map_err(|e| format!("{PROGRAM}: attach to {CATEGORY}:{EVENT}: {e}"))?;
    Ok(Tracepoint { _ebpf: ebpf })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_come_from_the_format_file() {
        // 6.18's format; 5.10's has no `family` (and no `err`): everything after `dport` sits
        // two bytes earlier there.
        let format = "name: tcp_retransmit_skb\nID: 2281\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
            \tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n\
            \tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n\
            \tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n\
            \tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;\n\
            \tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\
            \tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;\n\
            \tfield:int err;\toffset:76;\tsize:4;\tsigned:1;\n";
        let l = layout(format).unwrap();
        assert_eq!((l.sport, l.dport, l.saddr_v6, l.daddr_v6, l.err, l.ready), (28, 30, 42, 58, 76, 1));
        // Before `err` existed the tracepoint fired only for segments that left: nothing to skip.
        let without_err = format.lines().filter(|l| !l.contains(" err;")).collect::<Vec<_>>().join("\n");
        assert_eq!(layout(&without_err).unwrap().err, 0);
        let older = format.replace("saddr_v6", "saddr6");
        assert_eq!(layout(&older).unwrap_err(), "the tracepoint has no field `saddr_v6` on this kernel");
    }
}
