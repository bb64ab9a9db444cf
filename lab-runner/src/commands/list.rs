//! `lab-runner list`
use lab_node::scenario::SCENARIOS;

use crate::{cli::ListArgs, exit};

pub fn run(args: &ListArgs) -> i32 {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(SCENARIOS).expect("serializable")
        );
    } else {
        for s in SCENARIOS {
            println!("{:<12} {}", s.name, s.summary);
        }
    }
    exit::OK
}
