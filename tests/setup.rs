//! `scripts/setup.sh --plan`: the apt decision that a new machine meets first, proven without a new
//! machine. The fake `apt-get`, `apt-cache` and `dpkg-query` in tests/fixtures/apt/bin replay answers
//! recorded on a new machine of the project's kind (Debian 12 whose image ships qemu-utils
//! 1:10.0.2 from bookworm-backports, which breaks bookworm's qemu-system-x86 7.2); the variants below
//! are that recording with one answer changed.
use std::path::{Path, PathBuf};
use std::process::Output;

const RECORDED: &str = "qemu-utils-backport";
const BACKPORT: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";
const BOOKWORM: &str = "1:7.2+dfsg-7+deb12u18+b2";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A copy of the recorded answers, for a variant to change.
fn variant() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = root().join("tests/fixtures/apt").join(RECORDED);
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

fn plan(fixture: &Path) -> Output {
    let fakes = root().join("tests/fixtures/apt/bin");
    let path = format!("{}:{}", fakes.display(), std::env::var("PATH").unwrap_or_default());
    std::process::Command::new("bash")
        .arg(root().join("scripts/setup.sh"))
        .arg("--plan")
        .env("PATH", path)
        .env("APT_FIXTURE", fixture)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The plan of a variant that must be refused (exit 1): its stdout and stderr.
fn refused(fixture: &Path) -> (String, String) {
    let out = plan(fixture);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    (stdout, stderr)
}

#[test]
fn the_backported_qemu_utils_is_aligned_with_its_siblings() {
    let out = plan(&root().join("tests/fixtures/apt").join(RECORDED));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "plan failed:\n{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("install ") && lines[0].contains(" qemu-system-x86 "), "{stdout}");
    // qemu-utils goes to the version qemu-system-x86 is about to get: removed by nobody.
    assert_eq!(lines[1..], [format!("align qemu-utils {BOOKWORM} {BACKPORT}")], "{stdout}");
}

#[test]
fn a_removal_that_no_sibling_version_fixes_is_refused_with_the_command_to_run() {
    // Only the installed version of qemu-utils is known: nothing to align it to.
    let fixture = variant();
    std::fs::remove_file(fixture.path().join("madison-qemu-utils.txt")).unwrap();
    let (stdout, stderr) = refused(fixture.path());
    assert!(stdout.contains(&format!("refuse qemu-utils {BACKPORT}")), "{stdout}");
    assert!(!stdout.contains("align "), "{stdout}");
    assert!(stderr.contains("apt-get install --no-install-recommends iptables"), "{stderr}");
}

#[test]
fn a_package_of_another_source_is_never_aligned() {
    // Same version string, another source package: no sibling of qemu-utils.
    let fixture = variant();
    let installed = std::fs::read_to_string(fixture.path().join("installed")).unwrap();
    std::fs::write(
        fixture.path().join("installed"),
        installed.replace("qemu-utils qemu", "qemu-utils qemu-backport"),
    )
    .unwrap();
    let (stdout, _) = refused(fixture.path());
    assert!(stdout.contains(&format!("refuse qemu-utils {BACKPORT}")), "{stdout}");
}

#[test]
fn an_alignment_that_still_removes_is_refused() {
    // apt's answer to the aligned install still removes qemu-utils.
    let fixture = variant();
    std::fs::copy(fixture.path().join("sim.txt"), fixture.path().join("sim-aligned.txt")).unwrap();
    let (stdout, _) = refused(fixture.path());
    assert!(stdout.contains(&format!("refuse qemu-utils {BACKPORT}")), "{stdout}");
}

#[test]
fn an_alignment_that_downgrades_anything_else_is_refused() {
    let fixture = variant();
    let aligned = fixture.path().join("sim-aligned.txt");
    let mut sim = std::fs::read_to_string(&aligned).unwrap();
    sim.push_str("Inst libfdt1 [1.7.0-2] (1.6.1-4+b1 Debian:12.14/oldstable [amd64])\n");
    std::fs::write(&aligned, sim).unwrap();
    let (stdout, _) = refused(fixture.path());
    assert!(stdout.contains("refuse libfdt1 1.7.0-2 (apt would downgrade it)"), "{stdout}");
}

#[test]
fn nothing_missing_plans_nothing() {
    let fixture = variant();
    let everything: String = setup_packages().iter().map(|p| format!("{p} {p}\n")).collect();
    std::fs::write(fixture.path().join("installed"), everything).unwrap();
    let out = plan(fixture.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout, "nothing to install\n");
}

/// The apt packages scripts/setup.sh asks for, read from the script.
fn setup_packages() -> Vec<String> {
    let script = std::fs::read_to_string(root().join("scripts/setup.sh")).unwrap();
    let mut pkgs = Vec::new();
    let mut inside = false;
    for line in script.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("apt_pkgs=(").or_else(|| line.strip_prefix("apt_pkgs+=(")) {
            inside = true;
            pkgs.extend(rest.trim_end_matches(')').split_whitespace().map(str::to_owned));
        } else if inside {
            pkgs.extend(line.trim_end_matches(')').split_whitespace().map(str::to_owned));
        }
        if inside && line.ends_with(')') {
            inside = false;
        }
    }
    assert!(pkgs.contains(&"qemu-system-x86".to_owned()), "{pkgs:?}");
    pkgs
}

/// `scripts/setup.sh --deb-src`: the deb-src entries the Kubernetes build needs are the machine's
/// own apt entries retyped (deb822 stanzas and one-line `deb` lines alike); deb-src-only,
/// disabled and commented-out entries are not repeated.
#[test]
fn deb_src_entries_repeat_the_machine_s_own_apt_entries() {
    let etc = tempfile::tempdir().unwrap();
    std::fs::create_dir(etc.path().join("sources.list.d")).unwrap();
    std::fs::write(
        etc.path().join("sources.list.d/debian.sources"),
        "Types: deb\nURIs: http://one.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
         Types: deb-src\nURIs: http://two.invalid/debian\nSuites: bookworm\nComponents: main\n\n\
         Types: deb\nURIs: http://three.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n",
    )
    .unwrap();
    std::fs::write(
        etc.path().join("sources.list"),
        "deb [arch=amd64] http://four.invalid/debian bookworm main contrib\n# deb http://five.invalid/debian bookworm main\n",
    )
    .unwrap();
    let out = std::process::Command::new("bash")
        .arg(root().join("scripts/setup.sh"))
        .arg("--deb-src")
        .env("APT_ETC", etc.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let stanzas: Vec<&str> = stdout.split("\n\n").map(str::trim).filter(|s| !s.is_empty()).collect();
    assert_eq!(
        stanzas,
        [
            "Types: deb-src\nURIs: http://one.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg",
            "Types: deb-src\nURIs: http://four.invalid/debian\nSuites: bookworm\nComponents: main contrib",
        ],
        "{stdout}"
    );
}
