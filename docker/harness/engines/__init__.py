"""Engine registry.

`synthetic` is always available. `transformers`, `vllm` and `tensorrt` are listed
once their module exists and their library imports with a CUDA device visible
(checked once, lazily, then cached): each lives in its own image (docker/vllm/,
docker/tensorrt/), so a harness normally has one of them. A known engine that is not
available here is an `infrastructure` error naming the reason (e.g. "vllm is not
installed in this image ...").
"""

import importlib
import os
import threading

from protocol import ConfigError, InfraError

# name -> (module, class name)
KNOWN_ENGINES = {
    "synthetic": ("engines.synthetic", "SyntheticEngine"),
    "transformers": ("engines.transformers", "TransformersEngine"),
    "vllm": ("engines.vllm", "VLLMEngine"),
    "tensorrt": ("engines.tensorrt", "TensorRTEngine"),
}

_HERE = os.path.dirname(os.path.abspath(__file__))
_cache = {}
# One lock per engine: probing transformers (importing torch, several seconds) must not
# hold up a synthetic run or a signal (lock waits are interruptible by signals).
_locks = {name: threading.Lock() for name in KNOWN_ENGINES}


def _load_class(name):
    """The engine class, or an error string explaining why it is unavailable."""
    with _locks[name]:
        return _load_class_locked(name)


def _load_class_locked(name):
    if name in _cache:
        return _cache[name]
    module_name, class_name = KNOWN_ENGINES[name]
    short = module_name.split(".", 1)[1]
    if not os.path.exists(os.path.join(_HERE, short + ".py")):
        result = "engine %r is not built into harness (no engines/%s.py)" % (name, short)
    else:
        try:
            module = importlib.import_module(module_name)
            cls = getattr(module, class_name)
            reason = None if cls.available() else (cls.unavailable_reason() or "not available")
            result = cls if reason is None else "engine %r unavailable here: %s" % (name, reason)
        except Exception as exc:  # ImportError of torch, a broken install, ...
            result = "engine %r unavailable here: %s: %s" % (name, type(exc).__name__, exc)
    _cache[name] = result
    return result


def available_engines():
    return [name for name in KNOWN_ENGINES if not isinstance(_load_class(name), str)]


def probe_in_background(callback=None):
    """Run the availability checks in a daemon thread (the server starts serving at
    once; a `ping` or run that needs an engine still being probed waits for it)."""
    def work():
        names = available_engines()
        if callback is not None:
            callback(names)

    thread = threading.Thread(target=work, name="engine-probe", daemon=True)
    thread.start()
    return thread


def engine_class(name):
    """The class for `name`, or raise ConfigError (unknown) / InfraError (missing here)."""
    if not isinstance(name, str):
        raise ConfigError("config field `engine` must be a string, got %r" % (name,))
    if name not in KNOWN_ENGINES:
        raise ConfigError(
            "unknown engine %r; this harness knows %s" % (name, ", ".join(sorted(KNOWN_ENGINES)))
        )
    cls = _load_class(name)
    if isinstance(cls, str):
        raise InfraError(cls + "; run this engine on a host/image that has it installed")
    return cls
