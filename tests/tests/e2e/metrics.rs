//! The HTTP endpoints during campaigns (docs/observability.md): a real Prometheus
//! (Debian's package) scrapes the coordinator and a worker and PromQL through its
//! HTTP API returns the campaign's run counts; headless Chromium loads the status
//! page of `lem-coord run` and sees the progress move without a reload; `--http`
//! errors name the flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lem_tests::{describe, http_get, http_request, poll_until, run, url_encode, wait_for, Proc};
use serde_json::Value;

use crate::{campaign_id, start_worker_with, status_json, wait_for_addr, COORD, WORKER};

/// A synthetic study of `configs` batch sizes x `cycles` cycles, each run about
/// `decode_ms` x 4 long (no baseline, no warm-up).
fn write_study(dir: &Path, name: &str, configs: usize, cycles: u32, decode_ms: u32) -> String {
    let sizes: Vec<String> = (1..=configs).map(|b| b.to_string()).collect();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "study_name: {name}\ntask:\n  model: synthetic/metrics\n  dataset:\n    n_prompts: 1\n  max_input_tokens: 16\n  max_output_tokens: 4\nengine: synthetic\nserving_mode: offline\nmeasurement:\n  baseline:\n    enabled: false\noffline:\n  warmup:\n    enabled: false\nsynthetic:\n  engine_params:\n    load_seconds: 0.2\n    decode_ms_per_step: {decode_ms}.0\nsweep:\n  synthetic.engine_params.batch_size: [{}]\nstudy_execution:\n  n_cycles: {cycles}\n",
            sizes.join(", ")
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// The address a process wrote to `dir/http.addr`.
fn http_addr(p: &Proc, dir: &Path) -> String {
    wait_for(
        "the HTTP address file",
        Duration::from_secs(60),
        &[p],
        || {
            std::fs::read_to_string(dir.join("http.addr"))
                .ok()
                .filter(|a| !a.is_empty())
        },
    )
}

/// Prometheus' binary, or `None` (said loudly) with `LEM_SKIP_PROMETHEUS=1`; panics
/// when it is missing, saying how to get it: the scrape is never skipped silently.
fn prometheus() -> Option<PathBuf> {
    if std::env::var("LEM_SKIP_PROMETHEUS").is_ok_and(|v| v == "1") {
        eprintln!(
            "SKIPPED the Prometheus scrape: LEM_SKIP_PROMETHEUS=1 (CI never sets it); /metrics is still checked directly"
        );
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .or_else(|| panic!(
            "prometheus is not installed: this test scrapes lem-coord and lem-worker with a real Prometheus (Debian's `prometheus` package). Run ./test.sh, which installs it, or `apt-get install prometheus`; LEM_SKIP_PROMETHEUS=1 skips the scrape on a machine without it (never in CI)"
        ))
}

/// A loopback port nothing listens on (free when this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The samples of an instant PromQL query, through Prometheus' HTTP API; `None`
/// while Prometheus does not answer.
fn query(prom: &str, promql: &str) -> Option<Vec<Value>> {
    let r = http_get(prom, &format!("/api/v1/query?query={}", url_encode(promql))).ok()?;
    let v: Value = serde_json::from_str(&r.body).ok()?;
    assert_eq!(v["status"], "success", "{promql}: {v}");
    v["data"]["result"].as_array().cloned()
}

/// The value of a query's first sample; `None` while it has none.
fn value(prom: &str, promql: &str) -> Option<f64> {
    query(prom, promql)?
        .first()?
        .get("value")?
        .get(1)?
        .as_str()?
        .parse()
        .ok()
}

#[test]
fn prometheus_scrapes_the_coordinator_and_a_worker_during_a_campaign() {
    let prometheus = prometheus();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let coord_dir = dir.join("coord");
    let coord = Proc::spawn(
        "coord",
        COORD,
        &[
            "start",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            coord_dir.to_str().unwrap(),
        ],
        dir,
    );
    let addr = wait_for_addr(&coord, &coord_dir);
    let coord_http = http_addr(&coord, &coord_dir);
    let worker = start_worker_with(dir, &addr, "w1", &["--http", "127.0.0.1:0"]);
    let worker_http = http_addr(&worker, &dir.join("w1"));
    let all = [&coord, &worker];

    // Both serve OpenMetrics text, read-only.
    for (http, family) in [
        (&coord_http, "# TYPE lem_coord_runs gauge"),
        (&worker_http, "# TYPE lem_worker_gpu_power_watts gauge"),
    ] {
        let r = http_get(http, "/metrics").unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/openmetrics-text")),
            "{r:?}"
        );
        assert!(
            r.body.contains(family) && r.body.ends_with("# EOF\n"),
            "{}",
            r.body
        );
        assert_eq!(http_request(http, "POST", "/metrics").unwrap().status, 405);
    }

    let mut prom = None;
    let prom_addr = format!("127.0.0.1:{}", free_port());
    if let Some(bin) = &prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: lem-coord\n    static_configs:\n      - targets: ['{coord_http}']\n  - job_name: lem-worker\n    static_configs:\n      - targets: ['{worker_http}']\n"
            ),
        )
        .unwrap();
        let p = Proc::spawn(
            "prometheus",
            bin.to_str().unwrap(),
            &[
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
                &format!("--web.listen-address={prom_addr}"),
            ],
            dir,
        );
        wait_for(
            "Prometheus to scrape both targets",
            Duration::from_secs(60),
            &[&p, &coord, &worker],
            || (value(&prom_addr, "sum(up)")? == 2.0).then_some(()),
        );
        prom = Some(p);
    }

    // Six runs of about 1 s each, so the scrapes see them leased.
    let study = write_study(dir, "scraped.yaml", 3, 2, 300);
    let args = ["submit", &study, "--coordinator", &addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let id = campaign_id(&out.stdout);
    let s = wait_for(
        "the campaign to finish",
        Duration::from_secs(180),
        &all,
        || {
            let s = status_json(&addr, &id)?;
            (s["done"].as_u64()? + s["failed"].as_u64()? == 6).then_some(s)
        },
    );
    assert_eq!(s["done"], 6, "{s}");

    // The coordinator's own /metrics agrees with status, whatever Prometheus does.
    let text = http_get(&coord_http, "/metrics").unwrap().body;
    for line in [
        format!("lem_coord_runs{{campaign=\"{id}\",state=\"done\"}} 6.0\n"),
        format!("lem_coord_runs{{campaign=\"{id}\",state=\"pending\"}} 0.0\n"),
        "lem_coord_results_total{outcome=\"accepted\"} 6\n".to_string(),
        "lem_coord_leases_granted_total 6\n".to_string(),
        format!("lem_coord_flagged_runs{{campaign=\"{id}\",flag=\"simulated\"}} 6.0\n"),
    ] {
        assert!(text.contains(&line), "{line} in\n{text}");
    }

    let Some(prom) = prom else {
        return;
    };
    let mut procs = all.to_vec();
    procs.push(&prom);
    let expect = |promql: String, want: &dyn Fn(f64) -> bool| {
        wait_for(
            &format!("Prometheus: {promql}"),
            Duration::from_secs(30),
            &procs,
            || value(&prom_addr, &promql).filter(|v| want(*v)),
        )
    };
    // The run counts, by campaign and state, from the coordinator's gauges.
    expect(
        format!("lem_coord_runs{{campaign=\"{id}\",state=\"done\"}}"),
        &|v| v == 6.0,
    );
    expect(
        format!("sum(lem_coord_runs{{campaign=\"{id}\",state=~\"pending|leased|failed\"}})"),
        &|v| v == 0.0,
    );
    expect("lem_coord_campaigns{state=\"done\"}".into(), &|v| v == 1.0);
    // Scraped during the campaign: some scrape saw a run leased.
    expect(
        format!("max_over_time(lem_coord_runs{{campaign=\"{id}\",state=\"leased\"}}[10m])"),
        &|v| v >= 1.0,
    );
    // The events, counted where they happened.
    expect(
        "lem_coord_results_total{outcome=\"accepted\"}".into(),
        &|v| v == 6.0,
    );
    expect("lem_coord_leases_granted_total".into(), &|v| v == 6.0);
    expect(
        "sum(lem_coord_rpc_duration_seconds_count{method=\"complete\"})".into(),
        &|v| v >= 6.0,
    );
    expect("lem_coord_commit_batch_ops_count".into(), &|v| v >= 6.0);
    expect(
        format!("lem_coord_flagged_runs{{campaign=\"{id}\",flag=\"simulated\"}}"),
        &|v| v == 6.0,
    );
    expect("lem_coord_workers{state=\"connected\"}".into(), &|v| {
        v == 1.0
    });
    // The worker's side: its runs, its GPU's power, the gate, the counter's cost.
    expect(
        "sum(lem_worker_runs_total{outcome=\"completed\"})".into(),
        &|v| v == 6.0,
    );
    let power = expect("lem_worker_gpu_power_watts{gpu=\"0\"}".into(), &|v| v > 0.0);
    expect(
        "lem_worker_gpu_temperature_celsius{gpu=\"0\"}".into(),
        &|v| v > 0.0,
    );
    expect("lem_worker_gpu_sm_clock_hertz{gpu=\"0\"}".into(), &|v| {
        v > 1e8
    });
    expect(
        "max_over_time(sum(lem_worker_slot_busy)[10m:1s])".into(),
        &|v| v == 1.0,
    );
    expect(
        "sum(lem_worker_thermal_gate_wait_seconds_count)".into(),
        &|v| v >= 6.0,
    );
    expect(
        "max_over_time(lem_worker_slot_run_campaign{slot=\"0\"}[10m])".into(),
        &|v| v.to_string() == id,
    );
    expect(
        "lem_worker_gpu_info{gpu=\"0\",simulated=\"true\"}".into(),
        &|v| v == 1.0,
    );
    expect("sum(lem_worker_energy_counter_reads_total)".into(), &|v| {
        v > 0.0
    });
    // The worker's power as the coordinator heard it with its lease calls.
    expect(
        "lem_coord_worker_gpu_power_watts{worker=\"w1\",gpu=\"0\"}".into(),
        &|v| v > 0.0,
    );
    eprintln!("Prometheus saw 6 runs done; the worker's GPU at {power:.1} W");
    drop(prom);
    drop(worker);
    drop(coord);
}

