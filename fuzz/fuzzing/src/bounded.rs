//! The bounded pass: the seed corpus, then a fixed number of seeded mutants, through a
//! target, each input under `catch_unwind`. CI runs it in `cargo test` on stable; a
//! failure carries everything needed to replay the input.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::mutate::{Mutator, Shape, MAX_MUTANT_BYTES};

/// The seed the pass uses unless `LEM_FUZZ_SEED` says otherwise.
pub const DEFAULT_SEED: u64 = 0x1e3f_2026;
/// Mutants per target unless `LEM_FUZZ_INPUTS` says otherwise.
pub const DEFAULT_INPUTS: usize = 10_000;
/// Mutants that got further than the first error are kept to mutate again, up to this many.
const POOL_LIMIT: usize = 512;

/// How many inputs, from which seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub seed: u64,
    pub inputs: usize,
}

impl Budget {
    /// `LEM_FUZZ_SEED` (decimal or 0x-hex) and `LEM_FUZZ_INPUTS`, else the defaults.
    pub fn from_env() -> Result<Budget, String> {
        let seed = match std::env::var("LEM_FUZZ_SEED") {
            Ok(s) => parse_u64(&s).ok_or_else(|| {
                format!("LEM_FUZZ_SEED={s:?} is not a number (use decimal or 0x-prefixed hex)")
            })?,
            Err(_) => DEFAULT_SEED,
        };
        let inputs = match std::env::var("LEM_FUZZ_INPUTS") {
            Ok(s) => s.trim().parse::<usize>().map_err(|_| {
                format!("LEM_FUZZ_INPUTS={s:?} is not a count of inputs (e.g. 10000)")
            })?,
            Err(_) => DEFAULT_INPUTS,
        };
        Ok(Budget { seed, inputs })
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// One input of the corpus, with where it came from.
#[derive(Clone, Debug)]
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What a finished pass saw.
#[derive(Clone, Debug)]
pub struct Report<O> {
    pub target: &'static str,
    pub budget: Budget,
    /// Outcome of each seed, in corpus order.
    pub seed_outcomes: Vec<(String, O)>,
    /// How many mutants came to each outcome, and the time they took.
    pub mutant_outcomes: BTreeMap<O, usize>,
    pub mutant_time: BTreeMap<O, Duration>,
    pub elapsed: Duration,
    /// The slowest input: its length, its time and its label.
    pub slowest: (usize, Duration, String),
    pub largest_input: usize,
}

impl<O: fmt::Debug> fmt::Display for Report<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.seed_outcomes.len() + self.budget.inputs;
        let per_s = n as f64 / self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{}: {} seeds + {} mutants (seed {:#x}) in {:.2} s, {:.0} inputs/s; mutants: {:?}; time: {:?}; slowest: {} ({} bytes, {:.1} ms); largest: {} bytes",
            self.target,
            self.seed_outcomes.len(),
            self.budget.inputs,
            self.budget.seed,
            self.elapsed.as_secs_f64(),
            per_s,
            self.mutant_outcomes,
            self.mutant_time,
            self.slowest.2,
            self.slowest.0,
            self.slowest.1.as_secs_f64() * 1e3,
            self.largest_input,
        )
    }
}

/// An input that made the target panic.
#[derive(Clone, Debug)]
pub struct Failure {
    pub target: &'static str,
    pub budget: Budget,
    /// `seed:NAME` or `mutant:INDEX`.
    pub label: String,
    pub panic: String,
    pub input: Vec<u8>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fuzz target {} panicked on {} (LEM_FUZZ_SEED={:#x} LEM_FUZZ_INPUTS={} replays it): {}",
            self.target, self.label, self.budget.seed, self.budget.inputs, self.panic
        )?;
        const SHOWN: usize = 1024;
        let shown = &self.input[..self.input.len().min(SHOWN)];
        let more = if self.input.len() > SHOWN {
            format!(" (first {SHOWN} of {} bytes)", self.input.len())
        } else {
            format!(" ({} bytes)", self.input.len())
        };
        writeln!(
            f,
            "input as text{more}: {:?}",
            String::from_utf8_lossy(shown)
        )?;
        write!(f, "input as hex{more}: {}", hex(shown))
    }
}

/// Lowercase hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Runs `seeds`, then `budget.inputs` mutants of them (and of mutants that reached an
/// outcome `keep` accepts), through `target`, stopping at the first panic.
pub fn run<O: Copy + Ord + fmt::Debug>(
    name: &'static str,
    target: fn(&[u8]) -> O,
    shape: Shape,
    seeds: &[Seed],
    budget: Budget,
    keep: impl Fn(O) -> bool,
) -> Result<Report<O>, Box<Failure>> {
    let started = Instant::now();
    let mut report = Report {
        target: name,
        budget,
        seed_outcomes: Vec::new(),
        mutant_outcomes: BTreeMap::new(),
        mutant_time: BTreeMap::new(),
        elapsed: Duration::ZERO,
        slowest: (0, Duration::ZERO, String::new()),
        largest_input: 0,
    };
    // An abort (a stack overflow, memory exhausted) or a hang gives no report;
    // LEM_FUZZ_TRACE=DIR names each input before it runs and keeps it in
    // DIR/TARGET-last.bin, so the last one is the culprit.
    let trace = std::env::var_os("LEM_FUZZ_TRACE").map(std::path::PathBuf::from);
    let call = |label: String, input: &[u8], report: &mut Report<O>| {
        if let Some(dir) = &trace {
            eprintln!("{name}: {label} ({} bytes)", input.len());
            let _ = std::fs::write(dir.join(format!("{name}-last.bin")), input);
        }
        let t0 = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(|| target(input)));
        let took = t0.elapsed();
        if took > report.slowest.1 {
            report.slowest = (input.len(), took, label.clone());
        }
        report.largest_input = report.largest_input.max(input.len());
        result.map_err(|payload| {
            Box::new(Failure {
                target: name,
                budget,
                label,
                panic: panic_text(payload.as_ref()),
                input: input.to_vec(),
            })
        })
    };
    let mut pool: Vec<Vec<u8>> = Vec::new();
    for s in seeds {
        let o = call(format!("seed:{}", s.name), &s.bytes, &mut report)?;
        report.seed_outcomes.push((s.name.clone(), o));
        pool.push(s.bytes.clone());
    }
    let n_seeds = pool.len();
    let mut mutator = Mutator::new(shape, budget.seed);
    for i in 0..budget.inputs {
        let input = if pool.is_empty() || mutator.rng().one_in(50) {
            mutator.generate()
        } else {
            let base = mutator.rng().below(pool.len());
            let base = pool[base].clone();
            mutator.mutate(&base, &pool)
        };
        let t0 = Instant::now();
        let o = call(format!("mutant:{i}"), &input, &mut report)?;
        *report.mutant_outcomes.entry(o).or_insert(0) += 1;
        *report.mutant_time.entry(o).or_default() += t0.elapsed();
        if keep(o) && input.len() <= MAX_MUTANT_BYTES {
            if pool.len() < n_seeds + POOL_LIMIT {
                pool.push(input);
            } else {
                let slot = n_seeds + mutator.rng().below(POOL_LIMIT);
                pool[slot] = input;
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touchy(data: &[u8]) -> bool {
        assert!(!data.windows(2).any(|w| w == b"!!"), "found two bangs");
        data.is_empty()
    }

    #[test]
    fn a_panic_is_reported_with_the_input_and_how_to_replay_it() {
        let seeds = vec![Seed {
            name: "plain".into(),
            bytes: b"a: 1\n".to_vec(),
        }];
        let budget = Budget {
            seed: 3,
            inputs: 5_000,
        };
        let f = run("touchy", touchy, Shape::Study, &seeds, budget, |_| true)
            .expect_err("a YAML mutator inserts tags such as !!str");
        assert_eq!(f.target, "touchy");
        assert!(f.label.starts_with("mutant:"), "{}", f.label);
        assert!(f.panic.contains("found two bangs"), "{}", f.panic);
        let text = f.to_string();
        assert!(text.contains("LEM_FUZZ_SEED=0x3"), "{text}");
        assert!(
            text.contains(&hex(&f.input[..f.input.len().min(16)])),
            "{text}"
        );
    }

    #[test]
    fn seeds_run_first_and_count_separately() {
        let seeds = vec![Seed {
            name: "empty".into(),
            bytes: Vec::new(),
        }];
        let budget = Budget {
            seed: 1,
            inputs: 20,
        };
        let r = run("t", |d| d.len(), Shape::Frames, &seeds, budget, |_| false).unwrap();
        assert_eq!(r.seed_outcomes, vec![("empty".to_string(), 0)]);
        assert_eq!(r.mutant_outcomes.values().sum::<usize>(), 20);
    }

    #[test]
    fn budget_env_values_are_checked() {
        assert_eq!(parse_u64("0x10"), Some(16));
        assert_eq!(parse_u64("42"), Some(42));
        assert_eq!(parse_u64("ten"), None);
    }
}
