//! An L4 sidecar proxy, built to be a fair baseline: tokio, TCP_NODELAY on both legs, one
//! `copy_bidirectional` per connection (two 8 KiB buffers allocated once per connection, none
//! per request), as many worker threads as an Envoy sidecar's default concurrency (2).
//!
//! Listeners:
//! - `--outbound PORT`: connections captured by `iptables -t nat -A OUTPUT ... -j REDIRECT`; the
//!   upstream is the connection's original destination (`SO_ORIGINAL_DST`).
//! - `--inbound PORT`: connections captured by `PREROUTING ... REDIRECT`; the upstream is the
//!   local application, `127.0.0.1:<original port>`.
//! - `--route PORT=ADDR`: a fixed upstream (the per-node proxy, which sees DNAT'ed traffic).
use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
};

use anyhow::{Context as _, bail};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// Transparent outbound listener (upstream = SO_ORIGINAL_DST).
    #[arg(long)]
    pub outbound: Option<u16>,
    /// Transparent inbound listener (upstream = 127.0.0.1:<original port>).
    #[arg(long)]
    pub inbound: Option<u16>,
    /// Fixed route PORT=ADDR (repeatable).
    #[arg(long, value_parser = parse_route)]
    #[serde(serialize_with = "routes_as_flags")]
    pub route: Vec<(u16, SocketAddr)>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Each route as its flag takes it (`PORT=ADDR`).
fn routes_as_flags<S: serde::Serializer>(routes: &[(u16, SocketAddr)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(routes.iter().map(|(port, addr)| format!("{port}={addr}")))
}

fn parse_route(s: &str) -> Result<(u16, SocketAddr), String> {
    let (port, addr) = s.split_once('=').ok_or_else(|| format!("expected PORT=ADDR, got {s:?}"))?;
    Ok((
        port.parse().map_err(|e| format!("{port:?}: {e}"))?,
        addr.parse().map_err(|e| format!("{addr:?}: {e}"))?,
    ))
}

#[derive(Debug, Clone, Copy)]
enum Upstream {
    OriginalDst,
    Inbound,
    Fixed(SocketAddr),
}

pub fn serve(args: &Args) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    if let Some(p) = args.outbound {
        listeners.push((p, Upstream::OriginalDst));
    }
    if let Some(p) = args.inbound {
        listeners.push((p, Upstream::Inbound));
    }
    listeners.extend(args.route.iter().map(|(p, a)| (*p, Upstream::Fixed(*a))));
    if listeners.is_empty() {
        bail!("nothing to do: give --outbound, --inbound or --route");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for (port, up) in listeners {
            let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                .await
                .with_context(|| format!("bind port {port}"))?;
            tasks.push(tokio::spawn(accept_loop(l, up)));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}

async fn accept_loop(l: TcpListener, up: Upstream) -> anyhow::Result<()> {
    loop {
        let (conn, _) = l.accept().await?;
        tokio::spawn(async move {
            let _ = relay(conn, up).await;
        });
    }
}

// ANCHOR: relay
async fn relay(mut down: TcpStream, up: Upstream) -> io::Result<()> {
    let target = match up {
        Upstream::Fixed(a) => a,
        Upstream::OriginalDst => SocketAddr::V4(original_dst(&down)?),
        Upstream::Inbound => SocketAddr::from((Ipv4Addr::LOCALHOST, original_dst(&down)?.port())),
    };
    down.set_nodelay(true)?;
    let mut upstream = TcpStream::connect(target).await?;
    upstream.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut down, &mut upstream).await?;
    Ok(())
}
// ANCHOR_END: relay

/// The destination the client asked for before iptables NAT rewrote it (`SO_ORIGINAL_DST`).
fn original_dst(s: &TcpStream) -> io::Result<SocketAddrV4> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: getsockopt writes at most `len` bytes into the sockaddr_in we own.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &raw mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), u16::from_be(addr.sin_port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(
            parse_route("15001=10.77.0.11:7000").unwrap(),
            (15001, "10.77.0.11:7000".parse().unwrap())
        );
        assert!(parse_route("15001").is_err());
        assert!(parse_route("x=1.2.3.4:5").is_err());
    }

    #[test]
    fn relays_a_fixed_route() {
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = echo.accept().unwrap();
            let mut b = [0u8; 5];
            std::io::Read::read_exact(&mut c, &mut b).unwrap();
            std::io::Write::write_all(&mut c, &b).unwrap();
        });
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let args = Args { outbound: None, inbound: None, route: vec![(port, echo_addr)], threads: 1 };
        std::thread::spawn(move || serve(&args));
        let mut c = loop {
            if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                break c;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        std::io::Write::write_all(&mut c, b"hello").unwrap();
        let mut b = [0u8; 5];
        std::io::Read::read_exact(&mut c, &mut b).unwrap();
        assert_eq!(&b, b"hello");
    }
}
