"""Pure logic of the TensorRT-LLM engine (standard library only, no tensorrt_llm import).

llem's `tensorrt:` section (FORMAT.md 3.10) -> the constructor class and keyword
arguments of TensorRT-LLM's LLM API and of `tensorrt_llm.SamplingParams(...)`, as
llem 0.7.0 maps them (llenergymeasure/engines/tensorrt/plugin.py:
`_resolve_llm_class`, `_build_llm_kwargs`, `_apply_default_build_cache`,
`_build_sampling_kwargs`; checked case by case against llem's own code in
tests/fixtures/llem_mapping_cases.json), then the harness's additions (random
weights, the token budget) and a filter against the signatures of the TensorRT-LLM
that is installed (or, in tests, recorded: engines/signatures/tensorrt_llm.json).

Library objects are described, not built: `{"__class__": "KvCacheConfig", "kwargs":
{...}}` and `{"__enum__": "QuantAlgo.FP8"}`; engines/tensorrt.py builds them.
"""

import json
import os

from engines import engine_kwargs as K
from engines import hf_logic
from llem_config import library_sections, section, task_settings
from protocol import ConfigError

TENSORRT_LLM_PIN = "1.2.1"  # llem 0.7.0's rule corpus; docker/tensorrt/Dockerfile pins it
PACKAGE = "tensorrt_llm"
SECTION = "tensorrt"
EP = "tensorrt.engine_params."
SP = "tensorrt.sampling_params."

CLASS_PYTORCH = "tensorrt_llm.LLM"  # TorchLlmArgs
CLASS_TRT = "tensorrt_llm._tensorrt_engine.LLM"  # TrtLlmArgs
CALL_TORCH = "LLM() [pytorch: TorchLlmArgs]"
CALL_TRT = "LLM() [trt: TrtLlmArgs]"
CALL_SAMPLING = "SamplingParams()"
CALL_KV_CACHE = "KvCacheConfig()"
CALL_SCHEDULER = "SchedulerConfig()"
CALL_QUANT = "QuantConfig()"

# tensorrt.engine_params declared fields and llem's defaults, in declaration order
# (FORMAT.md 3.10; llenergymeasure/config/generated/tensorrt.py).
ENGINE_DEFAULTS = {
    "max_batch_size": None, "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
    "max_input_len": None, "max_seq_len": None, "max_num_tokens": 8192, "dtype": "auto",
    "fast_build": False, "backend": "pytorch", "quant_config": None,
    "kv_cache_config": None, "scheduler_config": None,
}
SAMPLING_DEFAULTS = {
    "temperature": None, "top_k": None, "top_p": None, "repetition_penalty": None,
    "min_p": None, "min_tokens": None, "n": 1, "ignore_eos": False,
}
BACKENDS = ("pytorch", "trt")

# engine_params fields llem does not pass under their own name.
HANDLED_BY_MAPPING = {
    "backend": "selects the constructor class (pytorch: tensorrt_llm.LLM, trt: "
               "tensorrt_llm._tensorrt_engine.LLM); never a keyword",
    "fast_build": "passed only with backend trt",
    "quant_config": "QuantConfig(quant_algo=QuantAlgo[...], kv_cache_quant_algo=QuantAlgo[...]) "
                    "with backend trt only",
    "kv_cache_config": "KvCacheConfig(**its non-null keys)",
    "scheduler_config": "SchedulerConfig(capacity_scheduling_policy="
                        "CapacitySchedulerPolicy[...]); other keys are not passed",
}

PRESETS = hf_logic.SAMPLING_PRESETS


def _truthy(environ, key):
    return str(environ.get(key, "")).strip().lower() in ("1", "true", "yes", "on")


# --- the signature the filter uses ----------------------------------------------------
def signature_from_fixture(fixture=None):
    fx = K.load_fixture("tensorrt_llm") if fixture is None else fixture
    sig = fx["signatures"]
    calls = {
        CALL_TORCH: [f["name"] for f in sig["TorchLlmArgs"]["fields"]],
        CALL_TRT: [f["name"] for f in sig["TrtLlmArgs"]["fields"]],
        CALL_SAMPLING: [f["name"] for f in sig["SamplingParams"]["fields"]],
        # Not in the record (llem's discovery left the nested classes out): unchecked
        # from the fixture; the engine checks them on the installed library.
        CALL_KV_CACHE: None, CALL_SCHEDULER: None, CALL_QUANT: None,
    }
    src = fx["source"]
    where = src.get("filename") or "%s in %s" % (src.get("file"), src.get("wheel"))
    return K.Signature(PACKAGE, fx["version"], calls,
                       "recorded (engines/signatures/tensorrt_llm.json, %s)" % where)


