//! `lab-runner clean`: removes leftovers of labs whose owner process is gone.
use lab_sandbox::{clean, preflight};

use crate::{cli::CleanArgs, exit, ui};

pub fn run(args: &CleanArgs) -> i32 {
    if let Err(e) = preflight::check() {
        return ui::fail(&e);
    }
    let found = clean::leftovers();
    let mut failed = 0;
    for l in &found {
        if !args.dry_run
            && let Err(e) = clean::remove(l)
        {
            eprintln!("lab-runner: cannot remove {l}: {e}");
            failed += 1;
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "removed": if args.dry_run { 0 } else { found.len() - failed }, "found": found })
        );
    } else if found.is_empty() {
        println!("nothing to clean");
    } else {
        let verb = if args.dry_run { "would remove" } else { "removed" };
        for l in &found {
            println!("{verb} {l}");
        }
    }
    if failed > 0 { exit::BACKEND } else { exit::OK }
}
