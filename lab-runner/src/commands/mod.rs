//! One module per subcommand; each has a `run` returning the process exit code.
mod clean;
mod list;
mod scenario;

use crate::{
    cli::{Cli, Command},
    exit,
};

pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Scenario(a) => scenario::run(a),
        Command::List(a) => list::run(&a),
        Command::Clean(a) => clean::run(&a),
        Command::Workload(w) => match w.run() {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("workload: {e:#}");
                exit::BACKEND
            }
        },
    }
}