# --- the config sections --------------------------------------------------------------
def sections(config):
    """(engine_params, sampling_params) of the tensorrt section; each None when null/absent."""
    return library_sections(config, SECTION)


def passthrough_kwargs(config):
    return section(config, "passthrough_kwargs", "passthrough_kwargs")


def backend(config):
    ep, _ = sections(config)
    value = ENGINE_DEFAULTS["backend"] if ep is None else ep.get("backend", "pytorch")
    return value


# --- llem 0.7.0's mapping, exactly ------------------------------------------------------
def llem_constructor_class(config):
    """llem's `_resolve_llm_class`: backend null/pytorch -> tensorrt_llm.LLM, trt ->
    tensorrt_llm._tensorrt_engine.LLM."""
    b = backend(config)
    if b is None or b == "pytorch":
        return CLASS_PYTORCH
    if b == "trt":
        return CLASS_TRT
    raise ConfigError("%sbackend %r is not supported; accepted values are pytorch and trt "
                      "(backend selects the TensorRT-LLM constructor class)" % (EP, b))


def engine_path(config):
    ep, _ = sections(config)
    return None if ep is None else ep.get("engine_path")


def engine_dir_errors(path, tp_size):
    """llem's `_validate_engine_directory` (reads the directory): a list of errors."""
    errors = []
    if not os.path.isdir(path):
        return ["engine_path does not exist or is not a directory: %s" % path]
    cfg = os.path.join(path, "config.json")
    if not os.path.exists(cfg):
        errors.append("config.json not found in engine directory: %s" % path)
    else:
        try:
            with open(cfg, "r", encoding="utf-8") as fh:
                data = json.load(fh)
            built = ((data.get("pretrained_config") or {}).get("mapping") or {}).get("tp_size")
            if built is not None and built != tp_size:
                errors.append("tp_size mismatch: engine was built with tp_size=%s but config "
                              "requests tp_size=%s" % (built, tp_size))
        except (ValueError, OSError, AttributeError) as exc:
            errors.append("Failed to parse config.json in engine directory: %s" % exc)
    for rank in range(tp_size):
        if not os.path.exists(os.path.join(path, "rank%d.engine" % rank)):
            errors.append("rank%d.engine not found in engine directory: %s" % (rank, path))
    return errors


def llem_constructor_kwargs(config, environ=None, check_engine_dir=True):
    """llem's `_build_llm_kwargs` (with `_apply_default_build_cache`)."""
    env = os.environ if environ is None else environ
    ts = task_settings(config)
    kwargs = {"model": ts["model"]}
    ep, _ = sections(config)
    raw_path = None if ep is None else ep.get("engine_path")
    if ep is not None and raw_path is not None:
        tp = ep.get("tensor_parallel_size", 1) or 1
        if check_engine_dir:
            errors = engine_dir_errors(str(raw_path), tp)
            if errors:
                raise ConfigError("engine_path validation failed: %s" % "; ".join(errors))
        return {"model": str(raw_path)}
    is_trt = (None if ep is None else ep.get("backend", "pytorch")) == "trt"
    if ep is None:
        return kwargs
    dumped = K.dump_exclude_none(ep, ENGINE_DEFAULTS)
    quant = dumped.pop("quant_config", None)
    kv = dumped.pop("kv_cache_config", None)
    sched = dumped.pop("scheduler_config", None)
    dumped.pop("backend", None)
    fast_build = dumped.pop("fast_build", None)
    kwargs.update(dumped)
    if is_trt:
        if fast_build is not None:
            kwargs["fast_build"] = fast_build
        if isinstance(quant, dict) and quant:
            qc = {}
            for key in ("quant_algo", "kv_cache_quant_algo"):
                if quant.get(key) is not None:
                    qc[key] = {"__enum__": "QuantAlgo.%s" % quant[key]}
            if qc:
                kwargs["quant_config"] = {"__class__": "QuantConfig", "kwargs": qc}
        if _truthy(env, "LLEM_TRT_BUILD_CACHE_ENABLED"):
            root = env.get("LLEM_TRT_BUILD_CACHE_PATH")
            if root:
                kwargs["enable_build_cache"] = {"__class__": "BuildCacheConfig",
                                                "kwargs": {"cache_root": {"__path__": root}}}
            else:
                kwargs["enable_build_cache"] = True
    if isinstance(kv, dict) and kv:
        kwargs["kv_cache_config"] = {"__class__": "KvCacheConfig",
                                     "kwargs": {k: v for k, v in kv.items() if v is not None}}
    if isinstance(sched, dict) and sched:
        sc = {}
        if sched.get("capacity_scheduling_policy") is not None:
            sc["capacity_scheduling_policy"] = {
                "__enum__": "CapacitySchedulerPolicy.%s" % sched["capacity_scheduling_policy"]}
        if sc:
            kwargs["scheduler_config"] = {"__class__": "SchedulerConfig", "kwargs": sc}
    return kwargs


