"""Keyword arguments for engine libraries whose API moves: shared pure helpers.

Standard library only. Used by vllm_logic.py and tensorrt_logic.py:

* `Signature`: the keyword arguments one library version accepts, per call the
  engine makes (constructor, sampling class, nested config classes), read either
  from a recorded fixture (engines/signatures/*.json, docker/engines-signatures/
  record.py) or from the installed library by the engine at run time;
* `filter_kwargs`: keeps what the signature accepts and reports every other key as
  dropped, with the reason, instead of letting the library raise (pitfall 5: API
  drift between versions must cost a warning in the result, never a crash);
* `dump_exclude_none`: pydantic's `model_dump(exclude_none=True)` of an llem section,
  the form in which llem 0.7.0 hands a section to a library;
* random-weight model directories (a `config.json` the library loads with dummy
  weights) for the `random:` presets of hf_logic.
"""

import hashlib
import json
import os

from protocol import ConfigError

SIGNATURES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "signatures")


def load_fixture(name):
    """engines/signatures/NAME.json as a dict."""
    path = os.path.join(SIGNATURES_DIR, name + ".json")
    with open(path, "r", encoding="utf-8") as fh:
        return json.load(fh)


class Signature:
    """What one library version accepts, per call site.

    `calls` maps a call-site name (e.g. "LLM()", "SamplingParams()") to the set of
    keyword names it accepts, or None when the accepted set is unknown (then nothing
    is filtered there and `unchecked` says so). `source` says where the sets came
    from ("fixture vllm.json", "installed vllm 0.19.1").
    """

    def __init__(self, package, version, calls, source, notes=None):
        self.package = package
        self.version = version
        self.calls = {k: (None if v is None else frozenset(v)) for k, v in calls.items()}
        self.source = source
        self.notes = list(notes or [])

    def accepts(self, call, name):
        names = self.calls.get(call)
        return names is None or name in names

    def known(self, call):
        return self.calls.get(call) is not None

    def describe(self):
        return {"package": self.package, "version": self.version, "source": self.source,
                "unchecked": sorted(k for k, v in self.calls.items() if v is None),
                "notes": list(self.notes)}


def drop(dropped, key, call, reason):
    dropped.append({"key": key, "call": call, "reason": reason})


def filter_kwargs(kwargs, signature, call, where, dropped, not_accepted=None):
    """The items of `kwargs` that `signature` accepts at `call`; every other key is
    added to `dropped` ({"key", "call", "reason"}), its key being `where + name` (or
    `where(name)` when `where` is a function: the config path the kwarg came from).
    `not_accepted(name)` may return a more specific reason."""
    if not signature.known(call):
        return dict(kwargs)
    path = where if callable(where) else (lambda name: where + name)
    kept = {}
    for name, value in kwargs.items():
        if signature.accepts(call, name):
            kept[name] = value
            continue
        reason = not_accepted(name) if not_accepted is not None else None
        drop(dropped, path(name), call, reason or (
            "%s %s does not accept %r at %s (%s)" % (signature.package, signature.version,
                                                   name, call, signature.source)))
    return kept


def dump_exclude_none(mapping, defaults, nested=None):
    """`model_dump(exclude_none=True)` of an llem section given as a (possibly sparse)
    JSON dump: declared fields (`defaults`, in declaration order, a missing key taking
    its default) then undeclared (passthrough) keys in their order; null values left
    out at this level and in the `nested` typed sub-models (name -> their defaults),
    but not inside free-form (`any`-typed) values, as pydantic does."""
    nested = nested or {}
    out = {}
    for key, default in defaults.items():
        value = mapping.get(key, default)
        if value is None:
            continue
        if key in nested and isinstance(value, dict):
            value = dump_exclude_none(value, nested[key])
        out[key] = value
    for key, value in mapping.items():
        if key not in defaults and value is not None:
            out[key] = value
    return out


def jsonable(value):
    """kwargs as JSON: sets as {"__set__": sorted list}; markers stay as they are."""
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted(jsonable(v) for v in value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    text = str(value)
    return text[len("torch."):] if text.startswith("torch.") else text


def version_check(package, installed, pin):
    """The result's `engine_library` block; `matches_pin` false makes the worker warn."""
    return {"package": package, "installed": installed, "pin": pin,
            "matches_pin": installed == pin}


# --- random-weight models as a directory --------------------------------------------
# model_type -> the architecture class a loader picks from config.json.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "opt": "OPTForCausalLM",
    "gemma": "GemmaForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


def random_model_config(spec, dtype_name):
    """The config.json of a random-weight model (hf_logic.random_model_spec `spec`):
    the spec's config with `architectures` (from model_type when absent) and
    `torch_dtype`."""
    cfg = dict(spec["config"])
    if not cfg.get("architectures"):
        arch = ARCHITECTURES.get(cfg.get("model_type"))
        if arch is None:
            raise ConfigError(
                "task.model %r: the random model's config has model_type %r and no "
                "`architectures`; add `architectures: [\"...ForCausalLM\"]` to the config "
                "(known model types: %s)" % ("random:" + spec["source"], cfg.get("model_type"),
                                             ", ".join(sorted(ARCHITECTURES))))
        cfg["architectures"] = [arch]
    cfg["torch_dtype"] = dtype_name
    cfg.pop("dtype", None)
    return cfg


def random_model_dir_name(spec, dtype_name):
    cfg = random_model_config(spec, dtype_name)
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    return "random-%s" % hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_random_model_dir(spec, dtype_name, root):
    """Writes ROOT/random-<hash>/config.json (and generation_config.json) once; returns
    the directory. The library loads it with dummy weights; no tokenizer is written
    (the harness tokenises byte-level and passes token ids)."""
    cfg = random_model_config(spec, dtype_name)
    path = os.path.join(root, random_model_dir_name(spec, dtype_name))
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    os.makedirs(root, exist_ok=True)
    tmp = path + ".tmp%d" % os.getpid()
    os.makedirs(tmp, exist_ok=True)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    for name, data in (("config.json", cfg), ("generation_config.json", gen)):
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
    try:
        os.rename(tmp, path)
    except OSError:  # another process won the race: use its directory
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    return path


def random_model_root(environ=None):
    env = os.environ if environ is None else environ
    root = env.get("LEM_RANDOM_MODEL_DIR")
    if root:
        return root
    import tempfile
    return os.path.join(tempfile.gettempdir(), "lem-random-models")
