//! Multi-GPU hosts: which GPUs form which lease slot, and how many GPUs a run needs.
//!
//! A slot is a group of one or more GPUs. The worker plans its slots from the GPUs
//! it can see ([`plan_slots`]); the coordinator reads each run's tensor-parallel size
//! from its config ([`tp_size`]) and grants a run only to a slot with exactly that
//! many GPUs. Pure: the caller supplies the visible GPU indices.
//!
//! With `--gpu-groups dynamic` the groups are formed per run instead: the worker's
//! GPUs are one [`GpuPool`] ([`plan_pool`]), and a lease lane that is idle reserves
//! every GPU free at that moment ([`GpuPool::reserve_free`]), asks for a run of at
//! most that many GPUs, keeps the granted run's GPUs ([`choose_gpus`],
//! [`GpuPool::keep`]) and frees the rest at once. One lane asks at a time, so a
//! reservation is never split between two lanes. The coordinator answers by
//! [`pool_grant`]: of the pending runs the pool could ever host (TP at most its size)
//! it looks only at the earliest in study order, and if that run needs more GPUs
//! than are free it grants nothing, so smaller runs cannot overtake it; the pool's
//! runs in progress end, nothing new starts, and the GPUs it needs come free.

use std::collections::{BTreeMap, BTreeSet};

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

/// The `--gpu-groups` value that asks for groups formed per run from a pool.
pub const DYNAMIC_GROUPS: &str = "dynamic";

/// Whether `--gpu-groups` asks for groups formed per run (`dynamic`).
pub fn is_dynamic(groups: Option<&str>) -> bool {
    groups.is_some_and(|g| g.trim().eq_ignore_ascii_case(DYNAMIC_GROUPS))
}

/// The GPUs of a dynamic pool (`--gpu-groups dynamic`): every visible GPU for
/// `--slots auto`, the first `N` for `--slots N` (the same GPUs that many one-GPU
/// slots would have).
pub fn plan_pool(visible: &[u32], slots: SlotCount) -> Result<Vec<u32>, SlotPlanError> {
    Ok(plan_slots(visible, slots, None)?
        .into_iter()
        .flatten()
        .collect())
}

/// Where one GPU of a dynamic pool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuState {
    Free,
    /// Held by the lane that is asking the coordinator for a run.
    Reserved,
    /// A run is using it (from its grant until its report is handled).
    Busy,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("GPU {0} is not in this worker's pool")]
    NotInPool(u32),
    #[error("GPU {gpu} is {is:?}, expected {want:?}")]
    WrongState {
        gpu: u32,
        is: GpuState,
        want: GpuState,
    },
    #[error("GPUs {run:?} of the run are not all among the reserved {reserved:?}")]
    NotReserved { run: Vec<u32>, reserved: Vec<u32> },
}

/// The GPUs of a worker with `--gpu-groups dynamic` and what each is doing. A GPU is
/// busy while the run using it is in progress; every transition checks the GPUs'
/// states first and changes nothing if one is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuPool {
    states: BTreeMap<u32, GpuState>,
}

impl GpuPool {
    /// A pool of `gpus`, all free.
    pub fn new(gpus: &[u32]) -> GpuPool {
        GpuPool {
            states: gpus.iter().map(|&g| (g, GpuState::Free)).collect(),
        }
    }

    /// GPUs in the pool: the largest run it can host.
    pub fn size(&self) -> u32 {
        self.states.len() as u32
    }

    pub fn state(&self, gpu: u32) -> Option<GpuState> {
        self.states.get(&gpu).copied()
    }

    fn in_state(&self, want: GpuState) -> Vec<u32> {
        self.states
            .iter()
            .filter(|(_, s)| **s == want)
            .map(|(g, _)| *g)
            .collect()
    }

    /// The free GPUs, lowest index first.
    pub fn free(&self) -> Vec<u32> {
        self.in_state(GpuState::Free)
    }

    /// The GPUs runs are using, lowest index first.
    pub fn busy(&self) -> Vec<u32> {
        self.in_state(GpuState::Busy)
    }

