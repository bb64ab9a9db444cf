//! A bounded mutation fuzzer for the scenario parser, run by `cargo test`: every shipped scenario,
//! mutated thousands of ways (bytes flipped, cut, repeated; TOML tokens, huge numbers and odd
//! characters spliced in; lines dropped or doubled), must parse or fail with an error, never panic.
//! Deterministic (a fixed seed), so a failure reproduces.
use super::spec::Scenario;

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

#[test]
fn mutated_scenarios_never_panic_the_parser() {
    let mut rng = Rng(0x5eed);
    let mut parsed = 0;
    let iterations = 3_000;
    for (file, text) in super::BUILTIN {
        for _ in 0..iterations {
            let input = mutate(text, &mut rng);
            let result = std::panic::catch_unwind(|| Scenario::parse(&input, file));
            match result {
                Ok(Ok(_)) => parsed += 1,
                Ok(Err(e)) => {
                    let e = e.to_string();
                    assert!(e.starts_with(&format!("{file}:")), "error without file:line: {e}");
                }
                Err(_) => panic!("the parser panicked on this input:\n{input}"),
            }
        }
    }
    // Some mutations are harmless (a comment changed): the fuzzer reaches past the first error.
    assert!(parsed > 0);
}
