//! The docker runtime: each slot's resident harness server is the main process of a
//! warm container, and each run is one request to it: by default over the server's
//! Unix socket, which lives in the slot's bind-mounted directory
//! ([`Dispatch::Socket`]), or as an `exec` of the harness client in the container
//! ([`Dispatch::Exec`], `lem-worker --docker-dispatch exec`). Both speak the same
//! harness protocol and see the same events; the socket saves Docker's exec (about
//! 60 ms a run on the 2-core development machine, docs/performance.md). Where the
//! socket cannot be used (a path over the kernel's 108-byte limit, a user-namespace
//! remap that makes it another user's), the worker execs instead.
//!
//! Why a container: the image pins the engine's libraries (and the worker pins the
//! image by id, from its allowlist), and the harness runs with no network, no added
//! capabilities, a read-only root and no host file beyond the slot's own directory.
//! Why warm: the container and its server are created once per (image, slot) and kept
//! while they answer, so a run of a model already loaded costs one `exec`, not a
//! container start and a model load (`lem-worker bench dispatch`, docs/performance.md).
//!
//! A run that breaks off (timeout, silence, cancel, the container killed) removes the
//! container; the next [`HarnessRuntime::ensure_started`] creates a fresh one. Every
//! container carries labels naming its worker, slot, image and data dir, so a worker
//! started on a data dir removes what a killed predecessor left ([`remove_stale`]).
//! Docker is reached only through its Engine API (bollard); the docker CLI is never run.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HostConfig, HostConfigLogConfig, Mount, MountType,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::future::BoxFuture;
use futures::StreamExt as _;
use lem_common::harness::HarnessEvent;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::harness_runtime::{EventSink, HarnessFactory, HarnessRuntime, Pong, RunLimits};
use crate::runtime::HarnessError;

/// The image `lem-worker --runtime docker` runs unless `--image` names another.
pub const DEFAULT_IMAGE: &str = lem_common::runner::DEFAULT_HARNESS_IMAGE;

/// How the worker sends a request to the harness server in a slot's container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dispatch {
    /// Over the server's Unix socket in the slot's bind-mounted directory: no
    /// process is started per run.
    #[default]
    Socket,
    /// An `exec` of the harness client in the container, the request on its stdin
    /// and the events on its stdout.
    Exec,
}

/// The longest socket path `connect` takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// `DATA_DIR/allowed-images`: image ids this worker may run, one per line.
pub const ALLOWED_IMAGES_FILE: &str = "allowed-images";

/// The worker's name.
pub const LABEL_WORKER: &str = "lem.worker";
/// The slot (or a dynamic pool's first GPU) the container serves.
pub const LABEL_SLOT: &str = "lem.slot";
/// The image as the worker was told it (`--image`).
pub const LABEL_IMAGE: &str = "lem.image";
/// The image's id (`sha256:...`), the one the container was created from.
pub const LABEL_IMAGE_DIGEST: &str = "lem.image-digest";
/// The worker's data dir (canonical): [`remove_stale`] finds containers by it.
pub const LABEL_DATA_DIR: &str = "lem.data-dir";

/// The image label `docker/images.sh` sets to the harness protocol version.
const IMAGE_LABEL_PROTOCOL: &str = "org.lem-fleet.protocol";
/// The image label `docker/images.sh` sets to the harness version.
const IMAGE_LABEL_HARNESS: &str = "org.lem-fleet.harness";
const IMAGE_LABEL_ENGINE_PIN: &str = "org.lem-fleet.engine-pin";
/// The harness protocol this worker speaks (docker/harness/README.md).
const HARNESS_PROTOCOL: &str = "1";

/// Where the image holds the harness.
const HARNESS_IN: &str = "/opt/lem/harness";
/// Where the slot's directory is mounted in the container.
const SLOT_DIR_IN: &str = "/run/lem";
const SOCKET_IN: &str = "/run/lem/harness.sock";
const LOG_IN: &str = "/run/lem/harness.log";
/// A dataset file copied into the slot's directory lands under here.
const DATASETS: &str = "datasets";

/// How long a fresh container may take to answer its first ping.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a ping of a running server may take.
const PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period between SIGTERM and SIGKILL when a container is stopped.
const STOP_GRACE_S: i32 = 5;
/// /dev/shm for PyTorch's inter-process tensors and NCCL (Docker's default is 64 MiB).
const SHM_SIZE_BYTES: i64 = 4 << 30;
/// A cap on the processes in one container (a fork bomb in an engine stops here).
const PIDS_LIMIT: i64 = 4096;

/// A failure before any container is made: reaching Docker, finding the image,
/// the allowlist.
#[derive(Debug, thiserror::Error)]
pub enum DockerSetupError {
    #[error("cannot reach the Docker daemon: {0} (is dockerd running? can this user use its socket, e.g. as a member of the docker group? DOCKER_HOST names another socket)")]
    Connect(String),
    #[error("image {image} is not in the local Docker: {reason} (build it with docker/images.sh, which ./quickstart.sh --runtime docker also runs; no registry is ever asked)")]
    ImageMissing { image: String, reason: String },
    #[error("image {image} ({id}) is not on this worker's allowlist: start the worker with --allow-image {id} (or --allow-image {image}, pinned to that id at start), or add the line {id} to {file}")]
    NotAllowed {
        image: String,
        id: String,
        file: PathBuf,
    },
    #[error("{file}:{line}: {text:?} is not an image id (one `sha256:` and 64 hex digits per line; `#` starts a comment)")]
    AllowFileLine {
        file: PathBuf,
        line: usize,
        text: String,
    },
    #[error("cannot read {file}: {reason}")]
    AllowFileRead { file: PathBuf, reason: String },
    #[error("image {image} ({id}) speaks harness protocol {found}; this worker speaks {HARNESS_PROTOCOL} (build the image from this worker's checkout with docker/images.sh)")]
    Protocol {
        image: String,
        id: String,
        found: String,
    },
    #[error("docker: {0}")]
    Api(String),
}

