//! `lab-runner list`
use lab_scenario as scenario;

use crate::{cli::ListArgs, exit};

pub fn run(args: &ListArgs) -> i32 {
    let all = scenario::builtin();
    if args.json {
        let rows: Vec<_> = all
            .iter()
            .map(|(file, s)| serde_json::json!({ "name": s.name, "summary": s.summary, "file": file }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("serializable"));
    } else {
        for (_, s) in &all {
            println!("{:<18} {}", s.name, s.summary);
        }
    }
    exit::OK
}
