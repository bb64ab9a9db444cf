//! What lab pods run. Each workload is a subcommand of [`Workload`], so the same code runs as the
//! standalone `workload` binary, inside `lab-runner` (re-executed into a pod), or in a VM.
pub mod conform;
pub mod connect_rate;
pub mod cpu;
pub mod echo;
pub mod http;
pub mod isolation;
pub mod lb_probe;
pub mod load;
pub mod proxy;
pub mod rr;
pub mod stream;
pub mod transfer;

use clap::Subcommand;

/// A workload and its arguments.
#[derive(Debug, Clone, Subcommand, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Benchmark server: ping-pong at the size each connection's hello asks for, or a sink.
    RrServer(rr::ServerArgs),
    /// Request/response latency client: ping-pong over TCP, HDR histogram of round trips.
    Rr(rr::ClientArgs),
    /// Bulk throughput client: streams into `rr-server` for a fixed time.
    Stream(stream::Args),
    /// Connection-rate client: connect + request + response + close, one after another.
    ConnectRate(connect_rate::Args),
    /// Which backend each new connection to a service reaches, and what getpeername() says.
    LbProbe(lb_probe::Args),
    /// Steady request/response traffic for a fixed time, counting failures and stalls.
    Load(load::Args),
    /// Byte-stream echo server.
    Echo(echo::Args),
    /// TCP conformance server: the server side of every `conform` case.
    ConformServer(conform::ServerArgs),
    /// TCP conformance client: runs the named cases and prints both ends' transcripts.
    Conform(conform::ClientArgs),
    /// The same loopback 4-tuple in several pods at once; counts bytes that crossed pods.
    LoopbackIsolation(isolation::Args),
    /// L4 sidecar proxy (tokio): transparent outbound/inbound listeners or fixed routes.
    Proxy(proxy::Args),
    /// HTTP/1.1 server: 200 OK to every request, naming itself and the request.
    HttpServer(http::ServerArgs),
    /// HTTP/1.1 requests over one connection (one per write, split, or pipelined): what each got.
    HttpProbe(http::ProbeArgs),
    /// HTTP/1.1 request/response latency on one keep-alive connection (reported like `rr`).
    HttpRr(http::RrArgs),
    /// Byte-exact transfer server: reads to the end, answers with the bytes the hello asked for.
    TransferServer(transfer::ServerArgs),
    /// Byte-exact transfers, one connection after another: what each side wrote and read.
    Transfer(transfer::ClientArgs),
}

impl Workload {
    /// Runs the workload to completion (servers run until killed).
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Workload::RrServer(a) => rr::serve(&a),
            Workload::Rr(a) => {
                let report = rr::run_client(&a)?;
                if a.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!("{report}");
                }
                Ok(())
            }
            Workload::Stream(a) => print_report(&stream::run(&a)?, a.json),
            Workload::ConnectRate(a) => print_report(&connect_rate::run(&a)?, a.json),
            Workload::LbProbe(a) => print_report(&lb_probe::run(&a)?, a.json),
            Workload::Load(a) => print_report(&load::run(&a)?, true),
            Workload::Echo(a) => echo::serve(&a),
            Workload::HttpServer(a) => http::serve(&a),
            Workload::HttpProbe(a) => print_report(&http::probe(&a)?, a.json),
            Workload::HttpRr(a) => print_report(&http::rr(&a)?, a.json),
            Workload::ConformServer(a) => conform::serve(&a),
            Workload::LoopbackIsolation(a) => {
                println!("{}", serde_json::to_string(&isolation::run(&a)?)?);
                Ok(())
            }
            Workload::Conform(a) if a.list => {
                println!("{}", conform::CASES.join("\n"));
                Ok(())
            }
            Workload::Conform(a) => {
                if let Some(path) = &a.report {
                    let report = conform::hold(&a)?;
                    std::fs::write(path, serde_json::to_string(&report)?)?;
                    return Ok(());
                }
                let report = conform::run_client(&a)?;
                if a.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
            Workload::Proxy(a) => proxy::serve(&a),
            Workload::TransferServer(a) => transfer::serve(&a),
            Workload::Transfer(a) => transfer::run(&a),
        }
    }
}

