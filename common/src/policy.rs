//! What a study may not decide on a GPU host: the keys that choose what code runs there
//! or which of its files and credentials are used. The host's own configuration decides
//! them; a study that asks for more is refused before anything runs (with the key and
//! what would allow it). Pure: a config and the host's policy in, a reason out.
//!
//! Why: a coordinator tells every GPU host what to run. `passthrough_kwargs:
//! {trust_remote_code: true}` (or the same key under an engine's `engine_params`) would
//! otherwise run a model repository's Python on the whole fleet, even where the host's
//! own `LLEM_TRUST_REMOTE_CODE` gate is off; a cache path or token in a study would make
//! a host read or write files, or use credentials, its operator never chose.

use crate::Value;

/// The host's choices (`lem-worker --trust-remote-code`, or `LLEM_TRUST_REMOTE_CODE`
/// set for the worker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// The host runs model repositories' own Python (`trust_remote_code`).
    pub trust_remote_code: bool,
}

/// Keys that run a repository's code: allowed only where the host allows remote code.
pub const REMOTE_CODE_KEYS: &[&str] = &["trust_remote_code", "code_revision"];

/// Keys that choose the host's files or credentials, or load code by name: never taken
/// from a study (the host's own configuration sets them).
pub const HOST_ONLY_KEYS: &[&str] = &[
    "cache_dir",
    "download_dir",
    "token",
    "use_auth_token",
    "hf_token",
    "worker_cls",
    "worker_extension_cls",
];

/// The sections of a config where such keys can be written.
const SECTIONS: &[&str] = &[
    "passthrough_kwargs",
    "transformers.engine_params",
    "vllm.engine_params",
    "tensorrt.engine_params",
];

/// Why `config` asks for more than `policy` allows, or `None`.
pub fn refusal(config: &Value, policy: &HostPolicy) -> Option<String> {
    for section in SECTIONS {
        let Some(map) = config.get_path(section).and_then(Value::as_map) else {
            continue;
        };
        for (key, value) in map {
            let key = key.as_str();
            let set = !matches!(value, Value::Null | Value::Bool(false));
            if HOST_ONLY_KEYS.contains(&key) && set {
                return Some(format!(
                    "{section}.{key} is set by the study, but it chooses this host's files or credentials (or loads code by name), which only the host's own configuration decides; remove it from the study (host-only keys: {})",
                    HOST_ONLY_KEYS.join(", ")
                ));
            }
            if REMOTE_CODE_KEYS.contains(&key) && set && !policy.trust_remote_code {
                return Some(format!(
                    "{section}.{key} asks this host to run a model repository's own code, which its operator has not allowed; remove it from the study, or run the worker with --trust-remote-code (or LLEM_TRUST_REMOTE_CODE=1) on the hosts that should"
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Value {
        crate::yaml::load(text, "t.yaml").unwrap().value
    }

    const TRUSTING: HostPolicy = HostPolicy {
        trust_remote_code: true,
    };

    #[test]
    fn remote_code_follows_the_host_not_the_study() {
        for text in [
            "passthrough_kwargs: {trust_remote_code: true}\n",
            "transformers: {engine_params: {trust_remote_code: true}}\n",
            "vllm: {engine_params: {trust_remote_code: true}}\n",
            "passthrough_kwargs: {code_revision: abc}\n",
        ] {
            let why = refusal(&config(text), &HostPolicy::default()).expect(text);
            assert!(why.contains("--trust-remote-code"), "{why}");
            assert_eq!(refusal(&config(text), &TRUSTING), None, "{text}");
        }
        // Asking for less is always fine.
        let off = config("passthrough_kwargs: {trust_remote_code: false}\n");
        assert_eq!(refusal(&off, &HostPolicy::default()), None);
    }

    #[test]
    fn host_files_and_credentials_are_never_the_studys() {
        for key in HOST_ONLY_KEYS {
            let text = format!("passthrough_kwargs: {{{key}: /tmp/x}}\n");
            let why = refusal(&config(&text), &TRUSTING).expect(key);
            assert!(
                why.contains(key) && why.contains("passthrough_kwargs"),
                "{why}"
            );
        }
        assert_eq!(
            refusal(&config("task: {model: m}\n"), &HostPolicy::default()),
            None
        );
    }
}