    /// Moves `gpus` from `from` to `to`, all or none.
    fn transition(&mut self, gpus: &[u32], from: GpuState, to: GpuState) -> Result<(), PoolError> {
        for &gpu in gpus {
            match self.states.get(&gpu) {
                None => return Err(PoolError::NotInPool(gpu)),
                Some(&is) if is != from => {
                    return Err(PoolError::WrongState {
                        gpu,
                        is,
                        want: from,
                    })
                }
                Some(_) => {}
            }
        }
        for gpu in gpus {
            self.states.insert(*gpu, to);
        }
        Ok(())
    }

    /// An idle lane about to ask for a run reserves every GPU free now; returns them
    /// (lowest first), none when no GPU is free.
    pub fn reserve_free(&mut self) -> Vec<u32> {
        let free = self.free();
        self.transition(&free, GpuState::Free, GpuState::Reserved)
            .expect("free GPUs can be reserved");
        free
    }

    /// No run came (or the earliest one needs more GPUs): the reservation is free again.
    pub fn unreserve(&mut self, reserved: &[u32]) -> Result<(), PoolError> {
        self.transition(reserved, GpuState::Reserved, GpuState::Free)
    }

    /// A run was granted: its GPUs `run` (among `reserved`) become busy and the rest
    /// of the reservation is free again at once.
    pub fn keep(&mut self, reserved: &[u32], run: &[u32]) -> Result<(), PoolError> {
        if !run.iter().all(|g| reserved.contains(g)) {
            return Err(PoolError::NotReserved {
                run: run.to_vec(),
                reserved: reserved.to_vec(),
            });
        }
        let rest: Vec<u32> = reserved
            .iter()
            .copied()
            .filter(|g| !run.contains(g))
            .collect();
        // Both checked before either changes anything.
        let mut next = self.clone();
        next.transition(run, GpuState::Reserved, GpuState::Busy)?;
        next.transition(&rest, GpuState::Reserved, GpuState::Free)?;
        *self = next;
        Ok(())
    }

    /// A run ended: its GPUs are free.
    pub fn release(&mut self, run: &[u32]) -> Result<(), PoolError> {
        self.transition(run, GpuState::Busy, GpuState::Free)
    }
}

/// Which `n` of the `reserved` GPUs a granted run of `n` GPUs gets: the first of
/// `preferred` (the device sets of warm harnesses, the caller's best first) that has
/// exactly `n` GPUs, all reserved; otherwise the `n` lowest reserved indices. `None`
/// when fewer than `n` are reserved.
pub fn choose_gpus(reserved: &[u32], n: u32, preferred: &[Vec<u32>]) -> Option<Vec<u32>> {
    let n = n.max(1) as usize;
    if n > reserved.len() {
        return None;
    }
    if let Some(set) = preferred
        .iter()
        .find(|set| set.len() == n && set.iter().all(|g| reserved.contains(g)))
    {
        return Some(set.clone());
    }
    let mut lowest = reserved.to_vec();
    lowest.sort_unstable();
    lowest.truncate(n);
    Some(lowest)
}

/// What a dynamic pool's lease does with the earliest pending run (in study order)
/// among those the pool could ever host, which needs `head_gpus` GPUs, when
/// `free_gpus` are free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolGrant {
    /// Grant that run.
    Grant,
    /// Grant nothing, not even a smaller later run: the pool waits for its runs in
    /// progress to free `needs_gpus` GPUs (head-of-line, so no run starves).
    Blocked { needs_gpus: u32 },
}

/// The head-of-line rule of dynamic pools (see the module documentation).
pub fn pool_grant(head_gpus: u32, free_gpus: u32) -> PoolGrant {
    if head_gpus.max(1) <= free_gpus {
        PoolGrant::Grant
    } else {
        PoolGrant::Blocked {
            needs_gpus: head_gpus.max(1),
        }
    }
}