impl Workload {
    /// The command line that runs this workload (after the program): its subcommand and one
    /// `--flag value` per argument set, from the same struct clap parses it back into (the
    /// round-trip test holds the two to each other). Callers build the typed arguments, never
    /// the strings.
    pub fn argv(&self) -> Vec<String> {
        let v = serde_json::to_value(self).expect("workload arguments serialize");
        let (name, fields) = v.as_object().and_then(|o| o.iter().next()).expect("one variant");
        let mut out = vec![name.clone()];
        for (flag, value) in fields.as_object().into_iter().flatten() {
            let values = match value {
                serde_json::Value::Array(a) => a.clone(),
                v => vec![v.clone()],
            };
            for v in values {
                match v {
                    serde_json::Value::Null | serde_json::Value::Bool(false) => {}
                    serde_json::Value::Bool(true) => out.push(format!("--{flag}")),
                    serde_json::Value::String(s) => out.extend([format!("--{flag}"), s]),
                    v => out.extend([format!("--{flag}"), v.to_string()]),
                }
            }
        }
        out
    }
}

/// `A` as its command line leaves it when only the `required` flags are given: every other
/// field at clap's default. The start of typed arguments (`rr::ClientArgs { round_trips: 10,
/// ..defaults(&[("connect", addr)]) }`).
pub fn defaults<A: clap::Args + clap::FromArgMatches>(required: &[(&str, String)]) -> A {
    let cmd = A::augment_args(clap::Command::new("workload"));
    let argv = std::iter::once("workload".to_owned())
        .chain(required.iter().flat_map(|(k, v)| [format!("--{k}"), v.clone()]));
    let m = cmd.try_get_matches_from(argv).unwrap_or_else(|e| panic!("{e}"));
    A::from_arg_matches(&m).unwrap_or_else(|e| panic!("{e}"))
}

/// Prints a report as one JSON object, or as pretty JSON for a person.
fn print_report<T: serde::Serialize>(report: &T, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        workload: Workload,
    }

    /// Every workload's typed arguments survive the trip through `argv()` and clap.
    #[test]
    fn argv_parses_back_into_the_same_arguments() {
        let addr = || ("connect", "10.77.0.11:7000".to_owned());
        let listen = || ("listen", "[::]:7000".to_owned());
        let mut probe: http::ProbeArgs = defaults(&[addr(), ("request", "GET /".into())]);
        probe.requests.push("POST /api".into());
        probe.mode = http::Mode::SplitHeaders;
        let mut conform: conform::ClientArgs = defaults(&[addr()]);
        conform.cases = vec!["half-close".into(), "epoll".into()];
        conform.hold_until = Some("/tmp/x".into());
        conform.report = Some("/tmp/x.json".into());
        let mut rr: rr::ClientArgs = defaults(&[addr()]);
        (rr.round_trips, rr.request_size, rr.json, rr.no_nodelay) = (10, 4096, true, true);
        let mut until: lb_probe::Args = defaults(&[addr()]);
        (until.until_backends, until.within_ms) = (Some(2), Some(500));
        let mut proxy: proxy::Args = defaults(&[]);
        proxy.route = vec![(7000, "10.77.0.11:7001".parse().unwrap())];
        proxy.outbound = Some(15001);
        let all = [
            Workload::RrServer(defaults(&[listen()])),
            Workload::Rr(rr),
            Workload::Stream(defaults(&[addr()])),
            Workload::ConnectRate(defaults(&[addr()])),
            Workload::LbProbe(defaults(&[addr()])),
            Workload::LbProbe(until),
            Workload::Load(defaults(&[addr()])),
            Workload::Echo(defaults(&[listen()])),
            Workload::ConformServer(defaults(&[listen()])),
            Workload::Conform(conform),
            Workload::LoopbackIsolation(defaults(&[("netns", "/run/netns/a,/run/netns/b".into())])),
            Workload::Proxy(proxy),
            Workload::HttpServer(defaults(&[listen()])),
            Workload::HttpProbe(probe),
            Workload::HttpRr(defaults(&[addr()])),
            Workload::TransferServer(defaults(&[listen()])),
            Workload::Transfer(defaults(&[addr()])),
        ];
        for w in all {
            let argv = w.argv();
            let back = Cli::try_parse_from(std::iter::once("workload".to_owned()).chain(argv.clone()))
                .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(format!("{:?}", back.workload), format!("{w:?}"), "{argv:?}");
        }
    }
}