/// An image resolved to its id at start: containers are created from the id, so a
/// tag moved while the worker runs changes nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedImage {
    /// As given (`--image`).
    pub name: String,
    /// `sha256:...`.
    pub id: String,
    /// The harness version its label names (`docker/images.sh` sets it).
    pub harness_version: Option<String>,
    /// The engine and exact version an engine image was built for (label
    /// `org.lem-fleet.engine-pin`, e.g. `vllm==0.19.1`; docker/engine-images.sh).
    pub engine_pin: Option<String>,
}

/// Connects to the local Docker daemon (`DOCKER_HOST` or `/var/run/docker.sock`) and
/// agrees on an API version it speaks.
pub async fn connect() -> Result<Docker, DockerSetupError> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| DockerSetupError::Connect(e.to_string()))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| DockerSetupError::Connect(e.to_string()))
}

/// Resolves `name` (a tag or an id) to the image's id.
pub async fn resolve_image(docker: &Docker, name: &str) -> Result<PinnedImage, DockerSetupError> {
    let inspect = docker.inspect_image(name).await.map_err(|e| match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message,
        } => DockerSetupError::ImageMissing {
            image: name.to_string(),
            reason: message,
        },
        e => DockerSetupError::Api(format!("inspect image {name}: {e}")),
    })?;
    let id = inspect
        .id
        .ok_or_else(|| DockerSetupError::Api(format!("image {name} has no id")))?;
    let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    if let Some(found) = labels.get(IMAGE_LABEL_PROTOCOL) {
        if found != HARNESS_PROTOCOL {
            return Err(DockerSetupError::Protocol {
                image: name.to_string(),
                id,
                found: found.clone(),
            });
        }
    }
    Ok(PinnedImage {
        name: name.to_string(),
        id,
        harness_version: labels.get(IMAGE_LABEL_HARNESS).cloned(),
        engine_pin: labels.get(IMAGE_LABEL_ENGINE_PIN).cloned(),
    })
}

/// Whether `s` is an image id: `sha256:` and 64 lowercase hex digits.
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The ids an `allowed-images` file lists: one per line; blank lines and `#` comments
/// are skipped; anything else is an error naming the line.
pub fn parse_allowlist(text: &str, file: &Path) -> Result<Vec<String>, DockerSetupError> {
    let mut ids = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if !is_image_id(line) {
            return Err(DockerSetupError::AllowFileLine {
                file: file.to_path_buf(),
                line: i + 1,
                text: line.to_string(),
            });
        }
        ids.push(line.to_string());
    }
    Ok(ids)
}

/// The image ids this worker may run: each `--allow-image` (an id as it is, a name
/// resolved to its id now) and every id in `DATA_DIR/allowed-images`.
pub async fn allowed_ids(
    docker: &Docker,
    allow: &[String],
    data_dir: &Path,
) -> Result<BTreeSet<String>, DockerSetupError> {
    let mut ids = BTreeSet::new();
    for entry in allow {
        if is_image_id(entry) {
            ids.insert(entry.clone());
        } else {
            ids.insert(resolve_image(docker, entry).await?.id);
        }
    }
    let file = data_dir.join(ALLOWED_IMAGES_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => ids.extend(parse_allowlist(&text, &file)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(DockerSetupError::AllowFileRead {
                file,
                reason: e.to_string(),
            })
        }
    }
    Ok(ids)
}

/// Removes every container (running or not) labelled with this data dir: a worker
/// holds its data dir alone (the journal's lock), so any such container was left by
/// an earlier worker process that was killed. Returns the names removed.
pub async fn remove_stale(
    docker: &Docker,
    data_dir: &str,
) -> Result<Vec<String>, DockerSetupError> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_DATA_DIR}={data_dir}")])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let found = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| DockerSetupError::Api(format!("list containers: {e}")))?;
    let mut removed = Vec::new();
    for c in found {
        let Some(id) = c.id else { continue };
        let name = c
            .names
            .and_then(|n| n.first().cloned())
            .unwrap_or_else(|| id.clone());
        remove_container(docker, &id)
            .await
            .map_err(|e| DockerSetupError::Api(format!("remove container {name}: {e}")))?;
        removed.push(name.trim_start_matches('/').to_string());
    }
    Ok(removed)
}

