//! `lem-worker --exit-when-idle`: leave when the coordinator has no work this worker
//! can take, so a batch scheduler's allocation (a Slurm job, docs/slurm.md) is given
//! back instead of idling until its time limit.
//!
//! **The rule.** A slot is *idle* when the coordinator answered its `lease` call
//! `no_work` after holding the call for its whole wait (the 20 s long poll): all that
//! time no run was pending that this slot could take (engine, GPU count, runtime). A
//! `no_work` answered early does not count: a coordinator that is stopping answers at
//! once, and a restart must not send every worker home. The worker leaves when every
//! slot is idle at once, with no run in progress on any of them, and it has either
//! been granted a run since it started or `--idle-grace` (default 5 minutes) has
//! passed since then, so a worker that starts before the campaign is submitted waits
//! for it. It then stops its harnesses, deregisters and exits 0.
//!
//! It stays while anything it could do is left: a slot running a run (the others go
//! on asking, so work that comes back is taken at once), a slot waiting at the
//! thermal gate, for a GPU another process holds (`--device-isolation refuse`), for
//! its journal to be writable, or for an unreachable coordinator, and a dynamic pool
//! whose next run waits for GPUs (`blocked`). Runs leased to *other* workers do not
//! keep it: if one of those leases expires later (its node died) the run is pending
//! again with nobody to take it until a worker starts (`lem-coord status` says so);
//! an idle allocation is not held against that chance.
//!
//! **No lease is lost on the way out.** Slots do not stop mid-call: a slot found idle
//! while another slot is still asking waits (it does not ask again) until either that
//! slot is granted a run, and then it asks again, or that slot is found idle too, and
//! then all leave. So when the worker leaves no `lease` call is in flight, and no run
//! can be granted to a worker that is gone. In a dynamic pool only one lane asks at a
//! time, with every free GPU reserved; a `no_work` with every GPU of the pool free is
//! the whole worker's answer, and the worker leaves at once.

use std::sync::Mutex;
use std::time::Duration;

pub use lem_common::idle::{full_poll, parse_grace, DEFAULT_GRACE};
use tokio::sync::watch;
use tokio::time::Instant;

/// What a slot is doing, as far as leaving goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Asking, or about to ask, or waiting for something before it asks (the
    /// thermal gate, the journal, the coordinator): not idle.
    Active,
    /// A run is in progress.
    Busy,
    /// Answered `no_work` after a full long poll; not asking until told.
    Idle,
}

/// What a slot does after a lease call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Ask again.
    Lease,
    /// Stop asking and [`IdleExit::wait`]: every slot not idle is asking now.
    Wait,
    /// Every slot is idle: leave.
    Leave,
}

struct State {
    slots: Vec<SlotState>,
    /// A run was granted to this worker since it started.
    seen_work: bool,
    left: bool,
}

/// The worker's slots' shared view for `--exit-when-idle` (module docs).
pub struct IdleExit {
    grace: Duration,
    started: Instant,
    state: Mutex<State>,
    /// Bumped at every change a waiting slot must look at.
    changed: watch::Sender<u64>,
    /// Turns true when the worker leaves.
    leave: watch::Sender<bool>,
}

impl IdleExit {
    /// For a worker of `slots` slots (lease lanes, for a dynamic pool).
    pub fn new(slots: usize, grace: Duration) -> IdleExit {
        IdleExit {
            grace,
            started: Instant::now(),
            state: Mutex::new(State {
                slots: vec![SlotState::Active; slots.max(1)],
                seen_work: false,
                left: false,
            }),
            changed: watch::channel(0).0,
            leave: watch::channel(false).0,
        }
    }

    /// Turns true when the worker leaves.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leave.subscribe()
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    fn set(&self, slot: u32, to: SlotState) {
        let mut s = self.state.lock().expect("idle state lock");
        if let Some(x) = s.slots.get_mut(slot as usize) {
            *x = to;
        }
        if to == SlotState::Busy {
            s.seen_work = true;
            // Work came: the slots waiting idle ask again.
            for x in s.slots.iter_mut().filter(|x| **x == SlotState::Idle) {
                *x = SlotState::Active;
            }
        }
        drop(s);
        self.changed.send_modify(|n| *n += 1);
    }

    /// `slot` was granted a run.
    pub fn granted(&self, slot: u32) {
        self.set(slot, SlotState::Busy);
    }

    /// `slot`'s run ended (reported).
    pub fn run_ended(&self, slot: u32) {
        self.set(slot, SlotState::Active);
    }

    /// The grace is over: a run was granted, or `--idle-grace` has passed.
    fn may_leave(&self, s: &State) -> bool {
        s.seen_work || self.started.elapsed() >= self.grace
    }

    fn leave_now(&self, s: &mut State) {
        s.left = true;
        self.leave.send_replace(true);
        self.changed.send_modify(|n| *n += 1);
    }

