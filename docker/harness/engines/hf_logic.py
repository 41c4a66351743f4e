"""Pure logic of the transformers engine (standard library only, no torch).

Everything here is unit-tested without torch: the llem config -> model-loading and
generate() keyword mapping, random-weight model specs, the byte-level tokeniser
used for random models, left padding, output-token counting and the model key.
engines/transformers.py turns these plain values into torch objects.

The mapping follows llem 0.7.0's transformers plugin
(llenergymeasure/engines/transformers/plugin.py) except where README.md says
otherwise ("The transformers engine" section).
"""

import hashlib
import json
import os

from llem_config import get_int, section, task_settings
from protocol import ConfigError

SECTION = "transformers"
EP = "transformers.engine_params."
SP = "transformers.sampling_params."
LX = "transformers.llem_execution."

# transformers.engine_params declared fields (FORMAT.md 3.8); other keys are passthrough.
DECLARED_ENGINE_PARAMS = (
    "dtype", "attn_implementation", "load_in_4bit", "load_in_8bit",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
    "device_map", "max_memory", "low_cpu_mem_usage", "tp_plan", "tp_size",
    "use_cache", "cache_implementation", "num_beams", "early_stopping", "length_penalty",
    "no_repeat_ngram_size", "prompt_lookup_num_tokens",
)
# engine_params fields that llem forwards to generate(), not to from_pretrained().
GENERATE_ENGINE_PARAMS = (
    "use_cache", "cache_implementation", "num_beams", "early_stopping", "length_penalty",
    "no_repeat_ngram_size", "prompt_lookup_num_tokens",
)
DECLARED_SAMPLING_PARAMS = (
    "temperature", "do_sample", "top_k", "top_p", "repetition_penalty", "min_p",
    "min_new_tokens",
)
LLEM_EXECUTION_FIELDS = (
    "batch_size", "torch_compile", "torch_compile_mode", "torch_compile_backend",
    "allow_tf32", "autocast_enabled", "autocast_dtype",
)