/// The GPU indices a `CUDA_VISIBLE_DEVICES` value lists (`2,3`), in its order;
/// `None` unless it is a non-empty list of distinct indices (UUIDs, `-1`, Slurm's
/// `NoDevFiles`, an empty value).
pub fn visible_indices(cuda_visible: &str) -> Option<Vec<u32>> {
    let mut out: Vec<u32> = Vec::new();
    for part in cuda_visible.split(',') {
        let i = part.trim().parse::<u32>().ok()?;
        if out.contains(&i) {
            return None;
        }
        out.push(i);
    }
    Some(out)
}

/// The GPUs a worker measuring the simulated GPU sees: `--gpus N` (`gpus`) simulated
/// GPUs, indices `0..N`; without `--gpus`, the indices `CUDA_VISIBLE_DEVICES` lists
/// when it lists indices, as a batch scheduler sets it for the GPUs it bound to the
/// job (Slurm), so a simulated worker follows the binding a real one follows
/// (its slots and results carry those indices); otherwise as many as `--slots N`
/// asks for (one for `auto`).
pub fn simulated_visible(
    gpus: Option<u32>,
    slots: SlotCount,
    cuda_visible: Option<&str>,
) -> Vec<u32> {
    if let Some(n) = gpus {
        return (0..n).collect();
    }
    if let Some(listed) = cuda_visible.and_then(visible_indices) {
        return listed;
    }
    let n = match slots {
        SlotCount::Fixed(n) => n,
        SlotCount::Auto => 1,
    };
    (0..n).collect()
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
    fn a_simulated_worker_follows_cuda_visible_devices_unless_told_how_many_gpus() {
        use SlotCount::{Auto, Fixed};
        assert_eq!(simulated_visible(None, Auto, None), vec![0]);
        assert_eq!(simulated_visible(None, Fixed(3), None), vec![0, 1, 2]);
        // Slurm bound GPUs 2 and 3 to the job.
        assert_eq!(simulated_visible(None, Auto, Some("2,3")), vec![2, 3]);
        assert_eq!(simulated_visible(None, Fixed(1), Some(" 5 ")), vec![5]);
        // --gpus says how many the simulated host has: CUDA_VISIBLE_DEVICES is not read.
        assert_eq!(simulated_visible(Some(2), Auto, Some("2,3")), vec![0, 1]);
        // Values that are not a list of indices are not a binding.
        for v in ["", "NoDevFiles", "GPU-8c1f2a", "0,0", "1,,2", "-1"] {
            assert_eq!(
                simulated_visible(None, Fixed(2), Some(v)),
                vec![0, 1],
                "{v:?}"
            );
        }
        assert_eq!(visible_indices("3,1"), Some(vec![3, 1]));
    }

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
    fn dynamic_pool_is_planned_from_the_visible_gpus() {
        assert!(is_dynamic(Some("dynamic")) && is_dynamic(Some(" Dynamic ")));
        assert!(!is_dynamic(Some("0,1;2")) && !is_dynamic(None));
        assert_eq!(
            plan_pool(&[0, 1, 2, 3], SlotCount::Auto),
            Ok(vec![0, 1, 2, 3])
        );
        // CUDA_VISIBLE_DEVICES=2,3 and --slots 1: a pool of GPU 2 alone.
        assert_eq!(plan_pool(&[2, 3], SlotCount::Fixed(1)), Ok(vec![2]));
        assert!(matches!(
            plan_pool(&[0, 1], SlotCount::Fixed(3)),
            Err(SlotPlanError::TooManySlots { asked: 3, .. })
        ));
    }

    #[test]
    fn pool_reserves_keeps_and_releases() {
        let mut pool = GpuPool::new(&[0, 1, 2, 3]);
        assert_eq!(pool.size(), 4);
        assert_eq!(pool.reserve_free(), vec![0, 1, 2, 3]);
        // While one lane holds the reservation nothing else is free.
        assert_eq!(pool.reserve_free(), Vec::<u32>::new());
        // A TP-1 run keeps one GPU; the other three are free again at once.
        pool.keep(&[0, 1, 2, 3], &[0]).unwrap();
        assert_eq!((pool.busy(), pool.free()), (vec![0], vec![1, 2, 3]));
        let r = pool.reserve_free();
        assert_eq!(r, vec![1, 2, 3]);
        pool.keep(&r, &[2, 3]).unwrap();
        assert_eq!((pool.busy(), pool.free()), (vec![0, 2, 3], vec![1]));
        // Nothing granted: the reservation goes back whole.
        let r = pool.reserve_free();
        pool.unreserve(&r).unwrap();
        assert_eq!(pool.free(), vec![1]);
        pool.release(&[0]).unwrap();
        pool.release(&[2, 3]).unwrap();
        assert_eq!(pool.free(), vec![0, 1, 2, 3]);
        assert_eq!(pool, GpuPool::new(&[0, 1, 2, 3]));
    }

    #[test]
    fn pool_refuses_wrong_transitions_and_changes_nothing() {
        let mut pool = GpuPool::new(&[0, 1, 2]);
        let before = pool.clone();
        assert_eq!(
            pool.release(&[0]),
            Err(PoolError::WrongState {
                gpu: 0,
                is: GpuState::Free,
                want: GpuState::Busy
            })
        );
        assert_eq!(pool.unreserve(&[7]), Err(PoolError::NotInPool(7)));
        assert_eq!(pool, before);
        let r = pool.reserve_free();
        // The run's GPUs must come from the reservation.
        assert!(matches!(
            pool.keep(&[0, 1], &[1, 2]),
            Err(PoolError::NotReserved { .. })
        ));
        // GPU 1 busy and GPU 2 still reserved would be half a transition: refused.
        let mut half = pool.clone();
        assert!(half.keep(&[0, 1, 2, 5], &[1]).is_err());
        assert_eq!(half, pool);
        pool.keep(&r, &[1]).unwrap();
        assert_eq!(pool.state(1), Some(GpuState::Busy));
        assert_eq!(pool.state(0), Some(GpuState::Free));
        assert_eq!(pool.state(9), None);
    }

    #[test]
    fn a_run_gets_a_warm_set_if_one_fits_else_the_lowest_gpus() {
        let reserved = [1, 2, 3];
        assert_eq!(choose_gpus(&reserved, 2, &[]), Some(vec![1, 2]));
        assert_eq!(choose_gpus(&[3, 1, 2], 1, &[]), Some(vec![1]));
        // TP 0 or unset counts as 1.
        assert_eq!(choose_gpus(&reserved, 0, &[]), Some(vec![1]));
        assert_eq!(choose_gpus(&reserved, 4, &[]), None);
        // A warm harness on 2,3 is preferred for a TP-2 run; one on 0,1 (GPU 0 not
        // reserved) or of another size is not.
        let warm = [vec![0, 1], vec![3], vec![3, 2]];
        assert_eq!(choose_gpus(&reserved, 2, &warm), Some(vec![3, 2]));
        assert_eq!(choose_gpus(&reserved, 1, &warm), Some(vec![3]));
        assert_eq!(choose_gpus(&reserved, 3, &warm), Some(vec![1, 2, 3]));
    }

    #[test]
    fn the_earliest_run_blocks_smaller_ones_until_it_fits() {
        assert_eq!(pool_grant(1, 4), PoolGrant::Grant);
        assert_eq!(pool_grant(4, 4), PoolGrant::Grant);
        assert_eq!(pool_grant(4, 3), PoolGrant::Blocked { needs_gpus: 4 });
        assert_eq!(pool_grant(0, 1), PoolGrant::Grant);
        assert_eq!(pool_grant(2, 0), PoolGrant::Blocked { needs_gpus: 2 });
    }

    /// A run of the simulation below: its TP size and how long it takes.
    struct SimRun {
        tp: u32,
        duration: u64,
        /// Start, end and GPUs, once it ran.
        ran: Option<(u64, u64, Vec<u32>)>,
    }

    /// Drives a pool of `gpus` the way the worker's lanes and the coordinator do,
    /// on a simulated clock: at each instant the lane whose turn it is reserves the
    /// free GPUs, the earliest pending run is granted if [`pool_grant`] says so, and
    /// this repeats until a lane gets nothing; then time moves to the next run's end.
    fn simulate(gpus: &[u32], runs: &mut [SimRun]) {
        let mut pool = GpuPool::new(gpus);
        let mut now = 0;
        loop {
            loop {
                let reserved = pool.reserve_free();
                let head = runs
                    .iter()
                    .position(|r| r.ran.is_none() && r.tp <= pool.size());
                let Some(head) = head.filter(|_| !reserved.is_empty()) else {
                    pool.unreserve(&reserved).unwrap();
                    break;
                };
                match pool_grant(runs[head].tp, reserved.len() as u32) {
                    PoolGrant::Grant => {
                        let set = choose_gpus(&reserved, runs[head].tp, &[]).unwrap();
                        pool.keep(&reserved, &set).unwrap();
                        runs[head].ran = Some((now, now + runs[head].duration, set));
                    }
                    PoolGrant::Blocked { .. } => {
                        pool.unreserve(&reserved).unwrap();
                        break;
                    }
                }
            }
            let running = runs
                .iter()
                .filter_map(|r| r.ran.as_ref())
                .filter(|(_, end, _)| *end > now);
            let Some(next) = running.map(|(_, end, _)| *end).min() else {
                break;
            };
            now = next;
            for (_, end, set) in runs.iter().filter_map(|r| r.ran.as_ref()) {
                if *end == now {
                    pool.release(set).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_tp4_run_behind_a_stream_of_tp1_runs_is_not_starved() {
        // TP-1 runs of varied length, a TP-4 run, then more TP-1 runs and two TP-2s.
        let mut tps = vec![1, 1, 1, 1, 1, 4];
        tps.extend([1; 12]);
        tps.extend([2, 2, 1]);
        let mut runs: Vec<SimRun> = tps
            .iter()
            .enumerate()
            .map(|(i, &tp)| SimRun {
                tp,
                duration: 3 + (i as u64 * 7) % 5,
                ran: None,
            })
            .collect();
        simulate(&[0, 1, 2, 3], &mut runs);
        let ran: Vec<&(u64, u64, Vec<u32>)> = runs
            .iter()
            .map(|r| r.ran.as_ref().expect("every run ran"))
            .collect();
        for (r, (_, _, set)) in runs.iter().zip(&ran) {
            assert_eq!(set.len() as u32, r.tp);
        }
        // No two runs that overlap in time share a GPU.
        for (i, a) in ran.iter().enumerate() {
            for b in &ran[i + 1..] {
                if a.0 < b.1 && b.0 < a.1 {
                    assert!(a.2.iter().all(|g| !b.2.contains(g)), "{a:?} {b:?}");
                }
            }
        }
        // Runs start in study order (head-of-line): nothing overtakes the TP-4 run,
        // which starts as soon as the runs before it have ended.
        assert!(ran.windows(2).all(|w| w[0].0 <= w[1].0));
        let tp4 = ran[5];
        assert_eq!(tp4.0, ran[..5].iter().map(|r| r.1).max().unwrap());
        assert!(ran[6..].iter().all(|r| r.0 >= tp4.1));
        // TP-1 runs did run side by side.
        assert_eq!(ran[0].0, ran[3].0);
        assert_eq!(ran[6].0, ran[7].0);
    }

    #[test]
    fn runs_larger_than_the_pool_are_not_its_head() {
        // A TP-8 run (another worker's) does not block a 4-GPU pool.
        let mut runs: Vec<SimRun> = [8, 1, 2]
            .iter()
            .map(|&tp| SimRun {
                tp,
                duration: 5,
                ran: None,
            })
            .collect();
        simulate(&[0, 1, 2, 3], &mut runs);
        assert!(runs[0].ran.is_none());
        assert_eq!(runs[1].ran.as_ref().unwrap().0, 0);
        assert_eq!(runs[2].ran.as_ref().unwrap().0, 0);
        assert_eq!(runs[2].ran.as_ref().unwrap().2, vec![1, 2]);
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
