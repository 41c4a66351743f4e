"""Reading the parts of an llem experiment config dump that the harness needs.

The worker sends the full config dump (FORMAT.md section 3) as JSON; the Rust side
has already validated it with the llem rules. These helpers apply llem's runtime
defaults and re-check the ranges the harness relies on, raising ConfigError with a
message naming the field.
"""

import math

from protocol import ConfigError

DEFAULT_N_PROMPTS = 100
DEFAULT_MAX_INPUT = 256
NULL_MAX_INPUT = 512  # task.max_input_tokens: null ("no truncation")
DEFAULT_MAX_OUTPUT = 256
NULL_MAX_OUTPUT = 256  # task.max_output_tokens: null ("until EOS")
DEFAULT_SEED = 42

WARMUP_DEFAULTS = {
    "enabled": True,
    "n_prompts": 5,
    "thermal_floor_seconds": 60.0,
    "convergence_detection": False,
    "cv_threshold": 0.05,
    "max_prompts": 20,
    "window_size": 3,
    "min_prompts": 5,
}


def section(mapping, key, where):
    """mapping[key] as a dict; absent or null -> {}."""
    value = mapping.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("%s must be an object or null, got %r" % (where, value))
    return value


def get_int(mapping, key, default, where, minimum=None, null_value=None):
    if key not in mapping:
        value = default
    else:
        value = mapping[key]
        if value is None:
            if null_value is None:
                raise ConfigError("%s must not be null" % where)
            value = null_value
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError("%s must be an integer, got %r" % (where, value))
    if minimum is not None and value < minimum:
        raise ConfigError("%s must be >= %s, got %r" % (where, minimum, value))
    return value


def get_float(mapping, key, default, where, minimum=None, maximum=None, nullable=False):
    value = mapping.get(key, default)
    if value is None:
        if nullable:
            return None
        raise ConfigError("%s must not be null" % where)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("%s must be a number, got %r" % (where, value))
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError("%s must be finite, got %r" % (where, value))
    if minimum is not None and value < minimum:
        raise ConfigError("%s must be >= %s, got %r" % (where, minimum, value))
    if maximum is not None and value > maximum:
        raise ConfigError("%s must be <= %s, got %r" % (where, maximum, value))
    return value


def get_bool(mapping, key, default, where):
    value = mapping.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError("%s must be true or false, got %r" % (where, value))
    return value


def task_settings(config):
    """Resolved task fields: model, n_prompts, order, max_input, max_output, seed."""
    if not isinstance(config, dict):
        raise ConfigError("config must be a JSON object (the llem experiment config dump)")
    task = config.get("task")
    if not isinstance(task, dict):
        raise ConfigError("config.task is required and must be an object")
    model = task.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("task.model is required and must be a non-empty string")
    dataset = section(task, "dataset", "task.dataset")
    order = dataset.get("order", "interleaved")
    if order not in ("interleaved", "grouped", "shuffled"):
        raise ConfigError(
            "task.dataset.order must be one of interleaved, grouped, shuffled; got %r" % (order,)
        )
    return {
        "model": model,
        "n_prompts": get_int(dataset, "n_prompts", DEFAULT_N_PROMPTS, "task.dataset.n_prompts", 1),
        "source": dataset.get("source", "aienergyscore"),
        "order": order,
        "max_input_tokens": get_int(
            task, "max_input_tokens", DEFAULT_MAX_INPUT, "task.max_input_tokens", 1, NULL_MAX_INPUT
        ),
        "max_output_tokens": get_int(
            task, "max_output_tokens", DEFAULT_MAX_OUTPUT, "task.max_output_tokens", 1,
            NULL_MAX_OUTPUT,
        ),
        "random_seed": get_int(task, "random_seed", DEFAULT_SEED, "task.random_seed"),
    }


def warmup_settings(config):
    """offline.warmup with llem defaults applied and llem's ranges checked."""
    serving_mode = config.get("serving_mode", "offline")
    if serving_mode != "offline":
        raise ConfigError(
            "serving_mode %r is not supported by harness; only offline runs are "
            "implemented (server mode needs a serving backend)" % (serving_mode,)
        )
    offline = section(config, "offline", "offline")
    w = section(offline, "warmup", "offline.warmup")
    p = "offline.warmup."
    return {
        "enabled": get_bool(w, "enabled", True, p + "enabled"),
        "n_prompts": get_int(w, "n_prompts", 5, p + "n_prompts", 1),
        "thermal_floor_seconds": get_float(
            w, "thermal_floor_seconds", 60.0, p + "thermal_floor_seconds", 30.0
        ),
        "convergence_detection": get_bool(
            w, "convergence_detection", False, p + "convergence_detection"
        ),
        "cv_threshold": get_float(w, "cv_threshold", 0.05, p + "cv_threshold", 0.01, 0.5),
        "max_prompts": get_int(w, "max_prompts", 20, p + "max_prompts", 5),
        "window_size": get_int(w, "window_size", 3, p + "window_size", 3),
        "min_prompts": get_int(w, "min_prompts", 5, p + "min_prompts", 1),
    }


def library_sections(config, name):
    """(engine_params, sampling_params) of an external library's section (`vllm`,
    `tensorrt`), each None when null or absent; any other key, or a value that is not
    an object, is a ConfigError naming it (llem 0.7.0 has no llem_execution there)."""
    sec = section(config, name, name)
    for key in sec:
        if key not in ("engine_params", "sampling_params"):
            raise ConfigError(
                "unknown key %s.%s; the %s section has engine_params and sampling_params "
                "(llem 0.7.0 has no llem_execution for %s)" % (name, key, name, name))
    out = []
    for part in ("engine_params", "sampling_params"):
        value = sec.get(part)
        if value is not None and not isinstance(value, dict):
            raise ConfigError("%s.%s must be an object or null, got %r" % (name, part, value))
        out.append(value)
    return tuple(out)
