//! Multi-GPU hosts: which GPUs form which lease slot, and how many GPUs a run needs.
//!
//! A slot is a group of one or more GPUs. The worker plans its slots from the GPUs
//! it can see ([`plan_slots`]); the coordinator reads each run's tensor-parallel size
//! from its config ([`tp_size`]) and grants a run only to a slot with exactly that
//! many GPUs. Pure: the caller supplies the visible GPU indices.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::Value;

/// How many slots the worker was asked for (`--slots N` or `--slots auto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotCount {
    /// One slot per visible GPU, or one per `--gpu-groups` group.
    Auto,
    Fixed(u32),
}

impl std::str::FromStr for SlotCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(SlotCount::Auto);
        }
        s.trim()
            .parse::<u32>()
            .map(SlotCount::Fixed)
            .map_err(|_| format!("`{s}` is not a number of slots (a positive integer or `auto`)"))
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SlotPlanError {
    #[error("no GPU is visible to this worker (CUDA_VISIBLE_DEVICES may hide them all)")]
    NoGpus,
    #[error("--slots must be at least 1 (or `auto`)")]
    ZeroSlots,
    #[error("--slots {asked} but only {visible} GPU(s) are visible ({list})")]
    TooManySlots {
        asked: u32,
        visible: usize,
        list: String,
    },
    #[error("--gpu-groups `{spec}`: group {group} is empty (write groups as `0,1;2;3`)")]
    EmptyGroup { spec: String, group: usize },
    #[error("--gpu-groups `{spec}`: `{item}` is not a GPU index (write groups as `0,1;2;3`)")]
    NotAnIndex { spec: String, item: String },
    #[error("--gpu-groups `{spec}`: GPU {gpu} is not visible to this worker (visible: {list})")]
    NotVisible {
        spec: String,
        gpu: u32,
        list: String,
    },
    #[error("--gpu-groups `{spec}`: GPU {gpu} is in more than one group")]
    InTwoGroups { spec: String, gpu: u32 },
    #[error("--slots {asked} but --gpu-groups `{spec}` has {groups} group(s) (drop --slots, or use --slots auto)")]
    SlotsDisagree {
        asked: u32,
        spec: String,
        groups: usize,
    },
}

fn list(visible: &[u32]) -> String {
    if visible.is_empty() {
        return "none".into();
    }
    visible
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The GPU groups of the worker's slots, in slot order. Without `groups` every slot is
/// one GPU (the first `N` visible GPUs, or all of them for `auto`). With `groups`
/// (`"0,1;2;3"`: `;` between slots, `,` between the GPUs of one slot) each group is
/// one slot; its indices must be visible and no GPU may be in two groups. GPUs in no
/// group are left unused.
pub fn plan_slots(
    visible: &[u32],
    slots: SlotCount,
    groups: Option<&str>,
) -> Result<Vec<Vec<u32>>, SlotPlanError> {
    if visible.is_empty() {
        return Err(SlotPlanError::NoGpus);
    }
    if slots == SlotCount::Fixed(0) {
        return Err(SlotPlanError::ZeroSlots);
    }
    let Some(spec) = groups else {
        let n = match slots {
            SlotCount::Auto => visible.len(),
            SlotCount::Fixed(n) if n as usize > visible.len() => {
                return Err(SlotPlanError::TooManySlots {
                    asked: n,
                    visible: visible.len(),
                    list: list(visible),
                })
            }
            SlotCount::Fixed(n) => n as usize,
        };
        return Ok(visible[..n].iter().map(|&g| vec![g]).collect());
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, part) in spec.split(';').enumerate() {
        let mut group = Vec::new();
        for item in part.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let gpu: u32 = item.parse().map_err(|_| SlotPlanError::NotAnIndex {
                spec: spec.into(),
                item: item.into(),
            })?;
            if !visible.contains(&gpu) {
                return Err(SlotPlanError::NotVisible {
                    spec: spec.into(),
                    gpu,
                    list: list(visible),
                });
            }
            if !seen.insert(gpu) {
                return Err(SlotPlanError::InTwoGroups {
                    spec: spec.into(),
                    gpu,
                });
            }
            group.push(gpu);
        }
        if group.is_empty() {
            return Err(SlotPlanError::EmptyGroup {
                spec: spec.into(),
                group: i + 1,
            });
        }
        out.push(group);
    }
    if let SlotCount::Fixed(n) = slots {
        if n as usize != out.len() {
            return Err(SlotPlanError::SlotsDisagree {
                asked: n,
                spec: spec.into(),
                groups: out.len(),
            });
        }
    }
    Ok(out)
}

