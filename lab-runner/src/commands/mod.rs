//! One module per subcommand; each has a `run` returning the process exit code.
mod clean;
mod cluster;
mod down;
mod exec;
mod kernels;
mod list;
mod matrix;
mod scenario;
mod shell;
mod signals;
mod status;
mod up;

use crate::{
    cli::{Cli, Command},
    exit,
};

pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Scenario(a) => scenario::run(a),
        Command::List(a) => list::run(&a),
        Command::Up(a) => up::run(&a),
        Command::Status(a) => status::run(&a),
        Command::Exec(a) => exec::run(&a),
        Command::Shell => shell::run(),
        Command::Down => down::run(),
        Command::Matrix(a) => matrix::run(&a),
        Command::Kernels(c) => kernels::run(&c),
        Command::Clean(a) => clean::run(&a),
        Command::Cluster(c) => cluster::run(c),
        Command::Workload(w) => match w.run() {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("workload: {e:#}");
                exit::BACKEND
            }
        },
        Command::MeshAgent(c) => match mesh_agent::cli::run(c) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("mesh-agent: {e:#}");
                mesh_agent::cli::code(&e)
            }
        },
    }
}
