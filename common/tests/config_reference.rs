//! docs/config-reference.md is generated from the parameter registry; this test fails
//! when the committed file is stale. Regenerate with
//! `LEM_BLESS=1 cargo test -p lem-common config_reference`.

use std::path::Path;

use lem_common::study::schema::{config_reference_markdown, pinned_engine_version};

#[test]
fn config_reference_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config-reference.md");
    let want = config_reference_markdown();
    if std::env::var_os("LEM_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale (or missing): regenerate it with `LEM_BLESS=1 cargo test -p lem-common config_reference` and commit the result",
        path.display()
    );
}

#[test]
fn config_reference_covers_every_engine_and_pinned_version() {
    let md = config_reference_markdown();
    for (engine, version) in [
        ("transformers", "5.14.1"),
        ("vllm", "0.19.1"),
        ("tensorrt", "1.2.1"),
    ] {
        assert_eq!(pinned_engine_version(engine), Some(version));
        assert!(md.contains(&format!("## Engine `{engine}` (pinned {engine} {version})")));
    }
    assert_eq!(pinned_engine_version("synthetic"), None);
    assert!(md.contains("| `vllm.engine_params.compilation_config.mode` | int, one of, or null | null | `0`, `1`, `2`, `3` | yes |"));
    assert!(md.contains(
        "| `measurement.baseline.duration_seconds` | float | `30.0` | >= 5; <= 120 | no |"
    ));
    assert!(md.contains("| `study_execution.n_cycles` | int | `1` | >= 1 | no |"));
}
