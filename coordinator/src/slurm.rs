//! `lem-coord slurm-script`: an sbatch script that runs `lem-worker` on the GPU nodes
//! of a lab that reaches its GPUs only through Slurm (docs/slurm.md).
//!
//! The script asks for `--gpus-per-node` GPUs on each node and starts one worker per
//! node with `srun`. Slurm binds the GPUs: it sets `CUDA_VISIBLE_DEVICES` for the job
//! step, and the worker measures exactly those (`--slots auto`, one slot per GPU;
//! `lem_worker::nvml::visible_gpus`). Each worker
//!
//! * joins the coordinator with the join token in `--token-file` (on a file system
//!   the nodes share, readable by the job's user only; the script refuses a token
//!   others can read), as worker `slurm-JOBID-NODE`, into its own data dir
//!   (`--worker-dir`, node-local, one per job and node); the credential is removed
//!   when the worker ends;
//! * runs with `--exit-when-idle`: it leaves when the coordinator has no work it can
//!   take (`lem_worker::idle`), so the job ends and the allocation goes back;
//! * runs with `--drain`: on SIGTERM (scancel, preemption, or the time limit, which
//!   `#SBATCH --signal=TERM@SECS` announces `--term-before` seconds early) it hands
//!   the run in progress back (pending again, the attempt not counted) and exits.
//!   The batch shell and each node's shell forward SIGTERM to what they started and
//!   wait for it, so nothing is killed before the worker has handed its run back.
//!
//! `--array N` makes N single-node jobs instead of one job of `--nodes N`: each gives
//! its node back as soon as its own worker leaves.
//!
//! Everything a user gives ends up quoted in the script: values in `#SBATCH` lines
//! are checked against what sbatch reads there, shell words are single-quoted, and
//! `--worker-dir` is the one value the node's shell expands (its `$VARIABLES`, and
//! `%j %N %n %u %A %a %%`, below).

use std::path::PathBuf;

use anyhow::anyhow;

use crate::cli::{invalid, CliError};

/// `lem-coord slurm-script`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SlurmArgs {
    /// The coordinator's address as the GPU nodes reach it (host:port).
    #[arg(long, env = "LEM_COORDINATOR")]
    pub coordinator: String,
    /// A file holding a join token (`lem-coord token create`), as the nodes see it:
    /// an absolute path on a file system every node mounts, mode 600. Each node's
    /// worker joins with it when its job starts; the token must still be valid then.
    #[arg(long)]
    pub token_file: String,
    /// GPUs on each node (sbatch --gpus-per-node); the worker measures exactly the
    /// GPUs Slurm binds (CUDA_VISIBLE_DEVICES), one slot each.
    #[arg(long)]
    pub gpus_per_node: u32,
    /// Nodes of the one job, one worker each.
    #[arg(long, default_value_t = 1, conflicts_with = "array")]
    pub nodes: u32,
    /// Instead, an array of N single-node jobs: each starts when Slurm has a node for
    /// it and gives its node back as soon as its worker leaves.
    #[arg(long, value_name = "N")]
    pub array: Option<u32>,
    /// sbatch --partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// sbatch --time (the time limit: `30`, `4:00:00`, `1-00:00:00`).
    #[arg(long)]
    pub time: Option<String>,
    /// sbatch --account.
    #[arg(long)]
    pub account: Option<String>,
    /// sbatch --job-name.
    #[arg(long, default_value = "lem-worker")]
    pub job_name: String,
    /// Another sbatch option for the script's `#SBATCH` lines (repeatable):
    /// `--sbatch --qos=high --sbatch --cpus-per-gpu=4`.
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// The job's output file (sbatch --output; default lem-worker-%j.out, or
    /// lem-worker-%A_%a.out for an array).
    #[arg(long, value_name = "PATTERN")]
    pub job_log: Option<String>,
    /// Each worker's data dir on its node (node-local: journal, logs, harness, its
    /// credential while it runs). Expanded by bash on the node: `$VARIABLES`, and
    /// `%j` job id, `%N` node name, `%n` node index in the job, `%u` user, `%A`/`%a`
    /// array job id and index, `%%` a `%`.
    #[arg(long, default_value = "/tmp/lem-worker-%u/%j-%N")]
    pub worker_dir: String,
    /// The lem-worker binary on the nodes.
    #[arg(long, default_value = "lem-worker")]
    pub lem_worker: String,
    /// The workers measure the labelled simulated GPU (a test of the setup: Slurm's
    /// binding still chooses their GPU indices).
    #[arg(long)]
    pub simulate_gpu: bool,
    /// lem-worker --idle-grace: how long a worker that has run nothing yet waits for
    /// work before it leaves (default the worker's, 5m).
    #[arg(long)]
    pub idle_grace: Option<String>,
    /// Seconds before the time limit at which Slurm sends the workers SIGTERM
    /// (`#SBATCH --signal=TERM@SECS`), so a run in progress is handed back before
    /// the hard stop; 0: none (Slurm's own SIGTERM at the limit, KillWait before
    /// SIGKILL).
    #[arg(long, default_value_t = 120)]
    pub term_before: u32,
    /// Write the script to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// More lem-worker flags, after `--` (`-- --runtime docker --image ...`).
    #[arg(last = true, value_name = "WORKER_FLAGS")]
    pub worker_args: Vec<String>,
}

