//! `workload`: the lab's workloads as a standalone binary (for VMs and for poking around).
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Sidecarless Lab workloads")]
struct Cli {
    #[command(subcommand)]
    workload: workloads::Workload,
}

fn main() -> anyhow::Result<()> {
    Cli::parse().workload.run()
}
