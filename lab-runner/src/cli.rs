//! The command line: one `Command` variant per subcommand module.
use clap::{Parser, Subcommand, ValueEnum};

use crate::exit;

#[derive(Debug, Parser)]
#[command(
    name = "lab-runner",
    version,
    about = "Sidecarless Lab: run eBPF service-mesh scenarios on real kernels",
    after_help = exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario step by step and check what the kernel did.
    Scenario(ScenarioArgs),
    /// List the scenarios.
    List(ListArgs),
    /// Remove what earlier labs left behind (namespaces, cgroups, pins, processes).
    Clean(CleanArgs),
    /// Run a workload (used inside pods).
    #[command(hide = true, subcommand)]
    Workload(workloads::Workload),
}

/// Where the scenario's kernel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// The running kernel, in a sandbox of namespaces and cgroups (needs root).
    Host,
}

#[derive(Debug, clap::Args)]
pub struct ScenarioArgs {
    /// Scenario name (see `lab-runner list`).
    pub name: String,
    /// Where to run it.
    #[arg(long, value_enum, default_value_t = Backend::Host)]
    pub backend: Backend,
    /// Measured round trips per latency run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub round_trips: u64,
    /// Request and response size in bytes.
    #[arg(long, default_value_t = 64, value_parser = parse_size)]
    pub size: usize,
    /// Print the outcome as one JSON object on stdout instead of the step-by-step view.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a size in bytes between 1 and 1048576, got {s:?}"
        )),
    }
}