/// The flags the script sets itself, and the option of `slurm-script` that says how.
const SET_BY_SCRIPT: &[(&str, &str)] = &[
    ("--coordinator", "--coordinator"),
    ("--data-dir", "--worker-dir"),
    ("--name", "(slurm-JOBID-NODE)"),
    ("--slots", "(auto: one slot per GPU Slurm binds)"),
    ("--exit-when-idle", "(always)"),
    ("--drain", "(always)"),
    ("--idle-grace", "--idle-grace"),
    ("--simulate-gpu", "--simulate-gpu"),
];

/// The script, and what the user should hear about it.
#[derive(Debug)]
pub struct Script {
    pub text: String,
    pub warnings: Vec<String>,
}

/// `lem-coord slurm-script`: writes the script (stdout or `--out`).
pub fn main(args: &SlurmArgs) -> Result<(), CliError> {
    let command = command_line(std::env::args().skip(1));
    let script = script(args, &command).map_err(|m| invalid(anyhow!(m)))?;
    for w in &script.warnings {
        eprintln!("warning: {w}");
    }
    match &args.out {
        None => print!("{}", script.text),
        Some(path) => {
            std::fs::write(path, &script.text)
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "wrote {}; submit it with: sbatch {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// The command line that made a script, for its header.
fn command_line(args: impl Iterator<Item = String>) -> String {
    std::iter::once("lem-coord".to_string())
        .chain(args.map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./:,%@+".contains(c))
            {
                a
            } else {
                quote(&a)
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
        .replace('\n', " ")
}

/// A shell word: `'...'`, a `'` written as `'\''`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `--worker-dir` as a double-quoted bash word: `%` codes become Slurm's variables,
/// `"`, `\` and `` ` `` are escaped, `$` is left for the node's shell to expand.
pub fn worker_dir_word(template: &str) -> Result<String, String> {
    let mut out = String::from("\"");
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => {
                let code = chars.next();
                out.push_str(match code {
                    Some('j') => "${SLURM_JOB_ID}",
                    Some('N') => "${SLURMD_NODENAME}",
                    Some('n') => "${SLURM_NODEID}",
                    Some('u') => "$(id -un)",
                    Some('A') => "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}",
                    Some('a') => "${SLURM_ARRAY_TASK_ID:-0}",
                    Some('%') => "%",
                    other => {
                        return Err(format!(
                            "--worker-dir `{template}`: unknown `%{}` (use %j, %N, %n, %u, %A, %a or %%)",
                            other.map(String::from).unwrap_or_default()
                        ))
                    }
                });
            }
            '"' | '\\' | '`' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// A value for an `#SBATCH --flag=VALUE` line: sbatch reads that line itself, so no
/// spaces, quotes or line breaks.
fn sbatch_value(flag: &str, value: &str, extra: &str) -> Result<(), String> {
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(c))
    {
        return Err(format!(
            "--{flag} `{value}`: use letters, digits and `._-{extra}` only"
        ));
    }
    Ok(())
}

fn no_line_breaks(what: &str, value: &str) -> Result<(), String> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(format!("{what}: no line breaks: {value:?}"));
    }
    Ok(())
}

/// Whether `host` is this machine's loopback, which a compute node cannot reach.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The script for `a`; `command` is the command line that asked for it (for its
/// header). `Err` names the flag that is wrong.
pub fn script(a: &SlurmArgs, command: &str) -> Result<Script, String> {
    let mut warnings = Vec::new();
    // --- Checks ----------------------------------------------------------------------
    let Some((host, port)) = a.coordinator.rsplit_once(':') else {
        return Err(format!(
            "--coordinator `{}`: give host:port, as the GPU nodes reach the coordinator",
            a.coordinator
        ));
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c))
        || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!(
            "--coordinator `{}`: give host:port, as the GPU nodes reach the coordinator",
            a.coordinator
        ));
    }
    if is_loopback(host) {
        warnings.push(format!(
            "--coordinator {}: the workers run on the GPU nodes, and that address is each node's own; give the head node's name or address",
            a.coordinator
        ));
    }
    no_line_breaks("--token-file", &a.token_file)?;
    if !a.token_file.starts_with('/') {
        return Err(format!(
            "--token-file `{}`: give an absolute path, as every node sees it (on a shared file system)",
            a.token_file
        ));
    }
    warn_if_token_readable(&a.token_file, &mut warnings);
    if a.gpus_per_node == 0 {
        return Err("--gpus-per-node must be at least 1: without GPUs bound by Slurm a worker would measure GPUs other jobs use".into());
    }
    if a.nodes == 0 || a.array == Some(0) {
        return Err("--nodes and --array take at least 1".into());
    }
    if let Some(p) = &a.partition {
        sbatch_value("partition", p, ",")?;
    }
    if let Some(acc) = &a.account {
        sbatch_value("account", acc, "")?;
    }
    if let Some(t) = &a.time {
        sbatch_value("time", t, ":")?;
    }
    sbatch_value("job-name", &a.job_name, "")?;
    if let Some(l) = &a.job_log {
        sbatch_value("job-log", l, "%/")?;
    }
    for o in &a.sbatch {
        no_line_breaks("--sbatch", o)?;
        if !o.starts_with('-') {
            return Err(format!(
                "--sbatch `{o}`: give an sbatch option as on its command line, e.g. --sbatch --qos=high"
            ));
        }
    }
    no_line_breaks("--worker-dir", &a.worker_dir)?;
    let dir_word = worker_dir_word(&a.worker_dir)?;
    no_line_breaks("--lem-worker", &a.lem_worker)?;
    if let Some(g) = &a.idle_grace {
        lem_common::idle::parse_grace(g).map_err(|e| format!("--idle-grace {e}"))?;
    }
    for w in &a.worker_args {
        no_line_breaks("a lem-worker flag", w)?;
        for (flag, how) in SET_BY_SCRIPT {
            if w == flag || w.starts_with(&format!("{flag}=")) {
                return Err(format!(
                    "lem-worker {flag} is set by the script; use slurm-script's {how}"
                ));
            }
        }
    }

    // --- #SBATCH lines ---------------------------------------------------------------
    let mut sb = vec![format!("--job-name={}", a.job_name)];
    match a.array {
        Some(n) => {
            sb.push(format!("--array=0-{}", n - 1));
            sb.push("--nodes=1".into());
        }
        None => sb.push(format!("--nodes={}", a.nodes)),
    }
    sb.push("--ntasks-per-node=1".into());
    sb.push(format!("--gpus-per-node={}", a.gpus_per_node));
    if let Some(p) = &a.partition {
        sb.push(format!("--partition={p}"));
    }
    if let Some(t) = &a.time {
        sb.push(format!("--time={t}"));
    }
    if let Some(acc) = &a.account {
        sb.push(format!("--account={acc}"));
    }
    if a.term_before > 0 {
        sb.push(format!("--signal=TERM@{}", a.term_before));
    }
    let log = a.job_log.clone().unwrap_or_else(|| {
        if a.array.is_some() {
            "lem-worker-%A_%a.out".into()
        } else {
            "lem-worker-%j.out".into()
        }
    });
    sb.push(format!("--output={log}"));
    sb.extend(a.sbatch.iter().cloned());

    // --- The worker's command line -----------------------------------------------------
    let mut flags = vec![
        "--slots".to_string(),
        "auto".into(),
        "--exit-when-idle".into(),
        "--drain".into(),
    ];
    if let Some(g) = &a.idle_grace {
        flags.extend(["--idle-grace".into(), g.clone()]);
    }
    if a.simulate_gpu {
        flags.push("--simulate-gpu".into());
    }
    flags.extend(a.worker_args.iter().cloned());
    let flags: Vec<String> = flags.iter().map(|f| quote(f)).collect();

    // --- The script ----------------------------------------------------------------------
    let mut s = String::from("#!/bin/bash\n");
    for line in &sb {
        s.push_str(&format!("#SBATCH {line}\n"));
    }
    let shape = match a.array {
        Some(n) => format!(
            "an array of {n} single-node job(s), each gives its node back when its worker leaves"
        ),
        None => format!(
            "{} node(s) in one job, given back when every worker has left",
            a.nodes
        ),
    };
    s.push_str(&format!(
        r#"#
# lem fleet workers under Slurm ({shape}), made by
#   {command}
# (lem fleet {version}; docs/slurm.md). On each node, with the GPUs Slurm binds
# (CUDA_VISIBLE_DEVICES): joins the coordinator with the token in LEM_TOKEN_FILE, then
# runs lem-worker --slots auto --exit-when-idle --drain: one slot per GPU; it leaves
# when the coordinator has no work it can take, and on SIGTERM (scancel, preemption,
# the time limit) it hands its run in progress back and exits.
set -uo pipefail

export LEM_WORKER={worker}
export LEM_COORDINATOR={coordinator}
export LEM_TOKEN_FILE={token_file}

# Waits for process $1 and returns its status; a trapped signal (SIGTERM, forwarded)
# interrupts `wait`, so wait again while it runs.
lem_wait() {{
    local pid=$1 status again
    while :; do
        wait "$pid"
        status=$?
        if [ "$status" -gt 128 ]; then
            if kill -0 "$pid" 2>/dev/null; then
                continue
            fi
            wait "$pid" 2>/dev/null
            again=$?
            [ "$again" -ne 127 ] && status=$again
        fi
        return "$status"
    done
}}

# One node's worker (runs under srun, once per node).
lem_node() {{
    local node=${{SLURMD_NODENAME:-$(hostname -s)}}
    local dir name pid status
    dir={dir_word}
    name="slurm-${{SLURM_JOB_ID}}-${{node}}"
    name=${{name//[^A-Za-z0-9._-]/-}}
    name=${{name:0:64}}
    umask 077
    if ! mkdir -p "$dir"; then
        echo "lem-worker job ${{SLURM_JOB_ID}} on $node: cannot create the worker dir $dir" >&2
        return 1
    fi
    if [ ! -s "$dir/credentials.pem" ]; then
        if [ ! -r "$LEM_TOKEN_FILE" ]; then
            echo "lem-worker job ${{SLURM_JOB_ID}} on $node: cannot read the join token file $LEM_TOKEN_FILE (it must be on a file system every node mounts)" >&2
            return 1
        fi
        case "$(stat -L -c %a "$LEM_TOKEN_FILE")" in
            *00) ;;
            *)
                echo "lem-worker job ${{SLURM_JOB_ID}} on $node: other users can read the join token file $LEM_TOKEN_FILE; chmod 600 it (a token lets anyone enrol a worker)" >&2
                return 1
                ;;
        esac
        # The token goes through the environment of `join` only, not its arguments
        # (which every user of the node can list).
        if ! LEM_JOIN_TOKEN="$(cat "$LEM_TOKEN_FILE")" "$LEM_WORKER" join \
            --coordinator "$LEM_COORDINATOR" --data-dir "$dir" --name "$name"; then
            echo "lem-worker job ${{SLURM_JOB_ID}} on $node: could not join the coordinator at $LEM_COORDINATOR (above)" >&2
            return 1
        fi
    fi
    echo "lem-worker job ${{SLURM_JOB_ID}} on $node: worker $name, GPUs CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-unset}}, data dir $dir" >&2
    "$LEM_WORKER" --coordinator "$LEM_COORDINATOR" --data-dir "$dir" \
        {flags} &
    pid=$!
    trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
    lem_wait "$pid"
    status=$?
    # The worker's certificate is good for this job only.
    rm -f "$dir/credentials.pem"
    echo "lem-worker job ${{SLURM_JOB_ID}} on $node: worker $name exited with status $status" >&2
    return "$status"
}}

# One task per node; a worker that leaves early neither ends the others (--wait=0)
# nor fails the job for them (--kill-on-bad-exit=0). SIGTERM to this shell goes on
# to srun, which passes it to the workers.
srun --ntasks-per-node=1 --kill-on-bad-exit=0 --wait=0 \
    bash -c "$(declare -f lem_wait lem_node); lem_node" &
srun_pid=$!
trap 'kill -TERM "$srun_pid" 2>/dev/null' TERM INT
lem_wait "$srun_pid"
exit $?
"#,
        version = env!("CARGO_PKG_VERSION"),
        worker = quote(&a.lem_worker),
        coordinator = quote(&a.coordinator),
        token_file = quote(&a.token_file),
        flags = flags.join(" "),
    ));
    Ok(Script { text: s, warnings })
}

