//! lem fleet's fuzz targets, and the seeded mutator and bounded pass that drive them
//! without libFuzzer.
//!
//! Two targets take bytes from the outside world: [`study_parser`] (a study file, as
//! `lem-coord` and the coordinator's `submit` read it) and [`rpc_frame`] (bytes off a
//! socket, as the coordinator's and a worker's transports decode them). Each is the
//! production code path with no IO around it. The cargo-fuzz binaries in
//! `fuzz/fuzz_targets/` are one-line wrappers over them; [`bounded`] runs the same
//! functions over the seed corpus and seeded mutations ([`mutate`]) in `cargo test`,
//! on stable, catching a panic per input.
//!
//! A target panics when the code under test panics, and also when an invariant
//! breaks: every study error names the file it is about, and every decoded message
//! encodes and decodes back to itself.

pub mod bounded;
pub mod mutate;
pub mod seeds;

use lem_common::study::{self, PlanOptions, StudyError, StudySource};
use lem_wire::frame;

/// The run limit [`study_parser`] plans under (`plan_within`'s): a larger grid or run
/// list is refused before it is built, as `lem-coord` refuses one past its limit;
/// this one keeps an input's cost small.
pub const FUZZ_MAX_RUNS: usize = 1_000;

/// How far a study input got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StudyOutcome {
    /// Not UTF-8: `lem-coord` cannot read it as text, and the wire carries a `String`.
    NotUtf8,
    /// Refused while reading the YAML.
    YamlError,
    /// Read, then refused as a study (unknown key, bad sweep, nothing valid, ...).
    StudyError,
    /// Its grid or run list is larger than [`FUZZ_MAX_RUNS`].
    TooLarge,
    /// Planned into at least one run.
    Planned,
}

/// Plans `data` as a study file exactly as the coordinator does, as `study.yaml` and
/// then as `study.json`, with `base:` resolving to the same text, under
/// [`FUZZ_MAX_RUNS`]. Returns how far the YAML reading got.
pub fn study_parser(data: &[u8]) -> StudyOutcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return StudyOutcome::NotUtf8;
    };
    let outcome = plan_text(text, "study.yaml", &PlanOptions::default());
    plan_text(text, "study.json", &PlanOptions::default());
    outcome
}

fn plan_text(text: &str, file: &str, opts: &PlanOptions) -> StudyOutcome {
    let src = StudySource {
        path: file.to_string(),
        text: text.to_string(),
        base: Some((format!("base-{file}"), text.to_string())),
    };
    match study::plan_within(&src, opts, FUZZ_MAX_RUNS) {
        Ok(plan) => {
            assert!(
                !plan.runs.is_empty() && plan.runs.len() <= FUZZ_MAX_RUNS,
                "a plan holds {} runs, outside 1..={FUZZ_MAX_RUNS}",
                plan.runs.len()
            );
            let _ = plan.to_oracle_json();
            StudyOutcome::Planned
        }
        Err(e) => study_error(&e, &src),
    }
}

/// Checks that the error names the study or its base file, and classifies it.
fn study_error(e: &StudyError, src: &StudySource) -> StudyOutcome {
    let message = e.to_string();
    let base_path = src.base.as_ref().map(|(p, _)| p.as_str()).unwrap_or("");
    assert!(
        message.starts_with(&src.path) || message.starts_with(base_path),
        "a study error does not start with the file it is about: {message:?}"
    );
    match e {
        StudyError::Yaml(_) | StudyError::Json { .. } => StudyOutcome::YamlError,
        StudyError::GridTooLarge { .. } | StudyError::TooManyRuns { .. } => StudyOutcome::TooLarge,
        _ => StudyOutcome::StudyError,
    }
}

/// How far a frame input got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameOutcome {
    /// No complete frame: the transport saw the stream end.
    NoMessage,
    /// Refused: a bad length, a frame over the limit, a cut-off frame or JSON that is
    /// not a message.
    Refused,
    /// At least one request or response decoded.
    Decoded,
}

/// Decodes `data` as the bytes a peer sent, both as the coordinator reads requests
/// and as a client reads responses; every decoded message must encode and decode
/// back to the same message.
pub fn rpc_frame(data: &[u8]) -> FrameOutcome {
    let requests = frame::decode_requests(data);
    let responses = frame::decode_responses(data);
    let mut decoded = false;
    let mut refused = false;
    for r in requests {
        match r {
            Ok(m) => {
                decoded = true;
                let first = request_json(&m);
                let bytes = frame::encode_requests(vec![m]).expect("a decoded request encodes");
                let again = single(frame::decode_requests(&bytes), &bytes);
                assert_eq!(
                    first,
                    request_json(&again),
                    "a request changed on its way round"
                );
            }
            Err(_) => refused = true,
        }
    }
    for r in responses {
        match r {
            Ok(m) => {
                decoded = true;
                let first = serde_json::to_value(&m).expect("a response serializes");
                let bytes = frame::encode_responses(vec![m]).expect("a decoded response encodes");
                let again = single(frame::decode_responses(&bytes), &bytes);
                assert_eq!(
                    first,
                    serde_json::to_value(&again).expect("a response serializes"),
                    "a response changed on its way round"
                );
            }
            Err(_) => refused = true,
        }
    }
    if decoded {
        FrameOutcome::Decoded
    } else if refused {
        FrameOutcome::Refused
    } else {
        FrameOutcome::NoMessage
    }
}

fn single<T>(mut decoded: Vec<std::io::Result<T>>, bytes: &[u8]) -> T {
    assert_eq!(
        decoded.len(),
        1,
        "one encoded message decoded as {} ({bytes:?})",
        decoded.len()
    );
    match decoded.remove(0) {
        Ok(m) => m,
        Err(e) => panic!("an encoded message does not decode: {e} ({bytes:?})"),
    }
}

/// A request as JSON without its deadline, which the wire carries relative to now.
fn request_json(
    m: &tarpc::ClientMessage<lem_common::rpc::CoordinatorRequest>,
) -> serde_json::Value {
    let mut v = serde_json::to_value(m).expect("a request serializes");
    if let Some(ctx) = v
        .pointer_mut("/Request/context")
        .and_then(|c| c.as_object_mut())
    {
        ctx.remove("deadline");
    }
    v
}