#[test]
fn the_status_page_of_lem_coord_run_follows_the_campaign_in_chromium() {
    let chromium = crate::report::chromium();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Eight runs of about 2 s on one worker: time for Chromium to start and watch.
    let study = write_study(dir, "page.yaml", 4, 2, 400);
    let data = dir.join("lem-data");
    let mut p = Proc::spawn(
        "run",
        COORD,
        &[
            "run",
            &study,
            "--simulate-gpu",
            "--local-workers",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ],
        dir,
    );
    let http = http_addr(&p, &data.join("coordinator"));
    wait_for("the URL on stderr", Duration::from_secs(10), &[&p], || {
        std::fs::read_to_string(&p.stderr)
            .unwrap_or_default()
            .contains(&format!("status page: http://{http}/"))
            .then_some(())
    });

    // One self-contained page that fetches nothing but its own origin's data.
    let page = http_get(&http, "/").unwrap();
    assert_eq!(page.status, 200, "{page:?}");
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    for external in ["http://", "https://", "src=", "url("] {
        assert!(!page.body.contains(external), "{external} in the page");
    }
    assert_eq!(http_request(&http, "POST", "/").unwrap().status, 405);
    // Its data: the campaign, the local worker with its GPU's power.
    let status: Value = wait_for(
        "the campaign and its worker",
        Duration::from_secs(60),
        &[&p],
        || {
            let s: Value = serde_json::from_str(&http_get(&http, "/api/status").ok()?.body).ok()?;
            let power = s["workers"][0]["power_w"].as_f64()?;
            (s["campaigns"][0]["total"] == 8 && power > 0.0).then_some(s)
        },
    );
    assert_eq!(status["workers"][0]["worker"], "local-0", "{status}");
    assert_eq!(status["workers"][0]["connected"], true, "{status}");

    if let Some(chromium) = chromium {
        // One load, polled by the page itself: virtual time runs its timers, and
        // stands still while a long poll (`wait=2` s at most) is open, so it sees the
        // campaign move in real time.
        let profile = dir.join("chromium-profile");
        let url = format!("http://{http}/?wait=2");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=30000",
            "--dump-dom",
            &url,
        ];
        let mut c = Proc::spawn("chromium", chromium.to_str().unwrap(), &args, dir);
        let st = c.wait_exit(Duration::from_secs(180));
        assert!(
            st.is_some_and(|s| s.success()),
            "chromium did not load the page ({st:?})\n{}",
            c.logs()
        );
        let dom = std::fs::read_to_string(&c.stdout).unwrap();
        let attr = |tag: &str, name: &str| -> Option<String> {
            let start = dom.find(tag)?;
            let tag_text = &dom[start..start + dom[start..].find('>')?];
            let key = format!(" {name}=\"");
            let i = tag_text.find(&key)? + key.len();
            Some(tag_text[i..i + tag_text[i..].find('"')?].to_string())
        };
        let updates: u32 = attr("<main", "data-updates")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let history: Vec<u64> = attr("<main", "data-history")
            .unwrap_or_default()
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(
            updates >= 3 && history.len() >= 2 && history.windows(2).all(|w| w[0] < w[1]),
            "the page updated itself and saw runs finish: {updates} update(s), finished runs seen {history:?}\n{dom}"
        );
        eprintln!("the page updated itself {updates} time(s) and saw {history:?} run(s) finished");
        assert!(dom.contains("data-campaign=\"1\""), "{dom}");
        assert!(dom.contains("data-total=\"8\""), "{dom}");
        assert!(dom.contains("data-worker=\"local-0\""), "{dom}");
        assert!(dom.contains("data-flag=\"simulated\""), "{dom}");
        let power: f64 = attr("data-worker=\"local-0\"", "data-power-w")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(power > 0.0, "live power on the page: {dom}");
    }
    let st = p.wait_exit(Duration::from_secs(180));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "run finished\n{}",
        p.logs()
    );
}