/// A token file that exists here and that others can read: say so (the script
/// refuses it on the nodes).
fn warn_if_token_readable(path: &str, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "{path} is readable by others (mode {:o}); the job refuses it: chmod 600 {path}",
                mode & 0o777
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(flatten)]
        a: SlurmArgs,
    }

    fn args(extra: &[&str]) -> SlurmArgs {
        let mut v = vec![
            "slurm-script",
            "--coordinator",
            "head:7700",
            "--token-file",
            "/home/u/.lem/token",
            "--gpus-per-node",
            "4",
        ];
        v.extend_from_slice(extra);
        Cmd::try_parse_from(v).unwrap().a
    }

    fn lines(s: &Script, prefix: &str) -> Vec<String> {
        s.text
            .lines()
            .filter(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// `bash -n`: the script parses.
    fn bash_n(text: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.sbatch");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bash -n: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn one_job_over_nodes() {
        let s = script(
            &args(&[
                "--nodes",
                "3",
                "--partition",
                "gpu",
                "--time",
                "4:00:00",
                "--account",
                "lab",
                "--sbatch",
                "--qos=high",
            ]),
            "lem-coord slurm-script ...",
        )
        .unwrap();
        assert_eq!(
            lines(&s, "#SBATCH"),
            [
                "#SBATCH --job-name=lem-worker",
                "#SBATCH --nodes=3",
                "#SBATCH --ntasks-per-node=1",
                "#SBATCH --gpus-per-node=4",
                "#SBATCH --partition=gpu",
                "#SBATCH --time=4:00:00",
                "#SBATCH --account=lab",
                "#SBATCH --signal=TERM@120",
                "#SBATCH --output=lem-worker-%j.out",
                "#SBATCH --qos=high",
            ]
        );
        assert!(s.text.starts_with("#!/bin/bash\n#SBATCH "), "{}", s.text);
        // sbatch reads #SBATCH lines only before the first command.
        let first_command = s
            .text
            .lines()
            .position(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap();
        let all: Vec<&str> = s.text.lines().collect();
        let last_sbatch = all.iter().rposition(|l| l.starts_with("#SBATCH")).unwrap();
        assert!(last_sbatch < first_command);
        assert_eq!(
            lines(&s, "export"),
            [
                "export LEM_WORKER='lem-worker'",
                "export LEM_COORDINATOR='head:7700'",
                "export LEM_TOKEN_FILE='/home/u/.lem/token'",
            ]
        );
        assert_eq!(
            lines(&s, "'--slots'"),
            ["'--slots' 'auto' '--exit-when-idle' '--drain' &"]
        );
        assert_eq!(
            lines(&s, "dir="),
            [r#"dir="/tmp/lem-worker-$(id -un)/${SLURM_JOB_ID}-${SLURMD_NODENAME}""#]
        );
        assert_eq!(
            lines(&s, "srun "),
            ["srun --ntasks-per-node=1 --kill-on-bad-exit=0 --wait=0 \\"]
        );
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        bash_n(&s.text);
    }

    #[test]
    fn an_array_of_single_node_jobs() {
        let s = script(
            &args(&[
                "--array",
                "8",
                "--simulate-gpu",
                "--idle-grace",
                "10m",
                "--term-before",
                "0",
                "--lem-worker",
                "/opt/lem/bin/lem-worker",
                "--",
                "--prefill-window-seconds",
                "0",
            ]),
            "x",
        )
        .unwrap();
        let sb = lines(&s, "#SBATCH");
        assert!(sb.contains(&"#SBATCH --array=0-7".to_string()), "{sb:?}");
        assert!(sb.contains(&"#SBATCH --nodes=1".to_string()), "{sb:?}");
        assert!(
            sb.contains(&"#SBATCH --output=lem-worker-%A_%a.out".to_string()),
            "{sb:?}"
        );
        assert!(!sb.iter().any(|l| l.contains("--signal")), "{sb:?}");
        assert_eq!(
            lines(&s, "'--slots'"),
            ["'--slots' 'auto' '--exit-when-idle' '--drain' '--idle-grace' '10m' '--simulate-gpu' '--prefill-window-seconds' '0' &"]
        );
        assert!(s
            .text
            .contains("export LEM_WORKER='/opt/lem/bin/lem-worker'\n"));
        bash_n(&s.text);
    }

    #[test]
    fn user_text_stays_quoted() {
        let s = script(
            &args(&[
                "--worker-dir",
                "$TMPDIR/lem \"x\" `y` %j%%%n",
                "--",
                "--python",
                "it's $(touch /tmp/pwned)",
            ]),
            "x",
        )
        .unwrap();
        assert_eq!(
            lines(&s, "dir="),
            [r#"dir="$TMPDIR/lem \"x\" \`y\` ${SLURM_JOB_ID}%${SLURM_NODEID}""#]
        );
        assert!(
            s.text
                .contains(r#"'--python' 'it'\''s $(touch /tmp/pwned)'"#),
            "{}",
            s.text
        );
        bash_n(&s.text);
        assert_eq!(quote("a'b"), r#"'a'\''b'"#);
    }

    #[test]
    fn wrong_values_name_their_flag() {
        let bad = |extra: &[&str], needle: &str| {
            let e = script(&args(extra), "x").unwrap_err();
            assert!(e.contains(needle), "{extra:?}: {e}");
        };
        bad(&["--partition", "gpu; rm"], "--partition");
        bad(&["--time", "4 h"], "--time");
        bad(&["--sbatch", "qos=high"], "--sbatch");
        bad(&["--sbatch", "--qos=a\n#SBATCH --x"], "line breaks");
        bad(&["--worker-dir", "/tmp/%q"], "%q");
        bad(&["--idle-grace", "5"], "--idle-grace");
        bad(&["--", "--slots", "2"], "--slots is set by the script");
        bad(&["--", "--data-dir=/x"], "--worker-dir");
        let mut a = args(&[]);
        a.gpus_per_node = 0;
        assert!(script(&a, "x").unwrap_err().contains("--gpus-per-node"));
        let mut a = args(&[]);
        a.coordinator = "head".into();
        assert!(script(&a, "x").unwrap_err().contains("host:port"));
        a.coordinator = "head:7700".into();
        a.token_file = "token".into();
        assert!(script(&a, "x").unwrap_err().contains("absolute"));
        let mut a = args(&[]);
        a.coordinator = "127.0.0.1:7700".into();
        let s = script(&a, "x").unwrap();
        assert!(s.warnings[0].contains("head node"), "{:?}", s.warnings);
        assert!(Cmd::try_parse_from([
            "x",
            "--coordinator",
            "h:1",
            "--token-file",
            "/t",
            "--gpus-per-node",
            "1",
            "--nodes",
            "2",
            "--array",
            "2"
        ])
        .is_err());
    }

    #[test]
    fn the_header_says_how_it_was_made() {
        let c = command_line(
            ["slurm-script", "--worker-dir", "/scratch/$USER x"]
                .iter()
                .map(|s| s.to_string()),
        );
        assert_eq!(c, "lem-coord slurm-script --worker-dir '/scratch/$USER x'");
    }
}
