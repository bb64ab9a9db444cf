//! Denial events: the kernel writes one `mesh_common::Denial` per denied connection, datagram,
//! packet or message into the `DENIALS` ring buffer; the running agent drains it and prints each
//! as a JSON line (`{"denial": {...}}`), with the pods an identity stands for when it knows them.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{Map, MapData, RingBuf};
use mesh_common::{AF_INET, Denial, Hook, IPPROTO_TCP, IPPROTO_UDP, WORLD_IDENTITY};
use serde::{Deserialize, Serialize};

use crate::MeshError;

/// One denial as user space shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialRecord {
    /// Where it was denied: connect, sendmsg, ingress or message.
    pub hook: String,
    pub protocol: String,
    pub from: Identity,
    pub to: Identity,
    /// The source address, when the hook knows it (not at connect).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub port: u32,
}

/// An identity number and who has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    pub pods: Vec<String>,
}

impl DenialRecord {
    /// `members`: identity -> pod names (from the applied policy); `world` is named as such.
    pub fn new(d: &Denial, members: &BTreeMap<u32, Vec<String>>) -> DenialRecord {
        let who = |id: u32| Identity {
            id,
            pods: if id == WORLD_IDENTITY {
                vec!["world".to_owned()]
            } else {
                members.get(&id).cloned().unwrap_or_default()
            },
        };
        let protocol = match d.protocol {
            IPPROTO_TCP => "tcp".to_owned(),
            IPPROTO_UDP => "udp".to_owned(),
            p => format!("ip proto {p}"),
        };
        DenialRecord {
            hook: Hook::name(d.hook).to_owned(),
            protocol,
            from: who(d.from),
            to: who(d.to),
            src: (d.src != [0; 4]).then(|| ip(d.family, d.src)),
            dst: ip(d.family, d.dst),
            port: d.port,
        }
    }
}

/// Words in network byte order, IPv4 in word 0.
fn ip(family: u32, w: [u32; 4]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(w[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (i, word) in w.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

/// Words in network byte order, IPv4 in word 0 (as the kernel's records hold them).
pub(crate) fn ip_of(family: u32, w: [u32; 4]) -> IpAddr {
    ip(family, w)
}

/// The reading end of a ring buffer of `T` records (`DENIALS`, `FLOW_EVENTS`).
pub struct Events<T> {
    ring: RingBuf<MapData>,
    _records: std::marker::PhantomData<T>,
}

/// The reading end of `DENIALS`.
pub type Denials = Events<Denial>;

impl<T: aya::Pod> Events<T> {
    pub fn new(map: Map, name: &'static str) -> Result<Events<T>, MeshError> {
        let ring = RingBuf::try_from(map).map_err(|source| MeshError::Map { map: name, source })?;
        Ok(Events { ring, _records: std::marker::PhantomData })
    }

    /// The ring buffer's descriptor: readable when events wait.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.ring)
    }

    /// Every event waiting, oldest first.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<T>() {
                // SAFETY: the kernel wrote a whole T (a Pod: any bytes are a valid value) at
                // the start of the item.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_pods_world_and_addresses() {
        let members = BTreeMap::from([(256, vec!["frontend".to_owned()])]);
        let d = Denial {
            hook: Hook::INGRESS,
            protocol: IPPROTO_TCP,
            from: WORLD_IDENTITY,
            to: 256,
            family: AF_INET,
            port: 7000,
            src: [u32::from_ne_bytes([10, 77, 0, 1]), 0, 0, 0],
            dst: [u32::from_ne_bytes([10, 77, 0, 10]), 0, 0, 0],
        };
        let r = DenialRecord::new(&d, &members);
        assert_eq!(r.hook, "ingress");
        assert_eq!(r.from.pods, ["world"]);
        assert_eq!(r.to.pods, ["frontend"]);
        assert_eq!(r.src, Some("10.77.0.1".parse().unwrap()));
        assert_eq!(r.dst, "10.77.0.10".parse::<IpAddr>().unwrap());
        let fd77 = u32::from_ne_bytes([0xfd, 0x77, 0, 0]);
        let v6 =
            Denial { family: mesh_common::AF_INET6, src: [0; 4], dst: [fd77, 0, 0, 12_u32.to_be()], ..d };
        let r6 = DenialRecord::new(&v6, &members);
        assert_eq!(r6.src, None);
        assert_eq!(r6.dst.to_string(), "fd77::c");
    }
}
