"""Pure logic of the vLLM engine (standard library only, no vllm import).

llem's `vllm:` section (FORMAT.md 3.9) -> the keyword arguments of `vllm.LLM(...)`
and of `vllm.SamplingParams(...)` / `vllm.BeamSearchParams(...)`, as llem 0.7.0 maps
them (llenergymeasure/engines/vllm/plugin.py: `_build_llm_kwargs`,
`_build_sampling_kwargs`, `_build_beam_search_params`; checked case by case against
llem's own code in tests/fixtures/llem_mapping_cases.json), then the harness's
additions (random weights, the token budget) and a filter against the signatures of
the vLLM that is installed (or, in tests, recorded: engines/signatures/vllm.json).
Keys the library does not accept are dropped and reported, never passed (pitfall 5).

engines/vllm.py turns the plan into vLLM objects and runs it.
"""

from engines import engine_kwargs as K
from engines import hf_logic
from llem_config import library_sections, section, task_settings
from protocol import ConfigError

VLLM_PIN = "0.19.1"  # llem 0.7.0's rule corpus; docker/vllm/Dockerfile installs exactly this
PACKAGE = "vllm"
SECTION = "vllm"
EP = "vllm.engine_params."
SP = "vllm.sampling_params."

# Call sites, as the result's `dropped_kwargs` names them.
CALL_LLM = "LLM()"
CALL_SAMPLING = "SamplingParams()"
CALL_BEAM = "BeamSearchParams()"
CALL_SPECULATIVE = "SpeculativeConfig()"
CALL_COMPILATION = "CompilationConfig()"
CALL_ATTENTION = "AttentionConfig()"

# vllm.engine_params declared fields and llem's defaults, in llem's declaration order
# (FORMAT.md 3.9; llenergymeasure/config/generated/vllm.py). A sparse dump gets these.
ENGINE_DEFAULTS = {
    "dtype": "auto", "gpu_memory_utilization": 0.9, "cpu_offload_gb": 0.0,
    "block_size": None, "kv_cache_dtype": "auto", "enforce_eager": False,
    "enable_chunked_prefill": None, "max_num_seqs": None, "max_num_batched_tokens": None,
    "max_model_len": None, "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
    "distributed_executor_backend": None, "enable_prefix_caching": None,
    "quantization": None, "speculative_config": None, "offload_group_size": 0,
    "offload_num_in_group": 1, "offload_prefetch_step": 1, "offload_params": [],
    "disable_custom_all_reduce": False, "kv_cache_memory_bytes": None,
    "compilation_config": None, "attention": None, "beam_search": None,
}
SAMPLING_DEFAULTS = {
    "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "min_p": 0.0,
    "min_tokens": 0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "ignore_eos": False,
    "n": 1,
}
# Typed sub-models (all fields default null, unknown keys allowed).
NESTED = {"speculative_config": {}, "compilation_config": {}}

# engine_params fields llem does not pass under their own name (FORMAT.md 3.9):
# `attention` is flattened into LLM() kwargs (`backend` -> `attention_backend`),
# `beam_search` selects BeamSearchParams + LLM.beam_search() instead of
# SamplingParams + generate(), `offload_params` is passed as a set.
HANDLED_BY_MAPPING = {
    "attention": "flattened into LLM() keyword arguments; its `backend` becomes "
                 "`attention_backend`",
    "beam_search": "its keys become BeamSearchParams(...) (plus max_tokens); the run uses "
                   "LLM.beam_search()",
    "offload_params": "passed to LLM() as a set",
}

PRESETS = hf_logic.SAMPLING_PRESETS


