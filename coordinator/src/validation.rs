//! `lem-coord results validate`: [`lem_common::validate`] over every run of a
//! campaign, as a table of the failed checks and a PASS/FAIL summary line, or JSON.

use std::fmt::Write as _;

use lem_common::rpc::RunRow;
use lem_common::validate::{self, Check, Verdict};
use serde_json::json;

/// One run's checks.
pub struct RunValidation {
    pub experiment_id: String,
    pub state: String,
    pub verdict: Verdict,
    pub checks: Vec<Check>,
}

/// Every run of a campaign, checked.
pub struct CampaignValidation {
    pub campaign: u64,
    pub runs: Vec<RunValidation>,
}

impl CampaignValidation {
    pub fn new(campaign: u64, rows: &[RunRow]) -> CampaignValidation {
        let runs = rows
            .iter()
            .map(|r| {
                let config = lem_common::pyjson::parse(&r.config_json).ok();
                let checks = validate::validate(&r.state, r.result.as_ref(), config.as_ref());
                RunValidation {
                    experiment_id: r.run.to_string(),
                    state: r.state.clone(),
                    verdict: validate::overall(&checks),
                    checks,
                }
            })
            .collect();
        CampaignValidation { campaign, runs }
    }

    fn count(&self, v: Verdict) -> usize {
        self.runs.iter().filter(|r| r.verdict == v).count()
    }

    /// FAIL when any check of any run failed, else PASS.
    pub fn verdict(&self) -> Verdict {
        if self.count(Verdict::Fail) > 0 {
            Verdict::Fail
        } else {
            Verdict::Pass
        }
    }

    /// Runs checked (those with a result, and done runs without one).
    pub fn checked(&self) -> usize {
        self.runs.len() - self.count(Verdict::Skip)
    }

    /// The failed checks, one line each, then the summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let failed: Vec<(&RunValidation, &Check)> = self
            .runs
            .iter()
            .flat_map(|r| {
                r.checks
                    .iter()
                    .filter(|c| c.verdict == Verdict::Fail)
                    .map(move |c| (r, c))
            })
            .collect();
        if !failed.is_empty() {
            writeln!(out, "{:<14} {:<11} reason", "experiment_id", "check").unwrap();
            for (r, c) in &failed {
                writeln!(out, "{:<14} {:<11} {}", r.experiment_id, c.name, c.reason).unwrap();
            }
        }
        let without = self.count(Verdict::Skip);
        let without = if without > 0 {
            format!(", {without} without a result (not checked)")
        } else {
            String::new()
        };
        let n_checks = validate::CHECKS.len();
        match self.verdict() {
            Verdict::Fail => writeln!(
                out,
                "FAIL: campaign {}: {} of {} run(s) checked failed {} check(s){without}",
                self.campaign,
                self.count(Verdict::Fail),
                self.checked(),
                failed.len()
            ),
            _ => writeln!(
                out,
                "PASS: campaign {}: {} run(s) checked, {n_checks} checks each, none failed{without}",
                self.campaign,
                self.checked()
            ),
        }
        .unwrap();
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "experiment_id": r.experiment_id,
                    "state": r.state,
                    "verdict": r.verdict.as_str(),
                    "checks": r.checks.iter().map(|c| json!({
                        "name": c.name,
                        "verdict": c.verdict.as_str(),
                        "reason": c.reason,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "campaign": self.campaign,
            "verdict": self.verdict().as_str(),
            "runs_checked": self.checked(),
            "runs_failed": self.count(Verdict::Fail),
            "runs_without_result": self.count(Verdict::Skip),
            "runs": runs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lem_common::types::{CampaignId, RunKey, RunResult};

    fn row(seq: u32, state: &str, result: Option<RunResult>) -> RunRow {
        RunRow {
            run: RunKey {
                campaign: CampaignId(7),
                seq,
            },
            config_hash: "a0767dbccba6fc45".into(),
            cycle: 1,
            engine: "synthetic".into(),
            state: state.into(),
            attempts: 1,
            config_json: "{}".into(),
            result,
            last_failure: None,
        }
    }

    #[test]
    fn failures_are_listed_and_the_summary_says_fail() {
        // An empty result: no energy, no tokens, no timestamps.
        let rows = [
            row(0, "done", Some(RunResult::default())),
            row(1, "failed", None),
        ];
        let v = CampaignValidation::new(7, &rows);
        assert_eq!(v.verdict(), Verdict::Fail);
        let text = v.to_text();
        assert!(text.contains("7-0001         energy"), "{text}");
        let last = text.lines().last().unwrap();
        assert!(
            last.starts_with("FAIL: campaign 7: 1 of 1 run(s) checked failed")
                && last.ends_with(", 1 without a result (not checked)"),
            "{last}"
        );
        let j = v.to_json();
        assert_eq!(j["verdict"], "FAIL");
        assert_eq!(j["runs_failed"], 1);
        assert_eq!(j["runs_without_result"], 1);
        assert_eq!(j["runs"][1]["verdict"], "SKIP");
        assert_eq!(
            j["runs"][0]["checks"].as_array().unwrap().len(),
            validate::CHECKS.len()
        );
    }

    #[test]
    fn no_runs_with_results_is_a_pass_of_none() {
        let v = CampaignValidation::new(7, &[row(0, "pending", None)]);
        assert_eq!(v.verdict(), Verdict::Pass);
        assert_eq!(
            v.to_text(),
            "PASS: campaign 7: 0 run(s) checked, 7 checks each, none failed, 1 without a result (not checked)\n"
        );
    }
}