def llem_sampling_kwargs(config):
    """llem's `_build_sampling_kwargs`: sampling_params (exclude_none, passthrough keys
    included), seed, max_tokens (none when task.max_output_tokens is null) and
    return_perf_metrics with latency_profiling."""
    _, sp = sections(config)
    preset = config.get("sampling_preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError("sampling_preset must be one of %s or null; got %r"
                              % (", ".join(PRESETS), preset))
        sp = dict(sp or {})
        for key, value in PRESETS[preset].items():
            if sp.get(key) is None:
                sp[key] = value
    kwargs = {} if sp is None else K.dump_exclude_none(sp, SAMPLING_DEFAULTS)
    ts = task_settings(config)
    kwargs["seed"] = ts["random_seed"]
    if (config.get("task") or {}).get("max_output_tokens", 256) is not None:
        kwargs["max_tokens"] = ts["max_output_tokens"]
    if (config.get("measurement") or {}).get("latency_profiling"):
        kwargs["return_perf_metrics"] = True
    return kwargs


# --- the harness's plan ---------------------------------------------------------------
def _origin(config):
    ep, _ = sections(config)
    fixed = {"model": "task.model", "enable_build_cache": "LLEM_TRT_BUILD_CACHE_* (host)",
             "load_format": "task.model (random weights)",
             "skip_tokenizer_init": "task.model (random weights)"}

    def path(name):
        if name in fixed and name not in (ep or {}):
            return fixed[name]
        return EP + name
    return path


def _nested(ctor, name, signature, call, dropped):
    value = ctor.get(name)
    if isinstance(value, dict) and "__class__" in value:
        value = dict(value)
        value["kwargs"] = K.filter_kwargs(value["kwargs"], signature, call, EP + name + ".",
                                          dropped)
        ctor[name] = value


