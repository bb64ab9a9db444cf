//! A scenario's `[requires]`, checked against the running kernel. Anything missing becomes a
//! visible skip with the reason, never a silent pass.
use std::{fs, io::Read};

use mesh_agent::probe;

use super::spec::Requires;

/// The reasons the scenario cannot run here (empty: it can). `note` receives remarks, such as
/// a kernel config that cannot be read. A probe that could not ask the kernel at all is an
/// error, not a skip: it says nothing about the kernel.
pub fn unmet(r: &Requires, note: &mut dyn FnMut(String)) -> Result<Vec<String>, crate::LabError> {
    let failed = |stderr: String| crate::LabError::Command { command: "[requires] probe".into(), stderr };
    let mut missing = Vec::new();
    let release = lab_sandbox::preflight::kernel_release();
    if let Some(min) = &r.kernel
        && version(&release) < version(min)
    {
        missing.push(format!("kernel {release} is older than {min}"));
    }
    for p in &r.programs {
        match probe::program(p) {
            Some(Ok(true)) => {}
            Some(Ok(false)) => missing.push(format!("the kernel refuses {p} programs")),
            Some(Err(e)) => return Err(failed(e)),
            None => missing.push(format!("unknown program type {p:?} in [requires]")),
        }
    }
    for m in &r.maps {
        match probe::map(m) {
            Some(Ok(true)) => {}
            Some(Ok(false)) => missing.push(format!("the kernel has no {m} maps")),
            Some(Err(e)) => return Err(failed(e)),
            None => missing.push(format!("unknown map type {m:?} in [requires]")),
        }
    }
    if !r.config.is_empty() {
        match kernel_config(&release) {
            Some(cfg) => {
                for opt in &r.config {
                    let on = cfg.lines().any(|l| l == format!("{opt}=y") || l == format!("{opt}=m"));
                    if !on {
                        missing.push(format!("{opt} is not enabled in the kernel config"));
                    }
                }
            }
            None => note(format!(
                "kernel config not readable (/proc/config.gz, /boot/config-{release}): not checking {}",
                r.config.join(", ")
            )),
        }
    }
    for t in &r.tools {
        if lab_sandbox::process::tool(t).is_none() {
            missing.push(format!("{t} is not installed"));
        }
    }
    Ok(missing)
}

/// `6.12.117+deb13-cloud-amd64` -> (6, 12).
fn version(s: &str) -> (u32, u32) {
    let mut it =
        s.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn kernel_config(release: &str) -> Option<String> {
    if let Ok(raw) = fs::read("/proc/config.gz") {
        let mut s = String::new();
        if flate2::read::GzDecoder::new(raw.as_slice()).read_to_string(&mut s).is_ok() {
            return Some(s);
        }
    }
    fs::read_to_string(format!("/boot/config-{release}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version("6.12.117+deb13-cloud-amd64") > version("6.1"));
        assert!(version("5.10.0-32-cloud-amd64") < version("5.18"));
        assert_eq!(version("4.18"), (4, 18));
    }

    #[test]
    fn unknown_names_and_missing_tools_are_reported() {
        let r = Requires {
            programs: vec!["sock_opz".into()],
            tools: vec!["definitely-not-a-tool".into()],
            kernel: Some("99.0".into()),
            ..Requires::default()
        };
        let m = unmet(&r, &mut |_| {}).unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains("older than 99.0"));
        assert!(m[1].contains("unknown program type \"sock_opz\""));
        assert!(m[2].contains("definitely-not-a-tool is not installed"));
    }
}
