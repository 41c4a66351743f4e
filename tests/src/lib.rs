//! Helpers for lem fleet's end-to-end tests: real `lem-coord` and `lem-worker`
//! processes, each in its own temp dir, on loopback.
//!
//! Processes are killed (SIGKILL, with their process group) when their handle drops.
//! Waiting is always deadline-bound (`wait_for`), never a bare sleep, and a failed
//! wait prints the logs of every process the test started.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A started process whose output goes to files.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, bin: &str, args: &[&str], dir: &Path) -> Proc {
        Proc::spawn_with_env(name, bin, args, &[], dir)
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        bin: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Proc {
        Proc::spawn_as(name, bin, args, env, dir, None)
    }

    /// [`Proc::spawn_with_env`] as user `uid:gid` (the test must be root to ask).
    pub fn spawn_as(
        name: &str,
        bin: &str,
        args: &[&str],
        env: &[(&str, &str)],
        dir: &Path,
        user: Option<(u32, u32)>,
    ) -> Proc {
        use std::os::unix::process::CommandExt;
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let mut cmd = command(bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .env("LEM_LOG", "info")
            // A coordinator's status page on a port of its own: tests run side by
            // side, and `lem-coord start` would otherwise take 127.0.0.1:7701.
            .env("LEM_HTTP", "127.0.0.1:0")
            .envs(env.iter().copied())
            .process_group(0);
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- {} (pid {}) stdout:\n{}\n--- {} stderr:\n{}",
            self.name,
            self.child.id(),
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            self.name,
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child's process group.
        unsafe {
            libc::kill(-(self.child.id() as i32), sig);
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the process group and reaps the process.
    pub fn kill(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A process that was already reaped is not signalled: its id may be reused.
        if self.is_running() {
            self.signal(libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A tiny xorshift64 generator for seeded, reproducible fault schedules.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A duration uniformly in `[lo, hi)`, in milliseconds.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        Duration::from_millis(lo + self.next_u64() % (hi - lo).max(1))
    }
}

/// The fault tests' seeded generator: `LEM_FAULT_SEED` (decimal) if set, else
/// `default_seed`; returns the seed used (to print) and the generator.
pub fn fault_rng(default_seed: u64) -> (u64, XorShift) {
    let seed = std::env::var("LEM_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seed);
    (seed, XorShift(seed))
}

/// Polls `f` every 200 ms until it returns `Some` or `timeout` passes (`None`).
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `f` until it returns `Some` or the deadline passes; on timeout panics with
/// `what` and the logs of `procs`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    procs: &[&Proc],
    f: impl FnMut() -> Option<T>,
) -> T {
    poll_until(timeout, f).unwrap_or_else(|| {
        let logs: Vec<String> = procs.iter().map(|p| p.logs()).collect();
        panic!(
            "timed out after {:?} waiting for {what}\n{}",
            timeout,
            logs.join("\n")
        )
    })
}

/// The campaign id `lem-coord submit` prints as the last line of its stdout.
pub fn campaign_id(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .last()
        .expect("submit prints the campaign id")
        .trim()
        .to_string()
}

/// The leases `worker` holds, from `lem-coord workers --json`; `None` if not listed.
pub fn leases_held(workers: &Value, worker: &str) -> Option<u64> {
    workers
        .as_array()?
        .iter()
        .find(|w| w["worker"] == worker)
        .and_then(|w| w["leases_held"].as_u64())
}

/// The rows of `lem-coord results --format jsonl`.
pub fn parse_jsonl(stdout: &[u8]) -> Result<Vec<Value>, String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).map_err(|e| format!("a results line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// What [`check_exactly_once`] counted.
#[derive(Debug)]
pub struct ExactlyOnce {
    /// Results recorded as duplicates (late or repeated), never counted.
    pub duplicates: u64,
    /// Runs that were leased more than once (a lease expired or was given up).
    pub retried: usize,
}

/// The fault tests' invariants, from a finished campaign's `status --json` and its
/// `results --format jsonl` rows: every one of the `total` runs is done with exactly
/// one accepted result (one row per (config, cycle), each with its result and
/// attempts recorded); none is lost, failed, pending or stuck leased; duplicates
/// are counted apart. Returns what it counted, or what is wrong.
pub fn check_exactly_once(
    status: &Value,
    rows: &[Value],
    total: u64,
) -> Result<ExactlyOnce, String> {
    let n = |k: &str| status[k].as_u64().unwrap_or(u64::MAX);
    let counts = (
        n("total"),
        n("done"),
        n("failed"),
        n("pending"),
        n("running"),
        n("cancelled"),
    );
    if counts != (total, total, 0, 0, 0, 0) {
        return Err(format!(
            "every run done exactly once: (total, done, failed, pending, running, cancelled) = {counts:?}, want ({total}, {total}, 0, 0, 0, 0): {status}"
        ));
    }
    let duplicates = status["duplicates"]
        .as_u64()
        .ok_or_else(|| format!("duplicates are counted: {status}"))?;
    let pairs: BTreeSet<(&str, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["config_hash"].as_str().unwrap_or(""),
                r["cycle"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    if rows.len() as u64 != total || pairs.len() as u64 != total {
        return Err(format!(
            "one row per run, each (config, cycle) once: {} rows, {} distinct, want {total}",
            rows.len(),
            pairs.len()
        ));
    }
    let configs: BTreeSet<&str> = pairs.iter().map(|(c, _)| *c).collect();
    if Some(configs.len() as u64) != status["n_configs"].as_u64() {
        return Err(format!(
            "{} distinct configs in the rows, the campaign has {}",
            configs.len(),
            status["n_configs"]
        ));
    }
    for r in rows {
        let has_result = r["worker"].as_str().is_some_and(|w| !w.is_empty());
        if r["state"] != "done" || r["attempts"].as_u64().unwrap_or(0) < 1 || !has_result {
            return Err(format!(
                "a done run with its result and attempts recorded: {r}"
            ));
        }
    }
    let retried = rows
        .iter()
        .filter(|r| r["attempts"].as_u64().unwrap_or(0) >= 2)
        .count();
    Ok(ExactlyOnce {
        duplicates,
        retried,
    })
}

/// An HTTP reply: status, headers (names lower-case) and body.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD path` over HTTP/1.0 to `addr` (host:port) and reads the whole reply
/// (HTTP/1.0: the server closes the connection after it, no chunked encoding).
/// `Err` says what failed (connect, a reply that is not HTTP).
pub fn http_request(addr: &str, method: &str, path: &str) -> Result<HttpReply, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(70)))
        .map_err(|e| e.to_string())?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{method} http://{addr}{path}: not an HTTP reply: {text}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} http://{addr}{path}: no status line: {head}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpReply {
        status,
        headers,
        body: body.to_string(),
    })
}

/// `GET path` from `addr` ([`http_request`]).
pub fn http_get(addr: &str, path: &str) -> Result<HttpReply, String> {
    http_request(addr, "GET", path)
}

/// Percent-encodes a URL query value (PromQL has `{`, `"`, `=`, spaces).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A command for `bin`. `lem-coord run` starts its local workers from
/// `$LEM_WORKER_BIN`: here the worker shim beside the coordinator shim.
pub fn command(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    if let Some(w) = Path::new(bin)
        .parent()
        .map(|d| d.join("lem-worker-shim"))
        .filter(|p| p.is_file())
    {
        cmd.env("LEM_WORKER_BIN", w);
    }
    cmd
}

/// Runs a command to completion and returns its output.
pub fn run(bin: &str, args: &[&str]) -> Output {
    command(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

/// Describes a finished command for assertion messages.
pub fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "command: {:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The repository root (this crate sits in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether `LEM_SKIP_DOCKER=1` asks to skip the tests that need Docker; says so loudly
/// (a skipped test is never a silent pass).
pub fn skip_docker(test: &str) -> bool {
    let skip = std::env::var("LEM_SKIP_DOCKER").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("SKIPPED {test}: LEM_SKIP_DOCKER=1 (this test needs Docker; CI never sets it)");
    }
    skip
}

/// Builds (or finds) the harness image with docker/images.sh (which builds the base
/// image first, both cached); returns its tag.
pub fn harness_image() -> String {
    let script = repo_root().join("docker/images.sh");
    let out = run(script.to_str().unwrap(), &[]);
    assert!(
        out.status.success(),
        "docker/images.sh failed; this test needs Docker (LEM_SKIP_DOCKER=1 ./test.sh skips it)\n{}",
        describe(&[script.to_str().unwrap()], &out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("images.sh prints the tag last")
        .trim()
        .to_string()
}

/// The ids (full) and states of the containers, running or not, labelled `label`
/// (`key=value`), from the docker CLI (tests may use it; the product may not).
pub fn containers_labelled(label: &str) -> Vec<(String, String)> {
    let filter = format!("label={label}");
    let args = [
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &filter,
        "--format",
        "{{.ID}} {{.State}}",
    ];
    let out = run("docker", &args);
    assert!(out.status.success(), "{}", describe(&args, &out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once(' ')?;
            Some((id.to_string(), state.to_string()))
        })
        .collect()
}

/// Removes the containers labelled with each of its labels (`lem.data-dir=DIR`: the
/// containers of the workers of the data dirs a test used) when dropped, however the
/// test ends.
pub struct RemoveContainers(pub Vec<String>);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        for label in &self.0 {
            let ids: Vec<String> = containers_labelled(label)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                let _ = run("docker", &args);
            }
        }
    }
}

/// The user a test runs a worker of the docker runtime as, so that a file the
/// worker or its containers write as root stands out: `None` (the test's own user)
/// unless the test runs as root; then nobody (65534) in the group that owns the
/// Docker socket, if that group may use it.
pub fn unprivileged_docker_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(String::from))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let meta = std::fs::metadata(&socket).ok()?;
    (meta.gid() != 0 && meta.mode() & 0o060 == 0o060).then_some((65534, meta.gid()))
}
