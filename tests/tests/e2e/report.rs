//! `lem-coord report` and `lem-coord results validate` on real campaigns: the
//! quickstart study on two simulated workers passes validation and its report draws
//! every plot in headless Chromium; a run too short for the energy counter fails
//! validation; an unknown campaign or run is refused by name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lem_tests::{describe, repo_root, run, wait_for, Proc};
use serde_json::Value;

use crate::{campaign_id, start_coordinator, start_worker, status_json, COORD};

/// Chromium's binary, or `None` (said loudly) with `LEM_SKIP_CHROMIUM=1`; panics when
/// it is missing, saying how to get it: the render is never skipped silently.
fn chromium() -> Option<PathBuf> {
    if std::env::var("LEM_SKIP_CHROMIUM").is_ok_and(|v| v == "1") {
        eprintln!(
            "SKIPPED the report's render in Chromium: LEM_SKIP_CHROMIUM=1 (CI never sets it)"
        );
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    panic!(
        "chromium is not installed: this test renders lem-coord's HTML report in headless Chromium (Debian's `chromium` package). Run ./test.sh, which installs it, or `apt-get install chromium`; LEM_SKIP_CHROMIUM=1 skips the render on a machine without it (never in CI)"
    );
}

/// The page's DOM after its scripts ran, from `chromium --headless --dump-dom`.
fn dump_dom(chromium: &Path, page: &Path, dir: &Path) -> String {
    let profile = dir.join("chromium-profile");
    let url = format!("file://{}", page.display());
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        &format!("--user-data-dir={}", profile.display()),
        "--dump-dom",
        &url,
    ];
    let mut p = Proc::spawn("chromium", chromium.to_str().unwrap(), &args, dir);
    let status = p.wait_exit(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium did not render the report ({status:?})\n{}",
        p.logs()
    );
    std::fs::read_to_string(&p.stdout).unwrap()
}

/// The opening tags of `<figure ...>` in `html`.
fn figure_tags(html: &str) -> Vec<&str> {
    html.match_indices("<figure ")
        .map(|(i, _)| &html[i..i + html[i..].find('>').unwrap()])
        .collect()
}

/// The value of `attr="..."` in a tag.
fn attr<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let key = format!(" {attr}=\"");
    let start = tag.find(&key)? + key.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

fn submit(study: &Path, addr: &str) -> String {
    let args = ["submit", study.to_str().unwrap(), "--coordinator", addr];
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    campaign_id(&out.stdout)
}