#[test]
fn http_flag_errors_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let start = |name: &str, http: &[&str]| {
        let data = dir.join(name);
        let mut args = vec![
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(http);
        Proc::spawn(name, COORD, &args, dir)
    };
    let exits = |p: &mut Proc| {
        p.wait_exit(Duration::from_secs(30))
            .and_then(|s| s.code())
            .unwrap_or_else(|| panic!("{} still runs\n{}", p.name, p.logs()))
    };
    let stderr = |p: &Proc| std::fs::read_to_string(&p.stderr).unwrap_or_default();

    // A port in use: exit 1, naming the address and the flag.
    let mut c = start("taken", &["--http", &taken_addr]);
    assert_eq!(exits(&mut c), 1, "{}", c.logs());
    let err = stderr(&c);
    assert!(
        err.contains(&format!("cannot listen on {taken_addr} for --http"))
            && err.contains("--http off"),
        "{err}"
    );
    // Not loopback: refused without --http-public (exit 2) ...
    let mut c = start("public", &["--http", "0.0.0.0:0"]);
    assert_eq!(exits(&mut c), 2, "{}", c.logs());
    let err = stderr(&c);
    assert!(
        err.contains("--http 0.0.0.0:") && err.contains("pass --http-public"),
        "{err}"
    );
    // ... served with it, under a loud warning.
    let c = start("public-ok", &["--http", "0.0.0.0:0", "--http-public"]);
    wait_for_addr(&c, &dir.join("public-ok"));
    let warned = poll_until(Duration::from_secs(10), || {
        stderr(&c).contains("WARNING: --http-public").then_some(())
    });
    assert!(warned.is_some(), "{}", c.logs());
    drop(c);
    // `off`: no endpoint, no address file.
    let c = start("off", &["--http", "off"]);
    wait_for_addr(&c, &dir.join("off"));
    assert!(!dir.join("off/http.addr").exists());
    drop(c);

    // The worker's --http: the same rule and the same words.
    let wdir = dir.join("w");
    let mut w = Proc::spawn(
        "worker",
        WORKER,
        &[
            "--coordinator",
            "127.0.0.1:9",
            "--data-dir",
            wdir.to_str().unwrap(),
            "--simulate-gpu",
            "--http",
            &taken_addr,
        ],
        dir,
    );
    assert_eq!(exits(&mut w), 1, "{}", w.logs());
    let err = stderr(&w);
    assert!(
        err.contains(&format!("cannot listen on {taken_addr} for --http")),
        "{err}"
    );
    drop(taken);
}
