//! The seed corpus: the repository's study files, the hand-written studies in
//! `fuzz/corpus/study_parser/`, and real frames encoded with the production codec
//! ([`sample_frames`], written to `fuzz/corpus/rpc_frame/` by `write-frame-seeds`);
//! and the regressions, inputs that once crashed a target (`fuzz/regressions/`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lem_common::rpc::{
    CampaignStatus, CompleteReply, CompleteRequest, CompleteStatus, CoordinatorRequest,
    CoordinatorResponse, FailRequest, LeaseGrant, LeaseReply, LeaseRequest, RegisterRequest,
    RenewRequest, RpcError, RpcErrorKind, SlotInfo, SubmitReply, SubmitRequest,
};
use lem_common::types::{
    CampaignId, EnergyFigures, EngineCapability, FailureClass, FencingToken, HarnessFacts,
    MeasuredWindow, RunKey, RunResult, Throughput, WorkerId,
};
use lem_wire::frame;
use tarpc::{ClientMessage, Request, Response};

use crate::bounded::Seed;

/// The repository root, from this crate's place in it (`fuzz/fuzzing`).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .unwrap_or(manifest_dir)
        .to_path_buf()
}

/// The directories whose files seed the `study_parser` target.
pub const STUDY_SEED_DIRS: &[&str] = &["examples", "tests/fixtures", "fuzz/corpus/study_parser"];

/// The directory of the `rpc_frame` target's seeds.
pub const FRAME_SEED_DIR: &str = "fuzz/corpus/rpc_frame";

/// Inputs that once crashed or hung a target; they run with the seeds, and need
/// only not panic.
pub const STUDY_REGRESSION_DIR: &str = "fuzz/regressions/study_parser";
pub const FRAME_REGRESSION_DIR: &str = "fuzz/regressions/rpc_frame";

/// Every file of `dirs` (relative to `root`), sorted by path; an unreadable
/// directory is an error naming it.
pub fn read_dirs(root: &Path, dirs: &[&str]) -> Result<Vec<Seed>, String> {
    let mut seeds = Vec::new();
    for d in dirs {
        let dir = root.join(d);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("cannot read seed directory {}: {e}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for p in paths {
            let bytes =
                std::fs::read(&p).map_err(|e| format!("cannot read seed {}: {e}", p.display()))?;
            seeds.push(Seed {
                name: format!(
                    "{d}/{}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
                bytes,
            });
        }
    }
    Ok(seeds)
}

/// Real traffic, one stream per message kind: each request a client sends and each
/// response the coordinator sends, encoded by the production transport.
pub fn sample_frames() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (name, message) in sample_requests() {
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + Duration::from_secs(10);
        let m = ClientMessage::Request(Request {
            context: ctx,
            id: 1,
            message,
        });
        let bytes = frame::encode_requests(vec![m]).expect("a sample request encodes");
        seeds.push(Seed {
            name: format!("request-{name}.bin"),
            bytes,
        });
    }
    for (name, message) in sample_responses() {
        let bytes = frame::encode_responses(vec![Response {
            request_id: 1,
            message: Ok(message),
        }])
        .expect("a sample response encodes");
        seeds.push(Seed {
            name: format!("response-{name}.bin"),
            bytes,
        });
    }
    let cancel = ClientMessage::Cancel {
        trace_context: tarpc::trace::Context::default(),
        request_id: 1,
    };
    seeds.push(Seed {
        name: "client-cancel.bin".into(),
        bytes: frame::encode_requests(vec![cancel]).expect("a cancel encodes"),
    });
    seeds
}

fn worker() -> WorkerId {
    WorkerId("host-a/0".into())
}

fn run_key() -> RunKey {
    RunKey {
        campaign: CampaignId(3),
        seq: 7,
    }
}

