//! Where a run may execute: a study's `runners:` and `images:` (llem 0.7.0, FORMAT.md
//! 6.3) as a need per engine, and whether a worker's runtime meets it. Pure.
//!
//! llem resolves a runner per engine on one host: `process` (the host's Python),
//! `container` (a container of the engine's image) or `container:<image>`; with no
//! `runners:` entry the host decides (a container when Docker and the NVIDIA runtime
//! are there). `images:` names the image an engine's container runs, and wins over the
//! image in `container:<image>`; it says nothing about runs in a process. The fleet
//! keeps those meanings across hosts: a run is leased only to a worker whose runtime
//! (`lem-worker --runtime`, `--image`) is what its engine's runner asks for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::KNOWN_ENGINES;
use crate::Value;

/// What a run needs of the worker's runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerNeed {
    /// Any worker (no `runners:` or `images:` entry for the engine, or `auto`).
    #[default]
    Any,
    /// `runners: {engine: process}`: a worker with `--runtime process`.
    Process,
    /// `container` or `container:<image>`: a worker with `--runtime docker`, running
    /// `image` when one is named (`images:` first, then the runner's own).
    Container { image: Option<String> },
    /// Only `images: {engine: image}`: a process worker, or a docker worker running
    /// `image` (llem's host-decided runner with that image for containers).
    ImageIfContainer { image: String },
}

/// The harness image a docker-runtime worker runs unless told otherwise
/// (`lem-worker --image`, `lem-coord run --image`; built by docker/images.sh).
pub const DEFAULT_HARNESS_IMAGE: &str = "lem-fleet/harness:latest";

/// The runtime a worker runs its harness in, as it registers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerRuntime {
    /// `process` or `docker` (`lem-worker --runtime`); empty from workers before
    /// runtimes were reported, which ran `process`.
    pub kind: String,
    /// With `docker`: the image as the worker was given it (`--image`) and its id.
    pub image: Option<String>,
    pub image_id: Option<String>,
}

impl WorkerRuntime {
    pub fn process() -> WorkerRuntime {
        WorkerRuntime {
            kind: "process".into(),
            image: None,
            image_id: None,
        }
    }

    pub fn docker(image: &str, image_id: &str) -> WorkerRuntime {
        WorkerRuntime {
            kind: "docker".into(),
            image: Some(image.into()),
            image_id: Some(image_id.into()),
        }
    }

    fn is_docker(&self) -> bool {
        self.kind == "docker"
    }

    /// Whether this worker runs `wanted` (a name with or without its tag or
    /// `docker.io/library/`, or the image's id `sha256:...`).
    pub fn runs_image(&self, wanted: &str) -> bool {
        if !self.is_docker() {
            return false;
        }
        let by_id = |id: &str| {
            let short = |s: &str| s.strip_prefix("sha256:").unwrap_or(s).to_string();
            // A full id, or an unambiguous prefix of 12 or more hex digits (what
            // `docker images` prints).
            let w = short(wanted);
            w.len() >= 12 && short(id).starts_with(&w)
        };
        self.image_id.as_deref().is_some_and(by_id)
            || self
                .image
                .as_deref()
                .is_some_and(|name| normalise_image(name) == normalise_image(wanted))
    }

    /// In words, for a blocked campaign's reason.
    pub fn describe(&self) -> String {
        if self.is_docker() {
            format!(
                "docker runtime, image {}",
                self.image.as_deref().unwrap_or("?")
            )
        } else {
            "process runtime".into()
        }
    }
}

/// An image reference as Docker resolves it: `docker.io/` and `library/` dropped, and
/// `:latest` when it names no tag or digest.
pub fn normalise_image(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix("docker.io/").unwrap_or(s);
    let s = s.strip_prefix("library/").unwrap_or(s);
    let last = s.rsplit('/').next().unwrap_or(s);
    if s.contains('@') || last.contains(':') {
        s.to_string()
    } else {
        format!("{s}:latest")
    }
}