/// Force-removes a container and its anonymous volumes; one already gone is fine.
async fn remove_container(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // "removal of container ... is already in progress"
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes [`DockerHarness`]es: `lem-worker --runtime docker`.
#[derive(Clone)]
pub struct DockerFactory {
    docker: Docker,
    image: PinnedImage,
    worker: String,
    /// The data dir, canonical: the value of [`LABEL_DATA_DIR`].
    data_dir: String,
    /// `uid:gid` the containers run as: the worker's own.
    user: String,
    /// Environment every container gets besides its GPUs' (the host's policy).
    env: Vec<(String, String)>,
    dispatch: Dispatch,
}

impl DockerFactory {
    /// A factory for the worker `worker` on `data_dir`, running `image`.
    pub fn new(docker: Docker, image: PinnedImage, worker: &str, data_dir: &Path) -> DockerFactory {
        let data_dir = data_dir
            .canonicalize()
            .unwrap_or_else(|_| absolute(data_dir));
        DockerFactory {
            docker,
            image,
            worker: worker.to_string(),
            data_dir: data_dir.to_string_lossy().into_owned(),
            user: own_user(),
            env: Vec::new(),
            dispatch: Dispatch::default(),
        }
    }

    /// The factory with its harnesses dispatching runs by `dispatch`.
    pub fn with_dispatch(mut self, dispatch: Dispatch) -> DockerFactory {
        self.dispatch = dispatch;
        self
    }

    /// The factory with `env` set in every container (the host's policy,
    /// [`crate::policy_env`]).
    pub fn with_env(mut self, env: Vec<(String, String)>) -> DockerFactory {
        self.env = env;
        self
    }

    /// What a worker does at start: connects to Docker, pins `image` to its id,
    /// refuses it unless the id is on the allowlist (`allow` and
    /// `DATA_DIR/allowed-images`), and removes the containers a killed earlier worker
    /// of this data dir left.
    pub async fn start(
        data_dir: &Path,
        worker: &str,
        image: &str,
        allow: &[String],
    ) -> Result<DockerFactory, DockerSetupError> {
        let docker = connect().await?;
        let pinned = resolve_image(&docker, image).await?;
        let allowed = allowed_ids(&docker, allow, data_dir).await?;
        if !allowed.contains(&pinned.id) {
            return Err(DockerSetupError::NotAllowed {
                image: pinned.name,
                id: pinned.id,
                file: data_dir.join(ALLOWED_IMAGES_FILE),
            });
        }
        let factory = DockerFactory::new(docker, pinned, worker, data_dir);
        let removed = remove_stale(&factory.docker, &factory.data_dir).await?;
        if !removed.is_empty() {
            tracing::warn!(containers = ?removed, "removed containers an earlier worker on this data dir left");
        }
        Ok(factory)
    }

    pub fn image(&self) -> &PinnedImage {
        &self.image
    }

    /// A harness in `dir` (not started), as [`HarnessFactory::make`].
    pub fn harness(
        &self,
        dir: &Path,
        slot: u32,
        gpus: &[u32],
        gpu_env: Vec<(String, String)>,
    ) -> DockerHarness {
        let dir = absolute(dir);
        let labels = HashMap::from([
            (LABEL_WORKER.to_string(), self.worker.clone()),
            (LABEL_SLOT.to_string(), slot.to_string()),
            (LABEL_IMAGE.to_string(), self.image.name.clone()),
            (LABEL_IMAGE_DIGEST.to_string(), self.image.id.clone()),
            (LABEL_DATA_DIR.to_string(), self.data_dir.clone()),
        ]);
        let spec = ContainerSpec {
            image_id: self.image.id.clone(),
            user: self.user.clone(),
            host_dir: dir.clone(),
            slot,
            // The simulated GPU (no GPU environment) asks for no device.
            gpus: if gpu_env.is_empty() {
                vec![]
            } else {
                gpus.to_vec()
            },
            env: container_gpu_env(gpus, &gpu_env)
                .into_iter()
                .chain(self.env.iter().cloned())
                .collect(),
            labels,
        };
        let socket = dir.join("harness.sock");
        let dispatch = match self.dispatch {
            Dispatch::Socket if socket.as_os_str().len() > MAX_SOCKET_PATH => {
                tracing::info!(socket = %socket.display(), "the slot's socket path is too long to connect to; runs go by exec");
                Dispatch::Exec
            }
            d => d,
        };
        DockerHarness {
            docker: self.docker.clone(),
            name: container_name(&dir, &self.image.id, slot),
            log: dir.join("harness.log"),
            socket,
            dir,
            spec,
            container: None,
            engines: Vec::new(),
            dispatch: std::sync::Mutex::new(dispatch),
        }
    }
}

impl HarnessFactory for DockerFactory {
    fn make(
        &self,
        dir: &Path,
        slot: u32,
        gpus: &[u32],
        gpu_env: Vec<(String, String)>,
    ) -> Box<dyn HarnessRuntime> {
        Box::new(self.harness(dir, slot, gpus, gpu_env))
    }
}

/// What a slot's container is made of; [`container_body`] turns it into Docker's
/// create request.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    pub image_id: String,
    /// `uid:gid`.
    pub user: String,
    /// The slot's directory on the host: the container's one mount.
    pub host_dir: PathBuf,
    pub slot: u32,
    /// NVML indices of the GPUs to pass in (empty: none, the simulated GPU).
    pub gpus: Vec<u32>,
    /// Extra environment (the GPU selection, as the container numbers its GPUs).
    pub env: Vec<(String, String)>,
    pub labels: HashMap<String, String>,
}

/// The harness server's command line in the container.
pub fn server_command(slot: u32) -> Vec<String> {
    [
        "python3",
        "-I",
        &format!("{HARNESS_IN}/server.py"),
        "--socket",
        SOCKET_IN,
        "--slot",
        &slot.to_string(),
        // Docker's init is PID 1 and the server's parent: the worker is not, so
        // there is no parent to watch (the labels and remove_stale clean up after a
        // killed worker).
        "--no-parent-watch",
        "--log-file",
        LOG_IN,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The harness client's command line in the container (the request goes to its
/// stdin). `-I -S`: no user site, no site-packages, no environment: the client
/// needs only the standard library, and starts faster without them.
pub fn client_command(connect_wait_s: f64) -> Vec<String> {
    [
        "python3",
        "-I",
        "-S",
        &format!("{HARNESS_IN}/client.py"),
        "--socket",
        SOCKET_IN,
        "--connect-wait-seconds",
        &connect_wait_s.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Docker's create request for a slot's container: the harness server as the main
/// process under Docker's init, as the worker's own user, with no network, no added
/// capabilities (all dropped), no new privileges, a read-only root with a tmpfs
/// /tmp, a private IPC namespace with a large /dev/shm, the slot's directory as the
/// only mount, and exactly the slot's GPUs.
pub fn container_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut env = vec![
        "PYTHONUNBUFFERED=1".to_string(),
        "PYTHONDONTWRITEBYTECODE=1".to_string(),
        "HOME=/tmp".to_string(),
    ];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let device_requests = (!spec.gpus.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".into()),
            count: None,
            device_ids: Some(spec.gpus.iter().map(|g| g.to_string()).collect()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            options: None,
        }]
    });
    let host_config = HostConfig {
        mounts: Some(vec![Mount {
            target: Some(SLOT_DIR_IN.into()),
            source: Some(spec.host_dir.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Default::default()
        }]),
        init: Some(true),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_string(),
            "rw,nosuid,nodev,size=1g".to_string(),
        )])),
        network_mode: Some("none".into()),
        ipc_mode: Some("private".into()),
        shm_size: Some(SHM_SIZE_BYTES),
        pids_limit: Some(PIDS_LIMIT),
        device_requests,
        // The server logs to its file in the slot's directory; what reaches stdout
        // before that (an interpreter that fails to start) stays small.
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "1m".to_string()),
                ("max-file".to_string(), "1".to_string()),
            ])),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image_id.clone()),
        cmd: Some(server_command(spec.slot)),
        user: Some(spec.user.clone()),
        env: Some(env),
        labels: Some(spec.labels.clone()),
        working_dir: Some("/tmp".into()),
        network_disabled: Some(true),
        stop_timeout: Some(STOP_GRACE_S as i64),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The GPU environment as the container sees it. The device request passes in only