fn sample_requests() -> Vec<(&'static str, CoordinatorRequest)> {
    vec![
        (
            "register",
            CoordinatorRequest::Register {
                req: RegisterRequest {
                    worker: worker(),
                    host: "host-a".into(),
                    protocol_version: 1,
                    worker_version: "0.1.0".into(),
                    slots: vec![SlotInfo {
                        index: 0,
                        gpu_name: "NVIDIA H100 80GB HBM3".into(),
                        simulated: false,
                        gpus: vec![0],
                        dynamic: false,
                    }],
                    engines: vec![EngineCapability {
                        engine: "vllm".into(),
                        available: false,
                        reason: Some("python module vllm is not installed".into()),
                        version: None,
                    }],
                    runtime: lem_common::runner::WorkerRuntime::docker(
                        "lem-fleet/harness:latest",
                        "sha256:cb4ca8307279d3afd7df95c793753d7c826af1e08aa9438029ae1f924d75affe",
                    ),
                },
            },
        ),
        (
            "lease",
            CoordinatorRequest::Lease {
                req: LeaseRequest {
                    worker: worker(),
                    slot: 0,
                    wait_ms: 30_000,
                    warm: vec![("synthetic".into(), "synthetic/tiny".into())],
                    gpus: 1,
                    max_gpus: 0,
                    telemetry: vec![],
                },
            },
        ),
        (
            "renew",
            CoordinatorRequest::Renew {
                req: RenewRequest {
                    worker: worker(),
                    run: run_key(),
                    token: FencingToken(11),
                    telemetry: vec![],
                },
            },
        ),
        (
            "complete",
            CoordinatorRequest::Complete {
                req: CompleteRequest {
                    worker: worker(),
                    run: run_key(),
                    token: FencingToken(11),
                    result: RunResult {
                        engine: "synthetic".into(),
                        energy: EnergyFigures {
                            total_j: 123.456,
                            adjusted_j: Some(100.5),
                            ..Default::default()
                        },
                        throughput: Throughput {
                            output_tokens: 64,
                            ..Default::default()
                        },
                        window: MeasuredWindow {
                            duration_s: 2.5,
                            ..Default::default()
                        },
                        harness: HarnessFacts {
                            metrics: serde_json::json!({"ttft_ms": [1.5, 2.0], "nested": {"k": null}}),
                            ..Default::default()
                        },
                        ..RunResult::default()
                    },
                },
            },
        ),
        (
            "fail",
            CoordinatorRequest::Fail {
                req: FailRequest {
                    worker: worker(),
                    run: run_key(),
                    token: FencingToken(11),
                    class: FailureClass::Configuration,
                    message: "CUDA out of memory".into(),
                },
            },
        ),
        (
            "submit",
            CoordinatorRequest::Submit {
                req: SubmitRequest {
                    path: "study.yaml".into(),
                    text:
                        "task: {model: m}\nsweep:\n  synthetic.engine_params.batch_size: [1, 2]\n"
                            .into(),
                    base: Some(("base.yaml".into(), "engine: synthetic\n".into())),
                    force_cold_start: false,
                },
            },
        ),
        ("campaigns", CoordinatorRequest::Campaigns {}),
        (
            "status",
            CoordinatorRequest::Status {
                campaign: CampaignId(3),
            },
        ),
        (
            "runs",
            CoordinatorRequest::Runs {
                campaign: CampaignId(3),
            },
        ),
        (
            "cancel",
            CoordinatorRequest::Cancel {
                campaign: CampaignId(3),
            },
        ),
        (
            "retry",
            CoordinatorRequest::Retry {
                campaign: CampaignId(3),
            },
        ),
        ("workers", CoordinatorRequest::Workers {}),
    ]
}

fn sample_responses() -> Vec<(&'static str, CoordinatorResponse)> {
    let grant = LeaseGrant {
        run: run_key(),
        token: FencingToken(11),
        ttl_ms: 30_000,
        attempt: 1,
        engine: "synthetic".into(),
        config_hash: "0123456789abcdef".into(),
        cycle: 2,
        config_json: "{\"engine\": \"synthetic\"}".into(),
        gap_before_s: 1.5,
        study_name: Some("s".into()),
        tp_size: 1,
        experiment_timeout_s: 600.0,
        stdout_silence_timeout_s: 300.0,
        force_cold_start: false,
    };
    vec![
        (
            "lease",
            CoordinatorResponse::Lease(Ok(LeaseReply::Granted(Box::new(grant)))),
        ),
        (
            "complete",
            CoordinatorResponse::Complete(Ok(CompleteReply {
                status: CompleteStatus::Duplicate,
                detail: Some("stale token 10".into()),
            })),
        ),
        (
            "submit",
            CoordinatorResponse::Submit(Ok(SubmitReply {
                campaign: CampaignId(3),
                n_runs: 12,
                n_configs: 6,
                n_skipped: 1,
                warnings: vec!["w".into()],
            })),
        ),
        (
            "status",
            CoordinatorResponse::Status(Ok(CampaignStatus {
                campaign: 3,
                total: 12,
                pending: 4,
                ..CampaignStatus::default()
            })),
        ),
        (
            "error",
            CoordinatorResponse::Renew(Err(RpcError::new(
                RpcErrorKind::LeaseLost,
                "run 3-0008: token 10 is stale (current 11)",
            ))),
        ),
    ]
}
