//! Security on the wire, with real processes: a coordinator listening on 0.0.0.0
//! (not loopback, so TLS is required) while every client dials 127.0.0.1.
//!
//! A campaign runs over mutual TLS end to end; then each stranger is refused:
//! plain TCP, TLS without a certificate, another CA's certificate, an expired or
//! forged join token, a worker speaking for another worker or sending a result for
//! another worker's lease. Study fields that look like shell reach the harness as
//! literal data. Garbage and slowloris connections get closed, and neither stops
//! service for a legitimate client nor grows the coordinator's memory without bound.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lem_common::rpc::{
    CoordinatorClient, FailRequest, LeaseRequest, RenewRequest, RpcError, RpcErrorKind,
};
use lem_common::types::{CampaignId, FailureClass, RunResult, WorkerId};
use lem_tests::{describe, run, wait_for, Proc};
use lem_wire::tls::{self, Credentials};
use lem_wire::transport::{self, Endpoint, Security};
use serde_json::Value;

use crate::{campaign_id, ctx, register_request, results_jsonl, rt, wait_for_addr, COORD, WORKER};

/// A coordinator on 0.0.0.0:0; returns it, its data dir and `127.0.0.1:PORT`.
fn start_tls_only_coordinator(dir: &Path, extra: &[&str]) -> (Proc, PathBuf, String) {
    let coord_dir = dir.join("coord");
    let mut args = vec![
        "start",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        coord_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let coord = Proc::spawn("coord", COORD, &args, dir);
    let bound = wait_for_addr(&coord, &coord_dir);
    let port = bound.rsplit(':').next().unwrap().to_string();
    (coord, coord_dir, format!("127.0.0.1:{port}"))
}

fn token(coord_dir: &Path, ttl: &str) -> String {
    let args = [
        "token",
        "create",
        "--data-dir",
        coord_dir.to_str().unwrap(),
        "--ttl",
        ttl,
    ];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `lem-worker join`; returns its output.
fn join(addr: &str, token: &str, data_dir: &Path, name: &str) -> std::process::Output {
    let args = [
        "join",
        "--coordinator",
        addr,
        "--token",
        token,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--name",
        name,
    ];
    run(WORKER, &args)
}

fn joined(addr: &str, token: &str, data_dir: &Path, name: &str) {
    let out = join(addr, token, data_dir, name);
    assert!(out.status.success(), "join {name}: {}", describe(&[], &out));
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// An in-test client speaking mutual TLS with the credential in `data_dir`.
async fn connect_as(addr: &str, data_dir: &Path) -> CoordinatorClient {
    let creds = Credentials::load(&data_dir.join(tls::CREDENTIALS_FILE)).unwrap();
    transport::connect(&Endpoint::with_credentials(addr, &creds).unwrap())
        .await
        .unwrap()
}

fn refused_kind<T: std::fmt::Debug>(
    r: Result<Result<T, RpcError>, tarpc::client::RpcError>,
) -> (RpcErrorKind, String) {
    match r {
        Ok(Err(e)) => (e.kind, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A study whose free-text fields look like shell: a command substitution, a
/// separator, backticks and a Docker flag.
fn injection_study(dir: &Path) -> (PathBuf, String, Vec<PathBuf>) {
    let marks: Vec<PathBuf> = ["pwned-dollar", "pwned-backtick", "pwned-name"]
        .iter()
        .map(|m| dir.join(m))
        .collect();
    let model = format!(
        "$(touch {}); rm -rf / --privileged `touch {}`",
        marks[0].display(),
        marks[1].display()
    );
    let text = format!(
        r#"study_name: "inj; --privileged $(touch {})"
task:
  model: "{model}"
  dataset:
    n_prompts: 2
  max_input_tokens: 16
  max_output_tokens: 4
engine: synthetic
serving_mode: offline
measurement:
  baseline:
    duration_seconds: 5
    strategy: cached
offline:
  warmup:
    enabled: false
synthetic:
  engine_params:
    load_seconds: 0.1
sweep:
  synthetic.engine_params.batch_size: [1, 2]
study_execution:
  n_cycles: 1
"#,
        marks[2].display()
    );
    let path = dir.join("injection.yaml");
    std::fs::write(&path, text).unwrap();
    (path, model, marks)
}

#[test]
fn mutual_tls_campaign_with_each_stranger_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, coord_dir, addr) = start_tls_only_coordinator(dir, &["--lease-ttl-secs", "30"]);
    let admin = ["--data-dir", coord_dir.to_str().unwrap()];
    let tls_dir = coord_dir.join("tls");
    for f in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "token.key",
        "admin.pem",
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(tls_dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is private: {mode:o}");
    }

    // Plain TCP to the TLS-only listener: refused with what to do instead.
    let args = ["status", "--coordinator", &addr];
    let out = run(COORD, &args);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&args, &out));
    assert!(
        stderr(&out).contains("requires TLS") && stderr(&out).contains("--credentials"),
        "{}",
        describe(&args, &out)
    );

    // Workers join with a token; credentials are private.
    let tok = token(&coord_dir, "10m");
    for name in ["w1", "w2", "probe-a", "probe-b"] {
        joined(&addr, &tok, &dir.join(name), name);
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("w1").join(tls::CREDENTIALS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The study goes in with the admin credential of the head node's data dir.
    let (study, model, marks) = injection_study(dir);
    let mut args = vec!["submit", study.to_str().unwrap(), "--coordinator", &addr];
    args.extend_from_slice(&admin);
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = campaign_id(&out.stdout);

    // Lease binding, before any real worker runs: probe-a takes a lease; probe-b,
    // over its own mutual-TLS connection, can neither speak for probe-a nor renew,
    // complete or fail probe-a's lease.
    rt().block_on(async {
        let a = connect_as(&addr, &dir.join("probe-a")).await;
        a.register(ctx(), register_request("probe-a"))
            .await
            .unwrap()
            .unwrap();
        let grant = a
            .lease(
                ctx(),
                LeaseRequest {
                    worker: WorkerId("probe-a".into()),
                    slot: 0,
                    wait_ms: 5_000,
                    warm: vec![],
                    gpus: 1,
                    max_gpus: 0,
                    telemetry: vec![],
                },
            )
            .await
            .unwrap()
            .unwrap()
            .into_grant()
            .expect("a pending run for probe-a");
        let b = connect_as(&addr, &dir.join("probe-b")).await;
        b.register(ctx(), register_request("probe-b"))
            .await
            .unwrap()
            .unwrap();
        // probe-b claiming to be probe-a: refused by identity.
        let renew_as_a = RenewRequest {
            worker: WorkerId("probe-a".into()),
            run: grant.run,
            token: grant.token,
            telemetry: vec![],
        };
        let (kind, msg) = refused_kind(b.renew(ctx(), renew_as_a.clone()).await);
        assert_eq!(kind, RpcErrorKind::PermissionDenied, "{msg}");
        assert!(
            msg.contains("worker probe-b") && msg.contains("probe-a"),
            "{msg}"
        );
        let complete = |worker: &str| lem_common::rpc::CompleteRequest {
            worker: WorkerId(worker.into()),
            run: grant.run,
            token: grant.token,
            result: RunResult::default(),
        };
        let (kind, msg) = refused_kind(b.complete(ctx(), complete("probe-a")).await);
        assert_eq!(kind, RpcErrorKind::PermissionDenied, "{msg}");
        // probe-b as itself, with probe-a's token: the lease is not its own.
        let renew_as_b = RenewRequest {
            worker: WorkerId("probe-b".into()),
            ..renew_as_a
        };
        let (kind, msg) = refused_kind(b.renew(ctx(), renew_as_b).await);
        assert_eq!(kind, RpcErrorKind::LeaseLost, "{msg}");
        let (kind, msg) = refused_kind(b.complete(ctx(), complete("probe-b")).await);
        assert_eq!(kind, RpcErrorKind::LeaseLost, "{msg}");
        assert!(msg.contains("never counted"), "{msg}");
        let fail = |worker: &str| FailRequest {
            worker: WorkerId(worker.into()),
            run: grant.run,
            token: grant.token,
            class: FailureClass::Configuration,
            message: "not mine to fail".into(),
        };
        let (kind, msg) = refused_kind(b.fail(ctx(), fail("probe-b")).await);
        assert_eq!(kind, RpcErrorKind::LeaseLost, "{msg}");
        // A worker certificate cannot make admin calls.
        let (kind, msg) = refused_kind(b.status(ctx(), CampaignId(1)).await);
        assert_eq!(kind, RpcErrorKind::PermissionDenied, "{msg}");
        // probe-a's lease is still its own: it renews, then gives the run back.
        a.renew(
            ctx(),
            RenewRequest {
                worker: WorkerId("probe-a".into()),
                run: grant.run,
                token: grant.token,
                telemetry: vec![],
            },
        )
        .await
        .unwrap()
        .unwrap();
        let mut back = fail("probe-a");
        back.class = FailureClass::Infrastructure;
        back.message = "probe hands the run back".into();
        a.fail(ctx(), back).await.unwrap().unwrap();

        // TLS without a client certificate may enrol and nothing else.
        let (parsed, _) = lem_common::token::JoinToken::parse(&tok).unwrap();
        let anon = transport::connect(&Endpoint {
            addr: addr.clone(),
            security: Security::Tls(tls::pinned_ca_config(parsed.ca_sha256)),
            credential: None,
        })
        .await
        .unwrap();
        let (kind, msg) = refused_kind(anon.status(ctx(), CampaignId(1)).await);
        assert_eq!(kind, RpcErrorKind::Unauthenticated, "{msg}");
        let (kind, msg) = refused_kind(anon.register(ctx(), register_request("w9")).await);
        assert_eq!(kind, RpcErrorKind::Unauthenticated, "{msg}");
        assert!(msg.contains("lem-worker join"), "{msg}");
    });

    // Real workers over mutual TLS finish the campaign.
    let workers: Vec<Proc> = ["w1", "w2"]
        .iter()
        .map(|name| {
            let wdir = dir.join(name);
            Proc::spawn(
                name,
                WORKER,
                &[
                    "--coordinator",
                    &addr,
                    "--data-dir",
                    wdir.to_str().unwrap(),
                    "--simulate-gpu",
                ],
                dir,
            )
        })
        .collect();
    let all: Vec<&Proc> = std::iter::once(&coord).chain(workers.iter()).collect();
    let status = wait_for(
        "the campaign to finish over mTLS",
        Duration::from_secs(300),
        &all,
        || {
            let mut args = vec!["status", &id, "--json", "--coordinator", &addr];
            args.extend_from_slice(&admin);
            let out = run(COORD, &args);
            let s: Value = serde_json::from_slice(&out.stdout).ok()?;
            (s["pending"] == 0 && s["running"] == 0).then_some(s)
        },
    );
    assert_eq!(status["done"], 2, "{status}");
    assert_eq!(status["failed"], 0, "{status}");
    assert_eq!(
        status["duplicates"], 1,
        "probe-b's refused result is recorded, not counted: {status}"
    );

    // The shell-looking fields were data: nothing ran, and they round-trip.
    for m in &marks {
        assert!(
            !m.exists(),
            "{} was created: a study field was executed",
            m.display()
        );
    }
    let mut connect = vec!["--coordinator", addr.as_str()];
    connect.extend_from_slice(&admin);
    let rows = results_jsonl(&id, &connect);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r["model_name"], model.as_str(), "{r}");
    }
    let harness_logs: String = ["w1", "w2"]
        .iter()
        .map(|w| {
            std::fs::read_to_string(dir.join(w).join("slot-0/harness.log")).unwrap_or_default()
        })
        .collect();
    assert!(
        harness_logs.contains(&format!("model '{model}'")),
        "the harness received the model name verbatim:\n{harness_logs}"
    );
    let mut args = vec!["workers", "--json", "--coordinator", &addr];
    args.extend_from_slice(&admin);
    let out = run(COORD, &args);
    let ws: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let done: u64 = ws
        .iter()
        .filter(|w| w["worker"] == "w1" || w["worker"] == "w2")
        .map(|w| w["runs_done"].as_u64().unwrap())
        .sum();
    assert_eq!(done, 2, "every result came from w1 or w2: {ws:?}");

    // A worker with no credential is told to join, and exits.
    let plain_dir = dir.join("plain");
    let args = [
        "--coordinator",
        addr.as_str(),
        "--data-dir",
        plain_dir.to_str().unwrap(),
        "--simulate-gpu",
        "--name",
        "plain",
    ];
    let out = run(WORKER, &args);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    assert!(
        stderr(&out).contains("requires TLS"),
        "{}",
        describe(&args, &out)
    );

    // Another coordinator (its own CA, on loopback: plain and TLS both answered).
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (_other_coord, other_addr) = crate::start_coordinator(&other);
    let other_dir = other.join("coord");
    let args = ["status", "--data-dir", other_dir.to_str().unwrap()];
    let out = run(COORD, &args);
    assert!(
        out.status.success(),
        "TLS on loopback: {}",
        describe(&args, &out)
    );
    let args = ["status", "--coordinator", &other_addr];
    let out = run(COORD, &args);
    assert!(
        out.status.success(),
        "plain on loopback: {}",
        describe(&args, &out)
    );
    // Its admin credential is a certificate from another CA: refused here.
    let other_admin = other_dir.join("tls/admin.pem");
    let args = [
        "status",
        "--coordinator",
        &addr,
        "--credentials",
        other_admin.to_str().unwrap(),
    ];
    let out = run(COORD, &args);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&args, &out));
    assert!(
        stderr(&out).contains("credential of another coordinator"),
        "{}",
        describe(&args, &out)
    );
    // A certificate from the other CA presented with this coordinator's CA (so the
    // client trusts the server): the server refuses the certificate, and says so.
    let other_text = std::fs::read_to_string(&other_admin).unwrap();
    let our_ca = std::fs::read_to_string(coord_dir.join("tls/ca.pem")).unwrap();
    let cut = other_text.rfind("-----BEGIN CERTIFICATE-----").unwrap();
    let mixed = dir.join("mixed.pem");
    std::fs::write(&mixed, format!("{}{our_ca}", &other_text[..cut])).unwrap();
    let args = [
        "status",
        "--coordinator",
        &addr,
        "--credentials",
        mixed.to_str().unwrap(),
    ];
    let out = run(COORD, &args);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&args, &out));
    assert!(
        stderr(&out).contains("client certificate was not accepted"),
        "{}",
        describe(&args, &out)
    );
    // Its token pins its CA: joining this coordinator with it fails at TLS.
    let other_tok = token(&other_dir, "10m");
    let out = join(&addr, &other_tok, &dir.join("x1"), "x1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not the one the join token names"),
        "{}",
        describe(&[], &out)
    );
    assert!(!dir.join("x1").join(tls::CREDENTIALS_FILE).exists());

    // A forged token (a later expiry under the old signature) and an expired one.
    let fields: Vec<&str> = tok.split('.').collect();
    let forged = [fields[0], fields[1], "9999999999", fields[3], fields[4]].join(".");
    let out = join(&addr, &forged, &dir.join("x2"), "x2");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("forged"), "{}", describe(&[], &out));
    let short = token(&coord_dir, "1s");
    let (parsed, _) = lem_common::token::JoinToken::parse(&short).unwrap();
    wait_for(
        "the 1 s token to expire",
        Duration::from_secs(10),
        &[&coord],
        || {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (now > parsed.expires_at_s).then_some(())
        },
    );
    let out = join(&addr, &short, &dir.join("x3"), "x3");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", describe(&[], &out));
    for x in ["x2", "x3"] {
        assert!(!dir.join(x).join(tls::CREDENTIALS_FILE).exists());
    }

    // Joining again under a name replaces its certificate: the old one stops working.
    let before = Credentials::load(&dir.join("probe-a").join(tls::CREDENTIALS_FILE)).unwrap();
    let old_copy = dir.join("probe-a-old.pem");
    std::fs::copy(dir.join("probe-a").join(tls::CREDENTIALS_FILE), &old_copy).unwrap();
    joined(&addr, &tok, &dir.join("probe-a"), "probe-a");
    let after = Credentials::load(&dir.join("probe-a").join(tls::CREDENTIALS_FILE)).unwrap();
    assert_ne!(before.certificate, after.certificate);
    rt().block_on(async {
        let stale = transport::connect(
            &Endpoint::with_credentials(&addr, &Credentials::load(&old_copy).unwrap()).unwrap(),
        )
        .await
        .unwrap();
        let (kind, msg) = refused_kind(stale.register(ctx(), register_request("probe-a")).await);
        assert_eq!(kind, RpcErrorKind::Unauthenticated, "{msg}");
        assert!(msg.contains("not enrolled"), "{msg}");
        let fresh = connect_as(&addr, &dir.join("probe-a")).await;
        fresh
            .register(ctx(), register_request("probe-a"))
            .await
            .unwrap()
            .unwrap();
    });
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Whether the server has closed this connection (a read sees EOF or an error).
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn garbage_and_slowloris_are_closed_and_service_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut coord, coord_dir, addr) = start_tls_only_coordinator(dir, &[]);
    let admin_status = [
        "status",
        "--coordinator",
        &addr,
        "--data-dir",
        coord_dir.to_str().unwrap(),
    ];
    let out = run(COORD, &admin_status);
    assert!(out.status.success(), "{}", describe(&admin_status, &out));
    let rss_before = rss_kib(coord.child.id());

    // Slowloris: connections that begin and never finish. A plain frame header
    // announcing 64 KiB, then a trickle; half a TLS record header; nothing at all.
    let mut slow: Vec<TcpStream> = Vec::new();
    for i in 0..30 {
        let mut s = TcpStream::connect(&addr).unwrap();
        match i % 3 {
            0 => s.write_all(&[0, 1, 0, 0, b'{', b'"']).unwrap(),
            1 => s.write_all(&[0x16, 0x03]).unwrap(),
            _ => {}
        }
        slow.push(s);
    }
    // Garbage: random bytes, an absurd frame length, a TLS record of nonsense, and
    // a well-framed frame that is not JSON. Each is sent and the socket dropped.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..200 {
        let mut bytes = vec![0u8; 4096];
        for b in bytes.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        match i % 4 {
            1 => bytes[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]),
            2 => bytes[0] = 0x16,
            3 => {
                bytes[..4].copy_from_slice(&(4092u32).to_be_bytes());
                bytes[0] = 0;
            }
            _ => bytes[0] = 0x01,
        }
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&bytes);
    }
    // A client that sends a frame larger than an unauthenticated peer may (a plain
    // "submit" of 1 MiB to the TLS-only port) is cut off, not buffered.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&(1u32 << 20).to_be_bytes());
        let _ = s.write_all(&vec![b' '; 1 << 20]);
    }

    // Meanwhile the admin is served.
    let out = run(COORD, &admin_status);
    assert!(
        out.status.success(),
        "served during the attack: {}",
        describe(&admin_status, &out)
    );

    // The server closes every slow connection by itself (handshake and frame deadlines).
    wait_for(
        "the server to close every slowloris connection",
        Duration::from_secs(90),
        &[&coord],
        || {
            slow.retain_mut(|s| !closed_by_server(s));
            slow.is_empty().then_some(())
        },
    );
    assert!(coord.is_running(), "{}", coord.logs());
    let out = run(COORD, &admin_status);
    assert!(out.status.success(), "{}", describe(&admin_status, &out));
    let rss_after = rss_kib(coord.child.id());
    eprintln!("coordinator VmRSS: {rss_before} KiB before the attack, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory stays bounded: {rss_before} KiB before, {rss_after} KiB after"
    );

    // A grid past the coordinator's own limit, sent straight to the RPC (no CLI
    // preflight), is refused before it is expanded.
    let list = |n: u32| {
        (1..=n)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "task:\n  model: m\nengine: synthetic\nserving_mode: offline\nsweep:\n  task.max_output_tokens: [{}]\n  synthetic.engine_params.batch_size: [{}]\n  task.max_input_tokens: [{}]\n",
        list(100),
        list(100),
        list(20)
    );
    let creds = Credentials::load(&coord_dir.join("tls/admin.pem")).unwrap();
    let refused = rt().block_on(async {
        let admin = transport::connect(&Endpoint::with_credentials(&addr, &creds).unwrap())
            .await
            .unwrap();
        admin
            .submit(
                ctx(),
                lem_common::rpc::SubmitRequest {
                    path: "huge-grid.yaml".into(),
                    text,
                    base: None,
                    force_cold_start: false,
                },
            )
            .await
    });
    let (kind, msg) = refused_kind(refused);
    assert_eq!(kind, RpcErrorKind::InvalidInput, "{msg}");
    assert!(
        msg.contains("200000 configs") && msg.contains("at most 100000"),
        "{msg}"
    );
    assert!(coord.is_running(), "{}", coord.logs());
    coord.kill();
}
