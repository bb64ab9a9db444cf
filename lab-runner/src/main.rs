//! lab-runner: the Sidecarless Lab command line. One module per subcommand under `commands/`.
mod cli;
mod commands;
mod exit;
mod report;
mod ui;
mod vmprep;

use clap::Parser as _;

fn main() {
    let cli = cli::Cli::parse();
    std::process::exit(commands::run(cli));
}