# --- the signature the filter uses ----------------------------------------------------
def signature_from_fixture(fixture=None):
    """The recorded vLLM signatures as a Signature (fixture: engines/signatures/vllm.json)."""
    fx = K.load_fixture("vllm") if fixture is None else fixture
    sig = fx["signatures"]

    def init_fields(name, include_private=False):
        return [f["name"] for f in sig[name]["fields"]
                if f.get("init", True) and (include_private or not f.get("private"))]

    ctor = [p["name"] for p in sig["LLM.__init__"]["params"]]
    if sig["LLM.__init__"].get("var_keyword"):
        ctor += init_fields("EngineArgs")
    calls = {
        CALL_LLM: ctor,
        CALL_SAMPLING: init_fields("SamplingParams"),
        CALL_BEAM: init_fields("BeamSearchParams"),
        CALL_SPECULATIVE: init_fields("SpeculativeConfig"),
        CALL_COMPILATION: init_fields("CompilationConfig"),
        CALL_ATTENTION: init_fields("AttentionConfig"),
    }
    non_init = [f["name"] for f in sig["CompilationConfig"]["fields"] if f.get("init") is False]
    return K.Signature(PACKAGE, fx["version"], calls, "recorded (engines/signatures/vllm.json, "
                       "%s)" % fx["source"]["filename"],
                       notes=[{"compilation_config_init_false": non_init}])


# --- the config sections --------------------------------------------------------------
def sections(config):
    """(engine_params, sampling_params) of the vllm section; each None when null/absent."""
    return library_sections(config, SECTION)


def passthrough_kwargs(config):
    return section(config, "passthrough_kwargs", "passthrough_kwargs")


def _effective_sampling(sp, preset):
    """llem fills the preset into the section at validation (a dump already has it);
    for a sparse dump, fill it into null/absent keys (FORMAT.md 3.6)."""
    if preset is None:
        return sp
    if preset not in PRESETS:
        raise ConfigError("sampling_preset must be one of %s or null; got %r"
                          % (", ".join(PRESETS), preset))
    sp = dict(sp or {})
    for key, value in PRESETS[preset].items():
        if sp.get(key) is None:
            sp[key] = value
    return sp


# --- llem 0.7.0's mapping, exactly ------------------------------------------------------
def llem_constructor_kwargs(config, environ=None):
    """llem's `VLLMEngine._build_llm_kwargs`: the LLM() kwargs (offload_params a set)."""
    ts = task_settings(config)
    kwargs = {"model": ts["model"],
              "trust_remote_code": hf_logic.trust_remote_code_enabled(environ),
              "seed": ts["random_seed"]}
    if (config.get("measurement") or {}).get("latency_profiling"):
        kwargs["disable_log_stats"] = False
    ep, _ = sections(config)
    if ep is None:
        return kwargs
    dumped = K.dump_exclude_none(ep, ENGINE_DEFAULTS, NESTED)
    attention = dumped.pop("attention", None)
    dumped.pop("beam_search", None)
    offload_params = dumped.pop("offload_params", None)
    kwargs.update(dumped)
    if isinstance(attention, dict):
        attention = dict(attention)
        backend = attention.pop("backend", None)
        if backend is not None:
            kwargs["attention_backend"] = backend
        kwargs.update(attention)
    if offload_params is not None:
        kwargs["offload_params"] = set(offload_params)
    return kwargs


def beam_search_section(config):
    """llem's `engine_sub_dict("beam_search")`: a non-empty dict, else None."""
    ep, _ = sections(config)
    value = (ep or {}).get("beam_search")
    return value if isinstance(value, dict) and value else None


def llem_sampling(config):
    """(class name, kwargs) as llem builds them: BeamSearchParams from a non-empty
    `engine_params.beam_search` (its non-null keys + max_tokens), else SamplingParams
    from `sampling_params` (exclude_none, passthrough keys included) + max_tokens. No
    max_tokens when task.max_output_tokens is null."""
    task = config.get("task") or {}
    max_out = task.get("max_output_tokens", 256)
    beam = beam_search_section(config)
    if beam is not None:
        kwargs = {k: v for k, v in beam.items() if v is not None}
        if max_out is not None:
            kwargs["max_tokens"] = task_settings(config)["max_output_tokens"]
        return "BeamSearchParams", kwargs
    _, sp = sections(config)
    sp = _effective_sampling(sp, config.get("sampling_preset"))
    kwargs = {} if sp is None else K.dump_exclude_none(sp, SAMPLING_DEFAULTS)
    if max_out is not None:
        kwargs["max_tokens"] = task_settings(config)["max_output_tokens"]
    return "SamplingParams", kwargs


