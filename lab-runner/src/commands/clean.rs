//! `lab-runner clean`: removes leftovers of labs whose owner process is gone, and of a cluster
//! that is no longer up.
use lab_cluster::{Cluster, teardown};
use lab_sandbox::{clean, preflight};

use crate::{cli::CleanArgs, exit, ui};

pub fn run(args: &CleanArgs) -> i32 {
    if let Err(e) = preflight::check() {
        return ui::fail(&e);
    }
    let found = clean::leftovers();
    // A cluster that is up is not a leftover; one whose daemons are gone is.
    let cluster_up = Cluster::find().ok().flatten().is_some_and(|c| c.healthy());
    let cluster_found = if cluster_up { Vec::new() } else { teardown::leftovers() };
    let mut failed = 0;
    if !args.dry_run {
        for l in &found {
            if let Err(e) = clean::remove(l) {
                eprintln!("lab-runner: cannot remove {l}: {e}");
                failed += 1;
            }
        }
        if !cluster_found.is_empty()
            && let Err(e) = teardown::sweep(&Cluster::layout(), None, &mut |_| {})
        {
            eprintln!("lab-runner: cannot remove what a cluster left: {e}");
            failed += 1;
        }
    }
    let lines: Vec<String> =
        found.iter().map(ToString::to_string).chain(cluster_found.iter().map(ToString::to_string)).collect();
    if args.json {
        let mut all: Vec<serde_json::Value> =
            found.iter().map(|l| serde_json::to_value(l).expect("serializes")).collect();
        all.extend(cluster_found.iter().map(|l| serde_json::to_value(l).expect("serializes")));
        println!(
            "{}",
            serde_json::json!({ "removed": if args.dry_run { 0 } else { lines.len().saturating_sub(failed) }, "found": all })
        );
    } else if lines.is_empty() {
        println!("nothing to clean");
    } else {
        let verb = if args.dry_run { "would remove" } else { "removed" };
        for l in &lines {
            println!("{verb} {l}");
        }
    }
    if failed > 0 { exit::BACKEND } else { exit::OK }
}