/// The `CUDA_VISIBLE_DEVICES` value for a slot's group: `0,1`.
pub fn cuda_visible_devices(group: &[u32]) -> String {
    group
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Where each engine's config keeps its tensor-parallel size.
pub const TP_SIZE_PATHS: &[(&str, &str)] = &[
    ("transformers", "transformers.engine_params.tp_size"),
    ("vllm", "vllm.engine_params.tensor_parallel_size"),
    ("tensorrt", "tensorrt.engine_params.tensor_parallel_size"),
    ("synthetic", "synthetic.engine_params.tensor_parallel_size"),
];

/// The number of GPUs a run of `engine` with `config` needs: its tensor-parallel size,
/// 1 when the config does not set one (or sets it to null or below 1).
pub fn tp_size(engine: &str, config: &Value) -> u32 {
    TP_SIZE_PATHS
        .iter()
        .find(|(e, _)| *e == engine)
        .and_then(|(_, path)| config.get_path(path))
        .and_then(Value::as_i64)
        .filter(|&n| n >= 1)
        .map_or(1, |n| n.min(u32::MAX as i64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slot_per_visible_gpu_by_default() {
        assert_eq!(
            plan_slots(&[0, 1, 2, 3], SlotCount::Auto, None).unwrap(),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
        // CUDA_VISIBLE_DEVICES=2,3: the visible list is what counts.
        assert_eq!(
            plan_slots(&[2, 3], SlotCount::Fixed(1), None).unwrap(),
            vec![vec![2]]
        );
        let e = plan_slots(&[2, 3], SlotCount::Fixed(3), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--slots 3 but only 2 GPU(s) are visible (2, 3)"
        );
        assert_eq!(
            plan_slots(&[0], SlotCount::Fixed(0), None),
            Err(SlotPlanError::ZeroSlots)
        );
        assert_eq!(
            plan_slots(&[], SlotCount::Auto, None),
            Err(SlotPlanError::NoGpus)
        );
    }

    #[test]
    fn groups_are_parsed_and_validated() {
        let v = [0, 1, 2, 3];
        assert_eq!(
            plan_slots(&v, SlotCount::Auto, Some("0,1;2;3")).unwrap(),
            vec![vec![0, 1], vec![2], vec![3]]
        );
        assert_eq!(
            plan_slots(&v, SlotCount::Fixed(2), Some(" 3 , 2 ; 0 ")).unwrap(),
            vec![vec![3, 2], vec![0]]
        );
        let err = |spec: &str| plan_slots(&v, SlotCount::Auto, Some(spec)).unwrap_err();
        assert!(matches!(
            err("0,1;1"),
            SlotPlanError::InTwoGroups { gpu: 1, .. }
        ));
        assert!(matches!(
            err("0;;1"),
            SlotPlanError::EmptyGroup { group: 2, .. }
        ));
        assert!(matches!(err("0,x"), SlotPlanError::NotAnIndex { .. }));
        let e = err("0,4");
        assert_eq!(
            e.to_string(),
            "--gpu-groups `0,4`: GPU 4 is not visible to this worker (visible: 0, 1, 2, 3)"
        );
        assert!(matches!(
            plan_slots(&v, SlotCount::Fixed(3), Some("0,1;2,3")),
            Err(SlotPlanError::SlotsDisagree { groups: 2, .. })
        ));
        assert_eq!(cuda_visible_devices(&[0, 1]), "0,1");
    }

    #[test]
    fn tp_size_per_engine() {
        let cases = [
            (
                "vllm",
                r#"{"vllm":{"engine_params":{"tensor_parallel_size":4}}}"#,
                4,
            ),
            (
                "transformers",
                r#"{"transformers":{"engine_params":{"tp_size":2}}}"#,
                2,
            ),
            (
                "tensorrt",
                r#"{"tensorrt":{"engine_params":{"tensor_parallel_size":8}}}"#,
                8,
            ),
            (
                "synthetic",
                r#"{"synthetic":{"engine_params":{"tensor_parallel_size":2}}}"#,
                2,
            ),
            // Unset, null, out of range, or another engine's section: 1.
            ("vllm", r#"{"vllm":{"engine_params":{}}}"#, 1),
            (
                "transformers",
                r#"{"transformers":{"engine_params":{"tp_size":null}}}"#,
                1,
            ),
            (
                "vllm",
                r#"{"transformers":{"engine_params":{"tp_size":2}}}"#,
                1,
            ),
            (
                "vllm",
                r#"{"vllm":{"engine_params":{"tensor_parallel_size":0}}}"#,
                1,
            ),
        ];
        for (engine, json, want) in cases {
            let config = crate::pyjson::parse(json).unwrap();
            assert_eq!(tp_size(engine, &config), want, "{engine} {json}");
        }
    }
}