# FORMAT.md 3.6
SAMPLING_PRESETS = {
    "deterministic": {"temperature": 0.0},
    "standard": {"temperature": 1.0, "top_p": 0.95},
    "creative": {"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1},
    "factual": {"temperature": 0.3},
}

DTYPE_ALIASES = {
    "auto": "auto",
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
AUTOCAST_DTYPES = ("float16", "bfloat16")

DEVICE = "cuda:0"  # of what CUDA_VISIBLE_DEVICES leaves visible (the worker sets it per slot)
DEFAULT_DEVICE_MAP = {"": DEVICE}

# --- random-weight models (fleet only) ----------------------------------------------
RANDOM_PREFIX = "random:"
RANDOM_PRESETS = {
    # TinyLlama-1.1B shape
    "llama-1.1b": {
        "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192,
        "vocab_size": 32000, "max_position_embeddings": 4096,
        "bos_token_id": 1, "eos_token_id": 2,
    },
    # smoke tests
    "llama-tiny": {
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "vocab_size": 1000, "max_position_embeddings": 4096,
        "bos_token_id": 1, "eos_token_id": 2,
    },
}
RANDOM_DEFAULT_DTYPE = "bfloat16"  # no checkpoint to take "auto" from
RANDOM_MAX_OUTPUT_FLOOR = 1

# Byte-level tokeniser for random models: ids 0..2 are reserved (unk/pad, bos, eos in
# the Llama convention) as are the config's own special ids; byte b maps to the b-th
# id counting up from BYTE_OFFSET that is not special (Llama's SentencePiece byte
# fallback <0x00>.. also starts at id 3). A sequence starts with bos_token_id when the
# config has one. Vocabularies with fewer than 256 usable ids wrap (b mod usable).
BYTE_OFFSET = 3


def trust_remote_code_enabled(environ=None):
    """llem's LLEM_TRUST_REMOTE_CODE switch (1/true/yes/on, case-insensitive)."""
    env = os.environ if environ is None else environ
    return str(env.get("LLEM_TRUST_REMOTE_CODE", "")).strip().lower() in ("1", "true", "yes", "on")


# --- config sections ------------------------------------------------------------------
def _sub(config, name):
    sec = section(config, SECTION, SECTION)
    for key in sec:
        if key not in ("engine_params", "sampling_params", "llem_execution"):
            raise ConfigError(
                "unknown key transformers.%s; the transformers section has engine_params, "
                "sampling_params and llem_execution" % key
            )
    return section(sec, name, "transformers." + name)


def engine_params(config):
    return _sub(config, "engine_params")


def sampling_params(config):
    return _sub(config, "sampling_params")


def llem_execution(config):
    raw = _sub(config, "llem_execution")
    for key in raw:
        if key not in LLEM_EXECUTION_FIELDS:
            raise ConfigError("unknown field %s%s (known: %s)"
                              % (LX, key, ", ".join(LLEM_EXECUTION_FIELDS)))
    return raw


def passthrough_kwargs(config):
    return section(config, "passthrough_kwargs", "passthrough_kwargs")


def _opt_bool(mapping, key, where):
    value = mapping.get(key)
    if value is not None and not isinstance(value, bool):
        raise ConfigError("%s must be true, false or null, got %r" % (where, value))
    return value


def resolve_execution(config):
    """llem_execution with llem's runtime defaults filled in (FORMAT.md 3.8)."""
    raw = llem_execution(config)
    bs = raw.get("batch_size")
    batch_size = 1 if bs is None else get_int(raw, "batch_size", 1, LX + "batch_size", 1)
    compile_ = _opt_bool(raw, "torch_compile", LX + "torch_compile")
    mode = raw.get("torch_compile_mode")
    backend = raw.get("torch_compile_backend")
    if (mode is not None or backend is not None) and compile_ is not True:
        raise ConfigError("%storch_compile_mode / torch_compile_backend are only allowed when "
                          "torch_compile is true" % LX)
    for key, value in (("torch_compile_mode", mode), ("torch_compile_backend", backend)):
        if value is not None and not isinstance(value, str):
            raise ConfigError("%s%s must be a string or null, got %r" % (LX, key, value))
    autocast_dtype = raw.get("autocast_dtype")
    if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
        raise ConfigError("%sautocast_dtype must be float16, bfloat16 or null, got %r"
                          % (LX, autocast_dtype))
    autocast = _opt_bool(raw, "autocast_enabled", LX + "autocast_enabled")
    return {
        "batch_size": batch_size,
        "torch_compile": compile_ is True,
        "torch_compile_mode": (mode or "default") if compile_ else None,
        "torch_compile_backend": (backend or "inductor") if compile_ else None,
        "allow_tf32": _opt_bool(raw, "allow_tf32", LX + "allow_tf32"),  # None: PyTorch's
        "autocast_enabled": autocast is True,
        "autocast_dtype": (autocast_dtype or "bfloat16") if autocast else None,
    }


# --- model spec -----------------------------------------------------------------------
def is_random_model(model):
    return isinstance(model, str) and model.startswith(RANDOM_PREFIX)


def random_model_spec(model):
    """{"source": preset name or config path, "config": dict, "sha256": hex} for random:..."""
    ref = model[len(RANDOM_PREFIX):].strip()
    if not ref:
        raise ConfigError("task.model %r: name a preset (%s) or a config.json path after "
                          "'random:'" % (model, ", ".join(sorted(RANDOM_PRESETS))))
    if ref in RANDOM_PRESETS:
        cfg = dict(RANDOM_PRESETS[ref])
        kind = "preset"
    else:
        path = ref
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(
                "task.model %r: %r is neither a built-in random preset (%s) nor an existing "
                "config.json file on this host" % (model, ref, ", ".join(sorted(RANDOM_PRESETS)))
            )
        try:
            with open(path, "r", encoding="utf-8") as fh:
                cfg = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ConfigError("task.model %r: cannot read %s as JSON: %s" % (model, path, exc))
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
            raise ConfigError("task.model %r: %s is not a transformers config.json (no "
                              "model_type)" % (model, path))
        kind = "config_file"
        ref = os.path.abspath(path)
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {"kind": kind, "source": ref, "config": cfg,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def resolve_dtype_name(value, where=EP + "dtype"):
    if not isinstance(value, str) or value.lower() not in DTYPE_ALIASES:
        raise ConfigError("%s must be one of float32, float16, bfloat16, auto (or null); got %r"
                          % (where, value))
    return DTYPE_ALIASES[value.lower()]


def random_config_dtype(cfg):
    for key in ("dtype", "torch_dtype"):
        value = cfg.get(key)
        if isinstance(value, str) and value.lower() in DTYPE_ALIASES and value != "auto":
            return DTYPE_ALIASES[value.lower()]
    return RANDOM_DEFAULT_DTYPE


# --- model loading --------------------------------------------------------------------
def load_plan(config, environ=None):
    """How to build the model, as plain data.

    {"model", "weights": "random"|"pretrained", "dtype": name, "kwargs": {...},
     "quantization": {...}|None, "random": spec|None}
    `kwargs` are the from_pretrained()/from_config() keyword arguments except dtype and
    quantization_config (which need torch objects; the engine adds them).
    """
    ts = task_settings(config)
    ep = engine_params(config)
    model = ts["model"]
    random_ = is_random_model(model)
    spec = random_model_spec(model) if random_ else None

    dtype = ep.get("dtype")
    if dtype is None:
        # llem passes "auto" (the checkpoint's dtype); a random model has no checkpoint.
        dtype_name = random_config_dtype(spec["config"]) if random_ else "auto"
    else:
        dtype_name = resolve_dtype_name(dtype)
        if dtype_name == "auto" and random_:
            dtype_name = random_config_dtype(spec["config"])

    if ep.get("tp_plan") is not None or (ep.get("tp_size") not in (None, 1)):
        raise ConfigError("%stp_plan / tp_size (tensor parallelism) need a multi-process "
                          "torchrun launch; the lem fleet harness runs one process per GPU "
                          "slot and does not support them" % EP)

    kwargs = {}
    device_map = ep.get("device_map")
    if not random_:
        kwargs["device_map"] = DEFAULT_DEVICE_MAP if device_map is None else device_map
        kwargs["trust_remote_code"] = trust_remote_code_enabled(environ)
    elif device_map is not None:
        raise ConfigError("%sdevice_map is not supported for random-weight models (they are "
                          "built on %s)" % (EP, DEVICE))
    if ep.get("attn_implementation") is not None:
        kwargs["attn_implementation"] = ep["attn_implementation"]

    quant = None
    l4, l8 = ep.get("load_in_4bit"), ep.get("load_in_8bit")
    for key, value in (("load_in_4bit", l4), ("load_in_8bit", l8)):
        if value is not None and not isinstance(value, bool):
            raise ConfigError("%s%s must be true, false or null, got %r" % (EP, key, value))
    if l4 and l8:
        raise ConfigError("%sload_in_4bit and load_in_8bit are mutually exclusive" % EP)
    if l4 or l8:
        if random_:
            raise ConfigError("%sload_in_4bit/load_in_8bit are not supported for random-weight "
                              "models" % EP)
        quant = {}
        if l4:
            quant["load_in_4bit"] = True
            if ep.get("bnb_4bit_compute_dtype") is not None:
                quant["bnb_4bit_compute_dtype"] = resolve_dtype_name(
                    ep["bnb_4bit_compute_dtype"], EP + "bnb_4bit_compute_dtype")
            if ep.get("bnb_4bit_quant_type") is not None:
                quant["bnb_4bit_quant_type"] = ep["bnb_4bit_quant_type"]
            if ep.get("bnb_4bit_use_double_quant") is not None:
                quant["bnb_4bit_use_double_quant"] = ep["bnb_4bit_use_double_quant"]
        if l8:
            quant["load_in_8bit"] = True
    if ep.get("max_memory") is not None:
        kwargs["max_memory"] = ep["max_memory"]
    if ep.get("low_cpu_mem_usage") is not None:
        kwargs["low_cpu_mem_usage"] = ep["low_cpu_mem_usage"]
    # llem: unknown engine_params keys go to from_pretrained(), then passthrough_kwargs
    # merged last (they may override anything above).
    for key, value in ep.items():
        if key not in DECLARED_ENGINE_PARAMS:
            kwargs[key] = value
    kwargs.update(passthrough_kwargs(config))
    # The host decides whether a model repository's own code may run, never the study
    # (the worker refuses such a study first; this is the harness's own guard).
    if kwargs.get("trust_remote_code") and not trust_remote_code_enabled(environ):
        raise ConfigError("trust_remote_code is asked for by the study (engine_params or "
                          "passthrough_kwargs) but this host does not allow remote code "
                          "(LLEM_TRUST_REMOTE_CODE is off; lem-worker --trust-remote-code)")
    for key in ("dtype", "torch_dtype"):
        if key in kwargs:  # a passthrough dtype wins over engine_params.dtype
            dtype_name = resolve_dtype_name(kwargs.pop(key), "passthrough " + key)
    return {"model": model, "weights": "random" if random_ else "pretrained",
            "dtype": dtype_name, "kwargs": kwargs, "quantization": quant, "random": spec}


# --- generation -----------------------------------------------------------------------
def effective_sampling(config):
    """sampling_params with the sampling_preset filled into null/absent keys (3.6)."""
    sp = dict(sampling_params(config))
    preset = config.get("sampling_preset")
    if preset is not None:
        if preset not in SAMPLING_PRESETS:
            raise ConfigError("sampling_preset must be one of %s or null; got %r"
                              % (", ".join(SAMPLING_PRESETS), preset))
        for key, value in SAMPLING_PRESETS[preset].items():
            if sp.get(key) is None:
                sp[key] = value
    return sp


def generate_plan(config, random_weights=None):
    """generate() keyword arguments (without inputs/streamer) and the streaming mode.

    {"kwargs": {...}, "streaming": bool, "itl_measurement_mode": str,
     "latency_estimated": bool, "max_new_tokens": n, "forced_min_new_tokens": bool}
    """
    ts = task_settings(config)
    if random_weights is None:
        random_weights = is_random_model(ts["model"])
    ep = engine_params(config)
    # llem: sampling_params.model_dump(exclude_none=True) (passthrough keys included)
    kwargs = {k: v for k, v in effective_sampling(config).items() if v is not None}
    for key in GENERATE_ENGINE_PARAMS:
        if ep.get(key) is not None:
            kwargs[key] = ep[key]
    # llem's greedy rule: temperature 0 or do_sample false -> greedy, sampling knobs dropped
    if kwargs.get("temperature") == 0.0 or kwargs.get("do_sample") is False:
        kwargs["do_sample"] = False
        for key in ("temperature", "top_k", "top_p", "min_p"):
            kwargs.pop(key, None)
    max_out = ts["max_output_tokens"]
    kwargs["max_new_tokens"] = max_out
    forced = False
    if random_weights:
        # Random weights emit EOS at random: force exactly max_output_tokens per request
        # (energy per token does not depend on the weight values).
        kwargs["min_new_tokens"] = max_out
        forced = True
    elif isinstance(kwargs.get("min_new_tokens"), int) and kwargs["min_new_tokens"] > max_out:
        raise ConfigError("%smin_new_tokens (%d) exceeds task.max_output_tokens (%d)"
                          % (SP, kwargs["min_new_tokens"], max_out))
    beams = kwargs.get("num_beams")
    streaming = not (isinstance(beams, int) and not isinstance(beams, bool) and beams > 1)
    return {
        "kwargs": kwargs,
        "streaming": streaming,
        # streamers do not support beam search: per-batch timing, tokens spread evenly
        "itl_measurement_mode": "true_streaming" if streaming else "proportional",
        "latency_estimated": not streaming,
        "max_new_tokens": max_out,
        "forced_min_new_tokens": forced,
    }


def prefill_kwargs(gen_kwargs):
    """generate() kwargs for a prefill-only call: the same, with one new token."""
    kw = dict(gen_kwargs)
    kw.pop("min_new_tokens", None)
    kw["max_new_tokens"] = 1
    return kw


def input_token_limit(config, max_position_embeddings=None, max_new_tokens=None):
    """Truncation length: task.max_input_tokens; null = none (llem), except that a
    random model is capped to its context (max_position_embeddings - max_new_tokens)."""
    task = config.get("task") or {}
    raw = task.get("max_input_tokens", 256)
    if raw is not None:
        return task_settings(config)["max_input_tokens"]
    if max_position_embeddings is not None:
        return max(1, int(max_position_embeddings) - int(max_new_tokens or 0))
    return None


# --- model key --------------------------------------------------------------------------
def _drop_nulls(mapping):
    return {k: v for k, v in mapping.items() if v is not None}


def model_identity(config):
    """Everything that changes the loaded model; never batch_size or sampling."""
    ts = task_settings(config)
    execution = {k: v for k, v in _drop_nulls(llem_execution(config)).items()
                 if k != "batch_size"}
    identity = {
        "engine": "transformers",
        "model": ts["model"],
        "engine_params": _drop_nulls(engine_params(config)),
        "llem_execution": execution,
        "passthrough_kwargs": passthrough_kwargs(config),
    }
    if is_random_model(ts["model"]):
        spec = random_model_spec(ts["model"])
        identity["random"] = {"config_sha256": spec["sha256"], "seed": ts["random_seed"]}
    return identity


# --- byte tokeniser for random models -----------------------------------------------------
def _as_id_list(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return []


def special_ids(cfg):
    ids = set(range(BYTE_OFFSET))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        ids.update(_as_id_list(cfg.get(key)))
    return ids


def byte_table(vocab_size, specials):
    """The 256 token ids bytes 0..255 map to (deterministic)."""
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError("random model config has no usable vocab_size (%r)" % (vocab_size,))
    usable = []
    i = BYTE_OFFSET
    while len(usable) < 256 and i < vocab_size:
        if i not in specials:
            usable.append(i)
        i += 1
    if not usable:  # absurdly small vocabulary: use any non-special id, else 0
        usable = [j for j in range(vocab_size) if j not in specials] or [0]
    return [usable[b % len(usable)] for b in range(256)]


class ByteTokenizer:
    """UTF-8 bytes -> ids via byte_table, optional BOS first, truncated to max_len."""

    def __init__(self, cfg):
        self.vocab_size = cfg.get("vocab_size")
        self.table = byte_table(self.vocab_size, special_ids(cfg))
        bos = _as_id_list(cfg.get("bos_token_id"))
        self.bos = bos[0] if bos and 0 <= bos[0] < self.vocab_size else None
        eos = [e for e in _as_id_list(cfg.get("eos_token_id")) if 0 <= e < self.vocab_size]
        self.eos_ids = eos
        pad = _as_id_list(cfg.get("pad_token_id"))
        self.pad_id = pad[0] if pad and 0 <= pad[0] < self.vocab_size else (
            eos[0] if eos else 0)

    def encode(self, text, max_len=None):
        ids = [] if self.bos is None else [self.bos]
        ids.extend(self.table[b] for b in text.encode("utf-8"))
        if max_len is not None:
            ids = ids[:max_len]
        return ids


def left_pad(sequences, pad_id):
    """(input_ids rows, attention_mask rows), padded on the left to the longest."""
    width = max(len(s) for s in sequences)
    ids, mask = [], []
    for s in sequences:
        n = width - len(s)
        ids.append([pad_id] * n + list(s))
        mask.append([0] * n + [1] * len(s))
    return ids, mask


def count_output_tokens(generated, eos_ids, min_new_tokens=0):
    """Tokens of one generated row up to and including the first EOS at or after
    min_new_tokens (the rest is padding); all of them if there is no EOS."""
    eos = set(eos_ids or ())
    for j, tok in enumerate(generated):
        if tok in eos and j + 1 > (min_new_tokens or 0):
            return j + 1
    return len(generated)


def proportional_times(t0_ns, t1_ns, n_tokens, steps):
    """Token times of a non-streamed request: `steps` equal steps over [t0, t1]; the
    request's tokens are the first n_tokens steps."""
    steps = max(1, steps)
    dt = (t1_ns - t0_ns) / float(steps)
    return [int(t0_ns + dt * (j + 1)) for j in range(n_tokens)]


def jsonable(value):
    """A JSON-safe rendering of a kwarg value (torch dtypes and objects as strings)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    text = str(value)
    return text[len("torch."):] if text.startswith("torch.") else text
