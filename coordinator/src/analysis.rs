//! `lem-coord summary` and `lem-coord compare`: what a researcher reads after a
//! campaign, from [`lem_common::aggregate`] and [`lem_common::compare`] (the pure
//! parts) over the rows the coordinator serves.
//!
//! `compare A B` takes two campaigns (`3 4`: the configurations they share, matched by
//! config hash) or two configurations (`3:16a0 3:batch_size=8`: a config-hash prefix,
//! or `name=value` pairs matched against the campaign's varying parameters by their
//! dotted name or its last part).

use anyhow::anyhow;
use lem_common::aggregate::{self, ConfigAggregate, Metric};
use lem_common::compare::{self, Difference};
use lem_common::rpc::RunRow;
use lem_wire::transport::Endpoint;
use serde_json::json;

use crate::cli::{connect, fetch_rows, invalid, CliError};
use crate::export::{self, sig};

/// A campaign's rows; an error naming the campaign when the coordinator has none of
/// that id (exit 2, as `results`).
pub async fn campaign_rows(campaign: u64, addr: &Endpoint) -> Result<Vec<RunRow>, CliError> {
    let client = connect(addr).await?;
    fetch_rows(&client, addr, campaign).await
}

pub async fn summary(campaign: u64, json: bool, addr: &Endpoint) -> Result<(), CliError> {
    let rows = campaign_rows(campaign, addr).await?;
    let aggs = aggregate::aggregate_rows(&rows);
    if json {
        let v = json!({
            "campaign": campaign,
            "rank_metric": aggregate::rank_metric(&aggs),
            "configs": aggs,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?
        );
    } else {
        print!("{}", export::summary_of(&aggs));
    }
    Ok(())
}

/// Which side of a comparison: a whole campaign, or one configuration of it.
#[derive(Debug, PartialEq)]
pub struct Side {
    pub campaign: u64,
    pub config: Option<String>,
}

/// Parses `CAMPAIGN` or `CAMPAIGN:CONFIG`.
pub fn parse_side(s: &str) -> Result<Side, String> {
    let (c, config) = match s.split_once(':') {
        Some((c, cfg)) if !cfg.trim().is_empty() => (c, Some(cfg.trim().to_string())),
        Some(_) => return Err(format!("'{s}': nothing after ':' (give CAMPAIGN:CONFIG, CONFIG a config-hash prefix or name=value pairs)")),
        None => (s, None),
    };
    let campaign = c.trim().parse::<u64>().map_err(|_| {
        format!("'{s}': '{c}' is not a campaign id (give CAMPAIGN or CAMPAIGN:CONFIG, e.g. 3 or 3:batch_size=8)")
    })?;
    Ok(Side { campaign, config })
}

/// The one configuration of `aggs` that `selector` names: a config-hash prefix, or
/// comma-separated `name=value` pairs (a name is a varying parameter's dotted name or
/// its last part).
pub fn select<'a>(
    aggs: &'a [ConfigAggregate],
    selector: &str,
) -> Result<&'a ConfigAggregate, String> {
    let matches: Vec<&ConfigAggregate> = if selector.contains('=') {
        let pairs: Vec<(&str, &str)> = selector
            .split(',')
            .map(|p| p.split_once('=').map(|(k, v)| (k.trim(), v.trim())))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("'{selector}': give name=value pairs separated by commas"))?;
        aggs.iter()
            .filter(|a| {
                pairs.iter().all(|(k, v)| {
                    a.params.iter().any(|(name, value)| {
                        (name == k || name.rsplit('.').next() == Some(k))
                            && value.as_ref().map(aggregate::value_text).as_deref() == Some(*v)
                    })
                })
            })
            .collect()
    } else {
        aggs.iter()
            .filter(|a| a.config_hash.starts_with(selector))
            .collect()
    };
    let known = || {
        aggs.iter()
            .map(|a| format!("{} ({})", &a.config_hash, a.label()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no configuration matches '{selector}'; the campaign has: {}",
            known()
        )),
        many => Err(format!(
            "'{selector}' matches {} configurations ({}); name one more precisely",
            many.len(),
            many.iter()
                .map(|a| a.config_hash.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The measures compared, the ranked J/token first.
fn measures(rank: Metric) -> Vec<Metric> {
    let mut v = vec![rank];
    v.extend(
        [
            Metric::EnergyPerToken,
            Metric::EnergyPerTokenAdjusted,
            Metric::EnergyPerTokenDynamic,
            Metric::TokensPerSecond,
            Metric::TtftMs,
            Metric::ItlMs,
            Metric::MeanPowerW,
        ]
        .into_iter()
        .filter(|m| *m != rank),
    );
    v
}

/// Every measure both configurations have, B against A.
pub fn compare_configs(a: &ConfigAggregate, b: &ConfigAggregate, rank: Metric) -> Vec<Difference> {
    let seed = a
        .config_hash
        .bytes()
        .chain(b.config_hash.bytes())
        .fold(0x9e37_79b9_u64, |h, x| h.rotate_left(5) ^ u64::from(x));
    measures(rank)
        .into_iter()
        .filter_map(|m| {
            let (va, vb) = (a.values.get(&m)?, b.values.get(&m)?);
            compare::difference(m, va, vb, seed ^ m as u64)
        })
        .collect()
}

fn describe(campaign: u64, a: &ConfigAggregate) -> String {
    let label = a.label();
    format!(
        "campaign {campaign} config {} ({}{}{}, {} of {} cycles)",
        a.config_hash,
        a.engine,
        if label.is_empty() { "" } else { " " },
        label,
        a.done,
        a.runs
    )
}

fn table(diffs: &[Difference]) -> String {
    use comfy_table::{presets, Table};
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN).set_header(vec![
        "measure",
        "A",
        "B",
        "B - A",
        "95% CI of B - A",
        "change",
        "verdict for B",
    ]);
    for d in diffs {
        t.add_row(vec![
            d.metric.label().to_string(),
            format!("{} (n={})", sig(d.mean_a, 4), d.n_a),
            format!("{} (n={})", sig(d.mean_b, 4), d.n_b),
            sig(d.diff, 3),
            match (d.ci95_low, d.ci95_high) {
                (Some(lo), Some(hi)) => format!("[{}, {}]", sig(lo, 3), sig(hi, 3)),
                _ => "-".into(),
            },
            d.diff_pct
                .map(|p| format!("{p:+.1}%"))
                .unwrap_or_else(|| "-".into()),
            d.verdict.text().to_string(),
        ]);
    }
    t.to_string()
}

pub async fn compare(a: &str, b: &str, json: bool, addr: &Endpoint) -> Result<(), CliError> {
    let (sa, sb) = (
        parse_side(a).map_err(|e| invalid(anyhow!(e)))?,
        parse_side(b).map_err(|e| invalid(anyhow!(e)))?,
    );
    if sa.config.is_some() != sb.config.is_some() {
        return Err(invalid(anyhow!(
            "compare two campaigns (3 4) or two configurations (3:batch_size=1 3:batch_size=8), not one of each"
        )));
    }
    let rows_a = campaign_rows(sa.campaign, addr).await?;
    let aggs_a = aggregate::aggregate_rows(&rows_a);
    let aggs_b = if sb.campaign == sa.campaign {
        aggs_a.clone()
    } else {
        aggregate::aggregate_rows(&campaign_rows(sb.campaign, addr).await?)
    };
    // Rank on the figure both campaigns have.
    let rank = if aggregate::rank_metric(&aggs_a) == aggregate::rank_metric(&aggs_b) {
        aggregate::rank_metric(&aggs_a)
    } else {
        Metric::EnergyPerToken
    };
    let pairs: Vec<(&ConfigAggregate, &ConfigAggregate)> = match (&sa.config, &sb.config) {
        (Some(ca), Some(cb)) => {
            let side = |aggs, sel: &str, c| {
                select(aggs, sel).map_err(|e| invalid(anyhow!("campaign {c}: {e}")))
            };
            vec![(
                side(&aggs_a, ca, sa.campaign)?,
                side(&aggs_b, cb, sb.campaign)?,
            )]
        }
        _ => {
            let pairs: Vec<_> = aggs_a
                .iter()
                .filter_map(|x| {
                    aggs_b
                        .iter()
                        .find(|y| y.config_hash == x.config_hash)
                        .map(|y| (x, y))
                })
                .collect();
            if pairs.is_empty() {
                return Err(invalid(anyhow!(
                    "campaigns {} and {} share no configuration (same config hash); compare two configurations instead, e.g. {}:{} {}:{}",
                    sa.campaign,
                    sb.campaign,
                    sa.campaign,
                    aggs_a.first().map(|x| x.config_hash.as_str()).unwrap_or("HASH"),
                    sb.campaign,
                    aggs_b.first().map(|x| x.config_hash.as_str()).unwrap_or("HASH"),
                )));
            }
            pairs
        }
    };
    let results: Vec<(&ConfigAggregate, &ConfigAggregate, Vec<Difference>)> = pairs
        .into_iter()
        .map(|(x, y)| (x, y, compare_configs(x, y, rank)))
        .collect();
    if json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|(x, y, d)| {
                json!({
                    "a": {"campaign": sa.campaign, "config_hash": x.config_hash, "label": x.label()},
                    "b": {"campaign": sb.campaign, "config_hash": y.config_hash, "label": y.label()},
                    "rank_metric": rank,
                    "differences": d,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(anyhow::Error::from)?
        );
        return Ok(());
    }
    for (x, y, d) in &results {
        println!("A: {}", describe(sa.campaign, x));
        println!("B: {}", describe(sb.campaign, y));
        println!("{}", table(d));
        match d.first() {
            Some(first) => println!(
                "verdict on {}: {}",
                first.metric.name(),
                match (first.verdict, first.diff_pct) {
                    (compare::Verdict::Better | compare::Verdict::Worse, Some(p)) => format!(
                        "B is {} than A ({p:+.1}%; the 95% CI of the difference excludes 0)",
                        first.verdict.text()
                    ),
                    (compare::Verdict::NoSignificantDifference, _) =>
                        "no significant difference between A and B (the 95% CI of the difference includes 0)".to_string(),
                    (v, _) => v.text().to_string(),
                }
            ),
            None => println!("no measure in common to compare"),
        }
        let flagged: std::collections::BTreeSet<&str> =
            x.flag_names().into_iter().chain(y.flag_names()).collect();
        if !flagged.is_empty() {
            let flagged: Vec<&str> = flagged.into_iter().collect();
            println!(
                "flags: {} (lem-coord summary explains them)",
                flagged.join(" ")
            );
        }
        println!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_parse_or_say_what_to_give() {
        assert_eq!(
            parse_side("3").unwrap(),
            Side {
                campaign: 3,
                config: None
            }
        );
        assert_eq!(
            parse_side("3:batch_size=8").unwrap(),
            Side {
                campaign: 3,
                config: Some("batch_size=8".into())
            }
        );
        assert!(parse_side("x:1").unwrap_err().contains("not a campaign id"));
        assert!(parse_side("3:").unwrap_err().contains("nothing after"));
    }

    fn agg(hash: &str, batch: i64) -> ConfigAggregate {
        ConfigAggregate {
            config_hash: hash.into(),
            engine: "synthetic".into(),
            model: "m".into(),
            params: vec![(
                "synthetic.engine_params.batch_size".into(),
                Some(json!(batch)),
            )],
            runs: 2,
            done: 2,
            cycles: vec![1, 2],
            metrics: Default::default(),
            values: [(
                Metric::EnergyPerToken,
                vec![1.0 / batch as f64, 1.01 / batch as f64],
            )]
            .into(),
            flags: vec![],
            run_flags: Default::default(),
            simulated: true,
        }
    }

    #[test]
    fn a_configuration_is_selected_by_hash_prefix_or_parameter() {
        let aggs = vec![agg("aa01", 1), agg("ab02", 8)];
        assert_eq!(select(&aggs, "aa").unwrap().config_hash, "aa01");
        assert_eq!(select(&aggs, "batch_size=8").unwrap().config_hash, "ab02");
        assert_eq!(
            select(&aggs, "synthetic.engine_params.batch_size=1")
                .unwrap()
                .config_hash,
            "aa01"
        );
        assert!(select(&aggs, "a").unwrap_err().contains("matches 2"));
        let e = select(&aggs, "batch_size=3").unwrap_err();
        assert!(e.contains("aa01 (batch_size=1)"), "{e}");
    }

    #[test]
    fn comparing_two_batch_sizes_gives_a_verdict() {
        let (a, b) = (agg("aa01", 1), agg("ab02", 8));
        let d = compare_configs(&a, &b, Metric::EnergyPerToken);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].verdict, compare::Verdict::Better);
        assert!(table(&d).contains("better"));
    }
}
