//! A byte-stream echo server: whatever a client sends comes back, one thread per connection.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use anyhow::Context as _;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// Address to listen on (`[::]` accepts IPv4 and IPv6).
    #[arg(long, default_value = "[::]:7001")]
    pub listen: SocketAddr,
}

/// Accepts connections forever, echoing each on its own thread.
pub fn serve(args: &Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    for conn in listener.incoming() {
        let conn = conn.context("accept")?;
        thread::spawn(move || echo(conn));
    }
    Ok(())
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
