//! The scheduler: which pending run a lease takes, given the models the asking slot
//! has warm.
//!
//! Why: a resident harness keeps the model of its last run loaded, and loading one
//! costs seconds (a small model) to minutes (a large one, or a TP-8 engine). A study
//! in llem's interleaved order alternates models on purpose (against drift), so a
//! slot that simply takes the earliest pending run reloads at nearly every run. A
//! lease therefore carries the slot's warm `(engine, model)` pairs
//! (`LeaseRequest::warm`) and the coordinator may take a run a little later in study
//! order that needs no load, within a bound, so that no run waits for ever.
//!
//! Pure: the store hands in the candidates as it reads them from the manifest (the
//! first [`WarmPolicy::window`] pending runs the slot may take, in study order: lowest
//! campaign first, then the campaign's execution order), each with the number of
//! times it was passed over already (kept in its run record, so the bound survives a
//! coordinator restart), and writes back what the choice says.
//!
//! Goals, in priority order:
//!
//! 1. **Capability match.** Only runs the slot can host are candidates: an engine the
//!    worker registered, exactly the slot's GPU count (a dynamic pool: at most the
//!    pool's size, see `gpus::pool_grant`). The store filters them (its pending index
//!    is keyed by engine and GPU count); the choice is always one of the candidates.
//! 2. **Warm affinity.** The earliest candidate whose `(engine, model)` the slot has
//!    warm, so that the run finds its model loaded.
//! 3. **Bounded skip (no starvation).** Goal 2 works only within this hard limit: a
//!    run is passed over (a later candidate taken while it was one) at most
//!    [`WarmPolicy::max_passed_over`] times; once it has been, no lease takes a run
//!    after it until it has been taken (the lease takes the earliest candidate
//!    instead). And only the first [`WarmPolicy::window`] candidates are looked at.
//!    So of the runs after a run in study order, at most `max_passed_over` start
//!    before it (among runs the same slots could take).
//! 4. **Study order.** Otherwise (no warm set, nothing warm within the window, or the
//!    bound reached) the earliest candidate, exactly as without warm affinity. Runs of
//!    the same `(engine, model)` are never reordered among themselves (they are warm
//!    or cold together), so a config's cycles keep their order.
//!
//! A dynamic pool (`gpus::pool_grant`) keeps its head-of-line rule first: if the
//! earliest candidate needs more GPUs than are free, nothing is granted. Warm affinity
//! then takes a later run only if the earliest one still fits in the GPUs left after
//! it ([`choose_in_pool`]), so a large run is never made to wait for a run to end by
//! a warm one; it waits at most for the next lease call.

use crate::gpus::{pool_grant, PoolGrant};

/// At most this many later runs start before a run (see the module documentation).
/// With two models alternating on one slot this loads about once per five runs
/// instead of at every run, while no run moves more than four places in study order
/// (and runs of one model keep their order).
pub const MAX_PASSED_OVER: u32 = 4;

/// A lease looks at most this many candidates ahead for a warm one (each is a record
/// the store reads, and each one passed over is a record it writes).
pub const WINDOW: usize = 16;

/// A pending run a lease may take, as the store sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub engine: &'a str,
    /// The run's `task.model`.
    pub model: &'a str,
    /// GPUs it needs (its tensor-parallel size); read by [`choose_in_pool`] only.
    pub gpus: u32,
    /// How many times a later run was taken while it was a candidate.
    pub passed_over: u32,
}

/// The bound of goal 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarmPolicy {
    /// A run passed over this many times is not passed over again (0: warm affinity
    /// off, every lease takes the earliest candidate).
    pub max_passed_over: u32,
    /// How many candidates a lease looks at (at least 1).
    pub window: usize,
}

impl Default for WarmPolicy {
    fn default() -> Self {
        WarmPolicy {
            max_passed_over: MAX_PASSED_OVER,
            window: WINDOW,
        }
    }
}

/// What a dynamic pool's lease does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolChoice {
    /// Grant `candidates[i]`; `candidates[..i]` are passed over.
    Take(usize),
    /// Grant nothing: the earliest candidate needs `needs_gpus`, more than are free.
    Blocked { needs_gpus: u32 },
}