    /// `slot` was answered `no_work` after a full long poll ([`full_poll`]); what it
    /// does next.
    pub fn no_work(&self, slot: u32) -> Next {
        let mut s = self.state.lock().expect("idle state lock");
        if s.left {
            return Next::Leave;
        }
        let me = slot as usize;
        let others_busy = s
            .slots
            .iter()
            .enumerate()
            .any(|(i, x)| i != me && *x == SlotState::Busy);
        if !self.may_leave(&s) || others_busy {
            // Another slot's run may end in work coming back (or new work may come
            // while it runs): keep asking.
            if let Some(x) = s.slots.get_mut(me) {
                *x = SlotState::Active;
            }
            return Next::Lease;
        }
        if let Some(x) = s.slots.get_mut(me) {
            *x = SlotState::Idle;
        }
        if s.slots.iter().all(|x| *x == SlotState::Idle) {
            self.leave_now(&mut s);
            return Next::Leave;
        }
        drop(s);
        self.changed.send_modify(|n| *n += 1);
        Next::Wait
    }

    /// A dynamic pool's lane was answered `no_work` after a full long poll with every
    /// GPU of the pool free: nothing runs and nothing can be leased. True when the
    /// worker leaves (the grace is over).
    pub fn pool_idle(&self) -> bool {
        let mut s = self.state.lock().expect("idle state lock");
        if s.left {
            return true;
        }
        if !self.may_leave(&s) {
            return false;
        }
        self.leave_now(&mut s);
        true
    }

    /// An idle `slot` waits: true when the worker leaves (every slot idle) or `stop`
    /// fires; false when another slot was granted a run, so `slot` asks again.
    pub async fn wait(&self, slot: u32, stop: &watch::Receiver<bool>) -> bool {
        let mut changed = self.changed.subscribe();
        let mut stop = stop.clone();
        loop {
            {
                let s = self.state.lock().expect("idle state lock");
                if s.left {
                    return true;
                }
                if s.slots.get(slot as usize) != Some(&SlotState::Idle) {
                    // Another slot was granted a run meanwhile.
                    return false;
                }
            }
            if *stop.borrow() {
                return true;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return true },
                _ = stop.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn before_any_run_a_worker_stays_for_the_grace() {
        let idle = IdleExit::new(1, Duration::from_secs(3600));
        assert_eq!(idle.no_work(0), Next::Lease, "no run seen, grace not over");
        idle.granted(0);
        idle.run_ended(0);
        assert_eq!(idle.no_work(0), Next::Leave, "after a run, idle is idle");
        assert!(*idle.subscribe().borrow());

        let idle = IdleExit::new(1, Duration::ZERO);
        assert_eq!(
            idle.no_work(0),
            Next::Leave,
            "no grace: the first idle poll"
        );
    }

    #[tokio::test]
    async fn a_slot_keeps_asking_while_another_runs() {
        let idle = IdleExit::new(2, Duration::ZERO);
        idle.granted(1);
        assert_eq!(idle.no_work(0), Next::Lease);
        assert_eq!(idle.no_work(0), Next::Lease);
        idle.run_ended(1);
        // Slot 1 asks now; slot 0 waits for its answer instead of asking again.
        assert_eq!(idle.no_work(0), Next::Wait);
        assert!(!*idle.subscribe().borrow());
        assert_eq!(idle.no_work(1), Next::Leave);
        let stop = watch::channel(false).1;
        assert!(idle.wait(0, &stop).await, "the waiting slot leaves too");
    }

    #[tokio::test]
    async fn a_waiting_slot_asks_again_when_another_is_granted_a_run() {
        let idle = std::sync::Arc::new(IdleExit::new(2, Duration::ZERO));
        assert_eq!(idle.no_work(0), Next::Wait);
        let stop = watch::channel(false).1;
        let waiter = {
            let (idle, stop) = (idle.clone(), stop.clone());
            tokio::spawn(async move { idle.wait(0, &stop).await })
        };
        tokio::task::yield_now().await;
        idle.granted(1);
        assert!(!waiter.await.unwrap(), "asks again");
        // Slot 0 asks and is idle while slot 1 runs: it asks on.
        assert_eq!(idle.no_work(0), Next::Lease);
        idle.run_ended(1);
        assert_eq!(idle.no_work(1), Next::Wait);
        assert_eq!(idle.no_work(0), Next::Leave);
    }

    #[tokio::test]
    async fn a_stop_ends_the_wait() {
        let idle = IdleExit::new(2, Duration::ZERO);
        assert_eq!(idle.no_work(0), Next::Wait);
        let (tx, rx) = watch::channel(false);
        tx.send(true).unwrap();
        assert!(idle.wait(0, &rx).await);
    }

    #[tokio::test]
    async fn a_dynamic_pool_leaves_once_the_grace_is_over() {
        let idle = IdleExit::new(4, Duration::from_secs(3600));
        assert!(!idle.pool_idle());
        idle.granted(2);
        idle.run_ended(2);
        assert!(idle.pool_idle());
        assert!(*idle.subscribe().borrow());
    }
}