/// the slot's GPUs, which the container numbers from 0 in PCI bus order (NVML's
/// order), so `CUDA_VISIBLE_DEVICES` names each GPU of the group by its position
/// among the group's sorted indices, keeping the group's order (group `[3, 1]` on the
/// host is `1,0` inside). Everything else is passed as it is.
pub fn container_gpu_env(gpus: &[u32], gpu_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut sorted = gpus.to_vec();
    sorted.sort_unstable();
    gpu_env
        .iter()
        .map(|(k, v)| {
            if k == "CUDA_VISIBLE_DEVICES" && !gpus.is_empty() {
                let inside: Vec<String> = gpus
                    .iter()
                    .map(|g| sorted.iter().position(|s| s == g).unwrap_or(0).to_string())
                    .collect();
                (k.clone(), inside.join(","))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// A container's name: the slot and a hash of its directory and image, so two
/// workers (or two GPU sets of a dynamic pool) never share one.
pub fn container_name(dir: &Path, image_id: &str, slot: u32) -> String {
    let mut h = Sha256::new();
    h.update(dir.to_string_lossy().as_bytes());
    h.update(b"\0");
    h.update(image_id.as_bytes());
    let hex: String = h
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("lem-slot{slot}-{hex}")
}

/// The running container of a harness.
#[derive(Clone, Debug)]
struct Running {
    id: String,
    /// The container's main process (Docker's init) as the host numbers it.
    main_pid: Option<u32>,
}

/// A resident harness server in a warm container, for one slot.
pub struct DockerHarness {
    docker: Docker,
    name: String,
    /// The slot's directory on the host (bind-mounted at `/run/lem`).
    dir: PathBuf,
    log: PathBuf,
    spec: ContainerSpec,
    container: Option<Running>,
    /// Engines the server reported as available in its last pong.
    engines: Vec<String>,
    /// The server's socket as the host sees it (`/run/lem/harness.sock` inside).
    socket: PathBuf,
    /// How requests go in; a socket this user may not open turns it to `Exec`.
    dispatch: std::sync::Mutex<Dispatch>,
}

/// How an exec of the harness client ended.
struct ExecEnd {
    /// A final event (`result`, `error`, `pong`, ...) arrived.
    finished: bool,
    /// The request never reached the server: the exec could not be made (the
    /// container is not running) or the client could not connect. Nothing ran.
    unreachable: bool,
    /// What the client wrote to stderr (its diagnostics), or why the exec could not
    /// be made; trimmed.
    stderr: String,
}

/// How a request over the socket ended.
enum SocketEnd {
    Ended(ExecEnd),
    /// The socket is not this worker's to open (permission denied): use exec.
    NotMine(String),
}

impl ExecEnd {
    fn not_started(why: String) -> ExecEnd {
        ExecEnd {
            finished: false,
            unreachable: true,
            stderr: why,
        }
    }
}

impl DockerHarness {
    /// The container's name (`lem-slot<N>-<hash>`).
    pub fn container_name(&self) -> &str {
        &self.name
    }

    /// The running container's id, if any.
    pub fn container_id(&self) -> Option<&str> {
        self.container.as_ref().map(|c| c.id.as_str())
    }

    /// Starts the container if it is not running (reusing a live one) and returns
    /// the server's pong.
    pub async fn ensure_started(&mut self) -> Result<Pong, HarnessError> {
        if let Some(c) = self.container.clone() {
            match self.ping(&c.id, 2.0, PING_TIMEOUT).await {
                Ok(pong) => return Ok(pong),
                Err(e) => {
                    tracing::warn!(container = %self.name, error = %e, "the harness container does not answer; replacing it");
                    self.stop().await;
                }
            }
        }
        let id = self.create_and_start().await?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.as_secs_f64().min(5.0);
            let err = match self.ping(&id, wait, left + Duration::from_secs(5)).await {
                Ok(pong) => {
                    let protocol = pong.body.get("protocol").map(|p| p.to_string());
                    if protocol.as_deref() != Some(HARNESS_PROTOCOL) {
                        let log = self.log_tails(&id).await;
                        self.stop().await;
                        return Err(HarnessError::Start(format!(
                            "the harness in image {} speaks protocol {}, this worker {HARNESS_PROTOCOL}; {log}",
                            self.spec.image_id,
                            protocol.unwrap_or_else(|| "(none)".into())
                        )));
                    }
                    return Ok(pong);
                }
                Err(e) => e,
            };
            let running = self.is_container_running(&id).await;
            if !running || Instant::now() >= deadline {
                let log = self.log_tails(&id).await;
                self.stop().await;
                let what = if running {
                    format!(
                        "did not answer within {} s ({err})",
                        START_TIMEOUT.as_secs()
                    )
                } else {
                    "exited during start-up".to_string()
                };
                return Err(HarnessError::Start(format!(
                    "container {} {what}; it was removed; {log}",
                    self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates and starts the slot's container; returns its id.
    async fn create_and_start(&mut self) -> Result<String, HarnessError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            HarnessError::Start(format!("cannot create {}: {e}", self.dir.display()))
        })?;
        let body = container_body(&self.spec);
        let options = CreateContainerOptionsBuilder::default()
            .name(&self.name)
            .build();
        let created = match self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            // A container of this name is left over (a run broke off and its removal
            // failed, or a killed worker's): it is ours, and goes.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                tracing::warn!(container = %self.name, "removing a leftover container of this slot");
                remove_container(&self.docker, &self.name)
                    .await
                    .map_err(|e| docker_start_error(&self.name, "remove", e))?;
                self.docker.create_container(Some(options), body).await
            }
            other => other,
        }
        .map_err(|e| docker_start_error(&self.name, "create", e))?;
        for w in &created.warnings {
            tracing::warn!(container = %self.name, warning = %w, "docker");
        }
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = remove_container(&self.docker, &created.id).await;
            return Err(docker_start_error(&self.name, "start", e));
        }
        let main_pid = self
            .docker
            .inspect_container(&created.id, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        tracing::info!(container = %self.name, id = %short(&created.id), image = %self.spec.image_id, slot = self.spec.slot, dispatch = ?self.dispatch(), "harness container started");
        self.container = Some(Running {
            id: created.id.clone(),
            main_pid,
        });
        Ok(created.id)
    }

    async fn is_container_running(&self, id: &str) -> bool {
        self.docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|i| i.state)
            .and_then(|s| s.running)
            .unwrap_or(false)
    }

    /// Pings the server through an exec of the client (which retries the connection
    /// for `connect_wait_s`); the pong, with the engines remembered.
    async fn ping(
        &mut self,
        id: &str,
        connect_wait_s: f64,
        timeout: Duration,
    ) -> Result<Pong, HarnessError> {
        let mut pong = None;
        let mut on_event = |e: &HarnessEvent| {
            if e.event == "pong" {
                pong = Some(serde_json::Value::Object(e.body.clone()));
            }
        };
        let exec = self.send(
            id,
            r#"{"type":"ping"}"#,
            connect_wait_s,
            None,
            &mut on_event,
        );
        let end = tokio::time::timeout(timeout, exec)
            .await
            .map_err(|_| HarnessError::Io(format!("no pong within {} s", timeout.as_secs())))??;
        let body = pong.ok_or_else(|| {
            HarnessError::Io(format!(
                "no pong from the harness in container {}{}",
                self.name,
                stderr_note(&end.stderr)
            ))
        })?;
        self.engines = body
            .get("engines")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Pong {
            engines: self.engines.clone(),
            body,
        })
    }

    /// How this harness sends requests now.
    pub fn dispatch(&self) -> Dispatch {
        *self.dispatch.lock().expect("dispatch lock")
    }

    /// Sends `line` to the server of container `id` by this harness's [`Dispatch`]
    /// and feeds each event to `on_event` until a final event (or the end of the
    /// stream); `silence` bounds the gap between two lines.
    async fn send(
        &self,
        id: &str,
        line: &str,
        connect_wait_s: f64,
        silence: Option<Duration>,
        on_event: &mut (dyn FnMut(&HarnessEvent) + Send),
    ) -> Result<ExecEnd, HarnessError> {
        if self.dispatch() == Dispatch::Socket {
            match self
                .socket_client(line, connect_wait_s, silence, on_event)
                .await?
            {
                SocketEnd::Ended(end) => return Ok(end),
                SocketEnd::NotMine(why) => {
                    tracing::warn!(socket = %self.socket.display(), reason = %why, "the harness socket cannot be opened by this worker (a user-namespace remap?); runs go by exec from now on");
                    *self.dispatch.lock().expect("dispatch lock") = Dispatch::Exec;
                }
            }
        }
        self.exec_client(id, line, connect_wait_s, silence, on_event)
            .await
    }

    /// Sends `line` over the server's socket (retrying the connection for
    /// `connect_wait_s` while the server is not listening yet); as
    /// [`Self::exec_client`], with `unreachable` when no connection could be made.
    async fn socket_client(
        &self,
        line: &str,
        connect_wait_s: f64,
        silence: Option<Duration>,
        on_event: &mut (dyn FnMut(&HarnessEvent) + Send),
    ) -> Result<SocketEnd, HarnessError> {
        let deadline = Instant::now() + Duration::from_secs_f64(connect_wait_s.max(0.0));
        let stream = loop {
            match tokio::net::UnixStream::connect(&self.socket).await {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Ok(SocketEnd::NotMine(e.to_string()));
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::trace!(error = %e, "harness socket not ready");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Ok(SocketEnd::Ended(ExecEnd::not_started(format!(
                        "cannot reach harness server at {}: {e}",
                        self.socket.display()
                    ))))
                }
            }
        };
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| {
                HarnessError::Io(format!("write the request to the harness socket: {e}"))
            })?;
        let mut lines = tokio::io::BufReader::new(read).lines();
        let mut seen = 0usize;
        loop {
            let next = match silence {
                Some(s) => tokio::time::timeout(s, lines.next_line())
                    .await
                    .map_err(|_| HarnessError::Silent(s.as_secs_f64()))?,
                None => lines.next_line().await,
            };
            let l = match next {
                Ok(Some(l)) => l,
                // The server went away: a crash or a killed container.
                Ok(None) | Err(_) => break,
            };
            if l.trim().is_empty() {
                continue;
            }
            seen += 1;
            let ev = HarnessEvent::parse(&l).map_err(|e| HarnessError::Io(e.to_string()))?;
            let last = is_final(&ev.event);
            on_event(&ev);
            if last {
                return Ok(SocketEnd::Ended(ExecEnd {
                    finished: true,
                    unreachable: false,
                    stderr: String::new(),
                }));
            }
        }
        Ok(SocketEnd::Ended(ExecEnd {
            finished: false,
            unreachable: false,
            stderr: format!(
                "the harness server closed its socket after {seen} event line(s) without a final event"
            ),
        }))
    }

    /// Execs the harness client in container `id` with `line` on its stdin, and feeds
    /// each event line of its stdout to `on_event` until a final event (or the end of
    /// the stream). `silence` bounds the gap between two lines.
    async fn exec_client(
        &self,
        id: &str,
        line: &str,
        connect_wait_s: f64,
        silence: Option<Duration>,
        on_event: &mut (dyn FnMut(&HarnessEvent) + Send),
    ) -> Result<ExecEnd, HarnessError> {
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(client_command(connect_wait_s)),
                    ..Default::default()
                },
            )
            .await;
        let exec = match exec {
            Ok(exec) => exec,
            Err(e) => {
                return Ok(ExecEnd::not_started(format!(
                    "exec in container {}: {e}",
                    self.name
                )))
            }
        };
        let started = match self.docker.start_exec(&exec.id, None).await {
            Ok(started) => started,
            Err(e) => {
                return Ok(ExecEnd::not_started(format!(
                    "exec in container {}: {e}",
                    self.name
                )))
            }
        };
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(HarnessError::Io(
                "the exec started detached (a bollard bug)".into(),
            ));
        };
        input
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| HarnessError::Io(format!("write the request to the exec: {e}")))?;
        input
            .flush()
            .await
            .map_err(|e| HarnessError::Io(format!("write the request to the exec: {e}")))?;
        let mut lines = LineBuffer::default();
        let mut seen = 0usize;
        let mut stderr = Vec::new();
        let mut last_line = Instant::now();
        loop {
            let next = match silence {
                Some(s) => {
                    let left = s.saturating_sub(last_line.elapsed());
                    tokio::time::timeout(left, output.next())
                        .await
                        .map_err(|_| HarnessError::Silent(s.as_secs_f64()))?
                }
                None => output.next().await,
            };
            let Some(frame) = next else {
                break;
            };
            let frame = frame.map_err(|e| {
                HarnessError::Io(format!("exec output from container {}: {e}", self.name))
            })?;
            match frame {
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    for l in lines.push(&message) {
                        last_line = Instant::now();
                        seen += 1;
                        let ev =
                            HarnessEvent::parse(&l).map_err(|e| HarnessError::Io(e.to_string()))?;
                        let last = is_final(&ev.event);
                        on_event(&ev);
                        if last {
                            return Ok(ExecEnd {
                                finished: true,
                                unreachable: false,
                                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
                            });
                        }
                    }
                }
                LogOutput::StdErr { message } => {
                    if stderr.len() < 16 * 1024 {
                        stderr.extend_from_slice(&message);
                    }
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
        Ok(ExecEnd {
            finished: false,
            // The client's own words for "nobody listens on the socket" (exit 4).
            unreachable: seen == 0 && stderr.contains("cannot reach harness server"),
            stderr,
        })
    }

    /// Runs one request: see [`HarnessRuntime::run`].
    pub async fn run(
        &mut self,
        request_line: &str,
        limits: RunLimits,
        cancel: BoxFuture<'_, String>,
        on_event: EventSink<'_>,
    ) -> Result<(), HarnessError> {
        // A container believed warm gets the run at once (a ping first would cost a
        // second exec per run); if the run cannot reach its server, the container
        // is replaced and the run sent once more: nothing of it had started.
        let mut fresh = self.container.is_none();
        if fresh {
            self.ensure_started().await?;
        }
        let mut cancel = cancel;
        let (id, outcome) = loop {
            let id = self
                .container
                .as_ref()
                .map(|c| c.id.clone())
                .ok_or_else(|| {
                    HarnessError::Start("no container after start (a worker bug)".into())
                })?;
            let outcome = {
                let exec = tokio::time::timeout(
                    limits.timeout,
                    self.send(&id, request_line, 2.0, limits.silence, &mut *on_event),
                );
                tokio::select! {
                    r = exec => r.unwrap_or(Err(HarnessError::Timeout(limits.timeout.as_secs_f64()))),
                    why = &mut cancel => Err(HarnessError::Cancelled(why)),
                }
            };
            match outcome {
                Ok(end) if end.unreachable && !fresh => {
                    tracing::warn!(container = %self.name, reason = %end.stderr, "the harness container did not take the run; replacing it");
                    self.stop().await;
                    self.ensure_started().await?;
                    fresh = true;
                }
                outcome => break (id, outcome),
            }
        };
        match outcome {
            Ok(end) if end.finished => Ok(()),
            Ok(end) => {
                let log = format!(
                    "container {}{}; {}",
                    self.name,
                    stderr_note(&end.stderr),
                    self.log_tails(&id).await
                );
                self.stop().await;
                Err(HarnessError::Eof { log })
            }
            Err(e) => {
                self.stop().await;
                Err(e)
            }
        }
    }

    /// Stops the container (SIGTERM through Docker's init, a grace period, then
    /// SIGKILL) and removes it: once this returns, none of its processes is left.
    pub async fn stop(&mut self) {
        let Some(c) = self.container.take() else {
            return;
        };
        let options = StopContainerOptionsBuilder::default()
            .t(STOP_GRACE_S)
            .build();
        match self.docker.stop_container(&c.id, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => {}
            Err(e) => {
                tracing::warn!(container = %self.name, error = %e, "cannot stop the harness container; removing it by force")
            }
        }
        if let Err(e) = remove_container(&self.docker, &c.id).await {
            tracing::warn!(container = %self.name, error = %e, "cannot remove the harness container");
        }
        // A killed server leaves its socket; the next one would remove it anyway.
        let _ = std::fs::remove_file(self.dir.join("harness.sock"));
    }

    /// The last lines of the container's own log (what the interpreter wrote before
    /// the server took its log file) and of the server's log file, for errors.
    async fn log_tails(&self, id: &str) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let mut text = Vec::new();
        let mut logs = self.docker.logs(id, Some(options));
        while let Some(Ok(frame)) = logs.next().await {
            text.extend_from_slice(frame.as_ref());
        }
        let container_log: Vec<&str> = std::str::from_utf8(&text)
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let container_log = if container_log.is_empty() {
            "(empty)".to_string()
        } else {
            container_log[container_log.len().saturating_sub(8)..].join(" | ")
        };
        format!(
            "container log: {container_log}; harness log {}: {}",
            self.log.display(),
            crate::runtime::tail(&self.log)
        )
    }

    /// The path, as the harness sees it, of the prompt file `source` names: the
    /// built-in `aienergyscore` is in the image; a host file is copied into the
    /// slot's directory (again only when it changed) and its path in the container
    /// returned. A host file that cannot be read is passed as its host path, which
    /// the harness reports as a configuration error naming it.
    pub fn dataset_path(&self, source: &str) -> PathBuf {
        if source == "aienergyscore" {
            return PathBuf::from(format!("{HARNESS_IN}/datasets/aienergyscore.jsonl"));
        }
        let host = absolute(Path::new(source));
        match copy_dataset(&host, &self.dir.join(DATASETS)) {
            Ok(name) => Path::new(SLOT_DIR_IN).join(DATASETS).join(name),
            Err(e) => {
                tracing::warn!(dataset = %host.display(), error = %e, "cannot copy the dataset into the harness container's directory");
                host
            }
        }
    }

    /// Host pids of the container's processes: its cgroup's, and the main process
    /// with every descendant (where the cgroup cannot be read).
    pub fn own_pids(&self) -> Vec<u32> {
        let Some(pid) = self.container.as_ref().and_then(|c| c.main_pid) else {
            return Vec::new();
        };
        let mut pids = crate::isolation::own_pids(Some(pid));
        pids.remove(&std::process::id());
        if let Some(in_cgroup) = cgroup_pids(pid) {
            pids.extend(in_cgroup);
        }
        pids.into_iter().collect()
    }
}