/// Which candidate an exact-size lease takes: `Some(i)` grants `candidates[i]`, and
/// each of `candidates[..i]` is passed over once more (the caller records that);
/// `None` when there is no candidate. `candidates` are in study order, `warm` the
/// slot's warm `(engine, model)` pairs.
pub fn choose(
    candidates: &[Candidate],
    warm: &[(String, String)],
    policy: &WarmPolicy,
) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    Some(scan(candidates, warm, policy, |_| true))
}

/// [`choose`] for a dynamic pool with `free_gpus` GPUs free: the head-of-line rule
/// (`gpus::pool_grant`) on the earliest candidate first; then a later warm candidate
/// only if it and the earliest one fit in the free GPUs together. `None` when there
/// is no candidate.
pub fn choose_in_pool(
    candidates: &[Candidate],
    warm: &[(String, String)],
    free_gpus: u32,
    policy: &WarmPolicy,
) -> Option<PoolChoice> {
    let head = candidates.first()?;
    if let PoolGrant::Blocked { needs_gpus } = pool_grant(head.gpus, free_gpus) {
        return Some(PoolChoice::Blocked { needs_gpus });
    }
    let room = free_gpus - head.gpus.max(1);
    Some(PoolChoice::Take(scan(candidates, warm, policy, |c| {
        c.gpus.max(1) <= room
    })))
}

/// Whether `c`'s model is loaded in one of the slot's harnesses.
pub fn is_warm(c: &Candidate, warm: &[(String, String)]) -> bool {
    warm.iter().any(|(e, m)| e == c.engine && m == c.model)
}

