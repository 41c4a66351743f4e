//! A dynamic GPU pool (`lem-worker --gpu-groups dynamic`): what the lease lanes of
//! one worker share.
//!
//! The worker's GPUs form one pool and each run gets a group of its own size, formed
//! from the GPUs free when it is leased. The bookkeeping of which GPU is free,
//! reserved or busy is the pure [`GpuPool`]; the rule for which GPUs a run gets is
//! `lem_common::gpus::choose_gpus`, and the head-of-line rule the coordinator applies
//! is `lem_common::gpus::pool_grant` (module docs there). This module keeps the rest:
//! every GPU's sampler and load sink (started once, used by whichever run has the GPU),
//! the idle harnesses kept warm per device set, what was measured per device set
//! (baselines), when each GPU's last run ended (the thermal gate's gap), and the turn
//! that lets one lane at a time ask the coordinator.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lem_common::gpus::{GpuPool, PoolError};
use tokio::sync::watch;

use crate::clock::mono_ns;
use crate::env::Environment;
use crate::harness_runtime::{HarnessFactory, HarnessRuntime};
use crate::telemetry::{FanOutLoad, LoadSink, Sampler};

/// One GPU of the pool, with what measures it.
pub struct PoolGpu {
    pub index: u32,
    pub sampler: Arc<Sampler>,
    pub load: Arc<dyn LoadSink>,
    /// The GPU's environment snapshot.
    pub snapshot: serde_json::Value,
}

/// An idle harness kept warm: the GPUs it sees and the model it last ran.
pub struct Shelved {
    pub gpus: Vec<u32>,
    pub model: Option<String>,
    /// The `(engine, model)` its last run loaded, when that run succeeded: what a
    /// lease reports warm ([`DynPool::warm_models`]).
    pub loaded: Option<(String, String)>,
    pub harness: Box<dyn HarnessRuntime>,
}

/// What runs on one device set measured, kept for the next run on the same set.
pub type SetState = lem_common::run::baseline::BaselineCache;

/// The state a dynamic worker's lanes share.
pub struct DynPool {
    gpus: Vec<PoolGpu>,
    state: Mutex<GpuPool>,
    /// Bumped whenever a run's GPUs are released, so a lane waiting for GPUs wakes.
    released: watch::Sender<u64>,
    /// One lane at a time reserves GPUs and asks the coordinator, so the free GPUs
    /// are never split between two asking lanes (each would then be too small for a
    /// run that the two halves together could host).
    pub turn: tokio::sync::Mutex<()>,
    /// Idle harnesses; each one's GPUs are all free (a run that takes any of them
    /// stops the harness first, unless it sees exactly the run's GPUs). Held across
    /// those stops, so a run on a GPU of a harness being stopped waits for the stop.
    shelf: tokio::sync::Mutex<Vec<Shelved>>,
    /// Baselines per device set (sorted GPU indices).
    sets: Mutex<HashMap<Vec<u32>, SetState>>,
    /// Per GPU: when its last run ended, and that run's gap.
    last_end: Mutex<HashMap<u32, (tokio::time::Instant, f64)>>,
    factory: Arc<dyn HarnessFactory>,
    data_dir: PathBuf,
    /// Real GPUs: each harness gets `CUDA_VISIBLE_DEVICES` of its set.
    real_gpus: bool,
    host_env: serde_json::Value,
}

/// The directory of the harness that sees `gpus` (`DATA_DIR/gpus-0-1`): its socket
/// and its log.
pub fn set_dir(data_dir: &Path, gpus: &[u32]) -> PathBuf {
    let names: Vec<String> = gpus.iter().map(u32::to_string).collect();
    data_dir.join(format!("gpus-{}", names.join("-")))
}

/// The environment snapshot of a group of GPUs: the GPU's own for one, else all of
/// them under `group`.
pub fn group_snapshot(snapshots: &[serde_json::Value]) -> serde_json::Value {
    match snapshots {
        [one] => one.clone(),
        many => serde_json::json!({"group": many}),
    }
}