impl Drop for DockerHarness {
    fn drop(&mut self) {
        // A harness dropped without `stop` (a task that was cancelled) leaves no
        // container behind where a runtime is there to remove it; otherwise the next
        // worker on this data dir does (remove_stale).
        if let Some(c) = self.container.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let docker = self.docker.clone();
                handle.spawn(async move {
                    let _ = remove_container(&docker, &c.id).await;
                });
            }
        }
    }
}

impl HarnessRuntime for DockerHarness {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn ensure_started(&mut self) -> BoxFuture<'_, Result<Pong, HarnessError>> {
        Box::pin(DockerHarness::ensure_started(self))
    }

    fn run<'a>(
        &'a mut self,
        request_line: &'a str,
        limits: RunLimits,
        cancel: BoxFuture<'a, String>,
        on_event: EventSink<'a>,
    ) -> BoxFuture<'a, Result<(), HarnessError>> {
        Box::pin(DockerHarness::run(
            self,
            request_line,
            limits,
            cancel,
            on_event,
        ))
    }

    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(DockerHarness::stop(self))
    }

    fn is_running(&mut self) -> bool {
        match &self.container {
            // Where this worker sees the host's pids, the main process tells; where
            // it does not, the next ping does.
            Some(c) => match c.main_pid {
                Some(pid) if !crate::isolation::in_child_pid_namespace() => {
                    crate::isolation::is_alive(pid)
                }
                _ => true,
            },
            None => false,
        }
    }

    fn own_pids(&mut self) -> Vec<u32> {
        DockerHarness::own_pids(self)
    }

    fn dataset_path(&self, source: &str) -> PathBuf {
        DockerHarness::dataset_path(self, source)
    }

    fn engines(&self) -> &[String] {
        &self.engines
    }

    fn log_path(&self) -> &Path {
        &self.log
    }
}