/// The earliest warm candidate within the window that `admits` (a later one than
/// the first only if it may be), unless a run before it may not be passed over
/// again; otherwise the first.
fn scan(
    candidates: &[Candidate],
    warm: &[(String, String)],
    policy: &WarmPolicy,
    admits: impl Fn(&Candidate) -> bool,
) -> usize {
    if warm.is_empty() {
        return 0;
    }
    for (i, c) in candidates.iter().enumerate().take(policy.window.max(1)) {
        if is_warm(c, warm) && (i == 0 || admits(c)) {
            return i;
        }
        // Taking a later run would pass this one over once too often.
        if c.passed_over >= policy.max_passed_over {
            return 0;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic xorshift64.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const ENGINES: [&str; 2] = ["synthetic", "vllm"];
    const MODELS: [&str; 4] = ["a", "b", "c", "d"];

    /// A pending run in a simulation: its place in study order and what it is.
    #[derive(Clone, Debug)]
    struct Run {
        seq: usize,
        engine: &'static str,
        model: &'static str,
        gpus: u32,
        passed_over: u32,
    }

    fn random_run(rng: &mut XorShift, seq: usize, max_gpus: u32) -> Run {
        Run {
            seq,
            engine: ENGINES[rng.below(2) as usize],
            model: MODELS[rng.below(4) as usize],
            gpus: 1 + rng.below(max_gpus as u64) as u32,
            passed_over: 0,
        }
    }

    fn random_warm(rng: &mut XorShift) -> Vec<(String, String)> {
        (0..rng.below(3))
            .map(|_| {
                (
                    ENGINES[rng.below(2) as usize].to_string(),
                    MODELS[rng.below(4) as usize].to_string(),
                )
            })
            .collect()
    }

    fn candidates(runs: &[Run], window: usize) -> Vec<Candidate<'_>> {
        runs.iter()
            .take(window)
            .map(|r| Candidate {
                engine: r.engine,
                model: r.model,
                gpus: r.gpus,
                passed_over: r.passed_over,
            })
            .collect()
    }

    fn cand(engine: &'static str, model: &'static str, passed_over: u32) -> Candidate<'static> {
        Candidate {
            engine,
            model,
            gpus: 1,
            passed_over,
        }
    }

    fn warm(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(e, m)| (e.to_string(), m.to_string()))
            .collect()
    }

    /// The choice a reader of the module documentation expects, written plainly: the
    /// earliest warm candidate within the window with no run before it at the bound;
    /// else the first.
    fn expected(c: &[Candidate], w: &[(String, String)], p: &WarmPolicy) -> usize {
        let limit = c.len().min(p.window.max(1));
        (0..limit)
            .find(|&j| {
                is_warm(&c[j], w) && c[..j].iter().all(|x| x.passed_over < p.max_passed_over)
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_warm_run_is_taken_before_earlier_cold_ones() {
        let c = [
            cand("synthetic", "a", 0),
            cand("synthetic", "b", 0),
            cand("synthetic", "a", 0),
        ];
        let p = WarmPolicy::default();
        assert_eq!(choose(&c, &warm(&[("synthetic", "b")]), &p), Some(1));
        // The same model under another engine is not warm.
        assert_eq!(choose(&c, &warm(&[("vllm", "b")]), &p), Some(0));
        assert_eq!(choose(&c, &[], &p), Some(0));
        assert_eq!(choose(&[], &warm(&[("synthetic", "b")]), &p), None);
    }

    #[test]
    fn a_run_at_the_bound_is_not_passed_over_again() {
        let p = WarmPolicy::default();
        let w = warm(&[("synthetic", "b")]);
        let c = [
            cand("synthetic", "a", MAX_PASSED_OVER),
            cand("synthetic", "b", 0),
        ];
        assert_eq!(choose(&c, &w, &p), Some(0));
        // Nor a run at the bound behind the first one: the lease takes the first.
        let c = [
            cand("synthetic", "a", 0),
            cand("synthetic", "c", MAX_PASSED_OVER),
            cand("synthetic", "b", 0),
        ];
        assert_eq!(choose(&c, &w, &p), Some(0));
        // A warm run before it is fine: nobody at the bound is passed.
        let c = [
            cand("synthetic", "a", 1),
            cand("synthetic", "b", 0),
            cand("synthetic", "c", MAX_PASSED_OVER),
        ];
        assert_eq!(choose(&c, &w, &p), Some(1));
        // Nothing warm within the window: the first.
        let window = WarmPolicy {
            window: 1,
            ..WarmPolicy::default()
        };
        let c = [cand("synthetic", "a", 0), cand("synthetic", "b", 0)];
        assert_eq!(choose(&c, &w, &window), Some(0));
        // Warm affinity off.
        let off = WarmPolicy {
            max_passed_over: 0,
            ..WarmPolicy::default()
        };
        assert_eq!(choose(&c, &w, &off), Some(0));
    }

    #[test]
    fn a_dynamic_pool_keeps_its_head_of_line_rule() {
        let p = WarmPolicy::default();
        let w = warm(&[("synthetic", "b")]);
        let run = |model: &'static str, gpus: u32| Candidate {
            engine: "synthetic",
            model,
            gpus,
            passed_over: 0,
        };
        // The head needs 4, only 2 are free: nothing, however warm the rest.
        let c = [run("a", 4), run("b", 1)];
        assert_eq!(
            choose_in_pool(&c, &w, 2, &p),
            Some(PoolChoice::Blocked { needs_gpus: 4 })
        );
        // The head fits and would still fit beside the warm run: the warm one.
        let c = [run("a", 2), run("b", 1)];
        assert_eq!(choose_in_pool(&c, &w, 4, &p), Some(PoolChoice::Take(1)));
        // It would not: the head.
        assert_eq!(choose_in_pool(&c, &w, 2, &p), Some(PoolChoice::Take(0)));
        assert_eq!(choose_in_pool(&[], &w, 2, &p), None);
    }

    /// Random candidate lists, warm sets and bounds: the choice is a candidate, the
    /// first with no warm set, else the earliest warm one within the bound, and
    /// the earliest of its own (engine, model).
    #[test]
    fn the_choice_follows_the_goals_on_random_inputs() {
        let mut rng = XorShift(0x5c4e_d01e_0000_0001);
        for _ in 0..20_000 {
            let n = rng.below(12) as usize;
            let runs: Vec<Run> = (0..n)
                .map(|seq| {
                    let mut r = random_run(&mut rng, seq, 1);
                    r.passed_over = rng.below(6) as u32;
                    r
                })
                .collect();
            let c = candidates(&runs, n);
            let w = random_warm(&mut rng);
            let p = WarmPolicy {
                max_passed_over: rng.below(6) as u32,
                window: rng.below(14) as usize,
            };
            let Some(i) = choose(&c, &w, &p) else {
                assert!(c.is_empty());
                continue;
            };
            assert!(i < c.len(), "the choice is a candidate");
            assert_eq!(choose(&c, &[], &p), Some(0), "no warm set: the first");
            assert_eq!(i, expected(&c, &w, &p), "{c:?} {w:?} {p:?}");
            if i > 0 {
                assert!(is_warm(&c[i], &w), "a later run only when warm");
                assert!(i < p.window.max(1), "within the window");
                assert!(c[..i].iter().all(|x| x.passed_over < p.max_passed_over));
            }
            let same = |x: &Candidate| x.engine == c[i].engine && x.model == c[i].model;
            assert_eq!(
                c.iter().position(same),
                Some(i),
                "one model's runs keep their order"
            );
        }
    }

    /// Leases in a row, each with a random warm set, on a queue that keeps growing
    /// (new runs at the end): no run ever has more than the bound of later runs
    /// taken before it (counted here from the order, not from the counters the
    /// scheduler reads), and the first run is always taken within bound + 1 leases.
    #[test]
    fn no_run_is_passed_over_more_than_the_bound() {
        let mut rng = XorShift(0xfeed_beef_1234_5678);
        for round in 0..300 {
            let p = WarmPolicy {
                max_passed_over: rng.below(6) as u32,
                window: 1 + rng.below(20) as usize,
            };
            let pool = round % 2 == 1;
            let mut pending: Vec<Run> = Vec::new();
            let mut next_seq = 0;
            let mut taken: Vec<usize> = Vec::new();
            // Per run: grants while it was the first pending run that took another.
            let mut head_passes: std::collections::HashMap<usize, u32> = Default::default();
            for _ in 0..400 {
                for _ in 0..rng.below(3) {
                    pending.push(random_run(&mut rng, next_seq, if pool { 4 } else { 1 }));
                    next_seq += 1;
                }
                let w = random_warm(&mut rng);
                let c = candidates(&pending, p.window);
                let i = if pool {
                    match choose_in_pool(&c, &w, 1 + rng.below(4) as u32, &p) {
                        None | Some(PoolChoice::Blocked { .. }) => continue,
                        Some(PoolChoice::Take(i)) => i,
                    }
                } else {
                    match choose(&c, &w, &p) {
                        None => continue,
                        Some(i) => i,
                    }
                };
                if i > 0 {
                    let n = head_passes.entry(pending[0].seq).or_default();
                    *n += 1;
                    assert!(*n <= p.max_passed_over, "the first run waited too long");
                }
                for r in &mut pending[..i] {
                    r.passed_over += 1;
                }
                taken.push(pending.remove(i).seq);
            }
            for (k, &seq) in taken.iter().enumerate() {
                let overtaken_by = taken[..k].iter().filter(|&&s| s > seq).count() as u32;
                assert!(
                    overtaken_by <= p.max_passed_over,
                    "run {seq} was overtaken {overtaken_by} times, bound {}",
                    p.max_passed_over
                );
            }
            for r in &pending {
                assert!(r.passed_over <= p.max_passed_over);
                let overtaken_by = taken.iter().filter(|&&s| s > r.seq).count() as u32;
                assert!(overtaken_by <= p.max_passed_over);
            }
        }
    }

    /// Two models alternating in study order on one slot: with warm affinity the slot
    /// loads far less often than in study order, and every run is taken once.
    #[test]
    fn alternating_models_load_less_often() {
        let models = ["a", "b"];
        let mut pending: Vec<Run> = (0..40)
            .map(|seq| Run {
                seq,
                engine: "synthetic",
                model: models[seq % 2],
                gpus: 1,
                passed_over: 0,
            })
            .collect();
        let p = WarmPolicy::default();
        let (mut loads, mut loaded, mut taken) = (0, None, Vec::new());
        while !pending.is_empty() {
            let w: Vec<(String, String)> = loaded
                .iter()
                .map(|m: &&str| ("synthetic".to_string(), m.to_string()))
                .collect();
            let i = choose(&candidates(&pending, p.window), &w, &p).unwrap();
            for r in &mut pending[..i] {
                r.passed_over += 1;
            }
            let run = pending.remove(i);
            if loaded != Some(run.model) {
                loads += 1;
                loaded = Some(run.model);
            }
            taken.push(run.seq);
        }
        taken.sort_unstable();
        assert_eq!(taken, (0..40).collect::<Vec<_>>(), "every run once");
        // Study order would load 40 times.
        assert!(loads <= 10, "{loads} loads");
    }
}
