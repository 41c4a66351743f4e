//! A damaged manifest must give a clean error, never a panic: 1,000 copies of a real
//! manifest, each truncated or with bytes overwritten at seeded random places, are
//! opened and (where the open succeeds) read the way `status` and `results` read.

use lem_common::types::{CampaignId, RunResult};
use lem_coord::store::{CampaignRecord, NewRun, Store, MANIFEST_FILE};

fn seed_manifest(dir: &std::path::Path) -> CampaignId {
    let store = Store::open(dir).unwrap();
    let campaign = CampaignRecord {
        id: CampaignId(0),
        study_name: Some("corrupt".into()),
        study_design_hash: "h".into(),
        source_path: "s.yaml".into(),
        study_text: "task: {model: m}\n".into(),
        submitted_at: "now".into(),
        cancelled: false,
        n_runs: 0,
        n_configs: 4,
        skipped: vec![],
        warnings: vec![],
        experiment_timeout_s: 600.0,
        stdout_silence_timeout_s: 300.0,
        force_cold_start: false,
        runner_needs: Default::default(),
    };
    let runs: Vec<NewRun> = (0..40)
        .map(|i| NewRun {
            config_hash: format!("{i:016x}"),
            cycle: 1,
            engine: "synthetic".into(),
            model: "m".into(),
            gap_before_s: 0.0,
            config_json: format!("{{\"i\": {i}}}"),
            tp_size: 1,
            need: Default::default(),
        })
        .collect();
    let id = store.create_campaign(campaign, runs).unwrap();
    let policy = lem_common::lease::LeasePolicy::default();
    let w = lem_common::types::WorkerId("w".into());
    let engines = vec!["synthetic".to_string()];
    for i in 0..10 {
        let r = store
            .lease_next(&w, 0, &engines, 1000 + i, &policy)
            .unwrap()
            .unwrap();
        let token = r.lease.lease.as_ref().unwrap().token;
        store
            .complete(r.key, token, &w, &RunResult::default(), 2000 + i, "t")
            .unwrap();
    }
    id
}

#[test]
fn thousand_damaged_manifests_give_clean_errors() {
    let src = tempfile::tempdir().unwrap();
    let id = seed_manifest(src.path());
    let original = std::fs::read(src.path().join(MANIFEST_FILE)).unwrap();
    let mut rng: u64 = 0xC0FF_EE00_D15C_0001;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut opened, mut refused) = (0, 0);
    for i in 0..1000 {
        let mut bytes = original.clone();
        match i % 3 {
            0 => bytes.truncate((next() as usize) % bytes.len()),
            1 => {
                for _ in 0..(1 + next() % 16) {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            _ => {
                let page = 4096;
                let start = ((next() as usize) % (bytes.len() / page).max(1)) * page;
                let end = (start + page).min(bytes.len());
                bytes[start..end].iter_mut().for_each(|b| *b = 0);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), &bytes).unwrap();
        let path = dir.path().to_path_buf();
        let outcome = std::panic::catch_unwind(move || match Store::open(&path) {
            Ok(store) => {
                // Reads may fail with an error; they must not panic.
                let _ = store.campaigns();
                let _ = store.counts(id);
                let _ = store.runs(id);
                true
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                false
            }
        });
        match outcome {
            Ok(true) => opened += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("copy {i} (corruption kind {}) made the store panic", i % 3),
        }
    }
    println!("damaged manifests: {refused} refused with an error, {opened} opened (redb repaired or the damage missed live data)");
    assert_eq!(opened + refused, 1000);
}