impl RunnerNeed {
    /// Whether a worker with `runtime` may run it.
    pub fn met_by(&self, runtime: &WorkerRuntime) -> bool {
        match self {
            RunnerNeed::Any => true,
            RunnerNeed::Process => !runtime.is_docker(),
            RunnerNeed::Container { image: None } => runtime.is_docker(),
            RunnerNeed::Container { image: Some(i) } => runtime.runs_image(i),
            RunnerNeed::ImageIfContainer { image } => {
                !runtime.is_docker() || runtime.runs_image(image)
            }
        }
    }

    /// The suffix of the pending-index pool of runs with this need: empty for
    /// [`RunnerNeed::Any`] (so older manifests read the same), else `|` and a tag.
    /// `|` appears in no engine name and no image reference.
    pub fn pool_suffix(&self) -> String {
        match self {
            RunnerNeed::Any => String::new(),
            RunnerNeed::Process => "|process".into(),
            RunnerNeed::Container { image: None } => "|container".into(),
            RunnerNeed::Container { image: Some(i) } => format!("|container={i}"),
            RunnerNeed::ImageIfContainer { image } => format!("|image={image}"),
        }
    }

    /// The need a pool suffix (without its `|`) names; `None` for an unknown one.
    pub fn from_pool_suffix(s: &str) -> Option<RunnerNeed> {
        Some(match s {
            "" => RunnerNeed::Any,
            "process" => RunnerNeed::Process,
            "container" => RunnerNeed::Container { image: None },
            _ => {
                if let Some(i) = s.strip_prefix("container=") {
                    RunnerNeed::Container {
                        image: Some(i.to_string()),
                    }
                } else if let Some(i) = s.strip_prefix("image=") {
                    RunnerNeed::ImageIfContainer {
                        image: i.to_string(),
                    }
                } else {
                    return None;
                }
            }
        })
    }

    /// In words, as the study asks it.
    pub fn describe(&self) -> String {
        match self {
            RunnerNeed::Any => "any runtime".into(),
            RunnerNeed::Process => "the process runtime".into(),
            RunnerNeed::Container { image: None } => "a container (the docker runtime)".into(),
            RunnerNeed::Container { image: Some(i) } => format!("a container of image {i}"),
            RunnerNeed::ImageIfContainer { image } => {
                format!("the process runtime or a container of image {image}")
            }
        }
    }

    /// The worker flags that meet it.
    pub fn fix(&self) -> String {
        match self {
            RunnerNeed::Any => String::new(),
            RunnerNeed::Process => "start a worker with --runtime process".into(),
            RunnerNeed::Container { image: None } => "start a worker with --runtime docker".into(),
            RunnerNeed::Container { image: Some(i) }
            | RunnerNeed::ImageIfContainer { image: i } => format!(
                "start a worker with --runtime docker --image {i} --allow-image {i} (or change the study's runners:/images:)"
            ),
        }
    }
}

/// The study's `runners:` and `images:` as the need of each engine they name. An
/// engine they do not name needs [`RunnerNeed::Any`] ([`need_of`]). Errors name the
/// key, the value and what is valid: a runner value other than `process`,
/// `container`, `container:<image>` or `auto` (llem's pre-0.7 `local`, `docker` and
/// `docker:<image>` with llem's rename hint), a key that is not an engine, a value
/// that is not a string.
pub fn study_needs(
    runners: Option<&Value>,
    images: Option<&Value>,
) -> Result<BTreeMap<String, RunnerNeed>, String> {
    let runners = string_map("runners", runners)?;
    let images = string_map("images", images)?;
    let mut out = BTreeMap::new();
    for engine in runners.keys().chain(images.keys()) {
        if out.contains_key(engine) {
            continue;
        }
        let image = images.get(engine).cloned();
        let need = match runners.get(engine).map(String::as_str) {
            None | Some("auto") => match image {
                Some(image) => RunnerNeed::ImageIfContainer { image },
                None => RunnerNeed::Any,
            },
            Some("process") => RunnerNeed::Process,
            Some("container") => RunnerNeed::Container { image },
            Some(v) => {
                if let Some(own) = v.strip_prefix("container:").filter(|i| !i.is_empty()) {
                    // llem: the `images:` entry wins over the runner's own image.
                    RunnerNeed::Container {
                        image: Some(image.unwrap_or_else(|| own.to_string())),
                    }
                } else {
                    return Err(bad_runner(engine, v));
                }
            }
        };
        out.insert(engine.clone(), need);
    }
    Ok(out)
}