/// Splits a byte stream into lines (without the newline), across chunk boundaries.
#[derive(Default)]
struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let rest = self.partial.split_off(pos + 1);
            let line = std::mem::replace(&mut self.partial, rest);
            let text = String::from_utf8_lossy(&line[..pos]).trim().to_string();
            if !text.is_empty() {
                out.push(text);
            }
        }
        out
    }
}

/// The events after which the harness closes a request.
fn is_final(event: &str) -> bool {
    matches!(event, "result" | "error" | "pong" | "unloaded" | "bye")
}

fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(" (client: {})", tail.join(" | "))
    }
}

fn docker_start_error(name: &str, what: &str, e: bollard::errors::Error) -> HarnessError {
    let hint = match &e {
        bollard::errors::Error::DockerResponseServerError { message, .. }
            if message.contains("nvidia") || message.contains("device driver") =>
        {
            " (GPUs in containers need the NVIDIA Container Toolkit: nvidia-ctk runtime configure --runtime=docker)"
        }
        _ => "",
    };
    HarnessError::Start(format!("docker {what} container {name}: {e}{hint}"))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// `uid:gid` of this process.
fn own_user() -> String {
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    format!("{uid}:{gid}")
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Copies `host` into `dir` as `<hash of its path>-<file name>` unless a copy of the
/// same length and modification time is there; returns the copy's file name.
fn copy_dataset(host: &Path, dir: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(host)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let hash: String = Sha256::digest(host.to_string_lossy().as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let file_name = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset.jsonl".into());
    let name = format!("{hash}-{file_name}");
    let dest = dir.join(&name);
    let modified = meta.modified()?;
    if let Ok(have) = std::fs::metadata(&dest) {
        if have.len() == meta.len() && have.modified().ok() == Some(modified) {
            return Ok(name);
        }
    }
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!(".{name}.partial"));
    std::fs::copy(host, &partial)?;
    std::fs::File::options()
        .write(true)
        .open(&partial)?
        .set_modified(modified)?;
    std::fs::rename(&partial, &dest)?;
    Ok(name)
}

/// The pids in the cgroup of process `pid` (a container's: every process in it,
/// the execs included), where this worker can read it.
fn cgroup_pids(pid: u32) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let procs = std::fs::read_to_string(cgroup_procs_path(&text, unified)?).ok()?;
    Some(
        procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    )
}

/// Where the `cgroup.procs` of a process whose `/proc/PID/cgroup` reads `text` is:
/// cgroup v2's single hierarchy, or on v1 the `pids` controller's (else `memory`'s).
fn cgroup_procs_path(text: &str, unified: bool) -> Option<PathBuf> {
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?, parts.next()?))
        })
        .collect();
    let (dir, path) = if unified {
        let (_, path) = entries.iter().find(|(ctl, _)| ctl.is_empty())?;
        (String::new(), *path)
    } else {
        ["pids", "memory"].iter().find_map(|want| {
            entries
                .iter()
                .find(|(ctl, _)| ctl.split(',').any(|c| c == *want))
                .map(|(ctl, path)| (ctl.to_string(), *path))
        })?
    };
    let mut p = PathBuf::from("/sys/fs/cgroup");
    if !dir.is_empty() {
        p.push(dir);
    }
    p.push(path.trim_start_matches('/'));
    p.push("cgroup.procs");
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(gpus: Vec<u32>) -> ContainerSpec {
        ContainerSpec {
            image_id: format!("sha256:{}", "a".repeat(64)),
            user: "1000:1000".into(),
            host_dir: PathBuf::from("/data/worker/slot-0"),
            slot: 0,
            gpus,
            env: vec![],
            labels: HashMap::from([(LABEL_SLOT.to_string(), "0".to_string())]),
        }
    }

    #[test]
    fn the_container_is_locked_down_and_mounts_only_the_slot_dir() {
        let body = container_body(&spec(vec![]));
        let hc = body.host_config.clone().unwrap();
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.cap_add, None);
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.ipc_mode.as_deref(), Some("private"));
        assert_eq!(hc.init, Some(true));
        assert!(hc.shm_size.unwrap() >= 1 << 30);
        assert!(hc.binds.is_none());
        let mounts = hc.mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].source.as_deref(), Some("/data/worker/slot-0"));
        assert_eq!(mounts[0].target.as_deref(), Some("/run/lem"));
        assert!(hc.tmpfs.unwrap().contains_key("/tmp"));
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            hc.device_requests, None,
            "the simulated GPU asks for no device"
        );
        let cmd = body.cmd.unwrap();
        assert!(cmd.contains(&"/opt/lem/harness/server.py".to_string()));
        assert!(cmd.windows(2).any(|w| w == ["--socket", SOCKET_IN]));
    }

    #[test]
    fn real_gpus_are_asked_for_exactly() {
        let body = container_body(&spec(vec![2, 3]));
        let req = body.host_config.unwrap().device_requests.unwrap();
        assert_eq!(req.len(), 1);
        assert_eq!(req[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(req[0].device_ids, Some(vec!["2".into(), "3".into()]));
        assert_eq!(req[0].capabilities, Some(vec![vec!["gpu".to_string()]]));
        assert_eq!(req[0].count, None);
    }

    #[test]
    fn cuda_visible_devices_follow_the_containers_numbering() {
        let env = |group: &[u32]| {
            container_gpu_env(group, &crate::harness_gpu_env(group))
                .into_iter()
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(env(&[2, 3])["CUDA_VISIBLE_DEVICES"], "0,1");
        assert_eq!(env(&[3, 1])["CUDA_VISIBLE_DEVICES"], "1,0");
        assert_eq!(env(&[5])["CUDA_VISIBLE_DEVICES"], "0");
        assert_eq!(env(&[5])["CUDA_DEVICE_ORDER"], "PCI_BUS_ID");
        assert!(container_gpu_env(&[0], &[]).is_empty());
    }

    #[test]
    fn allowlist_files_take_ids_and_comments_only() {
        let id = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let text = format!("# pinned by ops\n\n{id}  # harness 0.1.0\n");
        let file = Path::new("/d/allowed-images");
        assert_eq!(parse_allowlist(&text, file).unwrap(), vec![id.clone()]);
        let err = parse_allowlist(&format!("{id}\nlem-fleet/harness:latest\n"), file)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/d/allowed-images:2"), "{err}");
        assert!(err.contains("lem-fleet/harness:latest"), "{err}");
        assert!(!is_image_id("sha256:abc"));
        assert!(!is_image_id(&id.to_uppercase()));
    }

    #[test]
    fn names_differ_by_dir_and_image() {
        let a = container_name(Path::new("/d/slot-0"), "sha256:1", 0);
        assert!(a.starts_with("lem-slot0-"), "{a}");
        assert_ne!(a, container_name(Path::new("/e/slot-0"), "sha256:1", 0));
        assert_ne!(a, container_name(Path::new("/d/slot-0"), "sha256:2", 0));
        assert_eq!(a, container_name(Path::new("/d/slot-0"), "sha256:1", 0));
    }

    #[test]
    fn lines_are_split_across_frames() {
        let mut b = LineBuffer::default();
        assert!(b.push(b"{\"event\":").is_empty());
        assert_eq!(b.push(b"\"a\"}\n\n{\"b\""), vec!["{\"event\":\"a\"}"]);
        assert_eq!(b.push(b":1}\n"), vec!["{\"b\":1}"]);
    }

    #[test]
    fn cgroup_paths_on_v1_and_v2() {
        let v1 = "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(
            cgroup_procs_path(v1, false),
            Some(PathBuf::from("/sys/fs/cgroup/pids/docker/abc/cgroup.procs"))
        );
        let v1_no_pids = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n";
        assert_eq!(
            cgroup_procs_path(v1_no_pids, false),
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/docker/abc/cgroup.procs"
            ))
        );
        let v2 = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            cgroup_procs_path(v2, true),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-abc.scope/cgroup.procs"
            ))
        );
    }

    #[test]
    fn datasets_are_copied_once_and_again_when_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("prompts.jsonl");
        std::fs::write(&src, "{\"prompt\":\"a\"}\n").unwrap();
        let dir = tmp.path().join("slot/datasets");
        let name = copy_dataset(&src, &dir).unwrap();
        assert!(name.ends_with("-prompts.jsonl"), "{name}");
        assert_eq!(
            std::fs::read_to_string(dir.join(&name)).unwrap(),
            "{\"prompt\":\"a\"}\n"
        );
        std::fs::write(&src, "{\"prompt\":\"bb\"}\n").unwrap();
        assert_eq!(copy_dataset(&src, &dir).unwrap(), name);
        assert_eq!(
            std::fs::read_to_string(dir.join(&name)).unwrap(),
            "{\"prompt\":\"bb\"}\n"
        );
        assert!(copy_dataset(&tmp.path().join("missing.jsonl"), &dir).is_err());
    }
}