impl DynPool {
    pub fn new(
        gpus: Vec<PoolGpu>,
        factory: Arc<dyn HarnessFactory>,
        data_dir: &Path,
        real_gpus: bool,
        host_env: serde_json::Value,
    ) -> DynPool {
        let indices: Vec<u32> = gpus.iter().map(|g| g.index).collect();
        DynPool {
            state: Mutex::new(GpuPool::new(&indices)),
            gpus,
            released: watch::channel(0).0,
            turn: tokio::sync::Mutex::new(()),
            shelf: tokio::sync::Mutex::new(Vec::new()),
            sets: Mutex::new(HashMap::new()),
            last_end: Mutex::new(HashMap::new()),
            factory,
            data_dir: data_dir.to_path_buf(),
            real_gpus,
            host_env,
        }
    }

    /// GPUs in the pool.
    pub fn size(&self) -> u32 {
        self.gpus.len() as u32
    }

    /// A harness for `gpus`, not started (the run starts it).
    pub fn new_harness(&self, gpus: &[u32]) -> Box<dyn HarnessRuntime> {
        let env = if self.real_gpus {
            crate::harness_gpu_env(gpus)
        } else {
            vec![]
        };
        let dir = set_dir(&self.data_dir, gpus);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the harness directory");
        }
        self.factory
            .make(&dir, gpus.first().copied().unwrap_or(0), gpus, env)
    }

    /// What a lane holds while it has no run: a harness never started.
    pub fn placeholder_harness(&self, lane: u32) -> Box<dyn HarnessRuntime> {
        self.factory.make(
            &self.data_dir.join(format!("lane-{lane}")),
            lane,
            &[],
            vec![],
        )
    }

    /// Waits until a GPU is free and reserves every free one (the caller holds the
    /// turn). The receiver, subscribed before reserving, sees every later release.
    pub async fn reserve(&self) -> (Vec<u32>, watch::Receiver<u64>) {
        loop {
            let mut released = self.released.subscribe();
            let reserved = self.state.lock().expect("pool lock").reserve_free();
            if !reserved.is_empty() {
                return (reserved, released);
            }
            // The sender lives as long as the pool, so this only returns on a release.
            let _ = released.changed().await;
        }
    }

    pub fn unreserve(&self, reserved: &[u32]) {
        if let Err(e) = self.state.lock().expect("pool lock").unreserve(reserved) {
            tracing::error!(error = %e, "pool bookkeeping (a worker bug)");
        }
    }

    /// The run's GPUs `run` become busy; the rest of `reserved` is free again.
    pub fn keep(&self, reserved: &[u32], run: &[u32]) -> Result<(), PoolError> {
        self.state.lock().expect("pool lock").keep(reserved, run)
    }

    /// A run on `gpus` ended at `ended` (its gap `gap_s`): they are free again.
    pub fn release(&self, gpus: &[u32], ended: Option<(tokio::time::Instant, f64)>) {
        if let Some(end) = ended {
            let mut last = self.last_end.lock().expect("last_end lock");
            for g in gpus {
                last.insert(*g, end);
            }
        }
        if let Err(e) = self.state.lock().expect("pool lock").release(gpus) {
            tracing::error!(error = %e, "pool bookkeeping (a worker bug)");
        }
        self.released.send_modify(|n| *n += 1);
    }

    /// The device sets a run of `model` would best get, best first: warm harnesses
    /// with that model, other warm harnesses, then sets measured before (their
    /// baselines are cached).
    pub async fn preferred_sets(&self, model: &str) -> Vec<Vec<u32>> {
        let shelf = self.shelf.lock().await;
        let mut out: Vec<Vec<u32>> = shelf
            .iter()
            .filter(|s| s.model.as_deref() == Some(model))
            .chain(shelf.iter().filter(|s| s.model.as_deref() != Some(model)))
            .map(|s| s.gpus.clone())
            .collect();
        let mut measured: Vec<Vec<u32>> = self
            .sets
            .lock()
            .expect("sets lock")
            .iter()
            .filter(|(_, st)| st.device.is_some())
            .map(|(set, _)| set.clone())
            .collect();
        measured.sort();
        out.extend(measured);
        out
    }

    /// The `(engine, model)` pairs loaded in idle harnesses whose GPUs are all in
    /// `free` (a lane's reservation): the lease's warm set, so the coordinator may
    /// grant a run that finds its model loaded (`lem_common::schedule`).
    pub async fn warm_models(&self, free: &[u32]) -> Vec<(String, String)> {
        let mut shelf = self.shelf.lock().await;
        let mut warm = Vec::new();
        for s in shelf.iter_mut() {
            if let Some(pair) = &s.loaded {
                let usable = s.gpus.iter().all(|g| free.contains(g));
                if usable && s.harness.is_running() && !warm.contains(pair) {
                    warm.push(pair.clone());
                }
            }
        }
        warm
    }

    /// The harness for a run on `gpus`: the idle one that sees exactly these GPUs,
    /// or a new one. Idle harnesses that see any of these GPUs are stopped (they
    /// would hold memory and a CUDA context on the run's GPUs, and the device
    /// baseline must see none of ours).
    pub async fn take_harness(&self, gpus: &[u32]) -> Box<dyn HarnessRuntime> {
        let mut shelf = self.shelf.lock().await;
        let mut exact = None;
        let mut evicted = Vec::new();
        for s in std::mem::take(&mut *shelf) {
            if s.gpus == gpus && exact.is_none() {
                exact = Some(s.harness);
            } else if s.gpus.iter().any(|g| gpus.contains(g)) {
                evicted.push(s);
            } else {
                shelf.push(s);
            }
        }
        for mut s in evicted {
            tracing::info!(gpus = ?s.gpus, run_gpus = ?gpus, "stopping an idle harness whose GPUs a run needs");
            s.harness.stop().await;
            self.load_of(&s.gpus).on_resident(false, mono_ns());
        }
        exact.unwrap_or_else(|| self.new_harness(gpus))
    }

    /// Keeps an idle harness warm for the next run on the same GPUs (one that is
    /// not running is dropped). `loaded`: the `(engine, model)` its last run loaded,
    /// if that run succeeded.
    pub async fn shelve(
        &self,
        gpus: &[u32],
        model: Option<String>,
        loaded: Option<(String, String)>,
        mut harness: Box<dyn HarnessRuntime>,
    ) {
        if !harness.is_running() {
            return;
        }
        self.shelf.lock().await.push(Shelved {
            gpus: gpus.to_vec(),
            model,
            loaded,
            harness,
        });
    }

    /// Stops every idle harness (the worker is stopping).
    pub async fn stop_all(&self) {
        let all = std::mem::take(&mut *self.shelf.lock().await);
        for mut s in all {
            s.harness.stop().await;
        }
    }

    pub fn take_state(&self, gpus: &[u32]) -> SetState {
        self.sets
            .lock()
            .expect("sets lock")
            .remove(gpus)
            .unwrap_or_default()
    }

    pub fn put_state(&self, gpus: &[u32], state: SetState) {
        self.sets
            .lock()
            .expect("sets lock")
            .insert(gpus.to_vec(), state);
    }

    /// The pool's GPUs `gpus`, in that order. Every index must be the pool's (the
    /// lanes only bind GPUs the pool reserved for them): a missing one would shift
    /// samplers against indices and label energy with the wrong GPU.
    fn of(&self, gpus: &[u32]) -> Vec<&PoolGpu> {
        gpus.iter()
            .map(|g| {
                self.gpus.iter().find(|p| p.index == *g).unwrap_or_else(|| {
                    panic!("GPU {g} is not in this worker's pool (a worker bug)")
                })
            })
            .collect()
    }

    pub fn samplers_of(&self, gpus: &[u32]) -> Vec<Arc<Sampler>> {
        self.of(gpus).iter().map(|g| g.sampler.clone()).collect()
    }

    pub fn load_of(&self, gpus: &[u32]) -> Arc<dyn LoadSink> {
        Arc::new(FanOutLoad(
            self.of(gpus).iter().map(|g| g.load.clone()).collect(),
        ))
    }

    pub fn environment_of(&self, gpus: &[u32]) -> Environment {
        let snapshots: Vec<serde_json::Value> =
            self.of(gpus).iter().map(|g| g.snapshot.clone()).collect();
        Environment::new(self.host_env.clone(), group_snapshot(&snapshots))
    }

    /// When the most recent run on any of `gpus` ended, and its gap: the thermal
    /// gate of a run on them counts its gap from there.
    pub fn last_run_of(&self, gpus: &[u32]) -> Option<(tokio::time::Instant, f64)> {
        let last = self.last_end.lock().expect("last_end lock");
        gpus.iter()
            .filter_map(|g| last.get(g).copied())
            .max_by_key(|(ended, _)| *ended)
    }
}