/// The need of runs of `engine`.
pub fn need_of(needs: &BTreeMap<String, RunnerNeed>, engine: &str) -> RunnerNeed {
    needs.get(engine).cloned().unwrap_or_default()
}

fn bad_runner(engine: &str, v: &str) -> String {
    let legacy = match v {
        "local" => Some("process".to_string()),
        "docker" => Some("container".to_string()),
        _ => v
            .strip_prefix("docker:")
            .map(|i| format!("container:{}", if i.is_empty() { "<image>" } else { i })),
    };
    match legacy {
        Some(new) => format!(
            "runners.{engine}: runner value {v:?} was renamed in llem v0.7 - use {new:?}"
        ),
        None => format!(
            "runners.{engine}: {v:?} is not a runner (valid: process, container, container:<image>, auto)"
        ),
    }
}

fn string_map(key: &str, v: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    let map = match v {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Map(m) => m,
        other => {
            return Err(format!(
                "{key}: must be a mapping of engine to string, found {}",
                other.py_type_name()
            ))
        }
    };
    let mut out = BTreeMap::new();
    for (engine, value) in map {
        if !KNOWN_ENGINES.contains(&engine.as_str()) {
            return Err(format!(
                "{key}.{engine}: {engine:?} is not an engine (engines: {})",
                KNOWN_ENGINES.join(", ")
            ));
        }
        match value {
            Value::Null => {}
            Value::Str(s) if !s.trim().is_empty() => {
                out.insert(engine.clone(), s.trim().to_string());
            }
            Value::Str(_) => {
                return Err(format!(
                    "{key}.{engine}: empty; name {} or remove the key",
                    if key == "images" {
                        "an image"
                    } else {
                        "a runner"
                    }
                ))
            }
            other => {
                return Err(format!(
                    "{key}.{engine}: must be a string, found {}",
                    other.py_type_name()
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(text: &str) -> Result<BTreeMap<String, RunnerNeed>, String> {
        let v = crate::yaml::load(text, "t.yaml").unwrap().value;
        study_needs(v.get_path("runners"), v.get_path("images"))
    }

    fn image(i: &str) -> Option<String> {
        Some(i.to_string())
    }

    #[test]
    fn runner_values_become_needs() {
        let n = needs(
            "runners: {transformers: process, vllm: container, tensorrt: 'container:trt:1', synthetic: auto}\n",
        )
        .unwrap();
        assert_eq!(n["transformers"], RunnerNeed::Process);
        assert_eq!(n["vllm"], RunnerNeed::Container { image: None });
        assert_eq!(
            n["tensorrt"],
            RunnerNeed::Container {
                image: image("trt:1")
            }
        );
        assert_eq!(n["synthetic"], RunnerNeed::Any);
        assert_eq!(need_of(&n, "other"), RunnerNeed::Any);
        assert!(needs("{}\n").unwrap().is_empty());
        assert!(needs("runners: null\nimages: {}\n").unwrap().is_empty());
    }

    #[test]
    fn images_win_over_the_runners_own_image_and_alone_bind_only_containers() {
        let n = needs(
            "runners: {vllm: 'container:a:1', transformers: container}\nimages: {vllm: b:2, transformers: c:3, tensorrt: d:4}\n",
        )
        .unwrap();
        assert_eq!(
            n["vllm"],
            RunnerNeed::Container {
                image: image("b:2")
            }
        );
        assert_eq!(
            n["transformers"],
            RunnerNeed::Container {
                image: image("c:3")
            }
        );
        assert_eq!(
            n["tensorrt"],
            RunnerNeed::ImageIfContainer {
                image: "d:4".into()
            }
        );
        // A process runner ignores its image, as llem does.
        let n = needs("runners: {vllm: process}\nimages: {vllm: b:2}\n").unwrap();
        assert_eq!(n["vllm"], RunnerNeed::Process);
    }

    #[test]
    fn bad_values_are_refused_naming_the_key_and_the_fix() {
        let e = needs("runners: {vllm: docker}\n").unwrap_err();
        assert!(
            e.contains("runners.vllm") && e.contains("\"container\""),
            "{e}"
        );
        let e = needs("runners: {vllm: 'docker:x:1'}\n").unwrap_err();
        assert!(e.contains("\"container:x:1\""), "{e}");
        let e = needs("runners: {vllm: local}\n").unwrap_err();
        assert!(e.contains("\"process\""), "{e}");
        let e = needs("runners: {vllm: podman}\n").unwrap_err();
        assert!(e.contains("valid: process, container"), "{e}");
        let e = needs("runners: {vllm: 'container:'}\n").unwrap_err();
        assert!(e.contains("runners.vllm"), "{e}");
        let e = needs("runners: {tranformers: process}\n").unwrap_err();
        assert!(
            e.contains("runners.tranformers") && e.contains("transformers"),
            "{e}"
        );
        let e = needs("images: {vllm: 3}\n").unwrap_err();
        assert!(e.contains("images.vllm: must be a string"), "{e}");
        let e = needs("images: [a]\n").unwrap_err();
        assert!(e.contains("images: must be a mapping"), "{e}");
        let e = needs("images: {vllm: ''}\n").unwrap_err();
        assert!(e.contains("images.vllm: empty"), "{e}");
    }

    #[test]
    fn needs_are_met_by_the_right_workers() {
        let p = WorkerRuntime::process();
        let old = WorkerRuntime::default();
        let id = format!("sha256:{}", "ab".repeat(32));
        let d = WorkerRuntime::docker("lem-fleet/harness:latest", &id);
        let c = |i: &str| RunnerNeed::Container { image: image(i) };
        for w in [&p, &old, &d] {
            assert!(RunnerNeed::Any.met_by(w));
        }
        assert!(RunnerNeed::Process.met_by(&p) && RunnerNeed::Process.met_by(&old));
        assert!(!RunnerNeed::Process.met_by(&d));
        assert!(RunnerNeed::Container { image: None }.met_by(&d));
        assert!(!RunnerNeed::Container { image: None }.met_by(&p));
        // By name, with or without the tag; by id, full or a 12-digit prefix.
        assert!(c("lem-fleet/harness").met_by(&d));
        assert!(c("lem-fleet/harness:latest").met_by(&d));
        assert!(c(&id).met_by(&d));
        assert!(c(&id[..19]).met_by(&d));
        assert!(c(&"ab".repeat(32)).met_by(&d));
        assert!(!c("lem-fleet/harness:other").met_by(&d));
        assert!(!c("abab").met_by(&d), "too short a prefix");
        assert!(!c("lem-fleet/harness").met_by(&p));
        let only = RunnerNeed::ImageIfContainer {
            image: "other:1".into(),
        };
        assert!(only.met_by(&p));
        assert!(!only.met_by(&d));
    }

    #[test]
    fn normalised_images_compare_as_docker_resolves_them() {
        assert_eq!(normalise_image("ubuntu"), "ubuntu:latest");
        assert_eq!(normalise_image("docker.io/library/ubuntu"), "ubuntu:latest");
        assert_eq!(normalise_image("reg:5000/a/b"), "reg:5000/a/b:latest");
        assert_eq!(normalise_image("reg:5000/a/b:2"), "reg:5000/a/b:2");
        assert_eq!(normalise_image("a@sha256:00"), "a@sha256:00");
    }

    #[test]
    fn pool_suffixes_round_trip() {
        for n in [
            RunnerNeed::Any,
            RunnerNeed::Process,
            RunnerNeed::Container { image: None },
            RunnerNeed::Container {
                image: image("reg:5000/a/b@sha256:00"),
            },
            RunnerNeed::ImageIfContainer {
                image: "x/y:1".into(),
            },
        ] {
            let s = n.pool_suffix();
            let tail = s.strip_prefix('|').unwrap_or(&s);
            assert_eq!(RunnerNeed::from_pool_suffix(tail), Some(n.clone()), "{s}");
        }
        assert_eq!(RunnerNeed::from_pool_suffix("nonsense"), None);
    }
}