# --- the harness's plan -------------------------------------------------------------------
def _origin(config):
    """Config path of each LLM() kwarg, for messages."""
    ep, _ = sections(config)
    attention = (ep or {}).get("attention")
    attention = attention if isinstance(attention, dict) else {}
    fixed = {"model": "task.model", "seed": "task.random_seed",
             "trust_remote_code": "LLEM_TRUST_REMOTE_CODE (host)",
             "disable_log_stats": "measurement.latency_profiling",
             "attention_backend": EP + "attention.backend",
             "load_format": "task.model (random weights)",
             "skip_tokenizer_init": "task.model (random weights)"}

    def path(name):
        if name in fixed and not (name in (ep or {}) and name not in ENGINE_DEFAULTS):
            return fixed[name]
        if name in attention and name not in (ep or {}):
            return EP + "attention." + name
        return EP + name
    return path


def plan(config, signature, environ=None, model_path=None):
    """Everything the engine needs, as plain data.

    {"constructor": LLM() kwargs, "sampling_class": "SamplingParams"|"BeamSearchParams",
     "sampling": its kwargs, "dropped": [{"key", "call", "reason"}], "notes": [...],
     "streaming", "itl_measurement_mode", "latency_estimated", "max_tokens",
     "weights": "random"|"pretrained", "random": spec|None, "forced_max_tokens",
     "library": {"package", "installed", "pin", "matches_pin"}, "signature": {...}}

    `model_path`: the random model's directory (the engine writes it; None in tests).
    """
    ts = task_settings(config)
    env_remote = hf_logic.trust_remote_code_enabled(environ)
    random_ = hf_logic.is_random_model(ts["model"])
    spec = hf_logic.random_model_spec(ts["model"]) if random_ else None
    dropped, notes = [], []

    for key in passthrough_kwargs(config):
        K.drop(dropped, "passthrough_kwargs." + key, None,
               "llem 0.7.0 applies top-level passthrough_kwargs to the transformers engine "
               "only; a vllm run ignores it (put vLLM options in vllm.engine_params)")

    ctor = llem_constructor_kwargs(config, environ)
    if ctor.get("trust_remote_code") and not env_remote:
        raise ConfigError("trust_remote_code is asked for by the study (vllm.engine_params) but "
                          "this host does not allow remote code (LLEM_TRUST_REMOTE_CODE is off; "
                          "lem-worker --trust-remote-code)")
    origin = _origin(config)

    # Departure (README "The vLLM engine"): an `attention` key that LLM() does not take
    # but AttentionConfig does goes into attention_config (llem flattens it into LLM()
    # kwargs, where vLLM 0.19.1's EngineArgs raises TypeError).
    ep, _ = sections(config)
    attention = (ep or {}).get("attention")
    if isinstance(attention, dict):
        for key in list(attention):
            if key == "backend" or key not in ctor or (ep and key in ep):
                continue
            if not signature.accepts(CALL_LLM, key) and signature.known(CALL_ATTENTION) \
                    and signature.accepts(CALL_ATTENTION, key):
                cfg = dict(ctor.get("attention_config") or {})
                cfg[key] = ctor.pop(key)
                ctor["attention_config"] = cfg
                notes.append("%sattention.%s passed as attention_config[%r] (LLM() has no such "
                             "keyword; llem 0.7.0 would pass it flat and fail)" % (EP, key, key))

    if random_:
        dtype = ctor.get("dtype", "auto")
        if dtype in (None, "auto"):
            dtype = hf_logic.random_config_dtype(spec["config"])
        ctor["model"] = model_path or "<random model directory>"
        ctor["load_format"] = "dummy"
        ctor["skip_tokenizer_init"] = True
        notes.append("random weights: LLM(model=<directory with the preset's config.json>, "
                     "load_format='dummy', skip_tokenizer_init=True); prompts are byte-level "
                     "token ids; dtype %s" % dtype)
        spec = dict(spec, dtype=dtype)

    # Nested typed configs: vLLM's SpeculativeConfig forbids unknown keys (it would
    # raise); CompilationConfig keys that are init=False are ignored by LLM() silently.
    if isinstance(ctor.get("speculative_config"), dict):
        ctor["speculative_config"] = K.filter_kwargs(
            ctor["speculative_config"], signature, CALL_SPECULATIVE, EP + "speculative_config.",
            dropped)
    if isinstance(ctor.get("compilation_config"), dict):
        non_init = set()
        for note in signature.notes:
            if isinstance(note, dict):
                non_init.update(note.get("compilation_config_init_false") or ())
        ctor["compilation_config"] = K.filter_kwargs(
            ctor["compilation_config"], signature, CALL_COMPILATION, EP + "compilation_config.",
            dropped, lambda name: (
                "vLLM %s sets CompilationConfig.%s itself (init=False): LLM() ignores it"
                % (signature.version, name)) if name in non_init else None)
    if isinstance(ctor.get("attention_config"), dict):
        ctor["attention_config"] = K.filter_kwargs(
            ctor["attention_config"], signature, CALL_ATTENTION, EP + "attention.", dropped)
    ctor = K.filter_kwargs(ctor, signature, CALL_LLM, origin, dropped)

    cls, skw = llem_sampling(config)
    if random_ and cls == "BeamSearchParams":
        raise ConfigError("%sbeam_search with a random: model: vLLM's LLM.beam_search() reads "
                          "the tokenizer's end-of-sequence id and a random model has no "
                          "tokenizer; use a pretrained model for beam search" % EP)
    max_tokens = ts["max_output_tokens"]
    if "max_tokens" not in skw:
        skw["max_tokens"] = max_tokens
        notes.append("task.max_output_tokens is null: max_tokens=%d (llem passes none, so "
                     "vLLM's default of 16 applies)" % max_tokens)
    if random_:
        skw["ignore_eos"] = True
        if cls == "SamplingParams":
            skw["detokenize"] = False
        notes.append("random weights: ignore_eos=True, so every request generates exactly "
                     "max_tokens tokens")
    if cls == "SamplingParams":
        skw = K.filter_kwargs(skw, signature, CALL_SAMPLING,
                              lambda n: "task.max_output_tokens" if n == "max_tokens" else SP + n,
                              dropped)
    else:
        skw = K.filter_kwargs(skw, signature, CALL_BEAM,
                              lambda n: "task.max_output_tokens" if n == "max_tokens"
                              else EP + "beam_search." + n, dropped)
    streaming = cls == "SamplingParams"
    return {
        "constructor": ctor,
        "sampling_class": cls,
        "sampling": skw,
        "dropped": dropped,
        "notes": notes,
        # SamplingParams runs are streamed through LLMEngine.step() (output_kind DELTA);
        # LLM.beam_search() returns only finished beams: token times estimated.
        "streaming": streaming,
        "itl_measurement_mode": "true_streaming" if streaming else "proportional",
        "latency_estimated": not streaming,
        "max_tokens": skw.get("max_tokens", max_tokens),
        "weights": "random" if random_ else "pretrained",
        "random": spec,
        "forced_max_tokens": random_,
        "library": K.version_check(PACKAGE, signature.version, VLLM_PIN),
        "signature": signature.describe(),
    }


def model_identity(config, environ=None):
    """What changes the loaded LLM: llem's constructor kwargs (model, seed, every
    engine_params value, the remote-code switch, latency_profiling's
    disable_log_stats), the random model and its seed. Never the sampling parameters."""
    ts = task_settings(config)
    identity = {"engine": "vllm",
                "constructor": K.jsonable(llem_constructor_kwargs(config, environ))}
    if hf_logic.is_random_model(ts["model"]):
        spec = hf_logic.random_model_spec(ts["model"])
        identity["random"] = {"config_sha256": spec["sha256"], "seed": ts["random_seed"]}
    return identity


def validate(config):
    """Config checks that need no library (raise ConfigError)."""
    sections(config)
    llem_constructor_kwargs(config)
    llem_sampling(config)
    ts = task_settings(config)
    if hf_logic.is_random_model(ts["model"]):
        spec = hf_logic.random_model_spec(ts["model"])
        K.random_model_config(spec, "bfloat16")
    if config.get("serving_mode", "offline") != "offline":
        raise ConfigError("serving_mode %r: the vllm engine of this harness runs offline "
                          "batches only" % config.get("serving_mode"))