def plan(config, signature, environ=None, model_path=None, check_engine_dir=True):
    """Everything the engine needs, as plain data (see vllm_logic.plan), plus
    "constructor_class" (CLASS_PYTORCH or CLASS_TRT) and "eos"/"pad" ids for random
    models."""
    env = os.environ if environ is None else environ
    ts = task_settings(config)
    random_ = hf_logic.is_random_model(ts["model"])
    spec = hf_logic.random_model_spec(ts["model"]) if random_ else None
    dropped, notes = [], []
    for key in passthrough_kwargs(config):
        K.drop(dropped, "passthrough_kwargs." + key, None,
               "llem 0.7.0 applies top-level passthrough_kwargs to the transformers engine "
               "only; a tensorrt run ignores it (put TensorRT-LLM options in "
               "tensorrt.engine_params)")

    cls = llem_constructor_class(config)
    path = engine_path(config)
    if path is not None and backend(config) != "trt":
        raise ConfigError("%sengine_path needs %sbackend: trt (llem 0.7.0 rejects it otherwise)"
                          % (EP, EP))
    ctor = llem_constructor_kwargs(config, env, check_engine_dir=check_engine_dir)
    if ctor.get("trust_remote_code") and not hf_logic.trust_remote_code_enabled(env):
        raise ConfigError("trust_remote_code is asked for by the study (tensorrt.engine_params) "
                          "but this host does not allow remote code (LLEM_TRUST_REMOTE_CODE is "
                          "off; lem-worker --trust-remote-code)")
    if random_:
        if path is not None:
            raise ConfigError("%sengine_path and a random: model exclude each other" % EP)
        dtype = ctor.get("dtype", "auto")
        if dtype in (None, "auto"):
            dtype = hf_logic.random_config_dtype(spec["config"])
        ctor["model"] = model_path or "<random model directory>"
        ctor["load_format"] = "dummy"
        ctor["skip_tokenizer_init"] = True
        notes.append("random weights: LLM(model=<directory with the preset's config.json>, "
                     "load_format='dummy', skip_tokenizer_init=True); prompts are byte-level "
                     "token ids; dtype %s" % dtype)
        tok = hf_logic.ByteTokenizer(spec["config"])
        spec = dict(spec, dtype=dtype, eos=tok.eos_ids[0] if tok.eos_ids else None,
                    pad=tok.pad_id)

    call = CALL_TRT if cls == CLASS_TRT else CALL_TORCH
    _nested(ctor, "kv_cache_config", signature, CALL_KV_CACHE, dropped)
    _nested(ctor, "scheduler_config", signature, CALL_SCHEDULER, dropped)
    _nested(ctor, "quant_config", signature, CALL_QUANT, dropped)
    ctor = K.filter_kwargs(ctor, signature, call, _origin(config), dropped)

    skw = llem_sampling_kwargs(config)
    max_tokens = ts["max_output_tokens"]
    if "max_tokens" not in skw:
        skw["max_tokens"] = max_tokens
        notes.append("task.max_output_tokens is null: max_tokens=%d (llem passes none, so "
                     "TensorRT-LLM's default applies)" % max_tokens)
    if random_:
        skw["ignore_eos"] = True
        skw["detokenize"] = False
        if spec["eos"] is not None:
            skw["end_id"] = spec["eos"]
        skw["pad_id"] = spec["pad"]
        notes.append("random weights: ignore_eos=True, end_id/pad_id from the config, "
                     "detokenize=False; every request generates exactly max_tokens tokens")
    skw = K.filter_kwargs(
        skw, signature, CALL_SAMPLING,
        lambda n: {"max_tokens": "task.max_output_tokens", "seed": "task.random_seed",
                   "return_perf_metrics": "measurement.latency_profiling"}.get(n, SP + n),
        dropped)
    return {
        "constructor_class": cls,
        "constructor": ctor,
        "sampling_class": "SamplingParams",
        "sampling": skw,
        "dropped": dropped,
        "notes": notes,
        "streaming": True,  # generate_async(streaming=True); the engine falls back if absent
        "itl_measurement_mode": "true_streaming",
        "latency_estimated": False,
        "max_tokens": skw.get("max_tokens", max_tokens),
        "weights": "random" if random_ else ("engine" if path is not None else "pretrained"),
        "random": spec,
        "forced_max_tokens": random_,
        "library": K.version_check(PACKAGE, signature.version, TENSORRT_LLM_PIN),
        "signature": signature.describe(),
    }


def model_identity(config, environ=None):
    """What changes the built/loaded LLM: the constructor class and llem's constructor
    kwargs (engine_params, the build cache switch), the random model and its seed.
    Never the sampling parameters (seed and max_tokens are SamplingParams here)."""
    ts = task_settings(config)
    identity = {"engine": "tensorrt", "class": llem_constructor_class(config),
                "constructor": llem_constructor_kwargs(config, environ, check_engine_dir=False)}
    if hf_logic.is_random_model(ts["model"]):
        spec = hf_logic.random_model_spec(ts["model"])
        identity["random"] = {"config_sha256": spec["sha256"], "seed": ts["random_seed"]}
    return identity


def validate(config):
    sections(config)
    llem_constructor_class(config)
    llem_constructor_kwargs(config, check_engine_dir=False)
    llem_sampling_kwargs(config)
    ts = task_settings(config)
    if hf_logic.is_random_model(ts["model"]):
        K.random_model_config(hf_logic.random_model_spec(ts["model"]), "bfloat16")
    if config.get("serving_mode", "offline") != "offline":
        raise ConfigError("serving_mode %r: the tensorrt engine of this harness runs offline "
                          "batches only" % config.get("serving_mode"))
