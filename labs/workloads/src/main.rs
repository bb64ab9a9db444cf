//! `workload`: the lab's workloads as a standalone binary (for VMs and for poking around).
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Sidecarless Lab workloads")]
struct Cli {
    #[command(subcommand)]
    workload: workloads::Workload,
}

fn main() -> ExitCode {
    match Cli::parse().workload.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, with every cause: `hello to 10.77.0.11:7000: Out of memory (os error 12)`.
            // The lab quotes a failed command's first line (the matrix's cells); the cause must be on it.
            eprintln!("workload: {e:#}");
            ExitCode::FAILURE
        }
    }
}
