//! The bounded fuzz pass CI runs: each target over its seed corpus, its regressions
//! and `LEM_FUZZ_INPUTS` (default 10,000) mutants from `LEM_FUZZ_SEED`, with no panic.
//!
//! `cargo test -p lem-fuzzing --test bounded -- --nocapture` prints inputs/s and what
//! the mutants came to.

use lem_fuzzing::bounded::{self, Budget, Seed};
use lem_fuzzing::mutate::Shape;
use lem_fuzzing::seeds::{self, repo_root};
use lem_fuzzing::{rpc_frame, study_parser, FrameOutcome, StudyOutcome};

fn budget() -> Budget {
    Budget::from_env().unwrap_or_else(|e| panic!("{e}"))
}

fn read(dirs: &[&str]) -> Vec<Seed> {
    seeds::read_dirs(&repo_root(), dirs).unwrap_or_else(|e| panic!("{e}"))
}

/// Writes a failing input where `cargo fuzz run TARGET FILE` can replay it.
fn save(f: &bounded::Failure) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let path = dir.join(format!(
        "{}-{:x}-{}.bin",
        f.target,
        f.budget.seed,
        f.label.replace([':', '/'], "-")
    ));
    let written = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, &f.input));
    match written {
        Ok(()) => format!("the input is in {}", path.display()),
        Err(e) => format!("(could not save the input to {}: {e})", path.display()),
    }
}

/// One target's pass: the corpus and the regressions, then the mutants. Every
/// corpus seed must come to `want`, and the mutants to each of `reached` at least
/// once (with 1,000 or more of them), or the pass tests less than it claims.
struct Pass<O> {
    name: &'static str,
    target: fn(&[u8]) -> O,
    shape: Shape,
    corpus: Vec<Seed>,
    regressions: Vec<Seed>,
    want: O,
    reached: Vec<O>,
    /// What to do when a seed does not come to `want`.
    hint: &'static str,
}

impl<O: Copy + Ord + std::fmt::Debug> Pass<O> {
    fn run(self) {
        let mut inputs = self.corpus.clone();
        inputs.extend(self.regressions.iter().cloned());
        let want = self.want;
        let report = bounded::run(self.name, self.target, self.shape, &inputs, budget(), |o| {
            o == want
        })
        .unwrap_or_else(|f| panic!("{f}\n{}", save(&f)));
        println!("{report}");
        for (name, o) in &report.seed_outcomes {
            if self.corpus.iter().any(|s| &s.name == name) {
                assert_eq!(*o, want, "seed {name} came to {o:?}{}", self.hint);
            }
        }
        if report.budget.inputs < 1_000 {
            return;
        }
        for r in &self.reached {
            assert!(
                report.mutant_outcomes.get(r).copied().unwrap_or(0) > 0,
                "no mutant came to {r:?}: {report}"
            );
        }
    }
}

#[test]
fn study_parser_survives_seeded_mutations() {
    Pass {
        name: "study_parser",
        target: study_parser,
        shape: Shape::Study,
        corpus: read(seeds::STUDY_SEED_DIRS),
        regressions: read(&[seeds::STUDY_REGRESSION_DIR]),
        want: StudyOutcome::Planned,
        reached: vec![
            StudyOutcome::YamlError,
            StudyOutcome::StudyError,
            StudyOutcome::Planned,
        ],
        hint: "",
    }
    .run();
}

#[test]
fn rpc_frame_survives_seeded_mutations() {
    let mut corpus = seeds::sample_frames();
    corpus.extend(read(&[seeds::FRAME_SEED_DIR]));
    Pass {
        name: "rpc_frame",
        target: rpc_frame,
        shape: Shape::Frames,
        corpus,
        regressions: read(&[seeds::FRAME_REGRESSION_DIR]),
        want: FrameOutcome::Decoded,
        reached: vec![FrameOutcome::Refused, FrameOutcome::Decoded],
        hint: " (if a wire type changed, rerun `cargo run -p lem-fuzzing --bin write-frame-seeds`)",
    }
    .run();
}

#[test]
fn every_message_kind_has_a_committed_seed() {
    let committed = read(&[seeds::FRAME_SEED_DIR]);
    let names: Vec<&str> = committed
        .iter()
        .map(|s| s.name.rsplit('/').next().unwrap_or(""))
        .collect();
    for s in seeds::sample_frames() {
        assert!(
            names.contains(&s.name.as_str()),
            "{} has no seed {} (run `cargo run -p lem-fuzzing --bin write-frame-seeds`)",
            seeds::FRAME_SEED_DIR,
            s.name
        );
    }
}
