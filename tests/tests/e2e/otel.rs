//! OpenTelemetry traces with real processes: a coordinator and a worker export over
//! OTLP/HTTP to a receiver in this test (the collector's protocol, decoded with the
//! opentelemetry-proto definitions), and one run's spans come back as one trace:
//! the worker's lease call, the coordinator's handling of it, the run and its
//! phases, the report and the coordinator's handling of that, each with the right
//! parent. The run's result names that trace.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lem_tests::{run, wait_for, Proc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

use crate::{campaign_id, results_jsonl, start_coordinator_env, status_json, COORD, WORKER};

/// A span as received: its service, name, ids and parent.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace: String,
    span: String,
    parent: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serves OTLP/HTTP's `POST /v1/traces` (protobuf) on loopback, keeping every span.
fn receiver() -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || serve(conn, &keep));
        }
    });
    (format!("http://{addr}"), got)
}

/// One connection: requests until the peer closes (the exporter keeps it alive).
fn serve(conn: std::net::TcpStream, keep: &Mutex<Vec<Got>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if path == "/v1/traces" {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(req) => {
                    keep.lock().unwrap().extend(spans_of(&req));
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        } else {
            "404 Not Found"
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn spans_of(req: &ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(Got {
                    service: service.clone(),
                    name: s.name.clone(),
                    trace: hex(&s.trace_id),
                    span: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                });
            }
        }
    }
    out
}

fn write_study(dir: &Path) -> String {
    let path = dir.join("traced.yaml");
    std::fs::write(
        &path,
        "study_name: traced\ntask:\n  model: synthetic/traced\n  dataset:\n    n_prompts: 2\n  max_input_tokens: 16\n  max_output_tokens: 4\nengine: synthetic\nserving_mode: offline\nmeasurement:\n  baseline:\n    duration_seconds: 5\noffline:\n  warmup:\n    enabled: false\nsynthetic:\n  engine_params:\n    load_seconds: 0.2\n    decode_ms_per_step: 20.0\nsweep:\n  synthetic.engine_params.batch_size: [1]\nstudy_execution:\n  n_cycles: 1\n",
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_runs_spans_reach_an_otlp_receiver_as_one_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (endpoint, got) = receiver();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export every 200 ms instead of every 5 s (the stop flushes the rest).
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let (mut coord, addr) = start_coordinator_env(dir, &env);
    let wdir = dir.join("w1");
    let mut worker = Proc::spawn_with_env(
        "w1",
        WORKER,
        &[
            "--coordinator",
            &addr,
            "--data-dir",
            wdir.to_str().unwrap(),
            "--simulate-gpu",
            "--name",
            "w1",
            "--prefill-window-seconds",
            "0.5",
        ],
        &env,
        dir,
    );
    let study = write_study(dir);
    let out = run(COORD, &["submit", &study, "--coordinator", &addr]);
    assert!(
        out.status.success(),
        "{}",
        lem_tests::describe(&["submit"], &out)
    );
    let id = campaign_id(&out.stdout);
    wait_for(
        "the run to finish",
        Duration::from_secs(120),
        &[&coord, &worker],
        || status_json(&addr, &id).filter(|s| s["done"].as_u64() == Some(1)),
    );
    let rows = results_jsonl(&id, &["--coordinator", &addr]);
    assert_eq!(rows.len(), 1);
    let trace = rows[0]["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace_id in the result: {}", rows[0]))
        .to_string();
    assert_eq!(trace.len(), 32, "{trace}");
    assert!(trace.chars().all(|c| c.is_ascii_hexdigit()) && trace != "0".repeat(32));

    // Stopping flushes what each process still holds.
    worker.signal(libc::SIGTERM);
    assert!(worker.wait_exit(Duration::from_secs(60)).is_some());
    coord.signal(libc::SIGTERM);
    assert!(coord.wait_exit(Duration::from_secs(60)).is_some());

    let spans: Vec<Got> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace == trace)
        .cloned()
        .collect();
    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.span.as_str(), s)).collect();
    let describe = || {
        spans
            .iter()
            .map(|s| {
                let parent = by_id
                    .get(s.parent.as_str())
                    .map_or("-", |p| p.name.as_str());
                format!("{}:{} (parent {parent})", s.service, s.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let one = |service: &str, name: &str| -> &Got {
        let found: Vec<&Got> = spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{service}:{name} in the trace:\n{}",
            describe()
        );
        found[0]
    };
    let parent_of = |s: &Got| by_id.get(s.parent.as_str()).copied();

    // The worker: lease (the trace's root) > run > its phases.
    let lease = one("lem-worker", "lease");
    assert!(
        lease.parent.chars().all(|c| c == '0') || lease.parent.is_empty(),
        "{}",
        describe()
    );
    let run_span = one("lem-worker", "run");
    assert_eq!(run_span.parent, lease.span, "{}", describe());
    for phase in ["gate", "dispatch", "collect", "report"] {
        assert_eq!(
            one("lem-worker", phase).parent,
            run_span.span,
            "{phase}:\n{}",
            describe()
        );
    }
    // The idle baselines (the device's, before the run; the resident harness's).
    let baselines: Vec<&Got> = spans.iter().filter(|s| s.name == "baseline").collect();
    assert!(!baselines.is_empty(), "{}", describe());
    assert!(
        baselines.iter().all(|b| b.parent == run_span.span),
        "{}",
        describe()
    );
    let dispatch = one("lem-worker", "dispatch");
    for phase in ["load", "window", "prefill_window"] {
        assert_eq!(
            one("lem-worker", phase).parent,
            dispatch.span,
            "{phase}:\n{}",
            describe()
        );
    }

    // The coordinator's spans hang under the worker's calls, through tarpc's
    // client span: its handling of the lease call, and of the report's `complete`.
    for (method, under) in [("lease", "lease"), ("complete", "report")] {
        let handled = one("lem-coord", &format!("Coordinator/{method}"));
        let server = parent_of(handled).unwrap_or_else(|| {
            panic!(
                "{method} on the coordinator has no parent here:\n{}",
                describe()
            )
        });
        assert_eq!(
            (server.service.as_str(), server.name.as_str()),
            ("lem-coord", "RPC"),
            "{}",
            describe()
        );
        let call = format!("Coordinator.{method}");
        let client = parent_of(server).unwrap_or_else(|| {
            panic!("{method}'s server span has no parent here:\n{}", describe())
        });
        assert_eq!(
            (client.service.as_str(), client.name.as_str()),
            ("lem-worker", call.as_str()),
            "{}",
            describe()
        );
        let caller = parent_of(client).map(|p| p.name.as_str());
        assert_eq!(caller, Some(under), "{method}:\n{}", describe());
    }
}