#[test]
fn report_draws_every_plot_in_chromium_and_validate_passes_or_fails() {
    let chromium = chromium();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (coord, addr) = start_coordinator(dir);
    let workers: Vec<Proc> = (0..2)
        .map(|i| start_worker(dir, &addr, &format!("w{i}")))
        .collect();
    let all: Vec<&Proc> = std::iter::once(&coord).chain(workers.iter()).collect();

    // The quickstart (batch sizes 1, 4, 16; two cycles) and one run of 1 prompt and
    // 2 tokens: a window far shorter than two counter steps.
    let good = submit(&repo_root().join("examples/quickstart.yaml"), &addr);
    let tiny_study = dir.join("tiny.yaml");
    std::fs::write(
        &tiny_study,
        "task:\n  model: synthetic/tiny\n  dataset:\n    n_prompts: 1\n  max_input_tokens: 16\n  max_output_tokens: 2\nengine: synthetic\nserving_mode: offline\nmeasurement:\n  baseline:\n    enabled: false\noffline:\n  warmup:\n    enabled: false\nsynthetic:\n  engine_params:\n    load_seconds: 0.1\nsweep: {}\nstudy_execution:\n  n_cycles: 1\n",
    )
    .unwrap();
    let tiny = submit(&tiny_study, &addr);
    for (id, total) in [(&good, 6), (&tiny, 1)] {
        let s = wait_for(
            "the campaign to finish",
            Duration::from_secs(300),
            &all,
            || {
                let s = status_json(&addr, id)?;
                (s["done"].as_u64()? + s["failed"].as_u64()? == total).then_some(s)
            },
        );
        assert_eq!(s["done"], total, "{s}");
    }
    let connect = ["--coordinator", addr.as_str()];

    // validate: the quickstart passes, the tiny run fails on its window.
    let args = [&["results", "validate", &good][..], &connect].concat();
    let out = run(COORD, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&args, &out));
    assert!(
        text.lines()
            .last()
            .unwrap_or("")
            .starts_with(&format!("PASS: campaign {good}: 6 run(s) checked")),
        "{}",
        describe(&args, &out)
    );
    let args = [&["results", "validate", &good, "--json"][..], &connect].concat();
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "PASS", "{v}");
    assert_eq!(v["runs_checked"], 6, "{v}");
    for r in v["runs"].as_array().unwrap() {
        for c in r["checks"].as_array().unwrap() {
            let skipped_baseline = c["name"] == "baselines" && c["verdict"] == "SKIP";
            assert!(c["verdict"] == "PASS" || skipped_baseline, "{c}");
        }
    }
    let args = [&["results", "validate", &tiny][..], &connect].concat();
    let out = run(COORD, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&args, &out));
    assert!(
        text.contains(&format!("{tiny}-0001"))
            && text.contains("window")
            && text.contains("shorter than 2 energy-counter steps"),
        "{}",
        describe(&args, &out)
    );
    assert!(
        text.lines().last().unwrap_or("").starts_with(&format!(
            "FAIL: campaign {tiny}: 1 of 1 run(s) checked failed"
        )),
        "{}",
        describe(&args, &out)
    );

    // An unknown campaign is refused by name, by both commands; so is an unknown run.
    for args in [
        vec!["results", "validate", "999"],
        vec![
            "report",
            "999",
            "-o",
            dir.join("none.html").to_str().unwrap(),
        ],
    ] {
        let args = [&args[..], &connect].concat();
        let out = run(COORD, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(2) && err.contains("campaign 999 does not exist"),
            "{}",
            describe(&args, &out)
        );
    }
    assert!(!dir.join("none.html").exists());
    let page = dir.join("out/report.html");
    let page_arg = page.to_str().unwrap();
    let missing = format!("{good}-9999");
    let args = [
        &["report", &good, "-o", page_arg, "--run", &missing][..],
        &connect,
    ]
    .concat();
    let out = run(COORD, &args);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&args, &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("no run `{missing}`")),
        "{}",
        describe(&args, &out)
    );

    // The report: one file that fetches nothing, with four plots.
    let args = [&["report", &good, "-o", page_arg][..], &connect].concat();
    let out = run(COORD, &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("default-src 'none'"),
        "a policy that forbids every fetch"
    );
    assert!(!html.contains("src=") && !html.contains("https://"));
    assert_eq!(
        html.matches("http://").count(),
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "no URL but the SVG namespace"
    );
    let figures = figure_tags(&html);
    assert_eq!(figures.len(), 4, "four plots");
    for f in &figures {
        let points: usize = attr(f, "data-points").unwrap().parse().unwrap();
        assert!(points > 0, "every plot has data to draw: {f}");
    }
    assert!(
        html.contains("synthetic.engine_params.batch_size"),
        "figure 1 says what x is"
    );
    assert!(html.contains("Simulated GPU"));

    // Rendered by Chromium: the page's check ran and found every plot drawn.
    let Some(chromium) = chromium else {
        return;
    };
    let dom = dump_dom(&chromium, &page, dir);
    assert!(
        dom.contains("data-checked=\"yes\""),
        "the report's check script ran (a Content-Security-Policy or script error stops it)"
    );
    let figures = figure_tags(&dom);
    assert_eq!(figures.len(), 4, "four plots in the rendered DOM");
    for f in &figures {
        assert_eq!(
            attr(f, "data-drawn"),
            Some("yes"),
            "a plot did not draw: {f}"
        );
        let points: usize = attr(f, "data-points").unwrap().parse().unwrap();
        let circles: usize = attr(f, "data-circles").unwrap().parse().unwrap();
        assert!(circles >= points && points > 0, "{f}");
    }
    drop(workers);
    drop(coord);
}
