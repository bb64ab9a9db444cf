//! A bounded mutation fuzzer for what stands between a scenario file and the engine, run by
//! `cargo test`: every shipped scenario, mutated thousands of ways (bytes flipped, cut, repeated;
//! TOML tokens, huge numbers and odd characters spliced in; lines dropped or doubled), must pass
//! [`super::from_text`] (parse, checks, mesh files) or fail with a `file:line` error, never panic;
//! and what passes must meet what the engine takes for granted (no empty command line, no pod
//! name that is not a pod). Deterministic (a fixed seed), so a failure reproduces.
use super::spec::{Scenario, Step, WorkloadDef};

/// splitmix64: small, fast, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[steps]]",
    "[[pods]]",
    "[[steps.paths]]",
    "=",
    "{",
    "}",
    ",",
    ".",
    "\n",
    "#",
    "0",
    "-1",
    "65536",
    "4294967296",
    "18446744073709551616",
    "1e309",
    "nan",
    "inf",
    "true",
    "\"\"",
    "\u{0}",
    "é",
    "\u{202e}",
    "name = \"node\"",
    "do = \"bench\"",
    "paths = []",
    "measures = [\"x\"]",
    "port = 0",
    "repetitions = 0",
    "regex = '('",
    "metric = \".\"",
    "of = \"a.b.c\"",
    "factor = -0.0",
    "command = []",
    "kind = \"command\"",
    "workload = { kind = \"command\", port = 1, command = [] }",
    "file = \"nowhere.toml\"",
    "do = \"apply\"",
    "from = \"nobody\"",
    "pod = \"node\"",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut b: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                let at = at.min(b.len() - 1);
                b[at] ^= 1 << rng.below(8);
            }
            1 => {
                let end = (at + rng.below(40)).min(b.len());
                b.drain(at..end);
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            3 => {
                let end = (at + rng.below(60)).min(b.len());
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
            _ => {
                let lines: Vec<&[u8]> = b.split(|c| *c == b'\n').collect();
                let i = rng.below(lines.len());
                let mut out: Vec<u8> = Vec::new();
                for (j, l) in lines.iter().enumerate() {
                    let times = if j == i { rng.below(3) } else { 1 };
                    for _ in 0..times {
                        out.extend_from_slice(l);
                        out.push(b'\n');
                    }
                }
                b = out;
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// What the engine indexes without looking: a broken one here is a check missing in spec.rs.
fn engine_assumptions(sc: &Scenario) -> Result<(), String> {
    let pods: Vec<&str> = sc.pods.iter().map(|p| p.name.as_str()).collect();
    let pod = |p: &str| if pods.contains(&p) { Ok(()) } else { Err(format!("pod {p:?} reached the engine")) };
    for p in &sc.pods {
        if let Some(WorkloadDef::Command { command, .. }) = &p.workload
            && command.is_empty()
        {
            return Err(format!("pod {}: an empty command reached the engine", p.name));
        }
    }
    for step in &sc.steps {
        match step.get_ref() {
            Step::Bench(b) => {
                pod(&b.from)?;
                pod(&b.to)?;
                if b.tools.iter().any(|t| t.command.is_empty()) {
                    return Err("a bench tool with an empty command reached the engine".into());
                }
            }
            Step::Exec(x) => {
                pod(&x.pod)?;
                if x.command.is_empty() {
                    return Err("an exec step with an empty command reached the engine".into());
                }
            }
            Step::Conform(c) => {
                pod(&c.from)?;
                pod(&c.to)?;
            }
            Step::Transfer(t) => {
                pod(&t.from)?;
                pod(&t.to)?;
            }
            Step::Isolation(i) => i.pods.iter().try_for_each(|p| pod(p))?,
            Step::Balance(b) => pod(&b.from)?,
            Step::Http(h) => pod(&h.from)?,
            Step::Load(l) => pod(&l.from)?,
            Step::PolicyScale(p) => pod(&p.from)?,
            Step::ServiceScale(s) => pod(&s.from)?,
            Step::Apply(a) if super::mesh_file(&sc.mesh_files, &a.file).is_none() => {
                return Err(format!("apply {:?}: a mesh file nobody read reached the engine", a.file));
            }
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn mutated_scenarios_never_panic_between_the_file_and_the_engine() {
    let mut rng = Rng(0x5eed);
    let mut parsed = 0;
    let iterations = 3_000;
    for (file, text) in super::BUILTIN {
        for _ in 0..iterations {
            let input = mutate(text, &mut rng);
            let result = std::panic::catch_unwind(|| super::from_text(&input, file, None));
            match result {
                Ok(Ok(sc)) => {
                    parsed += 1;
                    if let Err(e) = engine_assumptions(&sc) {
                        panic!("{e}; the input:\n{input}");
                    }
                }
                Ok(Err(e)) => {
                    let e = e.to_string();
                    // Mesh file errors name the mesh file's own line.
                    assert!(
                        e.starts_with(&format!("{file}:")) || e.starts_with("scenarios/mesh/"),
                        "error without file:line: {e}"
                    );
                }
                Err(payload) => {
                    let why = payload.downcast_ref::<String>().map_or("", String::as_str);
                    panic!("the checks panicked on this input ({why}):\n{input}")
                }
            }
        }
    }
    // Some mutations are harmless (a comment changed): the fuzzer reaches past the first error.
    assert!(parsed > 0);
}

#[test]
fn the_assumptions_catch_what_the_checks_refuse() {
    // The oracle is not vacuous: an empty command line that skipped the checks is caught.
    let (file, text) = super::BUILTIN.iter().find(|(f, _)| f.ends_with("apps.toml")).unwrap();
    let mut sc = super::from_text(text, file, None).unwrap();
    engine_assumptions(&sc).unwrap();
    let command = sc
        .pods
        .iter_mut()
        .find_map(|p| match &mut p.workload {
            Some(WorkloadDef::Command { command, .. }) => Some(command),
            _ => None,
        })
        .unwrap();
    command.clear();
    assert!(engine_assumptions(&sc).is_err());
}
