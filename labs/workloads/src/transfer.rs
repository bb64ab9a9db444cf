//! Byte-exact transfers, for checking what the mesh's flow records say against what the
//! application counted. A connection: the client writes an 8-byte hello (how many bytes it wants
//! back, big-endian) and then its payload, and half-closes; the server reads to the end, answers
//! with that many bytes and closes. Each side counts every byte it wrote and read.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerArgs {
    #[arg(long, default_value = "[::]:7300")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// Payload bytes to send on each connection (after the 8-byte hello).
    #[arg(long, default_value_t = 1_000_000)]
    pub send: u64,
    /// Bytes to ask the server for on each connection.
    #[arg(long, default_value_t = 100_000)]
    pub receive: u64,
    /// Connections, one after another.
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// Print a JSON report instead of a line per connection.
    #[arg(long)]
    pub json: bool,
}

/// One connection as the client counted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The client's port: which flow records are this connection's.
    pub local_port: u16,
    /// Every byte written (hello included) and read.
    pub sent: u64,
    pub received: u64,
}

/// Accepts connections forever, one thread each.
pub fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    for conn in listener.incoming() {
        let conn = conn.context("accept")?;
        thread::spawn(move || {
            let _ = answer(conn);
        });
    }
    Ok(())
}

fn answer(mut conn: TcpStream) -> std::io::Result<()> {
    let mut hello = [0u8; 8];
    conn.read_exact(&mut hello)?;
    let mut buf = vec![0u8; 64 * 1024];
    while conn.read(&mut buf)? > 0 {}
    write_n(&mut conn, u64::from_be_bytes(hello), &buf)?;
    conn.shutdown(Shutdown::Write)?;
    // Until the client closes too: the close then is the client's, like a request/response
    // protocol's.
    while conn.read(&mut buf)? > 0 {}
    Ok(())
}

fn write_n(conn: &mut TcpStream, n: u64, buf: &[u8]) -> std::io::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        conn.write_all(&buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

/// One connection: hello, payload, half-close, read the answer to its end.
pub fn transfer(to: SocketAddr, send: u64, receive: u64) -> anyhow::Result<Transfer> {
    let mut conn =
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).with_context(|| format!("connect {to}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let local_port = conn.local_addr()?.port();
    conn.write_all(&receive.to_be_bytes()).context("write hello")?;
    let buf = vec![b'x'; 64 * 1024];
    write_n(&mut conn, send, &buf).context("write payload")?;
    conn.shutdown(Shutdown::Write).context("shutdown")?;
    let mut received = 0u64;
    let mut rbuf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut rbuf).context("read answer")? {
            0 => break,
            n => received += n as u64,
        }
    }
    anyhow::ensure!(received == receive, "{to}: asked for {receive} bytes, got {received}");
    Ok(Transfer { local_port, sent: send + 8, received })
}

pub fn run(args: &ClientArgs) -> anyhow::Result<()> {
    let mut done = Vec::new();
    for _ in 0..args.connections {
        done.push(transfer(args.connect, args.send, args.receive)?);
    }
    if args.json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        for t in &done {
            println!("port {}: sent {} bytes, received {}", t.local_port, t.sent, t.received);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_count_every_byte() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for c in listener.incoming() {
                let _ = answer(c.unwrap());
            }
        });
        let t = transfer(addr, 200_000, 70_001).unwrap();
        assert_eq!((t.sent, t.received), (200_008, 70_001));
        let empty = transfer(addr, 0, 0).unwrap();
        assert_eq!((empty.sent, empty.received), (8, 0));
    }
}
